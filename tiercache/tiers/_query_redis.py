"""The shared L3 store: entries and generations in Redis, for every process of an application.

Layout (the reserved space of :mod:`tiercache.tiers.keys`, so no user key can collide)::

    {ns}:~tc:l3:gen:{<shard>}            HASH  table -> generation, "" -> shard epoch,
                                               "\\0inc" -> incarnation (random, see below)
    {ns}:~tc:l3:e:<plan>:<params>        STRING  codec envelope of [generations, result]
    {ns}:~tc:lease:{...}                 the fill lease of an entry key (RedisTier leases)

Why generations *inside* the entry instead of in its key: a read fetches the shard's
generations (one EVAL on the hash) and the entry (one GET) concurrently -- one round trip --
and a hit is an entry whose stored generations equal the ones just read.  A write bumps the
hash (HINCRBY) *before* returning to its caller, so a read that starts afterwards, in any
process, reads the new generations and cannot accept the old entry.  A fill stores only if
the generations read after the query equal those read before it (the race rule of
:mod:`tiercache.tiers.query`).  Entries are overwritten in place, not orphaned per
generation, so Redis holds about one entry per (query, params).

Why an incarnation: generations must never go back.  If the hash is lost (FLUSHDB,
``allkeys-*`` eviction, a failover to a replica that missed it), a reader recreates it with a
fresh random incarnation, which is part of every entry's generations: entries written before
can never match again.  Each process also mirrors the highest generations it has seen; a
lower value under the same incarnation (a failover that lost increments) makes that read
bypass and raises the counters above the mirror.

Redis failure is not the caller's failure: a failed read of the generations is a bypass
(``store_error``); a failed bump is remembered, and until it has been applied every read of
that shard in this process bypasses the cache (``store_pending``).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from tiercache import codec
from tiercache.tiers._query_flight import RunnerGone
from tiercache.tiers._query_mem import MemEntry, encoded_size
from tiercache.tiers._query_plan import params_key
from tiercache.tiers._redis_plans import FAILED, Run, eval_
from tiercache.tiers.base import MISSING, ValueTooLarge
from tiercache.tiers.keys import internal_prefix
from tiercache.tiers.redis import RedisTier

if TYPE_CHECKING:
    from tiercache.tiers._query_plan import Plan
    from tiercache.tiers.query import QueryCache

__all__ = ["SharedStore"]

INC: Final = "\x00inc"  # no table name contains NUL
_RETRY_PENDING: Final = 0.1

# Read (creating the incarnation if the hash is new or was lost) in one atomic step.
GENS_LUA: Final = """
local inc = redis.call('HGET', KEYS[1], ARGV[1])
if not inc then
  inc = ARGV[2]
  redis.call('HSET', KEYS[1], ARGV[1], inc)
