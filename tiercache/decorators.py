"""``@cache.cached``: what a decorated function is (its spec) and the wrapper around it.

Keys are built in :mod:`tiercache._keys` (see there for why they are stable); the read path
is :class:`tiercache.cache.TierCache`'s. The wrapper is the MemoryTier's C hit path, which
calls the core only on an L1 miss.

An L1 hit hands every caller **the same object** (like ``functools.lru_cache`` and Caffeine):
a caller that mutates it changes what later callers get. Return immutable values (tuples,
frozen dataclasses), or pass ``copy=`` to ``@cached``: ``"deep"``/``True``
(``copy.deepcopy``), ``"shallow"`` (``copy.copy``) or a callable, applied to every value
handed out (hits and loads; about one extra Python call per hit, plus the copy).
"""

from __future__ import annotations

import asyncio
import copy as _copy
import functools
import inspect
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, TypeVar

from tiercache._batching import Coalescer
from tiercache._keys import MAX_KEY_LENGTH, canonical_digest, function_name, shorten
from tiercache._validate import ttl_seconds
from tiercache.tiers.memory import MemoryTier

if TYPE_CHECKING:
    from tiercache._refresh import ReadRules
    from tiercache.cache import TierCache

__all__ = ["MAX_KEY_LENGTH", "BatchLoader", "Cached", "CopyArg", "FunctionSpec", "make_cached",
           "warm", "warm_sync"]

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

CopyArg = bool | Literal["deep", "shallow"] | Callable[[Any], Any] | None

#: ``batch=``: items -> {item: value} (missing = None) or values in order; usually async.
BatchLoader = Callable[[list[Any]], Any]


