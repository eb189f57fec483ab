"""Load the tiercache pytest plugin when the package is not installed (no entry point yet)."""

from importlib.metadata import entry_points

if not any(ep.value == "tiercache.testing" for ep in entry_points(group="pytest11")):
    pytest_plugins = ["tiercache.testing"]
