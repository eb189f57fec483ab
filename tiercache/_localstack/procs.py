"""Process plumbing shared by the Redis and Postgres halves of the local stack.

Servers must never outlive the Python process that started them, even when it is SIGKILLed:
each server is started in its own process group with ``PR_SET_PDEATHSIG``.  The kernel sends
that signal when the *thread* that forked the child exits, so every long-lived server is
spawned from one dedicated daemon thread that lives as long as the process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

_PR_SET_PDEATHSIG = 1


class LocalStackError(RuntimeError):
    """A local server could not be started or stopped."""


def _set_pdeathsig() -> None:
    """Run in the child (after any setuid, which would clear it): die with the parent."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass(frozen=True)
class RunAs:
    """The unprivileged account servers run under when we are root (Postgres demands it)."""

    user: str
    uid: int
    gid: int


def unprivileged_user() -> RunAs | None:
    """Return the account to drop to when running as root, creating one if needed."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "tiercache"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return RunAs(name, entry.pw_uid, entry.pw_gid)
    try:
        made = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             "tiercache"],
            capture_output=True, text=True,
        )
    except OSError as exc:
        raise LocalStackError(f"running as root and no 'tiercache' user: {exc}") from exc
    # A non-zero exit is fine when a concurrent process created the account first.
    try:
        entry = pwd.getpwnam("tiercache")
    except KeyError:
        raise LocalStackError(
            f"running as root and could not create user 'tiercache' for Postgres "
            f"(useradd exit {made.returncode}): {made.stderr.strip()}"
        ) from None
    return RunAs("tiercache", entry.pw_uid, entry.pw_gid)


def _popen_kwargs(run_as: RunAs | None) -> dict[str, Any]:
    if run_as is None:
        return {}
    return {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}


def run_tool(
    argv: Sequence[str], *, run_as: RunAs | None, env: Mapping[str, str] | None = None,
    stdin: str | None = None, timeout: float = 60.0,
) -> str:
    """Run a short-lived tool (initdb, single-user postgres) and return its output.

    Every failure -- non-zero exit, timeout, missing binary -- is a :class:`LocalStackError`,
    the one error the CLI and fixtures report cleanly.
    """
    tool = Path(argv[0]).name
    try:
        proc = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=timeout,
            env=dict(env) if env is not None else None, **_popen_kwargs(run_as),
        )
    except subprocess.TimeoutExpired as exc:
        raise LocalStackError(f"{tool} did not finish within {timeout:.0f}s") from exc
    except OSError as exc:
        raise LocalStackError(f"{tool} could not be run: {exc}") from exc
    if proc.returncode != 0:
        raise LocalStackError(
            f"{tool} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
        )
    return str(proc.stdout)


class _Spawner:
    """Owns the long-lived thread every server is forked from (see module docstring).

    Jobs are :class:`~concurrent.futures.Future` pairs: a caller that gives up waiting
    cancels its future, and the thread skips cancelled jobs, so a late job cannot start a
    server that nobody holds a handle to.
    """

    _TIMEOUT = 30.0

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], subprocess.Popen[bytes]],
                                      Future[subprocess.Popen[bytes]]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _loop(self) -> None:
        while True:
            make, fut = self._jobs.get()
            if not fut.set_running_or_notify_cancel():
                continue  # the caller timed out and cancelled it
            try:
                fut.set_result(make())
            except BaseException as exc:  # handed to the caller's thread
                fut.set_exception(exc)

    def spawn(self, make: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="tiercache-localstack-spawner", daemon=True
                )
                self._thread.start()
        fut: Future[subprocess.Popen[bytes]] = Future()
        self._jobs.put((make, fut))
        try:
            return fut.result(timeout=self._TIMEOUT)
        except TimeoutError:
            if fut.cancel():
                raise LocalStackError(
                    f"the server spawner thread did not take the job within {self._TIMEOUT:.0f}s"
                ) from None
            return fut.result()  # already running: Popen itself is quick, take its result


_SPAWNER = _Spawner()


def spawn_server(
    argv: Sequence[str], *, log_path: Path, run_as: RunAs | None,
    env: Mapping[str, str] | None = None, cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a server in its own process group, tied to our life by PDEATHSIG."""
    def make() -> subprocess.Popen[bytes]:
        log: IO[bytes]
        with open(log_path, "ab") as log:
            return subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None, cwd=cwd, process_group=0,
                preexec_fn=_set_pdeathsig, close_fds=True, **_popen_kwargs(run_as),
            )
    return _SPAWNER.spawn(make)


