"""Pure-Python twin of ``ext/_ring.pyx``: key hashing and continuum lookup with hashlib.

Same API and the same answers as the extension; used when the extension is missing or
``TIERCACHE_PUREPYTHON=1``. Kept deliberately plain: correctness reference first.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

__all__ = ["Continuum", "hash_key", "hash_points", "key_bytes"]


def key_bytes(key: object) -> bytes:
    """Canonical bytes of a key: str -> UTF-8, bytes -> as is, anything else -> ``str(key)``.

    For str and int keys this is exactly what uhashring hashes (``str(key).encode()``);
    bytes-like keys are hashed raw (uhashring would hash their repr, ``"b'...'"``).
    """
    kind = type(key)
    if kind is str:
        return key.encode("utf-8")  # type: ignore[attr-defined, no-any-return]
    if kind is bytes:
        return key  # type: ignore[return-value]
    if isinstance(key, (bytearray, memoryview)):
        return bytes(key)
    return str(key).encode("utf-8")


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def hash_key(key: object) -> int:
    """Ketama hash (replica 0) of a key: the first four MD5 bytes, little-endian."""
    return int.from_bytes(_md5(key_bytes(key))[:4], "little")


def hash_points(name: str, count: int, replicas: int) -> list[int]:
    """The ring points of vnodes ``f"{name}-{w}"`` for w < count, ``replicas`` (1..4) each."""
    if not 1 <= replicas <= 4:
        raise ValueError(f"replicas must be between 1 and 4 (one MD5 digest), got {replicas}")
    points: list[int] = []
    for w in range(count):
        digest = _md5(f"{name}-{w}".encode())
        points.extend(
            int.from_bytes(digest[4 * r : 4 * r + 4], "little") for r in range(replicas)
        )
    return points


class Continuum:
    """Sorted ring points with their owners, and the per-key lookup over them.

    A key belongs to the first point strictly greater than its hash, wrapping to the first
    point (uhashring's ``bisect_right``).
    """

    def __init__(self) -> None:
        # (points, owner name per point), swapped as one object so a lookup racing a
        # rebuild in another thread sees the old table or the new one, never a mix.
        self._table: tuple[list[int], list[Hashable]] = ([], [])

    def _load(
        self, points: Sequence[int], owners: Sequence[int], names: tuple[Hashable, ...]
    ) -> None:
        """Replace the continuum: ``points`` ascending and unique, ``owners[i]`` indexes names.

        Names are returned as given (any hashable: uhashring accepts ``[1, 2, 3]``)."""
        if len(points) != len(owners):
            raise ValueError("points and owners differ in length")
        for i in range(1, len(points)):
            if points[i] <= points[i - 1]:
                raise ValueError("points must be strictly ascending")
        if any(not 0 <= owner < len(names) for owner in owners):
            raise ValueError("owner index out of range")
        self._table = (list(points), [names[owner] for owner in owners])

    def _nonempty_table(self) -> tuple[list[int], list[Hashable]]:
        table = self._table
        if not table[0]:
            raise LookupError("the hash ring has no nodes (or none with points): add_node() first")
        return table

    def node_for_hash(self, h: int) -> Hashable:
        """Owner of the ring position ``h``."""
        points, names = self._nonempty_table()
        index = bisect_right(points, h)
        return names[index if index < len(points) else 0]

    def get_node(self, key: object) -> Hashable:
        """The node that owns ``key``."""
        return self.node_for_hash(hash_key(key))

    def get_node_many(self, keys: Iterable[object]) -> list[Any]:
        """``[get_node(k) for k in keys]`` in one call."""
        points, names = self._nonempty_table()
        size = len(points)
        result: list[Any] = []
        for key in keys:
            index = bisect_right(points, hash_key(key))
            result.append(names[index if index < size else 0])
        return result

    @property
    def size(self) -> int:
        """Number of points on the ring."""
        return len(self._table[0])
