"""The tiers' own set/set_many refuse the TTLs TierCache refuses (one validator for all)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tiercache.tiers.base import MISSING
from tiercache.tiers.memory import MemoryTier
from tiercache.tiers.redis import RedisTier

BAD = [(0, ValueError), (-1, ValueError), (float("nan"), ValueError), ("60", TypeError),
       (True, TypeError)]


@pytest.mark.parametrize(("ttl", "error"), BAD)
def test_memory_tier_refuses_bad_ttls(ttl: Any, error: type[Exception]) -> None:
    tier = MemoryTier(maxsize=10)
    with pytest.raises(error, match="ttl"):
        tier.set_sync("k", 1, ttl)
    with pytest.raises(error, match="ttl"):
        tier.set_many_sync({"k": 1}, ttl)
    assert tier.get_sync("k") is MISSING  # nothing stored
    tier.set_sync("k", 1, timedelta(seconds=5))
    assert tier.get_sync("k") == 1


@pytest.mark.parametrize(("ttl", "error"), BAD)
async def test_redis_tier_refuses_bad_ttls(ttl: Any, error: type[Exception],
                                           tiercache_stack: Any) -> None:
    tier = RedisTier(tiercache_stack.redis_url)
    try:
        with pytest.raises(error, match="ttl"):
            await tier.set("ttl:bad", 1, ttl)
        with pytest.raises(error, match="ttl"):
            tier.set_sync("ttl:bad", 1, ttl)
        with pytest.raises(error, match="ttl"):
            await tier.set_many({"ttl:bad": 1}, ttl)
        with pytest.raises(error, match="ttl"):
            tier.set_many_sync({"ttl:bad": 1}, ttl)
        await tier.set("ttl:good", 1, timedelta(seconds=30))
        assert await tier.get("ttl:good") == 1
    finally:
        await tier.close()
        tier.close_sync()
