"""L2: Redis (Cluster or single server) behind the typed tier seam, msgpack envelopes.

Why it looks like this:

* **Redis failure is not the caller's failure.** Every network error, timeout, CLUSTERDOWN
  or redirect storm becomes a miss (reads) or a skipped write, counted in ``errors`` /
  ``errors_by_op`` and logged at most once per 10 s per operation. One
  :class:`~tiercache.tiers._breaker.CircuitBreaker` per node skips calls to a dead node
  (the others keep serving) and lets one probe through after ``reset_timeout``. Only
  programming errors reach the caller: ``TypeError`` for an unencodable value
  (:class:`~tiercache.tiers.base.ValueTooLarge` above ``max_value_bytes``), ``ValueError``
  for a key in the reserved space (:mod:`tiercache.tiers.keys`), both before any I/O.
* **Nothing is lost in an outage.** A delete, invalidation or write that could not be
  applied is remembered (:mod:`tiercache.tiers._repairs`) and applied before L2 serves
  reads again; meanwhile the keys it concerns are misses, never the old value.
* **Data, not code.** Values are msgpack envelopes (:mod:`tiercache.codec`), optionally
  HMAC-signed (``signing_key``); a corrupt, foreign, unsigned-while-signing or
  newer-version payload is a miss plus an ``errors_by_op["decode"]`` count.
* **Each operation written once.** An operation is a *flow* (a generator yielding
  :class:`Run` requests); each request carries a *plan*, a generator of redis-py calls on
  one client. redis-py's sync and async clients share command names, so the same plan
  runs on both: the sync runner gets results back at once, the async runner awaits each
  step under a timeout. ``get``/``get_many`` (the hot read path) are hand-written pairs.
* **Timeouts.** The async client is built without redis-py's per-socket timeout (it is
  enforced with ``asyncio.wait_for`` per write: a Task and an extra loop cycle per
  command); each step runs under one ``asyncio.timeout`` of ``connect_timeout +
  socket_timeout`` instead (more for big batches). A cancelled read makes redis-py drop
  that connection, so no reply is ever misread.
* **In-flight gate.** At most ``max_in_flight`` async operations per event loop are on
  the wire; the others wait their turn *before* their timeout starts. Without it a burst
  (1k concurrent misses) puts 1k commands on one loop, whose replies take longer than the
  timeout to process on a busy box: the timeouts cancel reads, redis-py drops those
  connections, reconnecting costs more CPU, and the breaker opens on a healthy Redis. A
  waiter checks the breaker once it has its slot: when Redis dies, the holders time out,
  the breaker opens and the queue drains at once (skips, not timeouts).
* Each async client follows its event loop (one per loop, closed when that loop shuts
  down, e.g. at the end of ``asyncio.run``); the sync client is created on first use.

``clear()`` flushes the whole database on every master (like cashews/aiocache): use
``delete_pattern("<namespace>:*")`` to drop one namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from asyncio import get_running_loop, timeout
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from time import perf_counter
from typing import Any, Final, TypeVar

import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from tiercache._validate import ttl_seconds
from tiercache.codec import Entry, Signer, signer_from
from tiercache.tiers._breaker import CLOSED, OPEN, CircuitBreaker
from tiercache.tiers._redis_conn import (
    AsyncClient,
    SyncClient,
    detect_cluster_async,
    detect_cluster_sync,
    is_async_client,
    make_async_client,
    make_pubsub_client,
    make_sync_client,
    spec_from_client,
    spec_from_url,
)
from tiercache.tiers._redis_direct import node_command, node_pipeline
from tiercache.tiers._redis_ops import LOCAL_LEASE_PREFIX, RedisTierBase
from tiercache.tiers._redis_plans import (
    FAILED,
    Flow,
    Run,
    all_primaries,
    call,
    deleter,
    eval_,
    evals,
    first_key,
    flusher,
    lease_taker,
    mget,
    setter,
    sweeper,
    tag_of_call,
    writer,
)
from tiercache.tiers.base import MISSING, EntryWrite, Missing, RemoteTier
from tiercache.tiers.keys import (
    RELEASE_LUA,
    TAG_POP_LUA,
    check_user_key,
    check_user_keys,
    key_text,
    lease_key,
    namespace_wide,
    tag_add_args,
    tag_key,
)

__all__ = ["CircuitBreaker", "RedisTier", "lease_key", "tag_key"]

T = TypeVar("T")
LARGE: Final = 256 * 1024  # bytes: above this, async decode runs in a thread
LARGE_ITEMS: Final = 20_000  # container length above which async encode runs in a thread


class RedisTier(RedisTierBase):
    """The L2 tier. ``url_or_client``: a ``redis://``/``rediss://``/``unix://`` URL or a
    redis-py client (sync or async, plain or cluster; not closed by :meth:`close`).

    ``ttl`` default seconds (None = no expiry); ``ttl_jitter`` fraction: the stored TTL is
    uniform in ``[ttl*(1-j), ttl]``. ``cluster=None`` auto-detects (``INFO cluster``).
    ``socket_timeout`` bounds a reply, ``connect_timeout`` opening a connection (async:
    each step gets their sum, more for big batches). ``breaker``: the template of the
    per-node breakers (default: open after 5 consecutive failures, probe after 2 s).
    ``max_value_bytes`` (default 16 MiB, None = unlimited): larger encoded values are not
    written (``ValueTooLarge``, counted in ``stats()["skipped_too_large"]``).
    ``max_pending``: outage repairs kept per key/tag before collapsing into namespace-wide
    flushes. ``max_in_flight`` (default ``max_connections``): async operations on the wire at
    once per event loop (see the module docstring). ``signing_key``: bytes/str or a list
    (first signs, all verify: rotation); with it, entries not signed by one of the keys for
    their own Redis key are misses.
    """

    def __init__(
        self,
        url_or_client: str | SyncClient | AsyncClient = "redis://127.0.0.1:6379",
        *,
        ttl: float | None = 600,
        ttl_jitter: float = 0.1,
        socket_timeout: float = 0.25,
        connect_timeout: float = 0.25,
        breaker: CircuitBreaker | None = None,
        max_connections: int = 64,
        max_in_flight: int | None = None,
        cluster: bool | None = None,
        max_value_bytes: int | None = 16 * 1024 * 1024,
        max_pending: int = 10_000,
        signing_key: Signer | bytes | str | Sequence[bytes | str] | None = None,
    ) -> None:
        super().__init__(ttl, ttl_jitter, breaker, max_value_bytes=max_value_bytes,
                         max_pending=max_pending, signer=signer_from(signing_key))
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.max_in_flight = max_in_flight or max_connections
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight!r}")
        self._gates: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}
        self._budget = connect_timeout + socket_timeout  # per async step
        self._user_async: AsyncClient | None = None
        self._user_async_taken = False
        self._user_sync: SyncClient | None = None
        self._aclient: AsyncClient | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._aclients: dict[asyncio.AbstractEventLoop,
                             tuple[AsyncClient, AsyncGenerator[None, None] | None]] = {}
        self._sclient: SyncClient | None = None
        self._sync_lock = threading.Lock()
        if isinstance(url_or_client, str):
            self._spec = spec_from_url(url_or_client)
            self._cluster = cluster
        else:
            self._spec, self._cluster = spec_from_client(url_or_client)
            if is_async_client(url_or_client):
                self._user_async = url_or_client  # type: ignore[assignment]
            else:
                self._user_sync = url_or_client  # type: ignore[assignment]

    @property
    def cluster(self) -> bool | None:
        """True/False once known (None until auto-detection ran)."""
        return self._cluster

    def __repr__(self) -> str:
        return (f"RedisTier({self._spec.redacted!r}, cluster={self._cluster}, "
                f"breaker={self.breaker.state!r})")

    # ------------------------------------------------------------ clients

    async def _client(self) -> AsyncClient:
        """This loop's client. Each event loop gets its own (a client's connections belong
        to the loop that opened them); ours are closed when their loop shuts down."""
        loop = get_running_loop()
        if self._aloop is loop and self._aclient is not None:
            return self._aclient
        held = self._aclients.get(loop)
        if held is not None:
            self._aclient, self._aloop = held[0], loop
            return held[0]
        if self._user_async is not None and not self._user_async_taken:
            self._user_async_taken = True
            client: AsyncClient = self._user_async
            self._aclients[loop] = (client, None)
        else:
            if self._cluster is None:
                self._cluster = await detect_cluster_async(
                    self._spec, self.connect_timeout, self.socket_timeout)
            held = self._aclients.get(loop)
            if held is not None:  # another task connected meanwhile
                self._aclient, self._aloop = held[0], loop
                return held[0]
            client = make_async_client(self._spec, self._cluster, None,
                                       self.connect_timeout, self.max_connections)
            guard = _closed_with_loop(client)
            await guard.asend(None)  # now in loop._asyncgens: shutdown_asyncgens() closes it
            for old in [lp for lp in self._aclients if lp.is_closed()]:
                del self._aclients[old]  # closed with their loop (or beyond saving)
            self._aclients[loop] = (client, guard)
        self._aclient, self._aloop = client, loop
        return client

    def _client_sync(self) -> SyncClient:
        client = self._sclient
        if client is not None:
            return client
        with self._sync_lock:
            if self._sclient is None:
                if self._user_sync is not None:
                    self._sclient = self._user_sync
                else:
                    if self._cluster is None:
                        self._cluster = detect_cluster_sync(
                            self._spec, self.connect_timeout, self.socket_timeout)
                    self._sclient = make_sync_client(
                        self._spec, self._cluster, self.socket_timeout, self.connect_timeout,
                        self.max_connections)
            return self._sclient

    async def _enter(self) -> asyncio.Semaphore:
        """Take this loop's in-flight slot (waiting, untimed, while ``max_in_flight``
        operations are on the wire). Callers check the breaker *after* it: when Redis dies,
        the slots' holders time out, the breaker opens and the queue drains at once."""
        loop = get_running_loop()
        gate = self._gates.get(loop)
        if gate is None:
            for old in [lp for lp in self._gates if lp.is_closed()]:
                del self._gates[old]
            gate = self._gates[loop] = asyncio.Semaphore(self.max_in_flight)
        await gate.acquire()
        return gate

    def _batch_budget(self, n: int) -> float:
        """A batch of ``n`` commands moves more bytes: one more timeout per 1000 commands."""
        return self._budget + self.socket_timeout * (n // 1000)

    # ------------------------------------------------------------ runners

    def _admitted(self, node: Any) -> bool:
        """Breaker admission for one request (``node=None``: a cluster-wide request, refused
        only when every node's breaker is open); a refusal is counted as a skip."""
        if node is None:
            if not (self.breaker.degraded and self.breaker.all_open()):
                return True
        elif node.state is CLOSED or node.allow():
            return True
        self._skip()
        return False

    async def _run(self, req: Run) -> Any:
        """Run one request's plan on this loop's client: breaker, timeouts, counting."""
        node = req.node
        gate = await self._enter()
        if not self._admitted(node):
            gate.release()
            return req.default
        start = perf_counter()
        try:
            client = self._aclient
            if client is None or self._aloop is not get_running_loop():
                async with timeout(self._budget):
                    client = await self._client()
            steps = req.plan(client)
            value: Any = None
            while True:
                try:
                    step = steps.send(value)
                except StopIteration as stop:
                    result = stop.value
                    break
                async with timeout(req.budget):
                    value = await step
        except Exception as exc:
            self._failed(req.op, exc, node, req.key)
            return req.default
        finally:
            gate.release()
        self._histogram(req.op).observe(perf_counter() - start)
        if node is not None:
            self._succeeded(node)
        return result

    def _run_sync(self, req: Run) -> Any:
        """The same on the sync client: each yielded call already holds its reply."""
        node = req.node
        if not self._admitted(node):
            return req.default
        start = perf_counter()
        try:
            steps = req.plan(self._sclient or self._client_sync())
            value: Any = None
            while True:
                try:
                    value = steps.send(value)
                except StopIteration as stop:
                    result = stop.value
                    break
        except Exception as exc:
            self._failed(req.op, exc, node, req.key)
            return req.default
        self._histogram(req.op).observe(perf_counter() - start)
        if node is not None:
            self._succeeded(node)
        return result

    async def _drive(self, flow: Flow[T], repair: bool = True) -> T:
        if repair and self._repairs.active:
            await self.repair()
        value: Any = None
        while True:
            try:
                req = flow.send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            value = await self._run(req)

    def _drive_sync(self, flow: Flow[T], repair: bool = True) -> T:
        if repair and self._repairs.active:
            self.repair_sync()
        value: Any = None
        while True:
            try:
                req = flow.send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            value = self._run_sync(req)

    def _guard(self, key: str) -> CircuitBreaker | None:
        """The breaker to check for ``key``: None on the fast path (all nodes healthy)."""
        return self._node_of(key) if self.breaker.degraded else None

    def _parts(self, keys: list[T], key_of: Callable[[T], str] | None = None
               ) -> list[tuple[CircuitBreaker | None, list[T]]]:
        """A batch as one part (fast path) or split per node (while degraded)."""
        if not self.breaker.degraded:
            return [(None, keys)]
        groups: dict[CircuitBreaker, list[T]] = {}
        for item in keys:
            key: str = item if key_of is None else key_of(item)  # type: ignore[assignment]
            groups.setdefault(self._node_of(key), []).append(item)
        return list(groups.items())

    # ------------------------------------------------------------ hot reads (pairs)
    # Hand-written twins (the only ones). Measured: sync get_entry hand-written 231.6 us vs
    # the generic Run/_drive_sync path 216.7 us (median of 7 x 2000 loopback GETs, load ~10
    # on 2 cores): the difference is within noise, so the runner is not what makes them
    # necessary; they stay because they carry the one-test fast path (no Run allocated
    # while healthy) and, async, the worker-thread decode of large payloads. A candidate
    # for the generic path once a quiet-box bench confirms it.

    async def get_entry(self, key: str) -> Entry | Missing:
        """The stored envelope (value, stored_at, ttl, load_time) or MISSING."""
        node = None
        if self.breaker.degraded or self._repairs.active:
            node = self._guard(key)
            if self._repairs.active and await self._blocked(key, node):
                return MISSING  # checked first: a key that owes a repair takes no probe
        gate = await self._enter()
        if node is None and self.breaker.degraded:  # it may have opened while we waited
            node = self._guard(key)
        if node is not None and node.state is not CLOSED and not node.allow():
            gate.release()
            self._skip()
            return MISSING
        start = perf_counter()
        try:
            async with timeout(self._budget):
                client = self._aclient
                if client is None or self._aloop is not get_running_loop():
                    client = await self._client()
                if self._cluster:
                    raw = await node_command(client, key, "GET", key)  # type: ignore[arg-type]
                else:
                    raw = await client.get(key)
        except Exception as exc:
            self._failed("get", exc, node, key)
            return MISSING
        finally:
            gate.release()
        self._lat_get.observe(perf_counter() - start)
        if node is not None:
            self._succeeded(node)
        if raw is not None and len(raw) > LARGE:
            return await asyncio.to_thread(self._decode, key, raw)
        return self._decode(key, raw)

    def get_entry_sync(self, key: str) -> Entry | Missing:
        node = None
        if self.breaker.degraded or self._repairs.active:
            node = self._guard(key)
            if self._repairs.active and self._blocked_sync(key, node):
                return MISSING  # checked first: a key that owes a repair takes no probe
            if node is not None and node.state is not CLOSED and not node.allow():
                self._skip()
                return MISSING
        start = perf_counter()
        try:
            raw = (self._sclient or self._client_sync()).get(key)
        except Exception as exc:
            self._failed("get", exc, node, key)
            return MISSING
        self._lat_get.observe(perf_counter() - start)
        if node is not None:
            self._succeeded(node)
        return self._decode(key, raw)

    async def get(self, key: str) -> Any:
        entry = await self.get_entry(key)
        return MISSING if entry is MISSING else entry.value

    def get_sync(self, key: str) -> Any:
        entry = self.get_entry_sync(key)
        return MISSING if entry is MISSING else entry.value

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Only the hits. Cluster: one GET pipeline per node (:mod:`._redis_direct`)."""
        return await self._get_many(list(keys), False)

    async def get_many_entries(self, keys: Iterable[str]) -> dict[str, Entry]:
        """:meth:`get_many` returning the envelopes (value, stored_at, ttl, load_time)."""
        return await self._get_many(list(keys), True)

    def get_many_sync(self, keys: Iterable[str]) -> dict[str, Any]:
        return self._get_many_sync(list(keys), False)

    def get_many_entries_sync(self, keys: Iterable[str]) -> dict[str, Entry]:
        return self._get_many_sync(list(keys), True)

    async def _get_many(self, wanted: list[str], entries: bool) -> dict[str, Any]:
        if not wanted:
            return {}
        if self.breaker.degraded or self._repairs.active:
            if self._repairs.active:
                await self.repair()
            return self._decode_parts(await self._drive(self._fetch(wanted), False), entries)
        gate = await self._enter()
        if self.breaker.degraded:  # it opened while we waited: the per-node slow path
            gate.release()
            return self._decode_parts(await self._drive(self._fetch(wanted), False), entries)
        start = perf_counter()
        try:
            async with timeout(self._batch_budget(len(wanted))):
                client = self._aclient
                if client is None or self._aloop is not get_running_loop():
                    client = await self._client()
                if self._cluster:
                    raws = await node_pipeline(
                        client, [("GET", k) for k in wanted], wanted)  # type: ignore[arg-type]
                else:
                    raws = await client.mget(wanted)
        except Exception as exc:
            self._failed("get_many", exc)
            return {}
        finally:
            gate.release()
        self._lat_get_many.observe(perf_counter() - start)
        if sum(len(r) for r in raws if r is not None) > LARGE:
            return await asyncio.to_thread(self._decode_many, wanted, raws, entries)
        return self._decode_many(wanted, raws, entries)

    def _get_many_sync(self, wanted: list[str], entries: bool) -> dict[str, Any]:
        if not wanted:
            return {}
        if self.breaker.degraded or self._repairs.active:
            if self._repairs.active:
                self.repair_sync()
            return self._decode_parts(self._drive_sync(self._fetch(wanted), False), entries)
        start = perf_counter()
        try:
            client = self._sclient or self._client_sync()
            if isinstance(client, redis.cluster.RedisCluster):
                raws = client.mget_nonatomic(wanted)
            else:
                raws = client.mget(wanted)
        except Exception as exc:
            self._failed("get_many", exc)
            return {}
        self._lat_get_many.observe(perf_counter() - start)
        return self._decode_many(wanted, raws, entries)

    def _fetch(self, wanted: list[str]) -> Flow[list[tuple[list[str], list[Any]]]]:
        """Slow path of get_many: per node, minus the keys with a pending repair."""
        if self._repairs.active:
            blocked = [k for k in wanted if self._repairs.blocks(k)]
            if blocked:
                for _ in blocked:
                    self._skip_pending()
                wanted = [k for k in wanted if not self._repairs.blocks(k)]
        out = []
        for node, part in self._parts(wanted):
            raws = yield Run("get_many", mget(part, bool(self._cluster)), FAILED, node,
                             self._batch_budget(len(part)))
            if raws is not FAILED:
                out.append((part, raws))
        return out

    def _decode_parts(self, parts: list[tuple[list[str], list[Any]]],
                      entries: bool) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for keys, raws in parts:
            found.update(self._decode_many(keys, raws, entries))
        return found

    async def _blocked(self, key: str, node: CircuitBreaker | None) -> bool:
        await self.repair()
        if self._repairs.blocks(key):
            self._skip_pending(node)
            return True
        return False

    def _blocked_sync(self, key: str, node: CircuitBreaker | None) -> bool:
        self.repair_sync()
        if self._repairs.blocks(key):
            self._skip_pending(node)
            return True
        return False

    def _skip_pending(self, node: CircuitBreaker | None = None) -> None:
        """A read skipped because its key still owes a repair (counted like a skip; as
        ``breaker_open`` when the key's node is down anyway)."""
        if node is not None and node.state is OPEN:
            self._skip()
            return
        self.errors += 1
        self.errors_by_op.inc("repair_pending")

    # ------------------------------------------------------------ writes

    async def set(self, key: str, value: Any, ttl: float | None = None, *,
                  load_time: float = 0.0, stale: float = 0.0) -> None:
        """Store ``value`` (``TypeError`` if unencodable, raised before any I/O).

        ``stale``: seconds Redis keeps the entry past its TTL (the envelope keeps the TTL),
        so stale-while-revalidate / stale-if-error can still read it.
        """
        check_user_key(key)
        ttl = ttl_seconds(ttl)
        if isinstance(value, list | dict | tuple | set | frozenset) and len(value) > LARGE_ITEMS:
            payload, px = await asyncio.to_thread(self._pack, key, value, ttl, load_time, stale)
        else:
            payload, px = self._pack(key, value, ttl, load_time, stale)
        await self._drive(self._set(key, payload, px))

    def set_sync(self, key: str, value: Any, ttl: float | None = None, *,
                 load_time: float = 0.0, stale: float = 0.0) -> None:
        check_user_key(key)
        ttl = ttl_seconds(ttl)
        payload, px = self._pack(key, value, ttl, load_time, stale)
        self._drive_sync(self._set(key, payload, px))

    def _set(self, key: str, payload: bytes, px: int | None) -> Flow[None]:
        if px == 0:
            yield from self._delete_keys("delete", [key])
            return
        budget = self._budget + self.socket_timeout * (len(payload) >> 20)  # per MiB
        done = yield Run("set", setter(key, payload, px), FAILED, self._guard(key), budget,
                         key)
        if done is FAILED:
            self._defer_keys("set", [key])  # the old L2 value must never be served again
            return
        self.sets += 1
        if self._repairs.active:
            self._repairs.discard_key(key)

    async def set_many(self, mapping: Mapping[str, Any], ttl: float | None = None) -> None:
        """Every value is encoded first (``TypeError`` -> nothing written), then pipelined."""
        check_user_keys(mapping)
        await self._drive(self._set_many(self._pack_many(mapping, ttl_seconds(ttl))))

    async def set_many_entries(self, items: Sequence[EntryWrite]
                               ) -> list[BaseException | None]:
        """Many :meth:`set` calls as one pipeline, each ``(key, value, ttl, load_time,
        stale)``. An item that cannot be encoded gets its error (``TypeError``,
        :class:`ValueTooLarge`) in the returned list and is not written; the others are.
        The core's coalesced L2 writes (:mod:`tiercache._batching`) come through here."""
        errors: list[BaseException | None] = []
        batch: list[tuple[str, bytes, int | None]] = []
        for key, value, ttl, load_time, stale in items:
            try:
                check_user_key(key)
                seconds = ttl_seconds(ttl)
                if (isinstance(value, list | dict | tuple | set | frozenset)
                        and len(value) > LARGE_ITEMS):
                    payload, px = await asyncio.to_thread(self._pack, key, value, seconds,
                                                          load_time, stale)
                else:
                    payload, px = self._pack(key, value, seconds, load_time, stale)
            except (TypeError, ValueError) as exc:
                errors.append(exc)
                continue
            errors.append(None)
            batch.append((key, payload, px))
        if batch:
            await self._drive(self._set_many(batch))
        return errors

    def set_many_sync(self, mapping: Mapping[str, Any], ttl: float | None = None) -> None:
        check_user_keys(mapping)
        self._drive_sync(self._set_many(self._pack_many(mapping, ttl_seconds(ttl))))

    def _set_many(self, batch: list[tuple[str, bytes, int | None]]) -> Flow[None]:
        for node, part in self._parts(batch, first_key):
            done = yield Run("set_many", writer(part), FAILED, node,
                             self._batch_budget(len(part)))
            if done is FAILED:
                self._defer_keys("set_many", [k for k, _, _ in part])
            else:
                self.sets += sum(1 for _, _, px in part if px != 0)

    # ------------------------------------------------------------ deletes

    async def delete(self, key: str) -> bool:
        check_user_key(key)
        return bool(await self._drive(self._delete_keys("delete", [key])))

    def delete_sync(self, key: str) -> bool:
        check_user_key(key)
        return bool(self._drive_sync(self._delete_keys("delete", [key])))

    async def delete_many(self, keys: Iterable[str]) -> int:
        """Number of keys that existed. Cluster: DEL per slot, pipelined per node."""
        wanted = list(dict.fromkeys(keys))
        check_user_keys(wanted)
        return await self._drive(self._delete_keys("delete_many", wanted)) if wanted else 0

    def delete_many_sync(self, keys: Iterable[str]) -> int:
        wanted = list(dict.fromkeys(keys))
        check_user_keys(wanted)
        return self._drive_sync(self._delete_keys("delete_many", wanted)) if wanted else 0

    def _delete_keys(self, op: str, keys: list[Any], defer: bool = True,
                     failed: list[Any] | None = None) -> Flow[int]:
        removed = 0
        if not keys:
            return 0
        for node, part in self._parts(keys, key_text):
            key = key_text(part[0]) if len(part) == 1 else None
            n = yield Run(op, deleter(part), FAILED, node, self._batch_budget(len(part)), key)
            if n is FAILED:
                if defer:
                    self._defer_keys(op, [key_text(k) for k in part])
                if failed is not None:
                    failed.extend(part)
            else:
                removed += int(n)
        self.deletes += removed
        return removed

    async def delete_pattern(self, pattern: str) -> int:
        """SCAN MATCH ``pattern`` on every master and UNLINK the matches; returns the count.
        Tag sets and leases are only swept by a namespace-wide pattern (``"{ns}:*"``)."""
        return await self._drive(self._delete_pattern(pattern)) or 0

    def delete_pattern_sync(self, pattern: str) -> int:
        return self._drive_sync(self._delete_pattern(pattern)) or 0

    def _delete_pattern(self, pattern: str, defer: bool = True) -> Flow[int | None]:
        removed = yield Run("delete_pattern", sweeper(pattern, namespace_wide(pattern)),
                            FAILED, self._wide(), self._batch_budget(1000))
        if removed is FAILED:
            if defer:
                self._defer_pattern(pattern)
            return None
        self.deletes += removed
        return int(removed)

    # ------------------------------------------------------------ tags

    async def add_tags(self, key: str, tags: Iterable[str], ttl: float | None = None) -> None:
        """Index ``key`` under each tag of its namespace (ZSET scored by expiry)."""
        check_user_key(key)
        await self._drive(self._add_tags(key, tags, ttl))

    def add_tags_sync(self, key: str, tags: Iterable[str], ttl: float | None = None) -> None:
        check_user_key(key)
        self._drive_sync(self._add_tags(key, tags, ttl))

    def _add_tags(self, key: str, tags: Iterable[str], ttl: float | None) -> Flow[None]:
        calls = tag_add_args(key, tags, ttl if ttl is not None else self.ttl)
        for node, part in self._parts(calls, tag_of_call):
            done = yield Run("add_tags", evals(part), FAILED, node,
                             self._batch_budget(len(part)))
            if done is FAILED:  # an entry its tags do not index must not outlive them
                self._defer_keys("add_tags", [key])
                return

    async def invalidate_tags(self, tags: Iterable[str], *,
                              namespace: str | None = None) -> int:
        """Delete every live key indexed under ``tags`` in ``namespace`` (None: keys without
        a namespace) and the tag sets; returns keys deleted."""
        return await self._drive(
            self._invalidate_tags(list(dict.fromkeys(tags)), namespace)) or 0

    def invalidate_tags_sync(self, tags: Iterable[str], *,
                             namespace: str | None = None) -> int:
        return self._drive_sync(
            self._invalidate_tags(list(dict.fromkeys(tags)), namespace)) or 0

    def _invalidate_tags(self, tags: list[str], namespace: str | None,
                         defer: bool = True) -> Flow[int | None]:
        ns = namespace or ""
        if not tags:
            return 0
        members: list[Any] = []
        ok = True
        for node, part in self._parts(tags, lambda t: tag_key(t, ns)):
            calls = [(TAG_POP_LUA, 1, tag_key(tag, ns)) for tag in part]
            replies = yield Run("invalidate_tags", evals(calls, errors=True), FAILED, node,
                                self._batch_budget(len(part)))
            if replies is FAILED:
                ok = False
                if defer:
                    self._defer_tags(ns, part)
            else:
                members.extend(self._tag_members(part, replies))
        # Popped members are known keys: a failed delete of them is always deferred (the
        # pop already dropped the tag set, so retrying the tag could not find them again).
        removed = yield from self._delete_keys("invalidate_tags", list(dict.fromkeys(members)))
        return removed if ok or defer else None

    # ------------------------------------------------------------ repairs

    def _wide(self) -> CircuitBreaker | None:
        """The breaker of a cluster-wide call: the one node of a single Redis, else None
        (skipped only while every node's breaker is open)."""
        return None if self._cluster else self.breaker.get(self._seed_name())

    async def repair(self) -> None:
        """Apply pending outage repairs now (called before reads; cheap when none)."""
        if self.breaker.degraded and self.breaker.all_open():
            return
        snap = self._repairs.begin()
        if snap is not None:
            try:
                await self._drive(self._repair(*snap), False)
            finally:
                self._repairs.end()

    def repair_sync(self) -> None:
        if self.breaker.degraded and self.breaker.all_open():
            return
        snap = self._repairs.begin()
        if snap is not None:
            try:
                self._drive_sync(self._repair(*snap), False)
            finally:
                self._repairs.end()

    def _repair(self, patterns: dict[str, int], tags: dict[tuple[str, str], int],
                keys: dict[str, int]) -> Flow[None]:
        """Patterns first (they may cover the rest), then tags, then keys."""
        for pattern, seq in patterns.items():
            if (yield from self._delete_pattern(pattern, False)) is not None:
                self._repairs.done_patterns({pattern: seq})
        by_ns: dict[str, list[str]] = {}
        for ns, tag in tags:
            by_ns.setdefault(ns, []).append(tag)
        for ns, names in by_ns.items():
            if (yield from self._invalidate_tags(names, ns, False)) is not None:
                self._repairs.done_tags({(ns, t): tags[(ns, t)] for t in names})
        if keys:
            failed: list[Any] = []
            yield from self._delete_keys("repair", list(keys), False, failed)
            lost = set(failed)
            self._repairs.done_keys({k: s for k, s in keys.items() if k not in lost})
        if not self._repairs.active:
            self._warn("repair", "redis tier %s: pending repairs applied (%d so far)",
                       self._spec.redacted, self._repairs.applied)

    def _defer_keys(self, op: str, keys: list[str]) -> None:
        self._repairs.add_keys(keys)
        self._warn_deferred(op, len(keys))

    def _defer_tags(self, namespace: str, tags: list[str]) -> None:
        self._repairs.add_tags(namespace, tags)
        self._warn_deferred("invalidate_tags", len(tags))

    def _defer_pattern(self, pattern: str) -> None:
        self._repairs.add_pattern(pattern)
        self._warn_deferred("delete_pattern", 1)

    def _warn_deferred(self, op: str, n: int) -> None:
        self._warn("deferred", "redis tier %s: %s could not reach Redis; %d repair(s) "
                   "deferred until it is back (%d pending)", self._spec.redacted, op, n,
                   len(self._repairs))

    # ------------------------------------------------------------ leases

    async def acquire_lease(self, key: str, ttl_ms: int) -> str | None:
        """SET NX PX on the lease key: a token when acquired, None when another holds it.

        When Redis is unavailable there is nobody to coordinate with: a ``"local:"`` token is
        returned so the caller loads at once instead of waiting for a value that cannot come.
        """
        return await self._drive(self._acquire(key, ttl_ms), False)

    def acquire_lease_sync(self, key: str, ttl_ms: int) -> str | None:
        return self._drive_sync(self._acquire(key, ttl_ms), False)

    def _acquire(self, key: str, ttl_ms: int) -> Flow[str | None]:
        token = secrets.token_hex(16)
        got = yield Run("acquire_lease", lease_taker(lease_key(key), token, ttl_ms),
                        LOCAL_LEASE_PREFIX + token, self._guard(key), self._budget, key)
        return got  # type: ignore[no-any-return]

    async def release_lease(self, key: str, token: str) -> bool:
        """Compare-and-delete: only the holder's token releases the lease."""
        return await self._drive(self._release(key, token), False)

    def release_lease_sync(self, key: str, token: str) -> bool:
        return self._drive_sync(self._release(key, token), False)

    def _release(self, key: str, token: str) -> Flow[bool]:
        if token.startswith(LOCAL_LEASE_PREFIX):
            return True
        n = yield Run("release_lease", eval_(RELEASE_LUA, 1, lease_key(key), token), 0,
                      self._guard(key), self._budget, key)
        return bool(n)

    # ------------------------------------------------------------ bus, health, clear

    async def publish(self, channel: str, message: bytes) -> None:
        """Classic PUBLISH: on a cluster it reaches subscribers on every node."""
        await self._drive(self._publish(channel, message))

    def publish_sync(self, channel: str, message: bytes) -> None:
        self._drive_sync(self._publish(channel, message))

    def _publish(self, channel: str, message: bytes) -> Flow[None]:
        yield Run("publish", call("publish", channel, message), 0, self._wide(), self._budget)

    def pubsub_client(self) -> redis.asyncio.Redis:
        """A fresh async client on one node for SUBSCRIBE (the caller closes it).

        Successive calls rotate over the known nodes, so a subscriber that reconnects after
        its node died tries another one (all nodes are known once the tier has connected).
        """
        return make_pubsub_client(self._spec, self._known_nodes(), self.connect_timeout)

    def _known_nodes(self) -> list[tuple[str, int]]:
        for client in (self._aclient, self._sclient):
            if isinstance(client, redis.asyncio.cluster.RedisCluster | redis.cluster.RedisCluster):
                nodes: list[Any] = client.get_nodes()
                if nodes:
                    return [(str(n.host), int(n.port)) for n in nodes]
        return []

    async def ping(self) -> float:
        """Round trip in seconds (every master of a cluster); raises when unreachable."""
        try:
            async with timeout(self._budget):
                client = await self._client()
                start = perf_counter()
                await client.ping(**all_primaries(client))
                return perf_counter() - start
        except Exception as exc:
            self._spec.redactor.exception(exc)
            raise

    def ping_sync(self) -> float:
        try:
            client = self._client_sync()
            start = perf_counter()
            client.ping(**all_primaries(client))
            return perf_counter() - start
        except Exception as exc:
            self._spec.redactor.exception(exc)
            raise

    async def clear(self) -> None:
        """FLUSHDB ASYNC on every master: drops *everything* in that database, not just ours."""
        await self._drive(self._clear(), False)

    def clear_sync(self) -> None:
        self._drive_sync(self._clear(), False)

    def _clear(self) -> Flow[None]:
        done = yield Run("clear", flusher, FAILED, self._wide(), self._budget)
        if done is FAILED:
            self._defer_pattern("*")

    async def close(self) -> None:
        """Close the clients this tier created (user-provided clients stay open)."""
        clients, self._aclients = self._aclients, {}
        self._aclient = self._aloop = None
        self._user_async_taken = False  # the user's client (never closed here) may serve again
        here = get_running_loop()
        for loop, (_, guard) in clients.items():
            if guard is not None and loop is here:
                with contextlib.suppress(Exception):
                    await guard.aclose()
        # Other loops' guards: dropping ``clients`` (their last reference) makes asyncio's
        # async-generator finalizer schedule their aclose() on their own (live) loop.
        self.close_sync()

    def close_sync(self) -> None:
        with self._sync_lock:
            client, self._sclient = self._sclient, None
        if client is not None and client is not self._user_sync:
            client.close()


async def _closed_with_loop(client: AsyncClient) -> AsyncGenerator[None, None]:
    """Parked at its ``yield`` until the loop shuts down (``asyncio.run`` and
    ``Runner.close`` call ``shutdown_asyncgens()``) or it is closed: then closes ``client``
    on its own loop, where its connections live."""
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()


def _conforms(tier: RedisTier) -> RemoteTier:
    """Static proof (checked by mypy) that RedisTier satisfies the core's tier seam."""
    return tier

