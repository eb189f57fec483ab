"""msgpack codec for L2 values: a versioned envelope, ext types, and no pickle.

Why not pickle: a value read from Redis is *data*. Anybody who can write to Redis would
otherwise execute code in every process that reads the key. Here decoding only ever builds
plain values, the stdlib types below, and types the application registered itself.

Wire format of an entry (``pack_entry``)::

    b"\\xc1" b"TC" <version:1 byte> msgpack([value, stored_at, ttl, load_time])

``0xc1`` is the one byte msgpack never emits, so a foreign msgpack (or JSON, or pickle)
payload can never be mistaken for an entry. A payload with a newer version byte than
:data:`FORMAT_VERSION` is refused (:class:`CodecError`) rather than guessed at, so old
processes treat entries written by newer ones as misses during a rolling upgrade.

Ext codes 1..31 are tiercache's own; user types registered with :func:`register` use ext
code 32 with the type's registered *name* inside the payload (stable across processes and
import orders), or an explicit code in 33..127 when the caller chooses one.
"""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final, NamedTuple

import msgpack

__all__ = [
    "FORMAT_VERSION",
    "CodecError",
    "Entry",
    "decode",
    "encode",
    "pack_entry",
    "register",
    "unpack_entry",
    "unregister",
]

FORMAT_VERSION: Final = 1
_MAGIC: Final = b"\xc1TC"
_HEADER: Final = _MAGIC + bytes([FORMAT_VERSION])

# tiercache's ext codes (1..31 reserved).
_TUPLE, _SET, _FROZENSET, _DATETIME, _DATE, _TIME, _TIMEDELTA = 1, 2, 3, 4, 5, 6, 7
_DECIMAL, _UUID, _BIGINT = 8, 9, 10
_USER_NAMED: Final = 32
USER_CODES: Final = range(33, 128)


class CodecError(ValueError):
    """A payload that is not a tiercache entry this version can read (corrupt/foreign/newer)."""


class Entry(NamedTuple):
    """One L2 entry: the value plus what expiry, refresh-ahead and XFetch need."""

    value: Any
    stored_at: float  # wall clock (time.time()) when written
    ttl: float | None  # seconds, None = no expiry
    load_time: float  # seconds the loader took (XFetch's "delta")


class _UserType(NamedTuple):
    cls: type
    name: str
    code: int
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


_by_type: dict[type, _UserType] = {}
_by_name: dict[str, _UserType] = {}
_by_code: dict[int, _UserType] = {}


def register(
    cls: type,
    encode: Callable[[Any], Any],
    decode: Callable[[Any], Any],
    *,
    name: str | None = None,
    code: int | None = None,
) -> None:
    """Teach the codec a user type.

    ``encode(obj)`` returns anything this codec can encode (nested supported types are
    fine); ``decode(data)`` rebuilds the object. ``name`` defaults to
    ``"module.QualName"`` and is what is stored, so renaming the class breaks old entries
    unless the old name is passed. ``code`` (33..127) stores a 1-byte code instead of the
    name, for compactness; it must then be the same in every process.
    """
    if code is not None and code not in USER_CODES:
        raise ValueError(f"user ext code must be in 33..127, got {code}")
    key = name or f"{cls.__module__}.{cls.__qualname__}"
    if key in _by_name and _by_name[key].cls is not cls:
        raise ValueError(f"codec name {key!r} already registered for {_by_name[key].cls!r}")
    if code is not None and code in _by_code and _by_code[code].cls is not cls:
        raise ValueError(f"ext code {code} already registered for {_by_code[code].cls!r}")
    unregister(cls)
    entry = _UserType(cls, key, code if code is not None else _USER_NAMED, encode, decode)
    _by_type[cls] = entry
    _by_name[key] = entry
    if code is not None:
        _by_code[code] = entry


def unregister(cls: type) -> None:
    """Forget a registered user type (mainly for tests)."""
    entry = _by_type.pop(cls, None)
    if entry is not None:
        _by_name.pop(entry.name, None)
        _by_code.pop(entry.code, None)


# ---------------------------------------------------------------------------- encoding


def _pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, default=_default, use_bin_type=True, strict_types=True)
    return data


def _tz_spec(tz: dt.tzinfo | None, ref: dt.datetime | None) -> Any:
    """zoneinfo zones by key (DST rules kept), anything else by its fixed UTC offset."""
    if tz is None:
        return None
    if isinstance(tz, zoneinfo.ZoneInfo) and tz.key is not None:
        return tz.key
    offset = tz.utcoffset(ref)
    if offset is None:
        return None
    return [offset.days * 86400 + offset.seconds, offset.microseconds]


def _tz_from(spec: Any) -> dt.tzinfo | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        return zoneinfo.ZoneInfo(spec)
    seconds, micros = spec
    if seconds == 0 and micros == 0:
        return dt.UTC
    return dt.timezone(dt.timedelta(seconds=seconds, microseconds=micros))


