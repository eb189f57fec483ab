"""cache.health() includes the ShardedPool's shards when the cache is given the pool."""

from __future__ import annotations

from typing import Any

from tiercache import MemoryTier, RedisTier, TierCache, create_sharded_pool


async def test_cache_health_reports_a_dead_shard(tiercache_stack: Any) -> None:
    pool = await create_sharded_pool(dict(tiercache_stack.pg_dsns), min_size=1, max_size=2)
    cache = TierCache(l1=MemoryTier(), l2=RedisTier(tiercache_stack.redis_url),
                      namespace="healthpool", bus=False, pool=pool)
    try:
        report = await cache.health()
        assert report["status"] == "healthy", report["reasons"]
        assert set(report["checks"]["pool"]["shards"]) == set(tiercache_stack.pg_dsns)
        assert report["checks"]["redis"]["ok"] is True
        tiercache_stack.kill_pg_shard("s2")
        try:
            report = await cache.health()
            assert report["status"] == "unhealthy"
            assert any(r.startswith("pool: shard s2") for r in report["reasons"])
            password_free = str(report)
            for dsn in tiercache_stack.pg_dsns.values():
                secret = dsn.split(":")[2].split("@")[0]
                assert secret not in password_free
        finally:
            tiercache_stack.restart_pg_shard("s2")
        assert (await cache.health())["status"] == "healthy"
        assert "pool" not in cache.health_sync()["checks"]  # the pool's health is async-only
    finally:
        await cache.aclose()
        await pool.close()
