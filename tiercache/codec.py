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

Every byte read from Redis or the bus is attacker-controlled, so decoding is bounded:
ext values nest at most :data:`MAX_DEPTH` levels (legit values rarely pass 5; msgpack's own
arrays and maps nest at most 1024 deep inside one level, its limit), declared lengths can't
exceed the payload, and anything else wrong is a :class:`CodecError` -- never a crash or a
stall. Deep levels decode through a heap-allocated ``msgpack.Unpacker`` (~2 KB of C stack per
level) instead of ``msgpack.unpackb`` (~45 KB per level: 200 levels overflowed an 8 MB stack).

Signed envelopes (:class:`Signer`)::

    b"\xc1" b"TS" <version:1 byte> <HMAC-SHA256: 32 bytes> msgpack([...same fields...])

The MAC covers the header, a *context* (the Redis key, so a signed value can't be moved to
another key) and the body, and is checked with :func:`hmac.compare_digest` before a byte of
the body is parsed. See :func:`unpack_entry` for what is accepted with signing on and off.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import threading
import uuid
import zoneinfo
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Final, NamedTuple

import msgpack

from tiercache.row import Row, _Columns, _record_type

__all__ = [
    "FORMAT_VERSION",
    "MAX_DEPTH",
    "CodecError",
    "Entry",
    "Signer",
    "UnencodableError",
    "decode",
    "encode",
    "pack_entry",
    "register",
    "seal",
    "signer_from",
    "unpack_entry",
    "unregister",
    "unseal",
]

FORMAT_VERSION: Final = 1
_MAGIC: Final = b"\xc1TC"
_HEADER: Final = _MAGIC + bytes([FORMAT_VERSION])
_SIGNED_MAGIC: Final = b"\xc1TS"
_SIGNED_HEADER: Final = _SIGNED_MAGIC + bytes([FORMAT_VERSION])
_TAG_LEN: Final = 32  # HMAC-SHA256

#: How deep ext values (tuple, set, frozenset, datetime, Row, user types...) may nest.
MAX_DEPTH: Final = 64
_SHALLOW: Final = 3  # levels decoded with the fast msgpack.unpackb (45 KB of C stack each)
_MAX_TZ_KEY: Final = 128

# tiercache's ext codes (1..31 reserved).
_TUPLE, _SET, _FROZENSET, _DATETIME, _DATE, _TIME, _TIMEDELTA = 1, 2, 3, 4, 5, 6, 7
_DECIMAL, _UUID, _BIGINT, _ROW, _IPADDR = 8, 9, 10, 11, 12
_IP_KINDS: Final[dict[type, int]] = {
    ipaddress.IPv4Address: 0, ipaddress.IPv6Address: 1, ipaddress.IPv4Network: 2,
    ipaddress.IPv6Network: 3, ipaddress.IPv4Interface: 4, ipaddress.IPv6Interface: 5}
_IP_MAKERS: Final = (ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network,
                     ipaddress.IPv6Network, ipaddress.IPv4Interface, ipaddress.IPv6Interface)
_USER_NAMED: Final = 32
USER_CODES: Final = range(33, 128)


class CodecError(ValueError):
    """A payload that is not a tiercache entry this version can read (corrupt/foreign/newer)."""


class UnencodableError(TypeError):
    """A value of a type the codec has no encoding for; ``.type`` is that type.

    The message gives the fix once; callers that log their own advice use ``.type``.
    """

    def __init__(self, cls: type) -> None:
        self.type = cls
        super().__init__(f"tiercache cannot encode an object of type "
                         f"{cls.__module__}.{cls.__qualname__}; teach it with "
                         "tiercache.register_type(cls, encode, decode)")


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


# ---------------------------------------------------------------------------- signing


