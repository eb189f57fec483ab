"""Table introspection for the rebalancer: columns, primary key, shard-key type, and DDL.

The target of a move must have the source's columns (same names, types and order: rows travel
as binary COPY, which is type-exact) and a primary key.  A missing target table is created
from the source's catalog: columns with types, NOT NULL, defaults (but ``nextval`` ones: a
shard has no business sharing a sequence), CHECK constraints, the primary key and every index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tiercache.sharding._rebalance_sql import KEY_TYPES, ident, qualified

__all__ = ["RebalanceError", "TableInfo", "create_table_ddl", "table_info"]


class RebalanceError(Exception):
    """A rebalance cannot start or continue (the message says which check failed)."""


@dataclass(frozen=True)
class TableInfo:
    name: str
    columns: tuple[tuple[str, str], ...]  # (name, format_type)
    pk: tuple[str, ...]
    key: str
    key_type: str
    row_hash: bool = False  # every column type has an extended hash (checksums use it)

    @property
    def key_sql_type(self) -> str:
        return dict(self.columns)[self.key]

    @property
    def pk_types(self) -> tuple[str, ...]:
        types = dict(self.columns)
        return tuple(types[c] for c in self.pk)

    @property
    def column_list(self) -> str:
        return ", ".join(ident(c) for c, _ in self.columns)


_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS typ,
       format_type(a.atttypid, NULL) AS base, a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid) AS dflt, a.attgenerated <> '' AS generated
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
"""
_PK = """
SELECT a.attname FROM pg_index i
JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord
"""


async def table_oid(conn: Any, table: str) -> int | None:
    oid: int | None = await conn.fetchval("SELECT to_regclass($1)::oid", qualified(table))
    return oid


async def table_info(conn: Any, table: str, key: str, shard: str) -> TableInfo:
    """Columns, primary key and shard-key type of ``table`` on one shard (checked)."""
    oid = await table_oid(conn, table)
    if oid is None:
        raise RebalanceError(f"table {table!r} does not exist on shard {shard!r}")
    rows = await conn.fetch(_COLUMNS, oid)
    columns = tuple((r["attname"], r["typ"]) for r in rows)
    if any(r["generated"] for r in rows):
        raise RebalanceError(f"table {table!r} has generated columns, which COPY cannot load")
    base = {r["attname"]: r["base"] for r in rows}
    if key not in base:
        raise RebalanceError(f"table {table!r} has no shard-key column {key!r} on {shard!r}")
    if base[key] not in KEY_TYPES:
        raise RebalanceError(
            f"shard key {table}.{key} is {base[key]}; supported: {sorted(KEY_TYPES)} "
            "(their text form is what HashRing hashes)")
    pk = tuple(r["attname"] for r in await conn.fetch(_PK, oid))
    if not pk:
        raise RebalanceError(f"table {table!r} has no primary key on shard {shard!r} "
                             "(batches and verification need one)")
    return TableInfo(table, columns, pk, key, base[key], await _hashable(conn, columns))


async def _hashable(conn: Any, columns: tuple[tuple[str, str], ...]) -> bool:
    """Whether ``hash_record_extended`` works on these column types (it looks up each type's
    hash function even for NULL fields, so a row of typed NULLs is a complete probe)."""
    nulls = ", ".join(f"NULL::{typ}" for _, typ in columns)
    try:
        async with conn.transaction():
            await conn.fetchval(f"SELECT hash_record_extended(ROW({nulls}), 0)")
    except Exception:  # no hash function for some type (json, point, ...): md5 of the text
        return False
    return True


async def create_table_ddl(conn: Any, table: str) -> list[str]:
    """``CREATE TABLE`` + indexes reproducing ``table`` from the source's catalog."""
    oid = await table_oid(conn, table)
    assert oid is not None
    cols = []
    for r in await conn.fetch(_COLUMNS, oid):
        col = f"{ident(r['attname'])} {r['typ']}"
        if r["dflt"] is not None and "nextval(" not in r["dflt"]:
            col += f" DEFAULT {r['dflt']}"
        if r["attnotnull"]:
            col += " NOT NULL"
        cols.append(col)
    for r in await conn.fetch(
        "SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint "
        "WHERE conrelid = $1 AND contype = 'c'", oid):
        cols.append(f"CHECK {r['def'].removeprefix('CHECK ')}")
    schema, _, _ = table.rpartition(".")
    stmts = [f"CREATE SCHEMA IF NOT EXISTS {ident(schema)}"] if schema else []
    stmts.append(f"CREATE TABLE {qualified(table)} ({', '.join(cols)})")
    # every index, the primary key's too; then attach the pk index as the constraint
    for r in await conn.fetch(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) AS def, i.indisprimary "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1 "
        "ORDER BY i.indisprimary DESC, c.relname", oid):
        stmts.append(r["def"])
        if r["indisprimary"]:
            stmts.append(f"ALTER TABLE {qualified(table)} ADD PRIMARY KEY USING INDEX "
                         f"{ident(r['relname'])}")
    return stmts


def same_shape(a: TableInfo, b: TableInfo) -> str | None:
    """Why two shards' tables cannot exchange binary COPY rows, or None."""
    if a.columns != b.columns:
        return f"columns differ: {list(a.columns)} vs {list(b.columns)}"
    if a.pk != b.pk:
        return f"primary keys differ: {a.pk} vs {b.pk}"
    return None
