"""L1 hit-path micro suite: ``pytest benchmarks/bench_l1.py``; ratios: ``python bench_l1.py``.

Groups compared side by side, all on a warm key (every call is a hit):

* ``l1-sync-hit``: ``functools.lru_cache`` vs ``cachetools.cached`` vs tiercache's sync
  wrapper (no TTL and with TTL). Issue 3's bar: <= 1.5x lru_cache, >= 5x faster than cachetools.
* ``l1-async-hit``: bare ``await`` of a trivial coroutine vs tiercache's async wrapper vs
  cashews (``mem://``) vs aiocache (``SimpleMemoryCache``). Bar: <= 2.5x bare await, >= 50x
  faster than cashews and aiocache. Each round is ``BATCH`` sequential awaits inside one task.
* ``l1-memory``: tracemalloc bytes per entry for 100k small-int keys, tiercache LRU vs
  cachetools ``TTLCache`` (keys/values built beforehand: only the store's own cost counts).
  Bar: <= 120 B/entry. Reported in ``extra_info``.

Timings are reported, never asserted. The store is whatever ``tiercache._impl`` picks
(``TIERCACHE_PUREPYTHON=1`` to measure the fallback).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import sys
import timeit
import tracemalloc
from collections.abc import Callable, Hashable
from typing import Any

import cachetools
import pytest

from tiercache.tiers.memory import MemoryTier

BATCH = 1000
N_MEMORY = 100_000


def _plain(x: int) -> int:
    return x * 2


async def _coro(x: int) -> int:
    return x * 2


def _plain2(x: int, y: str) -> int:
    return x * 2


def make_sync() -> dict[str, Callable[[], int]]:
    """Every sync contender as a zero-arg call on a warm key.

    ``*-1arg`` is ``f(7)`` (lru_cache and tiercache both key a single int/str argument by
    itself); ``*-2args`` is ``f(7, "a")``, where both hash and compare the args tuple.
    """
    calls: dict[str, Callable[[], int]] = {}
    for suffix, func, args in (("1arg", _plain, (7,)), ("2args", _plain2, (7, "a"))):
        contenders: dict[str, Callable[..., int]] = {
            "lru_cache": functools.lru_cache(maxsize=100_000)(func),
            "cachetools": cachetools.cached(cachetools.LRUCache(100_000))(func),
        }
        for name, ttl in (("tiercache", None), ("tiercache-ttl", 60.0)):
            seg = MemoryTier(maxsize=100_000, ttl=ttl).segment("bench")

            def miss(
                key: Hashable | None,
                a: tuple[Any, ...],
                kw: dict[str, Any],
                s: Any = seg,
                f: Callable[..., int] = func,
            ) -> int:
                value = f(*a)
                s.put(key, value)
                return value

            contenders[name] = MemoryTier.wrap_segment(func, seg, miss)
        for name, fn in contenders.items():
            call = functools.partial(fn, *args)
            call()
            calls[f"{name}-{suffix}"] = call
    return calls


def make_async(loop: asyncio.AbstractEventLoop) -> dict[str, Callable[[int], Any]]:
    """Every async contender, warmed up on key 7 (cashews/aiocache built on ``loop``)."""
    from aiocache import SimpleMemoryCache, cached  # type: ignore[import-untyped]
    from cashews import Cache

    seg = MemoryTier(maxsize=100_000, ttl=60.0).segment("bench")

    async def miss(key: Hashable | None, args: tuple[Any, ...], kw: dict[str, Any]) -> int:
        value = await _coro(*args)
        seg.put(key, value)
        return value

    cashews_cache = Cache()
    cashews_cache.setup("mem://")
    fns: dict[str, Callable[[int], Any]] = {
        "bare-await": _coro,
        "tiercache": MemoryTier.wrap_segment(_coro, seg, miss),
        "cashews": cashews_cache(ttl=60)(_coro),
        "aiocache": cached(cache=SimpleMemoryCache, ttl=60)(_coro),
    }

    async def warm() -> None:
        for fn in fns.values():
            await fn(7)

    loop.run_until_complete(warm())
    return fns


async def _await_batch(fn: Callable[[int], Any], n: int = BATCH) -> None:
    for _ in range(n):
        await fn(7)


def _run_batch(loop: asyncio.AbstractEventLoop, fn: Callable[[int], Any]) -> None:
    loop.run_until_complete(_await_batch(fn))


def memory_per_entry(kind: str, n: int = N_MEMORY) -> float:
    """tracemalloc bytes per entry of the store alone (keys/values preallocated)."""
    keys = [(i,) for i in range(n)]
    values = list(range(n))
    gc.collect()
    tracemalloc.start()
    try:
        if kind == "tiercache":
            store: Any = MemoryTier(maxsize=n, ttl=60.0).segment("bench")
            before = tracemalloc.get_traced_memory()[0]
            put = store.put
            for k, v in zip(keys, values, strict=True):
                put(k, v)
        else:
            store = cachetools.TTLCache(maxsize=n, ttl=60.0)
            before = tracemalloc.get_traced_memory()[0]
            for k, v in zip(keys, values, strict=True):
                store[k] = v
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del store
    return (after - before) / n


# ------------------------------------------------------------------- pytest-benchmark


SYNC = make_sync()


@pytest.mark.parametrize("name", list(SYNC))
def test_l1_sync_hit(benchmark: Any, name: str) -> None:
    benchmark.group = "l1-sync-hit-" + name.rsplit("-", 1)[1]
    assert benchmark(SYNC[name]) == 14


@pytest.fixture(scope="module")
def async_env() -> Any:
    loop = asyncio.new_event_loop()
    fns = make_async(loop)
    yield loop, fns
    loop.close()


@pytest.mark.parametrize("name", ["bare-await", "tiercache", "cashews", "aiocache"])
def test_l1_async_hit(benchmark: Any, async_env: Any, name: str) -> None:
    loop, fns = async_env
    benchmark.group = "l1-async-hit"
    benchmark.extra_info["per_round"] = f"{BATCH} awaits"
    benchmark(_run_batch, loop, fns[name])


@pytest.mark.parametrize("kind", ["tiercache", "cachetools-TTLCache"])
def test_l1_memory(benchmark: Any, kind: str) -> None:
    benchmark.group = "l1-memory"
    per_entry = benchmark.pedantic(memory_per_entry, args=(kind,), rounds=1, iterations=1)
    benchmark.extra_info["bytes_per_entry"] = round(per_entry, 1)
    print(f"\n{kind}: {per_entry:.1f} bytes/entry")


# ------------------------------------------------------------------- ratio report


def _best(stmt: Callable[[], Any], number: int, repeat: int = 7) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number


def report(number: int = 200_000) -> dict[str, float]:
    """Interleaved, same-process timings (ns per hit) and memory; prints the ratios."""
    out: dict[str, float] = {}
    for name, call in make_sync().items():
        out[f"sync/{name}"] = _best(call, number) * 1e9
    loop = asyncio.new_event_loop()
    fns = make_async(loop)
    for name, fn in fns.items():
        rounds = max(number // BATCH // (20 if name in ("cashews", "aiocache") else 1), 5)
        batch = functools.partial(_run_batch, loop, fn)
        out[f"async/{name}"] = _best(batch, rounds) / BATCH * 1e9
    loop.close()
    for kind in ("tiercache", "cachetools-TTLCache"):
        out[f"memory/{kind}"] = memory_per_entry(kind)
    s, a = "sync/", "async/"

    def r(x: str, y: str) -> float:
        return out[x] / out[y]

    lines = [f"impl: {type(MemoryTier().store).__module__}"]
    lines += [
        f"{k:28s} {v:9.1f} {'B/entry' if k.startswith('memory') else 'ns'}" for k, v in out.items()
    ]
    for n in ("1arg", "2args"):
        lru, ct = f"{s}lru_cache-{n}", f"{s}cachetools-{n}"
        lines += [
            f"sync {n:5s} tiercache / lru_cache     = {r(f'{s}tiercache-{n}', lru):.2f}x"
            " (bar <= 1.5x)",
            f"sync {n:5s} tiercache-ttl / lru_cache = {r(f'{s}tiercache-ttl-{n}', lru):.2f}x",
            f"sync {n:5s} cachetools / tiercache-ttl = {r(ct, f'{s}tiercache-ttl-{n}'):.1f}x"
            " faster (bar >= 5x)",
        ]
    lines += [
        f"async tiercache / bare await = {r(a + 'tiercache', a + 'bare-await'):.2f}x (bar <= 2.5x)",
        f"async cashews / tiercache    = {r(a + 'cashews', a + 'tiercache'):.0f}x faster"
        " (bar >= 50x)",
        f"async aiocache / tiercache   = {r(a + 'aiocache', a + 'tiercache'):.0f}x faster"
        " (bar >= 50x)",
    ]
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    report(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
