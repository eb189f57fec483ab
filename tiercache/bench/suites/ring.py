"""``tiercache bench --suite ring``: HashRing vs uhashring's ketama ring, same placement.

Placement is compared key by key before anything is timed. Per-key times are best-of-N
over whole passes (the least noisy estimator for a CPU-bound loop on a shared machine);
both sides are timed with the same thin harness, ``list(map(get_node, keys))``, whose own
cost (a few ns per key) is in both figures.
"""

from __future__ import annotations

import random
from typing import Any

import uhashring

from tiercache.bench.base import BenchContext, Row, SuiteError, best_ns_interleaved, ratio_row
from tiercache.sharding.ring import HashRing

NAME = "ring"
DESCRIPTION = "HashRing get_node / get_node_many vs uhashring ketama (same placement checked)"
NEEDS: tuple[str, ...] = ()

GET_NODE_MIN_SPEEDUP = 10.0
MANY_MAX_NS = 60.0

SETUPS: dict[str, dict[str, int]] = {
    "3 shards": {"s1": 1, "s2": 1, "s3": 1},
    "10 weighted": {f"s{i}": 1 + i % 4 for i in range(10)},
}


def _keys(kind: str, n: int) -> list[Any]:
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
) -> dict[str, float]:
    ours, theirs, many = ring.get_node, reference.get_node, ring.get_node_many
    return best_ns_interleaved(
        {
            "ours": lambda: list(map(ours, keys)),
            "theirs": lambda: list(map(theirs, keys)),
            "many": lambda: many(keys),
        },
        len(keys),
        repeats,
    )


async def run(ctx: BenchContext) -> list[Row]:
    n_keys = 100_000
    repeats = ctx.scale(7, 3)
    rows: list[Row] = []
    steps = len(SETUPS) * 2
    with ctx.progress("ring: placement check + timing", steps) as bar:
        for label, weights in SETUPS.items():
            ring = HashRing(weights)
            reference = uhashring.HashRing(
                {n: {"weight": w} for n, w in weights.items()}, hash_fn="ketama"
            )
            for kind in ("str", "int"):
                keys = _keys(kind, n_keys)
                _check_placement(ring, reference, keys)
                best = _time_lookups(ring, reference, keys, repeats)
                ours_ns, theirs_ns, many_ns = best["ours"], best["theirs"], best["many"]
                rows.append(ratio_row(
                    f"get_node, {label}, {kind} keys", ours_ns, theirs_ns, "uhashring",
                    min_speedup=GET_NODE_MIN_SPEEDUP, data={"keys": n_keys},
                ))
                rows.append({
                    "name": f"get_node_many(100k), {label}, {kind} keys",
                    "summary": f"{many_ns:.1f} ns/key ({theirs_ns / many_ns:.0f}x faster than "
                               f"uhashring get_node in a loop)",
                    "target": f"<= {MANY_MAX_NS:g} ns/key",
                    "ok": many_ns <= MANY_MAX_NS,
                    "data": {"ns_per_key": many_ns, "uhashring_ns": theirs_ns, "keys": n_keys},
                })
                bar.advance()
    return rows
