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
import json
import logging
from typing import TYPE_CHECKING, Any

import asyncpg

from tiercache.tiers._query_catalog import INT_TYPES, PK_SQL, TEXT_TYPES
from tiercache.tiers._sql import table_name
from tiercache.tiers._sql_keys import BUCKET_BITS, BUCKETS
from tiercache.tiers.query import BUCKET, EPOCH, STAR

if TYPE_CHECKING:
    from tiercache.sharding._endpoints import Endpoint
    from tiercache.tiers.query import QueryCache

__all__ = ["CHANNEL", "Listener", "install_triggers", "names_payload", "parse_names"]

log = logging.getLogger("tiercache.l3")
CHANNEL = "tiercache_l3"
_CONNECT_PARAMS = frozenset(inspect.signature(asyncpg.connect).parameters)

_FUNCTION = f"""
CREATE OR REPLACE FUNCTION tiercache_l3_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('{CHANNEL}', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
  RETURN NULL;
END $$"""

# Row-keyed tables (a single-column integer or text primary key): the statement's transition
# tables give the key buckets it touched (the same function as _sql_keys.bucket), sent as
# "#<BUCKET_BITS>:b1,b2,...#schema.table"; more than MAX_BUCKETS buckets (a bulk write) -> the
# table.  The bit count makes a payload of a trigger installed with another bucket count (an
# older version) a whole-table bump, never a bump of the wrong buckets.
MAX_BUCKETS = 32
_ROWS_FUNCTION = f"""
CREATE OR REPLACE FUNCTION tiercache_l3_notify_rows() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  expr text;
  src text;
  buckets int[];
BEGIN
  IF TG_ARGV[1] = 'int' THEN
    expr := format('(%I & {BUCKETS - 1})::int', TG_ARGV[0]);
  ELSE
    expr := format('((''x'' || substr(md5(%I::text), 1, 8))::bit(32)::int & {BUCKETS - 1})',
                   TG_ARGV[0]);
  END IF;
  IF TG_OP = 'INSERT' THEN
    src := 'SELECT ' || expr || ' AS b FROM tiercache_new';
  ELSIF TG_OP = 'DELETE' THEN
    src := 'SELECT ' || expr || ' AS b FROM tiercache_old';
  ELSE
    src := 'SELECT ' || expr || ' AS b FROM tiercache_new UNION ALL SELECT ' || expr
           || ' FROM tiercache_old';
  END IF;
  EXECUTE 'SELECT array_agg(DISTINCT b) FROM (' || src || ') s' INTO buckets;
  IF buckets IS NULL THEN
    RETURN NULL;  -- no row changed: nothing to invalidate
  END IF;
  IF array_length(buckets, 1) > {MAX_BUCKETS} THEN
    PERFORM pg_notify('{CHANNEL}', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
  ELSE
    PERFORM pg_notify('{CHANNEL}', '#{BUCKET_BITS}:' || array_to_string(buckets, ',') || '#'
                      || TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
  END IF;
  RETURN NULL;
END $$"""
_EVENTS = (("ins", "INSERT", "NEW TABLE AS tiercache_new"),
           ("upd", "UPDATE", "OLD TABLE AS tiercache_old NEW TABLE AS tiercache_new"),
           ("del", "DELETE", "OLD TABLE AS tiercache_old"))


# A writer whose Redis bump failed sends the generation names themselves ("~" + JSON list),
# so a process whose Redis works applies them for everybody.  Bounded like every payload.
NAMES_PREFIX = "~"
MAX_NAMES = 64


def names_payload(names: list[str]) -> str:
    """The payload for ``names`` (the shard epoch if they don't fit: coarser, never less)."""
    payload = NAMES_PREFIX + json.dumps(sorted(set(names)))
    if len(names) > MAX_NAMES or len(payload) > 7000:  # NOTIFY payloads stop at 8000 bytes
        return NAMES_PREFIX + json.dumps([EPOCH])
    return payload


def parse_names(payload: str) -> list[str] | None:
    """The names of a ``~`` payload, or None if malformed (the caller bumps the epoch)."""
    if len(payload) > 8000:
        return None
    try:
        names = json.loads(payload[len(NAMES_PREFIX):])
    except (ValueError, RecursionError):  # deep nesting: hostile, not ours
        return None
    if (type(names) is not list or not 0 < len(names) <= MAX_NAMES
            or not all(type(n) is str and len(n) <= 512 for n in names)):
        return None
    return names


def parse_payload(payload: str) -> tuple[str, str, list[int] | None]:
    """``(schema, table, buckets or None)`` of a notification (bounded: 256 chars of name,
    at most MAX_BUCKETS buckets; anything malformed or of another bucket count is the whole
    table)."""
    buckets: list[int] | None = None
    if payload.startswith("#"):
        spec, _, payload = payload[1:].partition("#")
        bits, _, spec = spec.partition(":")
        try:
            if bits != str(BUCKET_BITS):
                raise ValueError(bits)
            found = [int(b) for b in spec.split(",")[:MAX_BUCKETS + 1]]
            if len(found) <= MAX_BUCKETS and all(0 <= b < BUCKETS for b in found):
                buckets = found
        except ValueError:
            buckets = None
    schema, _, rel = payload[:256].partition(".")
    return schema, rel, buckets


async def install_triggers(conn: Any, tables: list[str]) -> list[str]:
    """Create (or replace) the notify triggers on ``tables``; returns the resolved names."""
    done = []
    async with conn.transaction():
        await conn.execute(_FUNCTION)
        await conn.execute(_ROWS_FUNCTION)
        for table in tables:
            # to_regclass resolves the name like a query would; ::text quotes it safely.
            rel = await conn.fetchval("SELECT to_regclass($1)::text", table)
            if rel is None:
                raise ValueError(f"no such table: {table!r}")
            kind = await conn.fetchval(
                "SELECT relkind::text FROM pg_class WHERE oid = $1::regclass", rel)
            pk = await conn.fetchrow(PK_SQL, rel) if kind == "r" else None
            pk_kind = None
            if pk is not None:
                pk_kind = ("int" if pk[1] in INT_TYPES else
                           "text" if pk[1] in TEXT_TYPES and pk[2] else None)
            for suffix in ("", *(f"_{e[0]}" for e in _EVENTS)):
                await conn.execute(f"DROP TRIGGER IF EXISTS tiercache_l3{suffix} ON {rel}")
            if pk is None or pk_kind is None:
                await conn.execute(
                    f"CREATE TRIGGER tiercache_l3 AFTER INSERT OR UPDATE OR DELETE ON {rel} "
                    "FOR EACH STATEMENT EXECUTE FUNCTION tiercache_l3_notify()")
            else:
                column = pk[0].replace("'", "''")
                for suffix, event, refs in _EVENTS:
                    await conn.execute(
                        f"CREATE TRIGGER tiercache_l3_{suffix} AFTER {event} ON {rel} "
                        f"REFERENCING {refs} FOR EACH STATEMENT "
                        f"EXECUTE FUNCTION tiercache_l3_notify_rows('{column}', '{pk_kind}')")
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
            if payload.startswith(NAMES_PREFIX):
                cache.notified(shard, parse_names(payload) or [EPOCH])
                return
            schema, rel, buckets = parse_payload(payload)
            table = table_name(rel, schema)
            if buckets is None:
                cache.notified(shard, [table])
            else:
                cache.notified(shard, [table + STAR, *(f"{table}{BUCKET}{b}" for b in buckets)])

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
