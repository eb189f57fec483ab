"""The e2e workload, shared by every contestant (and by the cacheme worker process).

Only the standard library and asyncpg: the cacheme contestant runs this very module in a
separate virtualenv (cacheme 0.3 pins theine < 0.4, cashews < 6, pydantic < 2, redis < 5,
which cannot live beside this project's peers), so it must not import tiercache.

The shape is the cacheme benchmark's (``benchmarks/trace.py`` there): ``Zipf(1.001, 10,
200_000)`` -- a Zipf-Mandelbrot law ``P(k) ~ 1 / (k + 10) ** 1.001`` over 200k keys, 200k
requests (about 56k distinct keys) -- served by N workers pulling from one shared queue.
Every contestant gets the same key sequence (same seed), the same loader and the same
worker loop; the values it returns are checked against the ground truth after the timed run
(keeping the check out of the timed loop keeps it from diluting the differences measured).
"""

from __future__ import annotations

import array
import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "TABLE", "PgBatchLoader", "PgLoader", "RunResult", "SleepLoader", "Workload", "drive",
    "expected", "key_sequence",
]

TABLE = "tcbench_e2e_users"
SELECT = f"SELECT id, name, score FROM {TABLE} WHERE id = $1"
SELECT_MANY = f"SELECT id, name, score FROM {TABLE} WHERE id = ANY($1::int[])"

Value = dict[str, Any]
Get = Callable[[int], Awaitable[Value]]


@dataclass(frozen=True)
class Workload:
    """What every contestant runs: ``requests`` draws over ``keys`` ids, ``concurrency``
    workers, at most ``budget_s`` seconds (then the run stops and reports how far it got)."""

    requests: int = 200_000
    keys: int = 200_000
    zipf_s: float = 1.001
    zipf_v: float = 10.0
    seed: int = 20_260_412
    concurrency: int = 1000
    budget_s: float = 10.0
    sample_s: float = 0.1  # time-series resolution
    grace_s: float = 2.0  # after the budget, requests in flight get this long, then are cancelled

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def key_sequence(w: Workload) -> list[int]:
    """The request keys, deterministic in ``w`` (ids 1..keys; ranks shuffled onto ids so
    the hot keys spread over the shards and the cluster's slots)."""
    weights = ((rank + w.zipf_v) ** -w.zipf_s for rank in range(1, w.keys + 1))
    cum = list(itertools.accumulate(weights))
    rng = random.Random(w.seed)
    ids = list(range(1, w.keys + 1))
    rng.shuffle(ids)
    ranks = rng.choices(range(w.keys), cum_weights=cum, k=w.requests)
    return [ids[r] for r in ranks]


def expected(key: int) -> Value:
    """The ground truth: the row the table holds for ``key``."""
    return {"id": key, "name": f"user-{key}", "score": (key * 7919) % 10007}


class PgLoader:
    """One primary-key SELECT on the shard that owns the key (plain asyncpg pools).

    ``route[key]`` is the shard name, precomputed from tiercache's HashRing by the parent so
    the cacheme worker routes exactly alike without importing tiercache.
    """

    kind = "pg"

    def __init__(self, pools: Mapping[str, Any], route: Sequence[str]) -> None:
        self.pools, self.route = pools, route
        self.calls = 0

    async def __call__(self, key: int) -> Value:
        self.calls += 1
        row = await self.pools[self.route[key]].fetchrow(SELECT, key)
        return {"id": row[0], "name": row[1], "score": row[2]}


class PgBatchLoader:
    """The same rows for a list of keys: one ``WHERE id = ANY($1)`` per shard, in parallel
    (for a cache that can batch its misses). ``calls`` counts keys loaded, like the single
    loader's, so loads per distinct key compare; ``batches`` counts the queries' rounds."""

    kind = "pg"

    def __init__(self, pools: Mapping[str, Any], route: Sequence[str]) -> None:
        self.pools, self.route = pools, route
        self.calls = 0
        self.batches = 0

    async def __call__(self, keys: list[int]) -> dict[int, Value]:
        self.calls += len(keys)
        self.batches += 1
        by_shard: dict[str, list[int]] = {}
        for key in keys:
            by_shard.setdefault(self.route[key], []).append(key)
        parts = await asyncio.gather(*(self.pools[shard].fetch(SELECT_MANY, part)
                                       for shard, part in by_shard.items()))
        return {row[0]: {"id": row[0], "name": row[1], "score": row[2]}
                for rows in parts for row in rows}


