"""Shared state and helpers of :class:`~tiercache.tiers.redis.RedisTier` (both flavours).

Holds what the async methods and their ``*_sync`` twins have in common: counters and
latency histograms, the "Redis failure is not the caller's failure" handling (count,
feed the breaker, log at most once per interval per operation), TTL jitter, and the
derived keys (tag sets, leases) with their Lua scripts.

Key layout and Lua scripts: :mod:`tiercache.tiers.keys`.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from redis.exceptions import DataError, MaxConnectionsError, ResponseError

from tiercache._stats import LATENCY_BUCKETS, CounterMap, Histogram, hit_ratio
from tiercache.codec import FORMAT_VERSION, CodecError, Entry, decode, pack_entry, unpack_entry
from tiercache.tiers._breaker import CircuitBreaker
from tiercache.tiers.base import MISSING, Missing

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

    def __init__(self, ttl: float | None, ttl_jitter: float,
                 breaker: CircuitBreaker | None) -> None:
        if ttl is not None and ttl <= 0:
            raise ValueError("ttl must be > 0 or None")
        if not 0.0 <= ttl_jitter < 1.0:
            raise ValueError("ttl_jitter must be in [0, 1)")
        self.ttl = ttl
        self.ttl_jitter = ttl_jitter
        self.breaker = breaker or CircuitBreaker(failure_threshold=5, reset_timeout=2.0)
        if self.breaker._on_change is None:  # log transitions unless the owner listens
            self.breaker._on_change = self._breaker_changed
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

    def _histogram(self, op: str) -> Histogram:
        hist = self.latency.get(op)
        if hist is None:
            hist = self.latency[op] = Histogram(LATENCY_BUCKETS)
        return hist

    # ------------------------------------------------------------ failure handling

    def _breaker_changed(self, old: str, new: str) -> None:
        level = logging.WARNING if new == "open" else logging.INFO
        log.log(level, "redis tier %s: circuit breaker %s -> %s", self._spec.redacted, old, new)

    def _skip(self) -> None:
        """The breaker is open: count it, skip the call (no log per call)."""
        self.errors += 1
        self.errors_by_op.inc("breaker_open")

    def _failed(self, op: str, exc: Exception) -> None:
        self.errors += 1
        self.errors_by_op.inc(op)
        verdict = _server_verdict(exc)
        if verdict is False:
            self.breaker.record_failure()
        elif verdict:
            self.breaker.record_success()  # Redis answered; the request was the problem
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

    def _pack(self, value: Any, ttl: float | None, load_time: float) -> tuple[bytes, int | None]:
        """(envelope, PX ms); raises ``TypeError`` for an unencodable value."""
        ttl_s, px = self._expiry(ttl)
        return pack_entry(value, stored_at=time.time(), ttl=ttl_s, load_time=load_time), px

    def _pack_many(self, mapping: Mapping[str, Any],
                   ttl: float | None) -> list[tuple[str, bytes, int | None]]:
        """Encode every value before anything is written (all or nothing on TypeError)."""
        return [(key, *self._pack(value, ttl, 0.0)) for key, value in mapping.items()]

    # ------------------------------------------------------------ decoding

    def _decode(self, key: str, raw: Any) -> Entry | Missing:
        if raw is None:
            self.misses += 1
            return MISSING
        try:
            entry = fast_unpack(raw)
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
                found[key] = fast_unpack(raw) if entries else fast_unpack(raw)[0]
            except CodecError as exc:
                self._corrupt(key, exc)
        self.hits += len(found)
        self.misses += misses
        return found

    # ------------------------------------------------------------ stats

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
            "latency": {op: h.snapshot() for op, h in self.latency.items()},
            "size": None,
        }
