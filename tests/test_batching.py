"""Coalescing (tiercache._batching): the async L2 reads and writes of one event-loop turn go
to Redis as one pipeline, and ``@cached(batch=...)`` loads one turn's misses with one call.
Real Redis Cluster; the invariants are the single-key path's (values, counts, fences)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from redis.crc import key_slot

from tiercache import RedisTier
from tiercache.cache import TierCache
from tiercache.tiers.base import MISSING

Factory = Callable[..., TierCache]


async def _connected(cache: TierCache) -> TierCache:
    """First call: connects L2 and subscribes the bus (first fills wait for it, each in its
    own turn), so what follows measures batching, not the start-up."""

    @cache.cached(ttl=60, name="warmup")
    async def warmup() -> int:
        return 1

    await warmup()
    return cache


def _batch_counter() -> tuple[list[list[int]], Any]:
    calls: list[list[int]] = []

    async def load_many(ids: list[int]) -> dict[int, str]:
        calls.append(list(ids))
        await asyncio.sleep(0.01)  # a real round trip: the batch is in flight for a while
        return {i: f"user-{i}" for i in ids if i >= 0}  # negative ids: not found

    return calls, load_many


async def test_batch_loader_serves_one_turns_misses_with_one_call(cache_factory: Factory) -> None:
    cache = await _connected(cache_factory())
    calls, load_many = _batch_counter()

    @cache.cached(ttl=60, batch=load_many)
    async def get_user(user_id: int) -> str | None:
        return (await load_many([user_id])).get(user_id)

    values = await asyncio.gather(*(get_user(i) for i in range(300)))
    assert values == [f"user-{i}" for i in range(300)]
    assert len(calls) == 1 and sorted(calls[0]) == list(range(300))  # one call, each id once
    assert cache.stats()["loader"]["calls"] == 301  # counted per key (+ warm-up), as without

    again = await asyncio.gather(*(get_user(i) for i in range(300)))  # L1 now
    assert again == values and len(calls) == 1

    other = await _connected(cache_factory())  # another process: no L1; the batch wrote L2

    @other.cached(ttl=60, batch=load_many, name=get_user.spec.name)
    async def get_user2(user_id: int) -> str | None:
        return (await load_many([user_id])).get(user_id)

    assert await asyncio.gather(*(get_user2(i) for i in range(300))) == values
    assert len(calls) == 1
    assert other.stats()["l2"]["hits"] >= 300


async def test_batch_loader_shares_flights_and_takes_sequences(cache_factory: Factory) -> None:
    cache = await _connected(cache_factory())
    calls: list[list[int]] = []

    async def squares(ids: list[int]) -> list[int]:  # values in order: also accepted
        calls.append(list(ids))
        await asyncio.sleep(0.01)
        return [i * i for i in ids]

    @cache.cached(ttl=60, batch=squares)
    async def square(n: int) -> int:
        return n * n

    values = await asyncio.gather(*(square(n % 7) for n in range(70)))  # 10 callers per key
    assert values == [(n % 7) ** 2 for n in range(70)]
    assert len(calls) == 1 and sorted(calls[0]) == list(range(7))  # single-flight first
    assert cache.stats()["loader"]["singleflight_waits"] == 63


async def test_missing_items_are_none_and_not_cached_without_cache_none(
        cache_factory: Factory) -> None:
    cache = await _connected(cache_factory(cache_none=False))
    calls, load_many = _batch_counter()

    @cache.cached(ttl=60, batch=load_many)
    async def get_user(user_id: int) -> str | None:
        return (await load_many([user_id])).get(user_id)

    assert await asyncio.gather(get_user(-1), get_user(1)) == [None, "user-1"]
    assert await asyncio.gather(get_user(-1), get_user(1)) == [None, "user-1"]
    assert [sorted(c) for c in calls] == [[-1, 1], [-1]]  # the None was not kept


async def test_a_failing_batch_fails_each_caller_and_caches_nothing(
        cache_factory: Factory) -> None:
    cache = await _connected(cache_factory())
    attempts: list[list[int]] = []

    async def flaky(ids: list[int]) -> dict[int, int]:
        attempts.append(list(ids))
        if len(attempts) == 1:
            raise ConnectionError("database went away")
        return {i: i for i in ids}

    @cache.cached(ttl=60, batch=flaky)
    async def get(n: int) -> int:
        return n

    results = await asyncio.gather(*(get(n) for n in range(5)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert cache.stats()["loader"]["failures"] == 5
    assert await asyncio.gather(*(get(n) for n in range(5))) == list(range(5))  # reloaded
    assert len(attempts) == 2

    @cache.cached(ttl=60, batch=lambda ids: [1])  # wrong length: a clear error, per caller
    async def short(n: int) -> int:
        return n

    results = await asyncio.gather(short(1), short(2), return_exceptions=True)
    assert all(isinstance(r, TypeError) and "returned 1 values for 2 items" in str(r)
               for r in results)


async def test_a_cancelled_caller_leaves_the_batch_to_the_others(cache_factory: Factory) -> None:
    cache = cache_factory()
    _, load_many = _batch_counter()

    @cache.cached(ttl=60, batch=load_many)
    async def get_user(user_id: int) -> str | None:
        return (await load_many([user_id])).get(user_id)

    tasks = [asyncio.ensure_future(get_user(i)) for i in range(10)]
    await asyncio.sleep(0)  # every task submitted its miss
    tasks[3].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[3], asyncio.CancelledError)
    assert [r for i, r in enumerate(results) if i != 3] == [
        f"user-{i}" for i in range(10) if i != 3]


async def test_an_invalidation_during_a_batch_load_is_not_undone(cache_factory: Factory) -> None:
    """The generation fence of the single-key path holds for batched loads: a value loaded
    across an invalidation is served to its callers but kept in no tier."""
    cache = await _connected(cache_factory())  # both misses in one batch
    version = {"v": "old"}
    started, release = asyncio.Event(), asyncio.Event()

    async def load_many(ids: list[int]) -> dict[int, str]:
        value = version["v"]
        started.set()
        await release.wait()
        return {i: value for i in ids}

    @cache.cached(ttl=60, batch=load_many)
    async def get(n: int) -> str:
        return version["v"]

    first = asyncio.ensure_future(asyncio.gather(get(1), get(2)))
    await started.wait()
    version["v"] = "new"
    await get.invalidate(1)
    await get.invalidate(2)
    release.set()
    assert await first == ["old", "old"]
    started.clear()
    assert await asyncio.gather(get(1), get(2)) == ["new", "new"]


async def test_concurrent_l2_reads_and_writes_are_pipelined(cache_factory: Factory) -> None:
    cache = await _connected(cache_factory())
    loads: list[int] = []

    @cache.cached(ttl=60)
    async def get(n: int) -> dict[str, int]:
        loads.append(n)
        await asyncio.sleep(0.01)
        return {"n": n}

    assert await asyncio.gather(*(get(n) for n in range(200))) == [{"n": n} for n in range(200)]
    ops = cache.l2_ops
    assert ops is not None and ops.reads is not None and ops.writes is not None
    assert ops.reads.items == 201 and ops.reads.batches <= 5  # (+ warm-up) one MGET a turn
    assert ops.writes.items == 201 and ops.writes.batches <= 25  # loads end over a few turns

    fresh = await _connected(cache_factory())  # the batched writes are in L2, each its key

    @fresh.cached(ttl=60, name=get.spec.name)
    async def get2(n: int) -> dict[str, int]:
        raise AssertionError("must come from L2")

    assert await asyncio.gather(*(get2(n) for n in range(200))) == [{"n": n} for n in range(200)]
    assert len(loads) == 200

    plain = cache_factory(coalesce=False)
    assert plain.l2_ops is not None and plain.l2_ops.reads is None


async def test_set_many_entries_writes_the_encodable_and_reports_the_rest(
        tiercache_stack: Any) -> None:
    tier = RedisTier(tiercache_stack.redis_url, ttl=60)
    try:
        errors = await tier.set_many_entries([
            ("sme:a", {"x": 1}, 30.0, 0.01, 0.0),
            ("sme:b", object(), 30.0, 0.0, 0.0),  # unencodable: its own TypeError
            ("sme:c", [1, 2], None, 0.0, 5.0),
        ])
        assert errors[0] is None and errors[2] is None and isinstance(errors[1], TypeError)
        found = await tier.get_many_entries(["sme:a", "sme:b", "sme:c"])
        assert set(found) == {"sme:a", "sme:c"}
        assert found["sme:a"].value == {"x": 1} and found["sme:a"].load_time == 0.01
        assert found["sme:a"].ttl is not None and found["sme:a"].ttl <= 30.0
    finally:
        await tier.close()


def test_batch_needs_an_async_function_of_one_argument(cache_factory: Factory) -> None:
    cache = cache_factory()

    async def many(ids: list[int]) -> dict[int, int]:
        return {}

    with pytest.raises(TypeError, match="needs an async function"):
        @cache.cached(batch=many)
        def sync_get(n: int) -> int:
            return n

    with pytest.raises(TypeError, match="exactly one argument"):
        @cache.cached(batch=many)
        async def two(a: int, b: int) -> int:
            return a


def test_plain_positional_calls_key_like_bound_calls(cache_factory: Factory) -> None:
    """relative_key's fast path (no Signature.bind for a plain positional call) builds the
    key bind would: the keyword and mixed forms, which take bind, agree with it."""
    cache = cache_factory()

    @cache.cached(ttl=60)
    async def pair(a: int, b: str) -> str:
        return f"{a}{b}"

    assert pair.spec.plain_names == ("a", "b")
    assert pair.key_for(1, "x") == pair.key_for(a=1, b="x") == pair.key_for(1, b="x")
    assert pair.key_for(1, "x") != pair.key_for(1, "y")

    @cache.cached(ttl=60)
    async def defaults(a: int, b: int = 2) -> int:
        return a + b

    assert defaults.spec.plain_names is None  # defaults: bind applies them
    assert defaults.key_for(1) == defaults.key_for(1, 2)


async def test_direct_node_batches_follow_a_stale_slot_map(tiercache_stack: Any) -> None:
    """GET/SET batches go straight to the slot owners from the client's slot map; when that
    map is stale (a resharding or failover), the nodes answer MOVED and those commands go
    through redis-py's dispatch, which follows the redirect and refreshes the map."""
    from redis.crc import key_slot

    tier = RedisTier(tiercache_stack.redis_url, ttl=60)
    try:
        for _ in range(100):  # connected, slot map loaded (the first call may time out here)
            await tier.set("direct:warm", 1)
            if await tier.get("direct:warm") == 1:
                break
        keys = [f"direct:{i}" for i in range(60)]
        await tier.set_many({k: i for i, k in enumerate(keys)})
        client = await tier._client()
        slots = client.nodes_manager.slots_cache  # type: ignore[union-attr]
        primaries = client.get_primaries()  # type: ignore[union-attr]
        moved = {key_slot(k.encode()) for k in keys[:30]}
        real = {s: slots[s][0] for s in moved}
        for s in moved:  # as if these slots had moved to another master
            slots[s] = [next(n for n in primaries if n.name != real[s].name)]
        assert await tier.get_many(keys) == {k: i for i, k in enumerate(keys)}
        for s in moved:
            slots[s] = [next(n for n in primaries if n.name != real[s].name)]
        await tier.set_many({k: -i for i, k in enumerate(keys)})  # writes too
        assert (await tier.get_entry(keys[0])) is not MISSING  # single GET: the same path
        assert await tier.get_many(keys) == {k: -i for i, k in enumerate(keys)}
        fresh = client.nodes_manager.slots_cache  # type: ignore[union-attr]  # may be rebuilt
        assert all(fresh[s][0].name == real[s].name for s in moved)  # map refreshed
        assert tier.stats()["errors"] == 0
    finally:
        await tier.delete_pattern("direct:*")
        await tier.close()


