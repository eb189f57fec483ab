"""The flow ops of a write-behind store: journal plans, group-committed appends, user batches.

Kept apart from the engine (:mod:`tiercache._writebehind`) because they are the only
places that know how a step runs in each shell: a sync op runs in the calling thread, an
async op awaits; a sync writer under an event loop goes to a worker thread.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from tiercache._flow import Flow, Op, drive_async, drive_sync

if TYPE_CHECKING:
    from tiercache._groupcommit import GroupCommit
    from tiercache._journal import Journal

__all__ = ["Append", "RedisOp", "SharedTierUpdates", "TierBatch", "UserBatch"]


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




class TierBatch(Op):
    """The tier update of a put, shared with concurrent puts of the same loop."""

    __slots__ = ("batcher", "items")

    def __init__(self, batcher: SharedTierUpdates, items: list[Any]) -> None:
        self.batcher, self.items = batcher, items

    def run_sync(self) -> None:  # threads: each caller updates the tiers itself
        drive_sync(self.batcher.flow_of(self.items))

    def run_async(self) -> Awaitable[None]:
        return self.batcher.run_async(self.items)


class SharedTierUpdates:
    """Concurrent async puts update the tiers in one flow (one ``set_many`` pipeline and one
    bus message for all of them) instead of a round trip each: the caller that finds no
    update in flight runs everything queued; callers arriving meanwhile queue, and the
    first of them is handed the lead when it returns. Per event loop; threads do their own.
    """

    def __init__(self, flow_of: Callable[[list[Any]], Flow[None]]) -> None:
        self.flow_of = flow_of
        self._state: dict[asyncio.AbstractEventLoop, _LoopState] = {}

    async def run_async(self, items: list[Any]) -> None:
        loop = asyncio.get_running_loop()
        st = self._state.get(loop)
        if st is None:
            for old in [lp for lp in self._state if lp.is_closed()]:
                del self._state[old]
            st = self._state[loop] = _LoopState()
        fut: asyncio.Future[Any] = loop.create_future()
        st.pending.append((items, fut))
        if st.leading and await fut is not _LEAD:
            return
        st.leading = True
        batch, st.pending = st.pending, []
        error: BaseException | None = None
        try:
            await drive_async(self.flow_of([it for part, _ in batch for it in part]))
        except BaseException as exc:
            error = exc
        others = [(part, f) for part, f in batch if f is not fut and not f.done()]
        if error is not None and not isinstance(error, Exception):
            st.pending[:0] = others  # we were cancelled: the next leader redoes theirs
        else:
            for _, other in others:
                if error is None:
                    other.set_result(None)
                else:
                    other.set_exception(error)
        while st.pending and st.pending[0][1].done():  # cancelled while waiting
            st.pending.pop(0)
        if st.pending:
            st.pending[0][1].set_result(_LEAD)
        else:
            st.leading = False
        if error is not None:
            raise error


_LEAD: Final = object()


class _LoopState:
    __slots__ = ("leading", "pending")

    def __init__(self) -> None:
        self.pending: list[tuple[list[Any], asyncio.Future[Any]]] = []
        self.leading = False
