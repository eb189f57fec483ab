"""Rebalancer on real Postgres shards: server-side hash, exact plans, moves, verification.

Every test gets fresh databases (see rebalance_helpers): three shards on the LocalStack's
three servers and an empty ``s4`` as a second database on the first server.
"""

from __future__ import annotations

import asyncio
import uuid
from types import ModuleType

import asyncpg
import pytest
from rebalance_helpers import (
    TABLES,
    all_rows,
    create_schema,
    fresh_dsns,  # noqa: F401  (the dsns fixture)
    load,
    misplaced,
    open_pool,
    snapshot,
)

from tiercache import _impl
from tiercache.sharding._rebalance_sql import HASH_FUNCTIONS
from tiercache.sharding.rebalance import (
    KeyMovedError,
    RebalanceError,
    Rebalancer,
    RebalanceRunningError,
    TopologyWatcher,
    VerificationError,
    load_topology,
)
from tiercache.sharding.ring import HashRing

pytestmark = pytest.mark.asyncio(loop_scope="session")
RING_IMPLS = _impl.both("_ring")


@pytest.mark.parametrize("impl", RING_IMPLS, ids=lambda m: m.__name__.split(".")[1])
async def test_sql_hash_equals_hash_ring(dsns: dict[str, str], impl: ModuleType) -> None:
    conn = await asyncpg.connect(dsns["s1"])
    try:
        await conn.execute(HASH_FUNCTIONS)
        ints = [0, 1, -1, 42, 2**31, 2**63 - 1, -(2**63), *range(1000, 1300, 7)]
        got = await conn.fetch("SELECT k, tiercache_rb.ketama(k::text) AS h FROM "
                               "unnest($1::bigint[]) k", ints)
        assert {r["k"]: r["h"] for r in got} == {k: impl.hash_key(k) for k in ints}
        texts = ["", "a", "user:42", "héllo wörld", "日本語", "quote'\"", "x" * 300]
        got = await conn.fetch("SELECT k, tiercache_rb.ketama(k) AS h FROM unnest($1::text[]) k",
                               texts)
        assert {r["k"]: r["h"] for r in got} == {k: impl.hash_key(k) for k in texts}
        uuids = [uuid.uuid4() for _ in range(50)] + [uuid.UUID(int=0)]
        got = await conn.fetch("SELECT k, tiercache_rb.ketama(k::text) AS h FROM "
                               "unnest($1::uuid[]) k", uuids)
        assert {r["k"]: r["h"] for r in got} == {k: impl.hash_key(k) for k in uuids}
        blobs = [b"", b"\x00", bytes(range(256)), b"user:42"]
        got = await conn.fetch("SELECT k, tiercache_rb.ketama(k) AS h FROM unnest($1::bytea[]) k",
                               blobs)
        assert {bytes(r["k"]): r["h"] for r in got} == {k: impl.hash_key(k) for k in blobs}
    finally:
        await conn.close()


