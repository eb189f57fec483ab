"""``tiercache bench --suite e2e``: the cacheme benchmark's shape, end to end, vs the peers.

200k requests (``--quick``: 20k) drawn from ``Zipf(1.001, 10)`` over 200k user ids (about
56k distinct keys: a cold cache, as in cacheme's ``benchmarks/trace.py``), served by 1k and
10k concurrent workers; the loader is a primary-key SELECT on the Postgres shard that owns
the id (plain asyncpg pools, 10 connections per shard, routed by tiercache's HashRing) or,
in the second variant, a 100 ms sleep (cacheme's own loader). Contestants, each with the
configuration its documentation recommends (in the row's label): tiercache (L1 + L2 on the
Redis Cluster; + RefreshAhead(0.8); + the L3 query cache), cacheme (its own virtualenv, see
:mod:`._e2e_cacheme`), cashews (cluster; and ``client_side`` on a single redis-server),
aiocache (single redis-server: it has no cluster client) and no cache.

Same key sequence and seed, the same loader, the same worker loop for all; every value
returned is compared with the ground truth (a wrong value fails the suite). Each run is
bounded in time (``budget``); a run that hits it reports how many requests it completed, and
its loader calls are judged per distinct key requested (the fewest loads possible), so a
shorter run is not favoured. Judged (issue 12): at 1k concurrency with the Postgres loader,
tiercache's throughput >= 2x the best peer's, with loads per distinct key <= every peer's.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg

from tiercache.bench.base import BenchContext, Row, SuiteError
from tiercache.bench.suites import _e2e_cacheme as cme
from tiercache.bench.suites._e2e_peers import Contestant, L3Loader, in_process_contestants
from tiercache.bench.suites._e2e_workload import (
    TABLE,
    PgBatchLoader,
    PgLoader,
    RunResult,
    SleepLoader,
    Workload,
    drive,
    expected,
    key_sequence,
)
from tiercache.sharding.ring import HashRing

NAME = "e2e"
DESCRIPTION = ("cacheme-shaped zipf workload (200k requests, 1k/10k concurrency, Postgres or "
               "100 ms loader): tiercache stacks vs cacheme, cashews, aiocache, no cache")
NEEDS = ("redis", "pg")

L1_SIZE = 10_000
TTL = 120.0
POOL_SIZE = 10  # connections per shard, every contestant
MIN_SPEEDUP = 2.0
#: concurrent distinct reads before the clock starts (connections, not data), every
#: contestant alike: more than any client's pool holds, and 10k of them only cost time
WARM_CONNECTIONS = 1000
#: contestants the 10k-concurrency scenario leaves out: in a cold burst they behave as
#: "tiercache" does (refresh) or collapse to 0 completions in the bound (L3: one query per
#: miss behind 30 connections), already shown at 1k
SKIP_AT_10K = ("tiercache+refresh", "tiercache+l3", "no cache+batch")
PEERS = ("cacheme", "cashews", "cashews+client_side", "aiocache")


@dataclass(frozen=True)
class Scenario:
    loader: str  # "pg" or "sleep"
    workload: Workload
    judged: bool = False

    @property
    def title(self) -> str:
        what = "Postgres loader" if self.loader == "pg" else "100 ms loader"
        c = self.workload.concurrency
        return f"{what}, {f'{c // 1000}k' if c % 1000 == 0 else c} concurrency"


def scenarios(quick: bool, requests: int | None = None, concurrency: int | None = None,
              keys: int | None = None) -> list[Scenario]:
    """Full: Postgres at 1k (judged) and 10k, 100 ms sleep at 1k; quick: Postgres at 1k,
    20k requests. The overrides shrink a run (tests)."""
    base = Workload(requests=requests or (20_000 if quick else 200_000),
                    concurrency=concurrency or 1000, budget_s=3.0 if quick else 5.0,
                    sample_s=0.05 if quick else 0.1)
    if keys:
        base = replace(base, keys=keys)
    if quick:
        return [Scenario("pg", base, judged=True)]
    return [Scenario("pg", base, judged=True),
            Scenario("pg", replace(base, concurrency=10 * base.concurrency, budget_s=3.0,
                                   grace_s=1.0)),  # 2 s: a batched first wave of 10k misses
                                                   # did not finish on a busy 2-core box
            Scenario("sleep", replace(base, budget_s=3.0))]


# ---------------------------------------------------------------------- servers and data


async def _ensure_table(pools: Mapping[str, asyncpg.Pool], ring: HashRing, keys: int) -> None:
    """Each shard holds exactly the rows it owns (1..keys), with the ground-truth values."""
    owners = ring.get_node_many(list(range(1, keys + 1)))
    mine: dict[str, list[tuple[int, str, int]]] = {name: [] for name in pools}
    for key, owner in zip(range(1, keys + 1), owners, strict=True):
        v = expected(key)
        mine[owner].append((key, v["name"], v["score"]))
    for name, pool in pools.items():
        await pool.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} "
                           "(id bigint PRIMARY KEY, name text NOT NULL, score int NOT NULL)")
        rows = mine[name]
        have = await pool.fetchrow(f"SELECT count(*), coalesce(sum(id), 0)::bigint, "
                                   f"coalesce(sum(score), 0)::bigint FROM {TABLE}")
        want = (len(rows), sum(r[0] for r in rows), sum(r[2] for r in rows))
        if tuple(have) != want:
            await pool.execute(f"TRUNCATE {TABLE}")
            await pool.copy_records_to_table(TABLE, records=rows)
            await pool.execute(f"ANALYZE {TABLE}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def single_redis() -> AsyncIterator[tuple[tuple[str, int] | None, str]]:
    """A throw-away single redis-server (for the peers without a cluster client)."""
    from tiercache._localstack.binaries import find_redis
    from tiercache._localstack.procs import spawn_server

    try:
        binary = find_redis().server
    except Exception as exc:
        yield None, f"no redis-server for the single-node peers: {exc}"
        return
    with tempfile.TemporaryDirectory(prefix="tcbench-e2e-") as tmp:
        port = _free_port()
        proc = spawn_server([str(binary), "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", tmp],
                            log_path=Path(tmp) / "redis.log", run_as=None)
        try:
            import redis.asyncio

            client = redis.asyncio.Redis(port=port)
            for _ in range(100):
                try:
                    await client.ping()
                    break
                except Exception:
                    await asyncio.sleep(0.05)
            else:
                yield None, "the single redis-server did not start"
                return
            await client.aclose()
            yield ("127.0.0.1", port), ""
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except Exception:
                proc.kill()


class RedisCommands:
    """Commands the Redis servers executed (INFO commandstats, summed over the cluster's
    masters and the single server): what each contestant costs Redis, the figure cacheme's
    benchmark reports as "Redis GET"."""

    def __init__(self, cluster_url: str, single: tuple[str, int] | None) -> None:
        import redis
        import redis.cluster

        self.cluster = redis.cluster.RedisCluster.from_url(cluster_url)
        self.single = redis.Redis(host=single[0], port=single[1]) if single else None

    def _read(self) -> dict[str, int]:
        out: dict[str, int] = {}
        infos: list[Any] = list(self.cluster.info(
            "commandstats", target_nodes=self.cluster.get_primaries()).values())  # type: ignore[no-untyped-call]
        if self.single is not None:
            infos.append(self.single.info("commandstats"))
        for info in infos:
            for name, stat in info.items():
                cmd = name.removeprefix("cmdstat_")
                out[cmd] = out.get(cmd, 0) + int(stat["calls"])
        return out

    async def snapshot(self) -> dict[str, int]:
        return await asyncio.to_thread(self._read)

    @staticmethod
    def diff(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
        skip = {"info", "cluster", "ping", "hello", "client", "command", "subscribe"}
        return {k: v - before.get(k, 0) for k, v in after.items()
                if k not in skip and v - before.get(k, 0) > 0}

    def close(self) -> None:
        self.cluster.close()
        if self.single is not None:
            self.single.close()


# ---------------------------------------------------------------------- one run


@dataclass
class Outcome:
    key: str
    label: str
    result: RunResult
    loads: int
    counters: dict[str, float]
    pg_queries: int
    redis_commands: dict[str, int] | None = None

    @property
    def throughput(self) -> float:
        return self.result.completed / self.result.wall_s if self.result.wall_s else 0.0

    @property
    def loads_per_key(self) -> float:
        return self.loads / self.result.distinct_keys if self.result.distinct_keys else 0.0


def _loader(sc: Scenario, pools: Mapping[str, asyncpg.Pool], route: Sequence[str]) -> Any:
    return PgLoader(pools, route) if sc.loader == "pg" else SleepLoader(0.1)


async def _run_in_process(c: Contestant, sc: Scenario, keys: Sequence[int],
                          pools: Mapping[str, asyncpg.Pool], route: Sequence[str],
                          dsns: Mapping[str, str]) -> Outcome:
    run_id = uuid.uuid4().hex[:10]
    l3_pool = None
    if getattr(c, "l3", False) and sc.loader == "pg":
        from tiercache import QueryCache, create_sharded_pool

        l3_pool = await create_sharded_pool(
            dict(dsns), min_size=POOL_SIZE, max_size=POOL_SIZE,
            query_cache=QueryCache(default_ttl=TTL, max_ttl=TTL))
        loader: Any = L3Loader(l3_pool, TTL)
        c.pool = l3_pool  # type: ignore[attr-defined]
    else:
        loader = _loader(sc, pools, route)
    if getattr(c, "batched", False):
        loader = PgBatchLoader(pools, route)
        c.batch = loader  # type: ignore[attr-defined]
    try:
        get = await c.open(loader, run_id)
        await c.warm(min(sc.workload.concurrency, WARM_CONNECTIONS))
        base, base_batches = loader.calls, getattr(loader, "batches", 0)

        def counters() -> dict[str, float]:
            return {"loads": float(loader.calls - base), **c.counters()}

        result = await drive(get, keys, sc.workload, counters)
        queries = loader.calls - base
        if isinstance(loader, PgBatchLoader):
            queries = loader.batches - base_batches  # loader calls (each a query per shard)
        if l3_pool is not None and l3_pool.query_cache is not None:
            queries = int(l3_pool.query_cache.stats()["misses"])
        return Outcome(c.key, c.label, result, loader.calls - base, c.counters(),
                       queries if sc.loader == "pg" else 0)
    finally:
        await c.close()
        if l3_pool is not None:
            await l3_pool.close()


async def _run_cacheme(python: str, sc: Scenario, keys: Sequence[int], route: Sequence[str],
                       dsns: Mapping[str, str], redis_url: str) -> Outcome:
    config = {
        "workload": sc.workload.as_dict(), "checksum": cme.checksum(keys), "loader": sc.loader,
        "dsns": dict(dsns), "route": list(route), "pool_size": POOL_SIZE, "sleep_s": 0.1,
        "ttl": TTL, "l1_size": L1_SIZE, "redis_url": redis_url,
        "run_id": uuid.uuid4().hex[:10],
    }
    out = await cme.run_child(python, config, timeout=sc.workload.budget_s + 120)
    fields = RunResult.__dataclass_fields__
    result = RunResult(**{k: v for k, v in out.items() if k in fields})
    return Outcome("cacheme", cme.LABEL.format(l1=L1_SIZE), result, int(out["loads"]),
                   dict(out["counters"]), int(out["loads"]) if sc.loader == "pg" else 0)


# ---------------------------------------------------------------------- rows


def _pct(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    return float(values[min(len(values) - 1, int(q / 100 * len(values)))])


def _tiers(o: Outcome) -> dict[str, float]:
    """Share of the requests started that each tier served (counters move at the start)."""
    series = o.result.series
    done = int(series[-1].get("started", o.result.completed)) if series else o.result.completed
    done = max(done, o.result.completed, 1)
    out = {k.removesuffix("_hits"): v / done for k, v in o.counters.items()
           if k.endswith("_hits") and k != "cache_hits"}
    out["loader"] = o.loads / done
    return out


def _outcome_row(sc: Scenario, o: Outcome) -> Row:
    r = o.result
    lat = sorted(r.latencies_ns)
    p50, p99 = _pct(lat, 50), _pct(lat, 99)
    tiers = _tiers(o)
    tier_text = ", ".join(f"{k} {v:.1%}" for k, v in tiers.items())
    if o.counters.get("l2_errors"):
        tier_text += f", L2 errors {o.counters['l2_errors']:,.0f}"
    partial = (f"; stopped at the {sc.workload.budget_s:g} s bound: {r.completed:,} of "
               f"{r.requested:,}" if r.timed_out else "")
    if r.cancelled:
        partial += f" ({r.cancelled:,} in flight cancelled {sc.workload.grace_s:g} s later)"
    if not r.completed:
        return {"name": f"{sc.title}: {o.key}", "target": None, "ok": None,
                "summary": (f"0 requests completed within {sc.workload.budget_s:g} s + "
                            f"{sc.workload.grace_s:g} s grace ({r.cancelled:,} in flight "
                            f"cancelled; loads {o.loads:,}, "
                            f"L2 errors {o.counters.get('l2_errors', 0):,.0f})"),
                "value": 0.0, "unit": "req/s", "better": "higher",
                "data": {"label": o.label, "completed": 0, "cancelled": r.cancelled,
                         "loads": o.loads, "counters": o.counters,
                         "workload": sc.workload.as_dict()}}
    cpu_us = r.cpu_s / r.completed * 1e6
    cmds = o.redis_commands or {}
    redis_text = (f", Redis {sum(cmds.values()) / max(r.completed, 1):.2f} cmds/request"
                  if o.redis_commands is not None else "")
    batched = (f" in {o.pg_queries:,} batch calls" if o.key.endswith("+batch")
               and sc.loader == "pg" else "")
    summary = (f"{o.throughput:,.0f} req/s, wall {r.wall_s:.2f} s, client CPU {cpu_us:,.0f} "
               f"us/request, p50 {p50 / 1e3:,.1f} us, p99 {p99 / 1e3:,.1f} us, loads "
               f"{o.loads:,}{batched} ({o.loads_per_key:.2f}/distinct key), {tier_text}"
               f"{redis_text}{partial}")
    return {
        "name": f"{sc.title}: {o.key}", "summary": summary, "target": None, "ok": None,
        "value": o.throughput, "unit": "req/s", "better": "higher",
        "data": {
            "label": o.label, "throughput_rps": o.throughput, "wall_s": r.wall_s,
            "requests": r.requested, "completed": r.completed, "timed_out": r.timed_out,
            "cancelled": r.cancelled,
            "p50_ns": p50, "p99_ns": p99, "loads": o.loads, "pg_queries": o.pg_queries,
            "distinct_keys": r.distinct_keys, "loads_per_distinct_key": o.loads_per_key,
            "hit_ratio": tiers, "counters": o.counters, "workload": sc.workload.as_dict(),
            "cpu_s": r.cpu_s, "cpu_us_per_request": cpu_us, "redis_commands": cmds,
            "loader": sc.loader,
        },
    }


def _unavailable(sc: Scenario, key: str, label: str, reason: str) -> Row:
    return {"name": f"{sc.title}: {key}", "summary": f"{label} not measured: {reason}",
            "target": None, "ok": None, "status": "unavailable",
            "data": {"peer": key, "reason": reason}}


def _judge(sc: Scenario, outs: Mapping[str, Outcome], missing: Sequence[str],
           ours_key: str = "tiercache+batch") -> Row:
    """tiercache (``ours_key``) vs the fastest peer; judged for ``tiercache+batch`` (the
    product's answer to a cold, miss-bound burst: batched loads), shown for the per-key
    ``tiercache`` too."""
    target = (f">= {MIN_SPEEDUP:g}x the best peer's throughput, loads per distinct key <= "
              "every peer's")
    ours = outs.get(ours_key)
    peers = {k: o for k, o in outs.items() if k in PEERS}
    name = f"{sc.title}: {ours_key} vs best peer"
    if ours_key != "tiercache+batch":
        target = ""
    if ours is None or not peers:
        return {"name": name, "summary": "not judged: tiercache or every peer missing",
                "target": target, "ok": None}
    best = max(peers.values(), key=lambda o: o.throughput)
    speedup = ours.throughput / best.throughput
    worst_ok = all(ours.loads_per_key <= p.loads_per_key + 1e-9 for p in peers.values())
    fewest = min(peers.values(), key=lambda o: o.loads_per_key)
    gaps = f"; not measured: {', '.join(missing)}" if missing else ""
    return {
        "name": name,
        "summary": (f"{speedup:.2f}x {best.key} ({ours.throughput:,.0f} vs "
                    f"{best.throughput:,.0f} req/s); loads/distinct key {ours.loads_per_key:.3f}"
                    f" vs fewest among peers {fewest.loads_per_key:.3f} ({fewest.key}){gaps}"),
        "target": target or None,
        "ok": (speedup >= MIN_SPEEDUP and worst_ok) if target else None,
        "value": speedup, "unit": "x", "better": "higher",
        "data": {"best_peer": best.key, "speedup": speedup, "loads_ok": worst_ok,
                 "peers_loads_per_key": {k: o.loads_per_key for k, o in peers.items()},
                 "tiercache_loads_per_key": ours.loads_per_key, "not_measured": list(missing)},
    }


_TIER_LABELS = {"l1_hits": "L1 hit", "l2_hits": "L2 hit", "l3_hits": "L3 hit (in loads)",
                "joined_hits": "joined an in-flight read/load", "loads": "loader call (miss)"}


def _series(o: Outcome) -> dict[str, list[tuple[float, float]]]:
    """Cumulative share of the requests started so far that each tier served (the tiers'
    counters move when a request reaches them, i.e. at its start)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for point in o.result.series:
        started = point.get("started", point["done"])
        if started >= 1:
            for k, label in _TIER_LABELS.items():
                if k in point:
                    out.setdefault(label, []).append((point["t"], min(1.0, point[k] / started)))
    return out


def _throughput_series(o: Outcome) -> list[tuple[float, float]]:
    s = o.result.series
    return [(b["t"], (b["done"] - a["done"]) / (b["t"] - a["t"]))
            for a, b in itertools.pairwise(s) if b["t"] > a["t"]]


def _charts(ctx: BenchContext, sc: Scenario, outs: Mapping[str, Outcome]) -> None:
    cdf = getattr(ctx, "cdf", None)
    timeseries = getattr(ctx, "timeseries", None)
    if cdf is not None:
        cdf(f"e2e {sc.title}: latency per request",
            {o.label.split(" (")[0]: o.result.latencies_ns for o in outs.values()}, unit="ns")
    if timeseries is not None:
        for key in ("tiercache", "tiercache+l3"):
            if key in outs and outs[key].result.series:
                timeseries(f"e2e {sc.title}: {key} hit ratio per tier over time",
                           _series(outs[key]),
                           ylabel="share of the requests started so far (0..1)")
        timeseries(f"e2e {sc.title}: throughput over time",
                   {k: _throughput_series(o) for k, o in outs.items()}, ylabel="requests/s")


# ---------------------------------------------------------------------- the suite


def _refresh_policy() -> tuple[Any, str]:
    try:
        from tiercache.policies import RefreshAhead
    except ImportError as exc:
        return None, f"tiercache.policies.RefreshAhead not available ({exc})"
    return RefreshAhead(0.8), ""


def _l3_available() -> str:
    try:
        from tiercache import QueryCache  # noqa: F401
    except ImportError as exc:
        return f"tiercache.QueryCache not available ({exc})"
    return ""


async def run(ctx: BenchContext, *, requests: int | None = None,
              concurrency: int | None = None, keys: int | None = None) -> list[Row]:
    """Every scenario, every contestant; the keywords shrink the workload (tests)."""
    redis_url, dsns = ctx.require_redis(), ctx.require_pg()
    plan = scenarios(ctx.quick, requests, concurrency, keys)
    keyspace = plan[0].workload.keys
    ring = HashRing(list(dsns))
    route = ["", *ring.get_node_many(list(range(1, keyspace + 1)))]
    refresh, refresh_why = _refresh_policy()
    l3_why = _l3_available()
    python, cacheme_note = await asyncio.to_thread(cme.find_python)
    rows: list[Row] = []
    pools = {name: await asyncpg.create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
             for name, dsn in dsns.items()}
    started = time.perf_counter()
    try:
        await _ensure_table(pools, ring, keyspace)
        truth = PgLoader(pools, route)
        for probe in (1, keyspace // 2, keyspace):  # the loader returns the ground truth
            if await truth(probe) != expected(probe):
                raise SuiteError(f"{TABLE} on shard {route[probe]} holds a wrong row for {probe}")
        async with single_redis() as (single, single_why):
            contestants = in_process_contestants(redis_url, single, L1_SIZE, TTL, refresh,
                                                 not l3_why)
            commands = RedisCommands(redis_url, single)
            total = len(plan) * (len(contestants) + 1)
            with ctx.progress("e2e: zipf workload, every contestant", total) as bar:
                for sc in plan:
                    seq = key_sequence(sc.workload)
                    outs: dict[str, Outcome] = {}
                    missing: list[str] = []
                    scen_rows: list[Row] = []
                    if refresh is None:
                        scen_rows.append(_unavailable(sc, "tiercache+refresh",
                                                      "tiercache + RefreshAhead", refresh_why))
                    if l3_why:
                        scen_rows.append(_unavailable(sc, "tiercache+l3", "tiercache + L3",
                                                      l3_why))
                    for c in contestants.values():
                        if (c.key in ("tiercache+l3", "tiercache+batch", "no cache+batch")
                                and sc.loader != "pg") or (c.key in SKIP_AT_10K
                                                           and sc.workload.concurrency >= 10_000):
                            bar.advance()
                            continue  # the L3 caches SQL results: nothing to cache in a sleep
                        why = c.available()
                        if not why:
                            try:
                                before = await commands.snapshot()
                                outs[c.key] = await _run_in_process(
                                    c, sc, seq, pools, route, dsns)
                                outs[c.key].redis_commands = commands.diff(
                                    before, await commands.snapshot())
                            except Exception as exc:  # a failing peer is reported, not fatal
                                if c.key.startswith("tiercache"):
                                    raise
                                why = f"failed: {type(exc).__name__}: {exc}"
                        if why:
                            missing.append(c.key)
                            scen_rows.append(_unavailable(sc, c.key, c.label, why))
                        bar.advance()
                    if single is None:
                        for peer in ("cashews+client_side", "aiocache"):
                            missing.append(peer)
                            scen_rows.append(_unavailable(sc, peer, peer, single_why))
                    if python is None:
                        missing.append("cacheme")
                        scen_rows.append(_unavailable(sc, "cacheme", "cacheme", cacheme_note))
                    else:
                        try:
                            before = await commands.snapshot()
                            outs["cacheme"] = await _run_cacheme(python, sc, seq, route, dsns,
                                                                 redis_url)
                            outs["cacheme"].redis_commands = commands.diff(
                                before, await commands.snapshot())
                        except Exception as exc:
                            missing.append("cacheme")
                            scen_rows.append(_unavailable(
                                sc, "cacheme", "cacheme", f"failed: {type(exc).__name__}: {exc}"))
                    bar.advance()
                    for o in outs.values():
                        if o.result.mismatches:
                            raise SuiteError(f"{sc.title}: {o.key} returned {o.result.mismatches}"
                                             f" wrong values; first: {o.result.first_mismatch}")
                    rows.extend(_outcome_row(sc, o) for o in outs.values())
                    rows.extend(scen_rows)
                    if sc.judged:
                        rows.append(_judge(sc, outs, missing))
                        rows.append(_judge(sc, outs, missing, "tiercache"))
                    _charts(ctx, sc, outs)
                    _record(sc, outs)
            commands.close()
        rows.append(_context_row(plan, cacheme_note, single_why, time.perf_counter() - started))
        _concurrency_chart(ctx, rows)
    finally:
        for pool in pools.values():
            await pool.execute(f"DROP TABLE IF EXISTS {TABLE}")  # leave nothing behind
            await pool.close()
    return rows


_THROUGHPUT: dict[tuple[str, int], float] = {}


def _record(sc: Scenario, outs: Mapping[str, Outcome]) -> None:
    if sc.loader == "pg":
        for k, o in outs.items():
            _THROUGHPUT[(k, sc.workload.concurrency)] = o.throughput


def _concurrency_chart(ctx: BenchContext, rows: list[Row]) -> None:
    """Throughput vs concurrency (Postgres loader), one line per contestant."""
    lines = getattr(ctx, "lines", None)
    series: dict[str, list[tuple[float, float]]] = {}
    for (key, conc), thr in sorted(_THROUGHPUT.items(), key=lambda kv: kv[0][1]):
        series.setdefault(key, []).append((float(conc), thr))
    _THROUGHPUT.clear()
    if lines is not None and any(len(v) > 1 for v in series.values()):
        lines("e2e Postgres loader: throughput vs concurrency", series,
              xlabel="concurrent workers (log scale)", ylabel="requests/s", xlog=True)


def _context_row(plan: Sequence[Scenario], cacheme_note: str, single_why: str,
                 seconds: float) -> Row:
    w = plan[0].workload
    load = os.getloadavg()[0]
    single = single_why or "single redis-server for aiocache / cashews client_side"
    return {
        "name": "workload",
        "summary": (f"Zipf(s={w.zipf_s}, v={w.zipf_v:g}) over {w.keys:,} ids, seed {w.seed}; "
                    f"L1/local tiers {L1_SIZE:,} entries, TTL {TTL:g} s, {POOL_SIZE} PG "
                    f"connections per shard; cacheme: {cacheme_note}; "
                    f"{single}; not run at 10k concurrency: {', '.join(SKIP_AT_10K)}; suite "
                    f"{seconds:.0f} s, load avg {load:.2f} on {os.cpu_count()} cores"),
        "target": None, "ok": None,
        "data": {"scenarios": [{"loader": s.loader, **s.workload.as_dict()} for s in plan],
                 "l1_size": L1_SIZE, "ttl": TTL, "pool_size": POOL_SIZE,
                 "cacheme": cacheme_note, "load_avg": load,
                 "median_budget_s": statistics.median(s.workload.budget_s for s in plan)},
    }
