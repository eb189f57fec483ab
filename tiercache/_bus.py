"""The invalidation bus: Redis pub/sub between the processes sharing a namespace.

Why: another process's L1 copy would otherwise survive an invalidation for a full L1 TTL.
Messages go to ``tiercache:inv:{namespace}`` (classic PUBLISH reaches every node of a
cluster). A lost message costs at most one L1 TTL: on every (re)subscription the owner
flushes its L1, because messages may have been missed while disconnected. One coroutine does
the listening, hosted by the caller's event loop (async users) or a daemon thread (sync users).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from tiercache import codec

__all__ = ["InvalidationBus"]

log = logging.getLogger("tiercache.invalidation")

Handler = Callable[[dict[str, Any]], Awaitable[None]]


class InvalidationBus:
    """Subscriber loop (one coroutine) hosted by the caller's event loop or a daemon thread.

    ``on_message`` gets decoded messages from other processes (own ones are skipped);
    ``on_connect`` runs after each successful (re)subscription, before any message.
    """

    def __init__(self, l2: Any, namespace: str, on_message: Handler,
                 on_connect: Callable[[], None]) -> None:
        self.l2 = l2
        self.channel = f"tiercache:inv:{namespace}"
        self.source = uuid.uuid4().hex
        self._on_message, self._on_connect = on_message, on_connect
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._started_at = 0.0
        self._closed = False
        self.connected = False
        self.stats = {"published": 0, "received": 0, "connects": 0, "errors": 0}

    # ------------------------------------------------------------------ messages

    def encode(self, **parts: Any) -> bytes:
        return codec.encode({"v": 1, "src": self.source, **{k: v for k, v in parts.items() if v}})

    async def _handle(self, data: Any) -> None:
        try:
            msg = codec.decode(data if isinstance(data, bytes) else str(data).encode())
            if not isinstance(msg, dict) or msg.get("v") != 1:
                raise codec.CodecError("not a tiercache invalidation message")
        except codec.CodecError as exc:
            self.stats["errors"] += 1
            log.warning("tiercache: ignoring malformed message on %s: %s", self.channel, exc)
            return
        if msg.get("src") == self.source:
            return
        self.stats["received"] += 1
        await self._on_message(msg)

    # ------------------------------------------------------------------ lifecycle

    def gate_sync(self, window: float) -> None:
        """Sync callers: start (in a thread) if needed, wait for the first subscription.

        The wait is bounded by ``window`` after the start, and skipped when the bus is a
        task of this thread's own event loop (blocking here would starve it).
        """
        if self._ready.is_set() and self.running():
            return
        self.start(in_thread=True)
        task = self._task
        if task is not None and _running_loop() is task.get_loop():
            return
        left = self._started_at + window - time.monotonic()
        if left > 0:
            self._ready.wait(left)

    async def gate_async(self, window: float) -> None:
        """Async callers: start (as a task of this loop) if needed, wait the same way."""
        if self._ready.is_set() and self.running():
            return
        self.start(in_thread=False)
        while not self._ready.is_set() and time.monotonic() < self._started_at + window:
            await asyncio.sleep(0.005)  # the subscriber may be a task on this very loop

    def running(self) -> bool:
        if self._task is not None:
            return not self._task.done() and not self._task.get_loop().is_closed()
        return self._thread is not None and self._thread.is_alive()

    def start(self, in_thread: bool = False) -> None:
        """Start listening if not already: a task of the running loop, or a daemon thread."""
        with self._lock:
            if self._closed or self.running():
                return
            self._ready.clear()
            self._started_at = time.monotonic()
            self._task = None
            loop = None if in_thread else _running_loop()
            if loop is None:
                self._thread = threading.Thread(
                    target=self._thread_main, name=f"tiercache-bus-{self.channel}", daemon=True
                )
                self._thread.start()
            else:
                self._task = loop.create_task(self._run(), name=f"tiercache-bus-{self.channel}")

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._thread_loop = loop
        try:
            loop.run_until_complete(self._run())
        except asyncio.CancelledError:
            pass
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _run(self) -> None:
        delay = 0.05
        while not self._closed:
            client = pubsub = None
            try:
                client = self.l2.pubsub_client()
                pubsub = client.pubsub()
                await pubsub.subscribe(self.channel)
                while not self._closed:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is None:
                        continue
                    if msg.get("type") == "subscribe":
                        # first subscription, or redis-py reconnected and resubscribed on its
                        # own: either way messages may have been missed before this point
                        self.connected = True
                        self.stats["connects"] += 1
                        self._on_connect()
                        self._ready.set()
                        delay = 0.05
                    elif msg.get("type") == "message":
                        await self._handle(msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats["errors"] += 1
                log.info("tiercache: invalidation bus %s disconnected: %r", self.channel, exc)
            finally:
                self.connected = False
                await _close_quietly(pubsub, client)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _signal_stop(self) -> threading.Thread | None:
        with self._lock:
            self._closed = True
            task, thread, loop = self._task, self._thread, self._thread_loop
        if task is not None and not task.get_loop().is_closed():
            task.get_loop().call_soon_threadsafe(task.cancel)
        if thread is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(_cancel_all, loop)
        return thread if thread is not threading.current_thread() else None

    def stop(self) -> None:
        """Stop listening (idempotent); safe from any thread."""
        thread = self._signal_stop()
        if thread is not None:
            thread.join(timeout=5)

    async def astop(self) -> None:
        """:meth:`stop` without blocking the event loop."""
        thread = self._signal_stop()
        if thread is not None:
            await asyncio.to_thread(thread.join, 5)
        task = self._task
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            await asyncio.gather(task, return_exceptions=True)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel()


async def _close_quietly(pubsub: Any, client: Any) -> None:
    for closer in (getattr(pubsub, "aclose", None), getattr(client, "aclose", None)):
        if closer is None:
            continue
        try:
            await asyncio.wait_for(closer(), 2.0)
        except Exception:  # closing a dead connection may fail; it is going away anyway
            log.debug("tiercache: error closing bus connection", exc_info=True)
