"""L2: Redis (Cluster or single server) behind the small Tier protocol, msgpack envelopes.

Why it looks like this:

* **Redis failure is not the caller's failure.** Every network error, timeout, CLUSTERDOWN
  or redirect storm becomes a miss (reads) or a skipped write, counted in ``errors`` /
  ``errors_by_op`` and logged at most once per 10 s per operation. A
  :class:`~tiercache.tiers._breaker.CircuitBreaker` skips calls while Redis is down and
  lets one probe through after ``reset_timeout``. Only programming errors reach the
  caller: an unencodable value raises ``TypeError`` before anything is written.
* **Data, not code.** Values are msgpack envelopes (:mod:`tiercache.codec`); a corrupt,
  foreign or newer-version payload is a miss plus an ``errors_by_op["decode"]`` count.
* **Lean hot path.** ``get`` is the raw redis-py ``GET`` plus one breaker attribute test,
  two clock reads, a bisect into the latency histogram and the envelope decode.
* **Sync and async.** ``get``/``set``/... are coroutines; ``get_sync``/``set_sync``/... are
  blocking twins for sync ``@cached`` functions. Each client is created on first use; the
  async client follows the running event loop (a new loop gets a new client).
* Batches (``get_many``, ``set_many``, ``delete_many``, tags) are grouped per slot/node
  and pipelined; ``delete_pattern`` SCANs every master and UNLINKs what matched.

Key layout of tag sets and leases: see :mod:`tiercache.tiers._redis_ops`. ``clear()``
flushes the whole database on every master (like cashews/aiocache): use
``delete_pattern("<namespace>:*")`` to drop one namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from asyncio import get_running_loop
from collections.abc import Awaitable, Callable, Iterable, Mapping
from time import perf_counter
from typing import Any, TypeVar

import redis.asyncio.cluster

from tiercache.codec import Entry
from tiercache.tiers._breaker import CLOSED, CircuitBreaker
from tiercache.tiers._redis_conn import (
    AsyncClient,
    SyncClient,
    async_primaries,
    detect_cluster_async,
    is_async_client,
    make_async_client,
    make_pubsub_client,
    spec_from_client,
    spec_from_url,
)
from tiercache.tiers._redis_ops import (
    LOCAL_LEASE_PREFIX,
    RELEASE_LUA,
    TAG_POP_LUA,
    decode_members,
    lease_key,
    scan_cursor,
    tag_add_args,
    tag_key,
)
from tiercache.tiers._redis_sync import SyncTwins
from tiercache.tiers.base import MISSING, Missing

__all__ = ["CircuitBreaker", "RedisTier", "lease_key", "tag_key"]

T = TypeVar("T")
_ALL_PRIMARIES = redis.asyncio.cluster.RedisCluster.PRIMARIES


class RedisTier(SyncTwins):
    """The L2 tier. ``url_or_client``: a ``redis://``/``rediss://``/``unix://`` URL or a
    redis-py client (sync or async, plain or cluster; not closed by :meth:`close`).

    ``ttl`` default seconds (None = no expiry); ``ttl_jitter`` fraction: the stored TTL is
    uniform in ``[ttl*(1-j), ttl]``. ``cluster=None`` auto-detects (``INFO cluster``).
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
        cluster: bool | None = None,
    ) -> None:
        super().__init__(ttl, ttl_jitter, breaker)
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self._user_async: AsyncClient | None = None
        self._aclient: AsyncClient | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None
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

    # ------------------------------------------------------------ async client

    async def _client(self) -> AsyncClient:
        loop = get_running_loop()
        if self._aloop is loop and self._aclient is not None:
            return self._aclient
        if self._user_async is not None and self._aloop is None:
            client: AsyncClient = self._user_async
        else:
            if self._cluster is None:
                self._cluster = await detect_cluster_async(
                    self._spec, self.connect_timeout, self.socket_timeout)
            if self._aloop is loop and self._aclient is not None:
                return self._aclient  # another task connected meanwhile
            client = make_async_client(self._spec, self._cluster, self.socket_timeout,
                                       self.connect_timeout, self.max_connections)
        self._aclient, self._aloop = client, loop
        return client

    def _allowed(self) -> bool:
        breaker = self.breaker
        if breaker.state is CLOSED or breaker.allow():
            return True
        self._skip()
        return False

    async def _call(self, op: str, fn: Callable[[AsyncClient], Awaitable[T]], default: T) -> T:
        """Run one Redis operation with breaker, timing, counting; ``default`` on failure."""
        if not self._allowed():
            return default
        start = perf_counter()
        try:
            result = await fn(await self._client())
        except Exception as exc:
            self._failed(op, exc)
            return default
        self._histogram(op).observe(perf_counter() - start)
        self.breaker.record_success()
        return result

    # ------------------------------------------------------------ reads

    async def get_entry(self, key: str) -> Entry | Missing:
        """The stored envelope (value, stored_at, ttl, load_time) or MISSING."""
        breaker = self.breaker
        if breaker.state is not CLOSED and not breaker.allow():
            self._skip()
            return MISSING
        start = perf_counter()
        try:
            client = self._aclient
            if client is None or self._aloop is not get_running_loop():
                client = await self._client()
            raw = await client.get(key)
        except Exception as exc:
            self._failed("get", exc)
            return MISSING
        self._lat_get.observe(perf_counter() - start)
        breaker.record_success()
        return self._decode(key, raw)

    async def get(self, key: str) -> Any:
        entry = await self.get_entry(key)
        return MISSING if entry is MISSING else entry.value

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Only the hits. Cluster: MGET per slot, pipelined per node (``mget_nonatomic``)."""
        wanted = list(keys)
        if not wanted:
            return {}
        if not self._allowed():
            return {}
        start = perf_counter()
        try:
            client = self._aclient
            if client is None or self._aloop is not get_running_loop():
                client = await self._client()
            if self._cluster:
                raws = await client.mget_nonatomic(wanted)  # type: ignore[union-attr]
            else:
                raws = await client.mget(wanted)
        except Exception as exc:
            self._failed("get_many", exc)
            return {}
        self._lat_get_many.observe(perf_counter() - start)
        self.breaker.record_success()
        return self._decode_many(wanted, raws)

    # ------------------------------------------------------------ writes

    async def set(self, key: str, value: Any, ttl: float | None = None, *,
                  load_time: float = 0.0) -> None:
        """Store ``value`` (``TypeError`` if unencodable, raised before any I/O)."""
        payload, px = self._pack(value, ttl, load_time)
        if px == 0:
            await self.delete(key)
            return
        if not self._allowed():
            return
        start = perf_counter()
        try:
            client = self._aclient
            if client is None or self._aloop is not get_running_loop():
                client = await self._client()
            await client.set(key, payload, px=px)
        except Exception as exc:
            self._failed("set", exc)
            return
        self._lat_set.observe(perf_counter() - start)
        self.breaker.record_success()
        self.sets += 1

    async def set_many(self, mapping: Mapping[str, Any], ttl: float | None = None) -> None:
        """Every value is encoded first (``TypeError`` -> nothing written), then pipelined."""
        batch = self._pack_many(mapping, ttl)
        if not batch:
            return

        async def write(client: AsyncClient) -> bool:
            pipe = client.pipeline(transaction=False)
            for key, payload, px in batch:
                if px == 0:
                    pipe.delete(key)
                else:
                    pipe.set(key, payload, px=px)
            await pipe.execute()
            return True

        if await self._call("set_many", write, False):
            self.sets += sum(1 for _, _, px in batch if px != 0)

    async def delete(self, key: str) -> bool:
        removed = await self._call("delete", lambda c: c.delete(key), 0)
        self.deletes += removed
        return bool(removed)

    async def delete_many(self, keys: Iterable[str]) -> int:
        """Number of keys that existed. Cluster: DEL per slot, pipelined per node."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return 0
        removed = await self._call("delete_many", lambda c: c.delete(*wanted), 0)
        self.deletes += removed
        return removed

    async def delete_pattern(self, pattern: str) -> int:
        """SCAN MATCH ``pattern`` on every master and UNLINK the matches; returns the count."""

        async def sweep(client: AsyncClient) -> int:
            total = 0
            for node in await async_primaries(client):
                target = {} if node is None else {"target_nodes": node}
                cursor: int = 0
                while True:
                    reply = await client.scan(cursor, match=pattern, count=1000, **target)
                    cursor, found = scan_cursor(reply, node)
                    if found:
                        total += await client.unlink(*found)
                    if cursor == 0:
                        break
            return total

        removed = await self._call("delete_pattern", sweep, 0)
        self.deletes += removed
        return removed

    # ------------------------------------------------------------ tags

    async def add_tags(self, key: str, tags: Iterable[str], ttl: float | None = None) -> None:
        """Index ``key`` under each tag; a tag set outlives every entry it indexes."""
        calls = tag_add_args(key, tags, ttl if ttl is not None else self.ttl)
        if not calls:
            return

        async def index(client: AsyncClient) -> None:
            pipe = client.pipeline(transaction=False)
            for args in calls:
                pipe.execute_command("EVAL", *args)
            await pipe.execute()

        await self._call("add_tags", index, None)

    async def invalidate_tags(self, tags: Iterable[str]) -> int:
        """Delete every key indexed under ``tags`` and the tag sets; returns keys deleted."""
        wanted = list(dict.fromkeys(tags))
        if not wanted:
            return 0

        async def drop(client: AsyncClient) -> int:
            pipe = client.pipeline(transaction=False)
            for tag in wanted:
                pipe.execute_command("EVAL", TAG_POP_LUA, 1, tag_key(tag))
            members = decode_members(await pipe.execute())
            return int(await client.delete(*members)) if members else 0

        removed = await self._call("invalidate_tags", drop, 0)
        self.deletes += removed
        return removed

    # ------------------------------------------------------------ leases

    async def acquire_lease(self, key: str, ttl_ms: int) -> str | None:
        """SET NX PX on the lease key: a token when acquired, None when another holds it.

        When Redis is unavailable there is nobody to coordinate with: a ``"local:"`` token is
        returned so the caller loads at once instead of waiting for a value that cannot come.
        """
        token = secrets.token_hex(16)
        lkey = lease_key(key)

        async def take(client: AsyncClient) -> str | None:
            return token if await client.set(lkey, token, nx=True, px=ttl_ms) else None

        local: str | None = LOCAL_LEASE_PREFIX + token
        return await self._call("acquire_lease", take, local)

    async def release_lease(self, key: str, token: str) -> bool:
        """Compare-and-delete: only the holder's token releases the lease."""
        if token.startswith(LOCAL_LEASE_PREFIX):
            return True
        lkey = lease_key(key)
        released = await self._call(
            "release_lease", lambda c: c.eval(RELEASE_LUA, 1, lkey, token), 0)
        return bool(released)

    # ------------------------------------------------------------ bus, health

    async def publish(self, channel: str, message: bytes) -> None:
        """Classic PUBLISH: on a cluster it reaches subscribers on every node."""
        await self._call("publish", lambda c: c.publish(channel, message), 0)

    def pubsub_client(self) -> redis.asyncio.Redis:
        """A fresh async client on one node for SUBSCRIBE (the caller closes it).

        Successive calls rotate over the known nodes, so a subscriber that reconnects after
        its node died tries another one.
        """
        return make_pubsub_client(self._spec, self._known_nodes(), self.connect_timeout)

    def _known_nodes(self) -> list[tuple[str, int]]:
        for client in (self._aclient, self._sclient):
            if isinstance(client, redis.asyncio.cluster.RedisCluster | redis.cluster.RedisCluster):
                nodes = client.get_nodes()
                if nodes:
                    return [(str(n.host), int(n.port)) for n in nodes]
        return []

    async def ping(self) -> float:
        """Round trip in seconds (every master of a cluster); raises when unreachable."""
        try:
            client = await self._client()
            start = perf_counter()
            if isinstance(client, redis.asyncio.cluster.RedisCluster):
                await client.ping(target_nodes=_ALL_PRIMARIES)
            else:
                await client.ping()
            return perf_counter() - start
        except Exception as exc:
            self._spec.redactor.exception(exc)
            raise

    async def clear(self) -> None:
        """FLUSHDB on every master: drops *everything* in that database, not just ours."""

        async def flush(client: AsyncClient) -> None:
            if isinstance(client, redis.asyncio.cluster.RedisCluster):
                await client.flushdb(target_nodes=_ALL_PRIMARIES)
            else:
                await client.flushdb()

        await self._call("clear", flush, None)

    async def close(self) -> None:
        """Close the clients this tier created (user-provided clients stay open)."""
        client, self._aclient, self._aloop = self._aclient, None, None
        if client is not None and client is not self._user_async:
            with contextlib.suppress(Exception):
                await client.aclose()
        self.close_sync()
