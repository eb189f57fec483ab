"""``tiercache bench --suite ring``: HashRing vs uhashring's ketama ring, same placement.

Placement is compared key by key before anything is timed. Per-key times are best-of-N
over whole passes of 100k keys (the least noisy estimator for a CPU-bound loop on a shared
machine), the passes interleaved; both sides are timed with the same thin harness,
``list(map(get_node, keys))``, whose own cost (a few ns per key) is in both figures.

Both figures are judged as ratios against uhashring per key, not in absolute ns: a batch
lookup's ns/key depends on the machine's vector unit (AVX-512 vs AVX2 alone doubles it; the
JSON file records the CPU flags).
"""

from __future__ import annotations

import random
from typing import Any

import uhashring

from tiercache.bench.base import BenchContext, Row, SuiteError, compare_row
from tiercache.bench.timing import rounds_interleaved
from tiercache.sharding.ring import HashRing

__all__ = ["DESCRIPTION", "NAME", "NEEDS", "SETUPS", "make_keys", "run"]

NAME = "ring"
DESCRIPTION = "HashRing get_node / get_node_many vs uhashring ketama (same placement checked)"
NEEDS: tuple[str, ...] = ()

GET_NODE_MIN_SPEEDUP = 10.0
MANY_MIN_SPEEDUP = 25.0  # get_node_many per key vs uhashring get_node per key

SETUPS: dict[str, dict[str, int]] = {
    "3 shards": {"s1": 1, "s2": 1, "s3": 1},
    "10 weighted": {f"s{i}": 1 + i % 4 for i in range(10)},
}


def make_keys(kind: str, n: int) -> list[Any]:
    """Deterministic keys (``"str"``: ``user:<n>``, ``"int"``); shared with benchmarks/."""
    rng = random.Random(20261122)
    if kind == "str":
        return [f"user:{rng.randrange(10**12)}" for _ in range(n)]
    return [rng.randrange(2**40) for _ in range(n)]


def _check_placement(ring: HashRing, reference: uhashring.HashRing, keys: list[Any]) -> None:
    ours = ring.get_node_many(keys)
    theirs = [reference.get_node(k) for k in keys]
    if ours != theirs:
        bad = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b)
        raise SuiteError(f"placement differs from uhashring for key {keys[bad]!r}")
    if [ring.get_node(k) for k in keys[:10_000]] != theirs[:10_000]:
        raise SuiteError("get_node and get_node_many disagree")


def _time_lookups(
    ring: HashRing, reference: uhashring.HashRing, keys: list[Any], repeats: int
) -> dict[str, list[float]]:
    """ns per key of each way of routing ``keys``, one figure per pass (interleaved)."""
    ours, theirs, many = ring.get_node, reference.get_node, ring.get_node_many
    per_pass = rounds_interleaved(
        {
            "tiercache get_node": lambda: list(map(ours, keys)),
            "tiercache get_node_many": lambda: many(keys),
            "uhashring get_node": lambda: list(map(theirs, keys)),
        },
        1, repeats,
    )
    return {name: [ns / len(keys) for ns in v] for name, v in per_pass.items()}


async def run(ctx: BenchContext) -> list[Row]:
    n_keys = ctx.scale(100_000, 20_000)
    repeats = ctx.scale(8, 4)
    rows: list[Row] = []
    steps = len(SETUPS) * 2
    with ctx.progress("ring: placement check + timing", steps) as bar:
        for label, weights in SETUPS.items():
            ring = HashRing(weights)
            reference = uhashring.HashRing(
                {n: {"weight": w} for n, w in weights.items()}, hash_fn="ketama"
            )
            for kind in ("str", "int"):
                keys = make_keys(kind, n_keys)
                _check_placement(ring, reference, keys)
                got = _time_lookups(ring, reference, keys, repeats)
                data = {"keys": n_keys}
                rows.append(compare_row(
                    f"get_node, {label}, {kind} keys", got, ours="tiercache get_node",
                    theirs="uhashring get_node", theirs_label="uhashring",
                    min_speedup=GET_NODE_MIN_SPEEDUP, data=data))
                many = compare_row(
                    f"get_node_many({n_keys // 1000}k), {label}, {kind} keys", got,
                    ours="tiercache get_node_many", theirs="uhashring get_node",
                    theirs_label="uhashring get_node per key", min_speedup=MANY_MIN_SPEEDUP,
                    data=data)
                many["data"]["ns_per_key"] = many["data"]["ours_ns"]
                rows.append(many)
                ctx.cdf(f"{label}, {kind} keys: ns per key (one figure per "
                        f"{n_keys // 1000}k-key pass)", got)
                bar.advance()
    return rows
