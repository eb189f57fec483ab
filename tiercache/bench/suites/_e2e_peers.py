"""The e2e contestants run in this process: tiercache's stacks, cashews, aiocache, no cache.

Each one wraps the *same* loader (:mod:`._e2e_workload`) in its own cache, configured the
way its documentation recommends for a read-mostly async service, and counts what it can:
``loads`` (the loader's calls) always, hits per tier where the library exposes them.
Every run gets a fresh key prefix, so no contestant reads another one's Redis entries; the
entries expire with the run's TTL (nothing is flushed: the Redis may be the user's).
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from tiercache.bench.suites._e2e_workload import SELECT, Get, Value

if TYPE_CHECKING:
    from tiercache import TierCache

__all__ = ["Contestant", "L3Loader", "in_process_contestants"]

Loader = Callable[[int], Awaitable[Value]]

#: Connections per cluster node for cashews on the cluster: redis-py's asyncio RedisCluster
#: raises MaxConnectionsError instead of waiting when all are busy, so cashews gets cacheme's
#: default (10 x pool_size 100). tiercache keeps its defaults (64 per node; its in-flight
#: gate makes a burst wait for a slot instead).
MAX_CONNECTIONS = 1000


class Contestant:
    """One cache configuration under test; ``label`` names it and its configuration."""

    key = ""
    label = ""
    redis = ""  # which Redis it talks to: "cluster", "single redis-server", "" (none)

    async def open(self, loader: Loader, run_id: str) -> Get:
        raise NotImplementedError

    def counters(self) -> dict[str, float]:
        """Cumulative hits per tier this library reports (``loads`` is added by the suite)."""
        return {}

    async def warm(self, concurrency: int) -> None:
        """Open the connections a run at ``concurrency`` needs (not the data: the run starts
        cold), the way a long-running service has them: ``concurrency`` reads of distinct
        keys at once, in the contestant's own client."""
        return None

    async def close(self) -> None:
        return None

    def available(self) -> str:
        """"" when it can run here, else why not (reported as unavailable, never skipped)."""
        return ""


class L3Loader:
    """The same SELECT through a ShardedPool with the L3 query cache (``cache_ttl=``)."""

    kind = "pg"

    def __init__(self, pool: Any, ttl: float) -> None:
        self.pool, self.ttl = pool, ttl
        self.calls = 0

    async def __call__(self, key: int) -> Value:
        self.calls += 1
        row = await self.pool.fetchrow(SELECT, key, shard_key=key, cache_ttl=self.ttl)
        return {"id": row[0], "name": row[1], "score": row[2]}


class TierCacheContestant(Contestant):
    """``@cache.cached`` over L1 (MemoryTier) + L2 (RedisTier on the cluster)."""

    redis = "cluster"

    def __init__(self, redis_url: str, l1_size: int, ttl: float, *, refresh: Any = None,
                 l3: bool = False, batch: bool = False) -> None:
        self.url, self.l1_size, self.ttl, self.refresh, self.l3 = (
            redis_url, l1_size, ttl, refresh, l3)
        self.batch: Any = None  # batch=True: the suite sets the batch loader before open()
        self.batched = batch
        self.key = ("tiercache" + ("+refresh" if refresh is not None else "")
                    + ("+l3" if l3 else "") + ("+batch" if batch else ""))
        extra = (" + RefreshAhead(0.8)" if refresh is not None else "") + (
            " + L3 QueryCache (pool cache_ttl=)" if l3 else "") + (
            " + batch= loader: one WHERE id = ANY($1) per shard per event-loop turn"
            if batch else "")
        self.label = (f"{self.key} (L1 MemoryTier {l1_size:,} + L2 RedisTier cluster, "
                      f"defaults{extra}, single-flight)")
        self.cache: Any = None
        self.pool: Any = None

    async def open(self, loader: Loader, run_id: str) -> Get:
        from tiercache import MemoryTier, RedisTier, TierCache

        self.cache = TierCache(l1=MemoryTier(maxsize=self.l1_size, ttl=self.ttl),
                               l2=RedisTier(self.url, ttl=self.ttl), namespace=f"tce2e{run_id}")
        options: dict[str, Any] = {"refresh": self.refresh} if self.refresh is not None else {}
        if self.batch is not None:
            options["batch"] = self.batch

        cache: TierCache = self.cache
        batch = self.batch

        @cache.cached(ttl=self.ttl, name="e2e.get_user", **options)
        async def get_user(key: int) -> Value:
            if batch is not None:  # called alone (the batch= loader serves the misses)
                return (await batch([key]))[key]  # type: ignore[no-any-return]
            return await loader(key)

        @cache.cached(ttl=self.ttl, name="e2e.warm")
        async def warm(key: int) -> int:
            return key

        await warm(0)  # cluster slots and the invalidation bus, before timing
        self._base = self._raw()
        return get_user

    async def warm(self, concurrency: int) -> None:
        await _gather_bounded([self.cache.get(f"warm:{i}") for i in range(concurrency)])
        await _breakers_closed(self.cache)
        self._base = self._raw()

    def _raw(self) -> dict[str, float]:
        stats = self.cache.stats()
        out = {"l1_hits": float(stats["l1"]["hits"]), "l2_hits": float(stats["l2"]["hits"]),
               # joined an in-flight L2 read or load of the same key (single-flight)
               "joined_hits": float(stats["loader"]["singleflight_waits"]),
               "l2_errors": float(stats["l2"]["errors"])}
        if self.pool is not None and self.pool.query_cache is not None:
            out["l3_hits"] = float(self.pool.query_cache.stats()["hits"])
        return out

    def counters(self) -> dict[str, float]:
        raw = self._raw()
        return {k: v - self._base.get(k, 0.0) for k, v in raw.items()}

    async def close(self) -> None:
        if self.cache is not None:
            await self.cache.aclose()


