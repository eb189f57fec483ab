"""``@cache.cached``: what a decorated function is, and how its L2 keys are built.

Key stability (the L2 key is shared by every process and survives restarts and upgrades):

* the key is ``"{namespace}:{module}.{qualname}:{digest}"``; ``digest`` is the blake2b-128 hex
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

import asyncio
import datetime as dt
import enum
import hashlib
import inspect
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, ParamSpec, Protocol, TypeVar

import msgpack

from tiercache import codec
from tiercache.tiers.memory import MemoryTier

if TYPE_CHECKING:
    from tiercache.cache import TierCache

__all__ = [
    "KEY_SCHEME",
    "MAX_KEY_LENGTH",
    "Cached",
    "FunctionSpec",
    "canonical_digest",
    "make_cached",
    "warm",
    "warm_sync",
]

KEY_SCHEME: Final = b"tiercache-key-v2"
MAX_KEY_LENGTH: Final = 200

P = ParamSpec("P")
R_co = TypeVar("R_co", covariant=True)


class Cached(Protocol[P, R_co]):
    """What ``@cache.cached`` returns: the function (same signature) plus cache controls.

    ``invalidate`` returns an ``int`` for sync functions and a coroutine for async ones.
    """

    spec: FunctionSpec
    cache: TierCache
    segment: Any  # the L1 segment (None without L1)
    __name__: str
    __qualname__: str
    __wrapped__: Callable[..., Any]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def __get__(self, instance: Any, owner: type | None = None) -> Any: ...

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> Any: ...

    def invalidate_all(self) -> Any: ...

    def key_for(self, *args: P.args, **kwargs: P.kwargs) -> str: ...

    def l1_key(self, *args: P.args, **kwargs: P.kwargs) -> Hashable: ...


TagsArg = Iterable[str] | Callable[..., Iterable[str]] | None
KeyFn = Callable[..., str]

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
                f"cannot build a cache key from argument {name!r}: {exc}. Give the type a "
                "__cache_key__() method, register it with tiercache.codec.register(), or pass "
                "key= to @cached"
            ) from exc
    return hashlib.blake2b(KEY_SCHEME + _pack(items), digest_size=16).hexdigest()


def shorten(key: str) -> str:
    """Keep keys bounded: a readable prefix plus a hash of the whole key."""
    if len(key) <= MAX_KEY_LENGTH:
        return key
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return f"{key[:100]}#{digest}"


@dataclass(eq=False)
class FunctionSpec:
    """Everything the core needs to serve one decorated function."""

    func: Callable[..., Any]
    name: str  # "module.qualname": the L2 key prefix and the L1 segment name
    ttl: float | None
    tags: TagsArg
    key: KeyFn | None
    lock: bool
    cache_none: bool
    l1_ttl: float | None
    is_async: bool
    signature: inspect.Signature | None = field(default=None, repr=False)
    segment: Any = field(default=None, repr=False)  # the L1 segment, resolved once (register)

    def __post_init__(self) -> None:
        try:
            self.signature = inspect.signature(self.func)
        except (TypeError, ValueError):  # some builtins: bind nothing, key by position
            self.signature = None

    def relative_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The L2 key of a call without the namespace (what ``key_for`` returns)."""
        if self.key is not None:
            custom = self.key(*args, **kwargs)
            if not isinstance(custom, str):
                raise TypeError(f"key= function must return str, got {type(custom).__name__}")
            return shorten(custom)
        return shorten(f"{self.name}:{canonical_digest(self.bind(args, kwargs))}")

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Arguments by parameter name, defaults applied (the key's stable form)."""
        if self.signature is None:
            return {"*args": args, "**kwargs": kwargs}
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    def tags_for(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
        if self.tags is None:
            return []
        tags = self.tags(*args, **kwargs) if callable(self.tags) else self.tags
        if isinstance(tags, str):  # would be one tag per character: nothing would match
            raise TypeError(f"tags= callable of {self.name} must return a list of tags, "
                            "not a str")
        return [str(t) for t in tags]


def make_cached(
    cache: TierCache,
    func: Callable[..., Any],
    *,
    ttl: float | timedelta | None,
    tags: TagsArg,
    key: KeyFn | None,
    lock: bool,
    cache_none: bool | None,
    l1_ttl: float | timedelta | None,
) -> Any:
    """Wrap ``func``: the MemoryTier's C hit path in front, the core behind it on a miss.

    The returned wrapper also carries ``invalidate(*args, **kw)`` (a coroutine function for
    async ``func``), ``invalidate_all()``, ``key_for(*args, **kw)`` and ``cache``.
    """
    if isinstance(tags, str):
        raise TypeError("tags= must be a list of tags or a callable, not a str")
    ttl, l1_ttl = _seconds(ttl, "ttl"), _seconds(l1_ttl, "l1_ttl")
    is_async = inspect.iscoroutinefunction(func)
    spec = FunctionSpec(
        func=func,
        name=_function_name(func),
        ttl=ttl,
        tags=tags if tags is None or callable(tags) else list(tags),
        key=key,
        lock=lock,
        cache_none=cache.cache_none if cache_none is None else cache_none,
        l1_ttl=l1_ttl,
        is_async=is_async,
    )
    segment = cache.register(spec)

    if is_async:

        def miss(l1key: Hashable | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            return cache.read_async(spec, l1key, args, kwargs)

        async def invalidate(*args: Any, **kwargs: Any) -> int:
            return await cache.invalidate_call(spec, args, kwargs)

        async def invalidate_all() -> int:
            return await cache.invalidate_function(spec)

    else:

        def miss(l1key: Hashable | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            return cache.read_sync(spec, l1key, args, kwargs)

        def invalidate(*args: Any, **kwargs: Any) -> int:  # type: ignore[misc]
            return cache.invalidate_call_sync(spec, args, kwargs)

        def invalidate_all() -> int:  # type: ignore[misc]
            return cache.invalidate_function_sync(spec)

    def key_for(*args: Any, **kwargs: Any) -> str:
        return spec.relative_key(args, kwargs)

    wrapper: Any = MemoryTier.wrap_segment(func, segment, miss)
    wrapper.invalidate = invalidate
    wrapper.invalidate_all = invalidate_all
    wrapper.key_for = key_for
    wrapper.cache = cache
    wrapper.spec = spec
    return wrapper


async def warm(fn: Callable[..., Any], list_of_args: Iterable[Any], concurrency: int = 16) -> int:
    """Call ``fn`` once per item, at most ``concurrency`` at once (sync fns on threads)."""
    gate = asyncio.Semaphore(concurrency)
    spec = getattr(fn, "spec", None)
    is_async = spec.is_async if isinstance(spec, FunctionSpec) else inspect.iscoroutinefunction(fn)

    async def one(item: Any) -> None:
        args, kwargs = _as_call(item)
        async with gate:
            if is_async:
                await fn(*args, **kwargs)
            else:
                await asyncio.to_thread(fn, *args, **kwargs)

    items = list(list_of_args)
    await asyncio.gather(*(one(item) for item in items))
    return len(items)


def warm_sync(fn: Callable[..., Any], list_of_args: Iterable[Any], concurrency: int = 16) -> int:
    """:func:`warm` for sync functions, on a thread pool."""
    items = [_as_call(item) for item in list_of_args]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(fn, *a, **kw) for a, kw in items]:
            future.result()
    return len(items)


def _function_name(func: Callable[..., Any]) -> str:
    """``module.qualname``: the L1 segment and the L2 key prefix, so it must identify ``func``.

    Partials and callable instances have none (two partials would share entries): refused.
    """
    module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(f"@cached needs a function or method, not {type(func).__name__} "
                        "(wrap it in a def, whose name then identifies the cache entries)")
    return f"{module}.{qualname}"


def _seconds(value: float | timedelta | None, name: str) -> float | None:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be > 0 seconds or None, got {value!r}")
    return value


def _as_call(item: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(item, tuple):
        return item, {}
    if isinstance(item, dict):
        return (), item
    return (item,), {}
