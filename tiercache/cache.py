"""TierCache: the one core behind ``@cache.cached`` and the get/set API, sync and async.

The read path of a ``@cached`` call, top to bottom (everything below the L1 hit is here):

1. L1 hit: answered in C by the wrapper (:mod:`tiercache.tiers.memory`); never reaches Python.
2. L1 miss: the wrapper calls :meth:`TierCache.read_sync` / :meth:`read_async` -- thin shells
   that drive the one flow :meth:`_read` (see :mod:`tiercache._flow`).
3. :meth:`_read` builds the relative key, waits (bounded) for the bus to subscribe, and joins
   or leads the single-flight of ``(key, generation)``.
4. The leader runs :meth:`_fetch`: L2 ``get_entry``; on a miss, optionally a Redis lease, then
   :meth:`call_loader` (the user's function) and :meth:`write_l2` (fenced by the generation).
   Async, the L2 reads and writes of one event-loop turn go to Redis as one pipeline, and a
   function with ``batch=`` loads the misses of one turn with one call (:mod:`._batching`).
   A function with a read policy (refresh-ahead, stale windows) takes the same steps in
   :mod:`tiercache._refresh`, which also decides when to reload in the background.
5. Back in :meth:`_read`: fill L1 unless an invalidation overlapped (``Coherence.fill``).

Coherence rule: after an ``invalidate*``/``set``/``delete`` returns, no tier of this process
serves the old value; the bookkeeping is :class:`~tiercache._invalidation.Coherence`'s.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Hashable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

from tiercache import health as _health
from tiercache._batching import L2Ops
from tiercache._bus import InvalidationBus
from tiercache._flow import (
    BusGate,
    Call,
    Coalesced,
    Flight,
    Flow,
    Sleep,
    TierOp,
    drive_async,
    drive_sync,
)
from tiercache._invalidation import STALE, Coherence
from tiercache._keys import MAX_KEY_LENGTH, definition_site, function_name
from tiercache._kv import KeyValueAPI, remaining
from tiercache._l1index import MAX_PATTERN, glob_to_regex
from tiercache._refresh import Refresher, policy_read, rules_for
from tiercache._singleflight import SingleFlight
from tiercache._validate import duration_seconds, ttl_seconds
from tiercache.decorators import (
    BatchLoader,
    Cached,
    CopyArg,
    FunctionSpec,
    KeyFn,
    TagsArg,
    make_cached,
    warm,
    warm_sync,
)
from tiercache.metrics.snapshot import LoaderStats
from tiercache.policies.read import ReadPolicy
from tiercache.policies.read import l1_ttl as l1_ttl_rule
from tiercache.tiers.base import MISSING, RemoteTier

__all__ = ["LoaderStats", "TierCache"]

if TYPE_CHECKING:
    from tiercache.store import Store

log = logging.getLogger("tiercache")
P = ParamSpec("P")
R = TypeVar("R")
Seconds = float | timedelta | None


class TierCache(KeyValueAPI):
    """L1 (MemoryTier) + L2 (a :class:`~tiercache.tiers.base.RemoteTier`, e.g. RedisTier)
    in front of loaders; either tier may be None.

    ``cache_none``: cache ``None`` results (negative caching) by default. ``bus``: keep other
    processes' L1 coherent through Redis pub/sub (needs both tiers). ``lock_wait``: how long a
    ``lock=True`` caller waits for another process's load before loading itself;
    ``lease_ttl``: lifetime of that lease. ``min_hit_ratio``/``min_requests``/
    ``max_error_rate``: thresholds for :meth:`health`. ``coalesce``: async L2 reads and
    writes made in one event-loop turn go to Redis as one pipeline (:mod:`tiercache._batching`).
    """

    def __init__(
        self,
        l1: Any = None,
        l2: RemoteTier | None = None,
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
        coalesce: bool = True,
    ) -> None:
        if ":" in namespace or not namespace:
            raise ValueError("namespace must be a non-empty string without ':'")
        self.l1, self.l2, self.namespace = l1, l2, namespace
        self.name = name or namespace
        self.cache_none = cache_none
        self.lock_wait = duration_seconds(lock_wait, "lock_wait")
        self.bus_wait = duration_seconds(bus_wait, "bus_wait")
        lease = ttl_seconds(lease_ttl, "lease_ttl")
        if lease is None or lease == float("inf"):
            raise ValueError(f"lease_ttl must be a finite number of seconds, got {lease_ttl!r}")
        self.lease_ttl = lease
        self.thresholds = {"min_hit_ratio": min_hit_ratio, "min_requests": min_requests,
                           "max_error_rate": max_error_rate}
        self.pool = pool  # a ShardedPool whose health() joins ours
        self.loader = LoaderStats()
        self.unencodable: dict[str, str] = {}  # function -> type its last L2 write refused
        self.coherence = co = Coherence(l2, namespace)
        self._flights = SingleFlight()
        self.refresher = Refresher()  # background reloads of read policies
        self.stores: list[Any] = []  # cache.store(...) objects: their health joins ours
        self._policies: list[tuple[Any, Any]] = []  # policy_for(pattern, policy)
        self._specs: dict[str, FunctionSpec] = {}
        self._prefix = co.prefix
        self.l2_ops = L2Ops(l2, coalesce) if l2 is not None else None
        if l1 is not None:
            co.kv = self._segment(co.prefix)
        if bus and l1 is not None and l2 is not None:
            co.bus = InvalidationBus(l2, namespace, co.on_bus_message, co.on_bus_connect)

    # ------------------------------------------------------------------ decorating

    def cached(
        self,
        ttl: Seconds = None,
        tags: TagsArg = None,
        key: KeyFn | None = None,
        lock: bool = False,
        cache_none: bool | None = None,
        l1_ttl: Seconds = None,
        *,
        name: str | None = None,
        copy: CopyArg = None,
        refresh: ReadPolicy | None = None,
        xfetch: ReadPolicy | None = None,
        stale_while_revalidate: Seconds = None,
        stale_if_error: Seconds = None,
        batch: BatchLoader | None = None,
    ) -> Callable[[Callable[P, R]], Cached[P, R]]:
        """Cache a sync or async function; see :mod:`tiercache._keys` for its keys.

        ``ttl``/``l1_ttl`` are seconds (or ``timedelta``); ``tags`` a list or a callable of
        the arguments; ``key`` a callable building the relative L2 key; ``lock`` takes a
        Redis lease so one process loads; ``name`` replaces ``module.qualname`` as the
        function's identity (L1 segment, L2 key prefix); ``copy`` hands every caller its own
        copy of the value (``True``/``"deep"``, ``"shallow"`` or a callable; see
        :mod:`tiercache.decorators`).

        Read policies (:mod:`tiercache.policies`): ``refresh=RefreshAhead(0.8)`` reloads in
        the background after 80% of the TTL while reads keep getting the cached value;
        ``xfetch=XFetch(beta)`` recomputes early with the XFetch probability;
        ``stale_while_revalidate=s`` serves an expired value up to ``s`` seconds while one
        reload runs; ``stale_if_error=s`` serves it up to ``s`` seconds when the loader fails.
        Without them, a policy set with :meth:`policy_for` for the function's name applies.

        ``batch=load_many`` (async functions of one argument): the L2 misses of one
        event-loop turn are loaded with one ``load_many([arg, ...])`` call, which returns a
        mapping arg -> value (a missing arg means ``None``) or the values in order.
        """
        if callable(ttl):
            raise TypeError("use @cache.cached() with parentheses (ttl= got a function)")
        swr = duration_seconds(stale_while_revalidate or 0.0, "stale_while_revalidate")
        sie = duration_seconds(stale_if_error or 0.0, "stale_if_error")
        explicit = rules_for(refresh, xfetch, swr, sie)

        def decorate(func: Callable[P, R]) -> Cached[P, R]:
            rules = explicit
            if rules is None:
                rules = rules_for(self.policy_matching(name or function_name(func), "read"),
                                  None, 0.0, 0.0)
            wrapper: Cached[P, R] = make_cached(
                self, func, ttl=ttl, tags=tags, key=key, lock=lock, cache_none=cache_none,
                l1_ttl=l1_ttl, name=name, copy=copy, read_rules=rules, batch=batch)
            return wrapper

        return decorate

    def _segment(self, name: str, prefix: str = "") -> Any:
        """Our L1 segment ``name``; ``prefix``: how every relative L2 key in it starts."""
        co = self.coherence
        segment = co.segments.get(name)
        if segment is None and self.l1 is not None:
            segment = co.segments[name] = self.l1.segment(name)
        if segment is not None:
            co.index.register(segment, prefix)
        return segment

    def register(self, spec: FunctionSpec) -> Any:
        """Record a decorated function (once); sets and returns its L1 segment.

        Two different functions under one name would share entries. A module-level function
        defined again (a reload) replaces the old one, with a warning; two closures of one
        ``def`` or two lambdas of one line (same name and line) are refused: the error says
        to pass ``name=``.
        """
        old = self._specs.get(spec.name)
        if old is not None and old.func is not spec.func:
            if "<" in spec.name:  # a closure made twice, or two lambdas on one line
                raise TypeError(
                    f"{spec.name} (defined at {definition_site(spec.func)}) is already cached "
                    f"in cache {self.name!r} by another function of that name and line (a "
                    "closure or lambda created twice); they would share cache entries. "
                    "Give each its own identity with @cached(name=...)")
            log.warning("tiercache: %s decorated twice in cache %r; entries are shared",
                        spec.name, self.name)
        self._specs[spec.name] = spec
        prefix = f"{spec.name}:"
        if spec.key is not None or len(prefix) + 32 > MAX_KEY_LENGTH:
            prefix = ""  # custom or shortened keys: no common prefix to rely on
        spec.segment = self._segment(f"{self.namespace}:{spec.name}", prefix)
        if spec.read_rules is not None:
            if self.ttl_of(spec) is None:
                raise ValueError(f"{spec.name}: a read policy needs a TTL (ttl= on @cached or "
                                 "a default ttl on the RedisTier)")
            spec.stale_segment = self._segment(f"{self.namespace}:{spec.name}{STALE}", prefix)
        return spec.segment

    # ------------------------------------------------------------------ policies and stores

    def policy_for(self, pattern: str, policy: Any) -> None:
        """Use ``policy`` for every function or store whose keys match the glob ``pattern``
        and that was not given one explicitly: ``"session:*"`` covers the store
        ``"session"``, ``"myapp.users.*"`` every ``@cached`` function of that module.

        Read policies (RefreshAhead, XFetch) apply to ``@cached`` functions and stores'
        reads; write policies (WriteThrough, WriteBehind) to stores. Call it before
        decorating: a policy is chosen once, when the function or store is created.
        """
        if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN:
            raise ValueError(f"pattern must be a non-empty str of at most {MAX_PATTERN} "
                             "characters")
        self._policies.append((glob_to_regex(pattern), policy))

    def policy_matching(self, name: str, kind: Literal["read", "write"]) -> Any:
        """The first :meth:`policy_for` policy of ``kind`` whose pattern covers ``name``."""
        for matcher, policy in self._policies:
            if isinstance(policy, ReadPolicy) == (kind == "read") and (
                    matcher.fullmatch(name) or matcher.fullmatch(name + ":")):
                return policy
        return None

    def store(self, name: str, *, loader: Callable[..., Any], writer: Any = None,
              deleter: Any = None, policy: Any = None, read: Any = None,
              **options: Any) -> Store:
        """A keyed store over this cache with a write policy (see :mod:`tiercache.store`):
        ``get`` loads through ``loader`` on a miss, ``put``/``delete`` go to ``writer``/
        ``deleter`` as the policy says (``WriteThrough()``, ``WriteBehind(...)``)."""
        from tiercache.store import Store  # the store imports the cache's module

        if policy is None:
            policy = self.policy_matching(name, "write")
        if read is None:
            read = self.policy_matching(name, "read")
        store = Store(self, name, loader=loader, writer=writer, deleter=deleter,
                      policy=policy, read=read, **options)
        self.stores.append(store)
        return store

    # ------------------------------------------------------------------ read path

    def read_sync(self, spec: FunctionSpec, l1key: Hashable | None, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
        return drive_sync(self._read(spec, l1key, args, kwargs))

    def read_async(self, spec: FunctionSpec, l1key: Hashable | None, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
        return drive_async(self._read(spec, l1key, args, kwargs))

    def _read(self, spec: FunctionSpec, l1key: Hashable | None, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Flow[Any]:
        """An L1 miss of a ``@cached`` call: single-flight over L2 and the loader, then L1."""
        if spec.read_rules is not None:  # refresh-ahead / stale windows: tiercache._refresh
            return (yield from policy_read(self, spec, l1key, args, kwargs))
        co = self.coherence
        rel = spec.relative_key(args, kwargs)
        tags = spec.tags_for(args, kwargs) if spec.tags is not None else []
        bus = co.bus
        if bus is not None and not (bus.connected and bus.running()):
            yield BusGate(bus, self.bus_wait)  # subscribe before the first L1 fill
        gen = co.gen
        value, cacheable, ttl = yield Flight(
            self._flights, (rel, gen), self._fetch(spec, rel, args, kwargs, tags, gen))
        if cacheable and l1key is not None:
            co.fill(spec.segment, rel, l1key, value, self.l1_ttl_for(spec.l1_ttl, ttl), tags, gen)
        return value

    def _fetch(self, spec: FunctionSpec, rel: str, args: tuple[Any, ...],
               kwargs: dict[str, Any], tags: list[str], gen: int) -> Flow[Any]:
        """L2, then (optionally under a lease) the loader; -> (value, cacheable, ttl)."""
        full, ops = self._prefix + rel, self.l2_ops
        if ops is not None:
            entry = yield ops.read(full)
            if entry is not MISSING:
                return entry.value, True, remaining(entry)
        value, cacheable, ttl, _ = yield from self.load_through(spec, full, args, kwargs, tags,
                                                                gen)
        return value, cacheable, ttl

    def load_through(self, spec: FunctionSpec, full: str, args: tuple[Any, ...],
                     kwargs: dict[str, Any], tags: list[str],
                     gen: int) -> Flow[tuple[Any, bool, float | None, float | None]]:
        """An L2 miss: (optionally under a lease) the loader, then the fenced L2 write.

        -> (value, cacheable, ttl, load seconds; None when another process's load was taken
        from L2 while waiting for its lease).
        """
        l2 = self.l2
        token = None
        if spec.lock and l2 is not None and l2.breaker.state != "open":
            token = yield TierOp(l2.acquire_lease, l2.acquire_lease_sync, full,
                                 int(self.lease_ttl * 1000))
            if token is None:  # another process is loading: wait for its value, bounded
                self.loader.lock_waits += 1
                deadline, delay = time.monotonic() + self.lock_wait, 0.005
                while time.monotonic() < deadline:
                    yield Sleep(delay)
                    delay = min(delay * 2, 0.1)
                    entry = yield TierOp(l2.get_entry, l2.get_entry_sync, full)
                    if entry is not MISSING:
                        return entry.value, True, remaining(entry), None
        try:
            value, seconds = yield from self.call_loader(spec, args, kwargs)
            if value is None and not spec.cache_none:
                return value, False, None, seconds
            if l2 is not None:
                yield from self.write_l2(spec, full, value, seconds, tags, gen)
            return value, gen == self.coherence.gen, self.ttl_of(spec), seconds
        finally:
            if token is not None and l2 is not None:
                yield TierOp(l2.release_lease, l2.release_lease_sync, full, token)

    def ttl_of(self, spec: FunctionSpec) -> float | None:
        """A function's TTL: its own, else L2's default (None: no expiry)."""
        return spec.ttl if spec.ttl is not None or self.l2 is None else self.l2.ttl

    def call_loader(self, spec: FunctionSpec, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Flow[tuple[Any, float]]:
        """Call the user's function (or join this turn's ``batch=`` call), timed and counted
        -> (value, seconds)."""
        began = time.perf_counter()
        try:
            if spec.batcher is not None:
                value = yield Coalesced(spec.batcher, None, spec.batch_item(args, kwargs))
            else:
                value = yield Call(spec.func, args, kwargs)
        except BaseException:
            self.loader.observe(time.perf_counter() - began, True)
            raise
        seconds = time.perf_counter() - began
        self.loader.observe(seconds, False)
        return value, seconds

    def write_l2(self, spec: FunctionSpec, full: str, value: Any, seconds: float,
                 tags: list[str], gen: int) -> Flow[None]:
        """Write a value loaded in generation ``gen``, unless an invalidation overlapped.

        Registered *before* the generation check, so an invalidation either makes us skip
        the write or sees it in flight and waits for it (and we undo it after it landed).
        """
        co, l2, ops = self.coherence, self.l2, self.l2_ops
        assert l2 is not None and ops is not None
        co.writing(full, +1, gen)
        try:
            if gen != co.gen:
                return
            try:
                rules = spec.read_rules
                yield ops.write(
                    (full, value, spec.ttl, seconds, rules.keep if rules is not None else 0.0))
            except TypeError as exc:  # unencodable: serve it, keep it in L1 only, say so
                self._unencodable(spec, value, exc)
                return
            if self.unencodable:
                self.unencodable.pop(spec.name, None)
            co.wrote(full, tags)
            if tags:
                yield TierOp(l2.add_tags, l2.add_tags_sync, full, tags, spec.ttl)
            if gen != co.gen:  # an invalidation raced this write: do not leave it behind
                yield TierOp(l2.delete, l2.delete_sync, full)
        finally:
            co.writing(full, -1, gen)

    def _unencodable(self, spec: FunctionSpec, value: Any, exc: TypeError) -> None:
        """Count it (errors{op="encode"}), degrade health, and WARN once per function."""
        self.loader.encode_errors += 1
        found = re.search(r"object of type ([\w.<>]+)", str(exc))
        kind = found.group(1) if found else _type_name(type(value))
        self.unencodable[spec.name] = kind
        if not spec.encode_warned:
            spec.encode_warned = True
            log.warning(
                "tiercache: %s returned a value L2 cannot store (type %s): it is served and kept "
                "in this process's L1 only, so every other process misses it. Fix: "
                "tiercache.register_type(%s, encode, decode), or return encodable types "
                "(%s). Further occurrences are counted in stats()['errors']['encode'].",
                spec.name, kind, kind.rsplit(".", 1)[-1], exc)

    def l1_ttl_for(self, l1_ttl: float | None, ttl: float | None) -> float | None:
        """The L1 lifetime of an entry: the :func:`~tiercache.policies.read.l1_ttl` rule,
        with None = the MemoryTier's default."""
        if l1_ttl is None and self.l1 is not None:
            l1_ttl = self.l1.store.ttl
        return l1_ttl_rule(l1_ttl, ttl)

    # ------------------------------------------------------------------ invalidation

    async def invalidate_tags(self, *tags: str) -> int:
        """Drop every entry tagged with any of ``tags`` (all tiers, all processes)."""
        return await drive_async(self.coherence.invalidate(tags=tags))

    def invalidate_tags_sync(self, *tags: str) -> int:
        return drive_sync(self.coherence.invalidate(tags=tags))

    async def invalidate_pattern(self, pattern: str) -> int:
        """Drop keys matching a Redis glob relative to the namespace, e.g. ``"user:*"``."""
        return await drive_async(self.coherence.invalidate(patterns=[pattern]))

    def invalidate_pattern_sync(self, pattern: str) -> int:
        return drive_sync(self.coherence.invalidate(patterns=[pattern]))

    async def invalidate_call(self, spec: FunctionSpec, args: tuple[Any, ...],
                              kwargs: dict[str, Any]) -> int:
        keys = [spec.relative_key(args, kwargs)]
        return await drive_async(self.coherence.invalidate(keys=keys))

    def invalidate_call_sync(self, spec: FunctionSpec, args: tuple[Any, ...],
                             kwargs: dict[str, Any]) -> int:
        return drive_sync(self.coherence.invalidate(keys=[spec.relative_key(args, kwargs)]))

    async def invalidate_function(self, spec: FunctionSpec) -> int:
        """Every entry of one function (L2 too unless it uses a custom ``key=``)."""
        return await drive_async(self._invalidate_function(spec))

    def invalidate_function_sync(self, spec: FunctionSpec) -> int:
        return drive_sync(self._invalidate_function(spec))

    def _invalidate_function(self, spec: FunctionSpec) -> Flow[int]:
        if spec.key is not None:
            log.info("tiercache: %s uses key=; invalidate_all clears L1 only", spec.name)
        return (yield from self.coherence.invalidate(functions=[spec.name]))

    async def clear(self) -> int:
        """Drop everything in this namespace (every tier, every process's L1)."""
        return await drive_async(self.coherence.invalidate(everything=True))

    def clear_sync(self) -> int:
        return drive_sync(self.coherence.invalidate(everything=True))

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
        """Plain snapshot: ``name``, ``l1`` (this cache's segments), ``l2``, ``loader``,
        ``errors`` (the core's, by operation), ``bus``."""
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
        return self.coherence.bus

    @property
    def flights(self) -> SingleFlight:
        return self._flights

    @property
    def segments(self) -> dict[str, Any]:
        return dict(self.coherence.segments)

    @property
    def raced_writes_undone(self) -> int:
        return self.coherence.raced_writes_undone

    async def aclose(self) -> None:
        """Stop the bus and close L2 (L1 is left as is: it may be shared)."""
        await self.refresher.wait(timeout=1.0)
        self.refresher.close()
        if self.bus is not None:
            await self.bus.astop()
        if self.l2 is not None:
            await self.l2.close()

    def close(self) -> None:
        self.refresher.wait_sync(timeout=1.0)
        self.refresher.close()
        if self.bus is not None:
            self.bus.stop()
        if self.l2 is not None:
            self.l2.close_sync()

    def __repr__(self) -> str:
        return (f"TierCache(name={self.name!r}, l1={self.l1 is not None}, "
                f"l2={self.l2 is not None}, functions={len(self._specs)})")


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
