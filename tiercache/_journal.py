"""A store's durable journal (a Redis Stream) and its dead-letter list, on the RedisTier's client.

Why a stream with a consumer group: an entry appended by a ``put`` is at once *delivered*
to the appending process's consumer (one Lua script: ``XADD`` then ``XREADGROUP``), so it
sits in that consumer's pending list until the writer succeeded and the flusher
acknowledges it (``XACK`` + ``XDEL``). A process that dies leaves its entries pending
under its consumer; once its heartbeat key expired, another process claims them
(``XPENDING`` + ``XCLAIM``, per dead consumer) and writes them. Entries nobody was
delivered (moved back from the dead-letter list by ``tiercache store dead-letters
--replay``) are picked up by any flusher with ``XREADGROUP >``.

Group commit: concurrent appenders share one script call (:class:`GroupCommit`): while
one batch is in flight the next callers queue, and the first of them sends them all, so
the journal costs one round trip per batch of callers, not per caller.

Every byte read back is attacker-controlled: entries are size-bounded, decoded by
:func:`tiercache.codec.decode` (bounded depth) and, when the tier signs, HMAC-checked
against the stream's key before parsing; a bad entry is reported, never raised.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any, Final

from tiercache import codec
from tiercache.codec import CodecError, Signer
from tiercache.tiers.keys import store_key

__all__ = ["BadEntry", "DeadLetter", "GroupCommit", "Journal", "JournalEntry",
           "JournalUnavailable"]

GROUP: Final = "flushers"
MAX_CLAIM: Final = 500  # entries claimed or read per call
ACK_CHUNK: Final = 1000
ENVELOPE: Final = 4096  # bytes a journal entry may add around its value
JOURNAL_TIMEOUT: Final = 5.0  # seconds a journal call may take at least

# Create the group on first use (a flushed Redis too), append, deliver to ourselves.
# Returns {ids, {foreign id, payload, ...}}: foreign = undelivered entries of others.
APPEND_LUA: Final = """
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
local ids = {}
for i = 3, #ARGV do ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'd', ARGV[i]) end
local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', #ids + 500,
                       'STREAMS', KEYS[1], '>')
