"""The write-behind queue of a store: coalescing per key, backpressure, and a wake-up signal.

Why its own module: the queue is the one piece shared by callers (``put`` in any task or
thread) and the flusher (a task or a thread), so it is plain data behind one lock, with no
I/O; the flows in :mod:`tiercache._writebehind` do the I/O around it.

Ordering: every queued write carries an *order*, ``(ms, n, local seq)``. A write made here
takes ``ms = inf`` and is ordered by its local seq (call order); entries taken over from a
dead process or replayed from the dead-letter list are ordered by their journal id
``<ms>-<n>`` (or ``ms = 0``), so they never override a write queued here (whose journal ids
are acknowledged with the taken-over ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tiercache._flow import Op

__all__ = ["DELETE", "PUT", "Item", "Order", "Signal", "Wait", "WriteQueue", "order_of"]

PUT, DELETE = "p", "d"
Order = tuple[float, int, int]


def order_of(entry_id: str | bytes | None, seq: int, local: bool) -> Order:
    """The order of a write: this process's own by call order (``seq``: journal batches may
    land out of order), taken-over entries by journal id (``"<ms>-<n>"``), after ours."""
    if local or entry_id is None:
        return (math.inf if local else 0.0, 0, seq)
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, n = text.partition("-")
    return (float(ms), int(n or 0), seq)


@dataclass(slots=True)
class Item:
    """One key's pending write (the last one wins) and every journal id it covers."""

    rel: str
    key: Any
    op: str
    value: Any
    order: Order
    ids: list[str] = field(default_factory=list)
    first: int = 0  # local seq of the oldest write it covers (what flush() waits for)
    since: float = 0.0  # monotonic time the key entered the queue (coalescing keeps it)


