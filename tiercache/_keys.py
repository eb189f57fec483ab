"""How the L2 key of a ``@cached`` call is built, and why it is stable.

Key stability (the L2 key is shared by every process and survives restarts and upgrades):

* the key is ``"{namespace}:{module}.{qualname}:{digest}"`` (``@cached(name=...)`` replaces
  ``module.qualname``; functions defined in functions and lambdas add ``@{line}``, see
  :func:`function_name`); ``digest`` is the blake2b-128 hex
  of a canonical msgpack encoding of the call's arguments **bound to the signature** with
  defaults applied, keyed by parameter name. So ``f(1)``, ``f(x=1)`` and ``f(1, y=<default>)``
  share one L2 entry, and the key depends neither on ``hash()``/``PYTHONHASHSEED``, nor on dict
  insertion order or set iteration order, nor on the process or the Python version.
* it changes when the namespace, module, qualname or a parameter name changes, or a default
  value changes (the result probably changed too), or :data:`KEY_SCHEME` is bumped.
* arguments that compare equal give one key, as they share one L1 entry (and one
  ``functools.lru_cache`` entry): ``1``, ``1.0``, ``True`` and ``Decimal("1")`` alike, a set
  like the equal frozenset, an ``IntEnum`` member like its value, aware datetimes by instant.
* argument values: None/bool/int/float/str/bytes, list/tuple/dict/set/frozenset of them,
  Enum members, everything :mod:`tiercache.codec` encodes (datetime, Decimal, UUID, registered
  types), and objects with a ``__cache_key__()`` method (e.g. ``self`` of a cached method).
  Anything else raises ``TypeError`` naming the argument: we never fall back to ``repr()``,
  whose output is not stable (memory addresses) and would silently break sharing.
* ``key=`` replaces the digest part: ``key(*args, **kwargs)`` returns the key relative to the
  namespace (e.g. ``"user:42"``), which is what ``invalidate_pattern("user:*")`` matches.
* relative keys longer than :data:`MAX_KEY_LENGTH` keep a readable prefix and end in a hash.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final

import msgpack

from tiercache import codec

__all__ = ["KEY_SCHEME", "MAX_KEY_LENGTH", "canonical_digest", "definition_site", "function_name",
           "shorten"]

KEY_SCHEME: Final = b"tiercache-key-v2"
MAX_KEY_LENGTH: Final = 200

# ext codes private to the digest encoding (never stored, never decoded)
_LIST, _TUPLE, _DICT, _SET, _ENUM, _OBJ, _LEAF, _DECIMAL, _INSTANT = range(1, 10)


def _canon(value: Any) -> Any:
    """A msgpack-encodable structure, equal for arguments that compare equal.

    Equal arguments must give equal keys because L1 (like ``functools.lru_cache``) treats
    them as one entry: ``f(1.0)`` and ``f(True)`` share an L1 entry, so an invalidation of
    either must reach it. Hence numbers are encoded by value (1, 1.0, True, Decimal("1")
    alike), sets like frozensets, IntEnum/StrEnum members like their values, and aware
    datetimes as UTC instants.
    """
    cls = type(value)
    if cls is str or cls is bytes or value is None:
        return value
    if cls is int or cls is bool:
        return int(value) if -(2**63) <= value < 2**64 else _leaf(int(value))
    if cls is float:
        return _canon(int(value)) if value.is_integer() else value
    if cls is Decimal:
        return _canon_decimal(value)
    if cls is list or cls is tuple:
        return msgpack.ExtType(_LIST if cls is list else _TUPLE, _pack([_canon(v) for v in value]))
    if cls is dict:
        items = sorted([_pack(_canon(k)), _pack(_canon(v))] for k, v in value.items())
        return msgpack.ExtType(_DICT, _pack(items))
    if cls is set or cls is frozenset:
        return msgpack.ExtType(_SET, _pack(sorted(_pack(_canon(v)) for v in value)))
    if isinstance(value, enum.Enum):
        if isinstance(value, int | float | str):  # IntEnum, StrEnum, IntFlag: equal to values
            return _canon(value.value)
        return msgpack.ExtType(_ENUM, _pack([_type_name(cls), _canon(value.value)]))
    if cls is dt.datetime and value.utcoffset() is not None:
        return msgpack.ExtType(_INSTANT, _pack(value.timestamp()))
    custom = getattr(value, "__cache_key__", None)
    if custom is not None and callable(custom):
        return msgpack.ExtType(_OBJ, _pack([_type_name(cls), _canon(custom())]))
    return _leaf(value)  # TypeError for types the codec does not know


def _canon_decimal(value: Decimal) -> Any:
    if value.is_finite():
        if value == value.to_integral_value():
            return _canon(int(value))
        if Decimal(float(value)) == value:  # 1.5 == Decimal("1.5"): one key
            return float(value)
        return msgpack.ExtType(_DECIMAL, str(value.normalize()).encode())
    return _canon(float(value)) if not value.is_snan() else _leaf(value)


def _leaf(value: Any) -> msgpack.ExtType:
    return msgpack.ExtType(_LEAF, codec.encode(value))


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True, strict_types=True)
    return data


def canonical_digest(arguments: dict[str, Any]) -> str:
    """blake2b-128 hex of the named arguments (see the module docstring for the guarantees)."""
    items = []
    for name in sorted(arguments):
        try:
            items.append([name, _canon(arguments[name])])
        except TypeError as exc:
            raise TypeError(
                f"cannot build a cache key from argument {name!r}: {exc}. Or give the type a "
                "__cache_key__() method, or pass key= to @cached"
            ) from exc
    return hashlib.blake2b(KEY_SCHEME + _pack(items), digest_size=16).hexdigest()


def shorten(key: str) -> str:
    """Keep keys bounded: a readable prefix plus a hash of the whole key."""
    if len(key) <= MAX_KEY_LENGTH:
        return key
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return f"{key[:100]}#{digest}"


def function_name(func: Callable[..., Any]) -> str:
    """The L1 segment and L2 key prefix of ``func``: ``module.qualname``, so it must identify it.

    A function defined inside another (``<locals>``) or a lambda shares its qualname with every
    other function defined there under that name (two lambdas; a def in two branches), so the
    definition line is appended: ``module.make.<locals>.scaled@12``. It is stable across
    processes running the same code, unlike ``id()``. Closures of *one* def (a factory called
    twice) still share it: :meth:`TierCache.register` refuses the second (pass ``name=``).
    Partials and callable instances have no qualname (two partials would share): refused.
    """
    module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(f"@cached needs a function or method, not {type(func).__name__} "
                        "(wrap it in a def, whose name then identifies the cache entries)")
    name = f"{module}.{qualname}"
    code = getattr(func, "__code__", None)
    if code is not None and "<" in qualname:  # <locals>, <lambda>
        name += f"@{code.co_firstlineno}"
    return name


def definition_site(func: Callable[..., Any]) -> str:
    """``file:line`` of ``func``'s def, for error messages."""
    code = getattr(func, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code is not None else repr(func)
