"""N independent Postgres servers on loopback, one per shard, tuned for throw-away speed.

One ``initdb`` makes a template that is copied per shard; each copy then gets its own
``system_identifier`` (see :mod:`.pgcontrol`) so shards stay distinguishable as servers.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tiercache._localstack.binaries import PgBinaries
from tiercache._localstack.pgcontrol import set_system_identifier
from tiercache._localstack.procs import (
    LocalStackError,
    RunAs,
    children,
    free_port,
    pid_alive,
    run_tool,
    spawn_server,
    stop_group,
    stop_groups,
    wait_until,
)

log = logging.getLogger("tiercache.local")

ROLE = "tiercache"
DATABASE = "tiercache"

# fsync/full_page_writes off: nothing here has to survive an OS crash.  synchronous_commit stays
# on (it costs nothing without fsync) so a commit survives a SIGKILL of the server, which the
# kill/restart reliability tests rely on.
_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "on",
    "shared_buffers": "32MB",
    "max_connections": "200",
    "wal_level": "logical",  # change capture for the rebalancer
    "max_replication_slots": "10",
    "max_wal_senders": "10",
    "logging_collector": "off",
    "log_min_messages": "warning",
    # DSM segments as files in the data dir (not /dev/shm/PostgreSQL.*): a SIGKILLed server
    # then leaves nothing behind once its temp dir is removed.
    "dynamic_shared_memory_type": "mmap",
}


@dataclass
class PgShard:
    name: str
    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.dir / "sock"

    @property
    def log_path(self) -> Path:
        return self.dir / "postgres.log"


class PostgresServers:
    """The Postgres half of a LocalStack: one server (and data dir) per shard."""

    def __init__(self, binaries: PgBinaries, root: Path, shards: int, run_as: RunAs | None,
                 password: str) -> None:
        self.binaries = binaries
        self.root = root
        self.run_as = run_as
        self.password = password
        self.shards = {
            f"s{i}": PgShard(f"s{i}", free_port(), root / f"pg-s{i}") for i in range(1, shards + 1)
        }

    def _env(self) -> dict[str, str]:
        """Our environment minus the user's ``PG*`` settings, which would redirect the tools."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(self.binaries.env)
        env["LC_ALL"] = "C"
        return env

    def dsn(self, name: str) -> str:
        """The shard's connection URL (it carries the password: keep it out of logs)."""
        shard = self.shards[name]
        return f"postgresql://{ROLE}:{self.password}@127.0.0.1:{shard.port}/{DATABASE}"

    def _own(self, path: Path) -> None:
        if self.run_as is not None:
            os.chown(path, self.run_as.uid, self.run_as.gid)

    def _mkdir(self, path: Path) -> Path:
        path.mkdir(parents=True)
        self._own(path)
        return path

    def _initdb(self, workdir: Path, data: Path) -> None:
        """initdb with a password-protected superuser, then create the database offline."""
        pwfile = workdir / "pwfile"
        # 0600 from the first byte: when we run as root the stack dir is world-traversable.
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.password + "\n")
        self._own(pwfile)
        try:
            run_tool([str(self.binaries.tool("initdb")), "-D", str(data), "-N",
                      "-U", ROLE, f"--pwfile={pwfile}", "--auth-host=scram-sha-256",
                      "--auth-local=trust", "-E", "UTF8", "--locale=C",
                      "--wal-segsize=1"],  # 1 MB WAL segments: less to write and to copy
                     run_as=self.run_as, env=self._env())
        finally:
            pwfile.unlink()
        # single-user mode: no server start/stop round trip just to create a database
        run_tool([str(self.binaries.tool("postgres")), "--single", "-D", str(data),
                  "-c", "fsync=off", "template1"],
                 run_as=self.run_as, env=self._env(), stdin=f"CREATE DATABASE {DATABASE};\n")

    def _clone(self, template: Path, shard: PgShard) -> None:
        """Copy the template (as the server user, keeping modes) and give it its own id."""
        self._mkdir(shard.dir)
        self._mkdir(shard.socket_dir)
        run_tool(["cp", "-a", str(template), str(shard.data)], run_as=self.run_as)
        try:
            set_system_identifier(shard.data, (int(time.time()) << 32) | secrets.randbits(32))
        except (OSError, ValueError) as exc:  # unknown layout: pay for a real initdb instead
            log.warning("could not re-identify the clone for %s (%s); running initdb", shard.name,
                        exc)
            shutil.rmtree(shard.data)
            self._initdb(shard.dir, shard.data)

    def _argv(self, shard: PgShard) -> list[str]:
        argv = [str(self.binaries.tool("postgres")), "-D", str(shard.data), "-p", str(shard.port),
                "-c", f"unix_socket_directories={shard.socket_dir}"]
        for key, value in _SETTINGS.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def _ready(self, shard: PgShard) -> bool:
        # postmaster.pid line 8 is the server status; "ready" means accepting connections.
        # Line 1 must be our pid: a killed server leaves a stale file that also says "ready".
        lines = (shard.data / "postmaster.pid").read_text().splitlines()
        return (len(lines) >= 8 and shard.proc is not None
                and lines[0].strip() == str(shard.proc.pid) and lines[7].strip() == "ready")

    def _spawn(self, shard: PgShard) -> None:
        shard.proc = spawn_server(self._argv(shard), log_path=shard.log_path, run_as=self.run_as,
                                  env=self._env(), cwd=shard.dir)

    def _wait_ready(self, shard: PgShard, timeout: float) -> None:
        wait_until(lambda: self._ready(shard), timeout, f"postgres shard {shard.name}",
                   shard.proc, shard.log_path)

    def start(self, progress: Callable[[str], None]) -> None:
        """Create every shard's data dir and start the servers; returns once all accept."""
        # one initdb, then cheap copies: N initdbs in parallel are CPU-bound on small machines
        template_dir = self._mkdir(self.root / "pg-template")
        self._initdb(template_dir, template_dir / "data")
        progress("postgres: template cluster initialised")

        def clone(shard: PgShard) -> None:
            self._clone(template_dir / "data", shard)
        with ThreadPoolExecutor(max_workers=max(1, len(self.shards))) as pool:
            list(pool.map(clone, self.shards.values()))
        shutil.rmtree(template_dir)
        # servers are spawned by the long-lived spawner thread; readiness waits are cheap
        for shard in self.shards.values():
            self._spawn(shard)
        for shard in self.shards.values():
            self._wait_ready(shard, 30)
        progress(f"postgres: {len(self.shards)} shard servers ready")

    def kill(self, name: str) -> None:
        """SIGKILL a shard's postmaster and all its backends; :meth:`restart` brings it back."""
        shard = self._shard(name)
        if shard.proc is None:
            raise LocalStackError(f"postgres shard {name} is not running")
        # backends live in their own sessions: kill them too, as a host crash would, so the
        # restart does not find the old shared memory still attached
        backends = children(shard.proc.pid)
        stop_group(shard.proc, signal.SIGKILL, 10)
        for pid in backends:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not any(pid_alive(p) for p in backends), 10,
                   f"backends of shard {name} to exit")
        shard.proc = None
        drop_sysv_segment(shard.data)
        log.info("postgres shard %s (:%d) killed", name, shard.port)

    def restart(self, name: str, timeout: float = 30.0) -> None:
        """Start a killed shard on the same port and data directory (crash recovery runs)."""
        shard = self._shard(name)
        if shard.proc is not None:
            raise LocalStackError(f"postgres shard {name} is still running")
        self._spawn(shard)
        self._wait_ready(shard, timeout)
        log.info("postgres shard %s (:%d) restarted", name, shard.port)

    def stop(self) -> None:
        """Stop every running shard server.

        Immediate shutdown (SIGQUIT): the data dir is deleted next, so no checkpoint is needed.
        """
        running = [s for s in self.shards.values() if s.proc is not None]
        stop_groups([s.proc for s in running if s.proc is not None], signal.SIGQUIT, 10)
        for shard in running:
            shard.proc = None
            drop_sysv_segment(shard.data)

    def pids(self) -> dict[str, int]:
        return {n: s.proc.pid for n, s in self.shards.items() if s.proc is not None}

    def _shard(self, name: str) -> PgShard:
        try:
            return self.shards[name]
        except KeyError:
            have = sorted(self.shards)
            raise LocalStackError(f"no postgres shard {name!r}; have {have}") from None


def drop_sysv_segment(data: Path) -> None:
    """A killed postmaster leaves its small SysV segment behind; remove it (IPC_RMID)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        lines = (data / "postmaster.pid").read_text().splitlines()
        if pid_alive(int(lines[0])):
            return
        shmid = int(lines[6].split()[1])
        ctypes.CDLL(None, use_errno=True).shmctl(shmid, 0, None)
