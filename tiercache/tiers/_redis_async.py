"""Async client management and the less frequent async operations of RedisTier.

Timeouts: the async client is built *without* redis-py's per-socket timeout, because
redis-py enforces it on every write with ``asyncio.wait_for`` (a new Task and an extra
event-loop cycle per command: a tenth of a loopback round trip). Instead every operation
runs under one ``asyncio.timeout`` budget of ``connect_timeout + socket_timeout`` (scaled
for large batches; per step for multi-round-trip operations such as ``delete_pattern``).
A cancelled read/write makes redis-py drop that connection, so no reply is ever misread.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from asyncio import get_running_loop
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from time import perf_counter
from typing import Any, TypeVar

import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from tiercache.tiers._breaker import CLOSED
from tiercache.tiers._redis_conn import (
    AsyncClient,
    async_primaries,
    detect_cluster_async,
    make_async_client,
    make_pubsub_client,
)
from tiercache.tiers._redis_ops import LOCAL_LEASE_PREFIX, scan_cursor
from tiercache.tiers._redis_sync import SyncTwins
from tiercache.tiers.keys import (
    RELEASE_LUA,
    TAG_POP_LUA,
    check_user_key,
    is_reserved,
    lease_key,
    namespace_wide,
    tag_add_args,
    tag_key,
)
from tiercache.tiers.keys import (
    key_text as _text,
)

__all__ = ["AsyncOps"]

T = TypeVar("T")
_ALL_PRIMARIES = redis.asyncio.cluster.RedisCluster.PRIMARIES
_OP_BUDGET = -1.0  # _call's default: the tier's per-operation budget


class AsyncOps(SyncTwins):
    """Async client lifecycle, ``_call`` (breaker/timeout/counting), and the rarer ops."""

    _user_async: AsyncClient | None
    _user_async_taken: bool
    _aclient: AsyncClient | None
    _aloop: asyncio.AbstractEventLoop | None
    _aclients: dict[asyncio.AbstractEventLoop,
                    tuple[AsyncClient, AsyncGenerator[None, None] | None]]
    _budget: float

    def _batch_budget(self, n: int) -> float:
        """A batch of ``n`` commands moves more bytes: one more timeout per 1000 commands."""
        return self._budget + self.socket_timeout * (n // 1000)

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

    async def _close_clients(self) -> None:
        """Close our clients: this loop's now, other live loops' on those loops."""
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

    def _allowed(self) -> bool:
        breaker = self.breaker
        if breaker.state is CLOSED or breaker.allow():
            return True
        self._skip()
        return False

    async def _call(self, op: str, fn: Callable[[AsyncClient], Awaitable[T]], default: T,
                    budget: float | None = _OP_BUDGET) -> T:
        """Run one operation with breaker, timeout, timing and counting; ``default`` on
        failure. ``budget=None``: ``fn`` times its own steps (see :meth:`_step`)."""
        if not self._allowed():
            return default
        start = perf_counter()
        try:
            if budget is None:
                result = await fn(await self._client())
            else:
                async with asyncio.timeout(self._budget if budget < 0 else budget):
                    result = await fn(await self._client())
        except Exception as exc:
            self._failed(op, exc)
            return default
        self._histogram(op).observe(perf_counter() - start)
        self.breaker.record_success()
        return result

    async def _step(self, aw: Awaitable[T], n: int = 1) -> T:
        async with asyncio.timeout(self._batch_budget(n)):
            return await aw

    # ------------------------------------------------------------ pattern delete

    async def delete_pattern(self, pattern: str) -> int:
        """SCAN MATCH ``pattern`` on every master and UNLINK the matches; returns the count.

        Tag sets and leases (the reserved space, :mod:`tiercache.tiers.keys`) are only
        swept by a namespace-wide pattern (``"{ns}:*"``, ``"*"``)."""
        internals = namespace_wide(pattern)

        async def sweep(client: AsyncClient) -> int:
            total = 0
            for node in await self._step(async_primaries(client)):
                target = {} if node is None else {"target_nodes": node}
                cursor: int = 0
                while True:
                    reply = await self._step(
                        client.scan(cursor, match=pattern, count=1000, **target))
                    cursor, found = scan_cursor(reply, node)
                    if found and not internals:
                        found = [k for k in found if not is_reserved(_text(k))]
                    if found:
                        total += await self._step(client.unlink(*found), len(found))
                    if cursor == 0:
                        break
            return total

        removed = await self._call("delete_pattern", sweep, 0, None)
        self.deletes += removed
        return removed

    # ------------------------------------------------------------ tags

    async def add_tags(self, key: str, tags: Iterable[str], ttl: float | None = None) -> None:
        """Index ``key`` under each tag of its namespace (ZSET scored by expiry)."""
        check_user_key(key)
        calls = tag_add_args(key, tags, ttl if ttl is not None else self.ttl)
        if not calls:
            return

        async def index(client: AsyncClient) -> None:
            pipe = client.pipeline(transaction=False)
            for args in calls:
                pipe.execute_command("EVAL", *args)
            await pipe.execute()

        await self._call("add_tags", index, None, self._batch_budget(len(calls)))

    async def invalidate_tags(self, tags: Iterable[str], *,
                              namespace: str | None = None) -> int:
        """Delete every key indexed under ``tags`` in ``namespace`` and the tag sets;
        returns keys deleted."""
        wanted = list(dict.fromkeys(tags))
        if not wanted:
            return 0

        ns = namespace or ""

        async def drop(client: AsyncClient) -> int:
            pipe = client.pipeline(transaction=False)
            for tag in wanted:
                pipe.execute_command("EVAL", TAG_POP_LUA, 1, tag_key(tag, ns))
            replies = await self._step(pipe.execute(raise_on_error=False), len(wanted))
            members = self._tag_members(wanted, replies)
            if not members:
                return 0
            return int(await self._step(client.delete(*members), len(members)))

        removed = await self._call("invalidate_tags", drop, 0, None)
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

    # ------------------------------------------------------------ bus, health, clear

    async def publish(self, channel: str, message: bytes) -> None:
        """Classic PUBLISH: on a cluster it reaches subscribers on every node."""
        await self._call("publish", lambda c: c.publish(channel, message), 0)

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
            async with asyncio.timeout(self._budget):
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
        """FLUSHDB ASYNC on every master: drops *everything* in that database, not just ours."""

        async def flush(client: AsyncClient) -> None:
            if isinstance(client, redis.asyncio.cluster.RedisCluster):
                await client.flushdb(asynchronous=True, target_nodes=_ALL_PRIMARIES)
            else:
                await client.flushdb(asynchronous=True)

        await self._call("clear", flush, None)


async def _closed_with_loop(client: AsyncClient) -> AsyncGenerator[None, None]:
    """Parked at its ``yield`` until the loop shuts down (``asyncio.run`` and
    ``Runner.close`` call ``shutdown_asyncgens()``) or it is closed: then closes ``client``
    on its own loop, where its connections live."""
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
