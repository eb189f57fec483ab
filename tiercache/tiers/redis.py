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
  two clock reads, a bisect into the latency histogram and the envelope decode. Timeouts
  are one ``asyncio.timeout`` per operation instead of redis-py's per-write ``wait_for``
  (see :mod:`tiercache.tiers._redis_async`), which makes the tier's round trip cheaper
  than a default redis-py client's.
* **Sync and async.** ``get``/``set``/... are coroutines; ``get_sync``/``set_sync``/... are
  blocking twins for sync ``@cached`` functions. Each client is created on first use; the
  async client follows the running event loop (each loop gets its own, closed when that
  loop shuts down, e.g. at the end of ``asyncio.run``).
* Batches (``get_many``, ``set_many``, ``delete_many``, tags) are grouped per slot/node
  and pipelined; ``delete_pattern`` SCANs every master and UNLINKs what matched.

Key layout of tag sets and leases (namespaced, reserved): :mod:`tiercache.tiers.keys`. ``clear()``
flushes the whole database on every master (like cashews/aiocache): use
``delete_pattern("<namespace>:*")`` to drop one namespace.
"""

from __future__ import annotations

import asyncio
from asyncio import get_running_loop, timeout
from collections.abc import Iterable, Mapping
from time import perf_counter
from typing import Any

from tiercache.codec import Entry
from tiercache.tiers._breaker import CLOSED, CircuitBreaker
from tiercache.tiers._redis_async import AsyncOps
from tiercache.tiers._redis_conn import (
    AsyncClient,
    SyncClient,
    is_async_client,
    spec_from_client,
    spec_from_url,
)
from tiercache.tiers.base import MISSING, Missing, RemoteTier
from tiercache.tiers.keys import check_user_key, check_user_keys, lease_key, tag_key

__all__ = ["CircuitBreaker", "RedisTier", "lease_key", "tag_key"]


class RedisTier(AsyncOps):
    """The L2 tier. ``url_or_client``: a ``redis://``/``rediss://``/``unix://`` URL or a
    redis-py client (sync or async, plain or cluster; not closed by :meth:`close`).

    ``ttl`` default seconds (None = no expiry); ``ttl_jitter`` fraction: the stored TTL is
    uniform in ``[ttl*(1-j), ttl]``. ``cluster=None`` auto-detects (``INFO cluster``).
    ``socket_timeout`` bounds a reply (sync: per socket read; async: the whole operation
    gets ``connect_timeout + socket_timeout``, more for big batches); ``connect_timeout``
    bounds opening a connection. The default ``breaker`` opens after 5 consecutive
    failures and probes after 2 s; it is one breaker for the whole cluster.
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
        self._budget = connect_timeout + socket_timeout  # per operation, see _redis_async
        self._user_async: AsyncClient | None = None
        self._user_async_taken = False
        self._aclient: AsyncClient | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._aclients: dict[asyncio.AbstractEventLoop, Any] = {}  # see _client()
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

    # ------------------------------------------------------------ reads

    async def get_entry(self, key: str) -> Entry | Missing:
        """The stored envelope (value, stored_at, ttl, load_time) or MISSING."""
        breaker = self.breaker
        if breaker.state is not CLOSED and not breaker.allow():
            self._skip()
            return MISSING
        start = perf_counter()
        try:
            async with timeout(self._budget):
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
        return await self._get_many(list(keys), False)

    async def get_many_entries(self, keys: Iterable[str]) -> dict[str, Entry]:
        """:meth:`get_many` returning the envelopes (value, stored_at, ttl, load_time)."""
        return await self._get_many(list(keys), True)

    async def _get_many(self, wanted: list[str], entries: bool) -> dict[str, Any]:
        if not wanted:
            return {}
        if not self._allowed():
            return {}
        start = perf_counter()
        try:
            async with timeout(self._batch_budget(len(wanted))):
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
        return self._decode_many(wanted, raws, entries)

    # ------------------------------------------------------------ writes

    async def set(self, key: str, value: Any, ttl: float | None = None, *,
                  load_time: float = 0.0) -> None:
        """Store ``value`` (``TypeError`` if unencodable, raised before any I/O)."""
        check_user_key(key)
        payload, px = self._pack(value, ttl, load_time)
        if px == 0:
            await self.delete(key)
            return
        if not self._allowed():
            return
        start = perf_counter()
        try:
            async with timeout(self._budget):
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
        check_user_keys(mapping)
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

        if await self._call("set_many", write, False, self._batch_budget(len(batch))):
            self.sets += sum(1 for _, _, px in batch if px != 0)

    async def delete(self, key: str) -> bool:
        check_user_key(key)
        removed = await self._call("delete", lambda c: c.delete(key), 0)
        self.deletes += removed
        return bool(removed)

    async def delete_many(self, keys: Iterable[str]) -> int:
        """Number of keys that existed. Cluster: DEL per slot, pipelined per node."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return 0
        check_user_keys(wanted)
        removed = await self._call("delete_many", lambda c: c.delete(*wanted), 0,
                                   self._batch_budget(len(wanted)))
        self.deletes += removed
        return removed

    async def close(self) -> None:
        """Close the clients this tier created (user-provided clients stay open)."""
        await self._close_clients()
        self.close_sync()


def _conforms(tier: RedisTier) -> RemoteTier:
    """Static proof (checked by mypy) that RedisTier satisfies the core's tier seam."""
    return tier
