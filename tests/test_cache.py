"""TierCache read path, key building and the get/set API on a real Redis Cluster, both L1 impls."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import functools
import inspect
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from decimal import Decimal
from types import ModuleType
from typing import Any

import pytest

from tiercache._keys import MAX_KEY_LENGTH, canonical_digest
from tiercache.cache import TierCache
from tiercache.tiers.memory import MemoryTier

Factory = Callable[..., TierCache]


@pytest.fixture
def make_cache(cache_factory: Factory) -> Factory:
    return cache_factory


class Source:
    """A loader with a call log, like a database the cache sits in front of."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.data: dict[Any, Any] = {}

    def load(self, key: Any) -> Any:
        self.calls.append(key)
        return self.data.get(key, f"value-{key}")


def test_sync_read_path_l1_l2_loader(make_cache: Factory, redis_cluster_client: Any) -> None:
    src = Source()
    cache, other = make_cache(), make_cache()  # other: a second "process" (own L1, same L2)

    def get_item(x: int) -> Any:
        return src.load(x)

    get, get2 = cache.cached(ttl=30)(get_item), other.cached(ttl=30)(get_item)
    assert get(1) == "value-1" and get(1) == "value-1"
    assert src.calls == [1]
    assert redis_cluster_client.exists(cache.full_key(get.key_for(1))) == 1
    st = cache.stats()
    assert st["l1"]["hits"] == 1 and st["l1"]["misses"] == 1
    assert st["l2"]["misses"] == 1 and st["l2"]["sets"] == 1 and st["loader"]["calls"] == 1

    assert get2(1) == "value-1" and get2(1) == "value-1"
    assert src.calls == [1]  # L2 hit, then L1 (backfilled)
    st = other.stats()
    assert st["l2"]["hits"] == 1 and st["l1"]["hits"] == 1 and st["loader"]["calls"] == 0


async def test_async_read_path_and_wrapper_shape(make_cache: Factory, impl: ModuleType) -> None:
    src = Source()
    cache = make_cache()

    @cache.cached(ttl=30)
    async def get(x: int, *, full: bool = False) -> Any:
        await asyncio.sleep(0)
        return src.load((x, full))

    assert type(get) is impl.AsyncCachedFunction  # the MemoryTier's hit path, not a new layer
    assert type(cache.cached()(Source.load)) is impl.CachedFunction
    assert inspect.iscoroutinefunction(get) and get.__name__ == "get"
    assert inspect.iscoroutinefunction(get.invalidate)
    assert await get(1) == "value-(1, False)"
    assert await get(1) == "value-(1, False)"
    assert await get(1, full=True) == "value-(1, True)"
    assert src.calls == [(1, False), (1, True)]
    assert await get.invalidate(1) == 1
    assert await get(1) == "value-(1, False)" and len(src.calls) == 3
    assert isinstance(get(1), impl.Ready)  # an L1 hit: already-done awaitable, no coroutine


@pytest.mark.parametrize("tiers", [(True, False), (False, True)], ids=["l1-only", "l2-only"])
async def test_single_tier_caches(make_cache: Factory, tiers: tuple[bool, bool]) -> None:
    src = Source()
    cache = make_cache(l1=tiers[0], l2=tiers[1])

    @cache.cached(ttl=30)
    def get(x: int) -> Any:
        return src.load(x)

    @cache.cached(ttl=30)
    async def aget(x: int) -> Any:
        return src.load(("a", x))

    got = [get(1), get(1), await aget(1), await aget(1)]
    assert got == ["value-1"] * 2 + ["value-('a', 1)"] * 2
    assert src.calls == [1, ("a", 1)]
    assert get.invalidate(1) == 1 and get(1) == "value-1" and len(src.calls) == 3
    await cache.set("k", [1, 2])
    assert await cache.get("k") == [1, 2] and cache.get_sync("k") == [1, 2]
    assert await cache.delete("k") and await cache.get("k", "gone") == "gone"