def _default(obj: Any) -> msgpack.ExtType:
    """Called by msgpack for every object it has no native encoding for (exact types)."""
    cls = type(obj)
    if cls is tuple:
        return msgpack.ExtType(_TUPLE, _pack(list(obj)))
    if cls is set:
        return msgpack.ExtType(_SET, _pack(list(obj)))
    if cls is frozenset:
        return msgpack.ExtType(_FROZENSET, _pack(list(obj)))
    if cls is dt.datetime:
        fields = [obj.year, obj.month, obj.day, obj.hour, obj.minute, obj.second]
        fields += [obj.microsecond, obj.fold, _tz_spec(obj.tzinfo, obj)]
        return msgpack.ExtType(_DATETIME, _pack(fields))
    if cls is dt.date:
        return msgpack.ExtType(_DATE, _pack(obj.toordinal()))
    if cls is dt.time:
        fields = [obj.hour, obj.minute, obj.second, obj.microsecond, obj.fold]
        fields.append(_tz_spec(obj.tzinfo, None))
        return msgpack.ExtType(_TIME, _pack(fields))
    if cls is dt.timedelta:
        return msgpack.ExtType(_TIMEDELTA, _pack([obj.days, obj.seconds, obj.microseconds]))
    if cls is Decimal:
        return msgpack.ExtType(_DECIMAL, str(obj).encode("ascii"))
    if cls is uuid.UUID:
        return msgpack.ExtType(_UUID, obj.bytes)
    if cls is int:  # msgpack calls default only for ints outside 64 bits
        length = (obj.bit_length() + 8) // 8
        return msgpack.ExtType(_BIGINT, obj.to_bytes(length, "big", signed=True))
    user = _by_type.get(cls)
    if user is None:
        for base in cls.__mro__[1:]:
            user = _by_type.get(base)
            if user is not None:
                break
    if user is not None:
        data = user.encode(obj)
        if user.code == _USER_NAMED:
            return msgpack.ExtType(_USER_NAMED, _pack([user.name, data]))
        return msgpack.ExtType(user.code, _pack(data))
    raise TypeError(
        f"tiercache.codec cannot encode an object of type {cls.__module__}.{cls.__qualname__};"
        " register it with tiercache.codec.register(type, encode, decode)"
    )


def encode(value: Any) -> bytes:
    """Encode a bare value (no envelope). Raises ``TypeError`` naming an unsupported type."""
    try:
        return _pack(value)
    except TypeError:
        raise
    except (ValueError, OverflowError, UnicodeEncodeError) as exc:
        raise TypeError(f"tiercache.codec cannot encode {type(value).__name__}: {exc}") from exc


def pack_entry(
    value: Any, *, stored_at: float, ttl: float | None = None, load_time: float = 0.0
) -> bytes:
    """Encode ``value`` in the versioned envelope. Everything is built before returning."""
    return _HEADER + encode([value, float(stored_at), ttl, float(load_time)])


# ---------------------------------------------------------------------------- decoding


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(
        data, ext_hook=_ext_hook, raw=False, strict_map_key=False, use_list=True, timestamp=0
    )


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _TUPLE:
        return tuple(_unpack(data))
    if code == _SET:
        return set(_unpack(data))
    if code == _FROZENSET:
        return frozenset(_unpack(data))
    if code == _DATETIME:
        y, mo, d, h, mi, s, us, fold, tz = _unpack(data)
        return dt.datetime(y, mo, d, h, mi, s, us, tzinfo=_tz_from(tz), fold=fold)
    if code == _DATE:
        return dt.date.fromordinal(_unpack(data))
    if code == _TIME:
        h, mi, s, us, fold, tz = _unpack(data)
        return dt.time(h, mi, s, us, tzinfo=_tz_from(tz), fold=fold)
    if code == _TIMEDELTA:
        days, seconds, micros = _unpack(data)
        return dt.timedelta(days=days, seconds=seconds, microseconds=micros)
    if code == _DECIMAL:
        return Decimal(data.decode("ascii"))
    if code == _UUID:
        return uuid.UUID(bytes=data)
    if code == _BIGINT:
        return int.from_bytes(data, "big", signed=True)
    if code == _USER_NAMED:
        name, payload = _unpack(data)
        user = _by_name.get(name) if isinstance(name, str) else None
        if user is None:
            raise CodecError(f"unknown user type {name!r} in payload")
        return user.decode(payload)
    user = _by_code.get(code)
    if user is None:
        raise CodecError(f"unknown msgpack ext code {code}")
    return user.decode(_unpack(data))


def decode(data: bytes) -> Any:
    """Decode a bare value written by :func:`encode`. Any problem raises ``CodecError``."""
    try:
        return _unpack(data)
    except CodecError:
        raise
    except Exception as exc:  # msgpack and the ext decoders raise many kinds on bad input
        raise CodecError(f"corrupt payload: {type(exc).__name__}: {exc}") from exc


_FLOAT_TYPES: Final = (float, int)


def unpack_entry(data: bytes | bytearray | memoryview) -> Entry:
    """Decode an envelope written by :func:`pack_entry`, or raise ``CodecError``."""
    if not isinstance(data, bytes | bytearray | memoryview):  # e.g. str (decode_responses)
        raise CodecError(f"not a tiercache entry: {type(data).__name__}, not bytes")
    raw = bytes(data)
    if raw[:3] != _MAGIC or len(raw) < 5:
        raise CodecError("not a tiercache entry (foreign or corrupt payload)")
    version = raw[3]
    if version > FORMAT_VERSION:
        raise CodecError(f"entry format version {version} is newer than {FORMAT_VERSION}")
    if version < 1:
        raise CodecError(f"invalid entry format version {version}")
    fields = decode(raw[4:])
    if not isinstance(fields, list) or len(fields) != 4:
        raise CodecError("malformed entry envelope")
    value, stored_at, ttl, load_time = fields
    if (
        not isinstance(stored_at, _FLOAT_TYPES)
        or not isinstance(load_time, _FLOAT_TYPES)
        or not (ttl is None or isinstance(ttl, _FLOAT_TYPES))
    ):
        raise CodecError("malformed entry envelope fields")
    return Entry(value, float(stored_at), None if ttl is None else float(ttl), float(load_time))
