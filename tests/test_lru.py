"""The L1 store: LRU order, TTL on a fake clock, byte bound, counters -- both implementations."""

from __future__ import annotations

import gc
import math
import threading
import weakref
from types import ModuleType
from typing import Any

import pytest

from tiercache import _impl
from tiercache.tiers.base import MISSING, SyncTier, Tier
from tiercache.tiers.memory import MemoryTier

IMPLS = _impl.both("_lru")


@pytest.fixture(params=IMPLS, ids=lambda m: m.__name__.split(".")[1])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return request.param  # type: ignore[no-any-return]


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_both_implementations_present() -> None:
    names = [m.__name__ for m in IMPLS]
    assert "tiercache._fallback._lru" in names
    if not _impl.FORCE_PUREPYTHON:
        assert "tiercache._ext._lru" in names, "build the extension: setup.py build_ext"


def test_lru_order_and_eviction(impl: Any) -> None:
    lru = impl.LRU(maxsize=3)
    for k in "abc":
        lru.put((k,), k)
    assert lru.get(("a",)) == "a"  # a becomes most recent
    lru.put(("d",), "d")  # evicts b (least recent)
    assert ("b",) not in lru
    assert lru.keys() == [("c",), ("a",), ("d",)]
    lru.put(("c",), "C")  # update moves to front
    lru.put(("e",), "e")  # evicts a
    assert lru.keys() == [("d",), ("c",), ("e",)]
    assert lru.get(("c",)) == "C"
    assert len(lru) == 3
    assert lru.stats()["evictions_size"] == 2


def test_get_default_and_none_values(impl: Any) -> None:
    lru = impl.LRU(maxsize=10)
    sentinel = object()
    assert lru.get(1, sentinel) is sentinel
    lru.put(1, None)
    assert lru.get(1, sentinel) is None


def test_ttl_default_and_override(impl: Any) -> None:
    clock = FakeClock()
    lru = impl.LRU(maxsize=10, ttl=10, clock=clock)
    lru.put("a", 1)
    lru.put("b", 2, ttl=100)
    lru.put("c", 3, ttl=math.inf)
    assert lru.expires_at("a") == 1010.0
    assert lru.expires_at("c") is None
    clock.t += 9.999
    assert lru.get("a") == 1
    clock.t += 0.001
    assert lru.get("a") is None
    assert "a" not in lru and len(lru) == 2
    clock.t += 1000
    assert "b" not in lru
    assert lru.get("b") is None
    assert lru.get("c") == 3
    s = lru.stats()
    assert s["evictions_expired"] == 2 and s["hits"] == 2 and s["misses"] == 2


def test_non_positive_ttl_stores_nothing(impl: Any) -> None:
    lru = impl.LRU(maxsize=10, clock=FakeClock())
    lru.put("a", 1)
    lru.put("a", 2, ttl=0)
    assert "a" not in lru
    with pytest.raises(ValueError):
        impl.LRU(ttl=0)


def test_expired_tail_counts_as_expired_eviction(impl: Any) -> None:
    clock = FakeClock()
    lru = impl.LRU(maxsize=2, clock=clock)
    lru.put("old", 1, ttl=1)
    lru.put("x", 2)
    clock.t += 5
    lru.put("y", 3)
    s = lru.stats()
    assert s["evictions_expired"] == 1 and s["evictions_size"] == 0


def test_expire_sweeps(impl: Any) -> None:
    clock = FakeClock()
    lru = impl.LRU(maxsize=10, ttl=5, clock=clock)
    for i in range(6):
        lru.put(i, i, ttl=None if i % 2 else math.inf)
    clock.t += 6
    assert lru.expire() == 3
    assert sorted(lru.keys()) == [0, 2, 4]


