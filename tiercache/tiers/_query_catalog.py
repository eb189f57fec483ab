"""What a relation named in a cached SELECT really reads: views resolved to their base tables.

Why the catalog: pglast sees ``SELECT * FROM order_totals``, not that ``order_totals`` is a
view over ``orders``; keyed on the view's name alone, a write to ``orders`` would leave the
entry reachable -- a stale read.  Each (shard, relation) is looked up once through
``pg_rewrite``/``pg_depend`` (recursively: views over views) and remembered for
:data:`RESOLVE_TTL` seconds (DDL through the pool forgets a shard's resolutions at once).
The same lookup refuses what the parse cannot see: temporary tables (another session's
relation, or ``relpersistence = 't'``), foreign tables (their data changes elsewhere), names
that do not resolve, and calls -- in the query or inside a view's definition -- to functions
that are not IMMUTABLE (``pg_proc.provolatile``; user functions included, not only a list).
"""

from __future__ import annotations

import time
from typing import Any, Final

from tiercache.tiers._sql import analyze, table_name

__all__ = ["INT_TYPES", "PK_SQL", "RESOLVE_TTL", "TEXT_TYPES", "Catalog", "Resolved"]

RESOLVE_TTL: Final = 300.0
_MAX_DEPTH: Final = 16

# The relation, then everything its rewrite rules (a view's definition) depend on, recursively.
_RESOLVE_SQL: Final = """
WITH RECURSIVE rel(oid, depth) AS (
    SELECT to_regclass($1)::oid, 0
  UNION
    SELECT d.refobjid, rel.depth + 1
    FROM rel
    JOIN pg_rewrite r ON r.ev_class = rel.oid
    JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                    AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> rel.oid
    WHERE rel.depth < $2
)
SELECT DISTINCT n.nspname, c.relname, c.relkind::text, c.relpersistence::text, rel.depth = 0,
       CASE WHEN c.relkind = 'v' THEN pg_get_viewdef(c.oid) END
FROM rel JOIN pg_class c ON c.oid = rel.oid JOIN pg_namespace n ON n.oid = c.relnamespace
"""
# A table's inheritance family: partitions/children (a read of the parent sees their rows) and
# parents (a write naming the parent changes the child's rows).
_FAMILY_SQL: Final = """
WITH RECURSIVE down(oid) AS (
    SELECT to_regclass($1)::oid
  UNION
    SELECT i.inhrelid FROM pg_inherits i JOIN down ON i.inhparent = down.oid
), up(oid) AS (
    SELECT to_regclass($1)::oid
  UNION
    SELECT i.inhparent FROM pg_inherits i JOIN up ON i.inhrelid = up.oid
)
SELECT n.nspname, c.relname FROM (SELECT oid FROM down UNION SELECT oid FROM up) r
JOIN pg_class c ON c.oid = r.oid JOIN pg_namespace n ON n.oid = c.relnamespace
"""
# Any overload of these names that is not IMMUTABLE (stable: now(), to_char; volatile: random).
_UNSTABLE_SQL: Final = """
SELECT DISTINCT lower(proname) FROM pg_proc WHERE lower(proname) = ANY($1::text[])
AND provolatile <> 'i'
"""
# A plain table's single-column primary key, if its equality is exact (row keys, _sql_keys).
PK_SQL: Final = """
SELECT a.attname, t.typname, coalesce(co.collisdeterministic, true)
FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_collation co ON co.oid = a.attcollation
WHERE i.indrelid = to_regclass($1) AND i.indisprimary AND i.indnatts = 1
"""
INT_TYPES: Final = frozenset({"int2", "int4", "int8"})
TEXT_TYPES: Final = frozenset({"text", "varchar"})  # not bpchar: 'a' = 'a ' there
_SYSTEM: Final = frozenset({"pg_catalog", "information_schema", "pg_toast"})


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Resolved:
    """The tables a relation reads (itself, or a view's base tables), or why not cacheable."""

    __slots__ = ("at", "pk", "pk_kind", "refusal", "table", "tables")

    def __init__(self, tables: frozenset[str], refusal: str | None, table: str | None = None,
                 pk: str | None = None, pk_kind: str | None = None) -> None:
        self.tables = tables
        self.refusal = refusal
        self.table = table  # the canonical name when the relation is a plain table
        self.pk = pk  # its single-column primary key (row keys), if exact
        self.pk_kind = pk_kind  # "int" or "text"
        self.at = time.monotonic()


