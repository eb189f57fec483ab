"""SQL analysis for the L3 query cache: what a statement reads, writes, and why it can't be cached.

Why pglast (the Postgres parser itself): table extraction by regex gets CTEs, quoted names and
subqueries wrong, and a wrong table list is a stale read.  Each distinct SQL text is parsed once;
:func:`analyze` is memoized in a bounded LRU (``lru_cache``), so an application's few hundred
statement texts cost one parse each, and a flood of distinct texts cannot grow memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pglast.parser import ParseError, parse_sql_json

from tiercache.tiers._sql_keys import Ref, insert_rows, where_eq

__all__ = ["Analysis", "analyze", "table_name"]

# Functions whose result changes between calls with equal arguments (or depends on the session).
VOLATILE_FUNCTIONS = frozenset({
    "now", "random", "setseed", "nextval", "currval", "setval", "lastval", "clock_timestamp",
    "statement_timestamp", "transaction_timestamp", "timeofday", "gen_random_uuid",
    "uuid_generate_v1", "uuid_generate_v4", "txid_current", "txid_current_if_assigned",
    "pg_current_xact_id", "pg_sleep", "pg_sleep_for", "pg_sleep_until", "current_setting",
    "set_config", "pg_backend_pid", "inet_client_addr", "inet_client_port", "version",
    "current_database", "current_schema", "current_schemas", "session_user", "current_user",
    "pg_try_advisory_lock", "pg_advisory_lock", "pg_advisory_xact_lock", "dblink",
    "pg_notify", "lo_import", "lo_export", "pg_read_file", "txid_snapshot_xmin",
})
_WRITE_NODES = ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt")
_SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast"})


@dataclass(frozen=True, slots=True)
class Analysis:
    """What the cache needs to know about one SQL text.

    ``kind`` is ``"select"`` (cacheable unless ``refusal``), ``"write"`` (bump ``tables``) or
    ``"other"`` (DDL, SET, ...; a write of unknown reach: bump the shard epoch).  ``tables``
    are normalized names (:func:`table_name`).  ``complexity`` counts relations, joins,
    subqueries and aggregates-ish nodes, for the adaptive TTL.
    """

    kind: str
    tables: frozenset[str]
    refusal: str | None
    complexity: int
    calls_functions: bool = False
    relations: tuple[tuple[str | None, str], ...] = ()  # (schema, name) as written
    # Row keys (see _sql_keys), only for one-relation statements of a certain reach:
    eq: tuple[tuple[str, Ref], ...] = ()  # SELECT/UPDATE/DELETE: WHERE column = value terms
    set_cols: frozenset[str] = frozenset()  # UPDATE: the columns it sets
    rows: tuple[tuple[tuple[str, Ref | None], ...], ...] | None = None  # INSERT ... VALUES
    pinned: bool = False  # eq/rows describe every row the statement can read or write
    functions: frozenset[str] = frozenset()  # called function names (lower case, unqualified)


def table_name(relname: str, schema: str | None = None) -> str:
    """``public.orders`` and ``orders`` are one table; other schemas stay qualified."""
    if schema is None or schema == "public":
        return relname
    return f"{schema}.{relname}"


def _walk(node: Any, out: dict[str, Any]) -> None:
    """Collect RangeVars, CTE names, function names, locking clauses and write nodes."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        for key, value in item.items():
            if key == "RangeVar" or (key == "relation" and isinstance(value, dict)
                                     and "relname" in value):
                out["ranges"].append(value)  # a write's target is a bare RangeVar
            elif key == "CommonTableExpr":
                out["ctes"].add(value.get("ctename"))
            elif key == "FuncCall":
                names = [n.get("String", {}).get("sval", "") for n in value.get("funcname", [])]
                out["funcs"].add(names[-1].lower() if names else "")
                out["complexity"] += 1
            elif key == "SQLValueFunction":
                out["funcs"].add("current_user")  # CURRENT_DATE/USER/TIMESTAMP...: all unstable
            elif key == "lockingClause":
                out["locking"] = True
            elif key in _WRITE_NODES:
                out["write"] = True
            elif key in ("JoinExpr", "SubLink", "RangeSubselect", "RangeFunction"):
                out["complexity"] += 2
                out["nested"] = True
            elif key == "intoClause":
                out["write"] = True  # SELECT ... INTO creates a table
            stack.append(value)


