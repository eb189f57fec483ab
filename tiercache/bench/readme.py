"""Render the README "Performance" section from one real run's JSON file.

    make bench                       # writes bench-results/results.json + PNGs
    cp bench-results/results.json docs/bench/results.json
    python -m tiercache.bench.readme docs/bench/results.json -o section.md \\
        --images docs/bench          # redraws the charts there, links them relative to -o

``section.md`` then replaces the README's "## Performance" section.

Every figure in the output comes from the JSON file (and every chart is redrawn from it), so
the README never shows a number that a command doesn't produce.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

from tiercache.bench.compare import headline

__all__ = ["main", "render"]

_MARK = {True: "met", False: "**missed**", None: ""}
VISIBLE_CHARTS = 2  # per suite; the rest go in a collapsed <details>


def _cell(text: Any) -> str:
    return str(text or "").replace("|", "\\|").replace("\n", " ")


def _machine(payload: dict[str, Any]) -> str:
    m, git, run = payload.get("machine", {}), payload.get("git", {}), payload.get("run", {})
    load = run.get("load") or {}
    flags = ", ".join(m.get("cpu_flags") or []) or "none of note"
    rev = (git.get("revision") or "unknown")[:10] + (" (local changes)" if git.get("dirty")
                                                      else "")
    when = m.get("date", "")
    load_text = (f"1-min load average {load['start']:.1f} at the start, max {load['max']:.1f} "
                 f"(mean {load['mean']:.1f}) on {load['cores']} cores"
                 if load.get("max") is not None else "load not sampled")
    v = payload.get("versions", {})
    peers = ", ".join(f"{k} {ver}" for k, ver in v.items() if ver and k != "tiercache")
    quick = " (`--quick`: fewer rounds, noisier)" if run.get("quick") else ""
    return (
        f"Measured on {m.get('cpu_model', '?')} ({m.get('cpu_count', '?')} cores, "
        f"{m.get('memory_gb', '?')} GB; vector flags: {flags}), {m.get('platform', '?')}, "
        f"Python {m.get('python', '?')}, tiercache {v.get('tiercache', '?')} "
        f"({m.get('implementation', '?')} build) at {rev}, {when}, in "
        f"{run.get('duration_s', '?')} s{quick}. During the run: {load_text}. Peers: {peers}."
    )


def _rows_table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| measurement | result | target | |", "|---|---|---|---|"]
    for row in rows:
        status = "peer n/a" if row.get("status") == "unavailable" else _MARK[row.get("ok")]
        out.append(f"| {_cell(row['name'])} | {_cell(row['summary'])} | "
                   f"{_cell(row.get('target'))} | {status} |")
    return out


def _images(paths: list[Path], suite: str, relative_to: Path) -> list[str]:
    mine = [p for p in paths if p.name.startswith(f"{suite}-")]
    links = [f"![{suite}: {p.stem}]({Path(os.path.relpath(p, relative_to)).as_posix()})"
             for p in mine]
    out = links[:VISIBLE_CHARTS]
    if len(links) > VISIBLE_CHARTS:
        out += ["", f"<details><summary>{len(links) - VISIBLE_CHARTS} more {suite} "
                    "charts</summary>", "", *links[VISIBLE_CHARTS:], "", "</details>"]
    return out


def render(payload: dict[str, Any], images: list[Path], relative_to: Path,
           source: str = "bench-results/results.json") -> str:
    """The markdown section (``## Performance``) for ``payload``."""
    summary = payload.get("summary", {})
    totals = summary.get("totals", {})
    lines = [
        "## Performance", "",
        f"<!-- generated from {Path(source).name} by `python -m tiercache.bench.readme` on "
        f"{dt.date.today().isoformat()}; do not edit by hand -->", "",
        _machine(payload), "",
        "Regenerate: `make bench && python -m tiercache.bench.readme "
        "bench-results/results.json -o <this file> --images <charts dir>`.", "",
        f"Targets met: {totals.get('met', 0)}, missed: {totals.get('missed', 0)}, "
        f"informational: {totals.get('info', 0)}, peers not measured: "
        f"{totals.get('unavailable', 0)}. Ratios are measured side by side in one run (the "
        "contenders interleaved), so they hold on a busy machine better than absolute times.",
    ]
    for miss in summary.get("missed", []):
        lines.append(f"- **missed** {miss['suite']} / {miss['name']}: {miss['summary']} "
                     f"(target {miss['target']})")
    if summary.get("not_built"):
        lines.append(f"- not built yet: {', '.join(summary['not_built'])}")
    for name, message in (summary.get("failed") or {}).items():
        lines.append(f"- suite {name} failed: {message}")
    for warning in summary.get("warnings", []):
        lines.append(f"- warning: {warning}")
    durations = payload.get("durations_s", {})
    for suite, rows in payload.get("results", {}).items():
        judged = [r for r in rows if headline(r) is not None or r.get("ok") is not None]
        took = f" ({durations[suite]:.0f} s)" if suite in durations else ""
        lines += ["", f"### {suite}{took}", "", *_rows_table(judged or rows), ""]
        lines += _images(images, suite, relative_to)
    return "\n".join(lines).rstrip() + "\n"


def replace_section(document: str, section: str) -> str:
    """``document`` with its ``## Performance`` section (up to the next ``## `` heading)
    replaced by ``section``; ``ValueError`` when it has none."""
    start = document.find("\n## Performance\n")
    if start < 0:
        raise ValueError("no '## Performance' section to replace")
    end = document.find("\n## ", start + 1)
    rest = document[end + 1:] if end >= 0 else ""
    return document[:start + 1] + section + ("\n" + rest if rest else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tiercache.bench.readme",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="a `tiercache bench --json` file")
    parser.add_argument("-o", "--output", help="markdown file to write (default: stdout)")
    parser.add_argument("--images", help="directory to (re)draw the PNG charts into "
                                         "(default: next to the JSON file)")
    parser.add_argument("--readme", help="a README whose '## Performance' section is "
                                         "replaced in place by the generated one")
    args = parser.parse_args(argv)
    payload = json.loads(Path(args.results).read_text(encoding="utf-8"))
    out = Path(args.output) if args.output else Path(args.readme) if args.readme else None
    image_dir = Path(args.images) if args.images else Path(args.results).parent
    try:
        from tiercache.bench.plots import plot_payload

        images = plot_payload(payload, image_dir)
    except ImportError:
        images = []
    text = render(payload, images, (out.parent if out else Path.cwd()).resolve(),
                  source=args.results)
    if out is None:
        sys.stdout.write(text)
    elif args.readme and not args.output:
        out.write_text(replace_section(out.read_text(encoding="utf-8"), text), encoding="utf-8")
        print(f"replaced the Performance section of {out} ({len(images)} charts in "
              f"{image_dir})")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out} ({len(images)} charts in {image_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