def test_byte_bound(impl: Any) -> None:
    lru = impl.LRU(maxsize=100, maxbytes=10, getsizeof=len)
    lru.put("a", "xxxx")
    lru.put("b", "xxxx")
    assert lru.currbytes == 8
    lru.put("c", "xxxx")  # 12 > 10: evict a
    assert lru.keys() == ["b", "c"] and lru.currbytes == 8
    lru.put("b", "x")  # resize in place
    assert lru.currbytes == 5
    lru.put("big", "x" * 11)  # larger than the bound: not stored
    assert "big" not in lru
    lru.put("c", "x" * 11)  # replacing with an oversized value drops the old one
    assert "c" not in lru and lru.currbytes == 1
    assert lru.stats()["bytes"] == 1
    with pytest.raises(ValueError):
        impl.LRU(maxbytes=10)


def test_byte_bound_keeps_entry_bound(impl: Any) -> None:
    lru = impl.LRU(maxsize=2, maxbytes=1000, getsizeof=len)
    for k in "abc":
        lru.put(k, "x")
    assert lru.keys() == ["b", "c"]


def test_growing_a_value_over_the_byte_bound_evicts_others_not_itself(impl: Any) -> None:
    """Replacing the least recently used entry with a bigger value: the new value stays,
    the next LRU entries go, and every segment's size stays exact (never negative)."""
    lru = impl.LRU(maxsize=10, maxbytes=10, getsizeof=len)
    seg = lru.segment("s")
    seg.put("old", "x")  # least recently used
    lru.put("mid", "xxx")
    lru.put("new", "xxxx")
    seg.put("old", "xxxxx")  # 1 -> 5 bytes: 12 > 10, evicts "mid" (the LRU after it)
    assert seg.get("old") == "xxxxx" and "mid" not in lru and lru.get("new") == "xxxx"
    assert len(seg) == 1 and seg.stats()["size"] == 1 and len(lru) == 2
    assert lru.currbytes == 9
    assert seg.stats()["evictions_size"] == 0 and lru.stats()["evictions_size"] == 1
    seg.clear()
    assert len(seg) == 0 and len(lru) == 1


def test_counters_and_delete(impl: Any) -> None:
    lru = impl.LRU(maxsize=10)
    lru.put("a", 1)
    lru.put("a", 2)
    assert lru.get("a") == 2 and lru.get("zz") is None
    assert lru.delete("a") is True and lru.delete("a") is False
    s = lru.stats()
    assert (s["hits"], s["misses"], s["sets"], s["deletes"], s["size"]) == (1, 1, 2, 1, 0)
    lru.reset_stats()
    assert lru.stats()["hits"] == 0


def test_clear_delete_where_and_maxsize_zero(impl: Any) -> None:
    lru = impl.LRU(maxsize=None)
    for i in range(100):
        lru.put(("user", i), i)
    assert lru.delete_where(lambda k: k[1] % 2 == 0) == 50
    assert len(lru) == 50 and ("user", 1) in lru and ("user", 2) not in lru
    lru.clear()
    assert len(lru) == 0 and lru.keys() == []
    lru.put("again", 1)
    assert lru.get("again") == 1
    zero = impl.LRU(maxsize=0)
    zero.put("a", 1)
    assert len(zero) == 0 and zero.maxsize == 0


def test_unhashable_key_raises(impl: Any) -> None:
    lru = impl.LRU()
    with pytest.raises(TypeError):
        lru.get(([1],))
    with pytest.raises(TypeError):
        lru.put([1], 1)


def test_values_are_released(impl: Any) -> None:
    class V:
        pass

    lru = impl.LRU(maxsize=1)
    v = V()
    ref = weakref.ref(v)
    lru.put("a", v)
    del v
    lru.put("b", 1)  # evicts a
    gc.collect()
    assert ref() is None
    w = V()
    ref = weakref.ref(w)
    lru.put("c", w)
    del w
    lru.clear()
    assert ref() is None
    x = V()
    ref = weakref.ref(x)
    lru.put("d", x)
    del x, lru
    gc.collect()
    assert ref() is None


