"""Every ```python block of README.md runs as written, in a fresh interpreter, on real servers.

Each block is saved as its own script (padded so traceback line numbers are README.md's) and
run with ``sys.executable`` in an empty temp dir, with ``$TIERCACHE_REDIS_URL`` /
``$TIERCACHE_PG_DSNS`` pointing at the session's stack. Blocks that need servers all start with
the same idiom (checked here), which falls back to a throw-away LocalStack when the variables
are unset; one such block also runs that way, so the fallback is exercised as a user meets it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tiercache.local import OWNER_FILE, TEMP_PREFIX, base_dir
from tiercache.testing import PG_DSNS_ENV, REDIS_URL_ENV

README = Path(__file__).resolve().parents[1] / "README.md"
SHAPE_ONLY = "# shape only: not run"
MAX_SHAPE_ONLY = 2  # blocks that only show an API's shape are the exception
BLOCK_TIMEOUT = 90.0  # seconds; a block that needs more is not a README example
FALLBACK_TIMEOUT = 150.0  # the block also starts a Redis Cluster and Postgres shards itself
FALLBACK_BLOCK = "your-first-cached-service"  # needs both Redis and Postgres

#: How every block that needs servers gets them (identical text, so one fallback run covers all).
IDIOM = '''\
import json, os
from tiercache.local import LocalStack

url, dsns = os.environ.get("TIERCACHE_REDIS_URL"), os.environ.get("TIERCACHE_PG_DSNS")
stack = None if url and dsns else LocalStack().start()  # unset: throw-away local servers
redis_url = url or stack.redis_url
pg_dsns = json.loads(dsns) if dsns else stack.pg_dsns
'''


@dataclass(frozen=True)
class Block:
    """One ```python block: the heading above it, its first line in README.md, its code."""

    id: str
    heading: str
    line: int
    code: str

    @property
    def shape_only(self) -> bool:
        return self.code.lstrip().startswith(SHAPE_ONLY)

    @property
    def needs_servers(self) -> bool:
        """Uses the idiom's names or variables (``stack.redis_url`` of its own stack is not)."""
        return bool(re.search(r"(?<![.\w])(redis_url|pg_dsns)\b|TIERCACHE_(REDIS_URL|PG_DSNS)",
                              self.code))

    def script(self) -> str:
        """The code, preceded by blank lines so that line N of the script is README line N."""
        return "\n" * (self.line - 1) + self.code


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")[:48].rstrip("-") or "top"


def readme_blocks(text: str) -> list[Block]:
    """The python blocks of a Markdown text, with ids from their headings (made unique)."""
    blocks: list[Block] = []
    seen: dict[str, int] = {}
    heading, fence, start = "top", None, 0
    body: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if fence is None:
            if line.startswith("```"):
                fence, start, body = line[3:].strip(), number + 1, []
            elif re.match(r"#{1,6} ", line):
                heading = line.lstrip("#").strip()
            continue
        if line.strip() != "```":
            body.append(line)
            continue
        if fence == "python":
            slug = _slug(heading)
            seen[slug] = seen.get(slug, 0) + 1
            block_id = slug if seen[slug] == 1 else f"{slug}-{seen[slug]}"
            blocks.append(Block(block_id, heading, start, "\n".join(body) + "\n"))
        fence = None
    if fence is not None:
        raise ValueError(f"README.md: the ``` fence opened on line {start - 1} never closes")
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
RUNNABLE = [b for b in BLOCKS if not b.shape_only]
SERVER_BLOCKS = [b for b in RUNNABLE if b.needs_servers]


def _env(redis_url: str | None, pg_dsns: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (REDIS_URL_ENV, PG_DSNS_ENV)}
    if redis_url is not None:
        env[REDIS_URL_ENV] = redis_url
    if pg_dsns is not None:
        env[PG_DSNS_ENV] = json.dumps(pg_dsns)
    return env


def _stacks_owned_by(pid: int) -> list[Path]:
    """LocalStack temp dirs whose owner file names ``pid`` (left behind if any exist)."""
    found = []
    for path in Path(base_dir()).glob(f"{TEMP_PREFIX}*"):
        try:
            if int((path / OWNER_FILE).read_text()) == pid:
                found.append(path)
        except (OSError, ValueError):
            continue
    return found


