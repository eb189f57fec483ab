"""Shared fixtures: the tiercache plugin, one L1 implementation per test, a TierCache factory."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

import pytest
import pytest_asyncio

from tiercache import _impl
from tiercache.cache import TierCache
from tiercache.tiers import memory
from tiercache.tiers.memory import MemoryTier
from tiercache.tiers.redis import RedisTier

if not any(ep.value == "tiercache.testing" for ep in entry_points(group="pytest11")):
    pytest_plugins = ["tiercache.testing"]  # the package is not installed (no entry point)

LRU_IMPLS = _impl.both("_lru")
CacheFactory = Callable[..., TierCache]


@pytest.fixture(params=LRU_IMPLS, ids=lambda m: m.__name__.split(".")[1])
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Build every MemoryTier of the test over one implementation (C ext or pure Python)."""
    monkeypatch.setattr(memory, "lru_impl", request.param)
    return request.param  # type: ignore[no-any-return]


@pytest_asyncio.fixture(loop_scope="session")
async def cache_factory(impl: ModuleType, tiercache_stack: Any,
                        redis_cluster_client: Any) -> AsyncIterator[CacheFactory]:
    """TierCache factory over the session's cluster (flushed); closes what it made.

    ``l1``/``l2`` switch the tiers; ``l1_maxsize``, ``l1_default_ttl``, ``clock`` shape the
    MemoryTier, ``l2_ttl`` the RedisTier; everything else goes to TierCache. Each test gets
    its own namespace.
    """
    made: list[TierCache] = []
    namespace = f"t{uuid.uuid4().hex[:8]}"

    def factory(l1: bool = True, l2: bool = True, *, l1_maxsize: int = 1000,
                l1_default_ttl: float | None = None, l2_ttl: float = 60,
                clock: Callable[[], float] | None = None, **kw: Any) -> TierCache:
        kw.setdefault("namespace", namespace)
        kw.setdefault("bus_wait", 30.0)  # a loaded CI box may take >1s to subscribe
        cache = TierCache(
            l1=MemoryTier(maxsize=l1_maxsize, ttl=l1_default_ttl, clock=clock) if l1 else None,
            l2=RedisTier(tiercache_stack.redis_url, ttl=l2_ttl) if l2 else None, **kw)
        made.append(cache)
        return cache

    yield factory
    for cache in made:
        await cache.aclose()