local mine, foreign = {}, {}
for _, id in ipairs(ids) do mine[id] = true end
if got then
  for _, e in ipairs(got[1][2]) do
    if not mine[e[1]] then
      foreign[#foreign + 1] = e[1]
      foreign[#foreign + 1] = (e[2] and e[2][2]) or ''
    end
  end
end
return {ids, foreign}
"""

# Move one dead letter back into the stream as undelivered entries, exactly once.
REQUEUE_LUA: Final = """
if redis.call('LREM', KEYS[2], 1, ARGV[1]) == 0 then return 0 end
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[2], '0', 'MKSTREAM')
for i = 3, #ARGV do redis.call('XADD', KEYS[1], '*', 'd', ARGV[i]) end
return #ARGV - 2
"""


class JournalUnavailable(RuntimeError):
    """A ``journal=True`` write could not be made durable (Redis unreachable): the write was
    not acknowledged and no tier holds it. Retry, or use ``journal="best_effort"``."""


class BadEntry(CodecError):
    """A journal entry or dead letter that is not ours to trust (corrupt, foreign, unsigned)."""


JournalEntry = tuple[str, Any, Any, float]  # (op, key, value, written at)
DeadLetter = dict[str, Any]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class Journal:
    """The Redis side of one store: stream, dead letters, heartbeats (one slot).

    ``consumer`` names this process's flusher in the group (None: a tool that only
    inspects or requeues, like the CLI).
    """

    def __init__(self, tier: Any, namespace: str, store: str, consumer: str | None,
                 signer: Signer | None = None) -> None:
        self.tier, self.consumer, self.signer = tier, consumer, signer
        self.stream = store_key(namespace, store, "journal")
        self.dead = store_key(namespace, store, "dead")
        self.hb_prefix = store_key(namespace, store, "hb:")
        limit = getattr(tier, "max_value_bytes", None)
        self.max_entry = (limit or 64 * 1024 * 1024) + ENVELOPE
        # Durability over latency: the tier's timeouts are tuned for cache reads (a miss is
        # cheap); a journal append that times out fails a put, so it gets more time.
        self.timeout = JOURNAL_TIMEOUT if tier is None else max(
            JOURNAL_TIMEOUT, 4 * (tier.connect_timeout + tier.socket_timeout))
        self.memory = MemoryLetters() if tier is None else None  # no Redis: no journal
        self._sync: Any = None
        self._sync_lock = threading.Lock()

    # ------------------------------------------------------------------ encoding

    def encode(self, op: str, key: Any, value: Any) -> bytes:
        body = codec.encode([op, key, value, time.time()])
        return codec.seal(body, self.signer, self.stream) if self.signer else body

    def decode(self, raw: Any) -> JournalEntry:
        """An entry read back; :class:`BadEntry` for anything we did not write."""
        if not isinstance(raw, bytes) or not raw or len(raw) > self.max_entry:
            raise BadEntry("journal entry missing, not bytes, or too large")
        try:
            body: Any = raw
            if raw[:3] == b"\xc1TS" or self.signer is not None:
                body = codec.unseal(raw, self.signer, self.stream)
            fields = codec.decode(body)
        except CodecError as exc:
            raise BadEntry(str(exc)) from None
        if (type(fields) is not list or len(fields) != 4 or fields[0] not in ("p", "d")
                or type(fields[1]) not in (str, int) or type(fields[3]) is not float):
            raise BadEntry("malformed journal entry")
        return fields[0], fields[1], fields[2], fields[3]

    def letter(self, error: str, attempts: int, entries: Sequence[bytes]) -> bytes:
        body = codec.encode({"error": error[:2000], "at": time.time(), "attempts": attempts,
                             "entries": list(entries)})
        return codec.seal(body, self.signer, self.dead) if self.signer else body

    def read_letter(self, raw: Any) -> DeadLetter:
        """A dead letter as a dict (``entries`` decoded; bad ones listed as errors)."""
        if not isinstance(raw, bytes) or len(raw) > 64 * self.max_entry:
            raise BadEntry("dead letter not bytes or too large")
        try:
            body: Any = raw
            if raw[:3] == b"\xc1TS" or self.signer is not None:
                body = codec.unseal(raw, self.signer, self.dead)
            letter = codec.decode(body)
        except CodecError as exc:
            raise BadEntry(str(exc)) from None
        entries = letter.get("entries") if type(letter) is dict else None
        if type(entries) is not list or not all(type(e) is bytes for e in entries):
            raise BadEntry("malformed dead letter")
        return {"error": _text(letter.get("error", "")), "at": letter.get("at"),
                "attempts": letter.get("attempts"), "entries": entries, "raw": raw}

    # ------------------------------------------------------------------ plans
    # Generators of redis-py calls: the same plan runs on the sync and the async client
    # (see run_sync / run_async), like the RedisTier's own plans.

    def append_plan(self, payloads: list[bytes]) -> Any:
        assert self.consumer is not None
        def plan(client: Any) -> Generator[Any, Any, tuple[list[str], list[tuple[str, bytes]]]]:
            reply = yield client.eval(APPEND_LUA, 1, self.stream, GROUP, self.consumer,
                                      *payloads)
            ids = [_text(i) for i in reply[0]]
            flat = reply[1]
            foreign = [(_text(flat[i]), flat[i + 1]) for i in range(0, len(flat) - 1, 2)]
            return ids, foreign
        return plan

    def ack_plan(self, ids: list[str]) -> Any:
        def plan(client: Any) -> Generator[Any, Any, None]:
            for start in range(0, len(ids), ACK_CHUNK):
                part = ids[start:start + ACK_CHUNK]
                pipe = client.pipeline(transaction=False)
                pipe.xack(self.stream, GROUP, *part)
                pipe.xdel(self.stream, *part)
                yield pipe.execute()
        return plan

    def beat_plan(self, ttl_ms: int) -> Any:
        """Heartbeat, then the group's consumers, pending total and dead-letter length."""
        def plan(client: Any) -> Generator[Any, Any, dict[str, Any]]:
            pipe = client.pipeline(transaction=False)
            if self.consumer is not None:
                pipe.set(self.hb_prefix + self.consumer, b"1", px=ttl_ms)
            pipe.xinfo_consumers(self.stream, GROUP)
            pipe.xpending(self.stream, GROUP)
            pipe.llen(self.dead)
            replies = yield pipe.execute(raise_on_error=False)
            if self.consumer is not None:
                replies = replies[1:]
            consumers, pending, dead = replies
            out: dict[str, Any] = {"consumers": [], "pending": 0,
                                   "dead": dead if isinstance(dead, int) else 0}
            if isinstance(pending, dict):
                out["pending"] = int(pending.get("pending") or 0)
            if isinstance(consumers, list):
                out["consumers"] = [(_text(c.get("name")), int(c.get("pending") or 0))
                                    for c in consumers if isinstance(c, dict)]
            return out
        return plan

    def alive_plan(self, names: list[str]) -> Any:
        def plan(client: Any) -> Generator[Any, Any, list[bool]]:
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.exists(self.hb_prefix + name)
            return [bool(n) for n in (yield pipe.execute())]
        return plan

    def claim_plan(self, dead_consumer: str) -> Any:
        """Up to MAX_CLAIM pending entries of a dead consumer, now ours; [] when it has none
        left (it is then removed from the group)."""
        assert self.consumer is not None
        def plan(client: Any) -> Generator[Any, Any, list[tuple[str, Any]]]:
            pending = yield client.xpending_range(self.stream, GROUP, "-", "+", MAX_CLAIM,
                                                  dead_consumer)
            ids = [p["message_id"] for p in pending]
            if not ids:
                yield client.xgroup_delconsumer(self.stream, GROUP, dead_consumer)
                return []
            got = yield client.xclaim(self.stream, GROUP, self.consumer, 0, ids)
            claimed = [(_text(i), (f or {}).get(b"d")) for i, f in got]
            gone = set(map(_text, ids)) - {i for i, _ in claimed}
            if gone:  # deleted from the stream but still pending: nothing left to write
                yield client.xack(self.stream, GROUP, *gone)
            return claimed
        return plan

    def undelivered_plan(self) -> Any:
        assert self.consumer is not None
        def plan(client: Any) -> Generator[Any, Any, list[tuple[str, Any]]]:
            reply = yield client.xreadgroup(GROUP, self.consumer, {self.stream: ">"},
                                            count=MAX_CLAIM)
            out: list[tuple[str, Any]] = []
            for _, entries in reply or []:
                out += [(_text(i), (f or {}).get(b"d")) for i, f in entries]
            return out
        return plan

    def push_letter_plan(self, letter: bytes) -> Any:
        def plan(client: Any) -> Generator[Any, Any, None]:
            yield client.rpush(self.dead, letter)
        return plan

    def letters_plan(self, limit: int) -> Any:
        def plan(client: Any) -> Generator[Any, Any, list[Any]]:
            return list((yield client.lrange(self.dead, 0, max(limit, 1) - 1)))
        return plan

    def remove_letter_plan(self, raw: bytes) -> Any:
        def plan(client: Any) -> Generator[Any, Any, int]:
            return int((yield client.lrem(self.dead, 1, raw)))
        return plan

    def requeue_plan(self, raw: bytes, entries: list[bytes]) -> Any:
        def plan(client: Any) -> Generator[Any, Any, int]:
            return int((yield client.eval(REQUEUE_LUA, 2, self.stream, self.dead, raw, GROUP,
                                          *entries)))
        return plan

    # ------------------------------------------------------------------ runners

    async def run_async(self, plan: Any) -> Any:
        if self.memory is not None:
            return self.run_sync(plan)
        async with asyncio.timeout(self.timeout):
            client = await self.tier._client()
            steps = plan(client)
            value: Any = None
            while True:
                try:
                    step = steps.send(value)
                except StopIteration as stop:
                    return stop.value
                value = await step

    def _client_sync(self) -> Any:
        """Our own sync client on the tier's connection spec, with the journal's timeout
        (the tier's sync client carries its short per-socket timeout)."""
        if self._sync is None:
            with self._sync_lock:
                if self._sync is None:
                    from tiercache.tiers._redis_conn import make_sync_client

                    tier = self.tier
                    tier._client_sync()  # detects cluster vs single server once
                    self._sync = make_sync_client(
                        tier._spec, bool(tier.cluster), self.timeout,
                        max(tier.connect_timeout, 1.0), 16)
        return self._sync

    def close(self) -> None:
        with self._sync_lock:
            client, self._sync = self._sync, None
        if client is not None:
            client.close()

    def run_sync(self, plan: Any) -> Any:
        steps = plan(self.memory if self.memory is not None else self._client_sync())
        value: Any = None
        while True:
            try:
                value = steps.send(value)
            except StopIteration as stop:
                return stop.value

    def redact(self, exc: BaseException) -> str:
        """An error's text without the Redis password."""
        text = f"{type(exc).__name__}: {exc}"
        spec = getattr(self.tier, "_spec", None)
        return spec.redactor.text(text) if spec is not None else text


