"""One process of the SIGKILL test: journaled write-behind puts, then wait to be killed.

argv: redis URL, Postgres DSN, namespace, table, number of keys, claim_after. Prints
``PUTS-RETURNED <n>`` once every put has returned; the parent SIGKILLs it right then.
"""

from __future__ import annotations

import asyncio
import sys

import asyncpg
from _store_helpers import Writer, new_cache

from tiercache import Store, WriteBehind


class SlowWriter(Writer):
    async def __call__(self, batch: dict[int, int]) -> None:
        await asyncio.sleep(0.3)  # a busy database: the queue is mostly unflushed at the kill
        await super().__call__(batch)


async def main(url: str, dsn: str, namespace: str, table: str, n: str, claim: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    writer = SlowWriter(pool, table)
    cache = new_cache(url, namespace, bus=False)  # no peers to tell: the journal is tested
    store = Store(cache, "orders", loader=writer.load, writer=writer,
                  policy=WriteBehind(max_delay=0.5, batch_size=1000, journal=True,
                                     claim_after=float(claim)))
    keys = int(n)
    for k in range(0, keys, 10):  # an older value first: the replay must keep the last one
        await store.put(k, -k)
    sem = asyncio.Semaphore(32)  # under the tier's 64 connections

    async def put(k: int) -> None:
        async with sem:
            await store.put(k, k * 3 + 1)

    await asyncio.gather(*(put(k) for k in range(keys)))
    print(f"PUTS-RETURNED {store.stats()['journal_appends']}", flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
