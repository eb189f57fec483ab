"""HashRing vs uhashring (ketama): ``pytest benchmarks/bench_ring.py --benchmark-only``.

The same placement is asserted before timing; each round routes 10k keys (the keys of
``tiercache bench --suite ring``, :func:`tiercache.bench.suites.ring.make_keys`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import uhashring

from tiercache import HashRing
from tiercache.bench.suites.ring import make_keys

NODES = {"s1": 1, "s2": 2, "s3": 1, "s4": 3}
KEYS = make_keys("str", 10_000)
OURS = HashRing(NODES)
THEIRS = uhashring.HashRing({n: {"weight": w} for n, w in NODES.items()}, hash_fn="ketama")
EXPECTED = [THEIRS.get_node(k) for k in KEYS]

ROUTERS: dict[str, Callable[[], list[str]]] = {
    "uhashring-get_node": lambda: list(map(THEIRS.get_node, KEYS)),
    "tiercache-get_node": lambda: list(map(OURS.get_node, KEYS)),
    "tiercache-get_node_many": lambda: OURS.get_node_many(KEYS),
}


@pytest.mark.benchmark(group="ring-route-10k-keys")
@pytest.mark.parametrize("name", list(ROUTERS))
def test_route_10k_keys(benchmark: Any, name: str) -> None:
    route = ROUTERS[name]
    assert route() == EXPECTED
    assert benchmark(route) == EXPECTED
