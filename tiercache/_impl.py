"""Pick the Cython extension or its pure-Python twin for each ext module, once, at import.

Same pattern as msgpack-python (``_cmsgpack`` vs ``fallback``): the compiled module in
``tiercache._ext`` is preferred; ``TIERCACHE_PUREPYTHON=1`` forces the twin in
``tiercache._fallback``. A missing extension is not an error -- the package keeps working,
slower, and says so once through ``logging``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from types import ModuleType

log = logging.getLogger("tiercache")

FORCE_PUREPYTHON = os.environ.get("TIERCACHE_PUREPYTHON", "").strip() not in ("", "0")

_loaded: dict[str, ModuleType] = {}
_warned = False


def load(name: str) -> ModuleType:
    """Return the implementation of ext module ``name`` (e.g. ``"_ring"``)."""
    global _warned
    module = _loaded.get(name)
    if module is not None:
        return module
    if not FORCE_PUREPYTHON:
        try:
            module = importlib.import_module(f"tiercache._ext.{name}")
        except ImportError as exc:
            if not _warned:
                _warned = True
                log.warning(
                    "tiercache: compiled extension %s unavailable (%s); using the pure-Python "
                    "fallback. Reinstall with a C compiler for full speed.",
                    name,
                    exc,
                )
    if module is None:
        module = importlib.import_module(f"tiercache._fallback.{name}")
    _loaded[name] = module
    return module


def both(name: str) -> list[ModuleType]:
    """Every implementation of ``name`` importable here (tests run against each)."""
    modules = [importlib.import_module(f"tiercache._fallback.{name}")]
    with contextlib.suppress(ImportError):
        modules.insert(0, importlib.import_module(f"tiercache._ext.{name}"))
    return modules


def implementation() -> str:
    """``"cython"`` when every loaded ext module is compiled, else ``"python"``."""
    if not _loaded:
        load("_ring")
    compiled = all(m.__name__.startswith("tiercache._ext.") for m in _loaded.values())
    return "cython" if compiled else "python"
