"""Keeping every tier coherent: the state and the ordering of an invalidation (one flow).

:class:`Coherence` is owned by the :class:`~tiercache.cache.TierCache` (``cache.coherence``):
the generation number, the fence lock, the L2 writes in flight, the recently completed ones
and the :class:`~tiercache._l1index.L1Index`. Which L1 entries hold which L2 key is the
index's job; carrying invalidations to other processes is :mod:`tiercache._bus`'s. This
module orders the steps so that, once an invalidation returns, no tier of this process serves
the old value -- even with loads of that key in flight in other tasks or threads.

The rule: a generation number, bumped by every invalidation (local or from the bus), fences
loads. A load that overlapped an invalidation neither fills L1 nor keeps its L2 write, and
callers arriving after it start a new single-flight instead of joining the old one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from tiercache._flow import Flow, TierOp, Until
from tiercache._l1index import MAX_PATTERN, L1Index, glob_to_regex

if TYPE_CHECKING:
    from tiercache._bus import InvalidationBus
    from tiercache.tiers.base import RemoteTier

__all__ = ["DRAIN_TIMEOUT", "OFFLOAD_ENTRIES", "RECENT", "STALE", "Coherence"]

log = logging.getLogger("tiercache.invalidation")

#: seconds an invalidation waits at most for overlapping L2 writes (see drain_writes)
DRAIN_TIMEOUT: Final = 2.0
#: seconds a completed L2 write is remembered, to undo it if a remote invalidation raced it
RECENT: Final = 5.0
#: suffix of the L1 segment holding a function's stale copies (see tiercache._refresh)
STALE: Final = ":~stale"
#: L1 index size above which a bus message's pattern drops run off the event loop
OFFLOAD_ENTRIES: Final = 10_000


class Coherence:
    """Generation, fence, in-flight and recent L2 writes, and the L1 index of one cache."""

    def __init__(self, l2: RemoteTier | None, namespace: str) -> None:
        self.l2 = l2
        self.prefix = f"{namespace}:"  # every full L2 key of the cache starts with it
        self.index = L1Index()
        self.segments: dict[str, Any] = {}  # L1 segment name -> segment (this cache's)
        self.kv: Any = None  # the segment of the get/set API (None without L1)
        self.bus: InvalidationBus | None = None
        self.gen = 0
        self.fence = threading.RLock()  # generation bumps + L1 drops vs. L1 fills
        self._writes: dict[tuple[str, int], int] = {}  # (full key, load's gen) -> in flight
        self._writes_lock = threading.Lock()
        self._recent: OrderedDict[str, tuple[float, tuple[str, ...]]] = OrderedDict()
        self.raced_writes_undone = 0

    # ------------------------------------------------------------------ fills and writes

    def fill(self, segment: Any, rel: str, l1key: Hashable, value: Any, ttl: float | None,
             tags: Iterable[str], gen: int) -> None:
        """Put a value read/loaded in generation ``gen`` into L1, unless invalidated since.

        Under the fence lock, like the invalidations' bump-and-drop: a thread can never
        slip an old value into L1 between another thread's bump and its drop.
        """
        if segment is None or (ttl is not None and ttl <= 0):
            return
        with self.fence:
            if gen != self.gen or l1key in segment:  # stale, or a flight partner filled it
                return
            segment.put(l1key, value, ttl)
            self.index.add(rel, segment, l1key, tags)

    def refill(self, segment: Any, rel: str, l1key: Hashable, value: Any, ttl: float | None,
               tags: Iterable[str], gen: int) -> None:
        """Like :meth:`fill`, but replaces what L1 holds: a background reload's new value
        (still fenced by ``gen``: an invalidation since the reload began wins)."""
        if segment is None or (ttl is not None and ttl <= 0):
            return
        with self.fence:
            if gen != self.gen:
                return
            segment.put(l1key, value, ttl)
            self.index.add(rel, segment, l1key, tags)

    def bump(self) -> int:
        """A new generation (``+=`` on an attribute is not atomic across threads)."""
        with self.fence:
            self.gen += 1
            return self.gen

    def writing(self, full: str, delta: int, gen: int) -> None:
        """Count L2 writes in flight per (key, generation of their load); threads too."""
        with self._writes_lock:
            n = self._writes.get((full, gen), 0) + delta
            if n:
                self._writes[(full, gen)] = n
            else:
                del self._writes[(full, gen)]

    def wrote(self, full: str, tags: Sequence[str]) -> None:
        """Remember a completed L2 write for a while (see :meth:`on_bus_message`)."""
        if self.bus is None:
            return
        now = time.monotonic()
        with self._writes_lock:
            recent = self._recent  # oldest first: expiring is O(1) per write, not a scan
            recent.pop(full, None)
            recent[full] = (now, tuple(tags))
            while now - next(iter(recent.values()))[0] > RECENT:
                recent.popitem(last=False)

    def drain_writes(self, fulls: list[str] | None, gen: int) -> Flow[None]:
        """Wait (bounded) for L2 writes of loads begun before generation ``gen``.

        Such a write may land after our delete; it then sees the bump and deletes its
        value again. Writes of later loads are not waited for: under load there is nearly
        always one in flight. ``fulls=None``: writes to any key.
        """
        wanted = None if fulls is None else set(fulls)

        def drained() -> bool:
            with self._writes_lock:
                inflight = list(self._writes)
            return not any(g < gen and (wanted is None or f in wanted) for f, g in inflight)

        if not drained():
            yield Until(drained, DRAIN_TIMEOUT)

    # ------------------------------------------------------------------ invalidation

    def invalidate(self, keys: Sequence[str] = (), tags: Sequence[str] = (),
                   patterns: Sequence[str] = (), functions: Sequence[str] = (),
                   everything: bool = False) -> Flow[int]:
        """L2, then this process's L1, then the bus; returns what L2 (or L1) dropped.

        Generation bumps fence loads: the first (before the L2 delete) stops loads from
        writing L2 from then on; the drain waits for writes that began earlier (they undo
        themselves); the second bump and the L1 drop then remove whatever a reader took
        from L2 meanwhile. Only then may the caller assume no tier here has the old value.
        """
        for pattern in patterns:  # before any I/O (matching is linear, but per L1 entry)
            if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN:
                raise ValueError(f"pattern must be a str of at most {MAX_PATTERN} characters")
        removed, l2 = 0, self.l2
        if l2 is not None:
            fence = self.bump()
            if keys:
                fulls = [self.prefix + k for k in keys]
                removed += yield TierOp(l2.delete_many, l2.delete_many_sync, fulls)
            if tags:
                namespace = self.prefix[:-1]
                removed += yield TierOp(l2.invalidate_tags, l2.invalidate_tags_sync, tags,
                                        namespace=namespace)
            l2_patterns = ["*"] if everything else [
                *patterns, *(f"{_glob_escape(f)}:*" for f in functions)]
            for pattern in l2_patterns:
                full = _glob_escape(self.prefix) + pattern
                removed += yield TierOp(l2.delete_pattern, l2.delete_pattern_sync, full)
            exact = None if tags or patterns or functions or everything else keys
            yield from self.drain_writes(
                None if exact is None else [self.prefix + k for k in exact], fence)
        local = self.apply_local(keys, tags, patterns, functions, everything)
        yield from self.publish(keys=keys, tags=tags, patterns=patterns, functions=functions,
                                everything=everything)
        return removed or local  # L2's count; L1's when L2 had none (or is down)

    def apply_local(self, keys: Sequence[str], tags: Sequence[str], patterns: Sequence[str],
                    functions: Sequence[str], everything: bool) -> int:
        """Bump the generation and drop this process's L1 copies (under the fence lock)."""
        matchers = [glob_to_regex(p) for p in patterns]
        with self.fence:
            self.gen += 1
            index = self.index
            n = index.drop_keys(keys) + index.drop_tags(tags)
            if self.kv is not None:
                n += sum(bool(self.kv.delete(k)) for k in keys)
            for matcher in matchers:
                n += index.drop_matching(matcher)
            segments = list(self.segments.values()) if everything else [
                s for f in functions for name in (self.prefix + f, self.prefix + f + STALE)
                if (s := self.segments.get(name))]
            if segments:
                n += sum(len(s) for s in segments)
                index.drop_segments(segments)
            return n

    def publish(self, keys: Sequence[str] = (), tags: Sequence[str] = (),
                patterns: Sequence[str] = (), functions: Sequence[str] = (),
                everything: bool = False) -> Flow[None]:
        bus, l2 = self.bus, self.l2
        if bus is None or l2 is None:
            return
        message = bus.encode(k=list(keys), t=list(tags), p=list(patterns), f=list(functions),
                             a=[1] if everything else [])
        yield TierOp(l2.publish, l2.publish_sync, bus.channel, message)
        bus.stats["published"] += 1

    # ------------------------------------------------------------------ the bus's side

    async def on_bus_message(self, msg: dict[str, Any]) -> None:
        """Another process invalidated: drop our L1 copies, and undo our raced L2 writes.

        A load here that read the old row may have written L2 *after* that process's
        delete; writes still in flight undo themselves (generation bump), writes that
        completed recently are deleted again here. Pattern drops over a big L1 index run
        in a thread: a bus message never holds the event loop for long.
        """
        parts = (list(msg.get("k", ())), list(msg.get("t", ())), list(msg.get("p", ())),
                 list(msg.get("f", ())), bool(msg.get("a")))
        if parts[2] and len(self.index) > OFFLOAD_ENTRIES:
            await asyncio.to_thread(self.apply_local, *parts)
            raced = await asyncio.to_thread(self._recent_writes, *parts)
        else:
            self.apply_local(*parts)
            raced = self._recent_writes(*parts)
        if raced and self.l2 is not None:
            await asyncio.to_thread(self.l2.delete_many_sync, raced)
            self.raced_writes_undone += len(raced)

    def _recent_writes(self, keys: list[str], tags: list[str], patterns: list[str],
                       functions: list[str], everything: bool) -> list[str]:
        now, cut = time.monotonic(), len(self.prefix)
        wanted, tagset = {self.prefix + k for k in keys}, set(tags)
        matchers = [glob_to_regex(p) for p in patterns]
        prefixes = tuple(f"{f}:" for f in functions)
        with self._writes_lock:
            recent = [(full, t) for full, (at, t) in self._recent.items() if now - at <= RECENT]
        return [full for full, written_tags in recent
                if everything or full in wanted or tagset.intersection(written_tags)
                or any(m.fullmatch(full[cut:]) for m in matchers)
                or (prefixes and full[cut:].startswith(prefixes))]

    def on_bus_connect(self) -> None:
        """(Re)subscribed: invalidations may have been missed, so drop every L1 copy."""
        with self.fence:
            self.gen += 1
            self.index.drop_segments(list(self.segments.values()))


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
