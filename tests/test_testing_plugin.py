"""The pytest plugin as a user meets it: README usage under pytest-asyncio's defaults, env vars.

The user suites run in a child pytest in an empty directory (no ini file: pytest-asyncio's
defaults, strict mode, function-scoped loops), against this session's servers through
``$TIERCACHE_REDIS_URL`` / ``$TIERCACHE_PG_DSNS``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tiercache._localstack.env import export_lines, parse_pg_dsns

pytestmark = pytest.mark.timeout(120)

#: What the README documents: plain ``@pytest.mark.asyncio`` tests using the fixtures.
USER_SUITE = '''
import pytest


@pytest.mark.asyncio
async def test_plain_marker(pg_pools, async_redis_cluster_client):
    assert sorted(pg_pools) == ["s1", "s2", "s3"]
    assert await pg_pools["s1"].fetchval("select 1") == 1
    await async_redis_cluster_client.set("k", "v")
    assert await async_redis_cluster_client.get("k") == b"v"


@pytest.mark.asyncio
async def test_plain_marker_again(pg_pools, async_redis_cluster_client):
    async with pg_pools["s2"].acquire() as conn:          # a new loop: a new pool
        assert await conn.fetchval("select 2") == 2
    assert await async_redis_cluster_client.get("k") is None   # flushed for each test


@pytest.mark.asyncio(loop_scope="module")
async def test_module_loop(pg_pools):
    assert await pg_pools["s3"].fetchval("select 3") == 3


@pytest.mark.asyncio(loop_scope="session")
async def test_session_loop(pg_pools, async_redis_cluster_client):
    assert await pg_pools["s1"].fetchval("select 4") == 4
    assert await async_redis_cluster_client.ping()


class TestClassLoop:
    @pytest.mark.asyncio(loop_scope="class")
    async def test_class_loop(self, pg_pools):
        assert await pg_pools["s2"].fetchval("select 5") == 5
'''


def _run_user_suite(tmp_path: Path, stack: Any, pg_env: str, *options: str) -> str:
    (tmp_path / "test_user.py").write_text(USER_SUITE)
    env = {**os.environ, "TIERCACHE_REDIS_URL": stack.redis_url, "TIERCACHE_PG_DSNS": pg_env}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         *options, "test_user.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=110,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


def test_readme_usage_under_pytest_asyncio_defaults(tiercache_stack: Any, tmp_path: Path) -> None:
    """Plain ``@pytest.mark.asyncio`` with ``pg_pools``: the pools belong to the test's loop."""
    pairs = ",".join(f"{name}={dsn}" for name, dsn in tiercache_stack.pg_dsns.items())
    out = _run_user_suite(tmp_path, tiercache_stack, pairs)  # the name=dsn,name=dsn form
    assert "5 passed" in out


def test_readme_usage_with_session_loop_defaults(tiercache_stack: Any, tmp_path: Path) -> None:
    """A suite configured like ours (auto mode, session loops) gets the same fixtures."""
    out = _run_user_suite(
        tmp_path, tiercache_stack, json.dumps(tiercache_stack.pg_dsns),
        "-o", "asyncio_mode=auto", "-o", "asyncio_default_test_loop_scope=session",
        "-o", "asyncio_default_fixture_loop_scope=session",
    )
    assert "5 passed" in out


async def test_our_suite_gets_pools_in_the_session_loop(pg_pools: dict[str, Any]) -> None:
    assert await pg_pools["s1"].fetchval("select 1") == 1


# -- $TIERCACHE_PG_DSNS -------------------------------------------------------------------------

SECRET = "s3cr3t-pw"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"s1": "postgresql://u@h/db", "s2": "postgresql://u@h2/db"}',
         {"s1": "postgresql://u@h/db", "s2": "postgresql://u@h2/db"}),
        ("s1=postgresql://u@h/db,s2=postgresql://u@h2/db",
         {"s1": "postgresql://u@h/db", "s2": "postgresql://u@h2/db"}),
        (" s1=postgresql://u@h/db , s2=postgresql://u@h2/db \n",
         {"s1": "postgresql://u@h/db", "s2": "postgresql://u@h2/db"}),
        # multi-host URL: the comma inside the DSN is not an item separator
        ("s1=postgresql://u@h1:5432,h2:5432/db?target_session_attrs=read-write,s2=postgresql://x",
         {"s1": "postgresql://u@h1:5432,h2:5432/db?target_session_attrs=read-write",
          "s2": "postgresql://x"}),
        # key/value DSNs keep their own '='
        ("s1=host=h1 port=5432 dbname=a,s2=host=h2 dbname=b",
         {"s1": "host=h1 port=5432 dbname=a", "s2": "host=h2 dbname=b"}),
        ("only=postgresql://u:p@h/db", {"only": "postgresql://u:p@h/db"}),
    ],
)
def test_pg_dsns_accepts_json_and_pairs(raw: str, expected: dict[str, str]) -> None:
    assert parse_pg_dsns(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["", "   ", f"postgresql://u:{SECRET}@h/db", f"junk,s1=postgresql://u:{SECRET}@h/db",
     f"s1=postgresql://u:{SECRET}@h/db,s1=postgresql://u:{SECRET}@h/db", "{not json",
     '["postgresql://u@h/db"]', '{"s1": 5}', "{}", "s1="],
)
def test_pg_dsns_errors_name_the_problem_not_the_password(raw: str) -> None:
    with pytest.raises(ValueError, match="TIERCACHE_PG_DSNS") as info:
        parse_pg_dsns(raw)
    assert SECRET not in str(info.value)


def test_pg_dsns_bad_value_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "test_x.py").write_text("def test_x(tiercache_stack):\n    pass\n")
    env = {**os.environ, "TIERCACHE_PG_DSNS": f"postgresql://u:{SECRET}@h/db"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "test_x.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "TIERCACHE_PG_DSNS must be" in out and SECRET not in out


def test_export_lines_round_trip() -> None:
    dsns = {"s1": "postgresql://u:p'q@h:1/db", "s2": "postgresql://u@h:2/db"}
    lines = export_lines("redis://127.0.0.1:7000", dsns)
    script = "\n".join([*lines, 'printf "%s\\n%s" "$TIERCACHE_REDIS_URL" "$TIERCACHE_PG_DSNS"'])
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    url, raw = out.split("\n", 1)
    assert url == "redis://127.0.0.1:7000" and parse_pg_dsns(raw) == dsns
