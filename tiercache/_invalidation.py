"""Keeping every tier coherent: the invalidation flow (one core for sync and async).

Which L1 entries hold which L2 key is :mod:`tiercache._l1index`'s job; carrying invalidations
to other processes is :mod:`tiercache._bus`'s. This module orders the steps so that, once an
invalidation returns, no tier of this process serves the old value -- even with loads of that
key in flight in other tasks or threads (see :meth:`Coherence._invalidate`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import Any

from tiercache._bus import InvalidationBus
from tiercache._l1index import L1Index, glob_to_regex
from tiercache._singleflight import BusGate, Flow, TierOp, Until, drive_async, drive_sync

__all__ = ["Coherence", "InvalidationBus"]

log = logging.getLogger("tiercache.invalidation")

#: seconds an invalidation waits at most for overlapping L2 writes (see _drain_writes)
DRAIN_TIMEOUT = 2.0
#: seconds a completed L2 write is remembered, to undo it if a remote invalidation raced it
RECENT = 5.0


class Coherence:
    """The invalidation half of :class:`~tiercache.cache.TierCache` (one flow, both shells).

    A generation number, bumped by every invalidation, fences loads: a load that overlapped
    an invalidation neither fills L1 nor keeps its L2 write, and callers arriving after it
    start a new single-flight instead of joining the old one. See :meth:`_invalidate`.
    """

    l2: Any
    namespace: str
    _prefix: str
    _gen: int
    _index: L1Index
    _kv: Any
    _segments: dict[str, Any]
    _bus: InvalidationBus | None
    _writes: dict[tuple[str, int], int]
    _writes_lock: threading.Lock
    _fence: threading.RLock
    _recent: OrderedDict[str, tuple[float, tuple[str, ...]]]
    raced_writes_undone: int
    bus_wait: float

    def full_key(self, key: str) -> str:
        return self._prefix + key

    def _fill(self, segment: Any, rel: str, l1key: Hashable, value: Any, ttl: float | None,
              tags: Iterable[str], gen: int) -> None:
        """Put a value read/loaded in generation ``gen`` into L1, unless invalidated since.

        Under the fence lock, like the invalidations' bump-and-drop: a thread can never
        slip an old value into L1 between another thread's bump and its drop.
        """
        if segment is None or (ttl is not None and ttl <= 0):
            return
        with self._fence:
            if gen != self._gen or l1key in segment:  # stale, or a flight partner filled it
                return
            segment.put(l1key, value, ttl)
            self._index.add(rel, segment, l1key, tags)

    def _bus_ready(self) -> Flow[None]:
        """Subscribe before the first L1 fill, so no invalidation can slip past."""
        bus = self._bus
        if bus is not None and not (bus.connected and bus.running()):
            yield BusGate(bus, self.bus_wait)

    def _writing(self, full: str, delta: int, gen: int) -> None:
        """Count L2 writes in flight per (key, generation of their load); threads too."""
        with self._writes_lock:
            n = self._writes.get((full, gen), 0) + delta
            if n:
                self._writes[(full, gen)] = n
            else:
                del self._writes[(full, gen)]

    def _drain_writes(self, fulls: list[str] | None, gen: int) -> Flow[None]:
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

    def _invalidate(self, keys: Iterable[str] = (), tags: Iterable[str] = (),
                    patterns: Iterable[str] = (), functions: Iterable[str] = (),
                    everything: bool = False) -> Flow[int]:
        """L2, then this process's L1, then the bus; returns what L2 (or L1) dropped.

        Generation bumps fence loads: the first (before the L2 delete) stops loads from
        writing L2 from then on; the drain waits for writes that began earlier (they undo
        themselves); the second bump and the L1 drop then remove whatever a reader took
        from L2 meanwhile. Only then may the caller assume no tier here has the old value.
        """
        keys, tags, patterns, functions = list(keys), list(tags), list(patterns), list(functions)
        removed = 0
        if self.l2 is not None:
            with self._fence:  # += on an attribute is not atomic across threads
                self._gen += 1
                fence = self._gen
            if keys:
                removed += yield TierOp(self.l2, "delete_many", [self.full_key(k) for k in keys])
            if tags:
                removed += yield TierOp(self.l2, "invalidate_tags", tags, namespace=self.namespace)
            l2_patterns = [*patterns, *(f"{_glob_escape(f)}:*" for f in functions)]
            if everything:
                l2_patterns = ["*"]
            for pattern in l2_patterns:
                removed += yield TierOp(self.l2, "delete_pattern",
                                        _glob_escape(self._prefix) + pattern)
            exact = None if tags or patterns or functions or everything else keys
            yield from self._drain_writes(None if exact is None else
                                          [self.full_key(k) for k in exact], fence)
        local = self._apply_local(keys, tags, patterns, functions, everything)
        yield from self._publish(keys=keys, tags=tags, patterns=patterns, functions=functions,
                                 everything=everything)
        return removed or local  # L2's count; L1's when L2 had none (or is down)

    def _apply_local(self, keys: list[str], tags: list[str], patterns: list[str],
                     functions: list[str], everything: bool) -> int:
        """Bump the generation and drop this process's L1 copies (under the fence lock)."""
        regexes = [glob_to_regex(p) for p in patterns]
        with self._fence:
            self._gen += 1
            index = self._index
            n = index.drop_keys(keys) + index.drop_tags(tags)
            if self._kv is not None:
                n += sum(bool(self._kv.delete(k)) for k in keys)
            for regex in regexes:
                n += index.drop_matching(regex)
            segments = list(self._segments.values()) if everything else [
                s for f in functions if (s := self._segments.get(f"{self.namespace}:{f}"))]
            if segments:
                n += sum(len(s) for s in segments)
                index.drop_segments(segments)
            return n

    def _publish(self, **parts: Any) -> Flow[None]:
        bus = self._bus
        if bus is None:
            return
        message = bus.encode(k=parts.get("keys"), t=parts.get("tags"), p=parts.get("patterns"),
                             f=parts.get("functions"), a=[1] if parts.get("everything") else [])
        yield TierOp(self.l2, "publish", bus.channel, message)
        bus.stats["published"] += 1

    async def _on_bus_message(self, msg: dict[str, Any]) -> None:
        """Another process invalidated: drop our L1 copies, and undo our raced L2 writes.

        A load here that read the old row may have written L2 *after* that process's
        delete; writes still in flight undo themselves (generation bump), writes that
        completed recently are deleted again here.
        """
        parts = (list(msg.get("k", ())), list(msg.get("t", ())), list(msg.get("p", ())),
                 list(msg.get("f", ())), bool(msg.get("a")))
        self._apply_local(*parts)
        raced = self._recent_writes(*parts)
        if raced:
            await asyncio.to_thread(self.l2.delete_many_sync, raced)
            self.raced_writes_undone += len(raced)

    def _wrote(self, full: str, tags: list[str]) -> None:
        """Remember a completed L2 write for a while (see :meth:`_on_bus_message`)."""
        if self._bus is None:
            return
        now = time.monotonic()
        with self._writes_lock:
            recent = self._recent  # oldest first: expiring is O(1) per write, not a scan
            recent.pop(full, None)
            recent[full] = (now, tuple(tags))
            while now - next(iter(recent.values()))[0] > RECENT:
                recent.popitem(last=False)

    def _recent_writes(self, keys: list[str], tags: list[str], patterns: list[str],
                       functions: list[str], everything: bool) -> list[str]:
        now, cut = time.monotonic(), len(self._prefix)
        wanted, tagset = {self.full_key(k) for k in keys}, set(tags)
        regexes = [glob_to_regex(p) for p in patterns]
        prefixes = tuple(f"{f}:" for f in functions)
        with self._writes_lock:
            recent = [(full, t) for full, (at, t) in self._recent.items() if now - at <= RECENT]
        return [full for full, written_tags in recent
                if everything or full in wanted or tagset.intersection(written_tags)
                or any(rx.fullmatch(full[cut:]) for rx in regexes)
                or (prefixes and full[cut:].startswith(prefixes))]

    def _on_bus_connect(self) -> None:
        """(Re)subscribed: invalidations may have been missed, so drop every L1 copy."""
        with self._fence:
            self._gen += 1
            self._index.drop_segments(list(self._segments.values()))

    def _invalidate_function(self, spec: Any) -> Flow[int]:
        if spec.key is not None:
            log.info("tiercache: %s uses key=; invalidate_all clears L1 only", spec.name)
        return (yield from self._invalidate(functions=[spec.name]))

    # ------------------------------------------------------------------ public shells

    async def invalidate_tags(self, *tags: str) -> int:
        """Drop every entry tagged with any of ``tags`` (all tiers, all processes)."""
        return await drive_async(self._invalidate(tags=tags))

    def invalidate_tags_sync(self, *tags: str) -> int:
        return drive_sync(self._invalidate(tags=tags))

    async def invalidate_pattern(self, pattern: str) -> int:
        """Drop keys matching a Redis glob relative to the namespace, e.g. ``"user:*"``."""
        return await drive_async(self._invalidate(patterns=[pattern]))

    def invalidate_pattern_sync(self, pattern: str) -> int:
        return drive_sync(self._invalidate(patterns=[pattern]))

    async def invalidate_call(self, spec: Any, args: tuple[Any, ...],
                              kwargs: dict[str, Any]) -> int:
        return await drive_async(self._invalidate(keys=[spec.relative_key(args, kwargs)]))

    def invalidate_call_sync(self, spec: Any, args: tuple[Any, ...],
                             kwargs: dict[str, Any]) -> int:
        return drive_sync(self._invalidate(keys=[spec.relative_key(args, kwargs)]))

    async def invalidate_function(self, spec: Any) -> int:
        """Every entry of one function (L2 too unless it uses a custom ``key=``)."""
        return await drive_async(self._invalidate_function(spec))

    def invalidate_function_sync(self, spec: Any) -> int:
        return drive_sync(self._invalidate_function(spec))

    async def clear(self) -> int:
        """Drop everything in this namespace (every tier, every process's L1)."""
        return await drive_async(self._invalidate(everything=True))

    def clear_sync(self) -> int:
        return drive_sync(self._invalidate(everything=True))


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
