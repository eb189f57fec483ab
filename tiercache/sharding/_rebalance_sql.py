"""SQL of the rebalancer: the server-side ketama hash, capture triggers, and the queries.

Everything that names a table or a column goes through :func:`ident`/:func:`qualified`
(double-quoted, embedded quotes doubled); every value is a ``$n`` parameter.  Objects the
rebalancer creates on a shard live in the ``tiercache_rb`` schema, so a user table can never
collide with them and clean-up is one ``DROP SCHEMA``-free list of names we own.

Why ranges are ``int8multirange`` values: ``h <@ $1::int8multirange`` is a binary search in C,
so "is this row's key in a moving arc" costs one MD5 and a few comparisons per row, and the
same arcs can be passed as one parameter to every query and stored in one row for the trigger.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = [
    "HASH_FUNCTIONS", "KEY_TYPES", "SCHEMA", "capture_ddl", "drop_capture_ddl", "hash_expr",
    "ident", "multirange", "qualified",
]

SCHEMA = "tiercache_rb"
#: SQLSTATE raised by the guard trigger for a write to a key that moved to another shard.
KEY_MOVED_SQLSTATE = "TCKM1"

# md5 of the key's text form, first 4 bytes little-endian as an unsigned 32-bit int: exactly
# tiercache._fallback._ring.hash_key.  PL/pgSQL, so md5 runs once per key (an inlined SQL
# expression would repeat it per byte, and a SQL function with a FROM clause is not inlined
# and costs a plan per call): measured ~2x faster than either.
_HASH_BODY = """DECLARE v bigint := ('x' || substr(md5($1), 1, 8))::bit(32)::bigint;
BEGIN
    RETURN ((v & 255) << 24) | (((v >> 8) & 255) << 16) | (((v >> 16) & 255) << 8) | (v >> 24);
END"""

HASH_FUNCTIONS = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE OR REPLACE FUNCTION {SCHEMA}.ketama(text) RETURNS bigint
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $f$ {_HASH_BODY} $f$;
CREATE OR REPLACE FUNCTION {SCHEMA}.ketama(bytea) RETURNS bigint
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $f$ {_HASH_BODY} $f$;
CREATE TABLE IF NOT EXISTS {SCHEMA}.arcs (
    job text NOT NULL, target text NOT NULL, arcs int8multirange NOT NULL,
    moved boolean NOT NULL DEFAULT false, PRIMARY KEY (job, target));
ALTER TABLE {SCHEMA}.arcs ADD COLUMN IF NOT EXISTS fence_lock bigint NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS {SCHEMA}.stale_rings (
    digest text PRIMARY KEY, job text NOT NULL, at timestamptz NOT NULL DEFAULT now());
"""

#: Shard-key column types whose text form equals what HashRing hashes: ``str(int)``,
#: a str's UTF-8, ``str(uuid.UUID)`` (lower-case, hyphenated) and raw bytes.
KEY_TYPES = frozenset({"smallint", "integer", "bigint", "text", "character varying", "uuid",
                       "bytea"})


def ident(name: str) -> str:
    """A safely quoted SQL identifier (``"a""b"`` for ``a"b``); NUL is refused."""
    if not name or "\x00" in name:
        raise ValueError(f"invalid SQL identifier {name!r}")
    return '"' + name.replace('"', '""') + '"'


def qualified(name: str) -> str:
    """``schema.table`` or ``table``, each part quoted (a dot splits schema from table)."""
    schema, dot, table = name.rpartition(".")
    return f"{ident(schema)}.{ident(table)}" if dot else ident(table)


def hash_expr(column_sql: str, key_type: str) -> str:
    """The SQL computing HashRing.hash_key of a quoted column (or ``NEW.col``) of a key type."""
    if key_type not in KEY_TYPES:
        raise ValueError(
            f"shard-key type {key_type!r} is not supported (its text form may differ from "
            f"Python's str()); use one of {sorted(KEY_TYPES)}"
        )
    if key_type == "bytea":
        return f"{SCHEMA}.ketama({column_sql})"
    if key_type in ("text", "character varying"):
        return f"{SCHEMA}.ketama({column_sql}::text)"
    return f"{SCHEMA}.ketama({column_sql}::text)"


