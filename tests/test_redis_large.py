"""Large values on the real cluster: max_value_bytes (skip, count, ValueTooLarge through
the core's TypeError path) and big payloads decoded/encoded off the event loop."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from redis.cluster import RedisCluster

from tiercache.cache import TierCache
from tiercache.tiers.base import ValueTooLarge
from tiercache.tiers.redis import LARGE, RedisTier


def test_default_bound_and_validation() -> None:
    assert RedisTier().max_value_bytes == 16 * 1024 * 1024
    assert RedisTier(max_value_bytes=None).max_value_bytes is None
    with pytest.raises(ValueError):
        RedisTier(max_value_bytes=0)
    assert issubclass(ValueTooLarge, TypeError)


def test_values_above_the_bound_are_skipped_counted_and_raised(
        tiercache_stack: Any, redis_cluster_client: RedisCluster,
        caplog: pytest.LogCaptureFixture) -> None:
    tier = RedisTier(tiercache_stack.redis_url, max_value_bytes=10_000)
    try:
        tier.set_sync("big:ok", "x" * 5000)
        with pytest.raises(ValueTooLarge, match="max_value_bytes=10000"):
            tier.set_sync("big:no", "x" * 20_000)
        with pytest.raises(ValueTooLarge):
            tier.set_many_sync({"big:a": 1, "big:b": "x" * 20_000})
        assert redis_cluster_client.exists("big:no", "big:a", "big:b") == 0
        assert tier.get_sync("big:ok") == "x" * 5000
        s = tier.stats()
        assert s["skipped_too_large"] == 2 and s["sets"] == 1
        assert "above max_value_bytes" in caplog.text
    finally:
        tier.close_sync()


async def test_async_too_large_and_the_core_keeps_it_in_l1(
        cache_factory: Callable[..., TierCache], redis_cluster_client: RedisCluster) -> None:
    cache = cache_factory()
    l2: RedisTier = cache.l2  # type: ignore[assignment]
    l2.max_value_bytes = 2000
    with pytest.raises(ValueTooLarge):
        await l2.set(f"{cache.namespace}:raw", list(range(5000)))
    calls: list[int] = []

    @cache.cached(ttl=60)
    async def blob(n: int) -> str:
        calls.append(n)
        return "y" * n

    assert await blob(10_000) == "y" * 10_000  # served (L1 only), never an exception
    assert await blob(10_000) == "y" * 10_000
    assert calls == [10_000]
    assert l2.stats()["skipped_too_large"] == 2
    found = list(redis_cluster_client.scan_iter(match=f"{cache.namespace}:*",
                                                target_nodes=RedisCluster.PRIMARIES))
    assert found == []


async def test_big_payloads_round_trip_and_decode_off_the_loop(
        tiercache_stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    tier = RedisTier(tiercache_stack.redis_url, ttl=60)
    decoded_in: list[str] = []
    decode = tier._decode

    def spy(key: str, raw: Any) -> Any:
        decoded_in.append(threading.current_thread().name)
        return decode(key, raw)

    monkeypatch.setattr(tier, "_decode", spy)
    big = [{"id": i, "name": f"user-{i}"} for i in range(40_000)]  # > LARGE encoded
    try:
        await tier.set("large:1", big)
        await tier.set("large:small", 1)
        assert await tier.get("large:1") == big
        assert await tier.get("large:small") == 1
        assert decoded_in[0] != threading.current_thread().name  # a worker thread
        assert decoded_in[1] == threading.current_thread().name  # small: inline
        got = await tier.get_many(["large:1", "large:small"])
        assert got == {"large:1": big, "large:small": 1}
        assert LARGE == 256 * 1024
    finally:
        await tier.close()