class MemoryLetters:
    """The dead-letter list of a store whose cache has no Redis (``journal=False`` only):
    kept in this process, lost with it -- said in the docs; health reports it all the same."""

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.lock = threading.Lock()

    def rpush(self, _key: str, value: bytes) -> int:
        with self.lock:
            self.items.append(value)
            return len(self.items)

    def lrange(self, _key: str, start: int, stop: int) -> list[bytes]:
        with self.lock:
            return self.items[start:stop + 1]

    def lrem(self, _key: str, _count: int, value: bytes) -> int:
        with self.lock:
            if value in self.items:
                self.items.remove(value)
                return 1
            return 0


# ---------------------------------------------------------------------- group commit

_LEAD: Final = object()


class _Slot:
    __slots__ = ("cancelled", "done", "error", "fut", "ids", "payloads")

    def __init__(self, payloads: list[bytes]) -> None:
        self.payloads = payloads
        self.ids: list[str] | None = None
        self.error: BaseException | None = None
        self.fut: asyncio.Future[Any] | None = None
        self.done: threading.Event | None = None
        self.cancelled = False


class GroupCommit:
    """Concurrent appenders share one script call; the caller that finds no batch in
    flight sends everything queued, then hands leadership to the next waiter.

    ``on_foreign``: entries the script delivered to us that another appender wrote (moved
    back from the dead-letter list); ``on_orphans``: ids of entries appended for callers
    that were cancelled meanwhile (the store deletes them: those puts never happened).
    """

    def __init__(self, journal: Journal, on_foreign: Callable[[list[tuple[str, Any]]], None],
                 on_orphans: Callable[[list[str]], None]) -> None:
        self.journal = journal
        self.on_foreign, self.on_orphans = on_foreign, on_orphans
        self._lock = threading.Lock()
        self._pending: list[_Slot] = []
        self._leading = False
        self.batches = 0
        self.appended = 0

    def _take(self) -> list[_Slot]:
        with self._lock:
            batch, self._pending = self._pending, []
            return batch

    def _hand_off(self) -> None:
        """After a batch: wake the first live waiter as the next leader, or stop leading."""
        with self._lock:
            while self._pending:
                slot = self._pending[0]
                if slot.fut is not None:
                    if slot.fut.done():  # cancelled while waiting: its entry is not sent
                        self._pending.pop(0)
                        continue
                    slot.fut.get_loop().call_soon_threadsafe(_lead, slot.fut)
                else:
                    assert slot.done is not None
                    slot.ids = None
                    slot.error = None
                    slot.cancelled = True  # "you lead" for a thread
                    slot.done.set()
                return
            self._leading = False

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
                    slot.fut.get_loop().call_soon_threadsafe(_settle, slot.fut, slot)
            elif slot.done is not None:
                slot.done.set()
        if orphans:
            self.on_orphans(orphans)

    @staticmethod
    def _flat(batch: list[_Slot]) -> list[bytes]:
        return [p for slot in batch for p in slot.payloads]

    async def append_async(self, payloads: list[bytes]) -> list[str]:
        slot = _Slot(payloads)
        loop = asyncio.get_running_loop()
        slot.fut = loop.create_future()
        with self._lock:
            self._pending.append(slot)
            lead = not self._leading
            self._leading = True
        if not lead:
            got = await slot.fut
            if got is not _LEAD:
                return got  # type: ignore[no-any-return]
        batch = self._take()
        try:
            reply = await self.journal.run_async(self.journal.append_plan(self._flat(batch)))
        except BaseException as exc:  # every appender gets the error
            shared = exc if isinstance(exc, Exception) else JournalUnavailable(
                "journal append interrupted (the appending task was cancelled)")
            self._deliver(batch, None, shared, slot)
            self._hand_off()
            raise
        self._deliver(batch, reply, None, slot)
        self._hand_off()
        if slot.error is not None:
            raise slot.error
        assert slot.ids is not None
        return slot.ids

    def append_sync(self, payloads: list[bytes]) -> list[str]:
        slot = _Slot(payloads)
        slot.done = threading.Event()
        with self._lock:
            self._pending.append(slot)
            lead = not self._leading
            self._leading = True
        if not lead:
            slot.done.wait()
            if not slot.cancelled:
                if slot.error is not None:
                    raise slot.error
                assert slot.ids is not None
                return slot.ids
            slot.cancelled = False
            slot.done.clear()
        batch = self._take()
        try:
            reply = self.journal.run_sync(self.journal.append_plan(self._flat(batch)))
        except Exception as exc:
            self._deliver(batch, None, exc, slot)
            self._hand_off()
            raise
        self._deliver(batch, reply, None, slot)
        self._hand_off()
        if slot.error is not None:
            raise slot.error
        assert slot.ids is not None
        return slot.ids


def _lead(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(_LEAD)


def _settle(fut: asyncio.Future[Any], slot: _Slot) -> None:
    if fut.done():
        return
    if slot.error is not None:
        fut.set_exception(slot.error)
    else:
        fut.set_result(slot.ids)
