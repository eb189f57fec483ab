"""The read path of a ``@cached`` function with a read policy (refresh-ahead, XFetch,
stale-while-revalidate, stale-if-error), and the background reloads it starts.

Why it fits the C hit path: the L1 copy of such an entry is kept only until its *refresh
point* (``policy.refresh_in``). The first read after it misses L1 and comes here. This
process's own copy of the envelope (value, stored_at, ttl, load_time) sits in the function's
*stale segment* (``<function>:~stale`` in L1, kept until ``ttl`` plus the stale windows): if
that copy is due for a reload (or stale but servable), it is returned at once with no round
trip, one reload starts in the background, and the value goes back into L1 for a short
back-off -- all without yielding, so every other reader stays an L1 hit. A copy that is
still fresh (its L1 copy was evicted, or ``l1_ttl`` is shorter) is checked against L2 first,
which may hold a newer value; L2 also serves processes that never loaded the key.

The reload writes L2 (which keeps the entry for the stale windows too: ``RedisTier.set(
stale=)``) and replaces both L1 copies, fenced by the generation like any load: an
invalidation since it began wins. Every invalidation drops the stale segment's copies too.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tiercache._flow import BusGate, Flight, Flow, Sleep, TierOp, drive_async, drive_sync
from tiercache.codec import Entry
from tiercache.policies.read import Expiry, ReadPolicy, draw
from tiercache.tiers.base import MISSING

if TYPE_CHECKING:
    from tiercache.cache import TierCache
    from tiercache.decorators import FunctionSpec

__all__ = ["ReadRules", "Refresher", "policy_read"]

log = logging.getLogger("tiercache.refresh")

#: the shortest L1 back-off while a reload runs or after one failed (seconds)
MIN_BACKOFF = 0.01
#: reloads of sync functions run on this many threads at most (per cache)
REFRESH_THREADS = 4


@dataclass(frozen=True, slots=True)
class ReadRules:
    """One function's read policy and stale windows (seconds; 0 = off)."""

    policy: ReadPolicy
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0

    @property
    def keep(self) -> float:
        """How long past its TTL an entry is kept for stale reads."""
        return max(self.stale_while_revalidate, self.stale_if_error)

    @property
    def lock(self) -> bool:
        return bool(getattr(self.policy, "lock", False))

    def backoff(self, ttl: float, window: float) -> float:
        """L1 lifetime of a value served while a reload runs: short, within ``window``."""
        return max(MIN_BACKOFF, min(window, 0.1 * ttl, 1.0))


