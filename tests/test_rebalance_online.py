"""Rebalancing while writers run, and crashes (exceptions and SIGKILL) followed by resume().

The end state is checked row by row against the writers' reference: every row exists once,
on its new-ring owner, with the content the writers last wrote; nothing lost or duplicated.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
from rebalance_helpers import (
    Writers,
    all_rows,
    create_schema,
    fresh_dsns,  # noqa: F401  (the dsns fixture)
    load,
    misplaced,
    open_pool,
    snapshot,
)

from tiercache.sharding.rebalance import Rebalancer
from tiercache.sharding.ring import HashRing

pytestmark = pytest.mark.asyncio(loop_scope="session")
OLD = ["s1", "s2", "s3"]
NEW = HashRing(["s1", "s2", "s3", "s4"])


class Crash(Exception):
    """Stands in for the rebalancer dying at a given step."""


async def _check_end_state(pool: Any, writers: Writers) -> None:
    users = await snapshot(pool, "users", "id")
    assert misplaced(users, NEW) == []
    assert all_rows(users) == writers.expected()  # 0 lost, 0 duplicated, latest content


@pytest.mark.timeout(600)
async def test_add_shard_while_writers_insert_update_delete(dsns: dict[str, str]) -> None:
    await create_schema(dsns, OLD)
    pool = await open_pool(dsns, HashRing(OLD))
    try:
        await load(pool, users=200_000, orders=0)
        writers = Writers(pool, users=200_000, tasks=4)
        rb = Rebalancer(pool, {"users": "id"})
        plan = await rb.plan(add=["s4"])
        writers.start()
        await asyncio.sleep(1.0)  # latency before the move
        started = time.monotonic()
        report = await rb.apply(plan, batch_size=5000)
        ended = time.monotonic()
        await asyncio.sleep(0.3)
        await writers.stop()
        await _check_end_state(pool, writers)
        assert report.caught_up > 0 and writers.ops > 100
        assert sum(report.copied.values()) >= plan.rows_of("users") * 0.9
        print(f"\nrebalance 200k rows (+{writers.ops} writer ops): {report.summary()}; "
              f"writers p99 before {1000 * writers.p99(until=started):.1f} ms, during "
              f"{1000 * writers.p99(since=started, until=ended):.1f} ms, "
              f"{writers.retries} KeyMoved retries")
    finally:
        await pool.close()


@pytest.mark.parametrize("event", ["batch", "catch_up", "caught_up", "fenced", "flipped"])
async def test_crash_then_resume_completes(dsns: dict[str, str], event: str) -> None:
    await create_schema(dsns, OLD)
    pool = await open_pool(dsns, HashRing(OLD))
    try:
        await load(pool, users=20_000, orders=0)
        writers = Writers(pool, users=20_000, tasks=2)
        rb = Rebalancer(pool, {"users": "id"})
        plan = await rb.plan(add=["s4"])
        seen = {"batch": 0}

        def crash(e: str) -> None:
            if e == "batch":
                seen["batch"] += 1
            if e == event and (e != "batch" or seen["batch"] == 3):
                raise Crash(e)

        writers.start()
        with pytest.raises(Crash):
            await rb.apply(plan, batch_size=1000, hook=crash)
        await asyncio.sleep(0.2)  # writers keep going while nobody rebalances
        fresh = Rebalancer(pool, {"users": "id"})  # a new process would build a new one
        report = await fresh.resume(batch_size=1000)
        assert report is not None and report.job == plan.job
        await asyncio.sleep(0.1)
        await writers.stop()
        await _check_end_state(pool, writers)
        assert (await fresh.status() or {})["phase"] == "done"
        assert (await fresh.verify()).ok
    finally:
        await pool.close()


CHILD = textwrap.dedent("""
    import asyncio, json, os, signal, sys
    from tiercache.sharding.pool import create_sharded_pool
    from tiercache.sharding.rebalance import Rebalancer
    from tiercache.sharding.ring import HashRing

    async def main():
        dsns, event = json.loads(sys.argv[1]), sys.argv[2]
        pool = create_sharded_pool(dsns, ring=HashRing(["s1", "s2", "s3"]), min_size=1,
                                   max_size=4)
        await pool
        rb = Rebalancer(pool, {"users": "id"})
        plan = await rb.plan(add=["s4"])
        count = {"batch": 0}

        def hook(e):
            if e == "batch":
                count["batch"] += 1
            if e == event and (e != "batch" or count["batch"] == 3):
                print("killing at", e, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

        await rb.apply(plan, batch_size=1000, hook=hook)

    asyncio.run(main())
""")


@pytest.mark.parametrize("event", ["batch", "catch_up", "flipped"])
async def test_sigkill_then_resume_completes(dsns: dict[str, str], event: str) -> None:
    await create_schema(dsns, OLD)
    pool = await open_pool(dsns, HashRing(OLD))
    try:
        await load(pool, users=20_000, orders=0)
        writers = Writers(pool, users=20_000, tasks=2)
        writers.start()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, json.dumps(dsns), event,
            stdout=subprocess.PIPE, env=dict(os.environ))
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == -signal.SIGKILL, out
        assert b"killing at " + event.encode() in out
        if event == "flipped":  # the dead process flipped; this one learns it from the shards
            from tiercache.sharding.rebalance import load_topology

            assert await load_topology(pool) == 1
        rb = Rebalancer(pool, {"users": "id"})
        report = await rb.resume(batch_size=1000)
        assert report is not None
        await asyncio.sleep(0.1)
        await writers.stop()
        await _check_end_state(pool, writers)
        assert (await rb.status() or {})["phase"] == "done"
    finally:
        await pool.close()
