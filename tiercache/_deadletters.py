"""Dead letters of a write-behind store: pushing failed batches, listing, replaying.

A mixin of :class:`~tiercache._writebehind.WriteBehindEngine` (the engine's state, these
flows): a batch that still fails after its retries becomes one dead letter in Redis (or in
memory without Redis), holding the batch's journal entries, the error and the attempts.
Replaying queues those writes again (journaled first), never over a newer write queued
here. Unreadable entries are counted and their letters left for a person to look at.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from tiercache._flow import Flow
from tiercache._journal import BadEntry, Journal
from tiercache._store_ops import Append, RedisOp
from tiercache._store_queue import PUT, Item, WriteQueue, order_of

if TYPE_CHECKING:
    from tiercache._groupcommit import GroupCommit
    from tiercache.policies.write import WriteBehind
    from tiercache.store import Store

__all__ = ["DeadLetterMixin", "describe"]

log = logging.getLogger("tiercache.store")


class DeadLetterMixin:
    """The dead-letter flows; the engine provides the attributes below."""

    store: Store
    policy: WriteBehind
    journal: Journal
    queue: WriteQueue
    gc: GroupCommit
    c: dict[str, int]
    dead_letters: int
    _lock: threading.Lock
    _bad: list[tuple[str, Any, str]]

    def _ack(self, ids: list[str]) -> Flow[None]:
        raise NotImplementedError

    def _dead_letter(self, items: list[Item], exc: BaseException, attempts: int) -> Flow[bool]:
        journal, name = self.journal, self.store.name
        error = journal.redact(exc)
        letter = journal.letter(error, attempts, [self._encoded(it) for it in items])
        try:
            yield RedisOp(journal, journal.push_letter_plan(letter))
        except Exception as push_exc:
            log.error("tiercache: store %s: %d writes failed (%s) and the dead-letter list is "
                      "unreachable (%s): kept in memory, retried later", name, len(items),
                      error, journal.redact(push_exc))
            return False
        self.c["dead_lettered"] += len(items)
        self.dead_letters += 1
        log.error("tiercache: store %s: %d writes failed %d times (%s): dead-lettered; see "
                  "store.dead_letters() / `tiercache store dead-letters`", name, len(items),
                  attempts, error)
        return True

    def _encoded(self, item: Item) -> bytes:
        try:
            return self.journal.encode(item.op, item.key, item.value)
        except TypeError:  # only possible without Redis (values not encoded at put time)
            return self.journal.encode(item.op, item.key, f"<unencodable: {item.value!r:.200}>")

    def _letter_bad(self) -> Flow[None]:
        with self._lock:
            bad, self._bad = self._bad, []
        journal = self.journal
        for entry_id, raw, error in bad:
            raw_bytes = raw if isinstance(raw, bytes) else b""
            letter = journal.letter(f"unreadable journal entry {entry_id}: {error}", 0,
                                    [raw_bytes])
            try:
                yield RedisOp(journal, journal.push_letter_plan(letter))
            except Exception:
                with self._lock:
                    self._bad.append((entry_id, raw, error))
                return
            self.dead_letters += 1
            yield from self._ack([entry_id])


    # ------------------------------------------------------------------ dead letters

    def letters_flow(self, limit: int) -> Flow[list[dict[str, Any]]]:
        journal = self.journal
        raws = yield RedisOp(journal, journal.letters_plan(limit))
        return [describe(journal, raw) for raw in raws]

    def replay_flow(self, limit: int | None) -> Flow[int]:
        journal, queued = self.journal, 0
        raws = yield RedisOp(journal, journal.letters_plan(limit or 10_000))
        for raw in raws:
            try:
                letter = journal.read_letter(raw)
            except BadEntry as exc:
                log.warning("tiercache: store %s: unreadable dead letter left in place: %s",
                            self.store.name, exc)
                continue
            entries = []
            for payload in letter["entries"]:
                try:
                    entries.append(journal.decode(payload))
                except BadEntry:
                    self.c["bad_entries"] += 1
            if not entries:  # nothing readable: leave it for a person to look at
                log.warning("tiercache: store %s: a dead letter with no readable write left "
                            "in place (%s)", self.store.name, letter["error"][:200])
                continue
            if self.policy.journaled:
                ids = yield Append(self.gc, [journal.encode(op, k, v) for op, k, v, _ in entries])
            else:
                ids = [None] * len(entries)
            for (op, key, value, _), entry_id in zip(entries, ids, strict=True):
                seq = self.queue.begin(None, 0)
                assert seq is not None
                self.queue.add(Item(self.store.rel(key), key, op, value,
                                    order_of(entry_id, seq, False),
                                    [entry_id] if entry_id else []))
            yield RedisOp(journal, journal.remove_letter_plan(raw))
            self.dead_letters = max(0, self.dead_letters - 1)
            queued += len(entries)
            self.c["replayed"] += len(entries)
        return queued


def describe(journal: Journal, raw: Any) -> dict[str, Any]:
    """A dead letter for people: its writes decoded (unreadable ones say why)."""
    try:
        letter = journal.read_letter(raw)
    except BadEntry as exc:
        return {"error": f"unreadable dead letter: {exc}", "writes": [], "raw": raw}
    writes = []
    for payload in letter.pop("entries"):
        try:
            op, key, value, at = journal.decode(payload)
            writes.append({"op": "put" if op == PUT else "delete", "key": key, "value": value,
                           "at": at})
        except BadEntry as exc:
            writes.append({"op": "unreadable", "error": str(exc)})
    letter["writes"] = writes
    return letter


