"""RedisTier's in-flight gate: a burst of concurrent async operations queues for a slot
instead of putting every command on the loop at once (whose replies then outlast the
timeout on a busy box: cancelled reads, dropped connections, a breaker open on a healthy
Redis). Counted by wrapping the real client's ``get`` (instrumentation, no fault)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from tiercache.tiers import redis as redis_tier
from tiercache.tiers.base import MISSING
from tiercache.tiers.redis import RedisTier

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_burst_is_bounded_by_max_in_flight(tiercache_stack: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    tier = RedisTier(tiercache_stack.redis_url, ttl=60, max_in_flight=4)
    prefix = f"inflight{uuid.uuid4().hex[:8]}"
    try:
        await tier.set(f"{prefix}:0", "zero")
        client = tier._aclient
        assert client is not None
        # a GET is client.get, or on a cluster node_command (straight to the slot's node)
        real_get, real_node, now, peak = client.get, redis_tier.node_command, 0, 0

        async def held(call: Any, *args: Any) -> Any:
            nonlocal now, peak
            now += 1
            peak = max(peak, now)
            try:
                await asyncio.sleep(0.002)  # hold the slot a little: waiters pile up
                return await call(*args)
            finally:
                now -= 1

        client.get = lambda *a: held(real_get, *a)  # type: ignore[method-assign]
        monkeypatch.setattr(redis_tier, "node_command", lambda *a: held(real_node, *a))
        got = await asyncio.gather(*(tier.get_entry(f"{prefix}:{i % 50}") for i in range(300)))
        assert peak == 4  # never more on the wire, and the gate was full
        assert tier.stats()["errors"] == 0 and tier.breaker.state == "closed"
        assert sum(e is not MISSING for e in got) == 6  # keys 0 hit (i = 0, 50, ...)
        assert [e.value for e in got if e is not MISSING] == ["zero"] * 6
        await asyncio.gather(*(tier.set(f"{prefix}:s{i}", i) for i in range(100)))
        assert await tier.get_many([f"{prefix}:s{i}" for i in range(100)]) == {
            f"{prefix}:s{i}": i for i in range(100)}
    finally:
        await tier.delete_pattern(f"{prefix}:*")
        await tier.close()


def test_max_in_flight_validated() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        RedisTier("redis://127.0.0.1:1", max_in_flight=-1)
    assert RedisTier("redis://127.0.0.1:1", max_connections=12).max_in_flight == 12
