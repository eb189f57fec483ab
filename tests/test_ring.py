"""HashRing: uhashring ketama compatibility, the stable mode, arcs/diff, errors; both impls."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
import uhashring
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiercache._impl import both
from tiercache.sharding.ring import RING_SIZE, HashRing, ring_class

IMPLS = both("_ring")


@pytest.fixture(params=IMPLS, ids=lambda m: m.__name__.rsplit(".", 2)[-2])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param
    return module


@pytest.fixture
def make_ring(impl: ModuleType) -> type[HashRing]:
    return ring_class(impl)


def uh_ring(weights: dict[Any, int]) -> uhashring.HashRing:
    return uhashring.HashRing({n: {"weight": w} for n, w in weights.items()}, hash_fn="ketama")


def random_keys(rng: random.Random, n: int) -> list[object]:
    makers: list[Callable[[], object]] = [
        lambda: f"user:{rng.randrange(10**9)}",
        lambda: rng.randrange(-(2**70), 2**70),
        lambda: rng.randrange(10**6),
        lambda: "".join(rng.choice("aé€😀z0-:") for _ in range(rng.randrange(0, 90))),
        lambda: rng.random(),
    ]
    return [rng.choice(makers)() for _ in range(n)]


def test_ketama_test_vector(impl: ModuleType, make_ring: type[HashRing]) -> None:
    assert impl.hash_key("test") == 3446378249
    assert make_ring(["a"]).hash_key("test") == 3446378249


def test_hash_matches_uhashring(impl: ModuleType) -> None:
    reference = uhashring.HashRing(["a"], hash_fn="ketama")
    keys = [*random_keys(random.Random(1), 3000), 0, -1, 2**63, -(2**63) - 1, True, None, ""]
    assert [impl.hash_key(k) for k in keys] == [reference.hashi(k) for k in keys]


def test_int_keys_at_every_formatting_boundary(impl: ModuleType) -> None:
    """Small ints are formatted in registers (C): check each digit count and sign."""
    reference = uhashring.HashRing(["a"], hash_fn="ketama")
    keys = [0, -0, 2**63 - 1, -(2**63), 2**64]
    for digits in range(1, 20):
        for base in (10 ** (digits - 1), 10**digits - 1):
            keys += [base, -base, base + 1, -(base + 1)]
    assert [impl.hash_key(k) for k in keys] == [reference.hashi(k) for k in keys]
    ring = ring_class(impl)(["a", "b", "c"])
    ref_ring = uh_ring({"a": 1, "b": 1, "c": 1})
    assert [ring.get_node(k) for k in keys] == [ref_ring.get_node(k) for k in keys]


def test_hash_points_are_uhashring_vnodes(impl: ModuleType) -> None:
    reference = uhashring.HashRing(["a"], hash_fn="ketama").runtime
    expected = [reference.hashi(f"node-{w}", replica=r) for w in range(5) for r in range(4)]
    assert impl.hash_points("node", 5, 4) == expected
    assert impl.hash_points("node", 5, 2) == [p for i, p in enumerate(expected) if i % 4 < 2]


ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "reweight"]),
        st.sampled_from([f"n{i}" for i in range(8)] + ["shard-é", "x" * 60, 0, 7, -3, 10**9]),
        st.integers(1, 9),
    ),
    max_size=6,
)
#: str names, and int names (uhashring hashes ``str(name)``: ``HashRing([1, 2, 3])``)
node_names = st.text(alphabet="abcdefgh0123456789-é", min_size=1, max_size=12) | st.integers(
    -(10**12), 10**12
)
initial = st.dictionaries(node_names, st.integers(1, 9), min_size=1, max_size=9)

#: 100 examples x 2,500 keys = 250,000 random keys per implementation.
KEYS_PER_EXAMPLE = 2_500


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(weights=initial, operations=ops, seed=st.integers(0, 2**32))
@pytest.mark.parametrize("impl_module", IMPLS, ids=lambda m: m.__name__.rsplit(".", 2)[-2])
def test_placement_identical_to_uhashring(
    impl_module: ModuleType, weights: dict[Any, int], operations: list[tuple[str, Any, int]],
    seed: int,
) -> None:
    ring = ring_class(impl_module)(weights)
    reference = uh_ring(weights)
    keys = random_keys(random.Random(seed), KEYS_PER_EXAMPLE)
    for op, name, weight in operations:
        if op == "remove":
            if name in ring:
                ring.remove_node(name)
                reference.remove_node(name)
            else:
                with pytest.raises(KeyError):
                    ring.remove_node(name)
        else:
            ring.add_node(name, weight)
            reference.add_node(name, {"weight": weight})
    assert ring.nodes == list(reference.get_nodes())
    if not ring.nodes:
        with pytest.raises(LookupError):
            ring.get_node("k")
        return
    expected = [reference.get_node(k) for k in keys]
    assert ring.get_node_many(keys) == expected
    assert [ring.get_node(k) for k in keys[:200]] == expected[:200]
    assert ring.distribution() == dict(reference.distribution)


def test_two_hundred_thousand_keys_weighted(make_ring: type[HashRing]) -> None:
    weights = {"s1": 1, "s2": 3, "s3": 2, "s4": 7, "s5": 1}
    ring, reference = make_ring(weights), uh_ring(weights)
    keys = random_keys(random.Random(7), 200_000)
    assert ring.get_node_many(keys) == [reference.get_node(k) for k in keys]


def test_get_node_many_accepts_any_iterable(make_ring: type[HashRing]) -> None:
    ring = make_ring(["a", "b", "c"])
    keys = ["k" * n for n in range(0, 130)] + [b"raw", bytearray(b"raw"), memoryview(b"raw")]
    expected = [ring.get_node(k) for k in keys]
    assert ring.get_node_many(keys) == expected
    assert ring.get_node_many(tuple(keys)) == expected
    assert ring.get_node_many(k for k in keys) == expected
    assert ring.get_node_many([]) == []


def test_bytes_keys_hash_their_raw_bytes(make_ring: type[HashRing]) -> None:
    ring = make_ring(["a", "b", "c"])
    for text in ["user:1", "é€", ""]:
        raw = text.encode()
        assert ring.hash_key(raw) == ring.hash_key(text)
        assert ring.get_node(raw) == ring.get_node(bytearray(raw)) == ring.get_node(text)


def test_errors(make_ring: type[HashRing]) -> None:
    with pytest.raises(LookupError, match="no nodes"):
        make_ring([]).get_node("k")
    with pytest.raises(LookupError):
        make_ring([]).get_node_many(["k"])
    for bad in (0, -1, 1.5, True, "2", None):
        with pytest.raises(ValueError, match="weight"):
            make_ring({"a": bad})
        with pytest.raises(ValueError, match="weight"):
            make_ring(["a"]).add_node("b", bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="names"):
        make_ring(["a", ""])
    with pytest.raises(ValueError, match="names"):
        make_ring(["a"]).add_node(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unhashable"):
        make_ring([["a"]])
    with pytest.raises(ValueError, match="weight"):
        make_ring({"a": {"weight": 2, "vnodes": 9}})
    with pytest.raises(KeyError, match="zz"):
        make_ring(["a"]).remove_node("zz")
    with pytest.raises(ValueError, match="mode"):
        make_ring(["a"], mode="jump")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="replicas"):
        make_ring(["a"], replicas=5)
    with pytest.raises(ValueError, match="vnodes"):
        make_ring(["a"], vnodes=0)
    ring = make_ring(["a"])
    ring.remove_node("a")
    with pytest.raises(LookupError):
        ring.get_node(1)


def _owner_by_arcs(arcs: list[tuple[int, int, str]], h: int) -> str:
    for start, end, owner in arcs:
        if start <= h < end:
            return owner
    raise AssertionError(h)


@pytest.mark.parametrize("mode", ["ketama", "stable"])
def test_arcs_cover_the_ring_and_agree_with_lookup(make_ring: type[HashRing], mode: str) -> None:
    ring = make_ring({"a": 1, "b": 2, "c": 3}, mode=mode)  # type: ignore[arg-type]
    arcs = ring.arcs()
    assert arcs[0][0] == 0 and arcs[-1][1] == RING_SIZE
    assert all(prev[1] == nxt[0] and prev[2] != nxt[2] for prev, nxt in itertools.pairwise(arcs))
    for start, end, owner in arcs:
        assert ring.node_for_hash(start) == owner
        assert ring.node_for_hash(end - 1) == owner
    for key in random_keys(random.Random(3), 3000):
        assert _owner_by_arcs(arcs, ring.hash_key(key)) == ring.get_node(key)


@pytest.mark.parametrize("mode", ["ketama", "stable"])
def test_diff_lists_exactly_the_keys_that_move(make_ring: type[HashRing], mode: str) -> None:
    old = make_ring({"a": 1, "b": 2, "c": 1}, mode=mode)  # type: ignore[arg-type]
    new = old.copy()
    new.add_node("d", 2)
    new.remove_node("a")
    moves = old.diff(new)
    assert old.nodes == ["a", "b", "c"]  # copy() is independent
    assert all(s < e for s, e, _, _ in moves)
    for key in random_keys(random.Random(4), 5000):
        h = old.hash_key(key)
        before, after = old.get_node(key), new.get_node(key)
        hits = [(o, n) for s, e, o, n in moves if s <= h < e]
        assert hits == ([] if before == after else [(before, after)])
    assert old.diff(old.copy()) == []


def test_stable_mode_moves_only_keys_to_the_new_node(make_ring: type[HashRing]) -> None:
    weights = {"a": 1, "b": 5, "c": 2}
    before = make_ring(weights, mode="stable")
    after = make_ring(weights, mode="stable")
    after.add_node("d", 2)
    keys = [f"k{i}" for i in range(40_000)]
    old, new = before.get_node_many(keys), after.get_node_many(keys)
    moved = [(o, n) for o, n in zip(old, new, strict=True) if o != n]
    assert all(n == "d" for _, n in moved)
    assert 0.12 < len(moved) / len(keys) < 0.28  # d's share is 2/10
    # ketama with unequal weights moves keys between old nodes too (the documented trade-off)
    k_before, k_after = make_ring(weights), make_ring(weights)
    k_after.add_node("d", 2)
    pairs = zip(k_before.get_node_many(keys), k_after.get_node_many(keys), strict=True)
    k_moved = [(o, n) for o, n in pairs if o != n]
    assert any(n != "d" for _, n in k_moved)


def test_stable_mode_ignores_insertion_order(make_ring: type[HashRing]) -> None:
    one = make_ring({"a": 1, "b": 2, "c": 3}, mode="stable")
    two = make_ring({"c": 3, "a": 1, "b": 2}, mode="stable")
    assert one.points() == two.points()


def test_reweight_keeps_insertion_position(make_ring: type[HashRing]) -> None:
    ring, reference = make_ring(["a", "b", "c"]), uh_ring({"a": 1, "b": 1, "c": 1})
    ring.add_node("a", 3)
    reference.add_node("a", {"weight": 3})
    assert ring.nodes == ["a", "b", "c"]
    keys = random_keys(random.Random(5), 5000)
    assert ring.get_node_many(keys) == [reference.get_node(k) for k in keys]


def test_public_class_uses_selected_implementation() -> None:
    from tiercache import implementation
    from tiercache._impl import load

    assert ring_class(load("_ring")) is HashRing
    assert implementation() in ("cython", "python")
    assert repr(HashRing({"a": 2})) == "HashRing({'a': 2}, mode='ketama', vnodes=40)"




def test_int_node_names_place_like_uhashring(make_ring: type[HashRing[Any]]) -> None:
    """uhashring's own test builds ``HashRing([1, 2, 3, 4])``; lookups return the int names."""
    ring, reference = make_ring([1, 2, 3, 4]), uhashring.HashRing([1, 2, 3, 4], hash_fn="ketama")
    keys = random_keys(random.Random(11), 20_000)
    expected = [reference.get_node(k) for k in keys]
    assert ring.get_node_many(keys) == expected
    assert [ring.get_node(k) for k in keys[:500]] == expected[:500]
    assert {type(n) for n in ring.get_node_many(keys)} == {int}
    assert ring.nodes == [1, 2, 3, 4] and ring.distribution() == dict(reference.distribution)
    assert ring.points() == reference.get_points()
    ring.remove_node(3)
    reference.remove_node(3)
    ring.add_node(9, 2)
    reference.add_node(9, 2)
    assert ring.get_node_many(keys) == [reference.get_node(k) for k in keys]


