"""What a user meets at the core's edges: unencodable results (loud, counted, in health),
shared vs copied L1 values, closures and lambdas that share a qualname, health naming a
Redis node whose breaker is open, and bus messages that never hold the event loop."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tiercache import _invalidation, metrics
from tiercache.cache import TierCache

Factory = Callable[..., TierCache]


class Opaque:
    """A type the codec does not know."""

    def __init__(self, n: int) -> None:
        self.n = n


async def test_unencodable_results_warn_once_per_function_count_and_degrade_health(
        cache_factory: Factory, caplog: pytest.LogCaptureFixture) -> None:
    """Before: one log line per key naming the key, nothing in health or Prometheus."""
    cache = cache_factory()

    @cache.cached(ttl=60)
    async def load(n: int) -> Opaque:
        return Opaque(n)

    with caplog.at_level(logging.WARNING, logger="tiercache"):
        for n in range(5):
            assert (await load(n)).n == n  # served (and kept in L1) all the same
    warnings = [r for r in caplog.records if "L2 cannot store" in r.getMessage()]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert load.spec.name in text and "Opaque" in text and "tiercache.register_type" in text
    stats = cache.stats()
    assert stats["errors"]["encode"] == 5 and stats["loader"]["encode_errors"] == 5
    assert stats["unencodable"] == {load.spec.name: f"{__name__}.Opaque"}
    report = await cache.health()
    assert report["status"] == "degraded"
    assert any(load.spec.name in r and "register_type" in r for r in report["reasons"])
    metrics.register(cache)
    try:
        samples = metrics.samples()
    finally:
        metrics.unregister(cache)
    assert samples["tiercache_errors_total"][(cache.name, "l2", "encode")] == 5

    other = cache_factory()  # another process's view: L2 never got it, so it loads again
    calls: list[int] = []

    @other.cached(ttl=60)
    async def again(n: int) -> int:
        calls.append(n)
        return n

    assert await again(1) == 1 and calls == [1]


def test_an_encodable_result_afterwards_clears_the_health_reason(cache_factory: Factory) -> None:
    cache = cache_factory()
    result: list[Any] = [Opaque(1)]

    @cache.cached(ttl=60)
    def load(n: int) -> Any:
        return result[0]

    load(1)
    assert cache.health_sync()["status"] == "degraded"
    result[0] = {"fine": True}
    assert load(2) == {"fine": True}
    assert cache.stats()["unencodable"] == {}
    assert cache.health_sync()["status"] == "healthy"


@pytest.mark.parametrize("copy", [True, "deep", "shallow", lambda v: dict(v)])
def test_copy_hands_every_caller_its_own_value(cache_factory: Factory, copy: Any) -> None:
    cache = cache_factory(l2=False)

    @cache.cached(ttl=60, copy=copy)
    def profile(uid: int) -> dict[str, Any]:
        return {"id": uid, "roles": ["user"]}

    first = profile(1)
    first["id"] = "mutated"
    assert profile(1)["id"] == 1  # an L1 hit, not the caller's mutated object
    assert profile(1) is not profile(1)
    assert len(profile.segment) == 1 and profile.invalidate(1) == 1
    assert profile.uncopied(1) is profile.uncopied(1)


async def test_copy_on_an_async_function_and_the_shared_default(cache_factory: Factory) -> None:
    cache = cache_factory()

    @cache.cached(ttl=60, copy=True)
    async def copied(uid: int) -> dict[str, Any]:
        return {"id": uid}

    @cache.cached(ttl=60)
    async def shared(uid: int) -> dict[str, Any]:
        return {"id": uid}

    (await copied(1))["id"] = 0
    assert await copied(1) == {"id": 1}
    assert await shared(1) is await shared(1)  # documented: like functools.lru_cache
    with pytest.raises(ValueError, match="copy="):
        cache.cached(copy="always")(shared)


def test_two_closures_or_lambdas_with_one_qualname_never_share_entries(
        cache_factory: Factory) -> None:
    """Before: triple(5) returned 10 (double's entry) with only a log warning."""
    cache = cache_factory()

    def scaler(k: int) -> Callable[[int], int]:
        @cache.cached(ttl=60)
        def scaled(x: int) -> int:
            return x * k

        return scaled

    double = scaler(2)
    with pytest.raises(TypeError, match=r"name=") as refused:
        scaler(3)
    assert "scaled" in str(refused.value) and __file__ in str(refused.value)
    assert double(5) == 10

    def named(k: int) -> Callable[[int], int]:
        @cache.cached(ttl=60, name=f"scaled_by_{k}")
        def scaled(x: int) -> int:
            return x * k

        return scaled

    assert named(2)(5) == 10 and named(3)(5) == 15 and named(3)(5) == 15
    inc = cache.cached(ttl=60)(lambda x: x + 1)
    dec = cache.cached(ttl=60)(
        lambda x: x - 1)
    assert inc(5) == 6 and dec(5) == 4 and inc.key_for(5) != dec.key_for(5)
    with pytest.raises(TypeError, match="name="):
        cache.cached()(lambda x: x), cache.cached()(lambda x: -x)


def test_closure_keys_name_the_definition_line(cache_factory: Factory) -> None:
    """The definition line, stable across processes running the same code (unlike id())."""
    cache = cache_factory(l1=False)

    def make() -> Any:
        @cache.cached(ttl=60)
        def f(x: int) -> int:
            return x

        return f

    key = make().key_for(1)
    assert key.startswith(f"{__name__}.test_closure_keys_name_the_definition_line."
                          "<locals>.make.<locals>.f@")


async def test_health_names_the_redis_node_whose_breaker_is_open(
        cache_factory: Factory) -> None:
    cache = cache_factory()
    assert cache.l2 is not None
    await cache.set("warm", 1)
    nodes = cache.l2.stats()["breakers"]
    assert len(nodes) >= 2
    dead = sorted(nodes)[0]
    breaker = cache.l2.breaker.get(dead)  # a real breaker opened by real failure counts
    for _ in range(breaker.failure_threshold + 1):
        breaker.record_failure()
    report = await cache.health()
    assert report["checks"]["breakers"][dead] == "open"
    assert report["status"] == "degraded"
    assert any(dead in r and "breaker open" in r for r in report["reasons"])
    assert not any(n in r for r in report["reasons"] for n in nodes if n != dead)


async def test_a_bus_pattern_over_a_big_l1_runs_off_the_event_loop(
        cache_factory: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pattern drops from another process match every L1 index entry: above OFFLOAD_ENTRIES
    they run in a worker thread, so the loop keeps serving meanwhile."""
    monkeypatch.setattr(_invalidation, "OFFLOAD_ENTRIES", 50)
    cache = cache_factory(l1_maxsize=1000)

    @cache.cached(ttl=60)
    def item(x: int) -> int:
        return x

    for x in range(200):
        item(x)
    co = cache.coherence
    seen: list[bool] = []
    apply_local = co.apply_local

    def spy(*parts: Any) -> int:
        seen.append(threading.current_thread() is threading.main_thread())
        return apply_local(*parts)

    monkeypatch.setattr(co, "apply_local", spy)
    await co.on_bus_message({"k": [], "t": [], "p": ["*"], "f": [], "a": []})
    assert seen == [False] and len(item.segment) == 0
    await co.on_bus_message({"k": [item.key_for(1)], "t": [], "p": [], "f": [], "a": []})
    assert seen == [False, True]  # small work stays on the loop
    with pytest.raises(ValueError, match="at most"):
        await cache.invalidate_pattern("*?" * 600)
