"""One core, two shells: flows run sync or async; and single-flight for concurrent misses.

The read path, invalidation and health checks are written once, as generators that *yield*
the I/O they need (an :class:`Op`: an L2 call, a loader call, a sleep, a shared flight). The
sync shell runs each op with the tiers' ``*_sync`` twins, the async shell awaits the async
methods; everything else (ordering, counting, races) is the same code for both.

Single-flight, why: without it, N callers missing the same hot key at once all run the
loader (a thundering herd against the database). Asyncio callers share a task; threads share
a result slot. The two never mix: a key loaded on an event loop and in a thread at once loads
twice, which is harmless and avoids blocking a loop on a thread (or the reverse).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Hashable
from typing import Any, TypeVar

__all__ = ["BusGate", "Call", "Flight", "Flow", "Op", "SingleFlight", "Sleep", "TierOp", "Until",
           "drive_async", "drive_sync"]

T = TypeVar("T")


class Op:
    """One unit of I/O a flow asks its shell to perform."""

    __slots__ = ()

    def run_sync(self) -> Any:
        raise NotImplementedError

    async def run_async(self) -> Any:
        raise NotImplementedError


Flow = Generator[Op, Any, T]


class TierOp(Op):
    """``tier.<name>(...)``: ``<name>_sync`` in the sync shell, awaited in the async one."""

    __slots__ = ("args", "kwargs", "name", "tier")

    def __init__(self, tier: Any, name: str, *args: Any, **kwargs: Any) -> None:
        self.tier, self.name, self.args, self.kwargs = tier, name, args, kwargs

    def run_sync(self) -> Any:
        return getattr(self.tier, f"{self.name}_sync")(*self.args, **self.kwargs)

    async def run_async(self) -> Any:
        return await getattr(self.tier, self.name)(*self.args, **self.kwargs)


class Call(Op):
    """Call a user function (the loader); awaited when it returns an awaitable."""

    __slots__ = ("args", "func", "kwargs")

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
        self.func, self.args, self.kwargs = func, args, kwargs

    def run_sync(self) -> Any:
        result = self.func(*self.args, **self.kwargs)
        if inspect.isawaitable(result):  # caching it would hand out one awaitable forever
            if inspect.iscoroutine(result):
                result.close()  # no "never awaited" warning on top of our error
            raise TypeError(
                f"{getattr(self.func, '__qualname__', self.func)!r} looks sync but returned an "
                "awaitable; make it (and any decorator under @cached) an async def")
        return result

    async def run_async(self) -> Any:
        result = self.func(*self.args, **self.kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result


class Sleep(Op):
    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def run_sync(self) -> None:
        time.sleep(self.seconds)

    async def run_async(self) -> None:
        await asyncio.sleep(self.seconds)


class Until(Op):
    """Poll ``done()`` until true or ``timeout`` seconds passed; True if it became true.

    The sync shell on a thread that runs an event loop gives up after a few milliseconds:
    what it waits for may need that very loop, which sleeping here would starve.
    """

    __slots__ = ("done", "timeout")

    def __init__(self, done: Callable[[], bool], timeout: float) -> None:
        self.done, self.timeout = done, timeout

    def run_sync(self) -> bool:
        timeout = self.timeout
        try:
            asyncio.get_running_loop()
            timeout = min(timeout, 0.005)
        except RuntimeError:
            pass
        deadline = time.monotonic() + timeout
        while not self.done():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return True

    async def run_async(self) -> bool:
        deadline = time.monotonic() + self.timeout
        while not self.done():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.001)
        return True


class BusGate(Op):
    """Wait (bounded) until the invalidation bus has subscribed; see ``InvalidationBus``."""

    __slots__ = ("bus", "window")

    def __init__(self, bus: Any, window: float) -> None:
        self.bus, self.window = bus, window

    def run_sync(self) -> None:
        self.bus.gate_sync(self.window)

    async def run_async(self) -> None:
        await self.bus.gate_async(self.window)


class Flight(Op):
    """Run ``make()`` (a flow) once per ``key`` among concurrent callers of this process."""

    __slots__ = ("flights", "key", "make")

    def __init__(self, flights: SingleFlight, key: Hashable, make: Callable[[], Flow[Any]]):
        self.flights, self.key, self.make = flights, key, make

    def run_sync(self) -> Any:
        return self.flights.do_sync(self.key, lambda: drive_sync(self.make()))

    async def run_async(self) -> Any:
        return await self.flights.do_async(self.key, lambda: drive_async(self.make()))


def drive_sync(flow: Flow[T]) -> T:
    """The sync shell: perform each op in this thread; op errors are thrown into the flow."""
    send: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = flow.throw(error) if error is not None else flow.send(send)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        error = None
        try:
            send = op.run_sync()
        except BaseException as exc:
            send, error = None, exc


async def drive_async(flow: Flow[T]) -> T:
    """The async shell: same as :func:`drive_sync`, awaiting each op."""
    send: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = flow.throw(error) if error is not None else flow.send(send)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        error = None
        try:
            send = await op.run_async()
        except BaseException as exc:
            send, error = None, exc


class _Call:
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class SingleFlight:
    """``do_sync(key, fn)`` / ``await do_async(key, make)``: one call per key at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[Hashable, _Call] = {}
        self._futures: dict[Hashable, asyncio.Future[Any]] = {}
        self.waits = 0  # callers that joined somebody else's load

    def do_sync(self, key: Hashable, fn: Callable[[], Any]) -> Any:
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if call is None:
                call = self._calls[key] = _Call()
            else:
                self.waits += 1
        if not leader:
            call.done.wait()
            if call.error is not None:
                raise call.error
            return call.value
        try:
            call.value = fn()
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            with self._lock:
                del self._calls[key]
            call.done.set()
        return call.value

    async def do_async(self, key: Hashable, make: Callable[[], Awaitable[Any]]) -> Any:
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
            value = await make()
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
