"""The bench runner: suite discovery, the CLI end to end (ring suite, no servers), plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiercache.bench.base import BenchContext, Row, ratio_row
from tiercache.bench.plots import SAMPLES_KEY, plot_results, strip_samples
from tiercache.bench.registry import discover
from tiercache.cli import main


def test_discover_finds_every_suite() -> None:
    suites = discover()
    assert {"ring", "stack", "pool", "l1", "l2"} <= set(suites)
    assert suites["ring"].needs == frozenset()
    assert suites["stack"].needs == {"redis", "pg"}


def test_ring_suite_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.json"
    assert main(["bench", "--suite", "ring", "--quick", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    rows = payload["results"]["ring"]
    assert payload["failures"] == {}
    assert payload["machine"]["implementation"] in ("cython", "python")
    names = {row["name"] for row in rows}
    assert "get_node, 3 shards, str keys" in names
    for row in rows:
        assert row["data"]["ours_ns" if "ours_ns" in row["data"] else "ns_per_key"] > 0
    assert "tiercache bench" in capsys.readouterr().out


def test_unknown_suite_is_a_clear_error() -> None:
    with pytest.raises(SystemExit, match="unknown suite"):
        main(["bench", "--suite", "nope"])


def test_missing_servers_are_reported_not_guessed() -> None:
    with pytest.raises(RuntimeError, match="--redis-url"):
        BenchContext().require_redis()


def test_plots_and_json_without_samples(tmp_path: Path) -> None:
    latency: Row = {"name": "GET", "summary": "", "data": {SAMPLES_KEY: [1e5, 2e5, 3e5]}}
    compared = ratio_row("hit", 50.0, 500.0, "peer", min_speedup=5)
    assert compared["ok"] is True and compared["target"] == ">= 5x faster than peer"
    files = plot_results({"demo": [latency, compared]}, tmp_path)
    assert sorted(f.name for f in files) == ["demo-compare.png", "demo-latency.png"]
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files)
    assert SAMPLES_KEY not in strip_samples({"demo": [latency]})["demo"][0]["data"]
