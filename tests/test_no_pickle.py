"""No pickle anywhere in tiercache: a value read from Redis is data, never code.

Three layers: the source never names a pickle-family module (static, tokens not prose);
importing every tiercache module never imports one from tiercache code (an import hook
watching the importer); and the runtime modules leave ``pickle`` out of ``sys.modules``
altogether (third-party libraries some dev tools import may use pickle themselves; those
are outside the runtime set).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tokenize
from pathlib import Path

import tiercache

PACKAGE = Path(tiercache.__file__).parent
EXT_SOURCES = PACKAGE.parent / "ext"
FORBIDDEN = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "shelve", "jsonpickle"}

#: Modules a service imports at runtime (not the dev/bench/test tooling).
RUNTIME_EXCLUDED_PREFIXES = ("tiercache.testing", "tiercache.bench", "tiercache.cli",
                             "tiercache._localstack", "tiercache.local")


def _sources() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    if EXT_SOURCES.is_dir():
        files += sorted(EXT_SOURCES.glob("*.pyx")) + sorted(EXT_SOURCES.glob("*.pxd"))
        files += sorted(EXT_SOURCES.glob("*.pxi"))
    return files


def _offending_tokens(text: str) -> list[str]:
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.NAME and tok.string in FORBIDDEN:
            found.append(f"line {tok.start[0]}: name {tok.string}")
        elif tok.type == tokenize.STRING:
            inner = tok.string.strip("'\"bBrRuU")
            if inner in FORBIDDEN:  # importlib.import_module("pickle") and friends
                found.append(f"line {tok.start[0]}: string {tok.string}")
    return found


def test_sources_never_name_a_pickle_module() -> None:
    sources = _sources()
    assert any(p.name == "codec.py" for p in sources)
    bad = {str(p.relative_to(PACKAGE.parent)): hits
           for p in sources if (hits := _offending_tokens(p.read_text()))}
    assert bad == {}


def test_the_scanner_would_catch_an_import() -> None:
    assert _offending_tokens("import pickle\n")
    assert _offending_tokens("from _pickle import loads\n")
    assert _offending_tokens("importlib.import_module('pickle')\n")
    assert not _offending_tokens('"""no pickle, ever"""\n# pickle is not used\n')


PROBE = r"""
import builtins, importlib, json, pkgutil, sys
FORBIDDEN = set(json.loads(sys.argv[1]))
excluded = tuple(json.loads(sys.argv[2]))
offenders = []
real_import = builtins.__import__

def watching_import(name, globals=None, locals=None, fromlist=(), level=0):
    wanted = {name.split(".")[0], *(fromlist or ())} if level == 0 else set(fromlist or ())
    importer = (globals or {}).get("__name__", "")
    if wanted & FORBIDDEN and importer.startswith("tiercache"):
        offenders.append([importer, name])
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = watching_import
import tiercache
runtime, tooling = [], []
for info in pkgutil.walk_packages(tiercache.__path__, "tiercache."):
    (tooling if info.name.startswith(excluded) else runtime).append(info.name)
failed = {}
for name in runtime:
    try:
        importlib.import_module(name)
    except ImportError as exc:  # optional extras missing: not our concern here
        failed[name] = repr(exc)
runtime_pickle = sorted(m for m in FORBIDDEN if m in sys.modules)
for name in tooling:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        failed[name] = repr(exc)
print(json.dumps({"offenders": offenders, "runtime_pickle": runtime_pickle,
                  "runtime": runtime, "tooling": tooling, "failed": failed}))
"""


def test_importing_every_module_never_imports_pickle() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(sorted(FORBIDDEN)),
         json.dumps(RUNTIME_EXCLUDED_PREFIXES)],
        capture_output=True, text=True, timeout=120, check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert "tiercache.codec" in report["runtime"]
    assert "tiercache.tiers.redis" in report["runtime"]
    assert report["offenders"] == []
    assert report["runtime_pickle"] == [], "a runtime import pulled in pickle"


def test_extension_types_carry_no_pickle_support() -> None:
    """Cython auto-generates pickling for cdef classes; the directive turns it off."""
    import importlib

    for name in ("_lru", "_ring"):
        try:
            module = importlib.import_module(f"tiercache._ext.{name}")
        except ImportError:
            continue
        assert not [n for n in dir(module) if "unpickle" in n], name
        for obj in vars(module).values():
            if isinstance(obj, type):
                assert not hasattr(obj, "__reduce_cython__"), f"{name}.{obj.__name__}"
