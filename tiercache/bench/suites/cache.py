"""``tiercache bench --suite cache``: the old name of ``l1`` + ``l2`` (kept so commands work).

The L1 figures now live in :mod:`tiercache.bench.suites.l1` (and ``_l1_memory``), the L2
figures in :mod:`tiercache.bench.suites.l2`; the names below are re-exported for code that
imported them from here.
"""

from __future__ import annotations

from tiercache.bench.suites._l1_memory import (
    CACHED_MAX_BYTES,
    MEMORY_MAX_BYTES,
    N_MEMORY,
    memory_rows,
    store_bytes_per_entry,
    traced_bytes,
)
from tiercache.bench.suites.l1 import async_rows, sync_rows

__all__ = ["ALIAS_OF", "CACHED_MAX_BYTES", "DESCRIPTION", "MEMORY_MAX_BYTES", "NAME",
           "N_MEMORY", "async_rows", "memory_rows", "store_bytes_per_entry", "sync_rows",
           "traced_bytes"]

NAME = "cache"
DESCRIPTION = "alias of l1 + l2"
ALIAS_OF = ("l1", "l2")
