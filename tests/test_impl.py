"""Implementation choice: compiled extension, forced fallback, or missing extension."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

USE_PACKAGE = textwrap.dedent(
    """
    import logging, sys
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    import tiercache
    ring = tiercache.HashRing({"a": 1, "b": 2})
    assert ring.get_node("test") in ("a", "b")
    tier = tiercache.MemoryTier(maxsize=10)
    tier.set_sync(1, "one")
    assert tier.get_sync(1) == "one"
    print(tiercache.implementation())
    """
)

BLOCK_EXTENSIONS = textwrap.dedent(
    """
    import sys
    class NoExtensions:
        def find_spec(self, name, path=None, target=None):
            if name.startswith("tiercache._ext."):
                raise ImportError(f"blocked for the test: {name}")
            return None
    sys.meta_path.insert(0, NoExtensions())
    """
)


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "TIERCACHE_PUREPYTHON"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**environ, **env}, timeout=60, check=True)


def test_default_is_the_compiled_extension_when_built() -> None:
    from tiercache._impl import both

    expected = "cython" if len(both("_ring")) == 2 and len(both("_lru")) == 2 else "python"
    assert _run(USE_PACKAGE).stdout.strip() == expected


def test_purepython_env_forces_the_fallback_silently() -> None:
    result = _run(USE_PACKAGE, TIERCACHE_PUREPYTHON="1")
    assert result.stdout.strip() == "python"
    assert "fallback" not in result.stderr


def test_missing_extension_warns_once_and_keeps_working() -> None:
    result = _run(BLOCK_EXTENSIONS + USE_PACKAGE)
    assert result.stdout.strip() == "python"
    warnings = [line for line in result.stderr.splitlines() if "pure-Python fallback" in line]
    assert len(warnings) == 1, result.stderr
