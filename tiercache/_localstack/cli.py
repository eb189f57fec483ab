"""``tiercache local up|down``: a LocalStack that lives until Ctrl-C or ``local down``.

``up`` writes a state file (pid, URLs, server pids) so that ``down``, run from another shell,
can find it, signal it and wait until every server is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from tiercache._localstack.env import export_lines
from tiercache._localstack.procs import LocalStackError, pid_alive, start_ticks

STATE_NAME = "tiercache-local.json"


def state_path() -> Path:
    """Per-user runtime dir when there is one (it is private), else the temp dir."""
    return Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / STATE_NAME


def _read_state() -> dict[str, Any] | None:
    """The state file ``up`` wrote, if it is there and ours.

    A file owned by another user is ignored: without XDG_RUNTIME_DIR it lives in the shared
    temp dir, and ``down`` signals the pids and deletes the directory it names.
    """
    path = state_path()
    try:
        if path.stat().st_uid != os.geteuid():
            return None
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_state(data: dict[str, Any]) -> None:
    path = state_path()
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # DSNs carry a password
    os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a leftover file of that name
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)


def _owner_alive(state: dict[str, Any]) -> bool:
    """Is the ``up`` process that wrote *state* still running?

    Not just "is its pid alive": after an unclean exit the pid may belong to another process
    by now, which ``down`` must not signal and ``up`` must not take for a running stack.
    """
    pid = int(state.get("pid", -1))
    if not pid_alive(pid):
        return False
    recorded = state.get("pid_start")  # absent in state files written by older versions
    return recorded is None or start_ticks(pid) == recorded


def _server_pids(state: dict[str, Any]) -> list[int]:
    pids = state.get("pids") or {}
    redis = [int(p) for p in pids.get("redis", [])]
    return redis + [int(p) for p in (pids.get("postgres") or {}).values()]


def cli_up(as_json: bool, redis_masters: int, redis_replicas: int, pg_shards: int) -> int:
    """Start a stack, print its addresses, and keep it up until SIGINT/SIGTERM; exit code."""
    from rich.console import Console

    from tiercache.local import LocalStack

    err = Console(stderr=True)
    existing = _read_state()
    if existing is not None and _owner_alive(existing):
        err.print(f"[red]a local stack is already running (pid {existing['pid']}); "
                  "stop it with `tiercache local down`[/red]")
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def progress(message: str) -> None:
        err.print(f"[dim]{message}[/dim]", highlight=False)

    stack = LocalStack(redis_masters=redis_masters, redis_replicas=redis_replicas,
                       pg_shards=pg_shards, progress=progress)
    try:
        try:
            stack.start()
        except LocalStackError as exc:
            err.print(f"[red]could not start the local stack:[/red] {exc}", highlight=False)
            return 1
        info = stack.describe()
        _write_state({"pid": os.getpid(), "pid_start": start_ticks(os.getpid()),
                      "started_at": time.time(), **info})
        if as_json:
            sys.stdout.write(json.dumps({**info, "state_file": str(state_path())}) + "\n")
        else:
            sys.stdout.write("".join(line + "\n" for line in describe_lines(info, state_path())))
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
        err.print("stopping...")
        return 0
    finally:
        stack.stop()
        state = _read_state()
        if state is not None and state.get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                state_path().unlink()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def describe_lines(info: dict[str, Any], state_file: Path) -> list[str]:
    """What ``up`` prints: every address in full, one per line (plain text, never wrapped:
    a terminal-width table cut the DSNs before their port)."""
    rows: list[tuple[str, str]] = []
    if info.get("redis_url"):
        rows.append(("redis cluster", info["redis_url"]))
        rows += [("  master", f"{host}:{port}") for host, port in info.get("redis_nodes", [])]
        rows += [("  replica", f"{host}:{port}") for host, port in info.get("redis_replicas", [])]
    rows += [(f"postgres {name}", dsn) for name, dsn in info.get("pg_dsns", {}).items()]
    for kind, desc in info.get("binaries", {}).items():
        where = desc.get("server") or desc.get("bindir")
        rows.append((f"{kind} binaries", f"{where} ({desc['source']})"))
    rows.append(("temp dir", str(info["temp_dir"])))
    rows.append(("state file", f"{state_file} (mode 0600: it holds the DSNs; "
                               "`tiercache local down` reads it)"))
    width = max(len(label) for label, _ in rows) + 2
    lines = [f"tiercache local stack, up in {info['startup_seconds']:.1f}s "
             "(Ctrl-C or `tiercache local down` to stop)"]
    lines += [f"{label + ':':<{width}}{value}" for label, value in rows]
    exports = export_lines(info.get("redis_url"), info.get("pg_dsns", {}))
    if exports:
        lines += ["", "point the tiercache pytest fixtures and README examples at it:",
                  *(f"  {line}" for line in exports)]
    return lines


def _is_our_server(pid: int) -> bool:
    """Guard against pid reuse before SIGKILLing a leftover."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"redis-server" in cmd or b"postgres" in cmd


def cli_down(timeout: float = 30.0) -> int:
    """Stop the stack ``up`` started (from any shell) and clean up after it; exit code."""
    state = _read_state()
    if state is None:
        print(f"no local stack is running (no state file {state_path()})")
        return 0
    pid = int(state.get("pid", -1))
    servers = _server_pids(state)
    if _owner_alive(state):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while (_owner_alive(state) or any(pid_alive(p) for p in servers)) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    leftovers = [p for p in servers if pid_alive(p) and _is_our_server(p)]
    for leftover in leftovers:  # `up` died uncleanly: its PDEATHSIG should have done this
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(leftover, signal.SIGKILL)
    temp_dir = state.get("temp_dir")
    if temp_dir and Path(temp_dir).name.startswith("tiercache-"):
        shutil.rmtree(temp_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        state_path().unlink()
    if _owner_alive(state):
        print(f"local stack process {pid} did not exit", file=sys.stderr)
        return 1
    print(f"local stack (pid {pid}) stopped")
    return 0