def test_none_is_cached_unless_cache_none_false(make_cache: Factory) -> None:
    cache = make_cache()
    calls: list[str] = []

    @cache.cached()
    def maybe(x: str) -> None:
        calls.append(x)

    @cache.cached(cache_none=False)
    def never(x: str) -> None:
        calls.append("n" + x)

    assert maybe("a") is None and maybe("a") is None
    assert never("a") is None and never("a") is None
    assert calls == ["a", "na", "na"]
    strict = make_cache(cache_none=False)

    @strict.cached()
    def strict_none(x: str) -> None:
        calls.append("s" + x)

    strict_none("a")
    strict_none("a")
    assert calls[-2:] == ["sa", "sa"]


async def test_loader_exceptions_propagate_and_are_not_cached(make_cache: Factory) -> None:
    cache = make_cache()
    attempts: list[int] = []

    @cache.cached()
    async def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) == 1:
            raise ConnectionError("database down")
        return x * 10

    with pytest.raises(ConnectionError, match="database down"):
        await flaky(1)
    assert await flaky(1) == 10 and await flaky(1) == 10
    assert attempts == [1, 1]
    loader = cache.stats()["loader"]
    assert loader["calls"] == 2 and loader["failures"] == 1
    assert loader["duration"]["count"] == 2


def test_l1_ttl_is_min_of_ttl_l1_ttl_and_l2_remaining(make_cache: Factory) -> None:
    now = [1000.0]
    cache = make_cache(clock=lambda: now[0], l1_default_ttl=100)

    @cache.cached(ttl=30)
    def short(x: int) -> int:
        return x

    @cache.cached(ttl=300, l1_ttl=5)
    def capped(x: int) -> int:
        return x

    @cache.cached(ttl=300)
    def default_l1(x: int) -> int:
        return x

    short(1), capped(1), default_l1(1)
    assert short.segment.expires_at(1) == pytest.approx(1030.0)
    assert capped.segment.expires_at(1) == pytest.approx(1005.0)
    assert default_l1.segment.expires_at(1) == pytest.approx(1100.0)
    now[0] += 31
    calls = cache.stats()["l2"]["hits"]
    assert short(1) == 1 and cache.stats()["l2"]["hits"] == calls + 1  # L1 expired -> L2 hit
    # backfill from L2: bounded by what is left of the L2 entry's TTL (30s, minus elapsed)
    assert short.segment.expires_at(1) <= now[0] + 30


async def test_get_many_backfill_keeps_the_l2_entry_ttl(make_cache: Factory) -> None:
    """get_many backfills L1 like get does: no longer than the L2 entry has left to live
    (L1 without a default TTL would otherwise keep a 5 s entry forever)."""
    now = [1000.0]
    writer, reader = make_cache(l1=False), make_cache(clock=lambda: now[0])
    await writer.set("short:1", 1, ttl=5)
    await writer.set("short:2", 2, ttl=5)
    assert await reader.get("short:1") == 1
    assert await reader.get_many(["short:2"]) == {"short:2": 2}
    assert reader.get_many_sync(["short:2"]) == {"short:2": 2}
    kv = reader.segments[f"{reader.namespace}:"]
    assert kv.expires_at("short:1") is not None and kv.expires_at("short:1") <= now[0] + 5
    assert kv.expires_at("short:2") is not None and kv.expires_at("short:2") <= now[0] + 5


def test_tags_must_be_lists_not_strings(make_cache: Factory) -> None:
    """A str is an iterable of one-letter tags: invalidate_tags("user:1") would silently
    miss the entry. Refused, whether given directly or returned by the tags callable."""
    cache = make_cache()
    with pytest.raises(TypeError, match="not a str"):
        cache.cached(tags="user")(lambda: 1)

    @cache.cached(tags=lambda user_id: f"user:{user_id}")
    def get_user(user_id: int) -> int:
        return user_id

    with pytest.raises(TypeError, match="not a str"):
        get_user(1)

    @cache.cached(tags=lambda user_id: (f"user:{user_id}",))
    def get_user2(user_id: int) -> int:
        return user_id

    assert get_user2(2) == 2 and cache.invalidate_tags_sync("user:2") >= 1