@pytest.mark.timeout(120)
async def test_coalesced_reads_keep_serving_the_live_masters_while_one_is_dead() -> None:
    """A batch spans every master. With one master dead, the first batches fail and send
    the tier into its per-node mode: the live masters' keys are L2 hits again, the dead
    one's are skipped by its breaker (loaded, never an error to the caller)."""
    import redis as redis_py

    from tiercache.local import LocalStack
    from tiercache.tiers._breaker import CircuitBreaker

    with LocalStack(redis_masters=3, pg_shards=0) as stack:
        for host, port in stack.redis_nodes:
            with redis_py.Redis(host=host, port=port) as client:
                client.config_set("cluster-require-full-coverage", "no")
        host, port = stack.redis_nodes[1]
        victim = f"{host}:{port}"
        loads: list[int] = []

        def make() -> TierCache:  # no L1: every read asks L2
            return TierCache(l1=None, l2=RedisTier(
                stack.redis_url, ttl=60, breaker=CircuitBreaker(3, reset_timeout=30.0)),
                namespace="deadnode", bus=False)

        writer, reader = make(), make()
        for cache in (writer, reader):
            @cache.cached(ttl=60, name="value")
            async def value(n: int) -> int:
                loads.append(n)
                return n * 10
            cache.value = value  # type: ignore[attr-defined]
        keys = list(range(300))
        assert await asyncio.gather(*(writer.value(n) for n in keys)) == [  # type: ignore[attr-defined]
            n * 10 for n in keys]
        client = await reader.l2._client()  # type: ignore[union-attr]
        await client.initialize()
        dead = {n for n in keys
                if client.nodes_manager.slots_cache[  # type: ignore[union-attr]
                    key_slot(value_key(reader, n).encode())][0].name == victim}
        assert 0 < len(dead) < len(keys)
        stack.kill_redis_node(1)
        try:
            for _ in range(3):  # the first rounds find the dead node and open its breaker
                assert await asyncio.gather(*(reader.value(n) for n in keys)) == [  # type: ignore[attr-defined]
                    n * 10 for n in keys]
            loads.clear()
            assert await asyncio.gather(*(reader.value(n) for n in keys)) == [  # type: ignore[attr-defined]
                n * 10 for n in keys]
            assert set(loads) == dead  # the live masters' keys came from L2
            assert reader.stats()["l2"]["breakers"][victim] == "open"
        finally:
            await reader.aclose()
            await writer.aclose()


def value_key(cache: TierCache, n: int) -> str:
    return cache.full_key(cache.value.key_for(n))  # type: ignore[attr-defined]
