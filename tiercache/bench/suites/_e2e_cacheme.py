"""The cacheme contestant of the e2e suite: the same workload, in cacheme's own virtualenv.

cacheme 0.3.0 (its latest release) pins ``theine<0.4``, ``cashews<6``, ``pydantic<2`` and
``redis<5``; this project's peers need theine 2 and cashews 7, so cacheme cannot be installed
beside them (nor be part of the ``dev`` extra). It runs here in a child process with its
own virtualenv: ``$TIERCACHE_BENCH_CACHEME_PYTHON``, else ``~/.cache/tiercache/bench-peers/
cacheme-0.3.0`` (created on first use with ``pip install 'cacheme[redis]==0.3.0' asyncpg
hiredis``, unless ``TIERCACHE_BENCH_PEER_SETUP=0``). The child runs this file as a script:
it imports :mod:`_e2e_workload` by path (no tiercache there), regenerates the same key
sequence from the same seed (checked by a checksum), routes by the parent's shard map and
times the same worker loop; it prints one JSON document.

Configuration: the node chain cacheme's README recommends, ``[local (tlfu), redis]``, the
Redis storage on the cluster (``cluster=True``, pool_size 100), MsgPackSerializer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import os
import subprocess
import sys
import zlib
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

__all__ = ["LABEL", "checksum", "find_python", "run_child"]

VERSION = "0.3.0"
REQUIREMENTS = (f"cacheme[redis]=={VERSION}", "asyncpg", "hiredis")
LABEL = ("cacheme 0.3.0 (Node caches [local tlfu {l1:,}, redis cluster], MsgPackSerializer, "
         "own venv)")
ENV_PYTHON = "TIERCACHE_BENCH_CACHEME_PYTHON"
ENV_SETUP = "TIERCACHE_BENCH_PEER_SETUP"


def checksum(keys: Sequence[int]) -> int:
    """The key sequence's CRC32: the parent and the child must draw the same requests."""
    return zlib.crc32(",".join(map(str, keys)).encode())


def _venv_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tiercache" / "bench-peers" / f"cacheme-{VERSION}"


def _probe(python: str) -> str:
    """"" when ``python`` can import cacheme and asyncpg, else why not."""
    try:
        proc = subprocess.run(
            [python, "-c", "import cacheme, asyncpg, redis; print(redis.__version__)"],
            capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python}: {exc}"
    return "" if proc.returncode == 0 else f"{python}: {proc.stderr.strip()[-300:]}"


def find_python(setup: bool = True) -> tuple[str | None, str]:
    """``(python, note)`` of an interpreter with cacheme, or ``(None, why not)``."""
    env = os.environ.get(ENV_PYTHON)
    if env:
        why = _probe(env)
        return (env, f"${ENV_PYTHON}") if not why else (None, f"${ENV_PYTHON} unusable: {why}")
    venv = _venv_dir()
    python = venv / "bin" / "python"
    if python.exists() and not _probe(str(python)):
        return str(python), f"venv {venv}"
    if not setup or os.environ.get(ENV_SETUP, "1") == "0":
        return None, (f"not installed: it cannot share this environment (cacheme {VERSION} pins "
                      f"theine<0.4, cashews<6, pydantic<2, redis<5); set ${ENV_PYTHON} or "
                      f"let the suite create {venv} (${ENV_SETUP}=1)")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                       capture_output=True, timeout=120)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True,
                       capture_output=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        tail = detail.decode(errors="replace")[-300:] if isinstance(detail, bytes) else ""
        return None, f"not installed: creating {venv} failed ({exc}) {tail}".strip()
    why = _probe(str(python))
    return (str(python), f"venv {venv} (created now)") if not why else (None, why)


async def run_child(python: str, config: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one timed cacheme run in ``python``; its RunResult as a dict (+ ``counters``)."""
    proc = await asyncio.create_subprocess_exec(
        python, str(Path(__file__)), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(config).encode()), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"the cacheme worker did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"the cacheme worker failed (exit {proc.returncode}): "
                           f"{err.decode(errors='replace').strip()[-600:]}")
    result: dict[str, Any] = json.loads(out)
    return result


# ---------------------------------------------------------------------- the child process


async def _child(config: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).parent))
    wl = importlib.import_module("_e2e_workload")
    cacheme = importlib.import_module("cacheme")
    msgpack_serializer = importlib.import_module("cacheme.serializer").MsgPackSerializer()
    asyncpg = importlib.import_module("asyncpg")

    w = wl.Workload(**config["workload"])
    keys = wl.key_sequence(w)
    if checksum(keys) != config["checksum"]:
        raise SystemExit("the key sequence differs from the parent's (different Python?)")
    pools: dict[str, Any] = {}
    if config["loader"] == "pg":
        for name, dsn in config["dsns"].items():
            pools[name] = await asyncpg.create_pool(dsn, min_size=config["pool_size"],
                                                    max_size=config["pool_size"])
        loader = wl.PgLoader(pools, config["route"])
    else:
        loader = wl.SleepLoader(config["sleep_s"])
    ttl = timedelta(seconds=config["ttl"])
    await cacheme.register_storage(
        "local", cacheme.Storage(url="local://tlfu", size=config["l1_size"]))
    await cacheme.register_storage(
        "redis", cacheme.Storage(url=config["redis_url"], cluster=True, pool_size=100))
    cacheme.set_prefix(f"cme2e{config['run_id']}")
    user_caches = [cacheme.Cache(storage="local", ttl=ttl),
                   cacheme.Cache(storage="redis", ttl=ttl)]
    warm_caches = [cacheme.Cache(storage="redis", ttl=ttl)]

    @dataclasses.dataclass
    class UserNode(cacheme.Node):  # type: ignore[misc, name-defined]
        uid: int

        def key(self) -> str:
            return f"user:{self.uid}"

        async def load(self) -> Any:
            return await loader(self.uid)

        class Meta(cacheme.Node.Meta):  # type: ignore[misc, name-defined]
            version = "v1"
            caches = user_caches
            serializer = msgpack_serializer

    @dataclasses.dataclass
    class WarmNode(cacheme.Node):  # type: ignore[misc, name-defined]
        uid: int

        def key(self) -> str:
            return f"warm:{self.uid}"

        async def load(self) -> Any:
            return self.uid

        class Meta(cacheme.Node.Meta):  # type: ignore[misc, name-defined]
            version = "v1"
            caches = warm_caches
            serializer = msgpack_serializer
    get = cacheme.get

    async def get_user(key: int) -> Any:
        return await get(UserNode(key))

    # open the connections a run at this concurrency needs (not the data), as the parent
    # does for every contestant: that many reads of distinct keys at once
    await asyncio.gather(*(get(WarmNode(i)) for i in range(w.concurrency)),
                         return_exceptions=True)
    metrics = cacheme.stats(UserNode)
    base_loads = loader.calls

    def counters() -> dict[str, float]:
        return {"loads": float(loader.calls - base_loads),
                "cache_hits": float(metrics.hit_count())}

    result = await wl.drive(get_user, keys, w, counters)
    out: dict[str, Any] = result.as_dict()
    out["loads"] = loader.calls - base_loads
    out["counters"] = counters()
    out["series"] = result.series
    for pool in pools.values():
        await pool.close()
    return out


if __name__ == "__main__":
    cfg = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(_child(cfg))))
