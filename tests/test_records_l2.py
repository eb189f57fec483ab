"""asyncpg Records through L2: what ``await pool.fetch(...)`` returns reaches other processes.

Before: the codec refused ``asyncpg.Record``, so a cached data-access function kept its rows
in L1 only and every other process missed, always. Two real processes on the test cluster
and a real Postgres shard: the first loads and caches, the second reads Rows from L2 and
never calls its loader.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

import tiercache
from tiercache import Row, codec

CHILD = Path(__file__).with_name("_records_child.py")


def _run(mode: str, stack: Any, namespace: str, table: str) -> dict[str, Any]:
    dsn = next(iter(stack.pg_dsns.values()))
    proc = subprocess.run([sys.executable, str(CHILD), mode, stack.redis_url, dsn, namespace,
                           table], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_rows_cached_by_one_process_are_read_by_another(tiercache_stack: Any) -> None:
    namespace, table = f"r{uuid.uuid4().hex[:8]}", f"rows_{uuid.uuid4().hex[:8]}"
    first = _run("write", tiercache_stack, namespace, table)
    assert first["loads"] == ["fetch", "fetchrow"] and first["equal"]
    assert first["types"] == ["Record"]  # the loading process keeps what asyncpg returned
    second = _run("read", tiercache_stack, namespace, table)
    assert second["loads"] == []  # both values came from L2
    assert second["l2"]["hits"] == 2 and second["l2"]["errors"] == 0
    assert second["types"] == ["Row"]
    assert second["equal"] and second["dicts_equal"]
    assert second["cached_value_types"] == second["value_types"]  # every column's type kept
    assert set(second["value_types"].values()) >= {
        "int", "str", "Decimal", "datetime", "date", "time", "timedelta", "UUID", "list",
        "bool", "float", "bytes", "NoneType"}
    assert all(second["record_api"].values()), second["record_api"]


# ---------------------------------------------------------------------------- Row itself


def _row() -> Row:
    return Row(["id", "name"], [1, "a"])


def test_row_behaves_like_a_record() -> None:
    row = _row()
    assert (row["id"], row[1], row[-1], row[0:2]) == (1, "a", "a", (1, "a"))
    assert row.get("name") == "a" and row.get("zz") is None and row.get("zz", 5) == 5
    assert list(row.keys()) == ["id", "name"] and list(row.values()) == [1, "a"]
    assert list(row.items()) == [("id", 1), ("name", "a")] and dict(row) == {"id": 1,
                                                                             "name": "a"}
    assert len(row) == 2 and list(row) == [1, "a"] and "id" in row and 1 not in row
    assert row == (1, "a") and row == Row(["x", "y"], [1, "a"]) and row != (1, "b")
    assert row < (2,) and hash(row) == hash((1, "a")) and {row: 1}[(1, "a")] == 1
    assert repr(row) == "<Row id=1 name='a'>" and repr(Row([], [])) == "<Row>"
    assert not Row([], []) and row
    with pytest.raises(KeyError):
        row["zz"]
    with pytest.raises(IndexError):
        row[5]
    assert tiercache.Row is Row


def test_row_is_read_only_and_small() -> None:
    row = _row()
    with pytest.raises(AttributeError):
        row.name = "b"  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        row.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        row["id"] = 2  # type: ignore[index]
    assert not hasattr(row, "__dict__")
    rows = codec.decode(codec.encode([_row() for _ in range(3)]))
    assert rows[0]._columns is rows[2]._columns  # one set of names per result


def test_row_equals_the_record_it_came_from() -> None:
    from asyncpg.protocol.protocol import _create_record  # asyncpg's own test helper

    record = _create_record({"id": 0, "name": 1}, (1, "a"))
    row = codec.decode(codec.encode(record))
    assert row == record and record == row and hash(row) == hash(record)
    assert dict(row) == dict(record) and repr(row) == repr(record).replace("Record", "Row")
