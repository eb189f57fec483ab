"""The e2e bench suite runs end to end on tiny counts: every contestant has a row (measured
or reported unavailable, never skipped), values are checked, single-flight holds.

Speed is reported by the suite, never asserted here.
"""

from __future__ import annotations

from typing import Any

import pytest

from tiercache.bench.base import BenchContext
from tiercache.bench.suites import _e2e_workload as wl
from tiercache.bench.suites import e2e

pytestmark = pytest.mark.asyncio(loop_scope="session")

CONTESTANTS = ("tiercache", "tiercache+refresh", "tiercache+l3", "cacheme", "cashews",
               "cashews+client_side", "aiocache", "no cache", "tiercache+batch", "no cache+batch")


@pytest.mark.timeout(120)
async def test_e2e_suite_smallest(tiercache_stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERCACHE_BENCH_PEER_SETUP", "0")  # never build cacheme's venv here
    ctx = BenchContext(quick=True, redis_url=tiercache_stack.redis_url,
                       pg_dsns=dict(tiercache_stack.pg_dsns))
    rows = await e2e.run(ctx, requests=1500, concurrency=100, keys=3000)
    by_name = {r["name"]: r for r in rows}
    title = "Postgres loader, 100 concurrency"
    for key in CONTESTANTS:
        row = by_name[f"{title}: {key}"]  # each one measured or reported, none dropped
        if row.get("status") == "unavailable":
            assert row["data"]["reason"], row
            continue
        data = row["data"]
        assert 0 < data["completed"] <= 1500 and data["p50_ns"] <= data["p99_ns"]
        assert data["loads"] >= data["distinct_keys"] or key == "tiercache+l3"
    ours = by_name[f"{title}: tiercache"]["data"]
    assert ours["loads"] == ours["distinct_keys"]  # single-flight, nothing evicted or expired
    assert set(ours["hit_ratio"]) == {"l1", "l2", "joined", "loader"}
    assert abs(sum(ours["hit_ratio"].values()) - 1) < 1e-9  # each request: one of them
    judged = by_name[f"{title}: tiercache+batch vs best peer"]
    assert judged["target"] and judged["ok"] in (True, False)
    plain = by_name[f"{title}: tiercache vs best peer"]  # shown beside it, not judged
    assert plain["target"] is None and plain["value"] > 0
    batch = by_name[f"{title}: tiercache+batch"]["data"]
    assert batch["loads"] == batch["distinct_keys"]  # batched, still each key once
    assert 0 < batch["pg_queries"] < batch["loads"]  # fewer loader calls than keys
    assert by_name["workload"]["data"]["scenarios"][0]["requests"] == 1500
    if hasattr(ctx, "charts"):  # the framework's chart API
        kinds = {c["kind"] for c in ctx.charts}
        assert {"cdf", "lines"} <= kinds  # latency CDF, time series (hit ratio per tier)


async def test_drive_counts_wrong_values() -> None:
    """A contestant returning a wrong value is caught (the suite turns it into a failure)."""
    w = wl.Workload(requests=300, keys=50, concurrency=10, budget_s=30.0, sample_s=0.01)
    keys = wl.key_sequence(w)
    assert keys == wl.key_sequence(w) and set(keys) <= set(range(1, 51))  # seeded

    async def get(key: int) -> dict[str, Any]:
        value = wl.expected(key)
        return value if key != keys[7] else {**value, "score": -1}

    result = await wl.drive(get, keys, w, lambda: {"loads": 0.0})
    assert result.completed == 300 and not result.timed_out
    assert result.mismatches == keys.count(keys[7]) and str(keys[7]) in result.first_mismatch
    assert len(result.latencies_ns) == 300 and result.series[-1]["done"] == 300