def test_sync_wrapper_returning_a_coroutine_is_refused(make_cache: Factory) -> None:
    """A plain decorator around an async function hides its coroutine-ness: the cache must
    not store (and later hand out again) an already-awaited coroutine object."""
    cache = make_cache()

    async def fetch(x: int) -> int:
        return x

    @cache.cached()
    @functools.wraps(fetch)
    def looks_sync(x: int) -> Any:
        return fetch(x)

    with pytest.raises(TypeError, match="awaitable"):
        looks_sync(1)
    with pytest.raises(TypeError, match="awaitable"):
        looks_sync(1)  # nothing was cached
    assert cache.stats()["loader"]["failures"] == 2


def test_same_name_decorated_with_and_without_key_both_work(make_cache: Factory) -> None:
    """Two functions with one qualname (defs in two branches: two lines, two segments), one
    with custom keys: each served and invalidated on its own."""
    cache = make_cache()

    def make(custom: bool) -> Any:
        if custom:
            @cache.cached(key=lambda x: f"item:{x}")
            def item(x: int) -> int:
                return x * 10
        else:
            @cache.cached()
            def item(x: int) -> int:
                return x * 10
        return item

    plain, keyed = make(False), make(True)
    assert plain(1) == 10 and keyed(2) == 20 and keyed(2) == 20
    assert cache.invalidate_pattern_sync("item:*") >= 1
    assert keyed.segment is not plain.segment  # two functions never share entries
    assert len(keyed.segment) == 0 and len(plain.segment) == 1  # keyed(2) dropped, plain(1) kept
    assert plain(1) == 10
    assert keyed.invalidate(2) == 0 and plain.invalidate(1) == 1
    assert len(plain.segment) == 0


def test_unhashable_arguments_use_l2_only(make_cache: Factory) -> None:
    cache = make_cache()
    calls: list[Any] = []

    @cache.cached()
    def total(xs: list[int], opts: dict[str, int]) -> int:
        calls.append(xs)
        return sum(xs) * opts["k"]

    assert total([1, 2], {"k": 2}) == 6 and total([1, 2], {"k": 2}) == 6
    assert len(calls) == 1 and len(total.segment) == 0
    assert cache.stats()["l2"]["hits"] == 1


def test_invalidate_by_arguments_drops_every_call_form(make_cache: Factory) -> None:
    src = Source()
    cache = make_cache()

    @cache.cached()
    def get(x: int, y: int = 2) -> Any:
        return src.load((x, y))

    get(1), get(x=1), get(1, 2), get(1, y=2), get(5)
    assert len(get.segment) == 5 and src.calls == [(1, 2), (5, 2)]
    assert get.invalidate(x=1) == 1  # one L2 key
    assert len(get.segment) == 1  # every alias of (1, 2) left L1; (5,) stayed
    get(1, y=2)
    assert src.calls == [(1, 2), (5, 2), (1, 2)]
    assert get.invalidate_all() >= 1 and len(get.segment) == 0
    get(5)
    assert src.calls[-1] == (5, 2)