async def test_plan_counts_exact_and_apply_moves_exactly_those_rows(
        dsns: dict[str, str]) -> None:
    old = HashRing(["s1", "s2", "s3"])
    await create_schema(dsns, ["s1", "s2", "s3"])
    pool = await open_pool(dsns, old)
    try:
        await load(pool, users=3000, orders=4000)
        before_users = all_rows(await snapshot(pool, "users", "id"))
        before_orders = all_rows(await snapshot(pool, "orders", "user_id"))
        rb = Rebalancer(pool, TABLES)
        plan = await rb.plan(add={"s4": None})
        new = HashRing(["s1", "s2", "s3", "s4"])
        expect_users = sum(1 for i in range(3000) if new.get_node(i) != old.get_node(i))
        expect_orders = sum(1 for i in range(4000)
                            if new.get_node(i // 3) != old.get_node(i // 3))
        assert plan.rows_of("users") == expect_users
        assert plan.rows_of("orders") == expect_orders
        assert {tm.target for tm in plan.table_moves} == {"s4"}
        text = plan.summary()
        assert "users:" in text and "s1 -> s4" in text and f"{expect_users:,}"[:1] in text

        report = await rb.apply(plan, batch_size=300)
        assert report.copied == {"users": expect_users, "orders": expect_orders}
        assert report.deleted == {"users": expect_users, "orders": expect_orders}
        assert pool.ring.get_node(7) == new.get_node(7) and "s4" in pool.ring.nodes
        users = await snapshot(pool, "users", "id")
        orders = await snapshot(pool, "orders", "user_id")
        assert misplaced(users, new) == [] and misplaced(orders, new) == []
        assert all_rows(users) == before_users and all_rows(orders) == before_orders
        assert len(users["s4"]) == expect_users
        check = await rb.verify(plan)
        assert check.ok and check.misplaced == {} and check.checked_rows == 7000
        status = await rb.status()
        assert status is not None and status["phase"] == "done"
        assert all(p["copied"] == p["planned"] and p["done"] for p in status["progress"])
        assert await rb.resume() is None  # nothing left to do
    finally:
        await pool.close()


async def test_target_table_created_from_source_ddl_with_indexes(dsns: dict[str, str]) -> None:
    await create_schema(dsns, ["s1", "s2", "s3"])
    pool = await open_pool(dsns, HashRing(["s1", "s2", "s3"]))
    try:
        await load(pool, users=200, orders=200)
        rb = Rebalancer(pool, TABLES)
        await rb.apply(await rb.plan(add=["s4"]))
        idx = await pool.fetch("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = "
                               "'orders' ORDER BY 1", shard="s4")
        assert [r["indexname"] for r in idx] == ["orders_pkey", "orders_user"]
        pk = await pool.fetchval("SELECT count(*) FROM pg_constraint WHERE contype = 'p' AND "
                                 "conrelid = 'users'::regclass", shard="s4")
        assert pk == 1
        default = await pool.fetchval(
            "SELECT column_default FROM information_schema.columns WHERE table_name = 'orders' "
            "AND column_name = 'at'", shard="s4")
        assert default == "now()"
    finally:
        await pool.close()


@pytest.mark.parametrize("change", ["remove", "weight", "stable-add"])
async def test_remove_reweight_and_stable_mode(dsns: dict[str, str], change: str) -> None:
    mode = "stable" if change.startswith("stable") else "ketama"
    shards = ["s1", "s2", "s3", "s4"] if change == "remove" else ["s1", "s2", "s3"]
    old = HashRing(shards, mode=mode)  # type: ignore[arg-type]
    await create_schema(dsns, shards)
    pool = await open_pool(dsns, old)
    try:
        await load(pool, users=2000, orders=1500)
        before = all_rows(await snapshot(pool, "users", "id"))
        rb = Rebalancer(pool, TABLES)
        if change == "remove":
            plan = await rb.plan(remove=["s2"])
            new = HashRing(["s1", "s3", "s4"])
            assert {tm.source for tm in plan.table_moves} == {"s2"}
        elif change == "weight":
            plan = await rb.plan(weights={"s1": 2})
            new = HashRing({"s1": 2, "s2": 1, "s3": 1})
        else:
            plan = await rb.plan(add=["s4"])
            new = HashRing(["s1", "s2", "s3", "s4"], mode="stable")
        expected = sum(1 for i in range(2000) if new.get_node(i) != old.get_node(i))
        assert plan.rows_of("users") == expected
        report = await rb.apply(plan, batch_size=250)
        assert report.copied["users"] == expected
        users = await snapshot(pool, "users", "id")
        assert misplaced(users, new) == []
        assert misplaced(await snapshot(pool, "orders", "user_id"), new) == []
        assert all_rows(users) == before
        if change == "remove":
            assert users["s2"] == []
    finally:
        await pool.close()


async def test_verification_catches_altered_target_row_and_refuses_flip(
        dsns: dict[str, str]) -> None:
    old = HashRing(["s1", "s2", "s3"])
    await create_schema(dsns, ["s1", "s2", "s3"])
    pool = await open_pool(dsns, old)
    try:
        await load(pool, users=1500, orders=0)
        rb = Rebalancer(pool, {"users": "id"})
        plan = await rb.plan(add=["s4"])
        victim = next(i for i in range(1500) if HashRing(["s1", "s2", "s3", "s4"]).get_node(i)
                      == "s4")

        async def corrupt(event: str) -> None:
            if event == "caught_up":  # a row changed on the target behind the rebalancer's back
                await pool.execute("UPDATE users SET name = 'tampered' WHERE id = $1", victim,
                                   shard="s4")

        with pytest.raises(VerificationError) as err:
            await rb.apply(plan, hook=corrupt)
        assert victim in err.value.diffs[0][3].keys and "flip refused" in str(err.value)
        assert pool.ring.nodes == ["s1", "s2", "s3"]  # no flip
        assert (await rb.status() or {})["phase"] == "catching_up"
        check = await rb.verify()  # standalone, before a flip: source vs target per arc
        assert not check.ok and any(victim in d.keys for _t, _s, _d, d in check.diffs)
        # the source still takes writes to the key (it was not fenced away)
        await pool.execute("UPDATE users SET n = n + 1 WHERE id = $1", victim, shard_key=victim)
        assert await rb.abort() == plan.job
        assert await pool.fetchval("SELECT count(*) FROM users", shard="s4") == 0
        trig = await pool.fetchval("SELECT count(*) FROM pg_trigger WHERE tgname LIKE "
                                   "'tiercache_rb_%'", shard_key=victim)
        assert trig == 0
        assert (await rb.status() or {})["phase"] == "aborted"
    finally:
        await pool.close()


async def test_stale_client_gets_key_moved_and_reroutes(dsns: dict[str, str]) -> None:
    old = HashRing(["s1", "s2", "s3"])
    await create_schema(dsns, ["s1", "s2", "s3"])
    pool = await open_pool(dsns, old)
    stale = await open_pool(dsns, old.copy())  # another process that missed the flip
    try:
        await load(pool, users=500, orders=0)
        rb = Rebalancer(pool, {"users": "id"})
        report = await rb.apply(await rb.plan(add=["s4"]), cleanup=False)
        assert report.deleted == {} and (await rb.status() or {})["phase"] == "flipped"
        new = HashRing(["s1", "s2", "s3", "s4"])
        moved = next(i for i in range(500) if new.get_node(i) != old.get_node(i))
        with pytest.raises(KeyMovedError) as err:  # asyncpg raises the class itself
            await stale.execute("UPDATE users SET n = 1000 WHERE id = $1", moved,
                                shard_key=moved)
        assert err.value.target == "s4" and "moved to shard s4" in str(err.value)
        assert KeyMovedError.from_exception(err.value) is err.value
        fresh = next(i for i in range(10**6, 10**7) if new.get_node(i) != old.get_node(i))
        with pytest.raises(KeyMovedError):  # a new key in a moved arc too
            await stale.execute("INSERT INTO users (id, name) VALUES ($1, 'x')", fresh,
                                shard_key=fresh)
        assert await load_topology(stale) == 1
        await stale.execute("UPDATE users SET n = 1000 WHERE id = $1", moved, shard_key=moved)
        assert await pool.fetchval("SELECT n FROM users WHERE id = $1", moved, shard="s4") == 1000
        done = await rb.resume()  # the deferred clean-up
        assert done is not None and sum(done.deleted.values()) > 0
        assert (await rb.status() or {})["phase"] == "done"
        with pytest.raises(KeyMovedError):  # INSERTs stay guarded
            await stale.execute("INSERT INTO users (id, name) VALUES ($1, 'x')", fresh,
                                shard=old.get_node(fresh))
        # keys that did not move still write on the old shard through the guard
        kept = next(i for i in range(500) if new.get_node(i) == old.get_node(i))
        await pool.execute("UPDATE users SET n = 7 WHERE id = $1", kept, shard_key=kept)
    finally:
        await stale.close()
        await pool.close()


async def test_stale_update_or_delete_after_cleanup_is_rejected(dsns: dict[str, str]) -> None:
    """After clean-up the moved row is gone from the source: an UPDATE/DELETE from a client
    on the old ring matches no row there -- it must fail, not succeed silently."""
    old = HashRing(["s1", "s2", "s3"])
    await create_schema(dsns, ["s1", "s2", "s3"])
    pool = await open_pool(dsns, old)
    stale = await open_pool(dsns, old.copy())
    try:
        await load(pool, users=500, orders=0)
        rb = Rebalancer(pool, {"users": "id"})
        await rb.apply(await rb.plan(add=["s4"]))  # with clean-up
        new = HashRing(["s1", "s2", "s3", "s4"])
        moved = next(i for i in range(500) if new.get_node(i) != old.get_node(i))
        kept = next(i for i in range(500) if new.get_node(i) == old.get_node(i)
                    and old.get_node(i) == old.get_node(moved))
        src = old.get_node(moved)
        assert await pool.fetchval("SELECT count(*) FROM users WHERE id = $1", moved,
                                   shard=src) == 0
        for sql in ("UPDATE users SET n = 5 WHERE id = $1", "DELETE FROM users WHERE id = $1"):
            with pytest.raises(KeyMovedError, match="stale"):
                await stale.execute(sql, moved, shard_key=moved)
        with pytest.raises(KeyMovedError):  # the whole stale session, until it refreshes
            await stale.execute("UPDATE users SET n = 5 WHERE id = $1", kept, shard_key=kept)
        assert await pool.fetchval("SELECT n FROM users WHERE id = $1", moved,
                                   shard="s4") == moved % 97  # nothing was lost
        await load_topology(stale)
        assert await stale.execute("UPDATE users SET n = 5 WHERE id = $1", moved,
                                   shard_key=moved) == "UPDATE 1"
        assert await stale.execute("UPDATE users SET n = 6 WHERE id = $1", kept,
                                   shard_key=kept) == "UPDATE 1"
        # sessions that declare no ring (psql, other tools) and the new ring are not stopped
        conn = await asyncpg.connect(dsns[src])
        try:
            assert await conn.execute("UPDATE users SET n = 8 WHERE id = $1", kept) == "UPDATE 1"
        finally:
            await conn.close()
    finally:
        await stale.close()
        await pool.close()


async def test_topology_watcher_refreshes_and_retries_on_the_new_owner(
        dsns: dict[str, str]) -> None:
    old = HashRing(["s1", "s2", "s3"])
    await create_schema(dsns, ["s1", "s2", "s3"])
    pool = await open_pool(dsns, old)
    other = await open_pool(dsns, old.copy())  # another process, watching the topology
    lazy = await open_pool(dsns, old.copy())  # and one that only reacts to KeyMovedError
    try:
        await load(pool, users=500, orders=0)
        new = HashRing(["s1", "s2", "s3", "s4"])
        moved = next(i for i in range(500) if new.get_node(i) != old.get_node(i))
        async with TopologyWatcher(other, interval=60) as watcher, \
                TopologyWatcher(lazy, interval=3600) as lazy_watcher:
            assert watcher.version is None
            rb = Rebalancer(pool, {"users": "id"})
            await rb.apply(await rb.plan(add=["s4"]))
            for _ in range(100):  # NOTIFY, not the 60 s poll
                if watcher.version == 1:
                    break
                await asyncio.sleep(0.05)
            assert watcher.version == 1 and other.shard_for(moved) == "s4"
            if lazy_watcher._listen is not None:  # make it miss the notification
                await lazy_watcher._unlisten()
                lazy_watcher._listen = None
                lazy.set_ring(old.copy())
                lazy_watcher.version = None
            # a stale row-level rejection names the owner: refreshed and retried there
            fresh = next(i for i in range(10**9, 10**10)
                         if new.get_node(i) == "s4" and old.get_node(i) != "s4")
            assert await lazy.execute("INSERT INTO users (id, name) VALUES ($1, 'w')", fresh,
                                      shard_key=fresh) == "INSERT 0 1"
            assert await pool.fetchval("SELECT count(*) FROM users WHERE id = $1", fresh,
                                       shard="s4") == 1
            assert lazy_watcher.version == 1 and lazy.shard_for(moved) == "s4"
    finally:
        await lazy.close()
        await other.close()
        await pool.close()


async def test_preflight_fails_before_touching_anything(dsns: dict[str, str]) -> None:
    await create_schema(dsns, ["s1", "s2", "s3"])
    conn = await asyncpg.connect(dsns["s4"])
    await conn.execute("CREATE TABLE users (id bigint PRIMARY KEY, name text)")  # wrong shape
    await conn.close()
    pool = await open_pool(dsns, HashRing(["s1", "s2", "s3"]))
    try:
        await load(pool, users=100, orders=0)
        rb = Rebalancer(pool, {"users": "id"})
        plan = await rb.plan(add=["s4"])
        with pytest.raises(RebalanceError, match="columns differ"):
            await rb.apply(plan)
        assert await rb.status() is None  # no job was written
        assert await pool.fetchval("SELECT count(*) FROM pg_trigger WHERE tgname LIKE "
                                   "'tiercache_rb_%'", shard="s1") == 0
        with pytest.raises(RebalanceError, match="no primary key"):
            await pool.execute_all("CREATE TABLE nopk (id bigint)")
            await Rebalancer(pool, {"nopk": "id"}).plan(add=["s4"])
        with pytest.raises(RebalanceError, match="supported"):
            await pool.execute_all("CREATE TABLE boolkey (id boolean PRIMARY KEY)")
            await Rebalancer(pool, {"boolkey": "id"}).plan(add=["s4"])
    finally:
        await pool.close()
    small = await open_pool({k: v for k, v in dsns.items() if k != "s4"},
                            HashRing(["s1", "s2", "s3"]))
    try:
        rb = Rebalancer(small, {"users": "id"})
        plan = await rb.plan(add=["s4"])  # no DSN for s4 anywhere
        with pytest.raises(RebalanceError, match="pool has no shard"):
            await rb.apply(plan)
        await rb.close()
    finally:
        await small.close()


async def test_plan_add_with_a_dsn_adds_the_shard_to_the_pool(dsns: dict[str, str]) -> None:
    """The issue's idiom: ``plan(add={"s4": dsn4})`` on a pool that has never heard of s4."""
    old = HashRing(["s1", "s2", "s3"])
    await create_schema(dsns, ["s1", "s2", "s3"])
    pool = await open_pool({k: v for k, v in dsns.items() if k != "s4"}, old)
    try:
        await load(pool, users=1000, orders=600)
        rb = Rebalancer(pool, TABLES)
        plan = await rb.plan(add={"s4": dsns["s4"]})
        assert "s4" not in pool.shards and plan.rows > 0
        report = await rb.apply(plan)
        assert pool.shards == ("s1", "s2", "s3", "s4") and "s4" in pool.ring.nodes
        assert sum(report.copied.values()) == plan.rows
        new = HashRing(["s1", "s2", "s3", "s4"])
        assert misplaced(await snapshot(pool, "users", "id"), new) == []
        assert await pool.fetchval("SELECT count(*) FROM users", shard="s4") == \
            plan.rows_of("users")
        with pytest.raises(ValueError, match="already exists"):
            await pool.add_shard("s4", dsns["s4"])
        await rb.close()
    finally:
        await pool.close()


async def test_second_rebalance_refused_while_one_holds_the_lock(dsns: dict[str, str]) -> None:
    await create_schema(dsns, ["s1", "s2", "s3"])
    pool = await open_pool(dsns, HashRing(["s1", "s2", "s3"]))
    try:
        await load(pool, users=300, orders=0)
        rb = Rebalancer(pool, {"users": "id"})
        plan = await rb.plan(add=["s4"])
        other = Rebalancer(pool, {"users": "id"})
        seen: list[str] = []

        async def try_other(event: str) -> None:
            if event == "prepared":
                with pytest.raises(RebalanceRunningError):
                    await other.apply(await other.plan(weights={"s1": 3}))
                seen.append(event)

        await rb.apply(plan, hook=try_other)
        assert seen == ["prepared"]
    finally:
        await pool.close()


async def test_progress_bars_show_rows_rate_and_report(dsns: dict[str, str]) -> None:
    import io

    from rich.console import Console

    from tiercache.sharding._rebalance_progress import RichProgress

    await create_schema(dsns, ["s1", "s2", "s3"])
    pool = await open_pool(dsns, HashRing(["s1", "s2", "s3"]))
    try:
        await load(pool, users=3000, orders=0)
        rb = Rebalancer(pool, {"users": "id"})
        plan = await rb.plan(add=["s4"])
        buf = io.StringIO()
        bars = RichProgress(console=Console(file=buf, width=160, force_terminal=False))
        await rb.apply(plan, batch_size=200, progress=bars)
        text = buf.getvalue()
        for tm in plan.table_moves:
            assert f"users {tm.source}->s4" in text and f"{tm.rows}/{tm.rows}" in text
        assert "done in" in text and "rows/s" in text
    finally:
        await pool.close()


async def test_suggest_weights_lightens_the_heavy_shard(dsns: dict[str, str]) -> None:
    ring = HashRing(["s1", "s2", "s3"])
    await create_schema(dsns, ["s1", "s2", "s3"])
    pool = await open_pool(dsns, ring)
    try:
        await load(pool, users=3000, orders=0)
        heavy = [i for i in range(3000) if ring.get_node(i) == "s1"]
        await pool.execute(  # s1's rows get ~2 kB of incompressible bytes each
            "UPDATE users SET payload = (SELECT string_agg(decode(md5(random()::text || "
            "users.id || g), 'hex'), ''::bytea) FROM generate_series(1, 128) g)", shard="s1")
        await pool.execute("ANALYZE users", shard="s1")
        rb = Rebalancer(pool, {"users": "id"})
        loads = await rb.shard_loads()
        assert loads["s1"]["bytes"] > 3 * loads["s2"]["bytes"] and heavy
        assert abs(sum(v["load"] for v in loads.values()) - 1.0) < 1e-9
        plan = await rb.suggest_weights()
        weights = plan.new_ring["weights"]
        assert weights["s1"] < weights["s2"] and weights["s1"] < weights["s3"]
        assert {tm.source for tm in plan.table_moves if tm.rows} >= {"s1"}
    finally:
        await pool.close()


async def test_text_keys_and_unhashable_columns_move_and_verify(dsns: dict[str, str]) -> None:
    """A text shard key, and a json column (no hash function: checksums fall back to md5)."""
    old = HashRing(["s1", "s2", "s3"])
    for name in ("s1", "s2", "s3"):
        conn = await asyncpg.connect(dsns[name])
        await conn.execute("CREATE TABLE docs (key text PRIMARY KEY, body json, at point)")
        await conn.close()
    pool = await open_pool(dsns, old)
    try:
        keys = [f"doc:{i}:é" for i in range(1500)]
        for key in keys:
            await pool.execute("INSERT INTO docs VALUES ($1, $2, point(1, 2))", key,
                               f'{{"k": "{key}"}}', shard_key=key)
        rb = Rebalancer(pool, {"docs": "key"})
        plan = await rb.plan(add=["s4"])
        new = HashRing(["s1", "s2", "s3", "s4"])
        expected = [k for k in keys if new.get_node(k) != old.get_node(k)]
        assert plan.rows_of("docs") == len(expected)
        victim = expected[0]

        async def corrupt(event: str) -> None:
            if event == "caught_up":
                await pool.execute("UPDATE docs SET body = '{}' WHERE key = $1", victim,
                                   shard="s4")

        with pytest.raises(VerificationError) as err:
            await rb.apply(plan, hook=corrupt)
        assert victim in err.value.diffs[0][3].keys
        await rb.abort()
        report = await rb.apply(await rb.plan(add=["s4"]))
        assert report.copied == {"docs": len(expected)} and report.debris == 0
        for shard in pool.shards:
            rows = await pool.fetch("SELECT key, body::text FROM docs", shard=shard)
            assert all(new.get_node(r["key"]) == shard for r in rows)
            assert all(r["body"] == f'{{"k": "{r["key"]}"}}' for r in rows)
        assert sum([await pool.fetchval("SELECT count(*) FROM docs", shard=s)
                    for s in pool.shards]) == 1500
    finally:
        await pool.close()


async def test_l3_query_cache_does_not_serve_counts_from_before_the_move(
        dsns: dict[str, str]) -> None:
    """Rows copied into a target and deleted from a source are writes: cached reads of the
    moved tables on both shards are invalidated (a fan-out count too)."""
    from tiercache.sharding.pool import create_sharded_pool
    from tiercache.tiers.query import QueryCache

    old = HashRing(["s1", "s2", "s3"])
    await create_schema(dsns, ["s1", "s2", "s3", "s4"])
    pool = create_sharded_pool(dict(dsns), ring=old, min_size=1, max_size=6,
                               query_cache=QueryCache())
    await pool
    try:
        await load(pool, users=2000, orders=0)
        before = {s: await pool.fetchval("SELECT count(*) FROM users", shard=s, cache_ttl=300)
                  for s in pool.shards}
        assert before["s4"] == 0 and sum(before.values()) == 2000
        assert sum((await pool.fetchval_all("SELECT count(*) FROM users",
                                            cache_ttl=300)).values()) == 2000
        await Rebalancer(pool, {"users": "id"}).apply(
            await Rebalancer(pool, {"users": "id"}).plan(add=["s4"]))
        after = {s: await pool.fetchval("SELECT count(*) FROM users", shard=s, cache_ttl=300)
                 for s in pool.shards}
        new = HashRing(["s1", "s2", "s3", "s4"])
        assert after == {s: sum(1 for i in range(2000) if new.get_node(i) == s)
                         for s in pool.shards}
        assert sum((await pool.fetchval_all("SELECT count(*) FROM users",
                                            cache_ttl=300)).values()) == 2000
    finally:
        await pool.close()


async def test_keys_moved_back_are_writable_again(dsns: dict[str, str]) -> None:
    """Add s4, then remove it: the ring is the original again.  The guards of the first
    move must not reject writes to the keys that came back, nor sessions on that ring."""
    old = HashRing(["s1", "s2", "s3"])
    await create_schema(dsns, ["s1", "s2", "s3"])
    pool = await open_pool(dsns, old)
    try:
        await load(pool, users=600, orders=0)
        rb = Rebalancer(pool, {"users": "id"})
        await rb.apply(await rb.plan(add=["s4"]))
        await rb.apply(await rb.plan(remove=["s4"]))
        assert pool.ring.weights == old.weights
        assert misplaced(await snapshot(pool, "users", "id"), old) == []
        new = HashRing(["s1", "s2", "s3", "s4"])
        back = next(i for i in range(600) if new.get_node(i) == "s4")
        assert await pool.execute("UPDATE users SET n = 1 WHERE id = $1", back,
                                  shard_key=back) == "UPDATE 1"
        fresh = next(i for i in range(10**6, 10**7) if new.get_node(i) == "s4")
        await pool.execute("INSERT INTO users (id, name) VALUES ($1, 'b')", fresh,
                           shard_key=fresh)
        restarted = await open_pool(dsns, old.copy())  # a process started on this ring
        try:
            assert await restarted.execute("DELETE FROM users WHERE id = $1", back,
                                           shard_key=back) == "DELETE 1"
        finally:
            await restarted.close()
    finally:
        await pool.close()
