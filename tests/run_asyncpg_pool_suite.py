"""Run asyncpg's own ``tests/test_pool.py`` against a one-shard :class:`ShardedPool`.

The point is the drop-in promise: asyncpg's pool tests, unchanged and with **no routing shim**,
must pass on ``tiercache.create_sharded_pool(**the same arguments)``, except those that read
asyncpg-private attributes (``pool._holders``, ``pool._queue``, ``pool._maintenance_task``).

asyncpg's test file is Apache-2.0 and is *not* part of this repository: pass the path of an
unpacked asyncpg source tree of the installed version (its sdist, or a git checkout), e.g.::

    pip download asyncpg==0.32.0 --no-binary :all: --no-deps   # or: git clone + checkout
    .venv/bin/python tests/run_asyncpg_pool_suite.py /tmp/asyncpg-0.32.0 [-k PATTERN] [--plain]

This script fetches nothing.  It starts one Postgres with :class:`tiercache.local.LocalStack`
(which handles running as root), points asyncpg's harness at it through the libpq variables
(``PGHOST``...; asyncpg then treats it as an unmanaged cluster), and replaces the harness's
``create_pool`` -- the one seam asyncpg's tests create pools through -- with
``create_sharded_pool``.  ``--plain`` runs the very same set-up with ``asyncpg.create_pool``, as
the baseline.  The cluster-managing classes (``TestHotStandby``,
``TestPoolReconnectWithTargetSessionAttrs``) start their own Postgres clusters and are not run.
Not collected by pytest (no ``test_`` prefix): it needs the external asyncpg tree.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import importlib.util
import os
import re
import sys
import unittest
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg

_PRIVATE = re.compile(r"\bpool\d?\._[a-z][a-z_]*")


def private_reads(test_file: Path) -> dict[str, list[str]]:
    """``{test name: [pool._attr, ...]}`` for the tests of ``TestPool`` whose source reads an
    asyncpg-private attribute of the pool object (those can only pass on an asyncpg.Pool)."""
    source = test_file.read_text()
    found: dict[str, list[str]] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == "TestPool":
            for fn in node.body:
                if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                    attrs = sorted(set(_PRIVATE.findall(ast.get_source_segment(source, fn) or "")))
                    if attrs and fn.name.startswith("test"):
                        found[fn.name] = attrs
    return found


def _load_asyncpg_tests(src: Path) -> Any:
    """Import ``asyncpg._testbase`` and ``tests/test_pool.py`` from the given source tree."""
    def load(name: str, path: Path) -> Any:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise SystemExit(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    testbase = src / "asyncpg" / "_testbase"
    if not (testbase / "__init__.py").exists() or not (src / "tests" / "test_pool.py").exists():
        raise SystemExit(f"{src} is not an asyncpg source tree (tests/test_pool.py missing)")
    load("asyncpg._testbase.fuzzer", testbase / "fuzzer.py")
    tb = load("asyncpg._testbase", testbase / "__init__.py")
    asyncpg._testbase = tb  # type: ignore[attr-defined]
    return tb, load("asyncpg_test_pool", src / "tests" / "test_pool.py")


def _use_sharded_pool(tb: Any) -> None:
    """Make the harness's ``self.create_pool`` build a one-shard ShardedPool."""
    from tiercache import create_sharded_pool

    def create_pool(self: Any, pool_class: Any = None, connection_class: Any = None,
                    **kwargs: Any) -> Any:
        conn_spec = self.get_connection_spec(kwargs)
        if connection_class is not None:
            conn_spec["connection_class"] = connection_class
        pool = create_sharded_pool(loop=self.loop, **conn_spec)
        self._pools.append(pool)
        return pool

    def tear_down(self: Any) -> None:
        # The harness's tearDown reads pool._maintenance_task (asyncpg-private); terminate
        # is the public part of it.
        for pool in self._pools:
            pool.terminate()
        self._pools = []
        unittest.TestCase.tearDown(self)

    tb.ClusterTestCase.create_pool = create_pool
    tb.ClusterTestCase.tearDown = tear_down


def _forward_private_attributes() -> None:
    """For ``--forward-private`` only: expose the one shard's asyncpg-private ``_holders``,
    ``_queue`` and ``_maintenance_task`` on the ShardedPool class, so the tests that inspect
    them can check the behaviour underneath.  Never part of tiercache itself."""
    from tiercache.sharding.pool import ShardedPool

    def forward(attr: str) -> property:
        def get(self: Any) -> Any:
            (shard,) = self._shards.values()
            return getattr(shard.primary.pool, attr)
        return property(get)

    for attr in ("_holders", "_queue", "_maintenance_task"):
        setattr(ShardedPool, attr, forward(attr))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("asyncpg_src", type=Path, help="unpacked asyncpg source tree")
    parser.add_argument("--plain", action="store_true", help="baseline: asyncpg's own pool")
    parser.add_argument("-k", dest="patterns", action="append", default=[],
                        help="only tests matching this substring (repeatable)")
    parser.add_argument("--include-private", action="store_true",
                        help="also run the tests that read asyncpg-private attributes")
    parser.add_argument("--forward-private", action="store_true",
                        help="run those too, with the shard pool's private attributes "
                             "forwarded by this script (a diagnostic, not the drop-in claim)")
    parser.add_argument("-v", "--verbose", action="store_true")
    opts = parser.parse_args()

    from tiercache.local import LocalStack

    with LocalStack(redis_masters=0, pg_shards=1) as stack:
        url = urlsplit(next(iter(stack.pg_dsns.values())))
        os.environ.update(
            PGHOST=url.hostname or "127.0.0.1", PGPORT=str(url.port),
            PGUSER=unquote(url.username or ""), PGPASSWORD=unquote(url.password or ""),
        )
        tb, test_pool = _load_asyncpg_tests(opts.asyncpg_src.resolve())
        if not opts.plain:
            _use_sharded_pool(tb)
            if opts.forward_private:
                _forward_private_attributes()
        suite = unittest.TestSuite()
        private = private_reads(opts.asyncpg_src / "tests" / "test_pool.py")
        skipped: list[str] = []
        for test in unittest.defaultTestLoader.loadTestsFromTestCase(test_pool.TestPool):
            name = test.id().rsplit(".", 1)[-1]
            if opts.patterns and not any(p in name for p in opts.patterns):
                continue
            if name in private and not (opts.include_private or opts.forward_private):
                skipped.append(f"{name} (reads {', '.join(private[name])})")
                continue
            suite.addTest(test)
        result = unittest.TextTestRunner(verbosity=2 if opts.verbose else 1).run(suite)
        asyncio.set_event_loop(None)
        print(f"\n{'asyncpg.Pool' if opts.plain else 'one-shard ShardedPool'}: "
              f"{result.testsRun - len(result.failures) - len(result.errors)} of "
              f"{result.testsRun} run passed ({len(result.skipped)} skipped by asyncpg itself)")
        for line in skipped:
            print(f"  not run, asyncpg-private: {line}")
        return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
