"""tiercache: multi-tier caching and Postgres sharding middleware.

Everything public is re-exported here; other module paths are internal (except the
documented modules ``tiercache.codec``, ``tiercache.metrics``, ``tiercache.local`` and
``tiercache.testing``).
"""

from __future__ import annotations

from tiercache._impl import implementation
from tiercache.cache import TierCache
from tiercache.codec import CodecError
from tiercache.codec import register as register_type
from tiercache.policies.write import Retry, WriteBehind, WriteThrough
from tiercache.row import Row
from tiercache.sharding.pool import ShardedPool, ShardFanoutError, create_sharded_pool
from tiercache.sharding.rebalance import KeyMovedError, Rebalancer, TopologyWatcher, load_topology
from tiercache.sharding.ring import HashRing
from tiercache.store import JournalUnavailable, Store
from tiercache.tiers.base import MISSING, SyncTier, Tier
from tiercache.tiers.memory import MemoryTier
from tiercache.tiers.query import QueryCache
from tiercache.tiers.redis import CircuitBreaker, RedisTier

__all__ = [
    "MISSING",
    "CircuitBreaker",
    "CodecError",
    "HashRing",
    "JournalUnavailable",
    "KeyMovedError",
    "MemoryTier",
    "QueryCache",
    "Rebalancer",
    "RedisTier",
    "Retry",
    "Row",
    "ShardFanoutError",
    "ShardedPool",
    "Store",
    "SyncTier",
    "Tier",
    "TierCache",
    "TopologyWatcher",
    "WriteBehind",
    "WriteThrough",
    "create_sharded_pool",
    "implementation",
    "load_topology",
    "register_type",
]
__version__ = "0.1.0"
