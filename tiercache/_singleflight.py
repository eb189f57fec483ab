"""Single-flight: one load per key at a time among this process's concurrent callers.

Why: without it, N callers missing the same hot key at once all run the
loader (a thundering herd against the database). Asyncio callers share a task; threads share
a result slot. The two never mix: a key loaded on an event loop and in a thread at once loads
twice, which is harmless and avoids blocking a loop on a thread (or the reverse).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

__all__ = ["SingleFlight"]


class _Call:
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        # made by the first waiter, under the flight lock: a load nobody joins (nearly every
        # miss) never pays for an Event (a Condition and two locks)
        self.done: threading.Event | None = None
        self.value: Any = None
        self.error: BaseException | None = None


class SingleFlight:
    """``do_sync(key, fn, *args)`` / ``await do_async(key, make, *args)``: one call per key
    at a time; the others get the leader's result (or exception)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[Hashable, _Call] = {}
        self._futures: dict[Hashable, asyncio.Future[Any]] = {}
        self.waits = 0  # callers that joined somebody else's load

    def do_sync(self, key: Hashable, fn: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if call is None:
                call = self._calls[key] = _Call()
            else:
                self.waits += 1
                if call.done is None:
                    call.done = threading.Event()
                done = call.done
        if not leader:
            done.wait()
            if call.error is not None:
                raise call.error
            return call.value
        try:
            call.value = fn(*args)
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            with self._lock:
                del self._calls[key]
                waiting = call.done  # no waiter can arrive once the call is out of the dict
            if waiting is not None:
                waiting.set()
        return call.value

    async def do_async(self, key: Hashable, make: Callable[..., Awaitable[Any]],
                       *args: Any) -> Any:
        """The first caller loads in its own task (no extra task, no extra loop trip);
        the others await a future. If the leader is cancelled, a waiter takes over."""
        loop = asyncio.get_running_loop()
        flight = (id(loop), key)
        while True:
            shared = self._futures.get(flight)
            if shared is None:
                break
            self.waits += 1
            try:
                # shield: a waiter being cancelled must not cancel the shared future
                return await asyncio.shield(shared)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if shared.cancelled() and (task is None or not task.cancelling()):
                    continue  # the leader was cancelled, not us: load it ourselves
                raise
        shared = self._futures[flight] = loop.create_future()
        try:
            value = await make(*args)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                shared.cancel()
            else:
                shared.set_exception(exc)
                shared.exception()  # mark retrieved: nobody may be waiting
            raise
        else:
            shared.set_result(value)
            return value
        finally:
            if self._futures.get(flight) is shared:
                del self._futures[flight]

    def __len__(self) -> int:
        return len(self._calls) + len(self._futures)
