"""TierCache: the one core behind ``@cache.cached`` and the get/set API, sync and async.

Read path: L1 (answered in C by the wrapper, never reaching this module) -> L2 -> loader,
with single-flight per key. Every method here is a *flow* (see :mod:`tiercache._singleflight`)
run by a thin sync or async shell, so both entry points share one implementation.

Coherence rule: after an ``invalidate*``/``set``/``delete`` returns, no tier of this process
serves the old value. A global generation number is bumped by every invalidation (local or
from the bus); a load that overlapped one neither fills L1 nor keeps its L2 write, and callers
arriving after it start a new flight instead of joining the old one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar

from tiercache import health as _health
from tiercache._invalidation import Coherence, InvalidationBus
from tiercache._l1index import L1Index
from tiercache._singleflight import (
    Call,
    Flight,
    Flow,
    SingleFlight,
    Sleep,
    TierOp,
    drive_async,
    drive_sync,
)
from tiercache.decorators import (
    MAX_KEY_LENGTH,
    Cached,
    FunctionSpec,
    KeyFn,
    TagsArg,
    make_cached,
    warm,
    warm_sync,
)
from tiercache.health import LoaderStats
from tiercache.tiers.base import MISSING

__all__ = ["LoaderStats", "TierCache"]

log = logging.getLogger("tiercache")
P = ParamSpec("P")
R = TypeVar("R")


class TierCache(Coherence):
    """L1 (MemoryTier) + L2 (RedisTier) in front of loaders; either tier may be None.

    ``cache_none``: cache ``None`` results (negative caching) by default. ``bus``: keep other
    processes' L1 coherent through Redis pub/sub (needs both tiers). ``lock_wait``: how long a
    ``lock=True`` caller waits for another process's load before loading itself;
    ``lease_ttl``: lifetime of that lease. ``min_hit_ratio``/``min_requests``/
    ``max_error_rate``: thresholds for :meth:`health`.
    """

    def __init__(
        self,
        l1: Any = None,
        l2: Any = None,
        namespace: str = "default",
        name: str | None = None,
        *,
        cache_none: bool = True,
        bus: bool = True,
        lock_wait: float = 3.0,
        lease_ttl: float = 10.0,
        bus_wait: float = 1.0,
        min_hit_ratio: float = 0.8,
        min_requests: int = 100,
        max_error_rate: float = 0.05,
        pool: Any = None,
    ) -> None:
        if ":" in namespace or not namespace:
            raise ValueError("namespace must be a non-empty string without ':'")
        self.l1, self.l2, self.namespace = l1, l2, namespace
        self.name = name or namespace
        self.cache_none = cache_none
        self.lock_wait, self.lease_ttl, self.bus_wait = lock_wait, lease_ttl, bus_wait
        self.thresholds = {"min_hit_ratio": min_hit_ratio, "min_requests": min_requests,
                           "max_error_rate": max_error_rate}
        self.pool = pool  # a ShardedPool whose health() joins ours
        self.loader = LoaderStats()
        self._flights = SingleFlight()
        self._index = L1Index()
        self._gen = 0
        self._writes: dict[tuple[str, int], int] = {}  # (L2 key, load's gen) -> in flight
        self._writes_lock = threading.Lock()
        self._fence = threading.RLock()  # generation bumps + L1 drops vs. L1 fills
        self._recent: OrderedDict[str, tuple[float, tuple[str, ...]]] = OrderedDict()
        self.raced_writes_undone = 0
        self._specs: dict[str, FunctionSpec] = {}
        self._segments: dict[str, Any] = {}
        self._kv = self._segment(f"{namespace}:") if l1 is not None else None
        self._prefix = f"{namespace}:"
        self._bus: InvalidationBus | None = None
        if bus and l1 is not None and l2 is not None:
            self._bus = InvalidationBus(l2, namespace, self._on_bus_message, self._on_bus_connect)

    # ------------------------------------------------------------------ decorating

    def cached(
        self,
        ttl: float | timedelta | None = None,
        tags: TagsArg = None,
        key: KeyFn | None = None,
        lock: bool = False,
        cache_none: bool | None = None,
        l1_ttl: float | timedelta | None = None,
    ) -> Callable[[Callable[P, R]], Cached[P, R]]:
        """Cache a sync or async function; see :mod:`tiercache.decorators` for keys.

        ``ttl``/``l1_ttl`` are seconds (or ``timedelta``); ``tags`` a list or a callable of
        the arguments; ``key`` a callable building the relative L2 key; ``lock`` takes a
        Redis lease so one process loads.
        """
        if callable(ttl):
            raise TypeError("use @cache.cached() with parentheses (ttl= got a function)")

        def decorate(func: Callable[P, R]) -> Cached[P, R]:
            wrapper: Cached[P, R] = make_cached(self, func, ttl=ttl, tags=tags, key=key,
                                                lock=lock, cache_none=cache_none, l1_ttl=l1_ttl)
            return wrapper

        return decorate

    def _segment(self, name: str, prefix: str = "") -> Any:
        """Our L1 segment ``name``; ``prefix``: how every relative L2 key in it starts."""
        segment = self._segments.get(name)
        if segment is None and self.l1 is not None:
            segment = self._segments[name] = self.l1.segment(name)
        if segment is not None:
            self._index.register(segment, prefix)
        return segment

    def register(self, spec: FunctionSpec) -> Any:
        """Record a decorated function; returns its L1 segment (None without L1)."""
        if spec.name in self._specs:
            log.warning("tiercache: %s decorated twice in cache %r; entries are shared",
                        spec.name, self.name)
        self._specs[spec.name] = spec
        prefix = f"{spec.name}:"
        if spec.key is not None or len(prefix) + 32 > MAX_KEY_LENGTH:
            prefix = ""  # custom or shortened keys: no common prefix to rely on
        spec.segment = self._segment(f"{self.namespace}:{spec.name}", prefix)
        return spec.segment

    # ------------------------------------------------------------------ read path

    def read_sync(self, spec: FunctionSpec, l1key: Hashable | None, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
        return drive_sync(self._read(spec, l1key, args, kwargs))

    def read_async(self, spec: FunctionSpec, l1key: Hashable | None, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
        return drive_async(self._read(spec, l1key, args, kwargs))

    def _read(self, spec: FunctionSpec, l1key: Hashable | None, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Flow[Any]:
        rel = spec.relative_key(args, kwargs)
        tags = spec.tags_for(args, kwargs)
        yield from self._bus_ready()
        gen = self._gen
        value, cacheable, ttl = yield Flight(
            self._flights, (rel, gen), lambda: self._fetch(spec, rel, args, kwargs, tags, gen))
        if cacheable and l1key is not None:
            self._fill(spec.segment, rel, l1key, value,
                       self._l1_ttl(spec.l1_ttl, ttl), tags, gen)
        return value

    def _fetch(self, spec: FunctionSpec, rel: str, args: tuple[Any, ...],
               kwargs: dict[str, Any], tags: list[str], gen: int) -> Flow[Any]:
        """L2, then (optionally under a lease) the loader; -> (value, cacheable, ttl)."""
        full, l2 = self.full_key(rel), self.l2
        if l2 is not None:
            entry = yield TierOp(l2, "get_entry", full)
            if entry is not MISSING:
                return entry.value, True, _remaining(entry)
        token = None
        if spec.lock and l2 is not None and _breaker_state(l2) != "open":
            token = yield TierOp(l2, "acquire_lease", full, int(self.lease_ttl * 1000))
            if token is None:  # another process is loading: wait for its value, bounded
                self.loader.lock_waits += 1
                deadline, delay = time.monotonic() + self.lock_wait, 0.005
                while time.monotonic() < deadline:
                    yield Sleep(delay)
                    delay = min(delay * 2, 0.1)
                    entry = yield TierOp(l2, "get_entry", full)
                    if entry is not MISSING:
                        return entry.value, True, _remaining(entry)
        try:
            value, seconds = yield from self._load(spec.func, args, kwargs)
            if value is None and not spec.cache_none:
                return value, False, None
            if l2 is not None:
                yield from self._l2_write(full, value, spec.ttl, seconds, tags, gen)
            ttl = spec.ttl if spec.ttl is not None or l2 is None else getattr(l2, "ttl", None)
            return value, gen == self._gen, ttl
        finally:
            if token is not None:
                yield TierOp(l2, "release_lease", full, token)

    def _load(self, func: Callable[..., Any], args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Flow[tuple[Any, float]]:
        began = time.perf_counter()
        try:
            value = yield Call(func, args, kwargs)
        except BaseException:
            self.loader.observe(time.perf_counter() - began, True)
            raise
        seconds = time.perf_counter() - began
        self.loader.observe(seconds, False)
        return value, seconds

    def _l2_write(self, full: str, value: Any, ttl: float | None, seconds: float,
                  tags: list[str], gen: int) -> Flow[None]:
        """Write a value loaded in generation ``gen``, unless an invalidation overlapped.

        Registered *before* the generation check, so an invalidation either makes us skip
        the write or sees it in flight and waits for it (and we undo it after it landed).
        """
        self._writing(full, +1, gen)
        try:
            if gen != self._gen:
                return
            try:
                yield TierOp(self.l2, "set", full, value, ttl, load_time=seconds)
            except TypeError as exc:  # unencodable: serve it, keep it in L1 only, say so
                self.loader.encode_errors += 1
                log.warning("tiercache: %s not stored in L2: %s", full, exc)
                return
            self._wrote(full, tags)
            if tags:
                yield TierOp(self.l2, "add_tags", full, tags, ttl)
            if gen != self._gen:  # an invalidation raced this write: do not leave it behind
                yield TierOp(self.l2, "delete", full)
        finally:
            self._writing(full, -1, gen)

    def _l1_ttl(self, l1_ttl: float | None, ttl: float | None) -> float | None:
        """min(L1 TTL, the entry's TTL); None = the MemoryTier's default."""
        if l1_ttl is None and self.l1 is not None:
            l1_ttl = self.l1.store.ttl
        candidates = [t for t in (l1_ttl, ttl) if t is not None]
        return min(candidates) if candidates else None

    # ------------------------------------------------------------------ key/value API

    def _get(self, key: str, default: Any) -> Flow[Any]:
        if self._kv is not None:
            value = self._kv.get(key, MISSING)
            if value is not MISSING:
                return value
        if self.l2 is None:
            return default
        yield from self._bus_ready()
        gen = self._gen
        entry = yield TierOp(self.l2, "get_entry", self.full_key(key))
        if entry is MISSING:
            return default
        self._fill(self._kv, key, key, entry.value, self._l1_ttl(None, _remaining(entry)), (),
                   gen)
        return entry.value

    def _get_many(self, keys: list[str]) -> Flow[dict[str, Any]]:
        found: dict[str, Any] = {}
        if self._kv is not None:
            for key in keys:
                value = self._kv.get(key, MISSING)
                if value is not MISSING:
                    found[key] = value
        rest = [k for k in keys if k not in found]
        if rest and self.l2 is not None:
            yield from self._bus_ready()
            gen = self._gen
            fulls = [self.full_key(k) for k in rest]
            hits = yield TierOp(self.l2, "get_many_entries", fulls)
            cut = len(self._prefix)
            for full, entry in hits.items():
                found[full[cut:]] = entry.value
                self._fill(self._kv, full[cut:], full[cut:], entry.value,
                           self._l1_ttl(None, _remaining(entry)), (), gen)
        return found

    def _set_many(self, mapping: Mapping[str, Any], ttl: float | None,
                  tags: list[str]) -> Flow[None]:
        yield from self._bus_ready()
        if self.l2 is not None:
            self._gen += 1  # fence: loads that began before must not write L2 after us
            fence = self._gen
            full = {self.full_key(k): v for k, v in mapping.items()}
            if len(full) == 1:
                ((key, value),) = full.items()
                yield TierOp(self.l2, "set", key, value, ttl)
            else:
                yield TierOp(self.l2, "set_many", full, ttl)
            if tags:
                for key in full:
                    yield TierOp(self.l2, "add_tags", key, tags, ttl)
            yield from self._drain_writes(list(full), fence)
        l1ttl = self._l1_ttl(None, ttl)
        with self._fence:
            self._gen += 1  # loads that began before this write must not overwrite it in L1
            self._index.drop_keys(mapping)
            gen = self._gen
            for key, value in mapping.items():
                if self._kv is not None:
                    self._kv.delete(key)
                self._fill(self._kv, key, key, value, l1ttl, tags, gen)
        yield from self._publish(keys=list(mapping))

    async def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key`` (relative to the namespace) or ``default``."""
        return await drive_async(self._get(key, default))

    def get_sync(self, key: str, default: Any = None) -> Any:
        return drive_sync(self._get(key, default))

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Only the hits, keyed as given."""
        return await drive_async(self._get_many(list(keys)))

    def get_many_sync(self, keys: Iterable[str]) -> dict[str, Any]:
        return drive_sync(self._get_many(list(keys)))

    async def set(self, key: str, value: Any, ttl: float | None = None,
                  tags: Iterable[str] = ()) -> None:
        """Write every tier; other processes drop their L1 copy."""
        await drive_async(self._set_many({key: value}, ttl, list(tags)))

    def set_sync(self, key: str, value: Any, ttl: float | None = None,
                 tags: Iterable[str] = ()) -> None:
        drive_sync(self._set_many({key: value}, ttl, list(tags)))

    async def set_many(self, mapping: Mapping[str, Any], ttl: float | None = None) -> None:
        await drive_async(self._set_many(mapping, ttl, []))

    def set_many_sync(self, mapping: Mapping[str, Any], ttl: float | None = None) -> None:
        drive_sync(self._set_many(mapping, ttl, []))

    async def delete(self, key: str) -> bool:
        """Remove ``key`` from every tier here and from other processes' L1."""
        return bool(await drive_async(self._invalidate(keys=[key])))

    def delete_sync(self, key: str) -> bool:
        return bool(drive_sync(self._invalidate(keys=[key])))

    # ------------------------------------------------------------------ warm, stats, health

    async def warm(self, fn: Callable[..., Any], list_of_args: Iterable[Any],
                   concurrency: int = 16) -> int:
        """Preload entries through ``fn`` (a cached function), at most ``concurrency`` at once.

        Each item is an args tuple, a kwargs dict, or a single argument.
        """
        return await warm(fn, list_of_args, concurrency)

    def warm_sync(self, fn: Callable[..., Any], list_of_args: Iterable[Any],
                  concurrency: int = 16) -> int:
        """:meth:`warm` for sync functions, on a thread pool."""
        return warm_sync(fn, list_of_args, concurrency)

    def stats(self) -> dict[str, Any]:
        """Plain snapshot: ``name``, ``l1`` (this cache's segments), ``l2``, ``loader``, ``bus``."""
        return _health.snapshot(self)

    async def health(self) -> dict[str, Any]:
        """``{"status": healthy|degraded|unhealthy, "reasons": [...], "checks": {...}}``.

        With ``pool=`` (a ShardedPool), its per-shard health is part of the report.
        """
        report = await drive_async(_health.check(self))
        if self.pool is not None:
            report = _health.with_pool(report, await self.pool.health())
        return report

    def health_sync(self) -> dict[str, Any]:
        """:meth:`health` without the pool (ShardedPool.health() is async-only)."""
        return drive_sync(_health.check(self))

    @property
    def bus(self) -> InvalidationBus | None:
        return self._bus

    @property
    def flights(self) -> SingleFlight:
        return self._flights

    @property
    def segments(self) -> dict[str, Any]:
        return dict(self._segments)

    async def aclose(self) -> None:
        """Stop the bus and close L2 (L1 is left as is: it may be shared)."""
        if self._bus is not None:
            await self._bus.astop()
        if self.l2 is not None:
            await self.l2.close()

    def close(self) -> None:
        if self._bus is not None:
            self._bus.stop()
        if self.l2 is not None:
            self.l2.close_sync()

    def __repr__(self) -> str:
        return (f"TierCache(name={self.name!r}, l1={self.l1 is not None}, "
                f"l2={self.l2 is not None}, functions={len(self._specs)})")


def _remaining(entry: Any) -> float | None:
    if entry.ttl is None:
        return None
    return max(0.0, float(entry.ttl) - (time.time() - float(entry.stored_at)))


def _breaker_state(l2: Any) -> str:
    breaker = getattr(l2, "breaker", None)
    return str(getattr(breaker, "state", "closed"))