def test_reentrant_del_during_eviction(impl: Any) -> None:
    lru = impl.LRU(maxsize=2)

    class Evil:
        def __del__(self) -> None:
            lru.put("from-del", 1)
            lru.delete("k1")

    lru.put("k0", Evil())
    lru.put("k1", 1)
    lru.put("k2", 2)  # evicting k0 runs __del__, which mutates the store
    lru.clear()
    assert len(lru) == 0


def test_threads_hammering(impl: Any) -> None:
    lru = impl.LRU(maxsize=50)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(20_000):
                k = (seed * i) % 97
                if i % 3:
                    lru.put(k, i)
                else:
                    lru.get(k)
                if i % 101 == 0:
                    lru.delete(k)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in (1, 3, 7, 11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(lru) <= 50 and len(lru.keys()) == len(lru)


def test_memory_tier_protocols() -> None:
    clock = FakeClock()
    tier = MemoryTier(maxsize=10, ttl=5, clock=clock)
    assert isinstance(tier, Tier) and isinstance(tier, SyncTier)
    tier.set_sync(("a",), None)
    assert tier.get_sync(("a",)) is None
    assert tier.get_sync(("b",)) is MISSING
    tier.set_many_sync({1: "x", 2: "y"}, ttl=100)
    assert tier.get_many_sync([1, 2, 3]) == {1: "x", 2: "y"}
    clock.t += 6
    assert tier.get_sync(("a",)) is MISSING and tier.get_sync(1) == "x"
    s = tier.stats()
    assert s["hits"] == 4 and s["misses"] == 3 and s["evictions"] == 1 and s["size"] == 2
    assert s["errors"] == 0 and 0 < s["hit_ratio"] < 1


async def test_memory_tier_async_methods() -> None:
    tier = MemoryTier(maxsize=10)
    await tier.set("k", 1)
    assert await tier.get("k") == 1
    assert await tier.get("nope") is MISSING
    await tier.set_many({"a": 1, "b": 2})
    assert await tier.get_many(["a", "b", "c"]) == {"a": 1, "b": 2}
    assert await tier.delete("a") is True
    assert tier.delete_where(lambda k: k == "b") == 1
    await tier.clear()
    assert len(tier) == 0
    await tier.close()


def test_segments_isolate_keys_and_share_bounds(impl: Any) -> None:
    clock = FakeClock()
    lru = impl.LRU(maxsize=4, ttl=10, clock=clock)
    users, prices = lru.segment("users"), lru.segment("prices")
    assert lru.segment("users") is users and users.store is lru and users.name == "users"
    users.put((42,), "alice")
    prices.put((42,), 9.99)
    lru.put((42,), "default")
    assert users.get((42,)) == "alice" and prices.get((42,)) == 9.99 and lru.get((42,)) == "default"
    assert len(lru) == 3 and len(users) == 1 and users.keys() == [(42,)] and lru.keys() == [(42,)]
    prices.put((1,), 1.0)
    prices.put((2,), 2.0)  # 5 entries > 4: the LRU one (users' (42,) was read first) goes
    assert (42,) not in users and len(lru) == 4
    assert users.stats()["evictions_size"] == 1 and prices.stats()["evictions_size"] == 0
    assert users.stats()["hits"] == 1 and prices.stats()["sets"] == 3
    total = lru.stats()
    assert total["sets"] == 5 and total["hits"] == 3 and total["size"] == 4
    assert prices.delete_where(lambda k: k == (1,)) == 1 and prices.delete((2,)) is True
    assert prices.expires_at((42,)) == 1010.0
    clock.t += 11
    assert prices.get((42,)) is None and prices.stats()["evictions_expired"] == 1
    users.put("u", 1)
    prices.put("p", 1)
    prices.clear()
    assert len(prices) == 0 and users.get("u") == 1
    lru.clear()
    assert len(lru) == 0 and len(users) == 0 and "u" not in users
    assert {s.name for s in lru.segments()} == {"users", "prices"}
