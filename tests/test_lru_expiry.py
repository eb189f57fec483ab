"""L1 ``len()``/``keys()``/``stats()["size"]`` never count an expired entry (both implementations).

``in`` and ``get`` already treated an expired-but-unread entry as gone; ``len()`` and ``keys()``
counted it (cachetools' TTLCache does not). These tests check the four agree, on a fake clock,
under per-entry TTLs, rewrites that change an entry's expiry, deletes and evictions.
"""

from __future__ import annotations

import gc
import math
import weakref
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiercache import _impl
from tiercache.tiers.memory import MemoryTier

IMPLS = _impl.both("_lru")
IDS = [m.__name__.split(".")[1] for m in IMPLS]


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=IMPLS, ids=IDS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return request.param  # type: ignore[no-any-return]


def live(lru: Any, keys: list[Any], seg: Any = None) -> list[Any]:
    where = lru if seg is None else seg
    return [k for k in keys if k in where]


def test_len_and_keys_drop_expired_unread_entries(impl: Any) -> None:
    clock = FakeClock()
    lru = impl.LRU(maxsize=100, ttl=10, clock=clock)
    for i in range(6):
        lru.put(i, i)
    lru.put("forever", 1, ttl=math.inf)
    assert len(lru) == 7
    clock.t += 10  # exactly at expiry: `in`/`get` say gone
    assert 0 not in lru and lru.get(0) is None
    assert len(lru) == 1 and lru.keys() == ["forever"]
    s = lru.stats()
    assert s["size"] == 1 and s["evictions_expired"] == 6


def test_segments_and_memory_tier_agree_with_in(impl: Any) -> None:
    clock = FakeClock()
    lru = impl.LRU(maxsize=100, clock=clock)
    users, prices = lru.segment("users"), lru.segment("prices")
    users.put(1, "a", ttl=5)
    users.put(2, "b", ttl=50)
    prices.put(1, 9.5, ttl=5)
    lru.put("d", 0, ttl=5)
    clock.t += 6
    assert len(users) == 1 and users.keys() == [2] and users.stats()["size"] == 1
    assert len(prices) == 0 and prices.keys() == [] and prices.stats()["size"] == 0
    assert len(lru) == 1 and lru.keys() == []  # the default segment's "d" expired too

    tier = MemoryTier(maxsize=10, ttl=1.0, clock=clock)
    tier.set_sync(("k",), 1)
    clock.t += 1
    assert ("k",) not in tier.store and len(tier) == 0 and tier.stats()["size"] == 0


def test_rewrite_with_a_new_ttl_is_counted_by_the_new_expiry(impl: Any) -> None:
    clock = FakeClock()
    lru = impl.LRU(maxsize=100, clock=clock)
    lru.put("short-then-long", 1, ttl=1)
    lru.put("short-then-long", 2, ttl=100)
    lru.put("long-then-short", 1, ttl=100)
    lru.put("long-then-short", 2, ttl=1)
    lru.put("ttl-then-none", 1, ttl=1)
    lru.put("ttl-then-none", 2, ttl=math.inf)
    clock.t += 2
    assert sorted(lru.keys()) == ["short-then-long", "ttl-then-none"] and len(lru) == 2
    assert lru.get("short-then-long") == 2 and lru.expires_at("short-then-long") == 1100.0


def test_deleted_entry_value_is_released_before_it_would_expire(impl: Any) -> None:
    """The expiry bookkeeping must not keep a deleted/evicted value alive until its TTL."""

    class Value:
        pass

    lru = impl.LRU(maxsize=2, ttl=3600)
    deleted, evicted = Value(), Value()
    refs = [weakref.ref(deleted), weakref.ref(evicted)]
    lru.put("a", deleted)
    lru.put("b", evicted)
    lru.delete("a")
    lru.put("c", 1)
    lru.put("d", 2)  # evicts "b"
    del deleted, evicted
    gc.collect()
    assert [r() for r in refs] == [None, None]
    assert sorted(lru.keys()) == ["c", "d"]


def test_heavy_rewrite_churn_keeps_counts_exact(impl: Any) -> None:
    """Thousands of rewrites of a few keys (stale expiry records) and then expiry."""
    clock = FakeClock()
    lru = impl.LRU(maxsize=50, clock=clock)
    for i in range(5000):
        clock.t += 0.001
        lru.put(i % 40, i, ttl=1 + (i % 7))
    assert len(lru) == 40
    clock.t += 4
    expected = [k for k in range(40) if k in lru]
    assert 0 < len(expected) < 40
    assert len(lru) == len(expected) and sorted(lru.keys()) == expected
    lru.clear()
    assert len(lru) == 0 and lru.expire() == 0


op = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 12),
              st.sampled_from([None, 0.5, 1.0, 2.0, 5.0, math.inf, -1.0])),
    st.tuples(st.just("get"), st.integers(0, 12), st.none()),
    st.tuples(st.just("delete"), st.integers(0, 12), st.none()),
    st.tuples(st.just("tick"), st.just(0), st.sampled_from([0.25, 0.5, 1.0, 3.0])),
    st.tuples(st.just("expire"), st.just(0), st.none()),
)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(op, max_size=60), maxsize=st.sampled_from([3, 8, None]))
@pytest.mark.parametrize("impl_module", IMPLS, ids=IDS)
def test_len_keys_stats_always_agree_with_in(
    impl_module: ModuleType, ops: list[tuple[str, int, Any]], maxsize: int | None
) -> None:
    clock = FakeClock()
    lru = impl_module.LRU(maxsize=maxsize, ttl=2.0, clock=clock)
    seg = lru.segment("s")
    universe = list(range(13))
    for name, key, arg in ops:
        target = seg if key % 2 else lru
        if name == "put":
            target.put(key, key, arg)
        elif name == "get":
            target.get(key)
        elif name == "delete":
            target.delete(key)
        elif name == "tick":
            clock.t += arg
        else:
            lru.expire()
        in_default, in_seg = live(lru, universe), live(lru, universe, seg)
        assert sorted(lru.keys()) == in_default
        assert sorted(seg.keys()) == in_seg
        assert len(seg) == len(in_seg) == seg.stats()["size"]
        assert len(lru) == len(in_default) + len(in_seg) == lru.stats()["size"]
        if maxsize is not None:
            assert len(lru) <= maxsize
