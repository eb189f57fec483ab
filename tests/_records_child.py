"""One process of the Records-through-L2 test: ``write`` loads rows and caches them, ``read``
(a second process) must get equal Rows from L2 without calling its loader.

argv: mode, redis URL, Postgres DSN, namespace, table. Prints one JSON line of checks.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import asyncpg

from tiercache import Row
from tiercache.cache import TierCache
from tiercache.tiers.memory import MemoryTier
from tiercache.tiers.redis import RedisTier

COLUMNS = """id int primary key, name text, price numeric(12, 4), at timestamptz,
    naive timestamp, day date, clock time, clock_tz timetz, span interval, uid uuid,
    doc json, docb jsonb, ints int[], names text[], ok bool, ratio float8, raw bytea,
    nothing text"""
INSERT = """INSERT INTO {t} SELECT i, 'name ' || i, i * 1.0625,
    '2024-03-31 01:30:00+00'::timestamptz + i * interval '1 hour',
    '2024-01-01 12:00'::timestamp, date '2024-02-29' + i,
    time '23:59:59.999999', timetz '10:00+05:30', interval '1 day 2 hours 3.5 seconds' * i,
    md5(i::text)::uuid, json_build_object('i', i), jsonb_build_object('k', array[i, i]),
    array[i, null, 3], array['a', 'é', null], i % 2 = 0, i / 3.0, decode('00ff', 'hex'), null
    FROM generate_series(1, 250) i"""

loads: list[str] = []


def _hash(value: Any) -> Any:
    try:
        return hash(value)
    except TypeError:  # a Record holding a list is unhashable, and so is its Row
        return "unhashable"


async def main(mode: str, url: str, dsn: str, namespace: str, table: str) -> dict[str, Any]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    cache = TierCache(l1=MemoryTier(), l2=RedisTier(url, ttl=120), namespace=namespace,
                      bus_wait=30.0)
    if mode == "write":
        await pool.execute(f"CREATE TABLE {table} ({COLUMNS})")
        await pool.execute(INSERT.format(t=table))

    @cache.cached()
    async def all_rows(limit: int) -> list[asyncpg.Record]:
        loads.append("fetch")
        return await pool.fetch(f"SELECT * FROM {table} ORDER BY id LIMIT $1", limit)

    @cache.cached()
    async def one_row(row_id: int) -> asyncpg.Record | None:
        loads.append("fetchrow")
        return await pool.fetchrow(f"SELECT * FROM {table} WHERE id = $1", row_id)

    rows = await all_rows(250)
    row = await one_row(7)
    fresh = await pool.fetch(f"SELECT * FROM {table} ORDER BY id")
    out: dict[str, Any] = {
        "loads": loads,
        "types": sorted({type(r).__name__ for r in rows} | {type(row).__name__}),
        "equal": rows == fresh and row == fresh[6],
        "dicts_equal": [dict(r) for r in rows] == [dict(r) for r in fresh]
        and dict(row) == dict(fresh[6]),  # type: ignore[arg-type]
        "value_types": {k: type(v).__name__ for k, v in fresh[0].items()},
        "cached_value_types": {k: type(v).__name__ for k, v in rows[0].items()},
        "l2": {k: v for k, v in cache.l2.stats().items() if k in ("hits", "misses", "errors")},  # type: ignore[union-attr]
    }
    if mode == "read":
        r = rows[0]
        assert isinstance(r, Row) and isinstance(row, Row)
        out["record_api"] = {
            "by_name": r["name"] == fresh[0]["name"], "by_index": r[1] == fresh[0][1],
            "slice": r[0:2] == fresh[0][0:2], "get": r.get("missing", "d") == "d",
            "keys": list(r.keys()) == list(fresh[0].keys()),
            "values": list(r.values()) == list(fresh[0].values()),
            "items": list(r.items()) == list(fresh[0].items()), "len": len(r) == len(fresh[0]),
            "iter": list(r) == list(fresh[0]), "contains": ("name" in r) is ("name" in fresh[0]),
            "hash": _hash(row) == _hash(fresh[6]), "repr": repr(r).startswith("<Row id=1 "),
            "record_eq_row": fresh[0] == r,
        }
        await cache.invalidate_pattern("*")
    await cache.aclose()
    await pool.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:]))), flush=True)