class Signer:
    """HMAC-SHA256 over envelopes, with key rotation: sign with the first key, accept any.

    ``keys`` is one key or a sequence of keys (``bytes`` or ``str``, at least 16 bytes
    each). Rotate by deploying ``[new, old]`` everywhere, then ``[new]`` once entries
    signed with the old key have expired. The keys never appear in ``repr`` or errors.
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: bytes | str | Sequence[bytes | str]) -> None:
        if isinstance(keys, bytes | bytearray | str):
            keys = [keys]
        ks = tuple(k.encode() if isinstance(k, str) else bytes(k) for k in keys)
        if not ks:
            raise ValueError("Signer needs at least one key")
        if any(len(k) < 16 for k in ks):
            raise ValueError("signing keys must be at least 16 bytes long")
        self._keys = ks

    @staticmethod
    def _mac(key: bytes, header: bytes, context: bytes, body: bytes | memoryview) -> bytes:
        h = hmac.new(key, header, hashlib.sha256)
        h.update(len(context).to_bytes(4, "big"))
        h.update(context)
        h.update(body)
        return h.digest()

    def sign(self, body: bytes | memoryview, context: str | bytes = b"",
             header: bytes = b"") -> bytes:
        """The 32-byte tag of ``header + context + body`` under the first key."""
        return self._mac(self._keys[0], header, _ctx(context), body)

    def verify(self, body: bytes | memoryview, tag: bytes | memoryview,
               context: str | bytes = b"", header: bytes = b"") -> bool:
        """Whether ``tag`` is valid under any key (constant time per key)."""
        ctx, ok = _ctx(context), False
        for key in self._keys:
            ok |= hmac.compare_digest(self._mac(key, header, ctx, body), tag)
        return ok

    def __repr__(self) -> str:
        return f"<Signer {len(self._keys)} key(s)>"


def signer_from(spec: Signer | bytes | str | Sequence[bytes | str] | None) -> Signer | None:
    """``RedisTier(signing_key=...)``'s argument as a :class:`Signer` (None: signing off)."""
    if spec is None or isinstance(spec, Signer):
        return spec
    return Signer(spec)


def _ctx(context: str | bytes) -> bytes:
    return context.encode() if isinstance(context, str) else bytes(context)


def seal(body: bytes, signer: Signer, context: str | bytes = b"") -> bytes:
    """``body`` in a signed envelope: magic, version, HMAC tag, body."""
    return _SIGNED_HEADER + signer.sign(body, context, _SIGNED_HEADER) + body


def unseal(data: bytes | memoryview, signer: Signer | None,
           context: str | bytes = b"") -> memoryview:
    """The body of a signed envelope, checked *before* anything parses it.

    ``signer=None`` skips the check (the caller does not ask for authenticity).
    Raises :class:`CodecError` for anything that is not a validly signed envelope.
    """
    view = memoryview(data)
    if len(view) < 4 + _TAG_LEN or bytes(view[:3]) != _SIGNED_MAGIC:
        raise CodecError("not a signed tiercache envelope")
    header = bytes(view[:4])
    version = header[3]
    if version > FORMAT_VERSION:
        raise CodecError(f"entry format version {version} is newer than {FORMAT_VERSION}")
    if version < 1:
        raise CodecError(f"invalid entry format version {version}")
    tag, body = view[4 : 4 + _TAG_LEN], view[4 + _TAG_LEN :]
    if signer is not None and not signer.verify(body, tag, context, header):
        raise CodecError("bad signature (written by a client without the signing key?)")
    return body


# ---------------------------------------------------------------------------- encoding

class _EncodeState(threading.local):
    depth = 0  # ext nesting
    rows: dict[tuple[str, ...], int] | None = None  # column names -> schema number
    count = 0  # schemas numbered so far


_enc = _EncodeState()


def _pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, default=_default, use_bin_type=True, strict_types=True)
    return data


def _nested(code: int, obj: Any) -> msgpack.ExtType:
    """An ext whose payload is itself encoded: bounded like decoding, so what we write
    can always be read back."""
    depth = _enc.depth
    if depth >= MAX_DEPTH:
        raise ValueError(f"value nested deeper than {MAX_DEPTH} levels")
    _enc.depth = depth + 1
    try:
        return msgpack.ExtType(code, _pack(obj))
    finally:
        _enc.depth = depth


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
        if len(spec) > _MAX_TZ_KEY:
            raise CodecError("time zone key too long")
        return zoneinfo.ZoneInfo(spec)
    seconds, micros = spec
    if seconds == 0 and micros == 0:
        return dt.UTC
    return dt.timezone(dt.timedelta(seconds=seconds, microseconds=micros))


def _row(names: tuple[str, ...], values: Any) -> msgpack.ExtType:
    """A Record or Row: column names once per payload, later rows refer to them by number.

    Numbers are given in the order definitions *finish* (after their values, which may
    hold rows of composite columns), the order the decoder sees them complete.
    """
    schemas = _enc.rows
    ref = None if schemas is None else schemas.get(names)
    if ref is not None:
        return _nested(_ROW, [ref, *values])
    ext = _nested(_ROW, [list(names), *values])
    if schemas is not None:
        _enc.count += 1
        schemas[names] = _enc.count - 1
    return ext


