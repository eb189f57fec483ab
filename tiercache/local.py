"""LocalStack: a Redis Cluster and N Postgres shard servers on loopback, in a temp dir.

It backs the pytest fixtures (:mod:`tiercache.testing`), ``tiercache local up`` and
``tiercache bench`` when no URLs are given, so that a fresh machine needs nothing but the
pip-installable binaries.  Servers never outlive the process that started them: ``stop()``,
``atexit``, SIGTERM/SIGINT handlers and ``PR_SET_PDEATHSIG`` (for SIGKILL of the parent).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from tiercache._localstack.binaries import (
    PgBinaries,
    RedisBinaries,
    find_postgres,
    find_redis,
    server_version,
)
from tiercache._localstack.binaries import for_user as binaries_for_user
from tiercache._localstack.cli import cli_down, cli_up
from tiercache._localstack.env import PG_DSNS_ENV, REDIS_URL_ENV, parse_pg_dsns
from tiercache._localstack.postgres import PostgresServers, drop_sysv_segment
from tiercache._localstack.procs import LocalStackError, pid_alive, unprivileged_user
from tiercache._localstack.redis_cluster import RedisClusterServers

__all__ = [
    "PG_DSNS_ENV", "REDIS_URL_ENV", "LocalStack", "LocalStackError", "cli_down", "cli_up",
    "parse_pg_dsns", "reap_stale_stacks",
]

log = logging.getLogger("tiercache.local")

#: Stack temp dirs are ``<base_dir()>/tiercache-XXXX``; ``owner.pid`` inside names the process
#: that owns it, so :func:`reap_stale_stacks` can tell a live stack from a SIGKILLed one's.
TEMP_PREFIX = "tiercache-"
OWNER_FILE = "owner.pid"
TMPDIR_ENV = "TIERCACHE_TMPDIR"


class LocalStack:
    """Start/stop a throw-away Redis Cluster + Postgres shards; usable as a context manager.

    ``redis_masters=0`` or ``pg_shards=0`` leaves that half out (e.g. when the other half is
    provided externally).
    """

    def __init__(self, redis_masters: int = 3, redis_replicas: int = 0, pg_shards: int = 3,
                 progress: Callable[[str], None] | None = None) -> None:
        if redis_masters < 0 or redis_replicas < 0 or pg_shards < 0:
            raise ValueError("counts must be >= 0")
        self.redis_masters = redis_masters
        self.redis_replicas = redis_replicas
        self.pg_shards = pg_shards
        self._progress = progress
        self._lock = threading.RLock()
        self._tmp: Path | None = None
        self._redis: RedisClusterServers | None = None
        self._pg: PostgresServers | None = None
        self._redis_bins: RedisBinaries | None = None
        self._pg_bins: PgBinaries | None = None
        self._password = secrets.token_urlsafe(18)
        self.startup_seconds: float | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def _say(self, message: str) -> None:
        log.info("%s", message)
        if self._progress is not None:
            self._progress(message)

    def start(self) -> LocalStack:
        """Start the servers (both halves in parallel); returns once every one is ready.

        On any failure whatever did start is stopped again before the error propagates.
        """
        with self._lock:
            if self._tmp is not None:
                raise LocalStackError("LocalStack already started")
            began = time.monotonic()
            if self.redis_masters:
                self._redis_bins = find_redis()
                self._say(f"redis-server: {self._redis_bins.server} "
                          f"(from {self._redis_bins.source})")
            run_as = unprivileged_user() if self.pg_shards else None
            if self.pg_shards:
                self._pg_bins = find_postgres()
                if run_as is not None:
                    self._pg_bins = binaries_for_user(self._pg_bins, run_as.uid, run_as.gid)
                self._say(f"postgres: {self._pg_bins.bindir} (from {self._pg_bins.source})")
            reap_stale_stacks()
            self._tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=base_dir()))
            _register(self)
            try:  # from here on a failure must stop what started and remove the temp dir
                (self._tmp / OWNER_FILE).write_text(str(os.getpid()))
                if run_as is not None:
                    self._tmp.chmod(0o755)  # the unprivileged postgres user must traverse it
                    self._say(f"running as root: postgres runs as user {run_as.user!r}")
                if self._redis_bins is not None:
                    self._redis = RedisClusterServers(self._redis_bins, self._tmp,
                                                      self.redis_masters, self.redis_replicas)
                if self._pg_bins is not None:
                    self._pg = PostgresServers(self._pg_bins, self._tmp, self.pg_shards, run_as,
                                               self._password)
                starters = [h.start for h in (self._redis, self._pg) if h is not None]
                with ThreadPoolExecutor(max_workers=2) as pool:
                    for fut in [pool.submit(start, self._say) for start in starters]:
                        fut.result()
            except BaseException:
                self.stop()
                raise
            self.startup_seconds = time.monotonic() - began
            self._say(f"local stack up in {self.startup_seconds:.2f}s ({self._tmp})")
            return self

    def stop(self) -> None:
        """Stop every server and delete the temp dir; idempotent, safe at interpreter exit."""
        with self._lock:
            errors: list[BaseException] = []
            for half in (self._redis, self._pg):
                if half is None:
                    continue
                try:
                    half.stop()
                except Exception as exc:  # keep going: the other half must stop too
                    errors.append(exc)
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                log.info("local stack stopped, %s removed", self._tmp)
            self._tmp = None
            _LIVE.discard(self)
            if errors:
                raise LocalStackError(f"errors while stopping: {errors}")

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Between a successful :meth:`start` and :meth:`stop`."""
        return self._tmp is not None

    # -- addresses -----------------------------------------------------------------------------

    def _redis_servers(self) -> RedisClusterServers:
        if self._redis is None:
            raise LocalStackError("this LocalStack has no running Redis")
        return self._redis

    def _pg_servers(self) -> PostgresServers:
        if self._pg is None:
            raise LocalStackError("this LocalStack has no running Postgres")
        return self._pg

    @property
    def temp_dir(self) -> Path:
        """The directory holding every server's data, config and log (removed by stop())."""
        if self._tmp is None:
            raise LocalStackError("LocalStack is not running")
        return self._tmp

    @property
    def redis_url(self) -> str:
        """URL of one cluster node; cluster clients discover the rest from it."""
        return f"redis://127.0.0.1:{self._redis_servers().nodes[0].port}"

    @property
    def redis_nodes(self) -> list[tuple[str, int]]:
        """The masters as started (a failover may promote replicas later)."""
        return [("127.0.0.1", n.port) for n in self._redis_servers().masters]

    @property
    def redis_all_nodes(self) -> list[tuple[str, int]]:
        """Masters then replicas; the index used by kill/restart_redis_node."""
        return [("127.0.0.1", n.port) for n in self._redis_servers().nodes]

    @property
    def pg_dsns(self) -> dict[str, str]:
        """``{shard name: DSN}``; the DSNs carry the password, so keep them out of logs."""
        pg = self._pg_servers()
        return {name: pg.dsn(name) for name in pg.shards}

    @property
    def pids(self) -> list[int]:
        """Every server's pid (also the id of its process group)."""
        out = list(self._redis.pids()) if self._redis else []
        return out + (list(self._pg.pids().values()) if self._pg else [])

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for the CLI and bug reports; includes passwords (the DSNs)."""
        out: dict[str, Any] = {"temp_dir": str(self._tmp) if self._tmp else None,
                               "startup_seconds": self.startup_seconds, "binaries": {}}
        if self._redis is not None and self._redis_bins is not None:
            bins = self._redis_bins
            out["redis_url"] = self.redis_url
            out["redis_nodes"] = [list(n) for n in self.redis_nodes]
            out["redis_replicas"] = [["127.0.0.1", n.port] for n in self._redis.nodes
                                     if n.replica_of is not None]
            out["binaries"]["redis"] = {"server": str(bins.server),
                                        "cli": str(bins.cli) if bins.cli else None,
                                        "source": bins.source,
                                        "version": server_version(bins.server)}
            out.setdefault("pids", {})["redis"] = self._redis.pids()
        if self._pg is not None and self._pg_bins is not None:
            out["pg_dsns"] = self.pg_dsns
            out["binaries"]["postgres"] = {
                "bindir": str(self._pg_bins.bindir), "source": self._pg_bins.source,
                "version": server_version(self._pg_bins.tool("postgres"), self._pg_bins.env)}
            out.setdefault("pids", {})["postgres"] = self._pg.pids()
        return out

    def __repr__(self) -> str:  # never the DSNs: they carry the password
        state = "running" if self.running else "stopped"
        return (f"<LocalStack {state} redis_masters={self.redis_masters} "
                f"redis_replicas={self.redis_replicas} pg_shards={self.pg_shards}"
                f"{f' dir={self._tmp}' if self._tmp else ''}>")

    # -- fault injection for reliability tests -------------------------------------------------

    def kill_redis_node(self, index: int) -> None:
        """SIGKILL one redis-server (index into :attr:`redis_all_nodes`)."""
        self._redis_servers().kill(index)

    def restart_redis_node(self, index: int, timeout: float = 30.0) -> None:
        """Restart a killed node on its port and nodes.conf; returns once cluster_state is ok."""
        self._redis_servers().restart(index, timeout)

    def kill_pg_shard(self, name: str) -> None:
        """SIGKILL a shard's postmaster and all its backends."""
        self._pg_servers().kill(name)

    def restart_pg_shard(self, name: str, timeout: float = 30.0) -> None:
        """Restart a killed shard on the same port and data; returns once it accepts queries."""
        self._pg_servers().restart(name, timeout)


