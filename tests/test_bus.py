"""The invalidation bus under hostile input, and its start-up gate when Redis is dead."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from redis.cluster import RedisCluster

from tiercache import codec
from tiercache._bus import MAX_ITEMS, InvalidationBus, parse_message
from tiercache.cache import TierCache
from tiercache.tiers.memory import MemoryTier
from tiercache.tiers.redis import RedisTier

CHILD = Path(__file__).with_name("_hostile_child.py")
OK = {"v": 1, "src": "a" * 32}


def _nested(depth: int) -> bytes:
    data = msgpack.packb([])
    for _ in range(depth):
        data = msgpack.packb([msgpack.ExtType(1, data)])
    return data


BAD: list[Any] = [
    {"v": 1, "k": 5},  # the issue's: raised TypeError in the subscriber, which reconnected
    {**OK, "k": 5}, {**OK, "k": [5]}, {**OK, "t": "abc"}, {**OK, "p": ["x" * 1025]},
    {**OK, "p": ["a*"] * 17}, {**OK, "k": ["k"] * (MAX_ITEMS + 1)}, {**OK, "a": "yes"},
    {**OK, "v": True}, {**OK, "v": 2}, {"v": 1, "src": 7}, {"v": 1}, [1, 2], "str", None,
]


@pytest.mark.parametrize("shape", BAD, ids=range(len(BAD)))
def test_malformed_shapes_are_codec_errors(shape: Any) -> None:
    with pytest.raises(codec.CodecError):
        parse_message(msgpack.packb(shape))


def test_valid_shape_is_normalized() -> None:
    msg = parse_message(msgpack.packb({**OK, "k": ["a"], "p": ["u:*"], "a": [1], "new": 1}))
    assert msg == {"v": 1, "src": OK["src"], "k": ["a"], "t": [], "f": [], "p": ["u:*"],
                   "a": True}
    assert parse_message(msgpack.packb(OK))["a"] is False
    with pytest.raises(codec.CodecError):
        parse_message(_nested(200))


def _bus(signer: codec.Signer | None = None) -> InvalidationBus:
    async def on_message(msg: dict[str, Any]) -> None:
        return None
    return InvalidationBus(SimpleNamespace(signer=signer), "ns", on_message, lambda: None)


def test_an_invalidation_too_large_for_one_message_becomes_drop_everything() -> None:
    bus = _bus()
    small = parse_message(bus.encode(k=["a", "b"], p=["x*"]))
    assert (small["k"], small["p"], small["a"]) == (["a", "b"], ["x*"], False)
    for parts in ({"k": [f"k{i}" for i in range(MAX_ITEMS + 1)]}, {"p": ["a*"] * 17},
                  {"t": ["t" * 20_000]}):
        msg = parse_message(bus.encode(**parts))
        assert msg["a"] is True and not msg["k"] and not msg["t"] and not msg["p"]


def test_signed_bus_messages() -> None:
    signer = codec.Signer(b"s" * 32)
    bus = _bus(signer)
    data = bus.encode(k=["a"])
    assert parse_message(data, signer=signer, context=bus.channel)["k"] == ["a"]
    assert parse_message(data)["k"] == ["a"]  # signing off: signed messages still read
    with pytest.raises(codec.CodecError):  # unsigned, with signing on
        parse_message(_bus().encode(k=["a"]), signer=signer, context=bus.channel)
    with pytest.raises(codec.CodecError):  # another channel's message replayed here
        parse_message(data, signer=signer, context="tiercache:inv:other")


def test_hostile_publishes_are_dropped_and_the_subscriber_keeps_running(
        tiercache_stack: Any, redis_cluster_client: RedisCluster) -> None:
    """In a child process: before the fix the depth-200 message killed the subscriber's
    process (SIGSEGV) and ``{"v":1,"k":5}`` reconnected it (an L1 flush)."""
    child = subprocess.Popen(
        [sys.executable, str(CHILD), "bus", tiercache_stack.redis_url,
         f"b{uuid.uuid4().hex[:8]}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert child.stdout is not None and child.stdin is not None
        hello = json.loads(child.stdout.readline())
        garbage = [msgpack.packb(s) for s in BAD] + [_nested(200), _nested(10_000),
                                                       b"\x00 junk", b"\xc1TS\x01" + b"0" * 40]
        for data in garbage:
            redis_cluster_client.publish(hello["channel"], data)
        child.stdin.write(f"{len(garbage)}\n")
        child.stdin.flush()
        json.loads(child.stdout.readline())  # the child counted them all
        real = codec.encode({"v": 1, "src": "other-process", "k": [hello["rel"]]})
        redis_cluster_client.publish(hello["channel"], real)
        out, err = child.communicate("\n", timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, (child.returncode, err[-3000:])
    result = json.loads(out.strip().splitlines()[-1])
    assert result["dropped"] == len(garbage) and result["connects"] == 1
    assert result["held_after_garbage"] == 1 and result["running"] is not False
    assert result["received"] == 1 and result["held_after_invalidation"] == 0


# ---------------------------------------------------------------------------- dead Redis


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A loopback port nobody listens on (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield f"redis://127.0.0.1:{port}"


BUS_WAIT = 30.0  # what the first miss used to wait, in full, with Redis down


async def test_first_async_miss_does_not_wait_for_a_dead_bus(dead_url: str) -> None:
    cache = TierCache(l1=MemoryTier(), l2=RedisTier(dead_url), namespace="dead",
                      bus_wait=BUS_WAIT)

    @cache.cached()
    async def f(x: int) -> int:
        return x * 2

    start = time.monotonic()
    assert await f(1) == 2
    took = time.monotonic() - start
    print(f"first async miss with Redis down: {took * 1000:.0f} ms")
    assert took < BUS_WAIT / 3  # a hang guard: before the fix it was the whole window
    assert await f(1) == 2
    await cache.aclose()


def test_first_sync_miss_does_not_wait_for_a_dead_bus(dead_url: str) -> None:
    cache = TierCache(l1=MemoryTier(), l2=RedisTier(dead_url), namespace="dead",
                      bus_wait=BUS_WAIT)

    @cache.cached()
    def f(x: int) -> int:
        return x * 2

    start = time.monotonic()
    assert f(1) == 2
    took = time.monotonic() - start
    print(f"first sync miss with Redis down: {took * 1000:.0f} ms")
    assert took < BUS_WAIT / 3
    cache.close()


async def test_open_breaker_skips_the_wait(dead_url: str) -> None:
    tier = RedisTier(dead_url)
    for _ in range(20):  # open it the way real failures do
        await tier.get("k")
    assert tier.breaker.state == "open"
    cache = TierCache(l1=MemoryTier(), l2=tier, namespace="dead", bus_wait=BUS_WAIT)
    bus = cache.bus
    assert bus is not None
    start = time.monotonic()
    await bus.gate_async(BUS_WAIT)
    assert time.monotonic() - start < BUS_WAIT / 3
    await asyncio.sleep(0)
    await cache.aclose()
