"""Single flight per L3 key in one process: the first reader of a missing entry runs the query,
readers of the same key meanwhile wait for its result.

Why a list of waiter futures, not one shared future behind ``asyncio.shield``: a miss that
nobody joins (most of them) allocates nothing but an empty list, and a waiter costs one
future and one wake-up instead of shield's extra future and two callbacks -- under a 95/5
Zipf load a sixth of all reads wait for a refill after a write.  Each waiter's future is its
own, so cancelling a waiter never touches the run, and each gets its own copy of a list.

Why waiters retry when the runner is cancelled (a client went away, a timeout): its
``CancelledError`` is not theirs; they look again and one of them runs the query.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any

__all__ = ["Flights", "RunnerGone"]


class RunnerGone(Exception):
    """The reader running this key's query was cancelled: a waiter looks again."""


class Flights:
    """``key -> waiters`` of the queries running in this process."""

    __slots__ = ("_runs",)

    def __init__(self) -> None:
        self._runs: dict[Hashable, list[asyncio.Future[Any]]] = {}

    def __len__(self) -> int:
        return len(self._runs)

    def join(self, key: Hashable) -> asyncio.Future[Any] | None:
        """A future for the running query of ``key``, or None: the caller runs it (and must
        end with :meth:`done` or :meth:`failed`)."""
        waiters = self._runs.get(key)
        if waiters is None:
            self._runs[key] = []
            return None
        fut = asyncio.get_running_loop().create_future()
        waiters.append(fut)
        return fut

    def done(self, key: Hashable, result: Any) -> None:
        """The run returned: every waiter gets ``result`` (a list: a copy each)."""
        waiters = self._runs.pop(key, None)
        if waiters:
            copy = type(result) is list
            for fut in waiters:
                if not fut.done():  # a cancelled waiter is done already
                    fut.set_result(list(result) if copy else result)

    def failed(self, key: Hashable, exc: BaseException) -> None:
        """The run raised: waiters re-raise an error; a cancellation makes them retry."""
        waiters = self._runs.pop(key, None)
        if waiters:
            if not isinstance(exc, Exception):
                exc = RunnerGone()
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(exc)
