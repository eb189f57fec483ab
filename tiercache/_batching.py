"""Coalescing: the async calls made in one event-loop turn become one batch call.

Why: under concurrency many L1 misses are in flight at once, and each one's Redis GET, its
SET after the load and its loader call is a round trip of its own. One GET costs ~130-160 us
of client CPU here; inside a 1000-key pipeline sent straight to the nodes
(:mod:`tiercache.tiers._redis_direct`) ~12 us per key (SET: ~17), and a batch loader
(``WHERE id = ANY($1)``) costs the database one query instead of hundreds.
A :class:`Coalescer` collects the items submitted during one loop turn and sends them
together once the loop has run every ready callback: no timer, no waiting window, so a lone
call is only one loop hop later (and is sent with the single-item function when there is
one: a batch of one costs more than a plain call).

Every item gets its own result or its own exception; a failed batch fails each of its items.
A caller that gives up (cancelled, timed out) leaves the batch running for the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from tiercache._flow import Coalesced, Op, TierOp
from tiercache.tiers.base import MISSING, EntryWrite, Missing, RemoteTier

if TYPE_CHECKING:
    from tiercache.codec import Entry

__all__ = ["Coalescer", "L2Ops"]

I = TypeVar("I")  # noqa: E741 - an item
R = TypeVar("R")

Many = Callable[[list[I]], Awaitable[Sequence[Any]]]


class Coalescer(Generic[I, R]):
    """``await coalescer.submit(item)``: joins this loop turn's batch.

    ``many(items)`` returns one result per item, in order; a result that is an exception
    instance is raised to that item's caller only. ``one(item)`` (optional) serves a batch
    of one. Batches hold at most ``max_batch`` items (a bigger turn is split).
    """

    __slots__ = ("_pending", "_running", "batches", "items", "many", "max_batch", "one")

    def __init__(self, many: Many[I], one: Callable[[I], Awaitable[R]] | None = None, *,
                 max_batch: int = 1000) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
        self.many, self.one, self.max_batch = many, one, max_batch
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[I, asyncio.Future[R]]]] = {}
        self._running: set[asyncio.Task[None]] = set()  # strong refs until they finish
        self.batches = 0  # calls of many() (and one())
        self.items = 0  # items sent

    def submit(self, item: I) -> asyncio.Future[R]:
        loop = asyncio.get_running_loop()
        pending = self._pending.get(loop)
        if pending is None:
            pending = self._pending[loop] = []
            loop.call_soon(self._flush, loop)  # after every callback already ready this turn
        future: asyncio.Future[R] = loop.create_future()
        pending.append((item, future))
        return future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        pending = self._pending.pop(loop, [])
        size = self.max_batch
        for start in range(0, len(pending), size):
            task = loop.create_task(self._send(pending[start:start + size]))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _send(self, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        live = [(item, fut) for item, fut in batch if not fut.done()]  # callers still waiting
        if not live:
            return
        self.batches += 1
        self.items += len(live)
        try:
            if len(live) == 1 and self.one is not None:
                results: Sequence[Any] = [await self.one(live[0][0])]
            else:
                results = await self.many([item for item, _ in live])
                if len(results) != len(live):
                    raise TypeError(f"batch call returned {len(results)} results for "
                                    f"{len(live)} items")
        except BaseException as exc:  # each caller gets it (cancellation included)
            cancelled = isinstance(exc, asyncio.CancelledError)
            for _, fut in live:
                if fut.done():
                    continue
                if cancelled:
                    fut.cancel()
                else:
                    fut.set_exception(exc)
            if cancelled:
                raise
            return
        for (_, fut), result in zip(live, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)


class L2Ops:
    """The ops a cache's flows read and write L2 envelopes with: async, the reads of one
    loop turn become one MGET pipeline and the writes one SET pipeline (``coalesce=False``:
    one round trip each, as the tier's own calls)."""

    __slots__ = ("l2", "reads", "writes")

    def __init__(self, l2: RemoteTier, coalesce: bool = True) -> None:
        self.l2 = l2
        self.reads: Coalescer[str, Entry | Missing] | None = None
        self.writes: Coalescer[EntryWrite, None] | None = None
        if coalesce:
            self.reads = Coalescer(self._read_many, l2.get_entry)
            self.writes = Coalescer(l2.set_many_entries, self._write)

    def read(self, full: str) -> Op:
        """The op reading one envelope (or MISSING)."""
        if self.reads is not None:
            return Coalesced(self.reads, self.l2.get_entry_sync, full)
        return TierOp(self.l2.get_entry, self.l2.get_entry_sync, full)

    def write(self, item: EntryWrite) -> Op:
        """The op writing one envelope; raises ``TypeError`` when the value is unencodable."""
        if self.writes is not None:
            return Coalesced(self.writes, self._write_sync, item)
        return TierOp(self._write, self._write_sync, item)

    async def _read_many(self, keys: list[str]) -> list[Entry | Missing]:
        found = await self.l2.get_many_entries(dict.fromkeys(keys))
        return [found.get(key, MISSING) for key in keys]

    async def _write(self, item: EntryWrite) -> None:
        full, value, ttl, seconds, stale = item
        await self.l2.set(full, value, ttl, load_time=seconds, stale=stale)

    def _write_sync(self, item: EntryWrite) -> None:
        full, value, ttl, seconds, stale = item
        self.l2.set_sync(full, value, ttl, load_time=seconds, stale=stale)