def test_mixed_and_colliding_names(make_ring: type[HashRing[Any]]) -> None:
    """1 and "1" hash alike (both are "1-0", "1-1", ...): as in uhashring, the last one wins."""
    nodes: list[Any] = ["a", 1, "1", 2.5, ("t", 1)]
    ring, reference = make_ring(nodes), uhashring.HashRing(nodes, hash_fn="ketama")
    keys = random_keys(random.Random(12), 5_000)
    assert ring.get_node_many(keys) == [reference.get_node(k) for k in keys]
    assert 1 not in ring.get_node_many(keys)
    stable = make_ring(nodes, mode="stable")
    assert stable.points() == make_ring(nodes[::-1], mode="stable").points()


def test_uhashring_node_configuration_dicts(make_ring: type[HashRing[Any]]) -> None:
    conf = {"a": {"weight": 3}, "b": {"weight": 1}, "c": {}}
    ring, reference = make_ring(conf), uhashring.HashRing(conf, hash_fn="ketama")
    assert ring.weights == {"a": 3, "b": 1, "c": 1}
    keys = random_keys(random.Random(13), 5_000)
    assert ring.get_node_many(keys) == [reference.get_node(k) for k in keys]
    ring.add_node("d", {"weight": 2})
    assert ring.weights["d"] == 2


@pytest.mark.parametrize("bad", [None, 5, 1.5, b"ab", object()])
def test_bad_nodes_argument_is_a_value_error_like_uhashring(
    make_ring: type[HashRing[Any]], bad: object
) -> None:
    with pytest.raises(ValueError):
        uhashring.HashRing(bad, hash_fn="ketama")
    with pytest.raises(ValueError, match="nodes must be a list of names or a dict"):
        make_ring(bad)
