"""The journal's side of a write-behind engine: what it owes the Redis stream.

A mixin of :class:`~tiercache._writebehind.WriteBehindEngine` (the engine's state, these
flows), run by its flusher:

* **taking over** journal entries this process did not write -- the pending entries of a
  flusher whose heartbeat expired (``recovered``), entries nobody was delivered (dead letters
  replayed by the CLI: ``replayed``) -- as queued writes ordered by journal id, so they never
  beat a write queued here; unreadable ones are counted and dead-lettered;
* **acknowledging** written entries (``XACK`` + ``XDEL``, a few batches at a time), kept for
  a retry when Redis refuses;
* **upkeep** every ``claim_after / 3`` s and on ``flush()``: heartbeat, claims, the pending
  and dead-letter gauges.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from tiercache._flow import Flow, Sleep
from tiercache._journal import BadEntry, Journal
from tiercache._store_ops import RedisOp
from tiercache._store_queue import Item, WriteQueue, order_of

if TYPE_CHECKING:
    from tiercache.policies.write import WriteBehind
    from tiercache.store import Store

__all__ = ["JournalUpkeepMixin"]

log = logging.getLogger("tiercache.store")


class JournalUpkeepMixin:
    """The journal flows; the engine provides the attributes below."""

    store: Store
    policy: WriteBehind
    journal: Journal
    queue: WriteQueue
    consumer: str
    c: dict[str, int]
    journal_pending: int
    dead_letters: int
    beats: int
    _lock: threading.Lock
    _bad: list[tuple[str, Any, str]]
    _unacked: list[str]
    _ack_failed: bool
    _acking: int

    def _taken_over(self, entries: list[tuple[str, Any]], counter: str = "replayed") -> None:
        """Queue journal entries this process did not write (claimed or undelivered)."""
        queue = self.queue
        for entry_id, raw in entries:
            try:
                op, key, value, _ = self.journal.decode(raw)
                rel = self.store.rel(key)
            except (BadEntry, TypeError, ValueError) as exc:
                self.c["bad_entries"] += 1
                with self._lock:
                    self._bad.append((entry_id, raw, str(exc)))
                continue
            seq = queue.begin(None, 0)
            assert seq is not None
            queue.add(Item(rel, key, op, value, order_of(entry_id, seq, False), [entry_id]))
            self.c[counter] += 1

    def _orphaned(self, ids: list[str]) -> None:
        """Entries appended for puts that were cancelled: they never happened."""
        with self._lock:
            self._unacked.extend(ids)

    def _ack(self, ids: list[str]) -> Flow[None]:
        with self._lock:
            ids, self._unacked = ids + self._unacked, []
        if not ids:
            return
        self._acking += 1
        try:
            yield RedisOp(self.journal, self.journal.ack_plan(ids))
        except Exception as exc:
            log.warning("tiercache: store %s: journal ack failed (%s); retried later",
                        self.store.name, self.journal.redact(exc))
            with self._lock:
                self._unacked.extend(ids)
            self._ack_failed = True
            self._acking -= 1
            yield Sleep(0.5)
        else:
            self._ack_failed = False
            self._acking -= 1
        self.queue.progress.notify()

    def _beat(self) -> Flow[None]:
        """Heartbeat, take over dead flushers' entries, pick up undelivered ones."""
        journal = self.journal
        try:
            info = yield RedisOp(journal, journal.beat_plan(int(self.policy.claim_after * 1000)))
            self.journal_pending, self.dead_letters = info["pending"], info["dead"]
            others = [n for n, _ in info["consumers"] if n != self.consumer]
            if others and self.policy.journaled:
                alive = yield RedisOp(journal, journal.alive_plan(others))
                for name, ok in zip(others, alive, strict=True):
                    while not ok:
                        claimed = yield RedisOp(journal, journal.claim_plan(name))
                        if not claimed:
                            break
                        self._taken_over(claimed, "recovered")
            if self.policy.journaled:
                while True:
                    fresh = yield RedisOp(journal, journal.undelivered_plan())
                    if not fresh:
                        break
                    self._taken_over(fresh)
        except Exception as exc:
            self.c["beat_errors"] += 1
            log.debug("tiercache: store %s: journal upkeep failed: %s", self.store.name,
                      journal.redact(exc))
        finally:
            self.beats += 1
            self.queue.progress.notify()

    def refresh_flow(self) -> Flow[None]:
        if self.journal.memory is not None:
            self.dead_letters = len(self.journal.memory.items)
            return
        try:
            info = yield RedisOp(self.journal, self.journal.gauges_plan())
        except Exception:
            return
        self.journal_pending, self.dead_letters = info
