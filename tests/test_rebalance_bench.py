"""The rebalance bench suite runs end to end (--quick) and its correctness row holds.

Speed rows are reported, never asserted (figures belong to benchmarks, not tests).
"""

from __future__ import annotations

from typing import Any

import pytest

from tiercache.bench.base import BenchContext
from tiercache.bench.suites import rebalance

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.mark.timeout(600)
async def test_rebalance_suite_quick(tiercache_stack: Any) -> None:
    rows = await rebalance.run(BenchContext(quick=True, pg_dsns=tiercache_stack.pg_dsns))
    by_name = {r["name"].split(" (")[0]: r for r in rows}
    assert set(by_name) == {"copy rate, idle", "plan rows == rows moved", "verify vs copy",
                            "placement check of every row", "whole move, idle",
                            "copy rate, 4 writers",
                            "write fence", "writers' p99 before / during the move"}
    assert by_name["plan rows == rows moved"]["ok"] is True  # per table, exactly
    assert by_name["copy rate, idle"]["data"]["moved"] > 0
