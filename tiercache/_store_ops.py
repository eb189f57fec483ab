"""The flow ops of a write-behind store: journal plans, group-committed appends, user batches.

Kept apart from the engine (:mod:`tiercache._writebehind`) because they are the only
places that know how a step runs in each shell: a sync op runs in the calling thread, an
async op awaits; a sync writer under an event loop goes to a worker thread.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tiercache._flow import Op

if TYPE_CHECKING:
    from tiercache._groupcommit import GroupCommit
    from tiercache._journal import Journal

__all__ = ["Append", "RedisOp", "UserBatch"]


class RedisOp(Op):
    """A journal plan run on the tier's sync or async client (errors reach the flow)."""

    __slots__ = ("journal", "plan")

    def __init__(self, journal: Journal, plan: Any) -> None:
        self.journal, self.plan = journal, plan

    def run_sync(self) -> Any:
        return self.journal.run_sync(self.plan)

    def run_async(self) -> Awaitable[Any]:
        return self.journal.run_async(self.plan)


class Append(Op):
    __slots__ = ("gc", "payloads")

    def __init__(self, gc: GroupCommit, payloads: list[bytes]) -> None:
        self.gc, self.payloads = gc, payloads

    def run_sync(self) -> list[str]:
        return self.gc.append_sync(self.payloads)

    def run_async(self) -> Awaitable[list[str]]:
        return self.gc.append_async(self.payloads)


class UserBatch(Op):
    """A writer/deleter call; a sync one runs in a worker thread under an event loop (a
    batch write must not stall the loop's other tasks)."""

    __slots__ = ("arg", "fn")

    def __init__(self, fn: Callable[[Any], Any], arg: Any) -> None:
        self.fn, self.arg = fn, arg

    def run_sync(self) -> Any:
        result = self.fn(self.arg)
        if inspect.isawaitable(result):
            return asyncio.run(_awaited(result))
        return result

    async def run_async(self) -> Any:
        fn = self.fn
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
                type(fn).__call__):
            return await fn(self.arg)
        result = await asyncio.to_thread(fn, self.arg)
        if inspect.isawaitable(result):
            result = await result
        return result


async def _awaited(result: Awaitable[Any]) -> Any:
    return await result


