"""Key layout on the real cluster: tags and leases namespaced in a reserved space, tag sets
bounded by the live entries, foreign or hostile keys cannot break tag invalidation."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis.cluster import RedisCluster

from tiercache.cache import TierCache
from tiercache.tiers.base import MISSING
from tiercache.tiers.keys import is_reserved, lease_key, namespace_of, tag_key
from tiercache.tiers.redis import RedisTier

Factory = Callable[..., TierCache]


@pytest.fixture
def tier(redis_cluster_client: RedisCluster, tiercache_stack: Any) -> Iterator[RedisTier]:
    t = RedisTier(tiercache_stack.redis_url, ttl=60)
    yield t
    t.close_sync()


def ns() -> str:
    return f"n{uuid.uuid4().hex[:8]}"


def test_layout_helpers() -> None:
    assert namespace_of("shop:user:1") == "shop" and namespace_of("plain") == ""
    assert tag_key("user:1", "shop") == "shop:~tc:tag:{user:1}"
    assert is_reserved(tag_key("x", "shop")) and is_reserved(tag_key("x"))
    assert is_reserved(lease_key("shop:f:1")) and lease_key("shop:f:1").startswith("shop:~tc:")
    assert not is_reserved("shop:~tcx") and not is_reserved("~tc:x") and not is_reserved("a:b~tc:")


async def test_tags_of_one_namespace_leave_another_namespaces_entries(
        cache_factory: Factory) -> None:
    a, b = cache_factory(namespace=ns()), cache_factory(namespace=ns())
    await a.set("k", "a", tags=["user:1"])
    await b.set("k", "b", tags=["user:1"])
    assert await a.invalidate_tags("user:1") >= 1
    assert await a.get("k") is None
    assert await b.get("k") == "b"
    assert await b.l2.get(f"{b.namespace}:k") == "b"  # L2 of B untouched, not just its L1
    assert await b.invalidate_tags("user:1") >= 1
    assert await b.get("k") is None


async def test_a_namespace_named_like_the_old_prefix_cannot_wipe_others(
        cache_factory: Factory, redis_cluster_client: RedisCluster) -> None:
    other = ns()
    tc, b = cache_factory(namespace="tc"), cache_factory(namespace=other)
    await b.set("k", "b", tags=["shared"])
    await tc.set("tag:{shared}", "collide")  # was the shape of every namespace's tag sets
    await tc.clear()
    assert redis_cluster_client.exists(tag_key("shared", other)) == 1
    assert await b.l2.get(f"{other}:k") == "b"
    assert await b.invalidate_tags("shared") == 1
    assert redis_cluster_client.get(f"{other}:k") is None


async def test_user_keys_in_the_reserved_space_are_refused(cache_factory: Factory,
                                                           tier: RedisTier) -> None:
    c = cache_factory(namespace=ns())
    with pytest.raises(ValueError, match="reserved"):
        await c.set("~tc:tag:{user:1}", 1)
    with pytest.raises(ValueError, match="reserved"):
        tier.set_sync("x:~tc:lease:{k}", 1)
    with pytest.raises(ValueError, match="reserved"):
        tier.set_many_sync({"x:ok": 1, "x:~tc:tag:{t}": 2})
    with pytest.raises(ValueError, match="reserved"):
        tier.delete_many_sync(["x:~tc:tag:{t}"])
    assert tier.get_sync("x:ok") is MISSING  # refused as a whole, before any write
    c.set_sync("~tcish", 1)  # only the exact reserved prefix is refused
    assert c.get_sync("~tcish") == 1


def test_a_foreign_value_at_a_tag_key_is_a_counted_failure_and_other_tags_still_apply(
        tier: RedisTier, redis_cluster_client: RedisCluster,
        caplog: pytest.LogCaptureFixture) -> None:
    space = ns()
    tier.set_sync(f"{space}:a", 1)
    tier.set_sync(f"{space}:b", 2)
    tier.add_tags_sync(f"{space}:a", ["broken"])
    tier.add_tags_sync(f"{space}:b", ["fine"])
    redis_cluster_client.set(tag_key("broken", space), b"not a zset")  # another client
    assert tier.invalidate_tags_sync(["broken", "fine"], namespace=space) == 1
    assert redis_cluster_client.exists(f"{space}:b") == 0
    s = tier.stats()
    assert s["errors_by_op"].get("invalidate_tags") == 1 and tier.tag_failures == 1
    assert "WRONGTYPE" in caplog.text and "broken" in caplog.text


def test_pattern_deletes_leave_tag_sets_unless_namespace_wide(
        tier: RedisTier, redis_cluster_client: RedisCluster) -> None:
    space = ns()
    tier.set_sync(f"{space}:tag-a", 1)
    tier.add_tags_sync(f"{space}:tag-a", ["t"])
    assert tier.delete_pattern_sync(f"{space}:*tag*") == 1
    assert redis_cluster_client.exists(tag_key("t", space)) == 1
    tier.set_sync(f"{space}:x", 1)
    assert tier.delete_pattern_sync(f"{space}:*") == 2  # the entry and the tag set
    assert redis_cluster_client.exists(tag_key("t", space)) == 0


def test_a_hot_tag_keeps_only_about_its_live_members(
        tier: RedisTier, redis_cluster_client: RedisCluster) -> None:
    space = ns()
    key = tag_key("hot", space)
    for i in range(2000):  # short-lived entries: all expired 50 ms later
        tier.add_tags_sync(f"{space}:{i}", ["hot"], ttl=0.02)
    assert redis_cluster_client.zcard(key) <= 2000
    time.sleep(0.1)
    for i in range(50):
        tier.add_tags_sync(f"{space}:live{i}", ["hot"], ttl=60)
    assert redis_cluster_client.zcard(key) == 50  # the first new write trimmed the rest
    # a steady stream of short-lived entries: the set stays near the live count
    stamps: list[float] = []
    start = time.monotonic()
    while time.monotonic() - start < 1.0 or len(stamps) < 200:
        tier.add_tags_sync(f"{space}:s{len(stamps)}", ["stream"], ttl=0.2)
        stamps.append(time.monotonic())
    size = redis_cluster_client.zcard(tag_key("stream", space))
    live = sum(1 for t in stamps if t > stamps[-1] - 0.3)  # 0.2 s TTL + clock slack
    assert size <= live + 5 < len(stamps), (len(stamps), live, size)
    # invalidation pops the live members only
    assert tier.invalidate_tags_sync(["hot"], namespace=space) == 0  # none set as entries
    tier.set_sync(f"{space}:live0", 1)
    tier.add_tags_sync(f"{space}:live0", ["hot2"], ttl=60)
    assert tier.invalidate_tags_sync(["hot2"], namespace=space) == 1
