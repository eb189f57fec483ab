"""ShardedPool's API contract, checked without a server: signatures, routing errors,
redaction, fingerprints, metrics and fan-out error collection."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import asyncpg
import pytest
import uhashring
from pglast.parser import fingerprint as pg_fingerprint

from tiercache.sharding import pool as pool_module
from tiercache.sharding._fanout import ShardFanoutError, fanout
from tiercache.sharding._pool_metrics import (
    LATENCY_BUCKETS_S,
    EndpointMetrics,
    SlowQueryLog,
    fingerprint,
)
from tiercache.sharding._redact import Redactor, redact_dsn
from tiercache.sharding.pool import ShardedPool, create_sharded_pool
from tiercache.sharding.ring import HashRing

ROUTING = {"shard_key", "shard"}
READ_METHODS = {
    "fetch", "fetchval", "fetchrow", "fetchmany", "copy_from_query", "copy_from_table", "acquire",
}
CACHED_READS = {"fetch", "fetchval", "fetchrow", "fetchmany"}
# Methods that act on the whole pool and therefore take no routing at all.
WHOLE_POOL = {"close", "terminate", "is_closing"}
ROUTING_REQUIRED = {
    "execute", "executemany", "fetch", "fetchval", "fetchrow", "fetchmany", "copy_from_query",
    "copy_from_table", "copy_to_table", "copy_records_to_table", "acquire",
}


def _public_pool_methods() -> list[str]:
    return sorted(
        name for name, value in vars(asyncpg.Pool).items()
        if not name.startswith("_") and callable(value)
    )


def test_every_asyncpg_pool_method_exists() -> None:
    missing = [m for m in _public_pool_methods() if not hasattr(ShardedPool, m)]
    assert missing == []
    for dunder in ("__aenter__", "__aexit__", "__await__"):
        assert hasattr(ShardedPool, dunder)


@pytest.mark.parametrize("name", _public_pool_methods())
def test_signature_matches_asyncpg(name: str) -> None:
    theirs = inspect.signature(getattr(asyncpg.Pool, name)).parameters
    ours = inspect.signature(getattr(ShardedPool, name)).parameters
    for pname, param in theirs.items():
        assert pname in ours, f"{name}: missing parameter {pname}"
        mine = ours[pname]
        assert mine.kind == param.kind, f"{name}({pname}): {mine.kind} != {param.kind}"
        assert mine.default == param.default, f"{name}({pname}) default differs"
    extra = set(ours) - set(theirs)
    if name in WHOLE_POOL:
        assert extra == set()
    else:
        allowed = ROUTING | ({"readonly"} if name in READ_METHODS else set())
        allowed |= {"cache_ttl"} if name in CACHED_READS else set()  # the L3 query cache
        assert ROUTING <= extra <= allowed, f"{name}: unexpected extras {extra}"
        for extra_name in extra:
            assert ours[extra_name].kind is inspect.Parameter.KEYWORD_ONLY
    assert inspect.iscoroutinefunction(getattr(ShardedPool, name)) == (
        inspect.iscoroutinefunction(getattr(asyncpg.Pool, name))
    )


def test_create_sharded_pool_accepts_every_create_pool_parameter() -> None:
    theirs = inspect.signature(asyncpg.create_pool).parameters
    ours = inspect.signature(create_sharded_pool).parameters
    for pname, param in theirs.items():
        if pname == "dsn":
            continue  # replaced by the shards mapping
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ours.values())
            continue
        assert pname in ours, pname
        assert ours[pname].kind == param.kind, pname
        assert ours[pname].default == param.default, pname
    assert list(ours)[:2] == ["shards", "ring"]


def test_docs_list_every_method_and_parameter() -> None:
    """The module docstring is the API reference users read; it must not fall behind."""
    doc = pool_module.__doc__ or ""
    for name in _public_pool_methods():
        assert f"``{name}``" in doc, name
    create_doc = create_sharded_pool.__doc__ or ""
    assert "Every :func:`asyncpg.create_pool` parameter" in create_doc
    for pname in inspect.signature(create_sharded_pool).parameters:
        if pname not in inspect.signature(asyncpg.create_pool).parameters and pname not in (
            "shards", "ring", "connect_kwargs"
        ):
            assert f"``{pname}``" in create_doc, pname


def _unopened(**kwargs: Any) -> ShardedPool:
    return create_sharded_pool(
        {"s1": "postgresql://u:topsecret@127.0.0.1:1/db", "s2": "postgresql://u:x@h:2/db"},
        **kwargs,
    )


@pytest.mark.parametrize("method", sorted(ROUTING_REQUIRED - {"acquire"}))
async def test_missing_routing_is_a_type_error(method: str) -> None:
    pool = _unopened()
    args: dict[str, tuple[Any, ...]] = {
        "executemany": ("INSERT", []), "fetchmany": ("SELECT", []),
        "copy_from_table": ("t",), "copy_to_table": ("t",), "copy_records_to_table": ("t",),
    }
    kwargs: dict[str, Any] = {
        "copy_from_query": {"output": "x"}, "copy_from_table": {"output": "x"},
        "copy_to_table": {"source": "x"}, "copy_records_to_table": {"records": []},
    }
    with pytest.raises(TypeError, match="shard_key="):
        await getattr(pool, method)(*args.get(method, ("SELECT 1",)), **kwargs.get(method, {}))


def test_routing_errors() -> None:
    pool = _unopened()
    with pytest.raises(TypeError, match="shard_key="):
        pool.acquire()
    with pytest.raises(TypeError, match="not both"):
        pool.acquire(shard_key=1, shard="s1")
    with pytest.raises(ValueError, match="unknown shard 'nope'"):
        pool.acquire(shard="nope")
    with pytest.raises(TypeError, match="shard_key="):
        pool.transaction()
    with pytest.raises(asyncpg.InterfaceError, match="not initialized"):
        pool.acquire(shard="s1")


def test_shard_for_matches_hashring() -> None:
    pool = _unopened()
    ring = HashRing(["s1", "s2"])
    keys: list[Any] = [*range(500), *(f"user:{i}" for i in range(500))]
    assert [pool.shard_for(k) for k in keys] == [ring.get_node(k) for k in keys]
    assert pool.shard_for_many(keys) == ring.get_node_many(keys)
    assert {pool.shard_for(k) for k in keys} == {"s1", "s2"}
    assert pool.shards == ("s1", "s2")


def test_shard_for_is_uhashring_ketama_placement() -> None:
    """The design promises uhashring's ketama placement; check it end to end from the pool."""
    names = ["s1", "s2", "s3"]
    pool = create_sharded_pool({n: "postgresql://h/db" for n in names})
    theirs = uhashring.HashRing(names, hash_fn="ketama")
    keys: list[Any] = [*range(1000), *(f"tenant:{i}" for i in range(1000))]
    assert [pool.shard_for(k) for k in keys] == [theirs.get_node(k) for k in keys]