class Catalog:
    """Per-shard memo of :class:`Resolved` relations."""

    def __init__(self) -> None:
        self._memo: dict[tuple[str, str | None, str], Resolved] = {}
        self._functions: dict[tuple[str, str], bool] = {}  # (shard, name) -> not immutable
        self.lookups = 0

    def known(self, shard: str, schema: str | None, name: str) -> Resolved | None:
        found = self._memo.get((shard, schema, name))
        if found is not None and time.monotonic() - found.at > RESOLVE_TTL:
            return None
        return found

    def forget(self, shard: str) -> None:
        """DDL ran on ``shard``: view definitions may have changed."""
        for key in [k for k in self._memo if k[0] == shard]:
            del self._memo[key]

    async def unstable(self, shard: str, pool: Any, names: frozenset[str] | set[str]) -> bool:
        """Is any of these functions not IMMUTABLE on ``shard`` (any overload)?  A STABLE
        function (``now()``, ``to_char``) may change between statements: not cacheable."""
        todo = [n for n in names if (shard, n) not in self._functions]
        if todo:
            found = {r[0] for r in await pool.fetch(_UNSTABLE_SQL, todo)}
            self.lookups += 1
            if len(self._functions) > 65536:
                self._functions.clear()
            for n in todo:
                self._functions[(shard, n)] = n in found
        return any(self._functions.get((shard, n), True) for n in names)

    async def resolve(self, shard: str, pool: Any, schema: str | None, name: str) -> Resolved:
        """Look ``schema.name`` up on ``shard`` (an asyncpg pool of that shard)."""
        text = quote_ident(name) if schema is None else f"{quote_ident(schema)}.{quote_ident(name)}"
        rows = await pool.fetch(_RESOLVE_SQL, text, _MAX_DEPTH)
        self.lookups += 1
        tables: set[str] = set()
        refusal: str | None = None
        table = pk = pk_kind = None
        if not rows:
            refusal = "temp_table"  # not visible to a pooled connection: another session's
        functions: set[str] = set()
        family: set[str] = set()
        for nsp, rel, kind, persistence, top, viewdef in rows:
            if top and kind == "r" and len(rows) == 1:
                table = table_name(rel, nsp)
            if kind in ("r", "p"):
                qualified = f"{quote_ident(nsp)}.{quote_ident(rel)}"
                family |= {table_name(r, n) for n, r in await pool.fetch(_FAMILY_SQL, qualified)}
            if viewdef:  # a view's own function calls are invisible in the query text
                inner = analyze(viewdef)
                functions |= inner.functions
                if inner.refusal == "volatile":
                    refusal = refusal or "volatile"
            if persistence == "t" or nsp.startswith("pg_temp"):
                refusal = "temp_table"
            elif kind == "f":
                refusal = refusal or "foreign_table"
            elif nsp in _SYSTEM:
                refusal = refusal or "system_catalog"
            tables.add(table_name(rel, nsp))
        if family - tables:
            tables |= family
            table = None  # partitions or inheritance: no row keys, the family's generations
        if refusal is None and functions and await self.unstable(shard, pool, functions):
            refusal = "volatile"
        if table is not None and refusal is None:
            for col, typ, exact in await pool.fetch(PK_SQL, text):
                if typ in INT_TYPES:
                    pk, pk_kind = col, "int"
                elif typ in TEXT_TYPES and exact:
                    pk, pk_kind = col, "text"
        if len(self._memo) > 65536:
            self._memo.clear()
        resolved = Resolved(frozenset(tables), refusal, table, pk, pk_kind)
        self._memo[(shard, schema, name)] = resolved
        return resolved
