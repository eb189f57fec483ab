"""Suite discovery: every module in :mod:`tiercache.bench.suites` that defines a suite."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from tiercache.bench import suites as suites_package
from tiercache.bench.base import BenchContext, Row

__all__ = ["Suite", "discover"]


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    needs: frozenset[str]  # subset of {"redis", "pg"}: servers the runner must provide
    run: Callable[[BenchContext], Coroutine[Any, Any, list[Row]]]


def _suite_of(module: Any) -> Suite | None:
    run = getattr(module, "run", None)
    name = getattr(module, "NAME", None)
    if run is None or not isinstance(name, str):
        return None
    return Suite(
        name=name,
        description=str(getattr(module, "DESCRIPTION", "")),
        needs=frozenset(getattr(module, "NEEDS", ("redis", "pg"))),
        run=run,
    )


def discover() -> dict[str, Suite]:
    """Suites by name, in a stable order (module name)."""
    found: dict[str, Suite] = {}
    for info in sorted(pkgutil.iter_modules(suites_package.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        suite = _suite_of(importlib.import_module(f"{suites_package.__name__}.{info.name}"))
        if suite is not None:
            found[suite.name] = suite
    return found
