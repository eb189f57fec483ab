"""Shared set-up of the L3 test modules: a one-shard pool with a QueryCache (memory or the
session cluster's Redis) and a small table on it, dropped afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

from tiercache import QueryCache, create_sharded_pool
from tiercache.sharding.pool import ShardedPool


@contextlib.asynccontextmanager
async def l3_pool(stack: Any, store: str, prefix: str) -> AsyncIterator[ShardedPool]:
    """``store``: "memory" or "redis"; each pool gets its own namespace."""
    qc = QueryCache("memory" if store == "memory" else stack.redis_url,
                    namespace=f"{prefix}{uuid.uuid4().hex[:8]}")
    dsn = next(iter(stack.pg_dsns.values()))
    async with create_sharded_pool({"s": dsn}, min_size=1, max_size=4, query_cache=qc) as p:
        yield p
    await qc.close()


@contextlib.asynccontextmanager
async def l3_table(pool: ShardedPool, prefix: str, columns: str, select: str
                   ) -> AsyncIterator[str]:
    """A table ``prefix_<random>`` with ``columns``, filled by ``INSERT ... SELECT``."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    await pool.execute(f"CREATE TABLE {name} ({columns})")
    await pool.execute(f"INSERT INTO {name} {select}")
    try:
        yield name
    finally:
        await pool.execute(f"DROP TABLE {name}")
