"""Stores: a keyed view of a system of record through the cache, with a write policy.

::

    users = cache.store("users", loader=load_user, writer=save_users,
                        policy=WriteBehind(max_delay=0.5, batch_size=500))
    await users.put(42, {"name": "Ada"}); user = await users.get(42)

Why one object with ``get``/``get_sync`` twins (like ``@cached``): each operation is one
flow (:mod:`tiercache._flow`) driven by the async or the sync shell, so the two can never
disagree. Keys (``str`` or ``int``) live in the cache's namespace as ``"<store>:<key>"``
(so ``42`` and ``"42"`` name one entry: use one key type per store) and obey the cache's
coherence rule: once ``put``/``delete`` returns, no tier of this process serves the old
value and other processes' L1 drop it through the bus.

* :class:`~tiercache.policies.write.WriteThrough`: the writer first, then the tiers.
* :class:`~tiercache.policies.write.WriteBehind`: the tiers, then a queue flushed in
  batches (:mod:`tiercache._writebehind`), durable in a Redis Stream when journaled
  (:mod:`tiercache._journal`).

Reads: pending local writes first (read-your-writes before the flush), then L1, L2, then
``loader(key)`` under single-flight; a ``None`` from the loader means "absent" (cached as
such when the cache caches ``None``). ``read=`` keeps a read policy for the store's
read path (:meth:`Store.read_flow` is the one place it applies).
"""

from __future__ import annotations

import inspect
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from tiercache import codec
from tiercache._flow import Call, Flight, Flow, TierOp, drive_async, drive_sync
from tiercache._invalidation import STALE
from tiercache._journal import BadEntry, JournalUnavailable
from tiercache._kv import remaining
from tiercache._refresh import policy_read, rules_for
from tiercache._store_queue import DELETE, PUT
from tiercache._validate import ttl_seconds
from tiercache.decorators import FunctionSpec
from tiercache.policies.write import WriteBehind, WriteThrough
from tiercache.tiers.base import MISSING, ValueTooLarge

if TYPE_CHECKING:
    from tiercache._writebehind import WriteBehindEngine
    from tiercache.cache import TierCache

__all__ = ["BadEntry", "JournalUnavailable", "Store"]

log = logging.getLogger("tiercache.store")

_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ABSENT: Final = object()  # get_many: "not present", distinct from any value


