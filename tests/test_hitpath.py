"""The @cached hit-path wrappers (sync + async), over both implementations."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Hashable
from types import ModuleType
from typing import Any

import pytest

from tiercache import _impl
from tiercache.tiers.memory import MemoryTier

IMPLS = _impl.both("_lru")


@pytest.fixture(params=IMPLS, ids=lambda m: m.__name__.split(".")[1])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return request.param  # type: ignore[no-any-return]


class Recorder:
    """A miss handler that loads through ``func`` and fills the store, like the core will."""

    def __init__(self, store: Any, func: Any) -> None:
        self.store, self.func = store, func
        self.calls: list[tuple[Hashable | None, tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, key: Hashable | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.calls.append((key, args, kwargs))
        value = self.func(*args, **kwargs)
        if key is not None:
            self.store.put(key, value)
        return value


class AsyncRecorder(Recorder):
    async def __call__(
        self, key: Hashable | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        self.calls.append((key, args, kwargs))
        value = await self.func(*args, **kwargs)
        if key is not None:
            self.store.put(key, value)
        return value


def price(sku: str, qty: int = 1, *, currency: str = "EUR") -> tuple[str, int, str]:
    """Docstring kept."""
    return (sku, qty, currency)


async def get_user(user_id: Any, *, full: bool = False) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"id": user_id, "full": full}


def test_sync_hit_skips_handler(impl: Any) -> None:
    store = impl.LRU(100)
    rec = Recorder(store, price)
    fn = impl.CachedFunction(price, store, rec)
    assert fn("a") == ("a", 1, "EUR")
    assert fn("a") == ("a", 1, "EUR")
    assert rec.calls == [("a", ("a",), {})]  # one int/str arg: the key is the arg itself
    assert store.stats()["hits"] == 1 and store.stats()["misses"] == 1
    assert fn.__name__ == "price" and fn.__doc__ == "Docstring kept." and fn.__wrapped__ is price
    assert fn.store is store and fn.miss_handler is rec


def test_cached_none_is_a_hit(impl: Any) -> None:
    store = impl.LRU(100)
    rec = Recorder(store, lambda x: None)
    fn = impl.CachedFunction(lambda x: None, store, rec)
    assert fn(1) is None and fn(1) is None
    assert len(rec.calls) == 1


def test_kwargs_keying(impl: Any) -> None:
    store = impl.LRU(100)
    rec = Recorder(store, price)
    fn = impl.CachedFunction(price, store, rec)
    fn("a", qty=2, currency="USD")
    fn("a", currency="USD", qty=2)  # same key whatever the keyword order
    assert len(rec.calls) == 1
    key = rec.calls[0][0]
    kw = {"qty": 2, "currency": "USD"}
    assert key == fn.l1_key("a", currency="USD", qty=2) == impl.make_key(("a",), kw)
    assert key != ("a", 2, "USD")
    assert rec.calls[0][2] == {"qty": 2, "currency": "USD"}
    fn("a", 2, currency="USD")  # positional vs keyword: different L1 key (like lru_cache)
    assert len(rec.calls) == 2
    assert fn.l1_key("a") == "a" and impl.make_key(["a"]) == "a"  # like lru_cache
    assert impl.make_key((1.5,)) == (1.5,) and impl.make_key(("a", 1)) == ("a", 1)
    assert fn.l1_key(True) == (True,)  # only exact int/str take the short form


def test_unhashable_args_go_to_handler_with_none_key(impl: Any) -> None:
    store = impl.LRU(100)
    rec = Recorder(store, lambda xs: sum(xs))
    fn = impl.CachedFunction(lambda xs: sum(xs), store, rec)
    assert fn([1, 2]) == 3 and fn([1, 2]) == 3
    assert [c[0] for c in rec.calls] == [None, None]
    assert len(store) == 0 and store.stats()["misses"] == 2


def test_expired_entry_goes_to_handler(impl: Any) -> None:
    now = [0.0]
    store = impl.LRU(100, ttl=10, clock=lambda: now[0])
    rec = Recorder(store, price)
    fn = impl.CachedFunction(price, store, rec)
    fn("a")
    now[0] = 9.0
    fn("a")
    now[0] = 10.5
    fn("a")
    assert len(rec.calls) == 2


def test_no_store_always_misses(impl: Any) -> None:
    calls: list[Any] = []

    def handler(key: Any, args: Any, kwargs: Any) -> int:
        calls.append(key)
        return 7

    fn = impl.CachedFunction(price, None, handler)
    assert fn("x", 1) == 7 and fn("x", 1) == 7 and calls == [("x", 1), ("x", 1)]


def test_handler_exception_propagates_and_is_not_cached(impl: Any) -> None:
    store = impl.LRU(100)

    def boom(key: Any, args: Any, kwargs: Any) -> Any:
        raise KeyError("nope")

    fn = impl.CachedFunction(price, store, boom)
    with pytest.raises(KeyError):
        fn("a")
    assert len(store) == 0


def test_method_binding(impl: Any) -> None:
    store = impl.LRU(100)

    class Repo:
        def find(self, x: int) -> int:
            return x * 10

    rec = Recorder(store, Repo.find)
    Repo.find = impl.CachedFunction(Repo.find, store, rec)  # type: ignore[method-assign]
    repo = Repo()
    assert repo.find(2) == 20 and repo.find(2) == 20
    assert len(rec.calls) == 1 and rec.calls[0][0] == (repo, 2)
    assert Repo.find(repo, 2) == 20 and len(rec.calls) == 1


def test_wrapper_accepts_attributes_and_rejects_non_callables(impl: Any) -> None:
    fn = impl.CachedFunction(price, impl.LRU(), lambda k, a, kw: 1)
    fn.invalidate = "set by the core"
    assert fn.invalidate == "set by the core"
    with pytest.raises(TypeError):
        impl.CachedFunction(price, impl.LRU(), None)


async def test_async_hit_is_ready_and_miss_is_coroutine(impl: Any) -> None:
    store = impl.LRU(100)
    rec = AsyncRecorder(store, get_user)
    fn = impl.AsyncCachedFunction(get_user, store, rec)
    first = fn(1)
    assert inspect.iscoroutine(first)
    assert await first == {"id": 1, "full": False}
    hit = fn(1)
    assert isinstance(hit, impl.Ready) and hit.value == {"id": 1, "full": False}
    assert await hit == {"id": 1, "full": False}
    assert len(rec.calls) == 1
    assert await fn(1, full=True) == {"id": 1, "full": True}
    assert await fn(1, full=True) == {"id": 1, "full": True}
    assert len(rec.calls) == 2


async def test_ready_works_with_asyncio_apis(impl: Any) -> None:
    store = impl.LRU(100)
    store.put(5, "five")
    fn = impl.AsyncCachedFunction(get_user, store, AsyncRecorder(store, get_user))
    assert await asyncio.create_task(fn(5)) == "five"
    assert list(await asyncio.gather(fn(5), fn(5))) == ["five", "five"]
    assert await asyncio.wait_for(fn(5), 1) == "five"
    assert await asyncio.ensure_future(fn(5)) == "five"
    assert asyncio.iscoroutine(fn(5))
    r = impl.ready((1, 2))  # a tuple value must not be unpacked by StopIteration
    assert await r == (1, 2)
    gen = impl.ready(None).__await__()
    with pytest.raises(StopIteration) as info:
        gen.send(None)
    assert info.value.value is None


async def test_async_unhashable_and_markers(impl: Any) -> None:
    store = impl.LRU(100)
    rec = AsyncRecorder(store, get_user)
    fn = impl.AsyncCachedFunction(get_user, store, rec)
    assert await fn({"a": 1}) == {"id": {"a": 1}, "full": False}
    assert rec.calls[0][0] is None
    assert inspect.iscoroutinefunction(fn) and asyncio.iscoroutinefunction(fn)
    assert fn.__name__ == "get_user" and inspect.signature(fn) == inspect.signature(get_user)


def test_memory_tier_wrap_picks_sync_or_async() -> None:
    tier = MemoryTier(maxsize=10)
    sync = tier.wrap(price, lambda k, a, kw: 1)
    coro = tier.wrap(get_user, lambda k, a, kw: 1)
    impl = _impl.load("_lru")
    assert type(sync) is impl.CachedFunction and type(coro) is impl.AsyncCachedFunction
    assert tier.l1_key((1,), {"b": 2}) == sync.l1_key(1, b=2)


def test_functions_sharing_a_tier_do_not_collide() -> None:
    tier = MemoryTier(maxsize=100)

    def a(x: int) -> str:
        return f"a{x}"

    def b(x: int) -> str:
        return f"b{x}"

    seg_a, seg_b = tier.segment(f"{__name__}.{a.__qualname__}"), tier.segment("b")

    def loader(seg: Any, func: Any) -> Any:
        def handler(key: Any, args: Any, kwargs: Any) -> Any:
            value = func(*args)
            seg.put(key, value)
            return value

        return handler

    fa = tier.wrap(a, loader(seg_a, a))
    fb = tier.wrap(b, loader(seg_b, b), segment="b")
    assert fa.segment is seg_a and fb.segment is seg_b
    assert (fa(1), fb(1), fa(1), fb(1)) == ("a1", "b1", "a1", "b1")
    stats = tier.segment_stats()
    assert stats[f"{__name__}.test_functions_sharing_a_tier_do_not_collide.<locals>.a"]["hits"] == 1
    assert tier.stats()["hits"] == 2 and tier.stats()["size"] == 2
    fc = tier.wrap(a, lambda k, args, kw: "other", segment="custom")
    assert fc(1) == "other" and fc.segment is tier.segment("custom") and fc.store is tier.store


def test_wrapper_over_a_segment(impl: Any) -> None:
    store = impl.LRU(100)
    seg = store.segment("f")
    rec = Recorder(seg, price)
    fn = impl.CachedFunction(price, seg, rec)
    fn("a")
    fn("a")
    assert fn.segment is seg and fn.store is store and len(rec.calls) == 1
    assert seg.stats()["hits"] == 1 and store.get("a") is None