end
local vals = redis.call('HMGET', KEYS[1], unpack(ARGV, 3))
table.insert(vals, 1, inc)
return vals
"""
BUMP_LUA: Final = """
for i = 1, #ARGV do redis.call('HINCRBY', KEYS[1], ARGV[i], 1) end
return 1
"""
# Raise fields to at least a value (repair after a regression); ARGV: field, value, ...
RAISE_LUA: Final = """
for i = 1, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if cur < tonumber(ARGV[i + 1]) then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
"""


def params_digest(args: tuple[Any, ...]) -> str:
    """Canonical, type-exact params (1, 1.0, True and Decimal('1.0') all differ)."""
    try:
        data = codec.encode([list(args)])
    except TypeError:
        data = repr(tuple((type(a).__qualname__, a) for a in args)).encode()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class SharedStore:
    """L3 entries and generations in Redis (``store=`` a URL or a :class:`RedisTier`)."""

    def __init__(self, store: Any, namespace: str, signing_key: Any = None) -> None:
        if not namespace or ":" in namespace:
            raise ValueError("namespace must be non-empty and contain no ':'")
        if isinstance(store, RedisTier):
            self.tier, self._owned = store, False
        elif isinstance(store, str) and store.startswith(("redis://", "rediss://", "unix://")):
            self.tier = RedisTier(store, ttl=None, ttl_jitter=0.0, signing_key=signing_key)
            self._owned = True
        else:
            raise ValueError("QueryCache store must be 'memory', a redis:// URL or a RedisTier")
        self._prefix = internal_prefix(namespace) + "l3:"
        self._mirror: dict[str, tuple[str, dict[str, int]]] = {}
        self._pending: dict[str, set[str]] = {}
        self._pending_at = 0.0
        self.errors = 0
        self.regressions = 0
        self.bump_retries = 0

    def gens_key(self, shard: str) -> str:
        return f"{self._prefix}gen:{{{shard}}}"

    def entry_key(self, plan: Plan, args: tuple[Any, ...]) -> str:
        return f"{self._prefix}e:{plan.prefix}:{params_digest(args)}"

    async def _eval(self, op: str, script: str, key: str, *args: Any,
                    force: bool = False) -> Any:
        """``force``: past the key's node breaker (refused only when every node's is open)."""
        tier = self.tier
        reply = await tier._run(Run(op, eval_(script, 1, key, *args), FAILED,
                                    None if force else tier._guard(key), tier._budget, key))
        if reply is FAILED:
            self.errors += 1
        return reply

    # -- generations ---------------------------------------------------------------------

    async def gens(self, shard: str, fields: tuple[str, ...]) -> list[Any] | None:
        """``[incarnation, *fields' generations]`` now, or ``None`` (Redis unusable, or a
        regression was found and is being repaired)."""
        hkey = self.gens_key(shard)
        reply = await self._eval("l3_gens", GENS_LUA, hkey, INC, secrets.token_hex(8), *fields)
        if reply is FAILED or not isinstance(reply, list) or len(reply) != len(fields) + 1:
            return None
        try:
            inc = _text(reply[0])
            values = [int(v) if v is not None else 0 for v in reply[1:]]
        except (TypeError, ValueError):
            return None  # a foreign writer's hash: not ours to trust
        seen = self._mirror.get(shard)
        if seen is None or seen[0] != inc:
            seen = (inc, {})
            self._mirror[shard] = seen
        highest = seen[1]
        regressed: list[Any] = []
        for name, value in zip(fields, values, strict=True):
            top = highest.get(name, 0)
            if value < top:
                regressed.extend((name, top + 1))
            elif value > top:
                highest[name] = value
        if regressed:
            self.regressions += 1
            await self._eval("l3_raise", RAISE_LUA, hkey, *regressed)
            return None
        return [inc, *values]

    async def bump(self, shard: str, names: list[str]) -> bool:
        """HINCRBY each name (and any still owed for ``shard``) before the write returns.

        Why a second, forced attempt: the other processes learn of this write only from the
        hash.  A bump that was dropped (a lost connection) or skipped (this process's breaker
        for the node is open while Redis answers the others) would let them keep serving the
        old rows -- only this process bypasses while it owes the bump.  So a failure is
        retried at once past the node's breaker (a fresh connection), costing one Redis
        timeout at most; only when that fails too is the bump owed (reads of ``shard`` here
        bypass until it is applied; see the known limits for the other processes)."""
        owed = self._pending.get(shard)
        send = sorted(owed.union(names)) if owed else names
        hkey = self.gens_key(shard)
        reply = await self._eval("l3_bump", BUMP_LUA, hkey, *send)
        if reply is FAILED:
            self.bump_retries += 1
            reply = await self._eval("l3_bump", BUMP_LUA, hkey, *send, force=True)
        if reply is FAILED:
            self._pending.setdefault(shard, set()).update(send)
            return False
        if owed:
            self._paid(shard, owed, send)
        return True

    def _paid(self, shard: str, owed: set[str], names: list[str]) -> None:
        """``names`` of ``owed`` are in Redis now.  The set is dropped only if it is still
        the shard's: during the await another bump may have paid it and a new one be owed."""
        owed.difference_update(names)
        if not owed and self._pending.get(shard) is owed:
            del self._pending[shard]

    def owe(self, shard: str, names: list[str]) -> None:
        """Owe ``names`` now (reads of ``shard`` bypass until a bump has applied them)."""
        self._pending.setdefault(shard, set()).update(names)

    async def _settled(self, shard: str) -> bool:
        """No bump owed for ``shard`` (retrying owed ones at most every 100 ms)."""
        owed = self._pending.get(shard)
        if not owed:
            return True
        now = time.monotonic()
        if now - self._pending_at < _RETRY_PENDING:
            return False
        self._pending_at = now
        names = sorted(owed)
        reply = await self._eval("l3_bump", BUMP_LUA, self.gens_key(shard), *names)
        if reply is FAILED:
            return False
        self._paid(shard, owed, names)
        return shard not in self._pending

    # -- entries -------------------------------------------------------------------------

    def _valid(self, entry: Any, gens: list[Any]) -> bool:
        if entry is MISSING:
            return False
        value = entry.value
        return type(value) is list and len(value) == 2 and value[0] == gens

    async def read(self, qc: QueryCache, plan: Plan, args: tuple[Any, ...],
                   cache_ttl: float | str | bool, run: Callable[[], Awaitable[Any]]) -> Any:
        """The shared read path: one round trip for a hit; lease, run, check, store on a miss."""
        if self._pending and not await self._settled(plan.shard):
            qc.bypass("store_pending")
            return await run()
        fields = plan.names(args)
        near = qc._mem
        lkey = (plan, params_key(args))
        local = near.entries.get(lkey)
        if local is not None and local.expires > time.monotonic():
            # A copy from an earlier read: one round trip (the generations) decides.
            gens = await self.gens(plan.shard, fields)
            if gens is None:
                qc.bypass("store_error")
                return await run()
            if local.value[0] == gens:
                qc.hits += 1
                local.hits += 1
                qc.db_time_saved_ns += local.cost
                value = local.value[1]
                return list(value) if type(value) is list else value
            near.drop(lkey)
            key = self.entry_key(plan, args)
            entry = await self.tier.get_entry(key)
        else:
            key = self.entry_key(plan, args)
            gens, entry = await asyncio.gather(self.gens(plan.shard, fields),
                                               self.tier.get_entry(key))
            if gens is None:
                qc.bypass("store_error")
                return await run()
        if entry is not MISSING and self._valid(entry, gens):
            qc.hits += 1
            qc.db_time_saved_ns += entry.load_time * 1e9
            self._keep(qc, plan, lkey, fields, gens, entry.value[1], entry.load_time * 1e9,
                       entry.ttl, entry.stored_at)
            return _copy(entry.value[1])  # the near copy keeps the original
        fkey = (key, *gens)
        waiter = qc._flights.join(fkey)
        if waiter is not None:
            qc.count("singleflight_waits")
            try:
                return await waiter
            except RunnerGone:  # its runner was cancelled: start over (and maybe run it)
                return await self.read(qc, plan, args, cache_ttl, run)
        qc.misses += 1
        try:
            result = await self._fill(qc, plan, args, fields, key, gens, cache_ttl, run)
        except BaseException as exc:
            qc._flights.failed(fkey, exc)
            raise
        qc._flights.done(fkey, result)
        return _copy(result)  # the near copy keeps the original

    async def _fill(self, qc: QueryCache, plan: Plan, args: tuple[Any, ...],
                    fields: tuple[str, ...], key: str, gens: list[Any],
                    cache_ttl: float | str | bool, run: Callable[[], Awaitable[Any]]) -> Any:
        tier = self.tier
        lease_ms = max(100, int(qc.lease_wait * 1000))
        token = await tier.acquire_lease(key, lease_ms)
        if token is None:  # another process is filling: wait for its entry (or its lease)
            deadline = time.monotonic() + qc.lease_wait
            delay = 0.001
            while token is None and time.monotonic() < deadline:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.02)
                entry = await tier.get_entry(key)
                if self._valid(entry, gens):
                    qc.count("lease_waits")
                    return entry.value[1]
                token = await tier.acquire_lease(key, lease_ms)  # the holder gave up?
        try:
            t0 = time.perf_counter_ns()
            result = await run()
            elapsed = time.perf_counter_ns() - t0
            if await self.gens(plan.shard, fields) != gens or plan.shard in qc._untrusted:
                qc.count("race_skips")  # a write committed meanwhile: don't store
                return result
            ttl = qc.ttl_for(cache_ttl, elapsed, plan.analysis)
            try:
                payload, px = tier._pack(key, [gens, result], ttl, elapsed / 1e9)
            except ValueTooLarge:
                qc.bypass("too_large")
                return result
            except TypeError:
                qc.bypass("unencodable")
                return result
            if len(payload) > qc.max_entry_bytes:
                qc.bypass("too_large")
                return result
            await tier._drive(tier._set(key, payload, px))
            qc.count("fills")
            self._keep(qc, plan, (plan, params_key(args)), fields, gens, result, elapsed, ttl,
                       time.time(), len(payload))
            return result
        finally:
            if token is not None:
                await tier.release_lease(key, token)

    @staticmethod
    def _keep(qc: QueryCache, plan: Plan, lkey: Any, fields: tuple[str, ...], gens: list[Any],
              result: Any, cost_ns: float, ttl: float | None, stored_at: float,
              size: int | None = None) -> None:
        """Keep a near copy in this process (bounded by ``max_bytes``): the next read of it
        costs one round trip, the generations, instead of two commands."""
        left = qc.max_ttl if ttl is None else ttl - (time.time() - stored_at)
        if left <= 0:
            return
        if size is None:
            try:
                size = encoded_size(result)
            except TypeError:
                return
        size += 96
        if size > qc.max_entry_bytes or size > qc.max_bytes:
            return
        deps = tuple((plan.shard, f) for f in fields)
        qc._mem.put(lkey, MemEntry((gens, result), size, max(cost_ns, 1.0),
                                   time.monotonic() + left, deps))

    def stats(self) -> dict[str, Any]:
        t = self.tier.stats()
        return {
            "store_errors": self.errors + int(t.get("errors", 0)),
            "pending_bumps": sum(len(v) for v in self._pending.values()),
            "bump_retries": self.bump_retries,
            "regressions": self.regressions,
            "redis_breaker": t.get("breaker"),
        }

    async def close(self) -> None:
        if self._owned:
            await self.tier.close()


def _text(raw: Any) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _copy(value: Any) -> Any:
    """A fresh list per caller (Records themselves are immutable)."""
    return list(value) if type(value) is list else value
