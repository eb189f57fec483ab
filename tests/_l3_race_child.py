"""Child process of the two-process L3 race test: readers through a Redis-backed QueryCache.

Reads the writer's committed floor from Redis *before* each read (the writer sets it after
its commit returned), so a value below the floor is a stale read. Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import traceback

from redis.asyncio.cluster import RedisCluster

from tiercache import QueryCache, create_sharded_pool


async def main() -> None:
    dsn, url, ns, table, floor_key = (os.environ["L3_DSN"], os.environ["L3_REDIS"],
                                      os.environ["L3_NS"], os.environ["L3_TABLE"],
                                      os.environ["L3_FLOOR"])
    readers = int(os.environ.get("L3_READERS", "10"))
    qc = QueryCache(url, namespace=ns)
    client = RedisCluster.from_url(url)
    stale = reads = 0
    errors: list[str] = []
    sql = f"SELECT v FROM {table} WHERE id = $1"
    async with create_sharded_pool({"s": dsn}, min_size=2, max_size=8, query_cache=qc) as pool:
        print("ready", flush=True)

        async def reader() -> None:
            nonlocal stale, reads
            while True:
                try:
                    raw = await client.get(floor_key)
                except Exception:  # the harness's own redis-py client (seen once: a redis-py
                    await asyncio.sleep(0.001)  # connection race); not the cache under test
                    continue
                floor = int(raw or 0)
                if floor < 0:
                    return  # the writer is done
                try:
                    v = await pool.fetchval(sql, 1, cache_ttl=30)
                except Exception:  # reported (the test fails on any), not fatal to the others
                    errors.append(traceback.format_exc())
                    continue
                reads += 1
                if int(v) < floor:
                    stale += 1

        await asyncio.gather(*(reader() for _ in range(readers)))
    s = qc.stats()
    await qc.close()
    await client.aclose()
    print(json.dumps({"stale": stale, "reads": reads, "hits": s["hits"],
                      "misses": s["misses"], "race_skips": s["race_skips"],
                      "errors": errors[:3], "n_errors": len(errors)}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
