"""Shared pieces of the store tests: a Postgres table as the system of record, batch upsert
writers (async, and sync through a private event loop thread), a cache factory."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from tiercache.cache import TierCache
from tiercache.tiers.memory import MemoryTier
from tiercache.tiers.redis import RedisTier

UPSERT = "INSERT INTO {t} (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v"


def new_cache(redis_url: str, namespace: str | None = None, **kw: Any) -> TierCache:
    tier_kw = {k: kw.pop(k) for k in ("signing_key",) if k in kw}
    return TierCache(l1=MemoryTier(maxsize=100_000), l2=RedisTier(redis_url, ttl=120, **tier_kw),
                     namespace=namespace or f"s{uuid.uuid4().hex[:8]}", bus_wait=30.0, **kw)


async def make_table(pool: asyncpg.Pool) -> str:
    table = f"kv_{uuid.uuid4().hex[:10]}"
    await pool.execute(f"CREATE TABLE {table} (k bigint PRIMARY KEY, v bigint)")
    return table


async def rows(pool: asyncpg.Pool, table: str) -> dict[int, int]:
    return {r["k"]: r["v"] for r in await pool.fetch(f"SELECT k, v FROM {table}")}


class Writer:
    """An idempotent batch upsert into ``table``; ``fail_rate`` of the calls raise first.

    ``calls`` records each batch's size; ``gate`` (an asyncio.Event) stalls every call
    until set.
    """

    def __init__(self, pool: asyncpg.Pool, table: str, fail_rate: float = 0.0,
                 seed: int = 7) -> None:
        self.pool, self.table, self.fail_rate = pool, table, fail_rate
        self.rand = random.Random(seed)
        self.calls: list[int] = []
        self.deletes: list[int] = []
        self.failed = 0
        self.gate: asyncio.Event | None = None

    async def __call__(self, batch: dict[int, int]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.rand.random() < self.fail_rate:
            self.failed += 1
            raise ConnectionError("injected writer failure")
        self.calls.append(len(batch))
        await self.pool.executemany(UPSERT.format(t=self.table), list(batch.items()))

    async def delete(self, keys: list[int]) -> None:
        self.deletes.append(len(keys))
        await self.pool.execute(f"DELETE FROM {self.table} WHERE k = ANY($1::bigint[])", keys)

    async def load(self, key: int) -> int | None:
        value: int | None = await self.pool.fetchval(
            f"SELECT v FROM {self.table} WHERE k = $1", key)
        return value


class LoopThread:
    """An event loop in a thread, so sync code can use asyncpg (no sync driver needed)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, make: Callable[[], Awaitable[Any]]) -> Any:
        async def call() -> Any:
            return await make()
        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(60)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
