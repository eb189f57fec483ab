"""tiercache: multi-tier caching and Postgres sharding middleware.

Everything public is re-exported here; other module paths are internal.
"""

from __future__ import annotations

from tiercache._impl import implementation
from tiercache.sharding.ring import HashRing

__all__ = ["HashRing", "implementation"]
__version__ = "0.1.0"
