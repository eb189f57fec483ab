"""The l3 bench suite runs end to end (--quick); its correctness rows hold.

Speed rows are reported, never asserted (figures belong to benchmarks, not tests): only the
stale-read row (0 stale reads during the 95/5 workload) and the presence of every row are.
"""

from __future__ import annotations

from typing import Any

import pytest

from tiercache.bench.base import BenchContext
from tiercache.bench.suites import l3

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.mark.timeout(600)
async def test_l3_suite_quick(tiercache_stack: Any) -> None:
    ctx = BenchContext(quick=True, pg_dsns=dict(tiercache_stack.pg_dsns),
                       redis_url=tiercache_stack.redis_url)
    rows = await l3.run(ctx)
    names = [r["name"] for r in rows]
    assert any(n.startswith("memory store hit vs Postgres: point read") for n in names)
    assert any(n.startswith("redis store hit vs Postgres: query >= 1 ms") for n in names)
    assert any(n.startswith("95/5 Zipf read/write") for n in names)
    assert any(n.startswith("eviction: database time saved") for n in names)
    stale = next(r for r in rows if r["name"].startswith("95/5 Zipf workload: stale reads"))
    assert stale["ok"] is True and stale["value"] == 0
    assert ctx.charts  # latency CDFs recorded
