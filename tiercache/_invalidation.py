"""Keeping L1 coherent: the invalidation flow and the pub/sub bus between processes.

Which L1 entries hold which L2 key is :mod:`tiercache._l1index`'s job. Why a bus: another
process's L1 copy would otherwise survive an invalidation for a full L1 TTL. Messages go to
``tiercache:inv:{namespace}`` (classic PUBLISH reaches every node of a cluster). A lost
message costs at most one L1 TTL: on every (re)subscription the owner flushes its L1, because
messages may have been missed while disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from tiercache import codec
from tiercache._l1index import L1Index, glob_to_regex
from tiercache._singleflight import BusGate, Flow, Sleep, TierOp, drive_async, drive_sync

__all__ = ["Coherence", "InvalidationBus"]

log = logging.getLogger("tiercache.invalidation")

#: seconds an invalidation waits at most for overlapping L2 writes (see _drain_writes)
DRAIN_TIMEOUT = 2.0

Handler = Callable[[dict[str, Any]], None]


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

    def _handle(self, data: Any) -> None:
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
        self._on_message(msg)

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
                        self._handle(msg["data"])
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


class Coherence:
    """The invalidation half of :class:`~tiercache.cache.TierCache` (one flow, both shells).

    Order matters: L2 first (a reader arriving later cannot refill from it), then the
    generation bump and this process's L1 (loads that overlapped the invalidation discard
    their result), then the bus for every other process.
    """

    l2: Any
    namespace: str
    _prefix: str
    _gen: int
    _index: L1Index
    _kv: Any
    _segments: dict[str, Any]
    _bus: InvalidationBus | None
    _writes: dict[str, int]
    _writes_lock: threading.Lock
    _fence: threading.RLock
    bus_wait: float

    def full_key(self, key: str) -> str:
        return self._prefix + key

    def _fill(self, segment: Any, rel: str, l1key: Hashable, value: Any, ttl: float | None,
              tags: Iterable[str], gen: int) -> None:
        """Put a value read/loaded in generation ``gen`` into L1, unless invalidated since.

        Under the fence lock, like the invalidations' bump-and-drop: a thread can never
        slip an old value into L1 between another thread's bump and its drop.
        """
        if segment is None or (ttl is not None and ttl <= 0):
            return
        with self._fence:
            if gen != self._gen or l1key in segment:  # stale, or a flight partner filled it
                return
            segment.put(l1key, value, ttl)
            self._index.add(rel, segment, l1key, tags)

    def _bus_ready(self) -> Flow[None]:
        """Subscribe before the first L1 fill, so no invalidation can slip past."""
        bus = self._bus
        if bus is not None and not (bus.connected and bus.running()):
            yield BusGate(bus, self.bus_wait)

    def _writing(self, full: str, delta: int) -> None:
        """Count loads' L2 writes in flight, per key (threads too, hence the lock)."""
        with self._writes_lock:
            n = self._writes.get(full, 0) + delta
            if n:
                self._writes[full] = n
            else:
                del self._writes[full]

    def _drain_writes(self, fulls: list[str] | None) -> Flow[None]:
        """Wait (bounded) for loads' L2 writes that began before a generation bump.

        Such a write may land after our delete; it then sees the bump and deletes its
        value again. ``fulls=None``: writes to any key.
        """
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline:
            writes = self._writes
            if not writes or (fulls is not None and not any(f in writes for f in fulls)):
                return
            yield Sleep(0.001)

    def _invalidate(self, keys: Iterable[str] = (), tags: Iterable[str] = (),
                    patterns: Iterable[str] = (), functions: Iterable[str] = (),
                    everything: bool = False) -> Flow[int]:
        """L2, then this process's L1, then the bus; returns what L2 (or L1) dropped.

        Generation bumps fence loads: the first (before the L2 delete) stops loads from
        writing L2 from then on; the drain waits for writes that began earlier (they undo
        themselves); the second bump and the L1 drop then remove whatever a reader took
        from L2 meanwhile. Only then may the caller assume no tier here has the old value.
        """
        keys, tags, patterns, functions = list(keys), list(tags), list(patterns), list(functions)
        removed = 0
        if self.l2 is not None:
            self._gen += 1
            if keys:
                removed += yield TierOp(self.l2, "delete_many", [self.full_key(k) for k in keys])
            if tags:
                removed += yield TierOp(self.l2, "invalidate_tags", tags)
            l2_patterns = [*patterns, *(f"{_glob_escape(f)}:*" for f in functions)]
            if everything:
                l2_patterns = ["*"]
            for pattern in l2_patterns:
                removed += yield TierOp(self.l2, "delete_pattern",
                                        _glob_escape(self._prefix) + pattern)
            exact = None if tags or patterns or functions or everything else keys
            yield from self._drain_writes(None if exact is None else
                                          [self.full_key(k) for k in exact])
        local = self._apply_local(keys, tags, patterns, functions, everything)
        yield from self._publish(keys=keys, tags=tags, patterns=patterns, functions=functions,
                                 everything=everything)
        return removed or local  # L2's count; L1's when L2 had none (or is down)

    def _apply_local(self, keys: list[str], tags: list[str], patterns: list[str],
                     functions: list[str], everything: bool) -> int:
        """Bump the generation and drop this process's L1 copies (under the fence lock)."""
        regexes = [glob_to_regex(p) for p in patterns]
        with self._fence:
            self._gen += 1
            index = self._index
            n = index.drop_keys(keys) + index.drop_tags(tags)
            if self._kv is not None:
                n += sum(bool(self._kv.delete(k)) for k in keys)
            for regex in regexes:
                n += index.drop_matching(regex)
            segments = list(self._segments.values()) if everything else [
                s for f in functions if (s := self._segments.get(f"{self.namespace}:{f}"))]
            if segments:
                n += sum(len(s) for s in segments)
                index.drop_segments(segments)
            return n

    def _publish(self, **parts: Any) -> Flow[None]:
        bus = self._bus
        if bus is None:
            return
        message = bus.encode(k=parts.get("keys"), t=parts.get("tags"), p=parts.get("patterns"),
                             f=parts.get("functions"), a=[1] if parts.get("everything") else [])
        yield TierOp(self.l2, "publish", bus.channel, message)
        bus.stats["published"] += 1

    def _on_bus_message(self, msg: dict[str, Any]) -> None:
        self._apply_local(list(msg.get("k", ())), list(msg.get("t", ())),
                          list(msg.get("p", ())), list(msg.get("f", ())), bool(msg.get("a")))

    def _on_bus_connect(self) -> None:
        """(Re)subscribed: invalidations may have been missed, so drop every L1 copy."""
        with self._fence:
            self._gen += 1
            self._index.drop_segments(list(self._segments.values()))

    def _invalidate_function(self, spec: Any) -> Flow[int]:
        if spec.key is not None:
            log.info("tiercache: %s uses key=; invalidate_all clears L1 only", spec.name)
        return (yield from self._invalidate(functions=[spec.name]))

    # ------------------------------------------------------------------ public shells

    async def invalidate_tags(self, *tags: str) -> int:
        """Drop every entry tagged with any of ``tags`` (all tiers, all processes)."""
        return await drive_async(self._invalidate(tags=tags))

    def invalidate_tags_sync(self, *tags: str) -> int:
        return drive_sync(self._invalidate(tags=tags))

    async def invalidate_pattern(self, pattern: str) -> int:
        """Drop keys matching a Redis glob relative to the namespace, e.g. ``"user:*"``."""
        return await drive_async(self._invalidate(patterns=[pattern]))

    def invalidate_pattern_sync(self, pattern: str) -> int:
        return drive_sync(self._invalidate(patterns=[pattern]))

    async def invalidate_call(self, spec: Any, args: tuple[Any, ...],
                              kwargs: dict[str, Any]) -> int:
        return await drive_async(self._invalidate(keys=[spec.relative_key(args, kwargs)]))

    def invalidate_call_sync(self, spec: Any, args: tuple[Any, ...],
                             kwargs: dict[str, Any]) -> int:
        return drive_sync(self._invalidate(keys=[spec.relative_key(args, kwargs)]))

    async def invalidate_function(self, spec: Any) -> int:
        """Every entry of one function (L2 too unless it uses a custom ``key=``)."""
        return await drive_async(self._invalidate_function(spec))

    def invalidate_function_sync(self, spec: Any) -> int:
        return drive_sync(self._invalidate_function(spec))

    async def clear(self) -> int:
        """Drop everything in this namespace (every tier, every process's L1)."""
        return await drive_async(self._invalidate(everything=True))

    def clear_sync(self) -> int:
        return drive_sync(self._invalidate(everything=True))


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
