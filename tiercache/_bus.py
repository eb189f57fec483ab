"""The invalidation bus: Redis pub/sub between the processes sharing a namespace.

Why: another process's L1 copy would otherwise survive an invalidation for a full L1 TTL.
Messages go to ``tiercache:inv:{namespace}`` (classic PUBLISH reaches every node of a
cluster). A lost message costs at most one L1 TTL: on every (re)subscription the owner
flushes its L1, because messages may have been missed while disconnected. One coroutine does
the listening, hosted by the caller's event loop (async users) or a daemon thread (sync users).

Anyone who can PUBLISH to Redis can write to the channel, so every message is parsed by
:func:`parse_message` against a strict shape with bounds (size, item counts, string lengths,
pattern length); anything else is dropped and counted (``stats["dropped"]``), with at most
one WARNING a minute -- a bad message never stops the subscriber (which would flush L1 in
every process on its reconnect). When the L2 tier has a ``signer`` (signed envelopes), the
messages are signed too and unsigned ones dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

from tiercache import codec
from tiercache._l1index import MAX_PATTERN

__all__ = ["InvalidationBus", "parse_message"]

log = logging.getLogger("tiercache.invalidation")

Handler = Callable[[dict[str, Any]], Awaitable[None]]

MAX_MESSAGE_BYTES: Final = 4 << 20
MAX_ITEMS: Final = 10_000  # keys + tags + functions in one message
MAX_PATTERNS: Final = 16  # each one is matched against every L1 index entry
MAX_ITEM_LEN: Final = 16_384
_LISTS: Final = ("k", "t", "f")
_LOG_EVERY: Final = 60.0


def _strings(value: Any, what: str, limit: int, max_len: int) -> list[str]:
    if type(value) is not list or len(value) > limit:
        raise codec.CodecError(f"{what}: not a list of at most {limit}")
    if not all(type(s) is str and len(s) <= max_len for s in value):
        raise codec.CodecError(f"{what}: not all strings of at most {max_len} characters")
    return value


def parse_message(data: Any, *, signer: codec.Signer | None = None,
                  context: str = "") -> dict[str, Any]:
    """A bus message in its one accepted shape, or :class:`~tiercache.codec.CodecError`.

    ``{"v": 1, "src": str, "k"/"t"/"f": [str], "p": [glob], "a": [] | [1]}`` (lists and
    ``a`` optional, unknown fields ignored so a newer sender's extras don't drop its
    invalidations). The result always has every field, ``a`` as a bool.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        data = str(data).encode()
    if len(data) > MAX_MESSAGE_BYTES:
        raise codec.CodecError(f"message larger than {MAX_MESSAGE_BYTES} bytes")
    body: Any = data
    if signer is not None or bytes(data[:3]) == b"\xc1TS":
        body = codec.unseal(data, signer, context)
    msg = codec.decode(body)
    if type(msg) is not dict or len(msg) > 16:
        raise codec.CodecError("not a tiercache invalidation message")
    if type(msg.get("v")) is not int or msg["v"] != 1:
        raise codec.CodecError("unknown message version")
    src = msg.get("src")
    if type(src) is not str or not 0 < len(src) <= 64:
        raise codec.CodecError("bad source")
    out: dict[str, Any] = {"v": 1, "src": src}
    count = 0
    for name in _LISTS:
        out[name] = _strings(msg.get(name, []), name, MAX_ITEMS, MAX_ITEM_LEN)
        count += len(out[name])
    if count > MAX_ITEMS:
        raise codec.CodecError(f"more than {MAX_ITEMS} items")
    out["p"] = _strings(msg.get("p", []), "p", MAX_PATTERNS, MAX_PATTERN)
    flag = msg.get("a", [])
    if flag not in ([], [1]) or (flag and type(flag[0]) is not int):
        raise codec.CodecError("bad 'a' flag")
    out["a"] = bool(flag)
    return out


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
        self._ready = threading.Event()  # subscribed at least once since start()
        self._settled = threading.Event()  # the first attempt since start() ended, either way
        self._started_at = 0.0
        self._closed = False
        self.connected = False
        self.signer: codec.Signer | None = getattr(l2, "signer", None)
        self.stats = {"published": 0, "received": 0, "connects": 0, "errors": 0,
                      "dropped": 0}
        self._drops_unlogged = 0
        self._logged_at = -_LOG_EVERY

    # ------------------------------------------------------------------ messages

    def encode(self, **parts: Any) -> bytes:
        """One message for these parts (``k t p f`` lists, ``a`` flag).

        Past the receivers' bounds (too many items or too long strings) the message says
        "drop everything" instead: coarser, never lost.
        """
        items = [list(parts.get(name) or ()) for name in _LISTS]
        patterns = list(parts.get("p") or ())
        if (sum(map(len, items)) > MAX_ITEMS or len(patterns) > MAX_PATTERNS
                or any(len(s) > MAX_ITEM_LEN for group in items for s in group)
                or any(len(s) > MAX_PATTERN for s in patterns)):
            log.info("tiercache: invalidation too large for one bus message on %s; "
                     "other processes drop their whole L1 instead", self.channel)
            parts = {"a": [1]}
        body = codec.encode({"v": 1, "src": self.source,
                             **{k: v for k, v in parts.items() if v}})
        if len(body) > MAX_MESSAGE_BYTES:
            body = codec.encode({"v": 1, "src": self.source, "a": [1]})
        if self.signer is not None:
            return codec.seal(body, self.signer, self.channel)
        return body

    def _drop(self, reason: str) -> None:
        """Count a malformed message; one WARNING a minute at most (a flood stays cheap)."""
        self.stats["dropped"] += 1
        self.stats["errors"] += 1
        self._drops_unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY:
            log.warning("tiercache: dropped %d malformed message(s) on %s, last: %s",
                        self._drops_unlogged, self.channel, reason)
            self._logged_at, self._drops_unlogged = now, 0

    async def _handle(self, data: Any) -> None:
        try:
            msg = parse_message(data, signer=self.signer, context=self.channel)
        except codec.CodecError as exc:
            self._drop(str(exc)[:200])
            return
        if msg["src"] == self.source:
            return
        self.stats["received"] += 1
        try:
            await self._on_message(msg)
        except Exception:  # the owner's failure must not cost a reconnect (and an L1 flush)
            self.stats["errors"] += 1
            log.warning("tiercache: invalidation from the bus failed on %s", self.channel,
                        exc_info=True)

    # ------------------------------------------------------------------ lifecycle

    def _no_wait(self) -> bool:
        """Waiting can't help: the first attempt failed (e.g. connection refused) or the L2
        breaker is open. A dead Redis then costs a call nothing here."""
        if self._settled.is_set():
            return True
        state = getattr(getattr(self.l2, "breaker", None), "state", None)
        return state == "open"

    def gate_sync(self, window: float) -> None:
        """Sync callers: start (in a thread) if needed, wait for the first subscription.

        The wait is bounded by ``window`` after the start, ends as soon as the first
        attempt fails, is skipped when the L2 breaker is open, and is skipped when the bus
        is a task of this thread's own event loop (blocking here would starve it).
        """
        if self._ready.is_set() and self.running():
            return
        self.start(in_thread=True)
        task = self._task
        if task is not None and _running_loop() is task.get_loop():
            return
        left = self._started_at + window - time.monotonic()
        while left > 0 and not self._no_wait():
            self._settled.wait(min(left, 0.05))  # polls the breaker too
            left = self._started_at + window - time.monotonic()

    async def gate_async(self, window: float) -> None:
        """Async callers: start (as a task of this loop) if needed, wait the same way."""
        if self._ready.is_set() and self.running():
            return
        self.start(in_thread=False)
        while not self._no_wait() and time.monotonic() < self._started_at + window:
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
            self._settled.clear()
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

    def _connect_budget(self) -> float:
        timeouts = (getattr(self.l2, "connect_timeout", None),
                    getattr(self.l2, "socket_timeout", None))
        if all(isinstance(t, int | float) and t > 0 for t in timeouts):
            return float(sum(timeouts))  # type: ignore[arg-type]
        return 1.0

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
                # connecting is bounded by the tier's own budget: redis-py's retries on a
                # refused connection took ~3 s, and the first miss waits for this attempt
                async with asyncio.timeout(self._connect_budget()):
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
                        self._settled.set()
                        delay = 0.05
                    elif msg.get("type") == "message":
                        await self._handle(msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats["errors"] += 1
                self._settled.set()  # callers waiting for the first subscription stop waiting
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