# -- never leave servers behind ------------------------------------------------------------------


def base_dir() -> str:
    """Where stacks live: ``$TIERCACHE_TMPDIR``, else tmpfs (/dev/shm), else the temp dir.

    tmpfs matters: copying the Postgres template and initdb are write-heavy, and on a loaded
    or virtualised disk that costs seconds where tmpfs costs milliseconds.
    """
    if env := os.environ.get(TMPDIR_ENV):
        return env
    shm = "/dev/shm"
    try:
        st = os.statvfs(shm)
        if os.access(shm, os.W_OK | os.X_OK) and st.f_bavail * st.f_frsize >= 1 << 30:
            return shm
    except OSError:
        pass
    return tempfile.gettempdir()


def reap_stale_stacks() -> list[Path]:
    """Remove what SIGKILLed owners left: temp dirs and Postgres SysV segments.

    PDEATHSIG kills the servers, but nobody is left to delete their files; the next stack
    started by this user cleans up.  Only dirs we own whose owner process is gone are touched.
    """
    reaped = []
    bases = {base_dir(), "/dev/shm", tempfile.gettempdir()}
    for path in (p for base in bases for p in Path(base).glob(f"{TEMP_PREFIX}*")):
        try:
            if path.stat().st_uid != os.geteuid():
                continue
            owner = int((path / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if pid_alive(owner):
            continue
        for data in path.glob("pg-*/data"):
            drop_sysv_segment(data)
        shutil.rmtree(path, ignore_errors=True)
        reaped.append(path)
        log.info("removed %s left by dead process %d", path, owner)
    return reaped


_LIVE: set[LocalStack] = set()
_INSTALLED = False
_INSTALL_LOCK = threading.Lock()


def _stop_all() -> None:
    """Stop every live stack (atexit and signal handlers); one failure does not stop the rest."""
    for stack in list(_LIVE):
        with contextlib.suppress(Exception):
            stack.stop()


def _on_signal(previous: Any, signum: int, frame: FrameType | None) -> None:
    """Stop the stacks, then behave as the handler we replaced would have."""
    if signum == signal.SIGINT and callable(previous):
        # usually KeyboardInterrupt: `with` blocks, fixtures and atexit stop the stacks
        previous(signum, frame)
        return
    _stop_all()
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _register(stack: LocalStack) -> None:
    """Track a starting stack; the first one installs the atexit and signal handlers."""
    global _INSTALLED
    _LIVE.add(stack)
    with _INSTALL_LOCK:
        if _INSTALLED:
            return
        _INSTALLED = True
        atexit.register(_stop_all)
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread; PDEATHSIG remains
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            signal.signal(sig, functools.partial(_on_signal, previous))