class CashewsContestant(Contestant):
    """cashews ``@cache(ttl=...)`` (its in-process thunder protection is on by default).

    On the cluster (``cluster=True``) every call is a Redis GET; ``client_side=True`` adds its
    local cache invalidated by Redis tracking, which cashews refuses on a cluster, so that
    configuration runs on a single redis-server.
    """

    def __init__(self, redis_url: str, ttl: float, *, client_side: bool = False,
                 l1_size: int = 10_000) -> None:
        self.url, self.ttl, self.client_side, self.l1_size = redis_url, ttl, client_side, l1_size
        self.redis = "single redis-server" if client_side else "cluster"
        self.key = "cashews+client_side" if client_side else "cashews"
        self.label = (f"cashews client_side=True (local Memory {l1_size:,} + Redis, "
                      "single redis-server; cluster unsupported)" if client_side else
                      f"cashews redis (cluster=True, max_connections {MAX_CONNECTIONS}, "
                      "no local tier)")
        self.cache: Any = None

    def available(self) -> str:
        return _missing("cashews")

    async def open(self, loader: Loader, run_id: str) -> Get:
        cashews = importlib.import_module("cashews")
        self.cache = cache = cashews.Cache()
        if self.client_side:
            memory = importlib.import_module("cashews.backends.memory").Memory
            cache.setup(self.url, client_side=True, local_cache=memory(size=self.l1_size),
                        max_connections=100, suppress=False)
        else:
            cache.setup(self.url, cluster=True, max_connections=MAX_CONNECTIONS, suppress=False)
        await cache.init()

        async def load(key: int) -> Value:
            return await loader(key)

        get_user = cache(ttl=self.ttl, key=f"cwe2e{run_id}:{{key}}")(load)
        self._run_id = run_id
        return get_user  # type: ignore[no-any-return]

    async def warm(self, concurrency: int) -> None:
        await _gather_bounded([self.cache.get(f"cwe2e{self._run_id}:warm:{i}")
                               for i in range(concurrency)])

    async def close(self) -> None:
        if self.cache is not None:
            await self.cache.close()