@lru_cache(maxsize=4096)
def analyze(sql: str) -> Analysis:
    """Parse ``sql`` once (memoized) and classify it; unparsable SQL is ``"other"``."""
    try:
        tree = json.loads(parse_sql_json(sql))
    except (ParseError, ValueError):
        return Analysis("other", frozenset(), "unparsable", 0)
    stmts = [s.get("stmt", {}) for s in tree.get("stmts", [])]
    out: dict[str, Any] = {
        "ranges": [], "ctes": set(), "funcs": set(), "locking": False, "write": False,
        "complexity": 0, "nested": False,
    }
    _walk(stmts, out)
    tables: set[str] = set()
    relations: set[tuple[str | None, str]] = set()
    temp = system = False
    for rv in out["ranges"]:
        name, schema = rv.get("relname", ""), rv.get("schemaname")
        if schema is None and name in out["ctes"]:
            continue
        if rv.get("relpersistence") == "t" or schema == "pg_temp":
            temp = True
        if schema in _SYSTEM_SCHEMAS or (schema is None and name.startswith("pg_")):
            system = True
        tables.add(table_name(name, schema))
        relations.add((schema, name))
    frozen = frozenset(tables)
    rels = tuple(sorted(relations, key=lambda r: (r[0] or "", r[1])))
    complexity = out["complexity"] + len(out["ranges"])
    heads = [next(iter(s), "") for s in stmts]
    simple = (len(stmts) == 1 and len(out["ranges"]) == 1 and not out["ctes"]
              and not out["nested"])
    if out["write"] or any(h in ("TruncateStmt", "CopyStmt") for h in heads):
        keys: dict[str, Any] = {}
        if simple and heads[0] in ("UpdateStmt", "DeleteStmt", "InsertStmt"):
            keys = _write_keys(heads[0], stmts[0][heads[0]])
        return Analysis("write", frozen, "write", complexity, relations=rels, **keys)
    if len(heads) != 1 or heads[0] != "SelectStmt":
        kind = "other" if any(h != "SelectStmt" for h in heads) else "select"
        reason = "transaction" if any(h == "TransactionStmt" for h in heads) else "not_select"
        return Analysis(kind, frozen, reason, complexity)
    refusal: str | None = None
    if out["locking"]:
        refusal = "for_update"
    elif out["funcs"] & VOLATILE_FUNCTIONS or any(f.startswith("pg_") for f in out["funcs"]):
        refusal = "volatile"
    elif temp:
        refusal = "temp_table"
    elif system:
        refusal = "system_catalog"
    elif not frozen:
        refusal = "no_table"  # SELECT 1, SELECT $1: nothing to invalidate on, and nothing to save
    body = stmts[0]["SelectStmt"]
    eq: tuple[tuple[str, Ref], ...] = ()
    if simple and body.get("op", "SETOP_NONE") == "SETOP_NONE" and "withClause" not in body:
        eq = where_eq(body.get("whereClause"))
    return Analysis("select", frozen, refusal, complexity, bool(out["funcs"]), rels, eq=eq,
                    pinned=bool(eq), functions=frozenset(out["funcs"]))


def _write_keys(head: str, body: dict[str, Any]) -> dict[str, Any]:
    """The row keys of a one-relation write, when its reach is certain (else nothing)."""
    if "withClause" in body or body.get("fromClause") or body.get("usingClause"):
        return {}
    if head == "InsertStmt":
        rows = insert_rows(body)
        return {} if rows is None else {"rows": rows, "pinned": True}
    eq = where_eq(body.get("whereClause"))
    if not eq:
        return {}
    cols = frozenset(t.get("ResTarget", {}).get("name", "") for t in body.get("targetList", [])
                     ) if head == "UpdateStmt" else frozenset()
    return {"eq": eq, "set_cols": cols, "pinned": True}