class SleepLoader:
    """The cacheme benchmark's loader: sleeps (100 ms) and returns the value."""

    kind = "sleep"

    def __init__(self, seconds: float = 0.1) -> None:
        self.seconds = seconds
        self.calls = 0

    async def __call__(self, key: int) -> Value:
        self.calls += 1
        await asyncio.sleep(self.seconds)
        return expected(key)


@dataclass
class RunResult:
    """What one timed run produced; plain data so the cacheme worker can ship it as JSON."""

    requested: int
    completed: int
    wall_s: float
    latencies_ns: list[int]
    # distinct keys among the requests started (completed or still in flight at the bound: a
    # load for either counts): the fewest loads possible
    distinct_keys: int
    mismatches: int
    first_mismatch: str
    series: list[dict[str, float]] = field(default_factory=list)  # (t, done, counters...)
    timed_out: bool = False
    cancelled: int = 0  # requests still in flight ``grace_s`` after the budget
    cpu_s: float = 0.0  # this process's CPU time during the run: robust on a busy machine

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def drive(get: Get, keys: Sequence[int], w: Workload,
                counters: Callable[[], Mapping[str, float]]) -> RunResult:
    """Run ``get`` over ``keys`` with ``w.concurrency`` workers; check every value afterwards.

    ``counters()`` (loader calls, hits per tier, ...) is sampled every ``w.sample_s`` for the
    time series. A worker stops taking requests once ``w.budget_s`` has passed; requests
    still in flight ``w.grace_s`` later are cancelled (and not counted as completed).
    """
    n = len(keys)
    lat = array.array("q", bytes(8 * n))
    results: list[Value | None] = [None] * n
    began = bytearray(n)
    clock = time.perf_counter_ns
    state = {"next": 0, "started": 0, "done": 0}
    cpu0 = time.process_time()
    start = clock()
    deadline = start + int(w.budget_s * 1e9)

    async def worker() -> None:
        st = state
        while True:
            j = st["next"]
            if j >= n:
                return
            st["next"] = j + 1
            t0 = clock()
            if t0 > deadline:
                return
            st["started"] += 1
            began[j] = 1
            value = await get(keys[j])
            lat[j] = clock() - t0
            results[j] = value
            st["done"] += 1

    series: list[dict[str, float]] = []

    def sample() -> None:
        series.append({"t": (clock() - start) / 1e9, "done": float(state["done"]),
                       "started": float(state["started"]),
                       **{k: float(v) for k, v in counters().items()}})

    async def sampler() -> None:
        while True:
            sample()
            await asyncio.sleep(w.sample_s)

    sampling = asyncio.ensure_future(sampler())
    workers = [asyncio.ensure_future(worker()) for _ in range(w.concurrency)]
    cancelled = 0
    try:
        _, pending = await asyncio.wait(workers, timeout=w.budget_s + w.grace_s)
        if pending:  # 10k workers can hold 10k misses at the deadline: bound the drain
            cancelled = len(pending)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for task in workers:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        wall = (clock() - start) / 1e9
        cpu = time.process_time() - cpu0
        sampling.cancel()
    sample()
    done = [j for j in range(n) if results[j] is not None]
    mismatches, first = 0, ""
    for j in done:
        value = results[j]
        if value != expected(keys[j]):
            mismatches += 1
            if not first:
                first = f"key {keys[j]}: got {value!r:.120}, expected {expected(keys[j])!r}"
    return RunResult(
        requested=n, completed=len(done), wall_s=wall, latencies_ns=[lat[j] for j in done],
        distinct_keys=len({keys[j] for j in range(n) if began[j]}), mismatches=mismatches,
        first_mismatch=first, series=series, timed_out=len(done) < n, cancelled=cancelled,
        cpu_s=cpu)