def fast_hash(column_sql: str, key_type: str) -> tuple[str, str]:
    """``(lateral, expr)``: the same hash as :func:`hash_expr`, for scans that hash every row.

    ``FROM t, <lateral> WHERE <expr> ...``: md5 runs once per row in a ``LATERAL`` subquery
    (``OFFSET 0`` keeps the planner from inlining it, which would repeat md5 per byte) and
    the four little-endian bytes are read with ``get_byte``: no PL/pgSQL call per row,
    measured ~2x faster than :func:`hash_expr` (which triggers use: one row at a time).
    """
    hash_expr(column_sql, key_type)  # the same key-type check
    arg = column_sql if key_type == "bytea" else f"{column_sql}::text"
    lateral = f"CROSS JOIN LATERAL (SELECT decode(md5({arg}), 'hex') AS d OFFSET 0) AS tc_h"
    expr = ("(get_byte(tc_h.d, 0)::int8 | (get_byte(tc_h.d, 1)::int8 << 8) | "
            "(get_byte(tc_h.d, 2)::int8 << 16) | (get_byte(tc_h.d, 3)::int8 << 24))")
    return lateral, expr


def multirange(arcs: Sequence[tuple[int, int]]) -> str:
    """``[(lo, hi), ...]`` as an ``int8multirange`` literal (passed as a parameter)."""
    if not arcs:
        return "{}"
    return "{" + ",".join(f"[{int(lo)},{int(hi)})" for lo, hi in arcs) + "}"


def object_suffix(table: str) -> str:
    """A short, safe suffix for the per-table objects we create (table names may be anything)."""
    return hashlib.md5(table.encode(), usedforsecurity=False).hexdigest()[:12]


def capture_table(table: str) -> str:
    return f"{SCHEMA}.{ident('cap_' + object_suffix(table))}"


def capture_ddl(table: str, key: str, key_sql_type: str, key_type: str) -> list[str]:
    """Capture table, row trigger and stale-session guard on a source (idempotent).

    The row trigger, for every row whose old or new shard key hashes into an arc of
    ``tiercache_rb.arcs`` (any job's: guards of earlier moves stay):

    * arcs already ``moved``: raises ``KeyMovedError`` (SQLSTATE ``TCKM1``) naming the new
      shard, so a client on an old ring never writes a row that clean-up would delete;
    * arcs moving now: takes the job's fence lock shared (the write fence holds it
      exclusively, so writers to moving keys wait for the fence, and the fence waits for
      writers already inside), re-checks ``moved``, and records the key for catch-up.

    A row trigger cannot see an UPDATE or DELETE that matches no row -- the case of a moved
    key once clean-up removed it.  So a statement trigger rejects UPDATE/DELETE from any
    session that declares (``tiercache.ring``, set by every ShardedPool) a ring listed in
    ``tiercache_rb.stale_rings``: a ring some flip moved keys away from this shard under.
    It runs AFTER the statement, so a row trigger's error (which names the new owner) wins.

    Sessions of the rebalancer itself set ``tiercache.rebalancer = 'on'`` and pass through.
    """
    sfx = object_suffix(table)
    cap = capture_table(table)
    fn = f"{SCHEMA}.{ident('trg_' + sfx)}"
    stale_fn = f"{SCHEMA}.{ident('stale_' + sfx)}"
    trg = ident(f"tiercache_rb_{sfx}")
    stale_trg = ident(f"tiercache_rb_stale_{sfx}")
    h_new = hash_expr(f"NEW.{ident(key)}", key_type)
    h_old = hash_expr(f"OLD.{ident(key)}", key_type)
    moved = f"""RAISE EXCEPTION USING ERRCODE = '{KEY_MOVED_SQLSTATE}',
                MESSAGE = format('tiercache: shard key %s of table %s moved to shard %s',
                                 k, {_literal(table)}, t),
                DETAIL = t, HINT = 'refresh the topology and retry on the new shard';"""
    body = f"""
DECLARE
    hk bigint; t text; mv boolean; lk bigint; k {key_sql_type};
BEGIN
    IF current_setting('tiercache.rebalancer', true) = 'on' THEN
        RETURN NULL;
    END IF;
    FOR pass IN 1..2 LOOP
        IF pass = 1 THEN
            CONTINUE WHEN TG_OP = 'INSERT';
            k := OLD.{ident(key)}; hk := {h_old};
        ELSE
            CONTINUE WHEN TG_OP = 'DELETE';
            CONTINUE WHEN TG_OP = 'UPDATE'
                AND NEW.{ident(key)} IS NOT DISTINCT FROM OLD.{ident(key)};
            k := NEW.{ident(key)}; hk := {h_new};
        END IF;
        CONTINUE WHEN hk IS NULL;
        SELECT a.target, a.moved, a.fence_lock INTO t, mv, lk FROM {SCHEMA}.arcs a
            WHERE a.arcs @> hk ORDER BY a.moved LIMIT 1;
        CONTINUE WHEN t IS NULL;
        IF mv THEN
            {moved}
        END IF;
        PERFORM pg_advisory_xact_lock_shared(lk);
        SELECT a.target, a.moved INTO t, mv FROM {SCHEMA}.arcs a
            WHERE a.arcs @> hk ORDER BY a.moved LIMIT 1;
        IF mv THEN
            {moved}
        END IF;
        INSERT INTO {cap} (k, target) VALUES (k, t);
    END LOOP;
    RETURN NULL;
END"""
    stale_body = f"""
DECLARE
    d text := current_setting('tiercache.ring', true);
BEGIN
    IF d IS NULL OR d = '' OR current_setting('tiercache.rebalancer', true) = 'on' THEN
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT 1 FROM {SCHEMA}.stale_rings s WHERE s.digest = d) THEN
        RAISE EXCEPTION USING ERRCODE = '{KEY_MOVED_SQLSTATE}',
            MESSAGE = format('tiercache: this session routes with ring %s, which is stale '
                             'for table %s on this shard (keys moved away)', d,
                             {_literal(table)}),
            DETAIL = '', HINT = 'refresh the topology (tiercache.load_topology) and retry';
    END IF;
    RETURN NULL;
END"""
    return [
        f"CREATE TABLE IF NOT EXISTS {cap} (id bigserial PRIMARY KEY, k {key_sql_type}, "
        f"target text NOT NULL)",
        f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS "
        f"$tcrb${body}$tcrb$",
        f"CREATE OR REPLACE FUNCTION {stale_fn}() RETURNS trigger LANGUAGE plpgsql AS "
        f"$tcrb${stale_body}$tcrb$",
        f"DROP TRIGGER IF EXISTS {trg} ON {qualified(table)}",
        f"CREATE TRIGGER {trg} AFTER INSERT OR UPDATE OR DELETE ON {qualified(table)} "
        f"FOR EACH ROW EXECUTE FUNCTION {fn}()",
        f"DROP TRIGGER IF EXISTS {stale_trg} ON {qualified(table)}",
        f"CREATE TRIGGER {stale_trg} AFTER UPDATE OR DELETE ON {qualified(table)} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {stale_fn}()",
    ]


