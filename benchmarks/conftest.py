"""pytest-benchmark suites: ``pytest benchmarks/ --benchmark-only`` (files are bench_*.py).

The tiercache fixtures (a LocalStack per session) come from the ``tiercache.testing`` plugin.
"""

from importlib.metadata import entry_points

if not any(ep.value == "tiercache.testing" for ep in entry_points(group="pytest11")):
    pytest_plugins = ["tiercache.testing"]


def pytest_collect_file(file_path, parent):  # type: ignore[no-untyped-def]
    """Collect bench_*.py here as test modules (the project's python_files is test_*.py)."""
    if parent.session.isinitpath(file_path):
        return None  # named on the command line: pytest collects it itself
    if file_path.name.startswith("bench_") and file_path.suffix == ".py":
        import pytest

        return pytest.Module.from_parent(parent, path=file_path)
    return None
