"""Shared state and helpers of :class:`~tiercache.tiers.redis.RedisTier` (both flavours).

Holds what every operation shares, sync or async: counters and latency histograms, the
"Redis failure is not the caller's failure" handling (count, feed the node's breaker, log
at most once per interval per operation), the per-node breakers and the key -> node map,
pending repairs, TTL jitter, the size bound, signing, encoding and decoding.

Key layout and Lua scripts: :mod:`tiercache.tiers.keys`.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from redis.crc import key_slot
from redis.exceptions import DataError, MaxConnectionsError, ResponseError

from tiercache.codec import (
    FORMAT_VERSION,
    CodecError,
    Entry,
    Signer,
    decode,
    pack_entry,
    unpack_entry,
)
from tiercache.metrics.counters import LATENCY_BUCKETS, CounterMap, Histogram, hit_ratio
from tiercache.tiers._breaker import CircuitBreaker, NodeBreakers
from tiercache.tiers._repairs import Repairs
from tiercache.tiers.base import MISSING, Missing, ValueTooLarge

if TYPE_CHECKING:
    from tiercache.tiers._redis_conn import ConnSpec

__all__ = ["RedisTierBase", "scan_cursor"]

log = logging.getLogger("tiercache.redis")

LOG_INTERVAL: Final = 10.0  # seconds between two warnings for the same operation
LOCAL_LEASE_PREFIX: Final = "local:"


def scan_cursor(reply: Any, node: Any) -> tuple[int, list[Any]]:
    """(next cursor, keys) from a SCAN reply; cluster replies map node name -> cursor."""
    cursor, found = reply
    if isinstance(cursor, dict):
        cursor = cursor[node.name]
    return int(cursor), list(found)


_HEADER: Final = b"\xc1TC" + bytes([FORMAT_VERSION])  # the codec's documented wire format
_new_entry = tuple.__new__


def fast_unpack(raw: bytes) -> Entry:
    """:func:`tiercache.codec.unpack_entry` for the common case, ~2x cheaper.

    Takes the codec's own :func:`~tiercache.codec.decode` for the body and only skips the
    generic conversions when the envelope is exactly what this version writes (current
    version byte, float fields); anything else goes through ``unpack_entry`` itself, so
    validation and error messages stay the codec's. Matters for ``get_many``, where decoding
    100 envelopes is most of what the tier adds to the round trip.
    """
    if raw[:4] == _HEADER:
        fields = decode(raw[4:])
        if type(fields) is list and len(fields) == 4:
            stored_at, ttl, load_time = fields[1], fields[2], fields[3]
            if (type(stored_at) is float and type(load_time) is float
                    and (ttl is None or type(ttl) is float)):
                entry: Entry = _new_entry(Entry, fields)
                return entry
    return unpack_entry(raw)


def _server_verdict(exc: BaseException) -> bool | None:
    """What ``exc`` says about the server, for the breaker: up (True), down (False), or
    nothing (None).

    A plain error reply (WRONGTYPE, NOSCRIPT...) means Redis is up; redis-py's cluster
    errors (CLUSTERDOWN, TRYAGAIN, MOVED/ASK storms) subclass ResponseError but are outages.
    An exhausted connection pool is a load spike on our side and says nothing about the
    server: opening the breaker then would switch the cache off when it is needed most.
    """
    if isinstance(exc, MaxConnectionsError):
        return None
    return type(exc) is ResponseError or isinstance(exc, DataError)


class RedisTierBase:
    """Counters, failure handling and TTL policy shared by the async and sync methods."""

    name = "l2"
    _spec: ConnSpec

    _cluster: bool | None
    _aclient: Any
    _sclient: Any

    def __init__(self, ttl: float | None, ttl_jitter: float,
                 breaker: CircuitBreaker | None, *, max_value_bytes: int | None,
                 max_pending: int, signer: Signer | None) -> None:
        if ttl is not None and ttl <= 0:
            raise ValueError("ttl must be > 0 or None")
        if not 0.0 <= ttl_jitter < 1.0:
            raise ValueError("ttl_jitter must be in [0, 1)")
        self.ttl = ttl
        self.ttl_jitter = ttl_jitter
        if max_value_bytes is not None and max_value_bytes < 1:
            raise ValueError("max_value_bytes must be >= 1 or None")
        # One breaker per node; ``breaker`` is their aggregate (worst state), ``breakers``
        # the members by "host:port". The given breaker is the template (and the first).
        self.breaker = NodeBreakers(breaker, on_change=self._breaker_changed)
        self.max_value_bytes = max_value_bytes
        self.skipped_too_large = 0
        self._signer = signer
        self._repairs = Repairs(max_pending)
        self._retired_at = 0.0
        self._rand = random.Random()
        self.hits = 0
        self.misses = 0
        self.sets = 0
        self.deletes = 0
        self.errors = 0
        self.errors_by_op = CounterMap()
        self.tag_failures = 0  # tags whose pop failed (counted in errors too)
        self.latency: dict[str, Histogram] = {}
        self._lat_get = self._histogram("get")
        self._lat_get_many = self._histogram("get_many")
        self._lat_set = self._histogram("set")
        self._log_last: dict[str, float] = {}
        self._log_suppressed = CounterMap()

    @property
    def signer(self) -> Signer | None:
        """The envelope signer (None = unsigned); the invalidation bus signs with it too."""
        return self._signer

    def _histogram(self, op: str) -> Histogram:
        hist = self.latency.get(op)
        if hist is None:
            hist = self.latency[op] = Histogram(LATENCY_BUCKETS)
        return hist

    # ------------------------------------------------------------ failure handling

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        """The per-node breakers, by ``"host:port"`` (a copy)."""
        return dict(self.breaker.nodes)

    def _breaker_changed(self, node: str, old: str, new: str) -> None:
        level = logging.WARNING if new == "open" else logging.INFO
        log.log(level, "redis tier %s: circuit breaker %s -> %s (node %s)",
                self._spec.redacted, old, new, node)

    def _seed_name(self) -> str:
        """The breaker name used while no topology is known (and for a single Redis)."""
        spec = self._spec
        if spec.path:
            return f"unix:{spec.path}"
        host, port = spec.nodes[0] if spec.nodes else ("?", 0)
        return f"{host}:{port}"

    def _node_of(self, key: str) -> CircuitBreaker:
        """The breaker of the node owning ``key`` (slow path: only while degraded)."""
        if self._cluster:
            for client in (self._aclient, self._sclient):
                manager = getattr(client, "nodes_manager", None)
                if manager is not None:
                    owners = manager.slots_cache.get(key_slot(key.encode()))
                    if owners:
                        return self.breaker.get(owners[0].name)
        return self.breaker.get(self._seed_name())

    def _live_nodes(self) -> set[str]:
        """Names of the masters in the client's current topology (empty when unknown)."""
        for client in (self._aclient, self._sclient):
            manager = getattr(client, "nodes_manager", None)
            if manager is not None:
                return {name for name, node in list(manager.nodes_cache.items())
                        if node.server_type == "primary"}
        return set()

    def _succeeded(self, node: CircuitBreaker) -> None:
        group = self.breaker
        group.succeeded(node)
        if group.degraded and self._cluster:
            now = time.monotonic()
            if now - self._retired_at >= 1.0:  # a failed-over master left the topology?
                self._retired_at = now
                group.retire(self._live_nodes())
                group.recheck()

    def _skip(self) -> None:
        """The breaker is open: count it, skip the call (no log per call)."""
        self.errors += 1
        self.errors_by_op.inc("breaker_open")

    def _failed(self, op: str, exc: Exception, node: CircuitBreaker | None = None,
                key: str | None = None) -> None:
        """Count, log, and tell the breaker of the node that failed: ``node``, else the
        one of ``key``, else (a multi-node call) nobody, but split the next batches."""
        self.errors += 1
        self.errors_by_op.inc(op)
        verdict = _server_verdict(exc)
        if verdict is False:
            if node is None and (key is not None or not self._cluster):
                node = self._node_of(key or "")
            self.breaker.failed(node)
        elif verdict and node is not None:
            self._succeeded(node)  # Redis answered; the request was the problem
        detail = str(exc) or ("no reply in time" if isinstance(exc, TimeoutError) else "-")
        self._warn(op, "redis %s failed on %s: %s: %s", op, self._spec.redacted,
                   type(exc).__name__, self._spec.redactor.text(detail))

    def _tag_members(self, tags: list[str], replies: list[Any]) -> list[Any]:
        """Entry keys from the tag-pop replies; a failed pop (WRONGTYPE from a foreign
        writer, a script error) is counted and logged, the other tags still apply."""
        keys: dict[Any, None] = {}
        for tag, reply in zip(tags, replies, strict=True):
            if isinstance(reply, Exception):
                if _server_verdict(reply) is False:
                    raise reply  # an outage, not a bad tag: the whole call failed
                self.errors += 1
                self.errors_by_op.inc("invalidate_tags")
                self.tag_failures += 1
                self._warn("invalidate_tags", "redis invalidate_tags failed for tag %r on %s: "
                           "%s: %s", tag[:80], self._spec.redacted, type(reply).__name__,
                           self._spec.redactor.text(str(reply)))
                continue
            for member in reply or ():
                keys[member] = None
        return list(keys)

    def _corrupt(self, key: str, exc: CodecError) -> Missing:
        """An unreadable payload: a miss for the caller, plus an error and a log line."""
        self.misses += 1
        self.errors += 1
        self.errors_by_op.inc("decode")
        self._warn("decode", "unreadable L2 entry %r treated as a miss: %s", key, exc)
        return MISSING

    def _warn(self, op: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._log_last.get(op, -math.inf) < LOG_INTERVAL:
            self._log_suppressed.inc(op)
            return
        self._log_last[op] = now
        suppressed = self._log_suppressed.pop(op, 0)
        if suppressed:
            msg += " (%d similar suppressed)"
            args = (*args, suppressed)
        log.warning(msg, *args)

    # ------------------------------------------------------------ TTL

    def _expiry(self, ttl: float | None) -> tuple[float | None, int | None]:
        """``(ttl seconds stored in the envelope, PX milliseconds)``; PX 0 = do not store.

        None means the tier default; ``math.inf`` (or a None default) means no expiry. The
        jittered TTL is uniform in ``[ttl * (1 - jitter), ttl]`` so hot keys written together
        do not expire together.
        """
        if ttl is None:
            ttl = self.ttl
        if ttl is None or ttl == math.inf:
            return None, None
        if ttl <= 0:
            return 0.0, 0
        if self.ttl_jitter:
            ttl *= 1.0 - self.ttl_jitter * self._rand.random()
        return ttl, max(1, int(ttl * 1000))

    # ------------------------------------------------------------ encoding

    def _pack(self, key: str, value: Any, ttl: float | None,
              load_time: float, stale: float = 0.0) -> tuple[bytes, int | None]:
        """(envelope, PX ms); ``TypeError`` for an unencodable value, :class:`ValueTooLarge`
        above ``max_value_bytes`` (counted, logged; nothing is written). ``stale`` seconds
        are added to PX only: the envelope's TTL stays the logical one."""
        ttl_s, px = self._expiry(ttl)
        if stale > 0 and px and ttl_s is not None:
            px = max(1, int((ttl_s + stale) * 1000))
        payload = pack_entry(value, stored_at=time.time(), ttl=ttl_s, load_time=load_time,
                             signer=self._signer, context=key)
        limit = self.max_value_bytes
        if limit is not None and len(payload) > limit:
            self.skipped_too_large += 1
            self._warn("too_large", "value for %r is %d bytes, above max_value_bytes=%d: "
                       "not written to L2", key[:80], len(payload), limit)
            raise ValueTooLarge(f"encoded value for {key[:80]!r} is {len(payload)} bytes, "
                                f"above RedisTier(max_value_bytes={limit})")
        return payload, px

    def _pack_many(self, mapping: Mapping[str, Any],
                   ttl: float | None) -> list[tuple[str, bytes, int | None]]:
        """Encode every value before anything is written (all or nothing on TypeError)."""
        return [(key, *self._pack(key, value, ttl, 0.0)) for key, value in mapping.items()]

    def _unpack(self, key: str, raw: Any) -> Entry:
        signer = self._signer
        if signer is None:
            return fast_unpack(raw)
        return unpack_entry(raw, signer=signer, context=key)

    # ------------------------------------------------------------ decoding

    def _decode(self, key: str, raw: Any) -> Entry | Missing:
        if raw is None:
            self.misses += 1
            return MISSING
        try:
            entry = fast_unpack(raw) if self._signer is None else self._unpack(key, raw)
        except CodecError as exc:
            return self._corrupt(key, exc)
        self.hits += 1
        return entry

    def _decode_many(self, keys: list[str], raws: list[Any],
                     entries: bool = False) -> dict[str, Any]:
        """The hits: values, or whole :class:`Entry` envelopes with ``entries=True``."""
        found: dict[str, Any] = {}
        misses = 0
        for key, raw in zip(keys, raws, strict=True):
            if raw is None:
                misses += 1
                continue
            try:
                entry = self._unpack(key, raw)
                found[key] = entry if entries else entry[0]
            except CodecError as exc:
                self._corrupt(key, exc)
        self.hits += len(found)
        self.misses += misses
        return found

    # ------------------------------------------------------------ stats

    def _breaker_states(self) -> dict[str, str]:
        """``{"host:port": state}`` for every known master (no I/O: the client's map)."""
        group = self.breaker
        for name in self._live_nodes():
            if name not in group.nodes:
                group.get(name)
        return dict(group.states())

    def stats(self) -> dict[str, Any]:
        """Counter snapshot; failed calls count in ``errors`` only (not as misses), an
        unreadable payload in both."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "sets": self.sets,
            "deletes": self.deletes,
            "evictions": 0,  # Redis evicts/expires on its own; not observable per client
            "errors": self.errors,
            "errors_by_op": self.errors_by_op.snapshot(),
            "hit_ratio": hit_ratio(self.hits, self.misses),
            "breaker": self.breaker.state,
            "breaker_opened": self.breaker.opened_total,
            "breakers": self._breaker_states(),
            "repairs": self._repairs.snapshot(),
            "skipped_too_large": self.skipped_too_large,
            "latency": {op: h.snapshot() for op, h in self.latency.items()},
            "size": None,
        }