def drop_capture_ddl(table: str, *, keep_guard: bool) -> list[str]:
    """Drop the capture table; drop the triggers too unless they stay as moved-key guards."""
    sfx = object_suffix(table)
    stmts = [f"TRUNCATE {capture_table(table)}"] if keep_guard else []
    if not keep_guard:
        stmts += [
            f"DROP TRIGGER IF EXISTS {ident(f'tiercache_rb_{sfx}')} ON {qualified(table)}",
            f"DROP TRIGGER IF EXISTS {ident(f'tiercache_rb_stale_{sfx}')} ON "
            f"{qualified(table)}",
            f"DROP FUNCTION IF EXISTS {SCHEMA}.{ident('trg_' + sfx)}()",
            f"DROP FUNCTION IF EXISTS {SCHEMA}.{ident('stale_' + sfx)}()",
            f"DROP TABLE IF EXISTS {capture_table(table)}",
        ]
    return stmts


def _literal(text: str) -> str:
    """A SQL string literal of text we control (job ids, table names) for trigger bodies."""
    if "\x00" in text:
        raise ValueError("NUL in a literal")
    return "'" + text.replace("'", "''") + "'"


def _lock_key(job: str, source: str) -> int:
    """The fence's advisory lock id for one source shard of one job (signed 64-bit)."""
    digest = hashlib.md5(f"tiercache-fence:{job}:{source}".encode(),
                         usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


fence_lock_key = _lock_key
#: The advisory lock a running rebalance holds on the journal shard: one rebalance at a time.
JOB_LOCK_KEY = int.from_bytes(
    hashlib.md5(b"tiercache-rebalance", usedforsecurity=False).digest()[:8], "big", signed=True)