def _default(obj: Any) -> msgpack.ExtType:
    """Called by msgpack for every object it has no native encoding for (exact types)."""
    cls = type(obj)
    if cls is tuple:
        return _nested(_TUPLE, list(obj))
    if cls is set:
        return _nested(_SET, list(obj))
    if cls is frozenset:
        return _nested(_FROZENSET, list(obj))
    if cls is dt.datetime:
        fields = [obj.year, obj.month, obj.day, obj.hour, obj.minute, obj.second]
        fields += [obj.microsecond, obj.fold, _tz_spec(obj.tzinfo, obj)]
        return _nested(_DATETIME, fields)
    if cls is dt.date:
        return msgpack.ExtType(_DATE, _pack(obj.toordinal()))
    if cls is dt.time:
        fields = [obj.hour, obj.minute, obj.second, obj.microsecond, obj.fold]
        fields.append(_tz_spec(obj.tzinfo, None))
        return _nested(_TIME, fields)
    if cls is dt.timedelta:
        return msgpack.ExtType(_TIMEDELTA, _pack([obj.days, obj.seconds, obj.microseconds]))
    if cls is Decimal:
        return msgpack.ExtType(_DECIMAL, str(obj).encode("ascii"))
    if cls is uuid.UUID:
        return msgpack.ExtType(_UUID, obj.bytes)
    if cls is int:  # msgpack calls default only for ints outside 64 bits
        length = (obj.bit_length() + 8) // 8
        return msgpack.ExtType(_BIGINT, obj.to_bytes(length, "big", signed=True))
    if cls is Row:
        return _row(obj._columns.names, obj._values)
    if cls in _IP_KINDS:
        return msgpack.ExtType(_IPADDR, _pack([_IP_KINDS[cls], str(obj)]))
    user = _by_type.get(cls)
    if user is None and _RECORD is not None and isinstance(obj, _RECORD):
        record: Any = obj
        return _row(tuple(record.keys()), record.values())
    if user is None:
        for base in cls.__mro__[1:]:
            user = _by_type.get(base)
            if user is not None:
                break
    if user is None and isinstance(obj, uuid.UUID):  # asyncpg's own UUID subclass, mainly
        return msgpack.ExtType(_UUID, obj.bytes)
    if user is not None:
        data = user.encode(obj)
        if user.code == _USER_NAMED:
            return _nested(_USER_NAMED, [user.name, data])
        return _nested(user.code, data)
    raise UnencodableError(cls)


def encode(value: Any) -> bytes:
    """Encode a bare value (no envelope). Raises ``TypeError`` naming an unsupported type."""
    saved = _enc.rows, _enc.count
    _enc.rows, _enc.count = {}, 0
    try:
        return _pack(value)
    except TypeError:
        raise
    except (ValueError, OverflowError, UnicodeEncodeError) as exc:
        raise TypeError(f"tiercache cannot encode {type(value).__name__}: {exc}") from exc
    finally:
        _enc.rows, _enc.count = saved


def pack_entry(
    value: Any, *, stored_at: float, ttl: float | None = None, load_time: float = 0.0,
    signer: Signer | None = None, context: str | bytes = b"",
) -> bytes:
    """Encode ``value`` in the versioned envelope. Everything is built before returning.

    With ``signer`` the envelope is signed over ``context`` too: pass the Redis key the
    bytes are written to, and give :func:`unpack_entry` the same key when reading.
    """
    body = encode([value, float(stored_at), ttl, float(load_time)])
    if signer is None:
        return _HEADER + body
    return seal(body, signer, context)


# ---------------------------------------------------------------------------- decoding

class _DecodeState(threading.local):
    depth = 0  # ext levels open (0: in the payload itself, or not decoding)
    rows: list[_Columns] | None = None  # schemas seen in this payload (made by its first row)
    careful = False  # maps built through _pairs (see hash flooding below)


_dec = _DecodeState()
_OPTS: Final[dict[str, Any]] = {"raw": False, "strict_map_key": False, "use_list": True,
                                "timestamp": 0}

