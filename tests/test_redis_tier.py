"""RedisTier against the session's real Redis Cluster (LocalStack): round trips, batches
across slots, pattern deletes on every master, tags, leases, TTL jitter, bad payloads."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio.cluster import RedisCluster as AsyncCluster
from redis.cluster import RedisCluster

from tiercache.codec import FORMAT_VERSION, pack_entry
from tiercache.tiers.base import MISSING
from tiercache.tiers.keys import is_reserved, lease_key, tag_key
from tiercache.tiers.redis import RedisTier

# ------------------------------------------------------------------ fixtures


@pytest.fixture
def tier(redis_cluster_client: RedisCluster, tiercache_stack: Any) -> Iterator[RedisTier]:
    """A sync-used tier on a flushed cluster."""
    t = RedisTier(tiercache_stack.redis_url, ttl=60)
    yield t
    t.close_sync()


@pytest.fixture
async def atier(async_redis_cluster_client: AsyncCluster,
                tiercache_stack: Any) -> AsyncIterator[RedisTier]:
    t = RedisTier(tiercache_stack.redis_url, ttl=60)
    yield t
    await t.close()


def keys_per_master(client: RedisCluster, prefix: str, per_node: int) -> list[str]:
    """Keys spread so that every master owns ``per_node`` of them."""
    masters = {n.name: 0 for n in client.get_primaries()}  # type: ignore[no-untyped-call]
    out: list[str] = []
    i = 0
    while any(count < per_node for count in masters.values()):
        key = f"{prefix}{i}"
        node = client.get_node_from_key(key).name  # type: ignore[no-untyped-call]
        if masters[node] < per_node:
            masters[node] += 1
            out.append(key)
        i += 1
    return out


# ------------------------------------------------------------------ round trips

tzs = st.one_of(st.none(), st.just(dt.UTC),
                st.integers(-600, 600).map(lambda m: dt.timezone(dt.timedelta(minutes=m))))
hashables = st.one_of(st.integers(-(2**70), 2**70), st.text(max_size=6), st.binary(max_size=6),
                      st.booleans(), st.none(), st.uuids(), st.dates())
scalars = st.one_of(hashables, st.floats(allow_nan=False), st.datetimes(timezones=tzs),
                    st.times(timezones=tzs), st.timedeltas(), st.decimals(allow_nan=False))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=5), inner, max_size=4),
        st.frozensets(hashables, max_size=4),
        st.sets(hashables, max_size=4),
    ),
    max_leaves=12,
)


def same(a: Any, b: Any) -> bool:
    """Equality that also checks exact types and tzinfo."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dt.datetime | dt.time):
        return bool(a == b and a.tzinfo == b.tzinfo)
    if isinstance(a, Decimal):
        return a.as_tuple() == b.as_tuple() if a.is_finite() else str(a) == str(b)
    return bool(a == b)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=values)
def test_every_codec_type_round_trips_through_redis(tier: RedisTier, value: Any) -> None:
    tier.set_sync("rt:key", value)
    got = tier.get_sync("rt:key")
    assert same(got, value), (got, value)


async def test_async_round_trip_and_entry_fields(atier: RedisTier) -> None:
    value = {"id": uuid.uuid4(), "at": dt.datetime.now(dt.UTC), "tags": {"a", "b"},
             "price": Decimal("9.99"), "pair": (1, "x"), "raw": b"\x00\xff"}
    await atier.set("rt:async", value, ttl=30, load_time=0.125)
    entry = await atier.get_entry("rt:async")
    assert entry is not MISSING
    assert same(entry.value, value)
    assert entry.load_time == 0.125
    assert entry.ttl is not None and 30 * 0.9 <= entry.ttl <= 30
    assert abs(entry.stored_at - dt.datetime.now().timestamp()) < 60
    assert await atier.get("rt:missing") is MISSING
    s = atier.stats()
    assert (s["hits"], s["misses"], s["sets"], s["errors"]) == (1, 1, 1, 0)
    assert s["latency"]["get"]["count"] == 2


async def test_none_is_a_value_not_a_miss(atier: RedisTier) -> None:
    await atier.set("neg", None)
    assert await atier.get("neg") is None


