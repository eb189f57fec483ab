"""The L3 memory store: bytes bound, cost-aware (GreedyDual-Size) vs LRU order, drops by bumps."""

from __future__ import annotations

import pytest

from tiercache.tiers._query_mem import MemEntry, MemoryStore


def _put(store: MemoryStore, key: str, cost: float, size: int = 100,
         deps: tuple[str, ...] = ("t",)) -> None:
    store.put(key, MemEntry(key, size, cost, float("inf"), deps))


def test_bytes_bound_holds_and_the_new_entry_stays() -> None:
    store = MemoryStore(1000, "cost")
    for i in range(50):
        _put(store, f"k{i}", cost=1.0)
        assert store.nbytes <= 1000 and f"k{i}" in store.entries
    assert len(store.entries) == 10 and store.evictions == 40


def test_cost_aware_keeps_the_expensive_entry_lru_does_not() -> None:
    for eviction, survives in (("cost", True), ("lru", False)):
        store = MemoryStore(1000, eviction)
        _put(store, "aggregate", cost=40e6)  # a 40 ms query
        for i in range(30):
            _put(store, f"point{i}", cost=50e3)  # 50 us point reads, same size
        assert ("aggregate" in store.entries) is survives, eviction


def test_hits_raise_priority_lazily() -> None:
    for eviction in ("cost", "lru"):
        store = MemoryStore(300, eviction)
        for k in ("a", "b", "c"):
            _put(store, k, cost=1.0)
        store.entries["a"].hits += 5  # what a hit does (cost)
        store.seq += 1
        store.entries["a"].last = store.seq  # what a hit does (lru)
        _put(store, "d", cost=1.0)
        assert "a" in store.entries and "b" not in store.entries, eviction


def test_bigger_entries_of_equal_cost_go_first() -> None:
    store = MemoryStore(1000, "cost")
    _put(store, "big", cost=1e6, size=600)
    _put(store, "small", cost=1e6, size=100)
    _put(store, "new", cost=1e6, size=301)
    assert "big" not in store.entries and {"small", "new"} <= set(store.entries)


def test_bump_drops_dependent_entries_and_frees_bytes() -> None:
    store = MemoryStore(10_000, "cost")
    _put(store, "a", 1.0, deps=("s1/orders", "s1/"))
    _put(store, "b", 1.0, deps=("s1/users", "s1/"))
    store.drop_dep("s1/orders")
    assert set(store.entries) == {"b"} and store.nbytes == 100 and store.dropped == 1
    store.drop_dep("s1/")
    assert not store.entries and store.nbytes == 0


def test_replacing_a_key_keeps_one_slot_live() -> None:
    store = MemoryStore(250, "cost")
    _put(store, "a", 1.0)
    _put(store, "a", 1e9)  # replaced: the old heap slot must not evict the new entry
    _put(store, "b", 1.0)
    _put(store, "c", 1.0)
    assert "a" in store.entries and store.nbytes <= 250


def test_bad_eviction_name() -> None:
    with pytest.raises(ValueError):
        MemoryStore(10, "fifo")
