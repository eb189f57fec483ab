"""L1 hit-path micro suite: ``pytest benchmarks/bench_l1.py``; ratios: ``python bench_l1.py``.

Groups compared side by side, all on a warm key (every call is a hit):

* ``l1-sync-hit``: ``functools.lru_cache`` vs ``cachetools.cached`` vs ``cachebox`` vs
  ``theine`` (when installed) vs tiercache's sync wrapper (no TTL and with TTL). Issue 3's
  bar: <= 1.5x lru_cache, >= 5x faster than cachetools.
* ``l1-async-hit``: bare ``await`` of a trivial coroutine vs tiercache's async wrapper vs
  cashews (``mem://``) vs aiocache (``SimpleMemoryCache``). Bar: <= 2.5x bare await, >= 50x
  faster than cashews and aiocache. Each round is ``BATCH`` sequential awaits inside one task.
* ``l1-memory``: tracemalloc bytes per entry for 100k small-int keys, tiercache LRU vs
  cachetools ``TTLCache`` (keys/values built beforehand: only the store's own cost counts).
  Bar: <= 120 B/entry. Reported in ``extra_info``.

Timings are reported, never asserted; ``python bench_l1.py [--quick]`` prints the ratios with
the ``tiercache bench --suite l1`` code itself (``tiercache.bench.suites.l1``; the peers'
decorators come from there too). The store
is whatever ``tiercache._impl`` picks (``TIERCACHE_PUREPYTHON=1`` to measure the fallback).
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable, Hashable
from typing import Any

import pytest

from tiercache.bench.base import BenchContext
from tiercache.bench.suites._l1_memory import memory_rows, store_bytes_per_entry
from tiercache.bench.suites.l1 import _sync_decorators, async_rows, sync_rows
from tiercache.tiers.memory import MemoryTier

BATCH = 1000


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
        decorators, _missing = _sync_decorators(100_000)  # the l1 suite's peers
        contenders: dict[str, Callable[..., int]] = {
            name: deco(func) for name, deco in decorators.items()}
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


@pytest.mark.parametrize("kind", ["tiercache", "cachetools"])
def test_l1_memory(benchmark: Any, kind: str) -> None:
    benchmark.group = "l1-memory"
    per_entry = benchmark.pedantic(store_bytes_per_entry, args=(kind,), rounds=1, iterations=1)
    benchmark.extra_info["bytes_per_entry"] = round(per_entry, 1)
    print(f"\n{kind}: {per_entry:.1f} bytes/entry")


# ------------------------------------------------------------------- ratio report


def report(quick: bool = False) -> None:
    """The interleaved same-process ratios: the ``cache`` suite's own L1 measurements."""
    ctx = BenchContext(quick=quick)
    print(f"impl: {type(MemoryTier().store).__module__}")
    for row in [*sync_rows(ctx), *async_rows(ctx), *memory_rows(20_000 if quick else 100_000)]:
        verdict = {True: "OK", False: "MISS", None: "info"}[row.get("ok")]
        print(f"{row['name']:48s} {row['summary']}  [{row.get('target') or '-'}] {verdict}")


if __name__ == "__main__":
    report(quick="--quick" in sys.argv)
