"""PNG plots of bench results (``tiercache bench --plot DIR``; needs the ``plots`` extra).

Two pictures per suite, when its rows carry the data: latency distributions (an ECDF per
measurement, from rows whose ``data`` has ``samples_ns``) and side-by-side per-op times
(rows with ``ours_ns`` / ``theirs_ns``), so ratios read at a glance on a log scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tiercache.bench.base import Row

__all__ = ["SAMPLES_KEY", "plot_results", "strip_samples"]

SAMPLES_KEY = "samples_ns"


def strip_samples(results: dict[str, list[Row]]) -> dict[str, list[dict[str, Any]]]:
    """The results without raw samples (they belong in plots, not in the JSON file)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for suite, rows in results.items():
        out[suite] = []
        for row in rows:
            copy: dict[str, Any] = dict(row)
            if "data" in row:
                copy["data"] = {k: v for k, v in row["data"].items() if k != SAMPLES_KEY}
            out[suite].append(copy)
    return out


def plot_results(results: dict[str, list[Row]], directory: str | Path) -> list[Path]:
    """Write the plots; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    from matplotlib import pyplot as plt

    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for suite, rows in results.items():
        with_samples = [r for r in rows if SAMPLES_KEY in r.get("data", {})]
        if with_samples:
            fig, ax = plt.subplots(figsize=(9, 5))
            for row in with_samples:
                samples = sorted(float(s) / 1e3 for s in row["data"][SAMPLES_KEY])
                n = len(samples)
                ax.step(samples, [(i + 1) / n for i in range(n)], where="post", label=row["name"])
            ax.set_xscale("log")
            ax.set_xlabel("latency per call (us, log scale)")
            ax.set_ylabel("fraction of calls <= x")
            ax.set_title(f"tiercache bench: {suite} latency distributions")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize="small")
            written.append(_save(fig, out_dir / f"{suite}-latency.png"))
            plt.close(fig)
        compared = [r for r in rows if {"ours_ns", "theirs_ns"} <= r.get("data", {}).keys()]
        if compared:
            fig, ax = plt.subplots(figsize=(9, 0.6 * len(compared) + 1.5))
            labels = [r["name"] for r in compared]
            ys = range(len(compared))
            ax.barh([y + 0.2 for y in ys], [r["data"]["theirs_ns"] for r in compared],
                    height=0.4, label="baseline / peer", color="#bbbbbb")
            ax.barh([y - 0.2 for y in ys], [r["data"]["ours_ns"] for r in compared],
                    height=0.4, label="tiercache", color="#2a7ab9")
            for y, row in zip(ys, compared, strict=True):
                ours, theirs = row["data"]["ours_ns"], row["data"]["theirs_ns"]
                text = f"{theirs / ours:.1f}x faster" if ours <= theirs else f"{ours / theirs:.2f}x"
                ax.annotate(text, (ours, y - 0.2), xytext=(4, 0), textcoords="offset points",
                            va="center", fontsize="small")
            ax.set_yticks(list(ys), labels, fontsize="small")
            ax.set_xscale("log")
            smallest = min(min(r["data"]["ours_ns"], r["data"]["theirs_ns"]) for r in compared)
            ax.set_xlim(left=smallest / 4)
            ax.set_xlabel("ns per operation (log scale)")
            ax.set_title(f"tiercache bench: {suite}")
            ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2)
            written.append(_save(fig, out_dir / f"{suite}-compare.png"))
            plt.close(fig)
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
