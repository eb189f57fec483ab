"""The rebalancer's journal: tables in the ``tiercache_rb`` schema of the shards themselves.

Why in the databases and not a local file: a batch's checkpoint must commit *in the same
transaction* as the batch's rows, or a crash between the two copies the batch twice or skips
it.  So:

* ``tiercache_rb.jobs`` on the *journal shard* (the pool's first shard) holds each job's plan
  (JSON, no DSNs) and its phase: ``preparing -> copying -> catching_up -> flipping -> flipped
  -> done`` (or ``aborted``).  Any process with the same pool finds an unfinished job there.
* ``tiercache_rb.progress`` on each *target* holds, per (job, table, source), the last primary
  key copied and the rows copied so far, updated inside each batch's transaction.
* ``tiercache_rb.topology`` on every shard holds the versioned ring after each flip, for
  processes that were not part of the rebalance (:func:`load_topology`).
"""

from __future__ import annotations

import json
from typing import Any

from tiercache.sharding._rebalance_sql import SCHEMA

__all__ = ["JOURNAL_DDL", "PHASES", "Journal"]

PHASES = ("preparing", "copying", "catching_up", "flipping", "flipped", "done", "aborted")

JOURNAL_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.jobs (
    job text PRIMARY KEY, plan jsonb NOT NULL, phase text NOT NULL,
    created timestamptz NOT NULL DEFAULT now(), updated timestamptz NOT NULL DEFAULT now(),
    info jsonb NOT NULL DEFAULT '{{}}');
CREATE TABLE IF NOT EXISTS {SCHEMA}.progress (
    job text NOT NULL, tbl text NOT NULL, source text NOT NULL, last_pk text[],
    rows bigint NOT NULL DEFAULT 0, done boolean NOT NULL DEFAULT false,
    PRIMARY KEY (job, tbl, source));
CREATE TABLE IF NOT EXISTS {SCHEMA}.topology (
    version bigint PRIMARY KEY, ring jsonb NOT NULL, job text,
    at timestamptz NOT NULL DEFAULT now());
"""


class Journal:
    """Job rows on the journal shard, through an asyncpg pool or a held connection of it."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def install(self) -> None:
        await self.pool.execute(JOURNAL_DDL)

    async def create(self, job: str, plan_json: str) -> None:
        await self.pool.execute(
            f"INSERT INTO {SCHEMA}.jobs (job, plan, phase) VALUES ($1, $2::jsonb, 'preparing')",
            job, plan_json)

    async def set_phase(self, job: str, phase: str, **info: Any) -> None:
        if phase not in PHASES:
            raise ValueError(phase)
        await self.pool.execute(
            f"UPDATE {SCHEMA}.jobs SET phase = $2, updated = now(), info = info || $3::jsonb "
            f"WHERE job = $1", job, phase, json.dumps(info))

    async def unfinished(self) -> tuple[str, str, str] | None:
        """(job, plan JSON, phase) of the job that is not done or aborted, if any."""
        if not await self._exists():
            return None
        row = await self.pool.fetchrow(
            f"SELECT job, plan::text, phase FROM {SCHEMA}.jobs "
            f"WHERE phase NOT IN ('done', 'aborted') ORDER BY created DESC LIMIT 1")
        return None if row is None else (row[0], row[1], row[2])

    async def latest(self) -> dict[str, Any] | None:
        if not await self._exists():
            return None
        row = await self.pool.fetchrow(
            f"SELECT job, plan::text AS plan, phase, created, updated, info::text AS info "
            f"FROM {SCHEMA}.jobs ORDER BY created DESC LIMIT 1")
        if row is None:
            return None
        return {"job": row["job"], "plan": row["plan"], "phase": row["phase"],
                "created": row["created"], "updated": row["updated"],
                "info": json.loads(row["info"])}

    async def _exists(self) -> bool:
        found: bool = await self.pool.fetchval(
            "SELECT to_regclass($1) IS NOT NULL", f"{SCHEMA}.jobs")
        return found


async def read_progress(conn: Any, job: str, table: str, source: str
                        ) -> tuple[list[str] | None, int, bool]:
    row = await conn.fetchrow(
        f"SELECT last_pk, rows, done FROM {SCHEMA}.progress "
        f"WHERE job = $1 AND tbl = $2 AND source = $3", job, table, source)
    if row is None:
        return None, 0, False
    return (None if row[0] is None else list(row[0])), int(row[1]), bool(row[2])


async def write_progress(conn: Any, job: str, table: str, source: str,
                         last_pk: list[str] | None, rows: int, done: bool) -> None:
    """Called inside the batch's target transaction: the checkpoint commits with the rows."""
    await conn.execute(
        f"INSERT INTO {SCHEMA}.progress (job, tbl, source, last_pk, rows, done) "
        f"VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (job, tbl, source) DO UPDATE "
        f"SET last_pk = EXCLUDED.last_pk, rows = EXCLUDED.rows, done = EXCLUDED.done",
        job, table, source, last_pk, rows, done)


async def write_topology(conn: Any, ring_spec: dict[str, Any], job: str) -> int:
    """Record a new ring version on one shard (its tables exist: ``prepare`` made them);
    returns the version."""
    version: int = await conn.fetchval(
        f"INSERT INTO {SCHEMA}.topology (version, ring, job) "
        f"SELECT coalesce(max(version), 0) + 1, $1::jsonb, $2 FROM {SCHEMA}.topology "
        f"WHERE NOT EXISTS (SELECT 1 FROM {SCHEMA}.topology WHERE job = $2) "
        f"RETURNING version", json.dumps(ring_spec), job)
    if version is None:  # already recorded for this job (resume)
        version = await conn.fetchval(
            f"SELECT version FROM {SCHEMA}.topology WHERE job = $1", job)
    await conn.execute("SELECT pg_notify('tiercache_topology', $1)", str(version))
    return version
