"""Give a copied Postgres data directory its own ``system_identifier``.

Shards are cloned from one initdb'd template (one initdb instead of N), but clones would share
the template's identifier, and tools (and our tests) tell servers apart by it.  The identifier
lives in two places: the first field of ``global/pg_control`` (guarded by a CRC-32C) and the long
header of every WAL segment.  Both layouts have been stable since PostgreSQL 9.x; every step is
verified against the old value, and a failure makes the caller fall back to a fresh initdb.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

_CRC_TABLE: list[int] = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)

_WAL_NAME = re.compile(r"^[0-9A-F]{24}$")
_XLP_LONG_HEADER = 0x0002
_SYSID_IN_LONG_HEADER = 24  # after magic, info, tli, pageaddr, rem_len (+ padding)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _crc_offset(control: bytes) -> int:
    """Where ControlFileData.crc sits: the offset whose CRC of everything before matches."""
    for offset in range(64, 1024, 4):
        if crc32c(control[:offset]) == struct.unpack_from("<I", control, offset)[0]:
            return offset
    raise ValueError("pg_control CRC not found")


def set_system_identifier(data_dir: Path, new_id: int) -> int:
    """Rewrite the identifier of a cleanly shut down data dir; returns the old one."""
    control_path = data_dir / "global" / "pg_control"
    control = bytearray(control_path.read_bytes())
    crc_at = _crc_offset(bytes(control))
    (old_id,) = struct.unpack_from("<Q", control, 0)
    segments = [p for p in (data_dir / "pg_wal").iterdir() if _WAL_NAME.match(p.name)]
    patches: list[tuple[Path, bytearray]] = []
    for seg in segments:
        with seg.open("rb") as fh:
            head = bytearray(fh.read(_SYSID_IN_LONG_HEADER + 8))
        (info,) = struct.unpack_from("<H", head, 2)
        (seg_id,) = struct.unpack_from("<Q", head, _SYSID_IN_LONG_HEADER)
        if not info & _XLP_LONG_HEADER or seg_id != old_id:
            raise ValueError(f"unexpected WAL header in {seg.name}")
        patches.append((seg, head))
    struct.pack_into("<Q", control, 0, new_id)
    struct.pack_into("<I", control, crc_at, crc32c(bytes(control[:crc_at])))
    for seg, head in patches:
        struct.pack_into("<Q", head, _SYSID_IN_LONG_HEADER, new_id)
        with seg.open("r+b") as fh:
            fh.write(head)
    control_path.write_bytes(bytes(control))
    return int(old_id)