# Hash flooding: an attacker can make many distinct values with one hash (bigints k*(2**61-1),
# Decimals, crafted tuples...); as keys of one map or members of one set they cost O(n**2)
# to insert -- 260 KB took 10 s. Sets are ours to build and always checked (O(n)). Maps are
# built by msgpack in C: the fast pass refuses maps over _FAST_MAP_LEN entries (a flood in a
# smaller map costs ~10 ms at most), and a payload that has one is decoded again with a map
# hook that checks the keys first (2.7x slower on maps, paid only by such payloads).
_FAST_MAP_LEN: Final = 1024
_MAX_COLLISIONS: Final = 64


def _check_hashes(items: list[Any]) -> list[Any]:
    if len(items) > _MAX_COLLISIONS and (
            len(items) - len(set(map(hash, items))) > _MAX_COLLISIONS):
        raise CodecError("too many distinct values with equal hashes (hash flooding)")
    return items


def _pairs(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    _check_hashes([k for k, _ in pairs])
    return dict(pairs)


_CAREFUL_OPTS: Final[dict[str, Any]] = {**_OPTS, "object_pairs_hook": _pairs}
_FAST_OPTS: Final[dict[str, Any]] = {**_OPTS, "max_map_len": _FAST_MAP_LEN}


def _unpack(data: bytes) -> Any:
    """One nesting level. The first levels take msgpack's fast ``unpackb``, whose C state
    lives on the stack (~45 KB); deeper ones an ``Unpacker``, whose state is on the heap."""
    depth = _dec.depth + 1  # this level's number (the payload itself is level 0)
    if depth > MAX_DEPTH:
        raise CodecError(f"value nested deeper than {MAX_DEPTH} levels")
    _dec.depth = depth
    opts = _CAREFUL_OPTS if _dec.careful else _FAST_OPTS
    try:
        if depth < _SHALLOW:
            if opts is _FAST_OPTS:  # the common case, with literal keywords (see decode)
                return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False,
                                       strict_map_key=False, use_list=True, timestamp=0,
                                       max_map_len=_FAST_MAP_LEN)
            return msgpack.unpackb(data, ext_hook=_ext_hook, **opts)
        unpacker = msgpack.Unpacker(ext_hook=_ext_hook, max_buffer_size=max(len(data), 1),
                                    **opts)
        unpacker.feed(data)
        value = unpacker.unpack()
        if unpacker.tell() != len(data):
            raise CodecError("trailing bytes after a nested value")
        return value
    finally:
        _dec.depth = depth - 1


def _decode_row(data: bytes) -> Row:
    fields = _unpack(data)
    if type(fields) is not list or not fields:
        raise CodecError("malformed row")
    head, values = fields[0], tuple(fields[1:])
    schemas = _dec.rows
    if schemas is None:
        schemas = _dec.rows = []
    if type(head) is int:
        if schemas is None or not 0 <= head < len(schemas):
            raise CodecError("row refers to unknown columns")
        columns = schemas[head]
    elif type(head) is list and all(type(n) is str for n in head):
        columns = _Columns(tuple(head))
        schemas.append(columns)
    else:
        raise CodecError("malformed row columns")
    if len(values) != len(columns.names):
        raise CodecError("row has a different number of values than columns")
    return Row._make(columns, values)


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _TUPLE:
        return tuple(_unpack(data))
    if code == _SET:
        return set(_check_hashes(_unpack(data)))
    if code == _FROZENSET:
        return frozenset(_check_hashes(_unpack(data)))
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
    if code == _ROW:
        return _decode_row(data)
    if code == _IPADDR:
        kind, text = _unpack(data)
        if type(kind) is not int or not 0 <= kind < 6 or type(text) is not str or len(
                text) > 64:
            raise CodecError("malformed IP address")
        return _IP_MAKERS[kind](text)
    if code == _USER_NAMED:
        name, payload = _unpack(data)
        user = _by_name.get(name) if isinstance(name, str) else None
        if user is None:
            raise CodecError(f"unknown user type {_short(name)} in payload")
        return user.decode(payload)
    user = _by_code.get(code)
    if user is None:
        raise CodecError(f"unknown msgpack ext code {code}")
    return user.decode(_unpack(data))


def _short(obj: Any, limit: int = 80) -> str:
    """A repr for error messages that a hostile payload cannot blow up."""
    text = repr(obj)
    return text if len(text) <= limit else text[:limit] + "..."


