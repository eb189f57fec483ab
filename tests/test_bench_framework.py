"""The bench framework on tiny inputs: summary, JSON shape, compare, charts, selection.

No suite is timed here (fake suites return fixed rows): speed is never asserted in tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tiercache.bench import registry, runner
from tiercache.bench.base import (
    CDF_POINTS,
    BenchContext,
    Row,
    compare_row,
    na_row,
    target_row,
    unavailable_row,
)
from tiercache.bench.compare import compare_payloads, headline
from tiercache.bench.plots import plot_payload
from tiercache.bench.registry import Selection, Suite
from tiercache.bench.report import summarize_run, summary_panel
from tiercache.bench.timing import rounds_interleaved, summarize
from tiercache.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def _rows() -> list[Row]:
    return [
        compare_row("hit vs peer", {"tiercache": [10.0, 11.0, 12.0], "peer": [100.0, 90.0, 95.0]},
                    ours="tiercache", theirs="peer", min_speedup=5),
        target_row("memory per entry", 130.0, "B/entry", at_most=120),
        unavailable_row("hit vs ghostcache", "ghostcache", "not installed"),
        na_row("set vs lru_cache", "lru_cache has no set"),
        {"name": "plain dict row", "summary": "an old-style suite row", "target": None,
         "ok": None},
    ]


def _text(renderable: Any) -> str:
    console = Console(width=200, record=True)
    console.print(renderable)
    return console.export_text()


def test_summary_counts_repeats_misses_and_warns_when_busy() -> None:
    results = {"demo": _rows()}
    load = {"cores": 2, "start": 1.0, "max": 5.5, "mean": 3.0, "samples": []}
    summary = summarize_run(results, {"broken": "SuiteError: wrong values"}, ["e2e"], load)
    assert summary["totals"] == {"met": 1, "missed": 1, "info": 2, "unavailable": 1}
    assert [m["name"] for m in summary["missed"]] == ["memory per entry"]
    assert summary["unavailable"][0]["name"] == "hit vs ghostcache"
    assert any("busy machine" in w and "5.5" in w for w in summary["warnings"])
    text = _text(summary_panel(summary))
    assert "SUMMARY" in text and "MISSED demo / memory per entry" in text
    assert "ghostcache" in text and "FAILED suite broken" in text and "not built" in text


def test_noisy_rounds_are_warned_about() -> None:
    noisy = compare_row("noisy", {"tiercache": [10.0, 30.0, 40.0], "peer": [10.0, 10.0, 10.0]},
                        ours="tiercache", theirs="peer")
    summary = summarize_run({"demo": [noisy]}, {}, [], None)
    assert any("spread between rounds" in w and "demo/noisy" in w for w in summary["warnings"])


def test_compare_row_keeps_rounds_and_judges_the_chosen_statistic() -> None:
    row = compare_row("x", {"a": [10.0, 20.0], "b": [20.0, 20.0]}, ours="a", theirs="b",
                      statistic="median", max_ratio=0.5)
    assert row["rounds"] == {"a": [10.0, 20.0], "b": [20.0, 20.0]}
    assert row["value"] == pytest.approx(0.75) and row["ok"] is False
    assert row["data"]["stats"]["a"]["min"] == 10.0
    paired = compare_row("y", {"a": [10.0, 40.0, 30.0], "b": [20.0, 20.0, 30.0]}, ours="a",
                         theirs="b", statistic="paired")
    assert paired["value"] == pytest.approx(1.0)  # median of 0.5, 2.0, 1.0


def test_cdf_is_reduced_to_quantiles_in_ns() -> None:
    ctx = BenchContext()
    ctx.cdf("latency", {"tiercache": [i / 1e6 for i in range(5000)]}, unit="s")
    ctx.timeseries("hit ratio", {"L1": [(0.0, 0.1), (1.0, 0.9)]}, ylabel="hit ratio")
    charts = ctx.take_charts()
    assert ctx.charts == [] and [c["kind"] for c in charts] == ["cdf", "lines"]
    series = charts[0]["series"]["tiercache"]
    assert len(series) == CDF_POINTS and series[0] == 0 and series[-1] == pytest.approx(4999e3)
    assert charts[0]["counts"] == {"tiercache": 5000}
    assert charts[1]["xlabel"].startswith("time")


def test_timing_helpers_shape() -> None:
    got = rounds_interleaved({"a": lambda: None, "b": lambda: None}, 10, 3)
    assert {k: len(v) for k, v in got.items()} == {"a": 3, "b": 3}
    stats = summarize([1.0, 2.0, 3.0, 100.0])
    assert stats["min"] == 1.0 and stats["median"] == 2.5 and stats["p99"] == 100.0


async def _fake_run(ctx: BenchContext) -> list[Row]:
    ctx.cdf("get latency", {"tiercache": [1e3, 2e3, 3e3], "redis-py": [2e3, 3e3, 5e3]})
    ctx.lines("throughput vs concurrency", {"tiercache": [(1, 1e4), (8, 5e4)]},
              xlabel="concurrent tasks", ylabel="ops/s", xlog=True)
    ctx.timeseries("rows/s during the move", {"copy": [(0, 1e4), (1, 3e4), (2, 2e4)]},
                   ylabel="rows/s")
    return _rows()


async def _broken_run(ctx: BenchContext) -> list[Row]:
    raise RuntimeError("servers unusable")


def _fake_selection(monkeypatch: pytest.MonkeyPatch, *runs: Any) -> None:
    suites = [Suite(f"fake{i}", "a fake suite", frozenset(), run) for i, run in enumerate(runs)]
    monkeypatch.setattr(runner, "select", lambda names: Selection(suites, ["e2e"]))


def test_cli_writes_json_and_charts_and_the_summary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_selection(monkeypatch, _fake_run)
    out = tmp_path / "results"
    assert main(["bench", "--out", str(out)]) == 0
    assert main(["bench", "--json", str(tmp_path / "strict.json"), "--strict"]) == 1
    printed = capsys.readouterr().out
    assert "SUMMARY" in printed and "MISSED fake0 / memory per entry" in printed
    payload = json.loads((out / "results.json").read_text())
    assert payload["schema"] == 2
    assert {"cpu_flags", "cpu_count", "implementation", "cpu_model"} <= payload["machine"].keys()
    assert "tiercache" in payload["versions"] and "revision" in payload["git"]
    assert payload["run"]["load"]["cores"] >= 1
    assert payload["results"]["fake0"][0]["rounds"]["peer"] == [100.0, 90.0, 95.0]
    assert [c["kind"] for c in payload["charts"]["fake0"]] == ["cdf", "lines", "lines"]
    assert payload["summary"]["not_built"] == ["e2e"]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["fake0-compare.png", "fake0-get-latency.png",
                    "fake0-rows-s-during-the-move.png", "fake0-throughput-vs-concurrency.png"]
    assert all(p.read_bytes()[:8] == PNG for p in out.glob("*.png"))
    redrawn = plot_payload(payload, tmp_path / "again")  # `bench plot` from the JSON alone
    assert sorted(p.name for p in redrawn) == pngs


def test_a_failing_suite_exits_2_and_the_others_still_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_selection(monkeypatch, _broken_run, _fake_run)
    out = tmp_path / "r.json"
    assert main(["bench", "--json", str(out)]) == 2
    payload = json.loads(out.read_text())
    assert payload["failures"] == {"fake0": "RuntimeError: servers unusable"}
    assert len(payload["results"]["fake1"]) == 5


def _payload(rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {"results": rows, "machine": {}, "git": {}}


def test_compare_orders_regressions_first_with_a_noise_band(tmp_path: Path) -> None:
    def row(name: str, value: float, ok: bool | None = None, better: str = "lower",
            rounds: list[float] | None = None) -> dict[str, Any]:
        r: dict[str, Any] = {"name": name, "summary": "", "value": value, "unit": "x",
                             "better": better, "ok": ok}
        if rounds:
            r["rounds"] = {"tiercache": rounds}
        return r

    a = _payload({"s": [row("slower", 1.0, True), row("noise", 1.0, rounds=[1, 1.5, 1.6]),
                        row("faster", 2.0), row("tput", 100.0, better="higher"),
                        row("gone", 1.0)]})
    b = _payload({"s": [row("slower", 1.4, False), row("noise", 1.3, rounds=[1, 1.5, 1.6]),
                        row("faster", 1.0), row("tput", 50.0, better="higher"),
                        row("new", 1.0)]})
    entries = compare_payloads(a, b, noise=0.05)
    verdicts = {e["name"]: e["verdict"] for e in entries}
    assert [e["name"] for e in entries[:2]] == ["tput", "slower"]  # worst regression first
    assert verdicts == {"tput": "regression", "slower": "regression", "faster": "improved",
                        "noise": "same", "gone": "only in A", "new": "only in B"}
    assert next(e for e in entries if e["name"] == "noise")["band"] == pytest.approx(0.5)
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    assert main(["bench", "compare", str(pa), str(pb)]) == 0
    assert main(["bench", "compare", str(pa), str(pb), "--strict"]) == 1
    assert main(["bench", "compare", str(pa), str(pa), "--strict"]) == 0


def test_headline_falls_back_on_legacy_data() -> None:
    assert headline({"name": "x", "data": {"rows_per_s": 5.0}}) == (5.0, "rows/s", True)
    assert headline({"name": "x", "data": {"ratio": 1.2}}) == (1.2, "x", False)
    assert headline({"name": "x", "summary": "words only"}) is None


def test_selection_aliases_and_not_built(monkeypatch: pytest.MonkeyPatch) -> None:
    suites = registry.discover()
    assert {"ring", "l1", "l2", "stack", "pool"} <= suites.keys() and "cache" not in suites
    assert [s.name for s in registry.select(["cache"]).suites] == ["l1", "l2"]
    monkeypatch.setattr(registry, "EXPECTED", (*registry.EXPECTED, "future"))
    assert "future" in registry.select(None).not_built
    picked = registry.select(["ring", "future"])
    assert [s.name for s in picked.suites] == ["ring"] and picked.not_built == ["future"]
    with pytest.raises(SystemExit, match="unknown suite"):
        registry.select(["nope"])


def test_readme_section_is_rendered_from_the_json_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tiercache.bench import readme

    _fake_selection(monkeypatch, _fake_run)
    results = tmp_path / "r.json"
    assert main(["bench", "--json", str(results)]) == 0
    out = tmp_path / "docs" / "performance.md"
    assert readme.main([str(results), "-o", str(out), "--images", str(tmp_path / "img")]) == 0
    text = out.read_text()
    assert text.startswith("## Performance") and "cores" in text and "### fake0" in text
    assert "| memory per entry |" in text and "**missed**" in text
    assert "![fake0: fake0-get-latency](../img/fake0-get-latency.png)" in text
    assert (tmp_path / "img" / "fake0-get-latency.png").read_bytes()[:8] == PNG
    # --readme: the section is replaced in place, what is around it stays
    doc = tmp_path / "README.md"
    doc.write_text("# x\n\n## Performance\n\nold figures\n\n## Known limits\n\n- one\n")
    assert readme.main([str(results), "--readme", str(doc), "--images",
                        str(tmp_path / "img")]) == 0
    new = doc.read_text()
    assert new.startswith("# x\n\n## Performance") and "old figures" not in new
    assert "### fake0" in new and new.endswith("## Known limits\n\n- one\n")
    assert "![fake0: fake0-get-latency](img/fake0-get-latency.png)" in new


async def _interrupted_run(ctx: BenchContext) -> list[Row]:
    raise KeyboardInterrupt


def test_ctrl_c_stops_the_run_but_the_summary_and_json_are_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_selection(monkeypatch, _fake_run, _interrupted_run, _fake_run)
    out = tmp_path / "r.json"
    assert main(["bench", "--json", str(out)]) == 2
    payload = json.loads(out.read_text())
    assert list(payload["results"]) == ["fake0"] and "interrupted" in payload["failures"]["fake1"]
