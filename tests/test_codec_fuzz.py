"""Hostile bytes from Redis or the bus: a counted miss or a dropped message, never a crash.

Everything runs in a child process (``tests/_hostile_child.py``), so a SIGSEGV -- what a
200-deep nested tuple did before the codec bounded its depth -- fails the test instead of
killing the run. The fallback LRU is exercised by ``TIERCACHE_PUREPYTHON=1``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from redis.cluster import RedisCluster

CHILD = Path(__file__).with_name("_hostile_child.py")
HEADER = b"\xc1TC\x01"


def _env(impl: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TIERCACHE_PUREPYTHON", None)
    if impl == "fallback":
        env["TIERCACHE_PUREPYTHON"] = "1"
    return env


def _nested(depth: int, code: int) -> bytes:
    data = msgpack.packb([])
    for _ in range(depth):
        data = msgpack.packb([msgpack.ExtType(code, data)])
    return data


def test_codec_and_bus_parser_survive_the_corpus_and_hypothesis() -> None:
    proc = subprocess.run([sys.executable, str(CHILD), "fuzz"], capture_output=True,
                          text=True, timeout=300, env=_env("ext"))
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    print("fuzz:", summary)  # cases run, slowest case (figures for the README)
    assert summary["cases"] > 5000


PAYLOADS: dict[str, bytes] = {
    "tuple-200": HEADER + msgpack.packb([msgpack.ExtType(1, _nested(200, 1)), 0.0, None, 0.0]),
    "frozenset-200": HEADER + msgpack.packb([msgpack.ExtType(3, _nested(200, 3)), 0.0, None,
                                             0.0]),
    "set-flood": HEADER + msgpack.packb([msgpack.ExtType(2, msgpack.packb(
        [msgpack.ExtType(10, (k * (2**61 - 1)).to_bytes(16, "big", signed=True))
         for k in range(1, 30_001)])), 0.0, None, 0.0]),
}


@pytest.mark.parametrize(("payload", "impl"), [
    ("tuple-200", "ext"), ("tuple-200", "fallback"), ("frozenset-200", "ext"),
    ("set-flood", "fallback")])
def test_hostile_l2_value_is_a_counted_miss_on_every_read_path(
        payload: str, impl: str, tiercache_stack: Any,
        redis_cluster_client: RedisCluster) -> None:
    namespace = f"h{uuid.uuid4().hex[:8]}"
    child = subprocess.Popen([sys.executable, str(CHILD), "paths", tiercache_stack.redis_url,
                              namespace], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=_env(impl))
    try:
        assert child.stdout is not None and child.stdin is not None
        keys = json.loads(child.stdout.readline())
        for key in keys.values():
            redis_cluster_client.set(key, PAYLOADS[payload])
        out, err = child.communicate("go\n", timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, (child.returncode, err[-3000:])
    result = json.loads(out.strip().splitlines()[-1])
    assert result["async"] == "fresh1" and result["sync"] == "fresh2"  # the loader ran
    assert result["get"] == "default" and result["get_sync"] == "default"
    assert result["many"] == {} and result["many_sync"] == {}
    assert result["loads"] == ["async", "sync"]
    assert result["l2"]["errors"] >= 6  # one unreadable payload counted per read