class Store:
    """See the module docstring. Made by :meth:`TierCache.store`; ``Store(cache, name, ...)``
    works too. ``ttl``: seconds the store's entries live in the tiers (None: the L2 tier's
    default). ``writer(dict key -> value)`` and ``deleter(list of keys)`` are called with
    batches (one key under WriteThrough), sync or async."""

    metrics_kind: Final = "store"

    def __init__(self, cache: TierCache, name: str, *, loader: Callable[[Any], Any],
                 writer: Callable[[dict[Any, Any]], Any] | None = None,
                 deleter: Callable[[list[Any]], Any] | None = None,
                 policy: WriteThrough | WriteBehind | None = None, read: Any = None,
                 ttl: float | None = None) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError("store name must be 1-64 characters of [A-Za-z0-9_.-]")
        if not callable(loader):
            raise TypeError("loader must be callable: (key) -> value or None")
        for label, fn in (("writer", writer), ("deleter", deleter)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{label} must be callable")
        policy = WriteThrough() if policy is None else policy
        if not isinstance(policy, WriteThrough | WriteBehind):
            raise TypeError(f"policy must be WriteThrough() or WriteBehind(...), got {policy!r}")
        self.cache, self.name, self.policy, self.read = cache, name, policy, read
        self.loader, self.writer, self.deleter = loader, writer, deleter
        self.ttl = ttl_seconds(ttl)
        self._prefix = f"{name}:"
        self.counts: dict[str, int] = dict.fromkeys(
            ("reads", "loads", "load_failures", "writes", "write_failures", "deletes"), 0)
        self.read_spec = None if read is None else self._read_spec(read)
        self.engine: WriteBehindEngine | None = None
        if isinstance(policy, WriteBehind):
            if writer is None:
                raise ValueError("WriteBehind needs a writer(dict key -> value)")
            from tiercache._writebehind import WriteBehindEngine

            self.engine = WriteBehindEngine(self, policy)
            if policy.journaled:  # on start: take over what dead flushers left, unasked
                self.engine.ensure_running()

    # ------------------------------------------------------------------ keys

    def rel(self, key: Any) -> str:
        """The key relative to the cache namespace; ``TypeError`` for other key types."""
        if type(key) is str:
            if not key or len(key) > 512:
                raise ValueError("store keys must be 1-512 characters")
            return self._prefix + key
        if type(key) is int:
            return self._prefix + str(key)
        raise TypeError(f"store keys are str or int, got {type(key).__name__}")

    # ------------------------------------------------------------------ reads

    def _read_spec(self, read: Any) -> FunctionSpec:
        """A read policy (``RefreshAhead``, ``XFetch``) runs the ``@cached`` policy path
        (:mod:`tiercache._refresh`) over the loader: the store's values sit in the cache's
        key/value L1 segment under ``"<store>:<key>"``, their envelopes in a stale segment."""
        cache = self.cache
        rules = rules_for(read, None, 0.0, 0.0)
        assert rules is not None
        spec = FunctionSpec(
            func=self.loader, name=f"store.{self.name}", ttl=self.ttl, tags=None, key=None,
            lock=bool(getattr(read, "lock", False)), cache_none=cache.cache_none, l1_ttl=None,
            is_async=inspect.iscoroutinefunction(self.loader), read_rules=rules)
        if cache.ttl_of(spec) is None:
            raise ValueError(f"store {self.name}: a read policy needs a TTL (ttl= on the store "
                             "or a default ttl on the RedisTier)")
        spec.segment = cache.coherence.kv
        if spec.segment is not None:
            spec.stale_segment = cache._segment(
                f"{cache.namespace}:~store.{self.name}{STALE}", self._prefix)
        return spec

    def read_flow(self, key: Any, default: Any) -> Flow[Any]:
        """The store's read path (the one flow both shells drive)."""
        cache, rel = self.cache, self.rel(key)
        co = cache.coherence
        self.counts["reads"] += 1
        yield from cache._bus_ready()
        gen = co.gen  # before any lookup: a put after this fences our fill (see _load)
        engine = self.engine
        if engine is not None:
            item = engine.queue.peek(rel)
            if item is not None:
                return item.value if item.op == PUT and item.value is not None else default
        if co.kv is not None:
            value = co.kv.get(rel, MISSING)
            if value is not MISSING:
                return default if value is None else value
        if self.read_spec is not None:  # refresh-ahead / XFetch: the @cached policy path
            value = yield from policy_read(cache, self.read_spec, rel, (key,), {}, rel)
        else:
            l2 = cache.l2
            if l2 is not None:
                entry = yield TierOp(l2.get_entry, l2.get_entry_sync, cache.full_key(rel))
                if entry is not MISSING:
                    co.fill(co.kv, rel, rel, entry.value, self._l1_ttl(remaining(entry)),
                            (), gen)
                    return default if entry.value is None else entry.value
            value = yield Flight(cache.flights, ("store", self.name, rel, gen),
                                 self._load(key, rel, gen))
        if engine is not None:  # a put landed while we loaded: it is newer than the source
            item = engine.queue.peek(rel)
            if item is not None:
                value = item.value if item.op == PUT else None
        return default if value is None else value

    def _load(self, key: Any, rel: str, gen: int) -> Flow[Any]:
        cache, co, l2 = self.cache, self.cache.coherence, self.cache.l2
        began = time.perf_counter()
        self.counts["loads"] += 1
        try:
            value = yield Call(self.loader, (key,), {})
        except BaseException:
            self.counts["load_failures"] += 1
            raise
        seconds = time.perf_counter() - began
        if value is None and not cache.cache_none:
            return value
        ttl = self.ttl if self.ttl is not None or l2 is None else l2.ttl
        if l2 is not None:
            full = cache.full_key(rel)
            co.writing(full, +1, gen)  # an invalidation waits for us or makes us skip
            try:
                if gen == co.gen:
                    try:
                        yield TierOp(l2.set, l2.set_sync, full, value, self.ttl,
                                     load_time=seconds)
                    except TypeError as exc:
                        log.warning("tiercache: store %s: loaded value for %r not stored in "
                                    "L2: %s", self.name, key, exc)
                    else:
                        co.wrote(full, ())
                        if gen != co.gen:
                            yield TierOp(l2.delete, l2.delete_sync, full)
            finally:
                co.writing(full, -1, gen)
        co.fill(co.kv, rel, rel, value, self._l1_ttl(ttl), (), gen)
        return value

    def _l1_ttl(self, ttl: float | None) -> float | None:
        return self.cache.l1_ttl_for(None, ttl)  # the cache's one L1-lifetime rule

    async def get(self, key: Any, default: Any = None) -> Any:
        """The value of ``key`` (``default`` when the loader says absent)."""
        return await drive_async(self.read_flow(key, default))

    def get_sync(self, key: Any, default: Any = None) -> Any:
        return drive_sync(self.read_flow(key, default))

    def _get_many(self, keys: list[Any]) -> Flow[dict[Any, Any]]:
        """Pending writes and L1 first, then one L2 round trip, then the loader per miss."""
        if self.read_spec is not None:  # each key on the policy path
            many: dict[Any, Any] = {}
            for key in keys:
                value = yield from self.read_flow(key, _ABSENT)
                if value is not _ABSENT:
                    many[key] = value
            return many
        cache = self.cache
        co, l2 = cache.coherence, cache.l2
        rels = {key: self.rel(key) for key in keys}
        yield from cache._bus_ready()
        gen = co.gen
        found: dict[Any, Any] = {}
        rest = []
        for key, rel in rels.items():
            item = self.engine.queue.peek(rel) if self.engine is not None else None
            if item is not None:
                found[key] = item.value if item.op == PUT else None
                continue
            value = co.kv.get(rel, MISSING) if co.kv is not None else MISSING
            if value is not MISSING:
                found[key] = value
            else:
                rest.append(key)
        if rest and l2 is not None:
            fulls = {cache.full_key(rels[k]): k for k in rest}
            hits = yield TierOp(l2.get_many_entries, l2.get_many_entries_sync, list(fulls))
            for full, entry in hits.items():
                key = fulls[full]
                found[key] = entry.value
                co.fill(co.kv, rels[key], rels[key], entry.value,
                        self._l1_ttl(remaining(entry)), (), gen)
            rest = [k for k in rest if k not in found]
        self.counts["reads"] += len(rels)
        for key in rest:
            rel = rels[key]
            found[key] = yield Flight(cache.flights, ("store", self.name, rel, gen),
                                      self._load(key, rel, gen))
        return {k: v for k, v in found.items() if v is not None}

    async def get_many(self, keys: Iterable[Any]) -> dict[Any, Any]:
        """Present keys only: one L2 round trip for all, the loader for the misses."""
        return await drive_async(self._get_many(list(keys)))

    def get_many_sync(self, keys: Iterable[Any]) -> dict[Any, Any]:
        return drive_sync(self._get_many(list(keys)))

    # ------------------------------------------------------------------ writes

    def _write_flow(self, op: str, pairs: list[tuple[Any, Any]]) -> Flow[None]:
        rels = [self.rel(k) for k, _ in pairs]  # key errors before any I/O
        if op == DELETE and self.deleter is None:
            raise TypeError(f"store {self.name!r} has no deleter: pass deleter= to delete")
        if op == PUT and self.writer is None:
            raise TypeError(f"store {self.name!r} has no writer: pass writer= to put")
        if self.engine is not None:
            yield from self.engine.write(op, pairs, rels)
            return
        if op == PUT:
            limit = getattr(self.cache.l2, "max_value_bytes", None)
            for _, value in pairs:  # unencodable or too large for L2: fail before the writer
                if len(codec.encode(value)) > (limit or math.inf):
                    raise ValueTooLarge(f"store {self.name!r}: an encoded value is above the "
                                        f"RedisTier's max_value_bytes={limit}; not written")
            mapping = dict(pairs)
            try:
                yield Call(self.writer, (mapping,), {})  # type: ignore[arg-type]
            except BaseException:
                self.counts["write_failures"] += 1
                raise
            self.counts["writes"] += len(mapping)
            yield from self.cache._set_many(dict(zip(rels, mapping.values(), strict=True)),
                                            self.ttl, [])
        else:
            keys = [k for k, _ in pairs]
            try:
                yield Call(self.deleter, (keys,), {})  # type: ignore[arg-type]
            except BaseException:
                self.counts["write_failures"] += 1
                raise
            self.counts["deletes"] += len(keys)
            yield from self.cache.coherence.invalidate(keys=rels)

    async def put(self, key: Any, value: Any) -> None:
        """Write ``value`` under ``key`` as the policy says (see the policy's contract)."""
        engine = self.engine
        if engine is not None:  # write-behind, one key: straight to the engine
            await drive_async(engine.write_one(key, value, self.rel(key)))
            return
        await drive_async(self._write_flow(PUT, [(key, value)]))

    def put_sync(self, key: Any, value: Any) -> None:
        drive_sync(self._write_flow(PUT, [(key, value)]))

    async def put_many(self, mapping: Mapping[Any, Any]) -> None:
        """Several puts with one writer call (WriteThrough) or one journal append."""
        if mapping:
            await drive_async(self._write_flow(PUT, list(mapping.items())))

    def put_many_sync(self, mapping: Mapping[Any, Any]) -> None:
        if mapping:
            drive_sync(self._write_flow(PUT, list(mapping.items())))

    async def delete(self, key: Any) -> None:
        """Delete ``key`` from the system of record (through ``deleter``) and every tier."""
        await drive_async(self._write_flow(DELETE, [(key, None)]))

    def delete_sync(self, key: Any) -> None:
        drive_sync(self._write_flow(DELETE, [(key, None)]))

    # ------------------------------------------------------------------ write-behind control

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every write queued so far (and journal entries taken over from dead
        processes) is written or dead-lettered; False if ``timeout`` passed first."""
        if self.engine is None:
            return True
        self.engine.ensure_running()
        return bool(await drive_async(self.engine.flush_flow(timeout)))

    def flush_sync(self, timeout: float | None = None) -> bool:
        if self.engine is None:
            return True
        self.engine.ensure_running()
        return bool(drive_sync(self.engine.flush_flow(timeout)))

    async def aclose(self) -> None:
        """Flush, then stop the flusher (the cache stays open)."""
        if self.engine is not None:
            await self.engine.aclose()

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The oldest ``limit`` dead letters: ``error``, ``at``, ``attempts``, ``writes``
        (a list of ``{"op", "key", "value"}``)."""
        return await drive_async(self._engine().letters_flow(limit))

    def dead_letters_sync(self, limit: int = 100) -> list[dict[str, Any]]:
        return drive_sync(self._engine().letters_flow(limit))

    async def replay_dead_letters(self, limit: int | None = None) -> int:
        """Queue every dead-lettered write again (journaled first when the store journals);
        returns the writes queued. A key with a newer write queued here keeps the newer."""
        self._engine().ensure_running()
        return await drive_async(self._engine().replay_flow(limit))

    def replay_dead_letters_sync(self, limit: int | None = None) -> int:
        self._engine().ensure_running()
        return drive_sync(self._engine().replay_flow(limit))

    def _engine(self) -> WriteBehindEngine:
        if self.engine is None:
            raise TypeError(f"store {self.name!r} is write-through: it has no dead letters")
        return self.engine

    # ------------------------------------------------------------------ stats and health

    def stats(self) -> dict[str, Any]:
        """Plain snapshot (no I/O): counters, queue figures, journal and dead-letter gauges."""
        out: dict[str, Any] = {"name": self.name, "cache": self.cache.name,
                               "policy": type(self.policy).__name__, **self.counts}
        if self.engine is not None:
            out.update(self.engine.snapshot())
        return out

    def health_reasons(self) -> list[str]:
        """Why this store degrades the cache's health ([] when healthy)."""
        return [] if self.engine is None else self.engine.health_reasons()

    async def health(self) -> dict[str, Any]:
        """``{"status", "reasons", "stats"}`` after a fresh look at the journal."""
        if self.engine is not None:
            await drive_async(self.engine.refresh_flow())
        return self._health()

    def health_sync(self) -> dict[str, Any]:
        if self.engine is not None:
            drive_sync(self.engine.refresh_flow())
        return self._health()

    def _health(self) -> dict[str, Any]:
        reasons = self.health_reasons()
        return {"status": "degraded" if reasons else "healthy", "reasons": reasons,
                "stats": self.stats()}

    def __repr__(self) -> str:
        return f"Store({self.name!r}, policy={self.policy!r}, cache={self.cache.name!r})"
