"""The journal's group commit on a real Redis Cluster: batches that return together hand the
lead on once each (the in-flight count never leaks), putters woken together share one append,
a lone put never waits for company, and a gathering leader that is cancelled sends nothing.

The append's round trip is held at a gate (an asyncio.Event in front of the real script
call) only to decide when batches return; every entry still goes to Redis. Counted, never
timed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.cluster import RedisCluster

from tests._store_helpers import new_cache
from tiercache import Store, WriteBehind
from tiercache._groupcommit import MAX_INFLIGHT, GroupCommit


async def _nothing(batch: Any) -> None:
    return None


GATES: list[Gate] = []  # opened at teardown: a failed test must not leave an append held


class Gate:
    """Holds every append of ``gc`` until opened; counts the appends that reached it. Only
    appends: the store's upkeep (heartbeat, gauges, claims) runs journal calls too, and
    those pass (holding one would count it as an append and stall the store's close)."""

    def __init__(self, gc: GroupCommit) -> None:
        self.open = asyncio.Event()
        self.entered = 0
        GATES.append(self)
        run, plan_of = gc.journal.run_async, gc.journal.append_plan
        appends: set[int] = set()

        def marked(payloads: list[bytes]) -> Any:
            plan = plan_of(payloads)
            appends.add(id(plan))
            return plan

        async def gated(plan: Any) -> Any:
            if id(plan) in appends:
                appends.discard(id(plan))
                self.entered += 1
                await self.open.wait()
            return await run(plan)

        gc.journal.append_plan = marked  # type: ignore[method-assign]
        gc.journal.run_async = gated  # type: ignore[method-assign]

    async def reached(self, n: int) -> None:
        for _ in range(10_000):
            if self.entered >= n:
                return
            await asyncio.sleep(0)
        raise AssertionError(f"{self.entered} appends reached the gate, expected {n}")


@pytest.fixture
async def store(tiercache_stack: Any) -> AsyncIterator[Store]:
    cache = new_cache(tiercache_stack.redis_url)
    st = Store(cache, "gc", loader=lambda k: None, writer=_nothing,
               policy=WriteBehind(max_delay=60, batch_size=100_000))  # no flush (and no ack
    # deleting stream entries) before teardown: the tests count what the stream holds
    yield st
    for gate in GATES:
        gate.open.set()
    GATES.clear()
    await asyncio.wait_for(st.aclose(), 30)
    await cache.aclose()


def _gc(store: Store) -> GroupCommit:
    assert store.engine is not None
    return store.engine.gc


def _xlen(url: str, store: Store) -> int:
    client = RedisCluster.from_url(url)
    try:
        return int(client.xlen(_gc(store).journal.stream))
    finally:
        client.close()


def _payload(gc: GroupCommit, k: int) -> list[bytes]:
    return [gc.journal.encode("p", k, k)]


async def test_batches_returning_together_hand_the_lead_on_once(
        tiercache_stack: Any, store: Store) -> None:
    gc = _gc(store)
    await gc.append_async(_payload(gc, -1))  # script loaded, stream and group exist
    gate = Gate(gc)
    leaders = []
    for i in range(MAX_INFLIGHT):  # one batch each, all in flight
        leaders.append(asyncio.create_task(gc.append_async(_payload(gc, i))))
        await gate.reached(i + 1)
    waiters = [asyncio.create_task(gc.append_async(_payload(gc, 100 + i))) for i in range(2)]
    for _ in range(3):
        await asyncio.sleep(0)
    assert gate.entered == MAX_INFLIGHT  # the waiters queue behind a full window
    gate.open.set()  # every batch returns in the same loop turn
    ids = await asyncio.wait_for(asyncio.gather(*leaders, *waiters), 30)
    assert len({i for part in ids for i in part}) == MAX_INFLIGHT + 2
    assert gc._inflight == 0  # was MAX_INFLIGHT - 1: a waiter handed the lead once per batch
    more = await asyncio.wait_for(asyncio.gather(
        *(gc.append_async(_payload(gc, 200 + i)) for i in range(2 * MAX_INFLIGHT))), 30)
    assert all(len(part) == 1 for part in more) and gc._inflight == 0
    assert _xlen(tiercache_stack.redis_url, store) == 1 + MAX_INFLIGHT + 2 + 2 * MAX_INFLIGHT


async def _one_append_held(gc: Any) -> tuple[Gate, asyncio.Task[Any]]:
    """The journal warmed up, then one append sent and held at the gate (in flight)."""
    await gc.append_async(_payload(gc, -1))
    gate = Gate(gc)
    first = asyncio.create_task(gc.append_async(_payload(gc, 0)))
    await gate.reached(1)
    return gate, first


async def test_putters_woken_together_share_one_append(
        tiercache_stack: Any, store: Store) -> None:
    gc = _gc(store)
    gate, first = await _one_append_held(gc)
    before = gc.batches
    group = [asyncio.create_task(gc.append_async(_payload(gc, 1 + i))) for i in range(10)]
    await gate.reached(2)  # the first of the group gathers one loop turn, then sends
    for _ in range(5):
        await asyncio.sleep(0)
    assert gate.entered == 2  # was 4: the first three each sent an append of their own
    gate.open.set()
    await asyncio.wait_for(asyncio.gather(first, *group), 30)
    assert gc.batches - before == 2 and gc.gathers == 1 and gc._inflight == 0
    assert _xlen(tiercache_stack.redis_url, store) == 12


async def test_a_lone_put_never_waits_for_company(tiercache_stack: Any, store: Store) -> None:
    gc = _gc(store)
    for k in range(20):
        await store.put(k, k)
    assert gc.gathers == 0 and gc.batches == 20 and gc.appended == 20
    assert _xlen(tiercache_stack.redis_url, store) >= 20


async def test_concurrent_putters_share_appends_and_leave_nothing_in_flight(
        store: Store) -> None:
    gc = _gc(store)

    async def putter(t: int) -> None:
        for i in range(10):
            await store.put(t * 10 + i, i)

    await asyncio.wait_for(asyncio.gather(*(putter(t) for t in range(100))), 60)
    assert gc.appended == 1000 and gc._inflight == 0 and gc._busy == 0
    assert gc.appended / gc.batches >= 20
    assert await store.get(999) == 9


async def test_a_cancelled_gathering_leader_sends_nothing(
        tiercache_stack: Any, store: Store) -> None:
    gc = _gc(store)
    gate, first = await _one_append_held(gc)
    gatherer = asyncio.create_task(gc.append_async(_payload(gc, 1)))
    await asyncio.sleep(0)  # it joined and waits its loop turn
    assert gc.gathers == 1
    gatherer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gatherer
    gate.open.set()
    await asyncio.wait_for(first, 30)
    assert gc._inflight == 0 and not gc._pending and gate.entered == 1
    assert _xlen(tiercache_stack.redis_url, store) == 2
    assert len(await gc.append_async(_payload(gc, 2))) == 1
