"""The write-behind engine of a store: the put path, the flusher, retries, dead letters.

Why it looks like this:

* **put**: admission (backpressure: a full queue makes the caller wait, nothing is
  dropped), then the journal (group-committed, :mod:`tiercache._journal`), then the queue,
  then the tiers -- in that order, so a put the journal refused leaves no trace, and the
  tiers always end with the write the queue will flush (see :meth:`_tiers`).
* **flusher**: one flow, driven as a task in the event loop of the first put (a thread
  where there is none); it writes the oldest ``batch_size`` keys when that many are
  queued or the oldest waited ``max_delay``, retries per :class:`~tiercache.policies.Retry`,
  dead-letters what still fails, then acknowledges the batch's journal entries.
* **journal upkeep** (every ``claim_after / 3`` s and on ``flush()``): heartbeat, take over
  the pending entries of flushers whose heartbeat expired, pick up undelivered entries
  (dead letters replayed by the CLI), refresh the pending / dead-letter gauges; those flows,
  and the acknowledgements, are in :mod:`tiercache._upkeep`; dead letters in
  :mod:`tiercache._deadletters`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from tiercache._deadletters import DeadLetterMixin
from tiercache._flow import Flow, Sleep, drive_async, drive_sync
from tiercache._groupcommit import GroupCommit
from tiercache._journal import Journal, JournalUnavailable
from tiercache._store_ops import Append, SharedTierUpdates, TierBatch, UserBatch
from tiercache._store_queue import DELETE, PUT, Item, Wait, WriteQueue, order_of
from tiercache._upkeep import JournalUpkeepMixin
from tiercache.tiers.base import ValueTooLarge

if TYPE_CHECKING:
    from tiercache.policies.write import WriteBehind
    from tiercache.store import Store

__all__ = ["WriteBehindEngine"]

log = logging.getLogger("tiercache.store")

FULL: Final = 0.9  # queue fill ratio that degrades health when it lasts
ACK_EVERY: Final = 4  # batches written before their journal entries are acknowledged


class WriteBehindEngine(JournalUpkeepMixin, DeadLetterMixin):
    """Queue + journal + flusher of one store (see the module docstring)."""

    def __init__(self, store: Store, policy: WriteBehind) -> None:
        l2 = store.cache.l2
        if l2 is not None and not hasattr(l2, "_client_sync"):
            raise ValueError("WriteBehind needs the cache's L2 to be a RedisTier (or no L2): "
                             "the journal and the dead-letter list live in Redis")
        if l2 is None and policy.journaled:
            raise ValueError("WriteBehind(journal=...) needs a RedisTier as the cache's L2; "
                             "without Redis use journal=False (dead letters then stay in "
                             "this process)")
        self.store, self.policy = store, policy
        self.queue = WriteQueue()
        self.queue.batch_size = policy.batch_size
        # Encoded at put time when Redis will see the value (journal, L2: a value they
        # cannot take fails the put before any I/O); else only if it is dead-lettered.
        self._encode_early = policy.journaled or l2 is not None
        # with L2, concurrent puts share their tier round trips (none to share without)
        self._shared = SharedTierUpdates(self._tiers) if l2 is not None else None
        self.consumer = f"{socket.gethostname()[:32]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.journal = Journal(l2, store.cache.namespace, store.name, self.consumer,
                               getattr(l2, "signer", None))
        self.gc = GroupCommit(self.journal, self._taken_over, self._orphaned)
        self.c: dict[str, int] = dict.fromkeys(
            ("flushed", "batches", "retries", "failures", "dead_lettered", "replayed",
             "recovered", "bad_entries", "journal_errors", "backpressure_waits",
             "beat_errors"), 0)
        self.journal_pending = 0
        self.dead_letters = 0
        self._unacked: list[str] = []
        self._ack_failed = False  # flush() does not wait for acks Redis refuses
        self._acking = 0  # ack calls in flight (flush() waits for them)
        self._bad: list[tuple[str, Any, str]] = []
        self._lock = threading.Lock()
        self._force = 0
        self._beat_asked = False
        self.beats = 0
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._full_since: float | None = None
        self._journal_failed_at = 0.0

    # ------------------------------------------------------------------ put path

    def write_one(self, key: Any, value: Any, rel: str) -> Flow[None]:
        """:meth:`write` of one put without the batch bookkeeping (the common call)."""
        if self._encode_early:
            yield from self.write(PUT, [(key, value)], [rel])
            return
        task = self._task
        if task is None or task.done():
            self.ensure_running()
        queue = self.queue
        item = queue.add_now(rel, key, PUT, value, self.policy.max_queue)
        if item is None:  # full: the general path waits for room
            yield from self.write(PUT, [(key, value)], [rel])
            return
        if self._full_since is not None or queue.distinct() >= FULL * self.policy.max_queue:
            self._track_fill()
        yield from self._tiers([item])

    def write(self, op: str, pairs: list[tuple[Any, Any]], rels: list[str]) -> Flow[None]:
        if not self.policy.journaled:
            yield from self._write(op, pairs, rels)
            return
        gc, n = self.gc, len(pairs)
        gc.busy(n)  # the group commit's hint that company is coming (see GroupCommit._join)
        try:
            yield from self._write(op, pairs, rels)
        finally:
            gc.busy(-n)

    def _write(self, op: str, pairs: list[tuple[Any, Any]], rels: list[str]) -> Flow[None]:
        journal, queue, policy = self.journal, self.queue, self.policy
        payloads = ([journal.encode(op, k, v) for k, v in pairs]  # TypeError before I/O
                    if self._encode_early else [])
        limit = getattr(self.store.cache.l2, "max_value_bytes", None)
        if limit is not None and any(len(p) > limit for p in payloads):
            # L2 would refuse it after the journal took it: the tiers would keep the old value
            raise ValueTooLarge(f"store {self.store.name!r}: an encoded value is above the "
                                f"RedisTier's max_value_bytes={limit}; nothing was written")
        self.ensure_running()
        seqs: list[int] = []
        try:
            for rel in rels:
                seq = queue.begin(rel, policy.max_queue)
                while seq is None:  # backpressure: wait for the flusher to make room
                    self.c["backpressure_waits"] += 1
                    yield Wait(queue.progress, _room(queue, rel, policy.max_queue), 1.0,
                               self._loop_guard)
                    seq = queue.begin(rel, policy.max_queue)
                seqs.append(seq)
            ids: list[str] = []
            if policy.journaled:
                ids = yield from self._append(payloads)
        except BaseException:
            for seq in seqs:
                queue.abort(seq)
            raise
        inf = math.inf
        items = [Item(rel, key, op, value,
                      order_of(ids[i], seq, True) if ids else (inf, 0, seq),
                      [ids[i]] if ids else [])
                 for i, ((key, value), rel, seq) in enumerate(zip(pairs, rels, seqs,
                                                                  strict=True))]
        for item in items:
            queue.add(item)
        self._track_fill()
        if self._shared is not None:
            yield TierBatch(self._shared, items)
        else:
            yield from self._tiers(items)

    def _append(self, payloads: list[bytes]) -> Flow[list[str]]:
        try:
            ids: list[str] = yield Append(self.gc, payloads)
            return ids
        except Exception as exc:
            self.c["journal_errors"] += 1
            self._journal_failed_at = time.monotonic()
            text = self.journal.redact(exc)
            if self.policy.journal is True:
                raise JournalUnavailable(
                    f"store {self.store.name!r}: the write could not be journaled ({text}); "
                    "it was not applied") from None
            log.warning("tiercache: store %s: journal unavailable (%s); write queued in "
                        "memory only (journal='best_effort')", self.store.name, text)
            return []

    def _tiers(self, items: list[Item]) -> Flow[None]:
        """Make the tiers show each key's winning queued write. Re-checked after the I/O: a
        newer put of the same key may have updated the tiers before us."""
        cache, queue, ttl = self.store.cache, self.queue, self.store.ttl
        if len(items) == 1 and items[0].op == PUT:  # the common case, without the loop
            item = items[0]
            order = item.order
            yield from cache._set_many({item.rel: item.value}, ttl, [])
            now = queue.peek(item.rel)
            if now is None or now.order == order:
                return
            items = [now]
        pending = items
        for _ in range(5):
            sets = {it.rel: it.value for it in pending if it.op == PUT}
            dels = [it.rel for it in pending if it.op == DELETE]
            seen = {it.rel: it.order for it in pending}
            if sets:
                yield from cache._set_many(sets, ttl, [])
            if dels:
                yield from cache.coherence.invalidate(keys=dels)
            pending = []
            for rel, order in seen.items():
                now = queue.peek(rel)
                if now is not None and now.order != order:
                    pending.append(now)
            if not pending:
                return
        yield from cache.coherence.invalidate(keys=[it.rel for it in pending])

    # ------------------------------------------------------------------ the flusher

    def ensure_running(self) -> None:
        """Start the flusher: a task in the running loop, else a thread."""
        task = self._task
        if task is not None and not task.done():
            return
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                if self._task is None or self._task.done() or self._task.get_loop().is_closed():
                    self._task = loop.create_task(drive_async(self._run()),
                                                  name=f"tiercache-store-{self.store.name}")
                return
            self._thread = threading.Thread(target=self._thread_main, daemon=True,
                                            name=f"tiercache-store-{self.store.name}")
            self._thread.start()

    def _loop_guard(self) -> None:
        """A sync wait for the flusher from inside the loop it runs in would never end."""
        task = self._task
        if task is None or task.done():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return
        if task.get_loop() is running:
            raise RuntimeError(
                f"store {self.store.name!r}: a *_sync call would wait for the flusher, which "
                "runs in this thread's event loop; use the async method (await store.put / "
                "flush) here")

    def _thread_main(self) -> None:
        store = self.store
        try:
            if any(inspect.iscoroutinefunction(f) for f in (store.writer, store.deleter)):
                asyncio.run(drive_async(self._run()))
            else:
                drive_sync(self._run())
        except Exception:
            log.exception("tiercache: store %s: flusher thread failed", store.name)

    def _due(self) -> bool:
        p = self.policy
        return (self._beat_asked or bool(self._unacked) or bool(self._bad)
                or self.queue.ready(p.batch_size, p.max_delay, self._force > 0 or self._closing))

    def _run(self) -> Flow[None]:
        p, queue = self.policy, self.queue
        every = p.claim_after / 3
        next_beat = 0.0
        redis = self.journal.memory is None
        while True:
            now = time.monotonic()
            if self._beat_asked or now >= next_beat:
                self._beat_asked = False
                if redis:
                    yield from self._beat()
                else:
                    self.dead_letters = len(self.journal.memory.items)  # type: ignore[union-attr]
                    self.beats += 1
                    queue.progress.notify()
                next_beat = time.monotonic() + every
            if self._bad:
                yield from self._letter_bad()
            if queue.ready(p.batch_size, p.max_delay, self._force > 0 or self._closing):
                yield from self._flush_batch(queue.take(p.batch_size))
                continue
            if self._unacked:
                yield from self._ack([])
            if self._closing and not queue.items and not queue.inflight and not queue.entering:
                return
            waits = [next_beat - time.monotonic(), 1.0]
            due = queue.wait_time(p.max_delay)
            if due is not None:
                waits.append(due)
            yield Wait(queue.signal, self._due, max(0.0, min(waits)))

    def _flush_batch(self, batch: list[Item]) -> Flow[None]:
        store, retry = self.store, self.policy.retry
        parts: list[tuple[str, Any, list[Item]]] = []
        puts = [it for it in batch if it.op == PUT]
        dels = [it for it in batch if it.op == DELETE]
        if puts:
            parts.append((PUT, store.writer, puts))
        if dels:
            parts.append((DELETE, store.deleter, dels))
        acked: list[str] = []
        requeue: list[Item] = []
        stale: list[str] = []
        for kind, fn, items in parts:
            arg: Any = ({it.key: it.value for it in items} if kind == PUT
                        else [it.key for it in items])
            attempt = 0
            while True:
                try:
                    if fn is None:
                        raise TypeError("a delete was queued but the store has no deleter")
                    yield UserBatch(fn, arg)
                except Exception as exc:
                    attempt += 1
                    self.c["failures"] += 1
                    if attempt < retry.attempts:
                        self.c["retries"] += 1
                        yield Sleep(retry.delay(attempt - 1))
                        continue
                    if (yield from self._dead_letter(items, exc, attempt)):
                        acked += [i for it in items for i in it.ids]
                    else:
                        requeue += items
                    break
                else:
                    self.c["flushed"] += len(items)
                    acked += [i for it in items for i in it.ids]
                    # taken over from another process (or replayed): the tiers may hold what
                    # a reader loaded before this write landed; let them reload it now
                    stale += [it.rel for it in items if it.order[0] != math.inf]
                    break
        if stale:
            yield from self.store.cache.coherence.invalidate(keys=stale)
        self.c["batches"] += 1
        if acked:  # acknowledged a few batches at a time (or when idle): fewer round trips
            with self._lock:
                self._unacked.extend(acked)
                due = len(self._unacked) >= ACK_EVERY * self.policy.batch_size
            if due:
                yield from self._ack([])
        queue = self.queue
        queue.finish(batch, requeue)
        if requeue:
            yield Sleep(1.0)  # Redis is down too: keep them, try again later
        self._track_fill()

    # ------------------------------------------------------------------ flush, close

    def flush_flow(self, timeout: float | None) -> Flow[bool]:
        queue = self.queue
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._force += 1
        try:
            if self.policy.journaled:  # take over dead flushers' entries first
                asked = self.beats
                self._beat_asked = True
                queue.signal.notify()
                if not (yield Wait(queue.progress, lambda: self.beats > asked,
                                   _left(deadline), self._loop_guard)):
                    return False
            target = queue.seq
            queue.signal.notify()
            return bool((yield Wait(queue.progress, lambda: queue.drained_through(target) and (
                not (self._unacked or self._acking) or self._ack_failed), _left(deadline),
                self._loop_guard)))
        finally:
            with self._lock:
                self._force -= 1

    async def aclose(self) -> None:
        await drive_async(self.flush_flow(None))
        self._closing = True
        self.queue.signal.notify()
        task = self._task
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            with contextlib.suppress(Exception):
                await task
        elif self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
        self.journal.close()

    def close(self) -> None:
        drive_sync(self.flush_flow(None))
        self._closing = True
        self.queue.signal.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(30)
        self.journal.close()

    # ------------------------------------------------------------------ figures

    def _track_fill(self) -> None:
        if self.queue.distinct() >= FULL * self.policy.max_queue:
            if self._full_since is None:
                self._full_since = time.monotonic()
        else:
            self._full_since = None

    def snapshot(self) -> dict[str, Any]:
        q = self.queue
        self._track_fill()
        return {**self.c, "queued": q.queued, "coalesced": q.coalesced,
                "queue_depth": len(q.items), "inflight": len(q.inflight),
                "journal_pending": self.journal_pending, "dead_letters": self.dead_letters,
                "journal_batches": self.gc.batches, "journal_appends": self.gc.appended,
                "max_queue": self.policy.max_queue}

    def health_reasons(self) -> list[str]:
        name, reasons = self.store.name, []
        if self.dead_letters:
            reasons.append(f"store {name}: {self.dead_letters} dead-lettered batches")
        self._track_fill()
        lasting = max(1.0, 2 * self.policy.max_delay)
        if self._full_since is not None and time.monotonic() - self._full_since >= lasting:
            reasons.append(f"store {name}: queue above 90% full "
                           f"({self.queue.distinct()}/{self.policy.max_queue} keys)")
        if self._journal_failed_at and time.monotonic() - self._journal_failed_at < 30:
            reasons.append(f"store {name}: journal unavailable (last failure "
                           f"{time.monotonic() - self._journal_failed_at:.0f} s ago)")
        return reasons


def _room(queue: WriteQueue, rel: str, max_queue: int) -> Callable[[], bool]:
    return lambda: rel in queue.items or queue.distinct() + len(queue.entering) < max_queue


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