def run_block(block: Block, cwd: Path, env: dict[str, str], timeout: float) -> int:
    """Run ``block`` as a script in a fresh interpreter; fail the test with its output.

    Returns the child's pid (to look for what it may have left behind).
    """
    script = cwd / f"readme_{block.id.replace('-', '_')}.py"
    script.write_text(block.script(), encoding="utf-8")
    where = f"README.md block under {block.heading!r} (line {block.line})"
    proc = subprocess.Popen([sys.executable, str(script)], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # its LocalStack servers die with it (PDEATHSIG)
        out, err = proc.communicate()
        pytest.fail(f"{where} ran over {timeout:.0f}s\n--- stdout\n{out[-3000:]}\n"
                    f"--- stderr\n{err[-3000:]}")
    report = f"--- stdout\n{out[-3000:]}\n--- stderr (line numbers are README.md's)\n{err[-6000:]}"
    if proc.returncode != 0:
        pytest.fail(f"{where} exited with status {proc.returncode}\n{report}")
    if err.strip():  # a warning (e.g. "not stored in L2"), a task's traceback, "Unclosed ..."
        pytest.fail(f"{where} exited 0 but wrote to stderr: an example must run cleanly\n"
                    f"{report}")
    return proc.pid


def test_readme_has_runnable_blocks() -> None:
    """The parser found the README's examples, and only a few are marked as shapes."""
    assert len(BLOCKS) >= 5, [b.id for b in BLOCKS]
    shapes = [b.id for b in BLOCKS if b.shape_only]
    assert len(shapes) <= MAX_SHAPE_ONLY, f"too many blocks marked {SHAPE_ONLY!r}: {shapes}"
    assert FALLBACK_BLOCK in [b.id for b in SERVER_BLOCKS], [b.id for b in BLOCKS]


def test_server_blocks_share_one_idiom() -> None:
    """Every block that needs servers gets them the same way (so one fallback run covers all)."""
    odd = [b.id for b in SERVER_BLOCKS if IDIOM not in b.code]
    assert not odd, f"blocks that need servers but do not start with the README idiom: {odd}"


def test_readme_parser() -> None:
    """Headings inside code are not headings; non-python fences are skipped; ids are unique."""
    text = ("# A\n```sh\nmake\n```\n```python\nx = 1\n# not a heading\n```\n"
            "## A\n```python\ny = 2\n```\n")
    blocks = readme_blocks(text)
    assert [(b.id, b.line, b.code) for b in blocks] == [("a", 6, "x = 1\n# not a heading\n"),
                                                         ("a-2", 11, "y = 2\n")]
    assert blocks[0].script().splitlines()[5] == "x = 1"
    with pytest.raises(ValueError, match="never closes"):
        readme_blocks("```python\nx = 1\n")


def test_blocks_have_no_undefined_or_unused_names(tmp_path: Path) -> None:
    """pyflakes' rules (ruff ``F``) over every block: also the lines a run does not reach."""
    pytest.importorskip("ruff")
    for block in BLOCKS:
        (tmp_path / f"readme_{block.id.replace('-', '_')}.py").write_text(block.script())
    found = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated", "--select", "F,E9",
         "--output-format", "concise", str(tmp_path)],
        capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, ("README.md blocks (line numbers are README.md's):\n"
                                   f"{found.stdout}{found.stderr}")


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_block_runs_on_the_test_stack(block: Block, tiercache_stack: Any,
                                      redis_cluster_client: Any, tmp_path: Path) -> None:
    """The block runs as written with the two variables set (on a flushed cluster)."""
    run_block(block, tmp_path, _env(tiercache_stack.redis_url, tiercache_stack.pg_dsns),
              BLOCK_TIMEOUT)


@pytest.mark.timeout(FALLBACK_TIMEOUT + 30)
def test_block_falls_back_to_a_local_stack(tmp_path: Path) -> None:
    """With neither variable set the block starts its own servers, and leaves none behind.

    One block (it needs Redis and Postgres): the others share its idiom verbatim (checked
    above), and each more run would start one more stack (~5 s idle, ~15 s on a busy box).
    """
    block = next(b for b in SERVER_BLOCKS if b.id == FALLBACK_BLOCK)
    pid = run_block(block, tmp_path, _env(None, None), FALLBACK_TIMEOUT)
    assert _stacks_owned_by(pid) == []


def test_run_block_reports_failures_with_readme_lines(tmp_path: Path) -> None:
    """A failing block fails the test naming its README line; stderr output alone fails it too."""
    env = _env(None, None)
    run_block(Block("ok", "ok", 3, "x = 1\n"), tmp_path, env, BLOCK_TIMEOUT)
    with pytest.raises(pytest.fail.Exception, match=r'(?s)status 1.*line 41, in <module>'):
        run_block(Block("bad", "bad", 40, "x = 1\nassert x == 2\n"), tmp_path, env, BLOCK_TIMEOUT)
    with pytest.raises(pytest.fail.Exception, match="wrote to stderr"):
        run_block(Block("noisy", "noisy", 1, "import logging\nlogging.warning('not stored')\n"),
                  tmp_path, env, BLOCK_TIMEOUT)
