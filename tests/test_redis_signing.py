"""Signed envelopes on the real cluster: with signing_key, a value written by any other
Redis client (unsigned, another key, copied to another key) is a counted miss."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from redis.cluster import RedisCluster

from tiercache import codec
from tiercache._bus import parse_message
from tiercache.cache import TierCache
from tiercache.codec import pack_entry
from tiercache.tiers.base import MISSING
from tiercache.tiers.memory import MemoryTier
from tiercache.tiers.redis import RedisTier

NEW = b"k2-new-0123456789abc"


@pytest.fixture
def tiers(tiercache_stack: Any) -> Iterator[dict[str, RedisTier]]:
    url = tiercache_stack.redis_url
    made = {"signed": RedisTier(url, signing_key=b"k1-secret-0123456789"),
            "plain": RedisTier(url),
            "other": RedisTier(url, signing_key="another key, 16+ bytes"),
            "rotated": RedisTier(url, signing_key=[NEW, b"k1-secret-0123456789"])}
    yield made
    for t in made.values():
        t.close_sync()


def test_only_entries_signed_with_our_key_for_this_key_are_hits(
        tiers: dict[str, RedisTier], redis_cluster_client: RedisCluster) -> None:
    signed, plain, other, rotated = (tiers[n] for n in ("signed", "plain", "other", "rotated"))
    signed.set_sync("sig:1", {"v": 1})
    assert signed.get_sync("sig:1") == {"v": 1}
    assert plain.get_sync("sig:1") == {"v": 1}  # signing off: signed entries still readable
    assert rotated.get_sync("sig:1") == {"v": 1}  # old key still verifies
    plain.set_sync("sig:plain", {"v": 2})  # any other client, unsigned
    other.set_sync("sig:other", {"v": 3})  # signed with a key we do not have
    redis_cluster_client.set("sig:forged", pack_entry({"v": 4}, stored_at=0.0))
    redis_cluster_client.set("sig:copy", redis_cluster_client.get("sig:1"))  # replayed
    before = signed.stats()["errors_by_op"].get("decode", 0)
    for key in ("sig:plain", "sig:other", "sig:forged", "sig:copy"):
        assert signed.get_sync(key) is MISSING, key
    assert signed.get_many_sync(["sig:1", "sig:plain", "sig:copy"]) == {"sig:1": {"v": 1}}
    s = signed.stats()
    assert s["errors_by_op"]["decode"] - before == 6 and s["hits"] == 2
    rotated.set_sync("sig:new", 5)  # signed with the new first key
    assert signed.get_sync("sig:new") is MISSING  # a reader without k2 refuses it
    assert rotated.get_sync("sig:new") == 5


async def test_signed_async_paths(tiers: dict[str, RedisTier]) -> None:
    signed, plain = tiers["signed"], tiers["plain"]
    await signed.set("sig:a1", [1, 2])
    await plain.set("sig:a2", [3])
    assert await signed.get("sig:a1") == [1, 2]
    assert await signed.get("sig:a2") is MISSING
    assert await signed.get_many(["sig:a1", "sig:a2"]) == {"sig:a1": [1, 2]}
    await signed.close()
    await plain.close()



def test_the_bus_signs_with_the_tiers_key(tiers: dict[str, RedisTier]) -> None:
    """A signing tier's bus seals its messages; an unsigned publish is refused."""
    cache = TierCache(l1=MemoryTier(maxsize=10), l2=tiers["signed"], namespace="sigbus")
    bus = cache.bus
    assert bus is not None and bus.signer is not None and bus.signer is tiers["signed"].signer
    message = bus.encode(k=["x"])
    assert parse_message(message, signer=bus.signer, context=bus.channel)["k"] == ["x"]
    unsigned = codec.encode({"v": 1, "src": "someone", "k": ["x"]})  # any Redis client
    with pytest.raises(codec.CodecError):
        parse_message(unsigned, signer=bus.signer, context=bus.channel)
