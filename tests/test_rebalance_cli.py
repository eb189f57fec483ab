"""``tiercache rebalance ... --config shards.toml`` end to end, in a child process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rebalance_helpers import (
    create_schema,
    fresh_dsns,  # noqa: F401  (the dsns fixture)
    load,
    misplaced,
    open_pool,
    snapshot,
)

from tiercache.sharding.ring import HashRing

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tiercache.cli", "rebalance", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_plan_apply_status_verify(dsns: dict[str, str], tmp_path: Path) -> None:
    await create_schema(dsns, ["s1", "s2", "s3"])
    pool = await open_pool(dsns, HashRing(["s1", "s2", "s3"]))
    try:
        await load(pool, users=2000, orders=1000)
    finally:
        await pool.close()
    config = tmp_path / "shards.toml"
    shards = "\n".join(f'{n} = "{d}"' for n, d in dsns.items())
    config.write_text(f"[shards]\n{shards}\n\n[rebalance]\n"
                      'tables = { users = "id", orders = "user_id" }\nadd = ["s4"]\n')
    new = HashRing(["s1", "s2", "s3", "s4"])
    old = HashRing(["s1", "s2", "s3"])
    expected = sum(1 for i in range(2000) if new.get_node(i) != old.get_node(i))
    expected += sum(1 for i in range(1000) if new.get_node(i // 3) != old.get_node(i // 3))

    code, out, err = await _cli("plan", "--config", str(config))
    assert code == 0, err
    assert "users:" in out and "orders:" in out and "-> s4" in out
    assert f"{expected:,} rows," in out  # the total, exact
    assert "secret" not in out and dsns["s1"] not in out  # no DSNs (passwords) printed

    code, out, err = await _cli("status", "--config", str(config))
    assert code == 0 and "no rebalance" in out

    code, out, err = await _cli("apply", "--config", str(config), "--batch-size", "400")
    assert code == 0, err
    assert f"copied {expected:,} rows" in out

    code, out, err = await _cli("status", "--config", str(config))
    assert code == 0 and ": done" in out and "(done)" in out

    code, out, err = await _cli("verify", "--config", str(config))
    assert code == 0 and "verify: OK" in out, out + err

    code, out, err = await _cli("apply", "--config", str(config))  # ring is v1 now
    assert code == 1 and "topology v1" in out and "already on the ring" in err

    code, out, err = await _cli("resume", "--config", str(config))
    assert code == 0 and "nothing to resume" in out

    pool = await open_pool(dsns, new)
    try:
        assert misplaced(await snapshot(pool, "users", "id"), new) == []
        assert misplaced(await snapshot(pool, "orders", "user_id"), new) == []
    finally:
        await pool.close()
