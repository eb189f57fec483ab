"""A store's durable journal (a Redis Stream) and its dead-letter list, on the RedisTier's client.

Why a stream with a consumer group: an entry appended by a ``put`` is at once *delivered*
to the appending process's consumer (one Lua script: ``XADD`` then ``XREADGROUP``), so it
sits in that consumer's pending list until the writer succeeded and the flusher
acknowledges it (``XACK`` + ``XDEL``). A process that dies leaves its entries pending
under its consumer; once its heartbeat key expired, another process claims them
(``XPENDING`` + ``XCLAIM``, per dead consumer) and writes them. Entries nobody was
delivered (moved back from the dead-letter list by ``tiercache store dead-letters
--replay``) are picked up by any flusher with ``XREADGROUP >``.

Group commit (:mod:`tiercache._groupcommit`): concurrent appenders share one script call,
so the journal costs one round trip per batch of callers, not per caller.

Every byte read back is attacker-controlled: entries are size-bounded, decoded by
:func:`tiercache.codec.decode` (bounded depth) and, when the tier signs, HMAC-checked
against the stream's key before parsing; a bad entry is reported, never raised.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Generator, Sequence
from typing import Any, Final

from redis.asyncio.cluster import RedisCluster as AsyncCluster
from redis.cluster import RedisCluster as SyncCluster
from redis.crc import key_slot
from redis.exceptions import (
    NoScriptError,
    RedisClusterException,
    RedisError,
)

from tiercache import codec
from tiercache.codec import CodecError, Signer
from tiercache.tiers._redis_direct import node_command_at, through_dispatch
from tiercache.tiers.keys import store_key

__all__ = ["BadEntry", "DeadLetter", "Journal", "JournalEntry", "JournalUnavailable",
           "MemoryLetters"]

GROUP: Final = "flushers"
MAX_CLAIM: Final = 500  # entries claimed or read per call
ACK_CHUNK: Final = 1000
ENVELOPE: Final = 4096  # bytes a journal entry may add around its value
JOURNAL_TIMEOUT: Final = 5.0  # seconds a journal call may take at least
MAX_LETTER: Final = 512 * 1024 * 1024  # bytes a dead letter may have (a batch of entries)

# Create the group on first use (a flushed Redis too), append, deliver to ourselves.
# Returns {ids, {foreign id, payload, ...}}: foreign = undelivered entries of others.
APPEND_LUA: Final = """
local ids, mine = {}, {}
for i = 3, #ARGV do
  local id = redis.call('XADD', KEYS[1], '*', 'd', ARGV[i])
  ids[#ids + 1] = id
  mine[id] = true
end
local read = {'XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1000, 'STREAMS', KEYS[1], '>'}
local foreign, last, seen = {}, ids[#ids], false
repeat  -- ours are the newest entries: read until they are all delivered to us
  local got = redis.pcall(unpack(read))
  if type(got) == 'table' and got.err then  -- first use (or a flushed Redis): no group yet
    redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0')
    got = redis.call(unpack(read))
  end
  if not got then break end
  for _, e in ipairs(got[1][2]) do
    if e[1] == last then seen = true end
    if not mine[e[1]] then
      foreign[#foreign + 1] = e[1]
      foreign[#foreign + 1] = (e[2] and e[2][2]) or ''
    end
  end
until seen
return {ids, foreign}
"""

APPEND_SHA: Final = hashlib.sha1(APPEND_LUA.encode()).hexdigest()

# Acknowledge written entries and drop them from the stream, in one call.
ACK_LUA: Final = """
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
return redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
"""

ACK_SHA: Final = hashlib.sha1(ACK_LUA.encode()).hexdigest()

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
        self.slot = key_slot(self.stream.encode())
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
        fields = self._open(raw, self.stream)
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
        if not isinstance(raw, bytes) or len(raw) > MAX_LETTER:
            raise BadEntry("dead letter not bytes or too large")
        letter = self._open(raw, self.dead)
        entries = letter.get("entries") if type(letter) is dict else None
        if type(entries) is not list or not all(type(e) is bytes for e in entries):
            raise BadEntry("malformed dead letter")
        return {"error": _text(letter.get("error", "")), "at": letter.get("at"),
                "attempts": letter.get("attempts"), "entries": entries, "raw": raw}

    def _open(self, raw: bytes, key: str) -> Any:
        """Bytes read back from ``key``, decoded (bounded): when we sign, the envelope is
        checked against ``key`` before anything parses it, and an unsigned blob is refused."""
        try:
            body: Any = raw
            if raw[:3] == b"\xc1TS" or self.signer is not None:
                body = codec.unseal(raw, self.signer, key)
            return codec.decode(body)
        except CodecError as exc:
            raise BadEntry(str(exc)) from None

    # ------------------------------------------------------------------ plans
    # Generators of redis-py calls: the same plan runs on the sync and the async client
    # (see run_sync / run_async), like the RedisTier's own plans.

    def append_plan(self, payloads: list[bytes]) -> Any:
        assert self.consumer is not None
        def plan(client: Any) -> Generator[Any, Any, tuple[list[str], list[tuple[str, bytes]]]]:
            reply = yield from self._script(client, APPEND_LUA, APPEND_SHA,
                                            GROUP, self.consumer, *payloads)
            ids = [_text(i) for i in reply[0]]
            flat = reply[1]
            foreign = [(_text(flat[i]), flat[i + 1]) for i in range(0, len(flat) - 1, 2)]
            return ids, foreign
        return plan

    def ack_plan(self, ids: list[str]) -> Any:
        def plan(client: Any) -> Generator[Any, Any, None]:
            for start in range(0, len(ids), ACK_CHUNK):
                yield from self._script(client, ACK_LUA, ACK_SHA, GROUP,
                                        *ids[start:start + ACK_CHUNK])
        return plan

    def _script(self, client: Any, text: str, sha: str, *args: Any) -> Generator[Any, Any, Any]:
        """A script on the stream (its one key); EVALSHA sends the text once per server."""
        try:
            return (yield self.command(client, "EVALSHA", sha, 1, self.stream, *args))
        except NoScriptError:
            return (yield self.command(client, "EVAL", text, 1, self.stream, *args))

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

    def gauges_plan(self) -> Any:
        """(pending entries of the group, dead letters), for a fresh look without upkeep."""
        def plan(client: Any) -> Generator[Any, Any, tuple[int, int]]:
            pipe = client.pipeline(transaction=False)
            pipe.xpending(self.stream, GROUP)
            pipe.llen(self.dead)
            pending, dead = yield pipe.execute(raise_on_error=False)
            count = int(pending.get("pending") or 0) if isinstance(pending, dict) else 0
            return count, dead if isinstance(dead, int) else 0
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

    def command(self, client: Any, *args: Any) -> Any:
        """One command on the stream's slot (the awaitable, on an async client).

        On a cluster client it goes straight to the node that owns the slot: redis-py's
        cluster dispatch (command policies, key parsing, metrics) costs about as much client
        work as the round trip itself (async EVALSHA: ~50-80 us; sync XADD: 224 -> 149 us),
        and every journal call targets one known slot. What that dispatch is for -- a
        MOVED/ASK, a failover, a dead connection -- sends the command through it after all
        (it refreshes the slot map and retries, as it always did).
        """
        kind = type(client)
        if kind is AsyncCluster:
            return node_command_at(client, self.slot, *args)
        if kind is SyncCluster:
            nodes = client.nodes_manager.slots_cache.get(self.slot)
            node = nodes[0].redis_connection if nodes else None
            if node is not None:
                try:
                    return node.execute_command(*args)
                except (RedisError, RedisClusterException, OSError) as exc:
                    through_dispatch(exc)
        return client.execute_command(*args)

    async def run_async(self, plan: Any) -> Any:
        if self.memory is not None:
            return self.run_sync(plan)
        async with asyncio.timeout(self.timeout):
            client = await self.tier._client()
            steps = plan(client)
            value: Any = None
            error: Exception | None = None
            while True:
                try:  # a failed step is thrown into the plan (e.g. NOSCRIPT -> EVAL)
                    step = steps.throw(error) if error is not None else steps.send(value)
                except StopIteration as stop:
                    return stop.value
                error = None
                try:
                    value = await step
                except Exception as exc:
                    value, error = None, exc

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