class Signal:
    """Wake waiters in threads (a Condition) and in event loops (futures, thread-safe)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self._futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()
            futures, self._futures = self._futures, []
        if not futures:
            return
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for loop, fut in futures:
            if loop is here:  # our own loop: no self-pipe write needed
                _resolve(fut)
                continue
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there
                loop.call_soon_threadsafe(_resolve, fut)

    def _future(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self.cond:
            self._futures.append((loop, fut))
        return fut


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Wait(Op):
    """Wait until ``done()`` or ``timeout`` seconds (None: forever); True when done.

    The waiter registers before it checks ``done()``, so a notify between the check and
    the sleep is never lost (threads: under the condition's lock; loops: the future).
    """

    __slots__ = ("done", "guard", "signal", "timeout")

    def __init__(self, signal: Signal, done: Callable[[], bool],
                 timeout: float | None = None,
                 guard: Callable[[], None] | None = None) -> None:
        self.signal, self.done, self.timeout, self.guard = signal, done, timeout, guard

    def run_sync(self) -> bool:
        if self.guard is not None and not self.done():
            self.guard()  # e.g. refuse to block the very loop the awaited flusher runs in
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        with self.signal.cond:
            while not self.done():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.signal.cond.wait(left if left is not None else 1.0)
        return True

    def run_async(self) -> Awaitable[bool]:
        return self._run_async()

    async def _run_async(self) -> bool:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            fut = self.signal._future()
            if self.done():
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, min(left, 1.0) if left is not None else 1.0)


class WriteQueue:
    """Queued writes by relative key (insertion order = age), the batch being written, and
    the counters the store reports."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: dict[str, Item] = {}
        self.inflight: dict[str, Item] = {}
        self._overlap = 0  # keys both in flight and queued again
        self.entering: set[int] = set()  # seqs admitted, not yet queued (count as queued)
        self.seq = 0
        self.signal = Signal()  # something to flush, or a flush was asked for
        self.progress = Signal()  # a batch finished (room in the queue, flush waiters)
        self.coalesced = 0
        self.queued = 0
        self.batch_size = 1  # set by the engine: a queue this long wakes the flusher

    # ------------------------------------------------------------------ callers' side

    def distinct(self) -> int:
        return len(self.items) + len(self.inflight) - self._overlap

    def begin(self, rel: str | None, max_queue: int) -> int | None:
        """Admit a write of ``rel`` (already queued, or fewer than ``max_queue`` keys incl.
        the writes being admitted); -> its local seq, None when the queue is full.
        ``rel=None``: no admission check (taken-over entries are durable already)."""
        with self.lock:
            if rel is not None and rel not in self.items and (
                    self.distinct() + len(self.entering) >= max_queue):
                return None
            self.seq += 1
            self.entering.add(self.seq)
            return self.seq

    def abort(self, seq: int) -> None:
        with self.lock:
            self.entering.discard(seq)
        self.progress.notify()

    def add(self, item: Item) -> bool:
        """Queue ``item`` (its seq was given by :meth:`begin`), coalescing with a queued
        write of its key; True if it is the winner (newer than what was queued)."""
        with self.lock:
            self.entering.discard(item.order[2])
            won, wake = self._queue_locked(item)
        if wake:
            self.signal.notify()
        return won

    def add_now(self, rel: str, key: Any, op: str, value: Any, max_queue: int) -> Item | None:
        """:meth:`begin` + :meth:`add` of a local write with no I/O between them (no
        journal), under one lock; None when the queue is full (the caller then waits)."""
        with self.lock:
            if rel not in self.items and self.distinct() + len(self.entering) >= max_queue:
                return None
            self.seq += 1
            item = Item(rel, key, op, value, (math.inf, 0, self.seq), [])
            wake = self._queue_locked(item)[1]
        if wake:
            self.signal.notify()
        return item

    def _queue_locked(self, item: Item) -> tuple[bool, bool]:
        """-> (item won over a queued write of its key, the flusher must wake up)."""
        item.first = item.order[2]
        self.queued += 1
        items = self.items
        old = items.get(item.rel)
        wake = False
        if old is None:
            item.since = time.monotonic()
            items[item.rel] = item
            if item.rel in self.inflight:
                self._overlap += 1
            won = True
            # the flusher sleeps until the oldest write is due: only a first write
            # (nothing was due) or a full batch changes when it must wake up
            wake = len(items) == 1 or len(items) == self.batch_size
        else:
            self.coalesced += 1
            old.ids.extend(item.ids)
            won = item.order > old.order
            if won:
                old.key, old.op, old.value, old.order = (item.key, item.op, item.value,
                                                         item.order)
        return won, wake

    def peek(self, rel: str) -> Item | None:
        """The newest pending write of ``rel`` (queued, else in flight): read-your-writes."""
        item = self.items.get(rel)
        return item if item is not None else self.inflight.get(rel)

    # ------------------------------------------------------------------ the flusher's side

    def ready(self, batch_size: int, max_delay: float, force: bool) -> bool:
        if not self.items:
            return False
        if force or len(self.items) >= batch_size:
            return True
        oldest = next(iter(self.items.values()))
        return time.monotonic() - oldest.since >= max_delay

    def wait_time(self, max_delay: float) -> float | None:
        """Seconds until the oldest queued write is due (None: the queue is empty)."""
        if not self.items:
            return None
        oldest = next(iter(self.items.values()))
        return max(0.0, max_delay - (time.monotonic() - oldest.since))

    def take(self, batch_size: int) -> list[Item]:
        """The oldest ``batch_size`` writes, moved to in-flight."""
        with self.lock:
            batch: list[Item] = []
            for rel in list(itertools.islice(self.items, batch_size)):
                item = self.items.pop(rel)
                self.inflight[rel] = item
                batch.append(item)
            return batch

    def finish(self, batch: list[Item], requeue: Sequence[Item] = ()) -> None:
        """A batch is written (or dead-lettered); ``requeue``: put back, to try later."""
        with self.lock:
            for item in batch:
                self.inflight.pop(item.rel, None)
            self._overlap = 0
            for item in requeue:
                queued = self.items.get(item.rel)
                if queued is None:
                    self.items[item.rel] = item
                else:  # a newer write came meanwhile: it carries the old ids along
                    queued.ids.extend(item.ids)
                    queued.first = min(queued.first, item.first)
        self.progress.notify()

    def drained_through(self, seq: int) -> bool:
        """Is every write with a local seq <= ``seq`` written (or dead-lettered)?"""
        with self.lock:
            lows = [it.first for it in self.items.values()]
            lows += [it.first for it in self.inflight.values()]
            lows += self.entering
        return not lows or min(lows) > seq


def snapshot_depth(queue: WriteQueue) -> dict[str, Any]:
    return {"queue_depth": len(queue.items), "inflight": len(queue.inflight),
            "distinct_keys": queue.distinct()}
