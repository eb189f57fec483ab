"""Group commit of journal appends: concurrent ``put`` calls share one round trip.

Why: a journaled ``put`` must not return before its entry is in Redis, and a round trip per
caller would make the journal cost one round trip per put. Here a caller that finds fewer
than :data:`MAX_INFLIGHT` batches in flight sends everything queued (its own entry and
whoever queued before it); callers arriving meanwhile queue, and when a batch returns the
first of them is handed the lead and sends them all. A few batches in flight at once keep
the journal's throughput from being one batch per round trip under load.

The async and the thread paths share the bookkeeping; each slot waits on an asyncio future
or a threading event. Handing the lead to a waiter replaces its wake-up object first, so a
result for the slot (when another leader took it along meanwhile) is never lost.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from tiercache._journal import JournalUnavailable

if TYPE_CHECKING:
    from tiercache._journal import Journal

__all__ = ["MAX_INFLIGHT", "GroupCommit"]

MAX_INFLIGHT: Final = 4
_LEAD: Final = object()


class _Slot:
    __slots__ = ("done", "error", "fut", "handed", "ids", "lead", "payloads")

    def __init__(self, payloads: list[bytes]) -> None:
        self.payloads = payloads
        self.ids: list[str] | None = None
        self.error: BaseException | None = None
        self.fut: asyncio.Future[Any] | None = None
        self.done: threading.Event | None = None
        self.lead = False
        self.handed = False  # holds a lead (joined as leader or handed it), batch not taken


class GroupCommit:
    """``on_foreign``: entries the script delivered to us that another appender wrote
    (moved back from the dead-letter list); ``on_orphans``: ids appended for callers that
    were cancelled meanwhile (the store deletes them: those puts never happened)."""

    def __init__(self, journal: Journal, on_foreign: Callable[[list[tuple[str, Any]]], None],
                 on_orphans: Callable[[list[str]], None]) -> None:
        self.journal = journal
        self.on_foreign, self.on_orphans = on_foreign, on_orphans
        self._lock = threading.Lock()
        self._pending: list[_Slot] = []
        self._inflight = 0
        self._gatherer: _Slot | None = None
        self._busy = 0  # entries of puts under way (admission .. tiers), theirs included
        self.batches = 0
        self.appended = 0
        self.gathers = 0  # leaders that waited one loop turn for company (diagnostics)

    # ------------------------------------------------------------------ bookkeeping

    def busy(self, n: int) -> None:
        """The store's puts say when they start (``n`` entries) and end (``-n``)."""
        with self._lock:
            self._busy += n

    def _join(self, slot: _Slot) -> tuple[bool, bool]:
        """Queue ``slot``; -> (its caller leads a batch now, it first waits one loop turn).

        A leader that finds other appends in flight, or other puts of the store under way,
        waits one event-loop turn before it takes the batch: concurrent putters are woken in
        groups (a shared tier update returning, a batch delivered), and the rest of its
        group joins in that turn instead of the first sending a batch of one. While it
        gathers, joiners queue for it rather than lead. A lone put sends at once."""
        with self._lock:
            self._pending.append(slot)
            if self._inflight < MAX_INFLIGHT and self._gatherer is None:
                gather = slot.fut is not None and (
                    self._inflight > 0 or self._busy > len(slot.payloads))
                self._inflight += 1
                slot.handed = True
                if gather:
                    self._gatherer = slot
                    self.gathers += 1
                return True, gather
            return False, False

    def _take(self, slot: _Slot) -> list[_Slot] | None:
        """Everything queued, or None when another leader already took ``slot`` along (the
        caller then waits for that batch instead, and gives its lead back)."""
        with self._lock:
            slot.handed = False
            if self._gatherer is slot:
                self._gatherer = None
            if slot not in self._pending:
                self._inflight -= 1
                self._hand_off_locked()
                return None
            batch, self._pending = self._pending, []
            return batch

    def _abandon(self, slot: _Slot, always: bool) -> None:
        """A gathering leader (``always``) or a waiter handed the lead was cancelled before it
        took its batch: its entry is not sent (or, if another leader took it along, its ids
        are orphans: the future is done), and the lead moves on."""
        orphans: list[str] = []
        with self._lock:
            if not (always or slot.handed):
                return  # a plain waiter: its cancelled future marks it (hand-off, _deliver)
            slot.handed = False
            assert slot.fut is not None
            if slot.fut.done() and not slot.fut.cancelled() and slot.error is None:
                orphans = slot.ids or []  # delivered just before the cancellation
            slot.fut.cancel()
            if self._gatherer is slot:
                self._gatherer = None
            if slot in self._pending:
                self._pending.remove(slot)
            self._inflight -= 1
            self._hand_off_locked()
        if orphans:
            self.on_orphans(orphans)

    def _finished(self) -> None:
        with self._lock:
            self._inflight -= 1
            self._hand_off_locked()

    def _hand_off_locked(self) -> None:
        """Give the lead to the first live waiter that does not hold one yet, while fewer
        than MAX_INFLIGHT run (a leader stays queued until it takes its batch, and a
        gathering one waits a loop turn: a second lead would count a batch that never runs)."""
        i = 0
        while i < len(self._pending) and self._inflight < MAX_INFLIGHT:
            slot = self._pending[i]
            if slot.handed:
                i += 1
                continue
            if slot.fut is not None:
                if slot.fut.done():  # cancelled while waiting: its entry is never sent
                    self._pending.pop(i)
                    continue
                old, loop = slot.fut, slot.fut.get_loop()
                slot.fut = loop.create_future()  # results go to the new one from now on
                _call_in_loop(loop, _resolve, old, _LEAD)
            else:
                assert slot.done is not None
                old_event, slot.done = slot.done, threading.Event()
                slot.lead = True
                old_event.set()
            slot.handed = True
            self._inflight += 1
            return

    def _deliver(self, batch: list[_Slot], reply: Any, error: BaseException | None,
                 leader: _Slot) -> None:
        orphans: list[str] = []
        if error is None:
            ids, foreign = reply
            self.batches += 1
            self.appended += len(ids)
            at = 0
            for slot in batch:
                n = len(slot.payloads)
                slot.ids = ids[at:at + n]
                at += n
                if slot is not leader and slot.fut is not None and slot.fut.done():
                    orphans += slot.ids
            if foreign:
                self.on_foreign(foreign)
        for slot in batch:
            slot.error = error
            if slot is leader:
                continue
            if slot.fut is not None:
                if not slot.fut.done():
                    _call_in_loop(slot.fut.get_loop(), _settle, slot.fut, slot)
            elif slot.done is not None:
                slot.done.set()
        if orphans:
            self.on_orphans(orphans)

    def _settled(self, batch: list[_Slot], leader: _Slot, reply: Any,
                 error: BaseException | None) -> list[str]:
        """The leader's batch came back: everybody gets its ids (or the error), the lead
        moves on; -> the leader's ids ([] when it failed: the caller re-raises)."""
        self._deliver(batch, reply, error, leader)
        self._finished()
        return [] if error is not None else self._result(leader)

    @staticmethod
    def _flat(batch: list[_Slot]) -> list[bytes]:
        return [p for slot in batch for p in slot.payloads]

    @staticmethod
    def _result(slot: _Slot) -> list[str]:
        if slot.error is not None:
            raise slot.error
        assert slot.ids is not None
        return slot.ids

    # ------------------------------------------------------------------ the two shells

    async def append_async(self, payloads: list[bytes]) -> list[str]:
        slot = _Slot(payloads)
        slot.fut = asyncio.get_running_loop().create_future()
        lead, gather = self._join(slot)
        while True:
            if not lead:
                try:
                    got = await slot.fut
                except BaseException:
                    self._abandon(slot, always=False)
                    raise
                if got is not _LEAD:
                    return got  # type: ignore[no-any-return]
            elif gather:
                gather = False
                try:
                    await asyncio.sleep(0)  # the putters woken with us join meanwhile
                except BaseException:
                    self._abandon(slot, always=True)
                    raise
            batch = self._take(slot)
            if batch is not None:
                break
            lead = False  # taken along by another leader: wait for its result
        try:
            reply = await self.journal.run_async(self.journal.append_plan(self._flat(batch)))
        except BaseException as exc:  # every appender of the batch gets the error
            self._settled(batch, slot, None, exc if isinstance(exc, Exception) else
                          JournalUnavailable("journal append interrupted (the appending "
                                             "task was cancelled)"))
            raise
        return self._settled(batch, slot, reply, None)

    def append_sync(self, payloads: list[bytes]) -> list[str]:
        slot = _Slot(payloads)
        slot.done = threading.Event()
        lead, _ = self._join(slot)  # a thread never gathers: there is no loop turn to wait
        while True:
            if not lead:
                event = slot.done
                event.wait()
                if not slot.lead:
                    return self._result(slot)
                slot.lead = False
            batch = self._take(slot)
            if batch is not None:
                break
            lead = False
        try:
            reply = self.journal.run_sync(self.journal.append_plan(self._flat(batch)))
        except Exception as exc:
            self._settled(batch, slot, None, exc)
            raise
        return self._settled(batch, slot, reply, None)


def _call_in_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    """``fn(*args)`` in ``loop``: at once when that is the running loop (no self-pipe write)."""
    try:
        here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    if loop is here:
        fn(*args)
    else:
        loop.call_soon_threadsafe(fn, *args)


def _resolve(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _settle(fut: asyncio.Future[Any], slot: _Slot) -> None:
    if fut.done():
        return
    if slot.error is not None:
        fut.set_exception(slot.error)
    else:
        fut.set_result(slot.ids)