@dataclass(eq=False)
class FunctionSpec:
    """Everything the core needs to serve one decorated function."""

    func: Callable[..., Any]
    name: str  # "module.qualname" (or name=): the L2 key prefix and the L1 segment name
    ttl: float | None
    tags: TagsArg
    key: KeyFn | None
    lock: bool
    cache_none: bool
    l1_ttl: float | None
    is_async: bool
    signature: inspect.Signature | None = field(default=None, repr=False)
    segment: Any = field(default=None, repr=False)  # the L1 segment, resolved once (register)
    encode_warned: bool = field(default=False, repr=False)  # unencodable result reported
    read_rules: ReadRules | None = None  # refresh-ahead / stale windows (tiercache._refresh)
    stale_segment: Any = field(default=None, repr=False)  # envelopes kept for stale reads
    batcher: Coalescer[Any, Any] | None = field(default=None, repr=False)  # batch= loads
    # parameter names when a positional call binds trivially (no defaults, *args, **kw,
    # positional-only or keyword-only parameters): relative_key skips Signature.bind, which
    # costs ~10 us per miss (measured under the 10k-concurrency e2e burst: 9% of the CPU)
    plain_names: tuple[str, ...] | None = field(default=None, repr=False)

    def batch_item(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The one argument of a ``batch=`` function's call (what the batch loader gets)."""
        return args[0] if args else next(iter(kwargs.values()))

    def __post_init__(self) -> None:
        try:
            self.signature = inspect.signature(self.func)
            params = self.signature.parameters.values()
            if all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in params):
                self.plain_names = tuple(self.signature.parameters)
        except (TypeError, ValueError):  # some builtins: bind nothing, key by position
            self.signature = None

    def relative_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The L2 key of a call without the namespace (what ``key_for`` returns)."""
        if self.key is not None:
            key = self.key(*args, **kwargs)
            if not isinstance(key, str):
                raise TypeError(f"key= function must return str, got {type(key).__name__}")
        else:
            names = self.plain_names
            if names is not None and not kwargs and len(args) == len(names):
                named: dict[str, Any] = dict(zip(names, args, strict=True))  # what bind gives
            elif self.signature is None:
                named = {"*args": args, "**kwargs": kwargs}
            else:  # by parameter name, defaults applied: the key's stable form
                bound = self.signature.bind(*args, **kwargs)
                bound.apply_defaults()
                named = bound.arguments
            key = f"{self.name}:{canonical_digest(named)}"
        return key if len(key) <= MAX_KEY_LENGTH else shorten(key)

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
    name: str | None = None,
    copy: CopyArg = None,
    read_rules: ReadRules | None = None,
    batch: BatchLoader | None = None,
) -> Any:
    """Wrap ``func``: the MemoryTier's C hit path in front, the core behind it on a miss.

    The returned wrapper also carries ``invalidate(*args, **kw)`` (a coroutine function for
    async ``func``), ``invalidate_all()``, ``key_for(*args, **kw)`` and ``cache``.
    """
    if isinstance(tags, str):
        raise TypeError("tags= must be a list of tags or a callable, not a str")
    if name is not None and (not isinstance(name, str) or not name or ":" in name):
        raise ValueError(f"name= must be a non-empty str without ':', got {name!r}")
    copier = _copier(copy)
    ttl, l1_ttl = ttl_seconds(ttl, "ttl"), ttl_seconds(l1_ttl, "l1_ttl")
    is_async = inspect.iscoroutinefunction(func)
    spec = FunctionSpec(
        func=func,
        name=name or function_name(func),
        ttl=ttl,
        tags=tags if tags is None or callable(tags) else list(tags),
        key=key,
        lock=lock,
        cache_none=cache.cache_none if cache_none is None else cache_none,
        l1_ttl=l1_ttl,
        is_async=is_async,
        read_rules=read_rules,
    )
    if batch is not None:
        spec.batcher = _batcher(func, batch, is_async)
    segment = cache.register(spec)
    # the miss handler the C wrapper calls: the core's shell, bound once (no closure frame)
    miss = functools.partial(cache.read_async if is_async else cache.read_sync, spec)

    if is_async:

        async def invalidate(*args: Any, **kwargs: Any) -> int:
            return await cache.invalidate_call(spec, args, kwargs)

        async def invalidate_all() -> int:
            return await cache.invalidate_function(spec)

    else:

        def invalidate(*args: Any, **kwargs: Any) -> int:  # type: ignore[misc]
            return cache.invalidate_call_sync(spec, args, kwargs)

        def invalidate_all() -> int:  # type: ignore[misc]
            return cache.invalidate_function_sync(spec)

    def key_for(*args: Any, **kwargs: Any) -> str:
        return spec.relative_key(args, kwargs)

    wrapper: Any = MemoryTier.wrap_segment(func, segment, miss)
    if copier is not None:
        wrapper = _copying(wrapper, func, copier, is_async)
    wrapper.invalidate = invalidate
    wrapper.invalidate_all = invalidate_all
    wrapper.key_for = key_for
    wrapper.cache = cache
    wrapper.spec = spec
    return wrapper


def _batcher(func: Callable[..., Any], batch: BatchLoader, is_async: bool) -> Coalescer[Any, Any]:
    """The coalescer of a ``batch=`` function: the misses of one loop turn, one call."""
    name = getattr(func, "__qualname__", func)
    if not is_async:
        raise TypeError(f"batch= needs an async function ({name} is sync): misses are batched "
                        "per event-loop turn")
    if not callable(batch):
        raise TypeError(f"batch= must be a callable taking a list of arguments, got {batch!r}")
    try:
        params = [p for p in inspect.signature(func).parameters.values()
                  if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    if len(params) != 1:
        raise TypeError(f"batch= needs a function of exactly one argument (the item the batch "
                        f"loader gets); {name} takes {len(params)}")

    async def many(items: list[Any]) -> list[Any]:
        result = batch(items)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, Mapping):  # missing items are None (not found)
            return [result.get(item) for item in items]
        if isinstance(result, Sequence) and not isinstance(result, str | bytes):
            if len(result) != len(items):
                raise TypeError(f"batch loader of {name} returned {len(result)} values for "
                                f"{len(items)} items (return a mapping item -> value, or one "
                                "value per item in order)")
            return list(result)
        raise TypeError(f"batch loader of {name} must return a mapping item -> value or a "
                        f"sequence, got {type(result).__name__}")

    return Coalescer(many)


def _copier(copy: CopyArg) -> Callable[[Any], Any] | None:
    if copy is None or copy is False:
        return None
    if copy is True or copy == "deep":
        return _copy.deepcopy
    if copy == "shallow":
        return _copy.copy
    if callable(copy):
        return copy
    raise ValueError(f"copy= must be True, 'deep', 'shallow', a callable or None, got {copy!r}")


def _copying(inner: Any, func: Callable[..., Any], copier: Callable[[Any], Any],
             is_async: bool) -> Any:
    """A Python shell over the C wrapper that hands out ``copier(value)``."""
    if is_async:

        async def copied_async(*args: Any, **kwargs: Any) -> Any:
            return copier(await inner(*args, **kwargs))

        wrapper: Any = functools.wraps(func)(copied_async)
    else:

        def copied(*args: Any, **kwargs: Any) -> Any:
            return copier(inner(*args, **kwargs))

        wrapper = functools.wraps(func)(copied)
    wrapper.segment = inner.segment
    wrapper.l1_key = inner.l1_key
    wrapper.uncopied = inner  # the C wrapper itself (shared objects, full speed)
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


def _as_call(item: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(item, tuple):
        return item, {}
    if isinstance(item, dict):
        return (), item
    return (item,), {}
