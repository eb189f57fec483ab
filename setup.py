"""Build the Cython extensions in ext/ into tiercache._ext.*.

Every extension has a pure-Python twin in tiercache/_fallback/, so a failed build
(no compiler) still leaves a working package: set TIERCACHE_NO_EXT=1 to skip it.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).parent


def extensions() -> list[Extension]:
    if os.environ.get("TIERCACHE_NO_EXT"):
        return []
    from Cython.Build import cythonize

    modules = [
        Extension(
            f"tiercache._ext.{pyx.stem}",
            [str(pyx.relative_to(HERE))],
            include_dirs=["ext"],
            extra_compile_args=["-O3", "-fno-strict-aliasing"],
        )
        for pyx in sorted((HERE / "ext").glob("*.pyx"))
    ]
    return cythonize(
        modules,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )


setup(ext_modules=extensions())
