"""Row keys of a statement: which primary-key values a point read reads or a write touches.

Why: with one generation per table, every write to ``orders`` invalidates every cached read
of ``orders`` -- under a 95/5 read/write mix the cache is emptied every twentieth statement.
A point read (``... WHERE id = $1 [AND ...]`` on one table) depends on the table's
generation and on the generation of its key's *bucket*; a write whose rows are pinned to
known key values (``UPDATE/DELETE ... WHERE id = $1``, ``INSERT ... (id, ...) VALUES``)
bumps those buckets plus the table's *star* generation, which every read that is not a
point read of that table depends on.  Anything else bumps the table generation (everything).

Only shapes whose reach is certain qualify: one relation, no CTE, no sub-select, a top-level
AND of ``column = $n`` / ``column = literal``, no ``ON CONFLICT`` (it may update another row),
no UPDATE of the key column itself.  The key column and its type come from the catalog
(a single-column primary key of integer or deterministic text type).
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

__all__ = ["BUCKETS", "BUCKET_BITS", "Ref", "bucket", "insert_rows", "where_eq"]

# Buckets per table: bounded counters; two keys in one bucket only over-invalidate each other.
# Why 2**16, not fewer: every write also misses the other cached keys of its bucket.  With
# 4096 buckets and 10,000 hot keys each key shares its bucket with ~1.4 others, and the 95/5
# bench workload refilled 1.4x as many entries per write as the written rows alone need.
# Memory stays bounded: counters and per-bucket dependency tuples exist only for buckets used.
BUCKET_BITS: Final = 16
BUCKETS: Final = 1 << BUCKET_BITS
Ref = tuple[str, Any]  # ("p", param number) or ("c", literal int/str)


def _ref(node: Any) -> Ref | None:
    if not isinstance(node, dict):
        return None
    if "TypeCast" in node:
        return _ref(node["TypeCast"].get("arg"))
    if "ParamRef" in node:
        return ("p", int(node["ParamRef"].get("number", 0)))
    const = node.get("A_Const")
    if isinstance(const, dict):
        if "ival" in const:
            return ("c", int(const["ival"].get("ival", 0)))
        if "sval" in const:
            return ("c", str(const["sval"].get("sval", "")))
    return None


def _column(node: Any) -> str | None:
    if not isinstance(node, dict) or "ColumnRef" not in node:
        return None
    fields = node["ColumnRef"].get("fields", [])
    last = fields[-1] if fields else {}
    return last.get("String", {}).get("sval") if isinstance(last, dict) else None


def where_eq(where: Any) -> tuple[tuple[str, Ref], ...]:
    """``column = value`` terms of a top-level AND (empty when there are none)."""
    terms = [where]
    out: dict[str, Ref] = {}
    while terms:
        node = terms.pop()
        if not isinstance(node, dict):
            continue
        boolexpr = node.get("BoolExpr")
        if boolexpr is not None:
            if boolexpr.get("boolop") == "AND_EXPR":
                terms.extend(boolexpr.get("args", []))
            continue
        expr = node.get("A_Expr")
        if not isinstance(expr, dict) or expr.get("kind") != "AEXPR_OP":
            continue
        op = [n.get("String", {}).get("sval") for n in expr.get("name", [])]
        if op != ["="]:
            continue
        left, right = expr.get("lexpr"), expr.get("rexpr")
        col, ref = _column(left), _ref(right)
        if col is None or ref is None:
            col, ref = _column(right), _ref(left)
        if col is not None and ref is not None and col not in out:
            out[col] = ref
    return tuple(sorted(out.items()))


def insert_rows(stmt: dict[str, Any]) -> tuple[tuple[tuple[str, Ref | None], ...], ...] | None:
    """``INSERT INTO t (cols) VALUES (...), ...``: each row's column -> value, else None."""
    if stmt.get("onConflictClause") or stmt.get("withClause"):
        return None
    cols = [c.get("ResTarget", {}).get("name") for c in stmt.get("cols", [])]
    select = (stmt.get("selectStmt") or {}).get("SelectStmt") or {}
    values = select.get("valuesLists")
    if not cols or not values:
        return None
    rows = []
    for item in values:
        cells = item.get("List", {}).get("items", [])
        if len(cells) != len(cols):
            return None
        rows.append(tuple(zip(cols, (_ref(c) for c in cells), strict=True)))
    return tuple(rows)


def bucket(value: Any, kind: str) -> int | None:
    """The key bucket of ``value`` for a key column of ``kind`` (``"int"``/``"text"``), or
    None when the value's meaning to Postgres is not certain (then: table-wide).

    Integers: ``v & (BUCKETS - 1)`` (Postgres ``pk & 65535`` gives the same, negatives too);
    text: the first 4 bytes of md5 (Postgres ``md5(pk)`` gives the same).
    """
    if kind == "int":
        if type(value) is int:
            return value & (BUCKETS - 1)
        if type(value) is str:
            try:
                return int(value.strip()) & (BUCKETS - 1)  # '7', ' 7', '+7' are 7 to int8in
            except ValueError:
                return None
        return None
    if kind == "text" and type(value) is str:
        digest = hashlib.md5(value.encode(), usedforsecurity=False).digest()
        return int.from_bytes(digest[:4], "big") & (BUCKETS - 1)
    return None
