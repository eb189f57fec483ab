"""Packaging metadata a build tool reads: no deprecated forms (setuptools warns on every build)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())


def test_license_is_an_spdx_string_and_the_backend_supports_it() -> None:
    # The ``{ text = "MIT" }`` table is deprecated (PEP 639); the string needs setuptools>=77.
    assert PYPROJECT["project"]["license"] == "MIT"
    assert not any(c.startswith("License ::") for c in PYPROJECT["project"].get("classifiers", []))
    requires = PYPROJECT["build-system"]["requires"]
    setuptools = next(r for r in requires if re.match(r"setuptools\b", r))
    match = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", setuptools)
    assert match is not None and int(match.group(1)) >= 77, setuptools
