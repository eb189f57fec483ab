"""Suite discovery: every module in :mod:`tiercache.bench.suites` that defines a suite.

A module with ``ALIAS_OF = ("l1", "l2")`` instead of ``run`` is an alias (``--suite cache``
runs ``l1`` and ``l2``). :data:`EXPECTED` names the suites issue 12 asks for: one that is
not there yet is reported as "not built", never silently dropped.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from tiercache.bench import suites as suites_package
from tiercache.bench.base import BenchContext, Row

__all__ = ["EXPECTED", "Selection", "Suite", "aliases", "discover", "select"]

#: Every suite the default run should have, in the order they run (cheap CPU-only ones first).
EXPECTED = ("ring", "l1", "l2", "stack", "pool", "l3", "policies", "e2e", "rebalance")


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    needs: frozenset[str]  # subset of {"redis", "pg"}: servers the runner must provide
    run: Callable[[BenchContext], Coroutine[Any, Any, list[Row]]]
    default: bool = True


@dataclass(frozen=True)
class Selection:
    suites: list[Suite]
    not_built: list[str]


def _modules() -> list[Any]:
    infos = sorted(pkgutil.iter_modules(suites_package.__path__), key=lambda i: i.name)
    return [importlib.import_module(f"{suites_package.__name__}.{info.name}")
            for info in infos if not info.name.startswith("_")]


def _suite_of(module: Any) -> Suite | None:
    run = getattr(module, "run", None)
    name = getattr(module, "NAME", None)
    if run is None or not isinstance(name, str) or getattr(module, "ALIAS_OF", None):
        return None
    return Suite(
        name=name,
        description=str(getattr(module, "DESCRIPTION", "")),
        needs=frozenset(getattr(module, "NEEDS", ("redis", "pg"))),
        run=run,
        default=bool(getattr(module, "DEFAULT", True)),
    )


def _order(name: str) -> tuple[int, str]:
    return (EXPECTED.index(name) if name in EXPECTED else len(EXPECTED), name)


def discover() -> dict[str, Suite]:
    """Suites by name, in run order (:data:`EXPECTED` first, then by name)."""
    found = {s.name: s for s in map(_suite_of, _modules()) if s is not None}
    return {name: found[name] for name in sorted(found, key=_order)}


def aliases() -> dict[str, tuple[str, ...]]:
    """``{"cache": ("l1", "l2")}``: names kept so old commands keep working."""
    out: dict[str, tuple[str, ...]] = {}
    for module in _modules():
        target = getattr(module, "ALIAS_OF", None)
        name = getattr(module, "NAME", None)
        if target and isinstance(name, str):
            out[name] = tuple(target)
    return out


def select(names: list[str] | None, suites: dict[str, Suite] | None = None) -> Selection:
    """The suites to run for ``--suite`` names (default: every default suite).

    A name in :data:`EXPECTED` whose module does not exist yet is "not built"; an unknown
    name is an error (``SystemExit`` with the list of names).
    """
    suites = discover() if suites is None else suites
    if not names:
        return Selection([s for s in suites.values() if s.default],
                         [n for n in EXPECTED if n not in suites])
    alias = aliases()
    picked: list[str] = []
    not_built: list[str] = []
    unknown: list[str] = []
    for name in names:
        for real in alias.get(name, (name,)):
            if real in suites:
                if real not in picked:
                    picked.append(real)
            elif real in EXPECTED:
                not_built.append(real)
            else:
                unknown.append(real)
    if unknown:
        raise SystemExit(
            f"tiercache bench: unknown suite(s) {', '.join(unknown)}; "
            f"available: {', '.join([*suites, *alias])}"
        )
    return Selection([suites[n] for n in sorted(picked, key=_order)], not_built)
