"""``tiercache bench --suite l2``: RedisTier vs raw redis-py on the same Redis Cluster.

* ``get`` and ``get_many(100)``, async and sync, vs ``RedisCluster.get`` /
  ``mget_nonatomic`` on the same keys holding the same bytes (issue 3: <= 1.2x, <= 1.3x);
* ``set_many(100)`` vs a raw cluster pipeline of ``SET PX`` with the values msgpack-packed
  (what a redis-py user writes): the tier also builds its envelope (<= 1.3x);
* the **envelope**: ``pack_entry`` / ``unpack_entry`` vs bare ``msgpack`` on the same value,
  and its size in bytes (what every L2 value pays for TTL, stored-at and load time);
* throughput vs concurrency (1..64 tasks) of ``get``, and per-call latency CDFs of
  tiercache vs raw redis-py.

Values are read back and checked before timing (:mod:`._cache_l2` describes the pairing).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from tiercache.bench.base import BenchContext, Row, SuiteError, compare_row, info_row
from tiercache.bench.suites._cache_l2 import (
    GET_MANY_MAX_RATIO,
    GET_MAX_RATIO,
    PREFIX,
    paired_row,
    rounds_async,
    rounds_sync,
    value,
)
from tiercache.bench.timing import rounds_interleaved, throughput_async
from tiercache.codec import pack_entry, unpack_entry
from tiercache.tiers.base import MISSING
from tiercache.tiers.redis import RedisTier

__all__ = ["DESCRIPTION", "NAME", "NEEDS", "SET_MANY_MAX_RATIO", "measure_l2", "run"]

NAME = "l2"
DESCRIPTION = "RedisTier get/get_many/set_many vs raw redis-py on the cluster; envelope cost"
NEEDS: tuple[str, ...] = ("redis",)

SET_MANY_MAX_RATIO = 1.3
CONCURRENCY = (1, 4, 16, 64)
TTL = 600


class _Clients:
    """The tier and raw redis-py clients (async + sync) on one URL."""

    def __init__(self, tier: RedisTier, url: str) -> None:
        self.tier = tier
        self.cluster = bool(tier.cluster)
        self.raw_a: Any = (redis.asyncio.cluster.RedisCluster if self.cluster
                           else redis.asyncio.Redis).from_url(url)
        self.raw_s: Any = (redis.cluster.RedisCluster if self.cluster
                           else redis.Redis).from_url(url)
        self.base = "RedisCluster" if self.cluster else "Redis"
        self.mget = "mget_nonatomic" if self.cluster else "mget"

    async def raw_set_many(self, mapping: dict[str, Any]) -> None:
        pipe = self.raw_a.pipeline()
        for k, v in mapping.items():
            pipe.set(k, msgpack.packb(v), px=TTL * 1000)
        await pipe.execute()

    def raw_set_many_sync(self, mapping: dict[str, Any]) -> None:
        pipe = self.raw_s.pipeline()
        for k, v in mapping.items():
            pipe.set(k, msgpack.packb(v), px=TTL * 1000)
        pipe.execute()

    async def close(self) -> None:
        await self.raw_a.aclose()
        self.raw_s.close()


async def _check(c: _Clients, key: str, many: list[str]) -> None:
    tier = c.tier
    expected = {k: value(i) for i, k in enumerate(many)}
    await tier.set(key, value(7))
    await tier.set_many(expected)
    if await tier.get(key) != value(7) or await tier.get_many(many) != expected:
        raise SuiteError("RedisTier read back wrong values")
    if unpack_entry(await c.raw_a.get(key)).value != value(7):
        raise SuiteError("raw redis-py read back wrong bytes")
    if any(r is None for r in await getattr(c.raw_a, c.mget)(many)):
        raise SuiteError("raw redis-py MGET missed keys the tier wrote")
    if tier.get_sync(key) == MISSING or tier.get_many_sync(many) != expected:
        raise SuiteError("RedisTier sync twins read back wrong values")
    raw_keys = [f"{PREFIX}raw:{i}" for i in range(len(many))]
    await c.raw_set_many(dict(zip(raw_keys, expected.values(), strict=True)))
    got = await getattr(c.raw_a, c.mget)(raw_keys)
    if [msgpack.unpackb(g) for g in got] != list(expected.values()):
        raise SuiteError("raw pipeline SET read back wrong values")
    if tier.stats()["errors"]:
        raise SuiteError(f"RedisTier reported errors: {tier.stats()['errors_by_op']}")


async def _paired(ctx: BenchContext, c: _Clients, key: str, many: list[str]) -> list[Row]:
    rounds, batch, batch_many = (15, 40, 6) if ctx.quick else (40, 100, 8)
    tier, mget_a, mget_s = c.tier, getattr(c.raw_a, c.mget), getattr(c.raw_s, c.mget)
    mapping = {k: value(i) for i, k in enumerate(many)}
    raw_map = {f"{PREFIX}raw:{i}": v for i, v in enumerate(mapping.values())}
    rows: list[Row] = []
    get_calls: dict[str, list[float]] = {"ours": [], "raw": []}
    many_calls: dict[str, list[float]] = {"ours": [], "raw": []}
    a, b = await rounds_async(lambda: tier.get(key), lambda: c.raw_a.get(key), rounds, batch,
                              get_calls)
    rows.append(paired_row("L2 get vs raw redis-py (async)", f"{c.base}.get", a, b,
                           GET_MAX_RATIO, batch))
    a, b = await rounds_async(lambda: tier.get_many(many), lambda: mget_a(many), rounds,
                              batch_many, many_calls)
    rows.append(paired_row("L2 get_many(100) vs raw redis-py (async)", f"{c.base}.{c.mget}",
                           a, b, GET_MANY_MAX_RATIO, batch_many))
    a, b = await rounds_async(lambda: tier.set_many(mapping, ttl=TTL),
                              lambda: c.raw_set_many(raw_map), rounds, batch_many)
    rows.append(paired_row("L2 set_many(100) vs raw redis-py pipeline (async)",
                           f"{c.base} pipeline SET", a, b, SET_MANY_MAX_RATIO, batch_many))
    a, b = await asyncio.to_thread(rounds_sync, lambda: tier.get_sync(key),
                                   lambda: c.raw_s.get(key), rounds, batch)
    rows.append(paired_row("L2 get vs raw redis-py (sync)", f"{c.base}.get", a, b,
                           GET_MAX_RATIO, batch))
    a, b = await asyncio.to_thread(rounds_sync, lambda: tier.get_many_sync(many),
                                   lambda: mget_s(many), rounds, batch_many)
    rows.append(paired_row("L2 get_many(100) vs raw redis-py (sync)", f"{c.base}.{c.mget}",
                           a, b, GET_MANY_MAX_RATIO, batch_many))
    a, b = await asyncio.to_thread(rounds_sync, lambda: tier.set_many_sync(mapping, ttl=TTL),
                                   lambda: c.raw_set_many_sync(raw_map), rounds, batch_many)
    rows.append(paired_row("L2 set_many(100) vs raw redis-py pipeline (sync)",
                           f"{c.base} pipeline SET", a, b, SET_MANY_MAX_RATIO, batch_many))
    ctx.cdf("get (async): per-call latency",
            {"tiercache RedisTier.get": get_calls["ours"],
             f"redis-py {c.base}.get": get_calls["raw"]}, unit="s")
    ctx.cdf("get_many(100) (async): per-call latency",
            {"tiercache RedisTier.get_many": many_calls["ours"],
             f"redis-py {c.base}.{c.mget}": many_calls["raw"]}, unit="s")
    return rows


async def _throughput(ctx: BenchContext, c: _Clients, key: str) -> list[Row]:
    total = ctx.scale(4000, 1500)
    series: dict[str, list[tuple[float, float]]] = {"tiercache RedisTier.get": [],
                                                    f"redis-py {c.base}.get": []}
    ours, raw = series
    for n in CONCURRENCY:
        for _ in range(2):  # A B B A: both see the same drift
            series[ours].append((n, await throughput_async(lambda: c.tier.get(key), n, total)))
            series[raw].append((n, await throughput_async(lambda: c.raw_a.get(key), n, total)))
    best = {k: {n: max(v for x, v in pts if x == n) for n in CONCURRENCY}
            for k, pts in series.items()}
    ctx.lines("get throughput vs concurrency (async, best of 2)",
              {k: sorted(v.items()) for k, v in best.items()}, xlabel="concurrent tasks",
              ylabel="gets per second", xlog=True)
    top = CONCURRENCY[-1]
    return [info_row(
        f"L2 get throughput at {top} tasks vs raw redis-py",
        ", ".join(f"{n}: {best[ours][n]:,.0f} vs {best[raw][n]:,.0f}/s" for n in CONCURRENCY),
        value=best[ours][top] / best[raw][top], unit="x", better="higher",
        data={"ops_per_s": {k: {str(n): v for n, v in d.items()} for k, d in best.items()}})]


def _envelope(ctx: BenchContext) -> list[Row]:
    v = value(7)
    packed, raw = pack_entry(v, stored_at=time.time(), ttl=60.0), msgpack.packb(v)
    if unpack_entry(packed).value != v or msgpack.unpackb(raw) != v:
        raise SuiteError("envelope round trip changed the value")
    number, rounds = ctx.scale(20_000, 5000), ctx.scale(30, 8)
    now = time.time()
    got = rounds_interleaved({
        "tiercache pack_entry": lambda: pack_entry(v, stored_at=now, ttl=60.0),
        "msgpack.packb": lambda: msgpack.packb(v),
        "tiercache unpack_entry": lambda: unpack_entry(packed),
        "msgpack.unpackb": lambda: msgpack.unpackb(raw),
    }, number, rounds)
    ctx.cdf("envelope encode / decode: ns per call", got)
    return [
        compare_row("envelope encode vs msgpack.packb", got, ours="tiercache pack_entry",
                    theirs="msgpack.packb", data={"bytes": len(packed), "raw_bytes": len(raw)}),
        compare_row("envelope decode vs msgpack.unpackb", got, ours="tiercache unpack_entry",
                    theirs="msgpack.unpackb"),
        info_row("envelope size (a ~100 B user record)",
                 f"{len(packed)} B vs bare msgpack {len(raw)} B: +{len(packed) - len(raw)} B "
                 "(version, stored-at, TTL, load time)", value=len(packed) - len(raw),
                 unit="B", better="lower", data={"bytes": len(packed), "raw_bytes": len(raw)}),
    ]


async def measure_l2(url: str, ctx: BenchContext | None = None, *,
                     quick: bool = False) -> list[Row]:
    """Every l2 row against the server at ``url``."""
    ctx = ctx or BenchContext(quick=quick)
    tier = RedisTier(url, ttl=TTL)
    await tier.ping()  # connects and detects cluster vs single server
    c = _Clients(tier, url)
    key = PREFIX + "get"
    many = [f"{PREFIX}many:{i}" for i in range(100)]
    try:
        with ctx.progress("l2: check, get/get_many/set_many, throughput, envelope", 4) as bar:
            await _check(c, key, many)
            bar.advance()
            rows = await _paired(ctx, c, key, many)
            bar.advance()
            rows += await _throughput(ctx, c, key)
            bar.advance()
            rows += await asyncio.to_thread(_envelope, ctx)
            bar.advance()
        if tier.stats()["errors"]:
            raise SuiteError(f"RedisTier errors while timing: {tier.stats()['errors_by_op']}")
        return rows
    finally:
        await tier.delete_pattern(PREFIX + "*")  # the raw side's keys too (same prefix)
        await tier.close()
        await c.close()


async def run(ctx: BenchContext) -> list[Row]:
    return await measure_l2(ctx.require_redis(), ctx)
