"""The flow engine: the core is written once, as generators, and run by a sync or async shell.

The read path, invalidation and health checks are generators that *yield* the I/O they need
(an :class:`Op`: a tier call, a loader call, a sleep, a shared flight) and get its result
sent back. :func:`drive_sync` performs each op in the calling thread with the tiers'
``*_sync`` twins; :func:`drive_async` awaits the async methods. Everything else (ordering,
counting, races) is the same code for both shells.

Kept flat on purpose: a tier call is driven straight by the shell (no wrapper frame), so an
L2 read costs the flow's frames plus the tier's own, in both shells.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Generator, Hashable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from tiercache._batching import Coalescer
    from tiercache._singleflight import SingleFlight

__all__ = ["BusGate", "Call", "Coalesced", "Flight", "Flow", "Op", "Sleep", "TierOp", "Until",
           "drive_async", "drive_sync"]

T = TypeVar("T")


class Op:
    """One unit of I/O a flow asks its shell to perform."""

    __slots__ = ()

    def run_sync(self) -> Any:
        raise NotImplementedError

    def run_async(self) -> Awaitable[Any]:
        raise NotImplementedError


Flow = Generator[Op, Any, T]


class TierOp(Op, Generic[T]):
    """One tier call given as its two bound methods: ``TierOp(l2.get_entry, l2.get_entry_sync,
    key)``. Typed (mypy checks both against the tier protocol) and greppable."""

    __slots__ = ("afn", "args", "kwargs", "sfn")

    def __init__(self, afn: Callable[..., Awaitable[T]], sfn: Callable[..., T], *args: Any,
                 **kwargs: Any) -> None:
        self.afn, self.sfn, self.args, self.kwargs = afn, sfn, args, kwargs

    def run_sync(self) -> T:
        return self.sfn(*self.args, **self.kwargs)

    def run_async(self) -> Awaitable[T]:
        return self.afn(*self.args, **self.kwargs)


class Coalesced(Op, Generic[T]):
    """One item of a batchable call: async, it joins this loop turn's batch of ``coalescer``
    (:mod:`tiercache._batching`); sync, ``sfn(item)`` runs it alone."""

    __slots__ = ("coalescer", "item", "sfn")

    def __init__(self, coalescer: Coalescer[Any, T], sfn: Callable[[Any], T] | None,
                 item: Any) -> None:
        self.coalescer, self.sfn, self.item = coalescer, sfn, item

    def run_sync(self) -> T:
        if self.sfn is None:
            raise TypeError("a batched call has no sync form")
        return self.sfn(self.item)

    def run_async(self) -> Awaitable[T]:
        return self.coalescer.submit(self.item)


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

    def run_async(self) -> Awaitable[None]:
        return asyncio.sleep(self.seconds)


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

    def run_async(self) -> Awaitable[None]:
        return self.bus.gate_async(self.window)  # type: ignore[no-any-return]


class Flight(Op):
    """Run ``flow`` once per ``key`` among concurrent callers of this process.

    The flow is created by the caller: a generator not yet started costs no frame, and the
    copy of a caller that joins another's flight is simply dropped (never started).
    """

    __slots__ = ("flights", "flow", "key")

    def __init__(self, flights: SingleFlight, key: Hashable, flow: Flow[Any]) -> None:
        self.flights, self.key, self.flow = flights, key, flow

    def run_sync(self) -> Any:
        return self.flights.do_sync(self.key, drive_sync, self.flow)

    def run_async(self) -> Awaitable[Any]:
        return self.flights.do_async(self.key, drive_async, self.flow)


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
            # the hot op (a tier call) is called without the run_sync frame
            send = op.sfn(*op.args, **op.kwargs) if type(op) is TierOp else op.run_sync()
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
        try:  # the hot op (a tier call) is awaited without a wrapper frame
            send = await (op.afn(*op.args, **op.kwargs) if type(op) is TierOp
                          else op.run_async())
        except BaseException as exc:
            send, error = None, exc
