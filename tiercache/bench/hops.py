"""Count the hops of an L1-miss/L2-hit read: ``python -m tiercache.bench.hops [REDIS_URL]``.

Why: every function between the decorated wrapper and redis-py's command call is a frame
pushed on each L2 read; fewer is cheaper and easier to follow. This tool calls an async and
a sync ``@cached`` function once to fill L2, drops its L1 entry, and profiles the next call
with ``sys.setprofile`` up to the first frame entered inside the ``redis`` package. It
reports the Python functions entered (all, and those in tiercache), and the tiercache frames
(and coroutine frames) stacked at that redis-py call. Without a URL a LocalStack is started.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from tiercache.cache import TierCache
from tiercache.tiers.memory import MemoryTier
from tiercache.tiers.redis import RedisTier

__all__ = ["main", "measure"]

_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Counter:
    def __init__(self) -> None:
        self.entered: list[str] = []
        self.stack: list[str] | None = None
        self.coroutines = 0
        self.started = False

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or self.stack is not None:
            return
        code = frame.f_code
        if not self.started:  # from the first tiercache frame the C wrapper enters
            if not code.co_filename.startswith(_PKG) or code.co_filename == __file__:
                return
            self.started = True
        if f"{os.sep}redis{os.sep}" in code.co_filename:
            self.stack, self.coroutines = [], 0
            f: FrameType | None = frame.f_back
            while f is not None:
                if f.f_code.co_filename.startswith(_PKG):
                    self.stack.append(f.f_code.co_qualname)
                    self.coroutines += bool(f.f_code.co_flags & inspect.CO_COROUTINE)
                f = f.f_back
            return
        self.entered.append(f"{os.path.relpath(code.co_filename, _PKG)}:{code.co_qualname}")

    def report(self) -> dict[str, Any]:
        ours = [e for e in self.entered if not e.startswith("..")]
        return {"functions_entered": len(self.entered), "tiercache_functions": len(ours),
                "tiercache_frames_at_redis_call": len(self.stack or []),
                "tiercache_coroutine_frames_at_redis_call": self.coroutines,
                "path": ours}


def _profiled(call: Callable[[], Any]) -> dict[str, Any]:
    counter = _Counter()
    sys.setprofile(counter)
    try:
        call()
    finally:
        sys.setprofile(None)
    if counter.stack is None:
        raise RuntimeError("the call never reached redis-py (was it an L2 hit?)")
    return counter.report()


def measure(redis_url: str) -> dict[str, dict[str, Any]]:
    """Hop counts of one L1-miss/L2-hit read through an async and a sync ``@cached``."""
    cache = TierCache(l1=MemoryTier(maxsize=100), l2=RedisTier(redis_url, ttl=60),
                      namespace="tchops", bus=False)

    async def get_user(uid: int) -> dict[str, Any]:
        return {"id": uid}

    def get_user_sync(uid: int) -> dict[str, Any]:
        return {"id": uid}

    afn, sfn = cache.cached(ttl=60)(get_user), cache.cached(ttl=60)(get_user_sync)
    loop = asyncio.new_event_loop()
    try:
        out = {}
        loop.run_until_complete(afn(42))  # fills L2 (and L1), warms the clients
        afn.segment.clear()
        loop.run_until_complete(afn(42))
        afn.segment.clear()

        async def read() -> Any:
            return await afn(42)

        out["async"] = _profiled(lambda: loop.run_until_complete(read()))
        sfn(42)
        sfn.segment.clear()
        sfn(42)
        sfn.segment.clear()
        out["sync"] = _profiled(lambda: sfn(42))
        loop.run_until_complete(cache.clear())
        loop.run_until_complete(cache.aclose())
        cache.close()
        return out
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    verbose = "-v" in args
    args = [a for a in args if a != "-v"]
    if args:
        result = measure(args[0])
    else:
        from tiercache.local import LocalStack

        with LocalStack(redis_masters=3, pg_shards=0) as stack:
            result = measure(stack.redis_url)
    for flavour in result.values():
        if not verbose:
            flavour.pop("path")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