class Color(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    HIGH = 3


@dataclasses.dataclass
class Account:
    id: int

    def __cache_key__(self) -> int:
        return self.id


def _module_level(a: Any, b: Any = None, *rest: Any, **kw: Any) -> None:
    return None


def test_key_building_is_canonical_and_stable(make_cache: Factory) -> None:
    cache = make_cache(namespace="shop")
    fn = cache.cached()(_module_level)
    key = fn.key_for
    assert key(1) == key(a=1) == key(1, None)
    assert key(1).startswith("test_cache._module_level:") or key(1).startswith(
        "tests.test_cache._module_level:")
    assert key({"x": 1, "y": 2}) == key({"y": 2, "x": 1})
    assert key({3, 1, 2}) == key({2, 3, 1}) and key([1, 2]) != key((1, 2))
    assert key(1, 2, 3) != key(1, 2, 4) and key(1, x=1) != key(1, x=2)
    # equal arguments, one key (they share one L1 entry, like functools.lru_cache)
    assert key(1) == key(1.0) == key(True) == key(Decimal("1.00")) != key("1")
    assert key(0.0) == key(-0.0) and key(1.5) == key(Decimal("1.5")) != key(Decimal("1.6"))
    assert key(Decimal("0.1")) != key(0.1) and key((1, 2.0)) == key((1.0, 2))
    assert key({1}) == key(frozenset({1.0})) and key({"a": 1}) == key({"a": 1.0})
    assert key(Color.RED) != key(1) and key(Level.HIGH) == key(3)
    utc = dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC)
    assert key(utc) == key(utc.astimezone(dt.timezone(dt.timedelta(hours=2))))
    assert key(utc) != key(utc.replace(tzinfo=None))
    assert key(Decimal("1.5"), dt.date(2024, 1, 1)) == key(Decimal("1.5"), dt.date(2024, 1, 1))
    assert key(Account(7)) == key(Account(7)) != key(Account(8))
    with pytest.raises(TypeError, match="argument 'a'"):
        key(object())
    # the digest does not depend on hash randomisation: another interpreter agrees
    code = ("from tiercache._keys import canonical_digest;"
            "print(canonical_digest({'a': {'x': 1, 'y': (2, 3)}, 'b': {'s', 't', 'u'}}))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, check=True, timeout=60).stdout.strip()
    assert other == canonical_digest({"a": {"y": (2, 3), "x": 1}, "b": {"u", "t", "s"}})


def test_invalidating_an_equal_argument_reaches_the_shared_l1_entry(
        make_cache: Factory) -> None:
    cache = make_cache()
    loads: list[Any] = []

    @cache.cached()
    def get(x: Any) -> int:
        loads.append(x)
        return len(loads)

    assert get(1.0) == 1 and get(True) == 1  # one L1 entry: (1.0,) == (True,)
    assert get.invalidate(True) == 1
    assert get(1.0) == 2 and loads == [1.0, 1.0]


def test_custom_key_and_long_keys(make_cache: Factory, redis_cluster_client: Any) -> None:
    cache = make_cache(namespace="shop")

    @cache.cached(key=lambda user_id: f"user:{user_id}")
    def user(user_id: int) -> dict[str, int]:
        return {"id": user_id}

    assert user(42) == {"id": 42} and user.key_for(42) == "user:42"
    assert redis_cluster_client.exists("shop:user:42") == 1
    long_fn = cache.cached(key=lambda s: s)(lambda s: s.upper())
    long = long_fn("k" * 1000)
    assert long == "K" * 1000
    stored = long_fn.key_for("k" * 1000)
    assert len(stored) <= MAX_KEY_LENGTH and stored.startswith("k" * 100 + "#")

    @cache.cached(key=lambda x: 5)  # type: ignore[arg-type,return-value]
    def bad(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="must return str"):
        bad(1)


async def test_key_value_api_async_and_sync(make_cache: Factory,
                                            redis_cluster_client: Any) -> None:
    a, b = make_cache(), make_cache()
    await a.set("user:1", {"name": "ada"}, ttl=30)
    assert redis_cluster_client.exists(a.full_key("user:1")) == 1
    assert await b.get("user:1") == {"name": "ada"}  # L2 hit in b, backfills b's L1
    assert await b.get("nope") is None and await b.get("nope", 0) == 0
    await a.set_many({"user:2": 2, "user:3": (3, "x")}, ttl=30)
    assert await b.get_many(["user:1", "user:2", "user:3", "user:4"]) == {
        "user:1": {"name": "ada"}, "user:2": 2, "user:3": (3, "x")}
    a.set_sync("user:1", "changed")
    assert a.get_sync("user:1") == "changed"
    for _ in range(200):  # b's L1 copy goes via the bus
        if b.get_sync("user:1") == "changed":
            break
        await asyncio.sleep(0.01)
    assert b.get_sync("user:1") == "changed"
    a.set_many_sync({"k1": 1, "k2": 2})
    assert a.get_many_sync(["k1", "k2", "k3"]) == {"k1": 1, "k2": 2}
    assert a.delete_sync("k1") and not a.delete_sync("k1")
    with pytest.raises(TypeError):
        await a.set("bad", object())
    assert await a.get("bad") is None


def test_unencodable_loader_result_is_served_and_kept_in_l1(make_cache: Factory) -> None:
    cache = make_cache()
    marker = object()

    @cache.cached()
    def thing(x: int) -> object:
        return marker

    assert thing(1) is marker and thing(1) is marker
    assert cache.stats()["loader"]["encode_errors"] == 1 and cache.stats()["loader"]["calls"] == 1


async def test_warm_preloads_with_bounded_concurrency(make_cache: Factory) -> None:
    cache = make_cache()
    running, peak = [0], [0]

    @cache.cached()
    async def slow(x: int, y: int = 0) -> int:
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        await asyncio.sleep(0.005)
        running[0] -= 1
        return x + y

    assert await cache.warm(slow, [1, (2,), {"x": 3, "y": 1}, *range(4, 40)], concurrency=4) == 39
    assert peak[0] <= 4 and cache.stats()["loader"]["calls"] == 39
    assert await slow(1) == 1 and cache.stats()["loader"]["calls"] == 39

    @cache.cached()
    def plain(x: int) -> int:
        return x * 2

    assert cache.warm_sync(plain, range(10), concurrency=3) == 10
    assert await cache.warm(plain, [10, 11]) == 2
    assert cache.stats()["loader"]["calls"] == 51 and plain(10) == 20


def test_methods_with_cache_key(make_cache: Factory) -> None:
    cache = make_cache()
    calls: list[int] = []

    @dataclasses.dataclass(frozen=True)
    class Repo:
        shard: int

        def __cache_key__(self) -> int:
            return self.shard

        @cache.cached()
        def find(self, x: int) -> tuple[int, int]:
            calls.append(x)
            return (self.shard, x)

    assert Repo(1).find(5) == (1, 5) and Repo(1).find(5) == (1, 5) and Repo(2).find(5) == (2, 5)
    assert calls == [5, 5]


async def test_stats_and_health(make_cache: Factory) -> None:
    cache = make_cache(min_requests=10, name="shop-cache")

    @cache.cached()
    def get(x: int) -> int:
        return x

    for i in range(20):
        get(i % 2)
    st = cache.stats()
    assert st["name"] == "shop-cache"
    assert st["l1"]["hits"] == 18 and st["l1"]["hit_ratio"] == pytest.approx(0.9)
    assert {"hits", "misses", "sets", "errors", "hit_ratio", "breaker"} <= set(st["l2"])
    assert {"calls", "failures", "seconds_total", "singleflight_waits", "lock_waits",
            "duration"} <= set(st["loader"])
    report = await cache.health()
    assert report["status"] == "healthy", report
    assert report["checks"]["redis"]["ok"] and report["checks"]["breaker"] == "closed"
    for i in range(100):
        get(1000 + i)  # all misses: hit ratio drops below 0.8
    report = cache.health_sync()
    assert report["status"] == "degraded"
    assert any("hit ratio" in reason for reason in report["reasons"])


def test_bad_arguments_and_timedelta_ttls() -> None:
    with pytest.raises(ValueError):
        TierCache(namespace="a:b")
    cache = TierCache(l1=MemoryTier())
    with pytest.raises(TypeError):
        cache.cached(tags="user")(lambda x: x)
    with pytest.raises(TypeError, match="parentheses"):
        cache.cached(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl"):
        cache.cached(ttl=0)(lambda x: x)
    with pytest.raises(TypeError, match="wrap it in a def"):
        cache.cached()(functools.partial(divmod, 7))
    fn = cache.cached(ttl=dt.timedelta(minutes=5), l1_ttl=dt.timedelta(seconds=30))(abs)
    assert fn.spec.ttl == 300.0 and fn.spec.l1_ttl == 30.0 and fn(-2) == 2



def test_stats_feed_the_metrics_exporter(make_cache: Factory) -> None:
    from tiercache import metrics

    cache = make_cache(name=f"exported-{uuid.uuid4().hex[:6]}")

    @cache.cached()
    def get(x: int) -> int:
        return x

    get(1), get(1), get(2)
    metrics.register(cache)
    try:
        current = metrics.samples()
    finally:
        metrics.unregister(cache)
    requests = current["tiercache_requests_total"]
    assert requests[(cache.name, "l1", "hit")] == 1 and requests[(cache.name, "l1", "miss")] == 2
    assert requests[(cache.name, "l2", "miss")] == 2
    assert current["tiercache_loader_calls_total"][(cache.name,)] == 2
    assert current["tiercache_loader_duration_seconds"][(cache.name,)]["count"] == 2
    assert current["tiercache_bus_connected"][(cache.name,)] == 1


async def test_no_tiers_at_all_still_calls_through() -> None:
    cache = TierCache()
    calls: list[int] = []

    @cache.cached()
    async def get(x: int) -> int:
        calls.append(x)
        return x

    assert [await get(1), await get(1)] == [1, 1] and calls == [1, 1]
    assert (await cache.health())["status"] == "healthy"
    assert cache.stats()["loader"]["calls"] == 2


def test_l1_index_keeps_digests_compact_after_misses(cache_factory: Factory) -> None:
    """The read path never re-registers the segment: its prefix stays, keys stay 16-byte digests
    (re-registering with the default prefix widened it to "" and stored ~51-char strings)."""
    cache = cache_factory(l2=False)

    @cache.cached(ttl=60)
    def double(x: int) -> int:
        return x * 2

    for i in range(50):
        assert double(i) == 2 * i
    index = cache.coherence.index._segments[double.segment]
    assert index.prefix == f"{double.spec.name}:"
    assert len(index.digests) == 50 and not index.keys
    assert cache.coherence.index.drop_keys([double.key_for(7)]) == 1
    assert 7 not in double.segment


@pytest.mark.parametrize(("ttl", "error", "message"), [
    (0, ValueError, "ttl must be > 0 seconds or None, got 0"),
    (-1, ValueError, "ttl must be > 0 seconds or None, got -1"),
    (float("nan"), ValueError, "ttl must be > 0 seconds or None"),
    (dt.timedelta(0), ValueError, "ttl must be > 0 seconds or None"),
    ("60", TypeError, "ttl must be a number of seconds, a timedelta or None, got str '60'"),
    (True, TypeError, "got bool True"),
])
async def test_every_ttl_entry_point_refuses_the_same_bad_ttls(
        make_cache: Factory, ttl: Any, error: type[Exception], message: str) -> None:
    """set/set_many (both shells) and @cached validate alike, before anything is stored
    (set(ttl=0) and ttl=-1 used to return normally storing nothing; "60" hit a '>' TypeError)."""
    cache = make_cache()
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        await cache.set("k", 1, ttl=ttl)
    with pytest.raises(error, match="ttl must be"):
        cache.set_sync("k", 1, ttl=ttl)
    with pytest.raises(error, match="ttl must be"):
        await cache.set_many({"k": 1}, ttl=ttl)
    with pytest.raises(error, match="ttl must be"):
        cache.set_many_sync({"k": 1}, ttl=ttl)
    with pytest.raises(error, match="ttl must be"):
        cache.cached(ttl=ttl)(lambda: 1)
    with pytest.raises(error, match="l1_ttl must be"):
        cache.cached(l1_ttl=ttl)(lambda: 1)
    assert await cache.get("k") is None  # nothing was written by any of them
    await cache.set("k", 2, ttl=dt.timedelta(seconds=30))
    assert await cache.get("k") == 2
