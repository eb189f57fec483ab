"""The key/value API of :class:`~tiercache.cache.TierCache` (``get``/``set``/``get_many``/
``set_many``/``delete`` and their sync twins): each one flow over the same coherence rules as
``@cached`` reads, kept here so the cache module stays about the read path.

Keys are relative to the cache namespace; their L1 copies live in the cache's key/value
segment (``coherence.kv``), indexed like a function's entries so invalidations reach them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from tiercache._flow import BusGate, Flow, TierOp, drive_async, drive_sync
from tiercache._validate import ttl_seconds
from tiercache.tiers.base import MISSING

if TYPE_CHECKING:
    from tiercache._invalidation import Coherence
    from tiercache.tiers.base import RemoteTier

__all__ = ["KeyValueAPI", "remaining"]

Seconds = float | timedelta | None


class KeyValueAPI:
    """Mixed into TierCache: what it needs from the cache is declared here."""

    coherence: Coherence
    l2: RemoteTier | None
    bus_wait: float
    _prefix: str

    def l1_ttl_for(self, l1_ttl: float | None, ttl: float | None) -> float | None:
        raise NotImplementedError

    def full_key(self, key: str) -> str:
        return self._prefix + key

    def _bus_ready(self) -> Flow[None]:
        bus = self.coherence.bus
        if bus is not None and not (bus.connected and bus.running()):
            yield BusGate(bus, self.bus_wait)

    def _get(self, key: str, default: Any) -> Flow[Any]:
        co, l2 = self.coherence, self.l2
        if co.kv is not None:
            value = co.kv.get(key, MISSING)
            if value is not MISSING:
                return value
        if l2 is None:
            return default
        yield from self._bus_ready()
        gen = co.gen
        entry = yield TierOp(l2.get_entry, l2.get_entry_sync, self._prefix + key)
        if entry is MISSING:
            return default
        co.fill(co.kv, key, key, entry.value, self.l1_ttl_for(None, remaining(entry)), (), gen)
        return entry.value

    def _get_many(self, keys: list[str]) -> Flow[dict[str, Any]]:
        co, l2 = self.coherence, self.l2
        found: dict[str, Any] = {}
        if co.kv is not None:
            for key in keys:
                value = co.kv.get(key, MISSING)
                if value is not MISSING:
                    found[key] = value
        rest = [k for k in keys if k not in found]
        if rest and l2 is not None:
            yield from self._bus_ready()
            gen = co.gen
            fulls = [self._prefix + k for k in rest]
            hits = yield TierOp(l2.get_many_entries, l2.get_many_entries_sync, fulls)
            cut = len(self._prefix)
            for full, entry in hits.items():
                found[full[cut:]] = entry.value
                co.fill(co.kv, full[cut:], full[cut:], entry.value,
                        self.l1_ttl_for(None, remaining(entry)), (), gen)
        return found

    def _set_many(self, mapping: Mapping[str, Any], ttl: Seconds,
                  tags: list[str]) -> Flow[None]:
        seconds = ttl_seconds(ttl)  # before any I/O: ttl=0 / "60" are the caller's bug
        co, l2 = self.coherence, self.l2
        yield from self._bus_ready()
        if l2 is not None:
            fence = co.bump()  # loads that began before must not write L2 after us
            full = {self._prefix + k: v for k, v in mapping.items()}
            if len(full) == 1:
                ((key, value),) = full.items()
                yield TierOp(l2.set, l2.set_sync, key, value, seconds)
            else:
                yield TierOp(l2.set_many, l2.set_many_sync, full, seconds)
            if tags:
                for key in full:
                    yield TierOp(l2.add_tags, l2.add_tags_sync, key, tags, seconds)
            yield from co.drain_writes(list(full), fence)
        l1ttl = self.l1_ttl_for(None, seconds)
        with co.fence:
            co.gen += 1  # loads that began before this write must not overwrite it in L1
            co.index.drop_keys(mapping)
            gen = co.gen
            for key, value in mapping.items():
                if co.kv is not None:
                    co.kv.delete(key)
                co.fill(co.kv, key, key, value, l1ttl, tags, gen)
        yield from co.publish(keys=list(mapping))

    async def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key`` (relative to the namespace) or ``default``."""
        return await drive_async(self._get(key, default))

    def get_sync(self, key: str, default: Any = None) -> Any:
        return drive_sync(self._get(key, default))

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Only the hits, keyed as given."""
        return await drive_async(self._get_many(list(keys)))

    def get_many_sync(self, keys: Iterable[str]) -> dict[str, Any]:
        return drive_sync(self._get_many(list(keys)))

    async def set(self, key: str, value: Any, ttl: Seconds = None,
                  tags: Iterable[str] = ()) -> None:
        """Write every tier; other processes drop their L1 copy."""
        await drive_async(self._set_many({key: value}, ttl, list(tags)))

    def set_sync(self, key: str, value: Any, ttl: Seconds = None,
                 tags: Iterable[str] = ()) -> None:
        drive_sync(self._set_many({key: value}, ttl, list(tags)))

    async def set_many(self, mapping: Mapping[str, Any], ttl: Seconds = None) -> None:
        await drive_async(self._set_many(mapping, ttl, []))

    def set_many_sync(self, mapping: Mapping[str, Any], ttl: Seconds = None) -> None:
        drive_sync(self._set_many(mapping, ttl, []))

    async def delete(self, key: str) -> bool:
        """Remove ``key`` from every tier here and from other processes' L1."""
        return bool(await drive_async(self.coherence.invalidate(keys=[key])))

    def delete_sync(self, key: str) -> bool:
        return bool(drive_sync(self.coherence.invalidate(keys=[key])))



def remaining(entry: Any) -> float | None:
    """Seconds an L2 envelope has left (None: no expiry)."""
    if entry.ttl is None:
        return None
    return max(0.0, float(entry.ttl) - (time.time() - float(entry.stored_at)))
