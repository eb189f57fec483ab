"""The shared, versioned topology: every process's ShardedPool learns each flip.

Each flip records the new ring in ``tiercache_rb.topology`` on every shard of the old and new
rings and ``NOTIFY``s channel ``tiercache_topology`` there.  :class:`TopologyWatcher` keeps
one pool on the newest version three ways: it ``LISTEN``s on one shard (a flip reaches it in
milliseconds), polls every shard every ``interval`` seconds (a lost notification or listener
costs at most one interval), and refreshes when the pool meets a :class:`KeyMovedError`
(the pool then retries the statement on the key's new owner).

Until a process has refreshed, the source shards stop it: every ShardedPool declares the
digest of its ring in the session setting ``tiercache.ring`` (``_routing.ring_session``),
and a source rejects writes to moved keys (row trigger) and any UPDATE/DELETE from a session
on a ring it has seen go stale (statement trigger) -- including one that would have matched
no row because clean-up already removed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import asyncpg

from tiercache.sharding._rebalance_plan import ring_from_spec
from tiercache.sharding._rebalance_sql import KEY_MOVED_SQLSTATE, SCHEMA

__all__ = ["CHANNEL", "KeyMovedError", "TopologyWatcher", "load_topology", "read_topology"]

log = logging.getLogger("tiercache.rebalance")
CHANNEL = "tiercache_topology"


class KeyMovedError(asyncpg.PostgresError):  # type: ignore[misc]
    """A write reached a shard its key moved away from (a client on an old ring).

    Raised by asyncpg itself for the guard triggers' SQLSTATE ``TCKM1`` (the class registers
    that code), so ``except tiercache.KeyMovedError`` works on any connection.  ``target`` is
    the key's new owner (empty when a stale session was rejected without a row).  A pool
    with a :class:`TopologyWatcher` refreshes and retries routed statements by itself.
    """

    sqlstate = KEY_MOVED_SQLSTATE

    def __init__(self, message: str = "", target: str | None = None) -> None:
        super().__init__(message)
        if target is not None:
            self.detail = target

    @property
    def target(self) -> str:
        return str(getattr(self, "detail", None) or "")

    @classmethod
    def from_exception(cls, exc: BaseException) -> KeyMovedError | None:
        """``exc`` as a KeyMovedError (itself, or one built from its SQLSTATE), or None."""
        if isinstance(exc, cls):
            return exc
        if getattr(exc, "sqlstate", None) != KEY_MOVED_SQLSTATE:
            return None
        return cls(str(getattr(exc, "message", exc)), str(getattr(exc, "detail", "") or ""))


async def read_topology(conn: Any) -> tuple[int, dict[str, Any]] | None:
    """The newest ``(version, ring spec)`` recorded on one shard, or None."""
    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{SCHEMA}.topology"):
        return None
    row = await conn.fetchrow(
        f"SELECT version, ring::text FROM {SCHEMA}.topology ORDER BY version DESC LIMIT 1")
    return None if row is None else (int(row[0]), json.loads(row[1]))


async def newest_topology(pool: Any) -> tuple[int, dict[str, Any]] | None:
    """The newest topology over every shard of ``pool`` (shards that fail are skipped)."""
    best: tuple[int, dict[str, Any]] | None = None
    for shard in pool.shards:
        try:
            async with pool.shard_pool(shard).acquire(timeout=10) as conn:
                found = await read_topology(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            continue
        if found is not None and (best is None or found[0] > best[0]):
            best = found
    return best


async def load_topology(pool: Any) -> int | None:
    """Adopt the newest ring recorded in ``tiercache_rb.topology`` on the pool's shards.

    For processes that did not run the rebalance (or after a :class:`KeyMovedError`):
    returns the version adopted, or None when no shard has a topology.
    """
    best = await newest_topology(pool)
    if best is None:
        return None
    pool.set_ring(ring_from_spec(best[1]))
    return best[0]


class TopologyWatcher:
    """Keeps ``pool`` on the newest topology (``LISTEN`` + polling + on KeyMovedError).

    ``watcher = await TopologyWatcher(pool).start()`` ... ``await watcher.close()``; or
    ``async with TopologyWatcher(pool):``.  ``version`` is the version adopted (None before
    any flip).  While it runs, the pool retries a statement rejected with KeyMovedError on
    the key's new owner, after refreshing.
    """

    def __init__(self, pool: Any, *, interval: float = 5.0) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.pool = pool
        self.interval = interval
        self.version: int | None = None
        self.refreshes = 0
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listen: Any = None

    async def start(self) -> TopologyWatcher:
        await self.refresh()
        self.pool._on_key_moved = self._key_moved
        self._task = asyncio.ensure_future(self._loop())
        return self

    async def __aenter__(self) -> TopologyWatcher:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self.pool._on_key_moved == self._key_moved:
            self.pool._on_key_moved = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self._unlisten()

    async def refresh(self) -> int | None:
        """Adopt the newest topology if it is newer than ours; the version we are on."""
        async with self._lock:
            best = await newest_topology(self.pool)
            if best is not None and (self.version is None or best[0] > self.version):
                missing = sorted(set(best[1]["weights"]) - set(self.pool.shards))
                if missing:  # add_shard needs a DSN the topology does not carry
                    log.warning("tiercache: topology v%d names shard(s) %s this pool lacks; "
                                "not adopted (add them with pool.add_shard)", best[0], missing)
                    return self.version
                self.pool.set_ring(ring_from_spec(best[1]))
                self.version = best[0]
                self.refreshes += 1
            return self.version

    async def _key_moved(self, exc: BaseException, shard: str) -> str | None:
        """The pool's KeyMovedError hook: refresh, then the shard to retry on (None: raise)."""
        await self.refresh()
        target = str(getattr(exc, "detail", None) or "")
        if target and target != shard and target in self.pool.shards:
            return target
        return None

    async def _loop(self) -> None:
        while True:
            try:
                if self._listen is None or self._listen[0].is_closed():
                    await self._relisten()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval)
                self._wake.clear()
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a shard down: keep polling the others
                log.warning("tiercache: topology refresh failed (%s)", type(exc).__name__)
                await asyncio.sleep(self.interval)

    async def _relisten(self) -> None:
        """One pool connection of the first shard on the ring, held for LISTEN."""
        await self._unlisten()
        nodes = [n for n in getattr(self.pool.ring, "nodes", []) if n in self.pool.shards]
        shard = nodes[0] if nodes else self.pool.shards[0]
        conn = await self.pool.shard_pool(shard).acquire()
        try:
            await conn.add_listener(CHANNEL, self._notified)
        except BaseException:
            await self.pool.shard_pool(shard).release(conn)
            raise
        self._listen = (conn, shard)
        await self.refresh()  # a flip between the last poll and the LISTEN

    def _notified(self, *_args: Any) -> None:  # the payload is only a hint: we re-read
        self._wake.set()

    async def _unlisten(self) -> None:
        if self._listen is None:
            return
        conn, shard = self._listen
        self._listen = None
        with contextlib.suppress(Exception):
            await conn.remove_listener(CHANNEL, self._notified)
        with contextlib.suppress(Exception):
            await self.pool.shard_pool(shard).release(conn)