class AiocacheContestant(Contestant):
    """aiocache ``@cached`` on ``RedisCache`` (no cluster support: a single redis-server),
    BlockingConnectionPool of 100 as in the cacheme benchmark; JSON serializer (its default)."""

    redis = "single redis-server"

    def __init__(self, host: str, port: int, ttl: float, *, stampede: bool = False) -> None:
        self.host, self.port, self.ttl, self.stampede = host, port, ttl, stampede
        self.key = "aiocache+stampede" if stampede else "aiocache"
        self.label = ("aiocache cached_stampede (RedisCache, RedLock lease 2 s, single "
                      "redis-server)" if stampede else
                      "aiocache cached (RedisCache, single redis-server, no local tier)")
        self.cache: Any = None

    def available(self) -> str:
        return _missing("aiocache")

    async def open(self, loader: Loader, run_id: str) -> Get:
        aiocache = importlib.import_module("aiocache")
        blocking = importlib.import_module("redis.asyncio").BlockingConnectionPool
        factory = aiocache.cached_stampede if self.stampede else aiocache.cached
        options: dict[str, Any] = {"lease": 2} if self.stampede else {}
        decorator = factory(
            ttl=int(self.ttl), key_builder=lambda f, key: f"u:{key}", cache=aiocache.RedisCache,
            endpoint=self.host, port=self.port, namespace=f"ace2e{run_id}", pool_max_size=100,
            connection_pool_class=blocking, connection_pool_kwargs={"timeout": None}, **options)

        async def get_user(key: int) -> Value:
            return await loader(key)

        wrapped = decorator(get_user)
        self.cache = decorator.cache
        return wrapped  # type: ignore[no-any-return]

    async def warm(self, concurrency: int) -> None:
        await _gather_bounded([self.cache.get(f"warm:{i}") for i in range(concurrency)])

    async def close(self) -> None:
        if self.cache is not None:
            await self.cache.close()


class NoCacheContestant(Contestant):
    key = "no cache"
    label = "no cache (every request runs the loader)"

    async def open(self, loader: Loader, run_id: str) -> Get:
        return loader


class NoCacheBatchContestant(Contestant):
    """No cache, but concurrent requests batched per event-loop turn into one
    ``WHERE id = ANY($1)`` per shard (a DataLoader; here tiercache's Coalescer): shows how
    much of ``tiercache+batch``'s gain is the batching alone."""

    key = "no cache+batch"
    label = "no cache + batched loads (every request reaches Postgres, batched per loop turn)"
    batched = True
    batch: Any = None

    async def open(self, loader: Any, run_id: str) -> Get:
        from tiercache._batching import Coalescer

        async def many(keys: list[int]) -> list[Value]:
            found = await loader(keys)
            return [found[k] for k in keys]

        coalescer: Coalescer[int, Value] = Coalescer(many)

        async def get(key: int) -> Value:
            return await coalescer.submit(key)

        return get


async def _gather_bounded(calls: list[Awaitable[Any]]) -> None:
    """Await them all at once; a failure here shows up again in the timed run."""
    await asyncio.gather(*calls, return_exceptions=True)


async def _breakers_closed(cache: Any, timeout: float = 10.0) -> None:
    """Wait until no L2 breaker is open (a connection burst on a busy box can trip one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        breakers = cache.stats()["l2"].get("breakers", {})
        if all(state == "closed" for state in breakers.values()):
            return
        await cache.get("warm:probe")
        await asyncio.sleep(0.1)


def _missing(module: str) -> str:
    try:
        importlib.import_module(module)
    except Exception as exc:
        return f"not installed ({type(exc).__name__}: {exc}; pip install {module})"
    return ""


def in_process_contestants(cluster_url: str, single: tuple[str, int] | None, l1_size: int,
                           ttl: float, refresh: Any, l3: bool) -> Mapping[str, Contestant]:
    """The in-process contestants by key, in run order (cacheme runs in its own process)."""
    out: dict[str, Contestant] = {}
    for c in (TierCacheContestant(cluster_url, l1_size, ttl),
              TierCacheContestant(cluster_url, l1_size, ttl, refresh=refresh)
              if refresh is not None else None,
              TierCacheContestant(cluster_url, l1_size, ttl, l3=True) if l3 else None,
              CashewsContestant(cluster_url, ttl),
              CashewsContestant(f"redis://{single[0]}:{single[1]}", ttl, client_side=True,
                                l1_size=l1_size) if single else None,
              AiocacheContestant(single[0], single[1], ttl) if single else None):
        if c is not None:
            out[c.key] = c
    out["tiercache+batch"] = TierCacheContestant(cluster_url, l1_size, ttl, batch=True)
    out["no cache"] = NoCacheContestant()
    out["no cache+batch"] = NoCacheBatchContestant()
    return out
