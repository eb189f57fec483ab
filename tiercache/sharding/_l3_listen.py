"""Writes by *other* clients reach the L3 cache: statement triggers, NOTIFY, one LISTEN per shard.

Why statement-level triggers with a constant per-table payload: one NOTIFY per writing
statement (not per row), and Postgres folds identical notifications of one transaction into
one.  NOTIFY takes a global lock at commit, so under many concurrent writing transactions it
serializes their commits; for write-heavy tables logical decoding (wal2json/pgoutput) is the
alternative.  Losing the LISTEN connection marks the shard untrusted (every read bypasses the
cache) until a new connection LISTENs again and bumps the shard epoch: no notification lost
in the gap can leave a stale entry reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from typing import TYPE_CHECKING, Any

import asyncpg

from tiercache.tiers._sql import table_name

if TYPE_CHECKING:
    from tiercache.sharding._endpoints import Endpoint
    from tiercache.tiers.query import QueryCache

__all__ = ["CHANNEL", "Listener", "install_triggers"]

log = logging.getLogger("tiercache.l3")
CHANNEL = "tiercache_l3"
_CONNECT_PARAMS = frozenset(inspect.signature(asyncpg.connect).parameters)

_FUNCTION = f"""
CREATE OR REPLACE FUNCTION tiercache_l3_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('{CHANNEL}', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
  RETURN NULL;
END $$"""


async def install_triggers(conn: Any, tables: list[str]) -> list[str]:
    """Create (or replace) the notify triggers on ``tables``; returns the resolved names."""
    done = []
    async with conn.transaction():
        await conn.execute(_FUNCTION)
        for table in tables:
            # to_regclass resolves the name like a query would; ::text quotes it safely.
            rel = await conn.fetchval("SELECT to_regclass($1)::text", table)
            if rel is None:
                raise ValueError(f"no such table: {table!r}")
            await conn.execute(f"DROP TRIGGER IF EXISTS tiercache_l3 ON {rel}")
            await conn.execute(
                f"CREATE TRIGGER tiercache_l3 AFTER INSERT OR UPDATE OR DELETE ON {rel} "
                "FOR EACH STATEMENT EXECUTE FUNCTION tiercache_l3_notify()")
            await conn.execute(f"DROP TRIGGER IF EXISTS tiercache_l3_truncate ON {rel}")
            await conn.execute(
                f"CREATE TRIGGER tiercache_l3_truncate AFTER TRUNCATE ON {rel} "
                "FOR EACH STATEMENT EXECUTE FUNCTION tiercache_l3_notify()")
            done.append(rel)
    return done


class Listener:
    """One dedicated (non-pooled) LISTEN connection for a shard, reconnecting forever."""

    def __init__(self, endpoint: Endpoint, cache: QueryCache, retry: float = 0.2,
                 heartbeat: float = 1.0) -> None:
        self._ep = endpoint
        self._cache = cache
        self._retry = retry
        self._heartbeat = heartbeat
        self._beat: asyncio.Task[None] | None = None
        self._conn: Any = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.backend_pid: int | None = None
        self.heartbeat_failures = 0

    async def start(self) -> None:
        """Connect and LISTEN once (errors raise here), then keep it alive in the background."""
        await self._connect()
        self._task = asyncio.ensure_future(self._keep())
        self._beat = asyncio.ensure_future(self._beats())

    async def _beats(self) -> None:
        """A half-open TCP connection fires no termination callback: probe it.  A probe
        that fails or takes longer than the heartbeat interval marks the shard untrusted
        and drops the connection (the keeper reconnects)."""
        while True:
            await asyncio.sleep(self._heartbeat)
            conn = self._conn
            if conn is None or conn.is_closed() or not self.connected.is_set():
                continue
            try:
                await asyncio.wait_for(conn.execute("SELECT 1"), max(self._heartbeat, 1.0))
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                self._cache.set_trusted(self._ep.shard, False)
                self.connected.clear()
                conn.terminate()
                self._lost.set()
                self.heartbeat_failures += 1

    async def _connect(self) -> None:
        kwargs = {k: v for k, v in self._ep.connect_kwargs.items() if k in _CONNECT_PARAMS}
        conn = await asyncpg.connect(self._ep.dsn, **kwargs)
        shard = self._ep.shard
        cache = self._cache

        def notified(_c: Any, _pid: int, _channel: str, payload: str) -> None:
            schema, _, rel = payload[:256].partition(".")
            cache.notified(shard, table_name(rel, schema))

        def terminated(_c: Any) -> None:
            cache.set_trusted(shard, False)  # notifications may be lost from now on
            self.connected.clear()
            self._lost.set()

        conn.add_termination_listener(terminated)
        await conn.add_listener(CHANNEL, notified)
        self._conn = conn
        self.backend_pid = conn.get_server_pid()
        self._lost.clear()
        await cache.bump_shard(shard)  # whatever was missed before LISTEN is now invalid
        cache.set_trusted(shard, True)
        self.connected.set()

    async def _keep(self) -> None:
        while True:
            await self._lost.wait()
            self._cache.set_trusted(self._ep.shard, False)
            while True:
                try:
                    await self._connect()
                    break
                except (TimeoutError, OSError, asyncpg.PostgresError,
                        asyncpg.InterfaceError) as exc:
                    log.warning("L3 listener for shard %s: reconnect failed (%s)",
                                self._ep.shard, type(exc).__name__)
                    await asyncio.sleep(self._retry)

    async def close(self) -> None:
        for task in (self._beat, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()