def test_ring_add_and_remove_node_in_place_reroute_at_once() -> None:
    ring = HashRing(["s1", "s2"])
    pool = create_sharded_pool(
        {n: "postgresql://h/db" for n in ("s1", "s2", "s3")}, ring
    )
    keys = range(2000)
    before = [pool.shard_for(k) for k in keys]
    ring.add_node("s3")
    after = [pool.shard_for(k) for k in keys]
    assert after == ring.get_node_many(keys) == [HashRing(["s1", "s2", "s3"]).get_node(k)
                                                  for k in keys]
    moved = [b for b, a in zip(before, after, strict=True) if a != b]
    assert moved and all(a == "s3" for b, a in zip(before, after, strict=True) if a != b)
    ring.remove_node("s3")
    assert [pool.shard_for(k) for k in keys] == before


def test_weighted_default_ring_and_custom_ring() -> None:
    pool = create_sharded_pool(
        {"a": {"dsn": "postgresql://h/db", "weight": 3}, "b": "postgresql://h/db"}
    )
    ring = HashRing({"a": 3, "b": 1})
    assert all(pool.shard_for(k) == ring.get_node(k) for k in range(1000))
    custom = HashRing(["a"])
    pool2 = create_sharded_pool({"a": "postgresql://h/db", "b": "postgresql://h/db"}, custom)
    assert {pool2.shard_for(k) for k in range(100)} == {"a"}
    with pytest.raises(ValueError, match="have no shard"):
        create_sharded_pool({"a": "postgresql://h/db"}, HashRing(["a", "zz"]))


