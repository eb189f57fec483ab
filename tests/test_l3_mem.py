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


_BOUNDARY_INTS = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63,
                  2**64 - 1, 2**64, -1, -32, -33, -128, -129, -32768, -32769, -(2**31),
                  -(2**31) - 1, -(2**63), -(2**63) - 1]


@pytest.mark.parametrize("value", [
    *_BOUNDARY_INTS, None, True, False, 1.5, "", "a" * 31, "a" * 32, "a" * 255, "a" * 256,
    "é" * 40, "a" * 65536, b"", b"x" * 300, [], [1, "a", None], list(range(16)),
    [[1]], (1, 2), {"a": 1},
])
def test_encoded_size_equals_the_codec_for_python_values(value: object) -> None:
    from tiercache import codec
    from tiercache.tiers._query_mem import encoded_size

    assert encoded_size(value) == len(codec.encode(value))


def test_encoded_size_refuses_what_the_codec_refuses() -> None:
    from tiercache.tiers._query_mem import encoded_size

    for bad in ("\ud800", [object()]):
        with pytest.raises(TypeError):
            encoded_size(bad)


async def test_encoded_size_equals_the_codec_for_records(tiercache_stack: object) -> None:
    """Records of every plain type and size class (the sizes the memory store accounts),
    and the types it leaves to the codec (timestamps, arrays, json)."""
    import asyncpg

    from tiercache import codec
    from tiercache.tiers._query_mem import _fast_size, encoded_size

    dsn = next(iter(tiercache_stack.pg_dsns.values()))  # type: ignore[attr-defined]
    conn = await asyncpg.connect(dsn)
    try:
        ints = ", ".join(f"({v})::numeric::bigint" if abs(v) < 2**63 else f"{v}::numeric"
                         for v in _BOUNDARY_INTS)
        sqls = [
            f"SELECT {ints}",
            "SELECT NULL::int AS n, true AS b, 2.5::float8 AS f, 1.25::numeric(12, 2) AS d, "
            "'NaN'::numeric AS nan, 12345678901234567890.5::numeric AS big, ''::text AS e, "
            "repeat('x', 31) AS s31, repeat('x', 32) AS s32, repeat('x', 300) AS s300, "
            "repeat('x', 70000) AS s70k, repeat('é', 50) AS u, '\\x00ff'::bytea AS by",
            "SELECT now() AS ts, ARRAY[1, 2] AS arr, '{\"a\": 1}'::jsonb AS j, "
            "'1 day'::interval AS iv",
            "SELECT g AS id, 'v' || g AS v, (g % 997) * 1.25 AS amount "
            "FROM generate_series(1, 20) g",
        ]
        for sql in sqls:
            rows = await conn.fetch(sql)
            for value in (rows, rows[0], rows[:15], rows[:16], rows[:1], [],
                          rows[0][0]):
                assert encoded_size(value) == len(codec.encode(value)), (sql, value)
        plain = await conn.fetch(sqls[-1])
        assert _fast_size(plain) > 0 and _fast_size(plain[0]) > 0  # sized without encoding
    finally:
        await conn.close()