# ------------------------------------------------------------------ bad payloads


@pytest.mark.parametrize("payload", [
    b"\xc1TC\x01\xff\xff\xff",                      # truncated/corrupt envelope
    b'{"json": "is foreign"}',
    msgpack.packb([1, 2, 3]),                       # plain msgpack, no envelope
    b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00N.",  # a pickle is just foreign bytes here
    b"\xc1TC" + bytes([FORMAT_VERSION + 1]) + msgpack.packb([1, 0.0, None, 0.0]),  # newer
])
def test_foreign_corrupt_or_newer_payload_is_a_counted_miss(
    tier: RedisTier, redis_cluster_client: RedisCluster, payload: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis_cluster_client.set("bad:1", payload)
    redis_cluster_client.set("good:1", pack_entry(7, stored_at=0.0))
    assert tier.get_sync("bad:1") is MISSING
    assert tier.get_many_sync(["bad:1", "good:1"]) == {"good:1": 7}
    s = tier.stats()
    assert s["errors_by_op"] == {"decode": 2}
    assert s["errors"] == 2 and s["breaker"] == "closed"
    assert (s["hits"], s["misses"]) == (1, 2)  # a miss (plus an error), never a hit
    assert any("bad:1" in r.getMessage() for r in caplog.records)


def test_text_payload_from_a_decoding_client_is_a_counted_miss(
    tiercache_stack: Any, redis_cluster_client: RedisCluster,
) -> None:
    """A user's client with decode_responses=True hands back str, not bytes: still a miss."""
    host, port = tiercache_stack.redis_nodes[0]
    client = RedisCluster(host=host, port=port, decode_responses=True)
    try:
        client.set("text:1", "plain text")
        tier = RedisTier(client)
        assert tier.get_sync("text:1") is MISSING
        assert tier.get_many_sync(["text:1"]) == {}
        assert tier.stats()["errors_by_op"] == {"decode": 2}
    finally:
        client.close()


async def test_bad_payload_async(atier: RedisTier,
                                 async_redis_cluster_client: AsyncCluster) -> None:
    await async_redis_cluster_client.set("bad:2", b"\xc1TC\x01garbage")
    assert await atier.get("bad:2") is MISSING
    assert atier.stats()["errors_by_op"] == {"decode": 1}


class Opaque:
    pass


def test_unencodable_value_raises_typeerror_and_writes_nothing(
    tier: RedisTier, redis_cluster_client: RedisCluster
) -> None:
    with pytest.raises(TypeError, match="Opaque"):
        tier.set_sync("enc:1", Opaque())
    with pytest.raises(TypeError, match="Opaque"):
        tier.set_many_sync({f"enc:{i}": i for i in range(20)} | {"enc:bad": [Opaque()]})
    assert redis_cluster_client.dbsize() == 0  # type: ignore[no-untyped-call]
    assert tier.stats()["errors"] == 0


async def test_unencodable_async(atier: RedisTier,
                                 async_redis_cluster_client: AsyncCluster) -> None:
    with pytest.raises(TypeError, match="Opaque"):
        await atier.set("enc:2", {"x": Opaque()})
    with pytest.raises(TypeError, match="Opaque"):
        await atier.set_many({"a": 1, "b": Opaque()})
    assert await async_redis_cluster_client.dbsize() == 0


# ------------------------------------------------------------------ batches across slots


def test_get_many_set_many_across_every_master(tier: RedisTier,
                                               redis_cluster_client: RedisCluster) -> None:
    keys = keys_per_master(redis_cluster_client, "batch:", 40)
    tier.set_many_sync({k: {"k": k} for k in keys}, ttl=30)
    assert all(redis_cluster_client.pttl(k) > 0 for k in keys[:10])
    wanted = [*keys, "batch:absent-1", "batch:absent-2"]
    got = tier.get_many_sync(wanted)
    assert got == {k: {"k": k} for k in keys}
    s = tier.stats()
    assert (s["hits"], s["misses"], s["sets"]) == (len(keys), 2, len(keys))
    assert tier.delete_many_sync([*keys[:50], "batch:absent-1"]) == 50
    assert len(tier.get_many_sync(keys)) == len(keys) - 50


async def test_async_batches_across_every_master(atier: RedisTier,
                                                 redis_cluster_client: RedisCluster) -> None:
    keys = keys_per_master(redis_cluster_client, "abatch:", 40)
    await atier.set_many({k: i for i, k in enumerate(keys)})
    assert await atier.get_many(iter(keys)) == {k: i for i, k in enumerate(keys)}
    assert await atier.get_many([]) == {}
    assert await atier.delete_many(keys) == len(keys)
    assert await atier.get_many(keys) == {}


def test_delete_pattern_scans_every_master(tier: RedisTier,
                                           redis_cluster_client: RedisCluster) -> None:
    doomed = keys_per_master(redis_cluster_client, "shop:user:", 150)
    kept = keys_per_master(redis_cluster_client, "shop:order:", 10)
    tier.set_many_sync(dict.fromkeys(doomed + kept, 1))
    assert tier.delete_pattern_sync("shop:user:*") == len(doomed)
    assert tier.get_many_sync(doomed) == {}
    assert len(tier.get_many_sync(kept)) == len(kept)


async def test_delete_pattern_async(atier: RedisTier,
                                    redis_cluster_client: RedisCluster) -> None:
    doomed = keys_per_master(redis_cluster_client, "ns:a:", 50)
    await atier.set_many(dict.fromkeys(doomed, 1))
    await atier.set("ns:b:1", 1)
    assert await atier.delete_pattern("ns:a:*") == len(doomed)
    assert await atier.delete_pattern("ns:a:*") == 0
    assert await atier.get("ns:b:1") == 1


# ------------------------------------------------------------------ tags


def test_tags_index_and_invalidate(tier: RedisTier, redis_cluster_client: RedisCluster) -> None:
    keys = keys_per_master(redis_cluster_client, "t:", 5)
    for k in keys:
        tier.set_sync(k, k, ttl=30)
        tier.add_tags_sync(k, ["all", f"own:{k}"], ttl=30)
    tier.set_sync("t:untagged", 1)
    tag_ttl = redis_cluster_client.pttl(tag_key("all", "t"))
    assert 30_000 <= tag_ttl <= 31_000  # outlives every entry it indexes
    assert tier.invalidate_tags_sync([f"own:{keys[0]}"], namespace="t") == 1
    assert tier.get_sync(keys[0]) is MISSING
    assert tier.invalidate_tags_sync(["all"], namespace="t") == len(keys) - 1
    assert tier.get_many_sync(keys) == {}
    assert tier.get_sync("t:untagged") == 1
    assert redis_cluster_client.exists(tag_key("all", "t")) == 0
    assert tier.invalidate_tags_sync(["all", "never-used"], namespace="t") == 0


def test_tag_expiry_only_grows_and_persists_for_eternal_entries(
    tier: RedisTier, redis_cluster_client: RedisCluster
) -> None:
    tier.add_tags_sync("x:1", ["grow"], ttl=100)
    tier.add_tags_sync("x:2", ["grow"], ttl=10)
    assert redis_cluster_client.pttl(tag_key("grow", "x")) > 90_000
    tier.add_tags_sync("x:3", ["grow"], ttl=float("inf"))
    assert redis_cluster_client.pttl(tag_key("grow", "x")) == -1
    tier.add_tags_sync("x:4", ["grow"], ttl=5)
    assert redis_cluster_client.pttl(tag_key("grow", "x")) == -1
    assert redis_cluster_client.zcard(tag_key("grow", "x")) == 4


async def test_tags_async(atier: RedisTier) -> None:
    await atier.set("u:1", "one")
    await atier.set("u:2", "two")
    await atier.add_tags("u:1", ["user:1", "users"])
    await atier.add_tags("u:2", iter(["users"]))
    assert await atier.invalidate_tags(["user:1"], namespace="u") == 1
    assert await atier.get("u:2") == "two"
    assert await atier.invalidate_tags(["users", "users"], namespace="u") == 1
    assert atier.stats()["deletes"] == 2


# ------------------------------------------------------------------ leases


@pytest.mark.parametrize("key", ["shop:f:abc", "shop:{user42}:f:abc", "odd}key", "a{}b}c", "{"])
def test_lease_key_shares_the_slot(redis_cluster_client: RedisCluster, key: str) -> None:
    lk = lease_key(key)
    assert is_reserved(lk) and lk != key
    assert redis_cluster_client.keyslot(lk) == redis_cluster_client.keyslot(key)


def test_lease_is_exclusive_and_released_only_by_its_holder(tier: RedisTier) -> None:
    token = tier.acquire_lease_sync("shop:f:1", 5000)
    assert token and not token.startswith("local:")
    assert tier.acquire_lease_sync("shop:f:1", 5000) is None
    assert tier.release_lease_sync("shop:f:1", "not-the-token") is False
    assert tier.acquire_lease_sync("shop:f:1", 5000) is None
    assert tier.release_lease_sync("shop:f:1", token) is True
    again = tier.acquire_lease_sync("shop:f:1", 5000)
    assert again and again != token


async def test_lease_expires_and_async_twins(atier: RedisTier) -> None:
    token = await atier.acquire_lease("shop:f:2", 50)
    assert token is not None
    assert await atier.acquire_lease("shop:f:2", 50) is None
    await asyncio.sleep(0.1)
    late = await atier.acquire_lease("shop:f:2", 1000)
    assert late is not None
    assert await atier.release_lease("shop:f:2", token) is False  # expired, not ours anymore
    assert await atier.release_lease("shop:f:2", late) is True


# ------------------------------------------------------------------ TTL


def test_ttl_jitter_bounds(tiercache_stack: Any, redis_cluster_client: RedisCluster) -> None:
    t = RedisTier(tiercache_stack.redis_url, ttl=100, ttl_jitter=0.2)
    try:
        keys = [f"j:{i}" for i in range(200)]
        t.set_many_sync(dict.fromkeys(keys, 1))
        for k in keys[:20]:
            t.set_sync(k, 2)
        pttls = [redis_cluster_client.pttl(k) for k in keys]
        assert all(80_000 - 1_000 <= p <= 100_000 for p in pttls), (min(pttls), max(pttls))
        assert max(pttls) - min(pttls) > 5_000  # spread, not one expiry instant
        entry = t.get_entry_sync("j:0")
        assert entry is not MISSING and entry.ttl is not None and 80 <= entry.ttl <= 100
    finally:
        t.close_sync()


def test_no_expiry_and_non_positive_ttl(tiercache_stack: Any,
                                        redis_cluster_client: RedisCluster) -> None:
    t = RedisTier(tiercache_stack.redis_url, ttl=None)
    try:
        t.set_sync("e:forever", 1)
        assert redis_cluster_client.pttl("e:forever") == -1
        entry = t.get_entry_sync("e:forever")
        assert entry is not MISSING and entry.ttl is None
        t.set_sync("e:inf", 1, ttl=float("inf"))
        assert redis_cluster_client.pttl("e:inf") == -1
        with pytest.raises(ValueError, match="ttl"):  # issue 8.3: refused, not a silent no-op
            t.set_sync("e:forever", 2, ttl=0)
        assert t.get_sync("e:forever") == 1  # and nothing was written
    finally:
        t.close_sync()
    with pytest.raises(ValueError):
        RedisTier(tiercache_stack.redis_url, ttl=0)
    with pytest.raises(ValueError):
        RedisTier(tiercache_stack.redis_url, ttl_jitter=1.0)


# ------------------------------------------------------------------ bus, health, clients


async def test_publish_reaches_a_subscriber_on_another_node(atier: RedisTier) -> None:
    await atier.ping()  # connected: the tier knows every node, not just the seed
    sub = atier.pubsub_client()
    other = atier.pubsub_client()
    try:
        assert sub.connection_pool.connection_kwargs["port"] != \
            other.connection_pool.connection_kwargs["port"]
        pubsub = sub.pubsub()
        await pubsub.subscribe("tc:bus:test")
        await pubsub.get_message(timeout=1.0)  # subscribe confirmation
        await atier.publish("tc:bus:test", b"drop user:1")
        msg = None
        for _ in range(50):
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if msg:
                break
        assert msg is not None and msg["data"] == b"drop user:1"
        await pubsub.aclose()
    finally:
        await sub.aclose()
        await other.aclose()


async def test_ping_and_stats_shape(atier: RedisTier) -> None:
    assert 0 < await atier.ping() < 5
    assert atier.cluster is True
    s = atier.stats()
    assert set(s) >= {"hits", "misses", "sets", "deletes", "evictions", "errors", "errors_by_op",
                      "hit_ratio", "breaker", "latency", "size"}
    assert s["breaker"] == "closed" and s["size"] is None and s["evictions"] == 0


def test_user_supplied_clients_serve_both_flavours(tiercache_stack: Any,
                                                   redis_cluster_client: RedisCluster) -> None:
    t = RedisTier(redis_cluster_client)
    t.set_sync("uc:1", "sync")

    async def use_async() -> Any:
        value = await t.get("uc:1")
        await t.close()
        return value

    assert asyncio.run(use_async()) == "sync"
    t.close_sync()
    assert redis_cluster_client.get("uc:1") is not None  # the user's client is still open


async def test_user_supplied_async_client_gets_a_sync_twin(
    async_redis_cluster_client: AsyncCluster,
) -> None:
    t = RedisTier(async_redis_cluster_client)
    assert t.cluster is True
    await t.set("uac:1", [1, 2])
    assert await asyncio.to_thread(t.get_sync, "uac:1") == [1, 2]  # built from the client
    await t.close()
    assert await async_redis_cluster_client.get("uac:1") is not None  # still open


def test_async_client_follows_the_event_loop(tiercache_stack: Any,
                                             redis_cluster_client: RedisCluster) -> None:
    t = RedisTier(tiercache_stack.redis_url)

    async def roundtrip(value: int) -> Any:
        await t.set("loop:1", value)
        return await t.get("loop:1")

    assert asyncio.run(roundtrip(1)) == 1
    assert asyncio.run(roundtrip(2)) == 2  # a new loop, a new client, no error
    assert t.stats()["errors"] == 0
    t.close_sync()


def test_clients_of_finished_loops_are_closed(tiercache_stack: Any,
                                              redis_cluster_client: RedisCluster) -> None:
    """Each asyncio.run() gets its own client; it must be closed with its loop, not leaked
    ("Unclosed ClusterNode object" / "unclosed transport" when collected)."""
    import gc
    import warnings

    tiers = [RedisTier(tiercache_stack.redis_url)]

    async def roundtrip(value: int) -> Any:
        await tiers[0].set("loop:2", value)
        return await tiers[0].get("loop:2")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for i in range(3):
            assert asyncio.run(roundtrip(i)) == i
        tiers.pop().close_sync()
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


@settings(max_examples=100, deadline=None)
@given(value=values, stored_at=st.one_of(st.floats(0, 2e9), st.integers(0, 2**31)),
       ttl=st.one_of(st.none(), st.floats(0.001, 1e6), st.integers(1, 10**6)),
       load_time=st.one_of(st.floats(0, 100), st.integers(0, 100)))
def test_fast_unpack_agrees_with_the_codec(value: Any, stored_at: float, ttl: float | None,
                                           load_time: float) -> None:
    from tiercache.codec import unpack_entry
    from tiercache.tiers._redis_ops import fast_unpack

    raw = pack_entry(value, stored_at=stored_at, ttl=ttl, load_time=load_time)
    ours, theirs = fast_unpack(raw), unpack_entry(raw)
    assert type(ours) is type(theirs)
    assert same(list(ours), list(theirs))


@pytest.mark.parametrize("payload", [b"", b"\xc1TC\x01", b"\xc1TC\x01\x93\x01\x02\x03",
                                     b"\xc1TC\x01\x94\x01\xa1x\xc0\xcb"])
def test_fast_unpack_refuses_what_the_codec_refuses(payload: bytes) -> None:
    from tiercache.codec import CodecError
    from tiercache.tiers._redis_ops import fast_unpack

    with pytest.raises(CodecError):
        fast_unpack(payload)


# ------------------------------------------------------------------ the typed seam


def test_redis_tier_satisfies_the_remote_tier_protocol(tier: RedisTier) -> None:
    from tiercache.tiers.base import RemoteTier

    seam: RemoteTier = tier  # mypy checks the signatures; isinstance the names
    assert isinstance(seam, RemoteTier)