def decode(data: bytes | bytearray | memoryview) -> Any:
    """Decode a bare value written by :func:`encode`. Any problem raises ``CodecError``.

    The common case (not called from inside another decode) touches the per-thread state
    only when the payload needs it: L2 ``get_many`` decodes 100 envelopes per round trip.
    """
    st = _dec
    if st.depth:  # from a registered type's decoder, mid-payload: keep the outer state
        return _decode_nested(data)
    try:
        try:  # literal keywords: ~0.6 us cheaper per call than **_FAST_OPTS (kwargs dict)
            return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False,
                                   use_list=True, timestamp=0, max_map_len=_FAST_MAP_LEN)
        except ValueError as exc:
            if "max_map_len" not in str(exc):
                raise
            st.rows, st.careful = None, True  # a big map: again, keys checked
            try:
                return msgpack.unpackb(data, ext_hook=_ext_hook, **_CAREFUL_OPTS)
            finally:
                st.careful = False
    except CodecError:
        raise
    except Exception as exc:  # msgpack and the ext decoders raise many kinds on bad input
        raise CodecError(f"corrupt payload: {type(exc).__name__}: {_short(str(exc), 200)}"
                         ) from exc
    finally:
        if st.rows is not None:
            st.rows = None


def _decode_nested(data: bytes | bytearray | memoryview) -> Any:
    """:func:`decode` re-entered: its own row schemas, its levels counted on top of ours."""
    saved = _dec.rows, _dec.careful
    _dec.rows, _dec.careful = None, False
    try:
        try:
            return _unpack(data)  # type: ignore[arg-type]
        except ValueError as exc:
            if "max_map_len" not in str(exc):
                raise
            _dec.rows, _dec.careful = None, True
            return _unpack(data)  # type: ignore[arg-type]
    except CodecError:
        raise
    except Exception as exc:
        raise CodecError(f"corrupt payload: {type(exc).__name__}: {_short(str(exc), 200)}"
                         ) from exc
    finally:
        _dec.rows, _dec.careful = saved


_FLOAT_TYPES: Final = (float, int)
_new_entry = tuple.__new__


def unpack_entry(data: bytes | bytearray | memoryview, *, signer: Signer | None = None,
                 context: str | bytes = b"") -> Entry:
    """Decode an envelope written by :func:`pack_entry`, or raise ``CodecError``.

    With ``signer``, only envelopes signed by one of its keys *for this* ``context`` are
    read: an unsigned or badly signed one is a ``CodecError``, found before the body is
    parsed. Without it, unsigned and signed envelopes are both read (the signature is not
    checked: the caller asked for no authenticity), so turning signing on or off across
    a fleet never turns the cache cold for the processes not yet switched.
    """
    if not isinstance(data, bytes | bytearray | memoryview):  # e.g. str (decode_responses)
        raise CodecError(f"not a tiercache entry: {type(data).__name__}, not bytes")
    view = memoryview(data)
    magic = bytes(view[:3])
    if magic == _SIGNED_MAGIC:
        body = unseal(view, signer, context)
    elif magic != _MAGIC or len(view) < 5:
        raise CodecError("not a tiercache entry (foreign or corrupt payload)")
    elif signer is not None:
        raise CodecError("unsigned entry refused (signing is on)")
    else:
        version = view[3]
        if version > FORMAT_VERSION:
            raise CodecError(f"entry format version {version} is newer than {FORMAT_VERSION}")
        if version < 1:
            raise CodecError(f"invalid entry format version {version}")
        body = view[4:]
    fields = decode(body)
    if type(fields) is list and len(fields) == 4:
        stored_at, ttl, load_time = fields[1], fields[2], fields[3]
        if type(stored_at) is float and type(load_time) is float and (
                ttl is None or type(ttl) is float):
            entry: Entry = _new_entry(Entry, fields)  # what this version writes: no copies
            return entry
    if not isinstance(fields, list) or len(fields) != 4:
        raise CodecError("malformed entry envelope")
    value, stored_at, ttl, load_time = fields
    if (
        not isinstance(stored_at, _FLOAT_TYPES)
        or not isinstance(load_time, _FLOAT_TYPES)
        or not (ttl is None or isinstance(ttl, _FLOAT_TYPES))
        or isinstance(stored_at, bool) or isinstance(load_time, bool)
    ):
        raise CodecError("malformed entry envelope fields")
    return Entry(value, float(stored_at), None if ttl is None else float(ttl), float(load_time))


_RECORD: Final = _record_type()