class Refresher:
    """At most one background reload per key in this process: tasks for async functions, a
    small thread pool for sync ones (callers never wait for it)."""

    def __init__(self) -> None:
        self._inflight: set[Hashable] = set()
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pool: ThreadPoolExecutor | None = None
        self.warned: dict[str, float] = {}  # function -> when one of its failures was logged

    def start(self, key: Hashable, flow: Flow[Any], is_async: bool) -> bool:
        """Run ``flow`` in the background unless a reload of ``key`` is running already."""
        with self._lock:
            if key in self._inflight:
                flow.close()
                return False
            self._inflight.add(key)
        try:
            if is_async:
                task = asyncio.get_running_loop().create_task(self._run_async(key, flow))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                if self._pool is None:
                    with self._lock:
                        if self._pool is None:
                            self._pool = ThreadPoolExecutor(REFRESH_THREADS, "tiercache-refresh")
                self._pool.submit(self._run_sync, key, flow)
        except BaseException:
            self._done(key)
            flow.close()
            raise
        return True

    async def _run_async(self, key: Hashable, flow: Flow[Any]) -> None:
        try:
            await drive_async(flow)
        finally:
            self._done(key)

    def _run_sync(self, key: Hashable, flow: Flow[Any]) -> None:
        try:
            drive_sync(flow)
        finally:
            self._done(key)

    def _done(self, key: Hashable) -> None:
        with self._lock:
            self._inflight.discard(key)

    @property
    def running(self) -> int:
        return len(self._inflight)

    async def wait(self, timeout: float = 10.0) -> bool:
        """Wait (bounded) until no reload runs; True if none is left."""
        deadline = time.monotonic() + timeout
        while self._inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        return not self._inflight

    def wait_sync(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while self._inflight and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._inflight

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def policy_read(cache: TierCache, spec: FunctionSpec, l1key: Hashable | None,
                args: tuple[Any, ...], kwargs: dict[str, Any],
                rel: str | None = None) -> Flow[Any]:
    """An L1 miss of a function with read rules (the counterpart of ``TierCache._read``);
    ``rel``: the relative key when the caller has it (a store's ``"<store>:<key>"``)."""
    co = cache.coherence
    if rel is None:
        rel = spec.relative_key(args, kwargs)
    tags = spec.tags_for(args, kwargs) if spec.tags is not None else []
    bus = co.bus
    if bus is not None and not (bus.connected and bus.running()):
        yield BusGate(bus, cache.bus_wait)
    gen = co.gen
    value, l1_ttl, stamp = yield Flight(
        cache.flights, (rel, gen), _fetch(cache, spec, rel, l1key, args, kwargs, tags, gen))
    if l1key is not None:
        if l1_ttl is not None:
            co.fill(spec.segment, rel, l1key, value, l1_ttl, tags, gen)
        if stamp is not None:
            co.fill(spec.stale_segment, rel, l1key, stamp, _stale_ttl(spec, stamp), tags, gen)
    return value


def _fetch(cache: TierCache, spec: FunctionSpec, rel: str, l1key: Hashable | None,
           args: tuple[Any, ...], kwargs: dict[str, Any], tags: list[str],
           gen: int) -> Flow[tuple[Any, float | None, Entry | None]]:
    """-> (value, L1 TTL or None to skip L1, envelope for the stale segment or None)."""
    rules = _rules(spec)
    stats = cache.loader
    kept: Any = MISSING  # this process's own copy, from the stale segment
    if l1key is not None and spec.stale_segment is not None:
        kept = spec.stale_segment.get(l1key, MISSING)
    verdict = _judge(rules, kept) if kept is not MISSING else FRESH
    entry: Any = kept
    if verdict == FRESH:
        # our copy is fresh but its L1 copy is gone (evicted, or l1_ttl): ask L2, which may
        # hold a newer value; a copy due for reload is served as is, with no round trip
        entry = MISSING
        if cache.l2_ops is not None:
            entry = yield cache.l2_ops.read(cache.full_key(rel))
        if entry is MISSING:
            entry = kept  # no L2, or L2 down / lost it
        if entry is not MISSING:
            verdict = _judge(rules, entry)
    stale = None
    if entry is not MISSING:
        ttl = entry.ttl
        if ttl is None:  # never expires: nothing to refresh
            return entry.value, cache.l1_ttl_for(spec.l1_ttl, None), None
        remaining = ttl - (time.time() - entry.stored_at)
        if verdict == FRESH:
            until = rules.policy.refresh_in(ttl, entry.load_time, draw()) - (ttl - remaining)
            return entry.value, cache.l1_ttl_for(
                spec.l1_ttl, max(MIN_BACKOFF, min(until, remaining))), None
        if verdict == DUE:
            start_refresh(cache, spec, rel, l1key, args, kwargs, tags, entry.stored_at)
            return entry.value, rules.backoff(ttl, remaining), None
        if verdict == STALE:
            stats.stale_served += 1
            start_refresh(cache, spec, rel, l1key, args, kwargs, tags, entry.stored_at)
            return entry.value, rules.backoff(ttl, rules.stale_while_revalidate + remaining), None
        if verdict == ERROR_WINDOW:
            stale = entry
    try:
        value, cacheable, ttl, seconds = yield from cache.load_through(
            spec, cache.full_key(rel), args, kwargs, tags, gen)
    except Exception as exc:
        if stale is None:
            raise
        stats.stale_served += 1
        _warn(cache, spec.name, "tiercache: %s failed to load (%s: %s); serving the value "
              "stored %.1f s ago (stale_if_error; further ones within a minute are only counted)",
              spec.name, type(exc).__name__, exc, time.time() - stale.stored_at)
        window = rules.stale_if_error - (time.time() - stale.stored_at - (stale.ttl or 0.0))
        return stale.value, rules.backoff(stale.ttl or 1.0, window), None
    if not cacheable:
        return value, None, None
    if seconds is None or ttl is None:  # came from another process's load (lease wait)
        return value, cache.l1_ttl_for(spec.l1_ttl, ttl), None
    until = rules.policy.refresh_in(ttl, seconds, draw())
    return (value, cache.l1_ttl_for(spec.l1_ttl, max(MIN_BACKOFF, until)),
            Entry(value, time.time(), ttl, seconds))


FRESH, DUE, STALE, ERROR_WINDOW, EXPIRED = range(5)

def _warn(cache: TierCache, name: str, message: str, *args: Any) -> None:
    """At most one WARNING a minute per function: a database that is down for an hour must
    not flood the log from every read (each one is counted anyway)."""
    now, warned = time.monotonic(), cache.refresher.warned
    if now - warned.get(name, -60.0) >= 60.0:
        warned[name] = now
        log.warning(message, *args)


def _judge(rules: ReadRules, entry: Entry) -> int:
    """Where an entry stands: fresh, due for a background reload, expired but servable
    while one runs (stale-while-revalidate), servable only if the load fails
    (stale-if-error), or gone."""
    if entry.ttl is None:
        return FRESH
    age = time.time() - entry.stored_at
    if age < entry.ttl:
        return DUE if rules.policy.due(age, entry.ttl, entry.load_time, draw()) else FRESH
    late = age - entry.ttl
    if late < rules.stale_while_revalidate:
        return STALE
    return ERROR_WINDOW if late < rules.stale_if_error else EXPIRED


def start_refresh(cache: TierCache, spec: FunctionSpec, rel: str, l1key: Hashable | None,
                  args: tuple[Any, ...], kwargs: dict[str, Any], tags: list[str],
                  stored_at: float) -> None:
    flow = _reload(cache, spec, rel, l1key, args, kwargs, tags, cache.coherence.gen,
                   stored_at)
    if cache.refresher.start((spec.name, rel), flow, spec.is_async):
        cache.loader.refreshes_started += 1


def _reload(cache: TierCache, spec: FunctionSpec, rel: str, l1key: Hashable | None,
            args: tuple[Any, ...], kwargs: dict[str, Any], tags: list[str],
            gen: int, stored_at: float) -> Flow[None]:
    """The background reload: load, write L2 (fenced), replace the L1 copies (fenced).

    A failure keeps the old value (logged, counted); with ``lock=True`` a process that does
    not get the Redis lease leaves the reload to the one that did, and takes its result
    from L2 once it is there (newer than the copy it had, ``stored_at``).
    """
    l2, stats = cache.l2, cache.loader
    full = cache.full_key(rel)
    token = None
    rules = _rules(spec)
    if rules.lock and l2 is not None and l2.breaker.state != "open":
        token = yield TierOp(l2.acquire_lease, l2.acquire_lease_sync, full,
                             int(cache.lease_ttl * 1000))
        if token is None:
            stats.refreshes_skipped += 1
            yield from _adopt(cache, spec, rel, l1key, tags, gen, stored_at)
            return
    try:
        try:
            value, seconds = yield from cache.call_loader(spec, args, kwargs)
        except Exception as exc:
            stats.refreshes_failed += 1
            _warn(cache, spec.name, "tiercache: background reload of %s failed (%s: %s); the "
                  "cached value is kept (further failures within a minute are only counted)",
                  spec.name, type(exc).__name__, exc)
            return
        if value is None and not spec.cache_none:
            stats.refreshes_succeeded += 1
            return
        if l2 is not None:
            yield from cache.write_l2(spec, full, value, seconds, tags, gen)
        ttl = cache.ttl_of(spec)
        if l1key is not None and ttl is not None:
            _replace(cache, spec, rel, l1key, Entry(value, time.time(), ttl, seconds), tags,
                     gen)
        stats.refreshes_succeeded += 1
    finally:
        if token is not None and l2 is not None:
            yield TierOp(l2.release_lease, l2.release_lease_sync, full, token)


def _adopt(cache: TierCache, spec: FunctionSpec, rel: str, l1key: Hashable | None,
           tags: list[str], gen: int, stored_at: float) -> Flow[None]:
    """Another process holds the reload lease: wait (bounded) for its value in L2."""
    l2 = cache.l2
    if l2 is None or l1key is None:
        return
    deadline, delay = time.monotonic() + cache.lock_wait, 0.005
    while time.monotonic() < deadline:
        yield Sleep(delay)
        delay = min(delay * 2, 0.1)
        entry = yield TierOp(l2.get_entry, l2.get_entry_sync, cache.full_key(rel))
        if entry is not MISSING and entry.stored_at > stored_at and entry.ttl is not None:
            _replace(cache, spec, rel, l1key, entry, tags, gen)
            return


def _replace(cache: TierCache, spec: FunctionSpec, rel: str, l1key: Hashable, stamp: Entry,
             tags: list[str], gen: int) -> None:
    """Put a reloaded value into L1 and the stale segment, replacing the old copies."""
    assert stamp.ttl is not None
    policy = _rules(spec).policy
    age = time.time() - stamp.stored_at
    until = policy.refresh_in(stamp.ttl, stamp.load_time, draw()) - age
    co = cache.coherence
    co.refill(spec.segment, rel, l1key, stamp.value,
              cache.l1_ttl_for(spec.l1_ttl, max(MIN_BACKOFF, until)), tags, gen)
    co.refill(spec.stale_segment, rel, l1key, stamp, _stale_ttl(spec, stamp), tags, gen)


def _stale_ttl(spec: FunctionSpec, stamp: Entry) -> float | None:
    if stamp.ttl is None:
        return None
    return stamp.ttl + _rules(spec).keep - (time.time() - stamp.stored_at)


def _rules(spec: FunctionSpec) -> ReadRules:
    rules = spec.read_rules
    assert rules is not None, "only functions with read rules take this path"
    return rules


def rules_for(refresh: Any, xfetch: Any, stale_while_revalidate: float | None,
              stale_if_error: float | None) -> ReadRules | None:
    """The ``@cached`` arguments -> ReadRules (None when no read policy is asked for)."""
    if refresh is not None and xfetch is not None:
        raise TypeError("pass refresh= or xfetch=, not both")
    policy = refresh if refresh is not None else xfetch
    if policy is not None and not (callable(getattr(policy, "due", None))
                                   and callable(getattr(policy, "refresh_in", None))):
        raise TypeError(f"refresh=/xfetch= must be a read policy such as RefreshAhead(0.8) or "
                        f"XFetch(beta=1.0), got {policy!r}")
    swr, sie = stale_while_revalidate or 0.0, stale_if_error or 0.0
    if policy is None and not swr and not sie:
        return None
    return ReadRules(policy if policy is not None else Expiry(), float(swr), float(sie))