def test_bad_shard_specs() -> None:
    with pytest.raises(TypeError):
        create_sharded_pool(["postgresql://h/db"])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        create_sharded_pool({})
    with pytest.raises(ValueError, match="weight"):
        create_sharded_pool({"a": {"dsn": "postgresql://h/db", "weight": 0}})


def test_repr_redacts_passwords() -> None:
    pool = create_sharded_pool({
        "s1": {"dsn": "postgresql://u:topsecret@127.0.0.1:1/db",
               "replicas": ["postgresql://u:replicapw@127.0.0.1:2/db"]},
        "s2": "host=h port=5 user=u password=kvsecret dbname=d",
    })
    text = repr(pool)
    for secret in ("topsecret", "replicapw", "kvsecret"):
        assert secret not in text
    assert "postgresql://u:***@127.0.0.1:1/db" in text
    assert "+1 replica" in text
    assert "kvsecret" not in str(pool.stats())


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://user:pass@127.0.0.1:5432/tiercache",
         "postgresql://user:***@127.0.0.1:5432/tiercache"),
        ("postgres://u:p%40ss@h/db?sslmode=disable", "postgres://u:***@h/db?sslmode=disable"),
        ("postgresql://h/db?user=u&password=s3cr3t", "postgresql://h/db?user=u&password=***"),
        ("host=h password='a b c' dbname=d", "host=h password=*** dbname=d"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
    ],
)
def test_redact_dsn(dsn: str, expected: str) -> None:
    assert redact_dsn(dsn) == expected


def test_redactor_scrubs_exceptions_in_place() -> None:
    r = Redactor()
    r.add_dsn("postgresql://user:hunter22@db:5432/x")
    exc = asyncpg.InvalidPasswordError("auth failed for postgresql://user:hunter22@db:5432/x")
    cause = OSError("connect to hunter22 failed")
    exc.__cause__ = cause
    assert r.exception(exc) is exc
    assert isinstance(exc, asyncpg.InvalidPasswordError)
    assert "hunter22" not in str(exc) and "hunter22" not in str(cause)
    assert "postgresql://user:***@db:5432/x" in str(exc)


def test_fingerprint_uses_pglast_and_normalises_constants() -> None:
    q1 = "SELECT * FROM users WHERE id = 1"
    q2 = "select *   from users where id = $1"
    assert fingerprint(q1) == fingerprint(q2) == pg_fingerprint(q1)
    assert fingerprint("SELECT * FROM orders") != fingerprint(q1)
    assert fingerprint("this is not sql !!").startswith("raw:")


