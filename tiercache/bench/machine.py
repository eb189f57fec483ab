"""What a figure depends on: CPU (model, cores, vector flags), versions, git revision, load.

A ratio measured on AVX-512 is not one measured on AVX2 alone, and a run on a box with a load
average above its core count is noisy: both go into the JSON file and the summary.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["PEERS", "LoadSampler", "git_revision", "machine_info", "versions"]

#: CPU flags that change the speed of hashing / memcpy / ring lookups.
FLAGS_THAT_MATTER = ("sse4_2", "avx", "avx2", "bmi2", "fma", "aes", "sha_ni", "avx512f",
                     "avx512bw", "avx512vl", "avx512dq", "avx512_vbmi2", "neon", "asimd")
#: Distributions whose version goes with the figures (peers and the clients under test).
PEERS = ("tiercache", "redis", "hiredis", "asyncpg", "msgpack", "cachetools", "cachebox",
         "theine", "cashews", "aiocache", "cacheme", "uhashring", "matplotlib", "rich")


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return model, []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key in ("flags", "Features"):
            flags |= set(value.split())
    return model, [f for f in FLAGS_THAT_MATTER if f in flags]


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def versions() -> dict[str, str | None]:
    """Installed version of tiercache and each peer (None: not installed)."""
    out: dict[str, str | None] = {}
    for name in PEERS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision() -> dict[str, Any]:
    """The commit the package was run from (and whether the tree had local changes)."""
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "tiercache"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}
    return {"revision": rev, "dirty": bool(dirty)}


def machine_info() -> dict[str, Any]:
    from tiercache._impl import implementation

    model, flags = _cpuinfo()
    return {
        "python": platform.python_version(),
        "implementation": implementation(),
        "platform": platform.platform(),
        "cpu_model": model,
        "cpu_flags": flags,
        "cpu_count": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


class LoadSampler:
    """Samples the 1-minute load average every ``interval`` seconds while a run is going."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-load", daemon=True)
        self._start = time.monotonic()

    def _sample(self) -> None:
        if hasattr(os, "getloadavg"):
            self.samples.append((round(time.monotonic() - self._start, 1), os.getloadavg()[0]))

    def _run(self) -> None:
        self._sample()
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def report(self) -> dict[str, Any]:
        loads = [load for _, load in self.samples]
        return {"cores": os.cpu_count(), "start": loads[0] if loads else None,
                "max": max(loads) if loads else None,
                "mean": sum(loads) / len(loads) if loads else None,
                "samples": [list(s) for s in self.samples]}
