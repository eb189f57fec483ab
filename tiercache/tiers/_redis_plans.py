"""Plans: each Redis command of :class:`~tiercache.tiers.redis.RedisTier`, written once.

A *plan* is a function of a redis-py client returning a generator that yields the client's
calls. redis-py's sync and async clients share command names, so one plan serves both:
the tier's sync runner gets each reply back at once (the call already ran), the async
runner awaits each yielded awaitable under a timeout. A :class:`Run` is one guarded
execution of a plan (operation name for counting, default on failure, the node breaker
guarding it, the time budget per step); a *flow* (``Flow[T]``) is a generator of Runs
that the tier's two drivers execute, so multi-call operations (per-node batches, tag
invalidation, repairs) are written once too.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Final, NamedTuple, TypeVar

import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from tiercache.tiers._breaker import CircuitBreaker
from tiercache.tiers._redis_direct import node_command, node_pipeline
from tiercache.tiers._redis_ops import scan_cursor
from tiercache.tiers.keys import is_durable, is_reserved, key_text

__all__ = ["FAILED", "Flow", "Plan", "Run", "all_primaries", "call", "deleter", "eval_", "evals",
           "first_key", "flusher", "lease_taker", "mget", "setter", "sweeper", "tag_of_call",
           "writer"]

T = TypeVar("T")
FAILED: Final = object()  # a Run's default when the flow must know the call failed
Plan = Callable[[Any], Generator[Any, Any, Any]]


class Run(NamedTuple):
    """One guarded call: ``plan(client)`` yields redis-py calls (see the module docstring).

    ``node``: the breaker guarding it (None on the fast path or for cluster-wide calls);
    ``key``: blamed on failure when ``node`` is None; ``budget``: seconds per step."""

    op: str
    plan: Plan
    default: Any
    node: CircuitBreaker | None
    budget: float
    key: str | None = None


Flow = Generator[Run, Any, T]


def _primaries(client: Any) -> Generator[Any, Any, list[Any]]:
    """Per-master targets for node-wide commands (SCAN, FLUSHDB); ``[None]`` = plain Redis."""
    if isinstance(client, redis.asyncio.cluster.RedisCluster):
        yield client.initialize()
    if isinstance(client, redis.asyncio.cluster.RedisCluster | redis.cluster.RedisCluster):
        return list(client.get_primaries())
    return [None]


def all_primaries(client: Any) -> dict[str, Any]:
    if isinstance(client, redis.asyncio.cluster.RedisCluster | redis.cluster.RedisCluster):
        return {"target_nodes": redis.cluster.RedisCluster.PRIMARIES}
    return {}


def call(name: str, *args: Any, **kwargs: Any) -> Plan:
    def plan(client: Any) -> Generator[Any, Any, Any]:
        return (yield getattr(client, name)(*args, **kwargs))
    return plan


def eval_(script: str, *args: Any) -> Plan:
    return call("eval", script, *args)


def setter(key: str, payload: bytes, px: int | None) -> Plan:
    def plan(client: Any) -> Generator[Any, Any, Any]:
        if isinstance(client, redis.asyncio.cluster.RedisCluster):  # straight to the node
            args = ("SET", key, payload, "PX", px) if px is not None else ("SET", key, payload)
            return (yield node_command(client, key, *args))
        return (yield client.set(key, payload, px=px))
    return plan


def lease_taker(lkey: str, token: str, ttl_ms: int) -> Plan:
    def plan(client: Any) -> Generator[Any, Any, str | None]:
        return token if (yield client.set(lkey, token, nx=True, px=ttl_ms)) else None
    return plan


def deleter(keys: list[Any]) -> Plan:
    return call("delete", *keys)


def mget(keys: list[str], cluster: bool) -> Plan:
    return call("mget_nonatomic" if cluster else "mget", keys)


def writer(batch: list[tuple[str, bytes, int | None]]) -> Plan:
    def plan(client: Any) -> Generator[Any, Any, bool]:
        if isinstance(client, redis.asyncio.cluster.RedisCluster):  # straight to the nodes
            commands = [("DEL", key) if px == 0 else ("SET", key, payload, "PX", px)
                        if px is not None else ("SET", key, payload)
                        for key, payload, px in batch]
            yield node_pipeline(client, commands, [key for key, _, _ in batch])
            return True
        pipe = client.pipeline(transaction=False)
        for key, payload, px in batch:
            if px == 0:
                pipe.delete(key)
            else:
                pipe.set(key, payload, px=px)
        yield pipe.execute()
        return True
    return plan


def evals(calls: list[tuple[Any, ...]], errors: bool = False) -> Plan:
    """EVALs pipelined; ``errors``: per-call error replies come back as exceptions."""
    def plan(client: Any) -> Generator[Any, Any, Any]:
        pipe = client.pipeline(transaction=False)
        for args in calls:
            pipe.execute_command("EVAL", *args)
        return (yield pipe.execute(raise_on_error=not errors))
    return plan


def sweeper(pattern: str, internals: bool) -> Plan:
    def plan(client: Any) -> Generator[Any, Any, int]:
        total = 0
        for node in (yield from _primaries(client)):
            target = {} if node is None else {"target_nodes": node}
            cursor = 0
            while True:
                reply = yield client.scan(cursor, match=pattern, count=1000, **target)
                cursor, found = scan_cursor(reply, node)
                if found and not internals:
                    found = [k for k in found if not is_reserved(key_text(k))]
                elif found:  # a store's journal holds acknowledged writes: never swept
                    found = [k for k in found if not is_durable(key_text(k))]
                if found:
                    total += int((yield client.unlink(*found)))
                if cursor == 0:
                    break
        return total
    return plan


def flusher(client: Any) -> Generator[Any, Any, bool]:
    asynchronous = isinstance(client, redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster)
    yield client.flushdb(asynchronous=asynchronous, **all_primaries(client))
    return True


def first_key(item: tuple[str, bytes, int | None]) -> str:
    return item[0]


def tag_of_call(eval_args: tuple[Any, ...]) -> str:
    return str(eval_args[2])