def _stat_fields(pid: int | str) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, or ``None`` if it is gone.

    Index 0 is the state (``Z`` for a zombie), 1 the parent pid, 2 the process group.  The
    command name is skipped by its *last* ``)``, since a name may itself contain one.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2:].split()


def _all_stat_fields() -> Iterator[tuple[int, list[bytes]]]:
    """``(pid, stat fields)`` of every process still there when its file is read."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(entry.name)
            if fields is not None and len(fields) > 2:
                yield int(entry.name), fields


def group_alive(pgid: int) -> bool:
    """True while any non-zombie process is in process group *pgid* (Linux /proc scan).

    Zombies are ignored: orphans are reaped by PID 1, which in containers may never happen.
    """
    return any(
        int(fields[2]) == pgid and fields[0] != b"Z" for _pid, fields in _all_stat_fields()
    )


def children(pid: int) -> list[int]:
    """Direct children of *pid* (Postgres backends setsid(), so killpg does not reach them)."""
    return [child for child, fields in _all_stat_fields() if int(fields[1]) == pid]


def pid_alive(pid: int) -> bool:
    """True if *pid* exists and is not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and len(fields) > 0 and fields[0] != b"Z"


def start_ticks(pid: int) -> int | None:
    """When *pid* started (clock ticks after boot), or ``None`` if it is gone.

    A pid plus its start time names one process for good: pids get reused, this pair does not.
    """
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    return int(fields[19])  # field 22 of stat; fields[0] is field 3


def stop_group(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """Send *sig* to the server's process group, escalate to SIGKILL, wait until all are gone."""
    stop_groups([proc], sig, timeout)


def stop_groups(procs: Sequence[subprocess.Popen[bytes]], sig: int, timeout: float) -> None:
    """Signal every group first, then wait for all: parallel without threads (works at exit)."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
    deadline = time.monotonic() + timeout
    pending = list(procs)
    killed = False
    while pending:
        for proc in list(pending):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.01)
            if proc.returncode is not None and not group_alive(proc.pid):
                pending.remove(proc)
        if pending and time.monotonic() > deadline and not killed:
            killed = True
            for proc in pending:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        if pending and time.monotonic() > deadline + 10:
            raise LocalStackError(f"process groups {[p.pid for p in pending]} did not exit")


_ALLOCATED: set[int] = set()
_ALLOC_LOCK = threading.Lock()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, with_bus: bool = False) -> int:
    """A free loopback port not handed out before by this process.

    With ``with_bus`` port+10000 must be free too: Redis Cluster uses it for its node bus.
    """
    with _ALLOC_LOCK:
        for _ in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port in _ALLOCATED:
                continue
            if with_bus and (port + 10000 > 65535 or port + 10000 in _ALLOCATED
                             or not _bindable(port + 10000)):
                continue
            _ALLOCATED.add(port)
            if with_bus:
                _ALLOCATED.add(port + 10000)
            return port
    raise LocalStackError("no free loopback port found")


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               proc: subprocess.Popen[bytes] | None = None, log_path: Path | None = None,
               interval: float = 0.02) -> None:
    """Poll *check* until true; fail fast with the server log if the server died meanwhile.

    An exception from *check* means "not ready yet" (connection refused, still loading...);
    the last one is named in the timeout error, since it usually says why.
    """
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        try:
            if check():
                return
        except Exception as exc:
            last_error = f" (last check: {type(exc).__name__}: {exc})"
        if proc is not None and proc.poll() is not None:
            raise LocalStackError(f"{what}: server exited with {proc.returncode}"
                                  + log_tail(log_path))
        if time.monotonic() > deadline:
            raise LocalStackError(f"timed out after {timeout:.0f}s waiting for {what}"
                                  + last_error + log_tail(log_path))
        time.sleep(interval)


def log_tail(path: Path | None, lines: int = 20) -> str:
    """The last *lines* of a server log, formatted to append to an error ("" if unreadable)."""
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"\n--- {path} ---\n" + "\n".join(text)