def test_metrics_snapshot() -> None:
    m = EndpointMetrics()
    m.observe(50_000)  # 0.05 ms
    m.observe(3_000_000)  # 3 ms
    m.observe_acquire(1_000)
    m.error(asyncpg.UniqueViolationError("x"))
    m.error(asyncpg.UniqueViolationError("y"))
    m.waiting = 2
    snap = m.snapshot()
    assert snap["queries"] == 2
    assert snap["errors"] == 2
    assert snap["errors_by_class"] == {"UniqueViolationError": 2}
    assert snap["waiters"] == 2
    latency = snap["latency"]
    assert latency["count"] == 2
    assert latency["sum"] == pytest.approx(0.00305)
    assert latency["max"] == pytest.approx(0.003)
    buckets = dict(latency["buckets"])
    assert list(buckets) == [*LATENCY_BUCKETS_S, float("inf")]
    assert buckets[0.0001] == 1 and buckets[0.0025] == 1 and buckets[0.005] == 2
    assert latency["buckets"][-1] == (float("inf"), 2)
    wait = snap["acquire_wait"]
    assert wait["count"] == 1 and wait["sum"] == pytest.approx(1e-6)
    assert wait["buckets"][0] == (0.0001, 1)
    m.reset()
    assert m.snapshot()["queries"] == 0 and m.snapshot()["waiters"] == 2


def test_slow_query_log_bounded_and_ordered() -> None:
    log = SlowQueryLog(threshold_ms=100, maxlen=3)
    for i, ms in enumerate([120, 500, 150, 110]):
        log.record("s1", "primary", "fetch", f"SELECT c{i} FROM t", ms * 1_000_000, False)
    assert len(log) == 3
    recent = log.entries()
    assert [e["query"] for e in recent] == [
        "SELECT c3 FROM t", "SELECT c2 FROM t", "SELECT c1 FROM t",
    ]
    assert [e["duration_ms"] for e in log.entries(2, order="slowest")] == [500.0, 150.0]
    assert all("args" not in e for e in recent)


async def test_fanout_collects_every_failure() -> None:
    async def call(shard: str) -> str:
        await asyncio.sleep(0.01)
        if shard in ("b", "d"):
            raise OSError(f"{shard} is down")
        return shard.upper()

    assert await fanout("op", ["a", "c"], call, concurrency=4) == {"a": "A", "c": "C"}
    with pytest.raises(ShardFanoutError) as info:
        await fanout("op", ["a", "b", "c", "d"], call, concurrency=2)
    err = info.value
    assert err.results == {"a": "A", "c": "C"}
    assert set(err.errors) == {"b", "d"} and err.failed_shards == ["b", "d"]
    assert "b: OSError: b is down" in str(err) and "d: OSError" in str(err)


async def test_fanout_concurrency_bound() -> None:
    running = peak = 0

    async def call(shard: str) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return 1

    assert len(await fanout("op", [str(i) for i in range(10)], call, concurrency=3)) == 10
    assert peak == 3


async def test_fanout_cancellation_cancels_every_shard_call() -> None:
    started: list[str] = []
    cancelled: list[str] = []

    async def call(shard: str) -> None:
        started.append(shard)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(shard)
            raise

    task = asyncio.ensure_future(fanout("op", ["a", "b", "c"], call, concurrency=8))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert sorted(started) == ["a", "b", "c"]
    assert sorted(cancelled) == ["a", "b", "c"]


class _MovableRing:
    """A ring whose placement the test changes in place, like add_node() would."""

    def __init__(self, node: str) -> None:
        self.node = node

    def get_node(self, key: Any) -> str:
        return self.node

    @property
    def nodes(self) -> list[str]:
        return [self.node]


def test_ring_changes_take_effect_at_once() -> None:
    ring = _MovableRing("s1")
    pool = create_sharded_pool(
        {"s1": "postgresql://h/db", "s2": "postgresql://h/db"}, ring
    )
    assert pool.shard_for(1) == "s1" and pool.shard_for_many([1, 2]) == ["s1", "s1"]
    ring.node = "s2"
    assert pool.shard_for(1) == "s2"
    ring.node = "s9"
    with pytest.raises(LookupError, match="'s9', which is not a shard"):
        pool.acquire(shard_key=1)
    pool.set_ring(_MovableRing("s1"))
    assert pool.ring.get_node(1) == "s1" and pool.shard_for(1) == "s1"
    with pytest.raises(ValueError, match="have no shard"):
        pool.set_ring(_MovableRing("zz"))
