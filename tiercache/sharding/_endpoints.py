"""Shard specifications, endpoints (one asyncpg pool each) and replica selection.

A shard is one primary plus zero or more read replicas; each of those is an *endpoint* owning
one ``asyncpg.Pool`` and its own counters.  Replica choice is round-robin over the healthy
replicas, or "least latency": the lowest moving average of recent statement latency, scaled
by the calls queued for a connection, with every 8th pick round-robin so a replica that was
slow once is measured again instead of starved forever.  A replica that failed with a
connection-level error is skipped for ``retry_after`` seconds and then tried again
(half-open, like a circuit breaker), and when no replica is usable reads fall back to the
primary.  That keeps a dead replica from turning into failed reads while still noticing
quickly when it comes back.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import asyncpg.exceptions as pgexc

from tiercache.sharding._pool_metrics import EndpointMetrics
from tiercache.sharding._redact import redact_dsn

__all__ = ["CONNECTION_ERRORS", "REPLICA_SELECTION", "Endpoint", "Shard", "parse_shards"]

#: Replica selection strategies for ``readonly=True`` calls.
REPLICA_SELECTION = ("round_robin", "least_latency")
_EXPLORE_EVERY = 8

#: Failures that say "this server is unreachable or going away", as opposed to a problem
#: with the statement.  A replica failing like this is taken out of the read rotation.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    pgexc.PostgresConnectionError,
    pgexc.OperatorInterventionError,
    pgexc.TooManyConnectionsError,
    pgexc.ConnectionDoesNotExistError,
)

# Keys of a shard specification that are ours; everything else is passed to asyncpg as a
# per-shard connect argument (host, port, ssl, server_settings...).
_SPEC_KEYS = frozenset({"dsn", "weight", "replicas"})


class Endpoint:
    """One asyncpg pool (primary or replica) with its DSN, counters and health."""

    __slots__ = (
        "connect_kwargs",
        "dsn",
        "healthy",
        "metrics",
        "pool",
        "redacted",
        "retry_at",
        "role",
        "shard",
    )

    def __init__(
        self, shard: str, role: str, dsn: str | None, connect_kwargs: Mapping[str, Any]
    ) -> None:
        self.shard = shard
        self.role = role
        self.dsn = dsn
        self.redacted = redact_dsn(dsn) if dsn else _describe(connect_kwargs)
        self.connect_kwargs = dict(connect_kwargs)
        self.pool: Any = None  # asyncpg.Pool once created
        self.metrics = EndpointMetrics()
        self.healthy = True
        self.retry_at = 0.0

    def mark_down(self, retry_after: float) -> None:
        """Take this endpoint out of the read rotation for ``retry_after`` seconds."""
        self.healthy = False
        self.retry_at = time.monotonic() + retry_after

    def mark_up(self) -> None:
        self.healthy = True
        self.retry_at = 0.0

    def usable(self) -> bool:
        """Healthy, or unhealthy long enough ago to deserve another try."""
        if self.healthy:
            return self.pool is not None
        return self.pool is not None and time.monotonic() >= self.retry_at

    def __repr__(self) -> str:
        state = "up" if self.healthy else "down"
        return f"<Endpoint {self.shard}/{self.role} {self.redacted} {state}>"


class Shard:
    """A named shard: its ring weight, primary endpoint and replica endpoints."""

    __slots__ = ("_picks", "_rr", "least_latency", "name", "primary", "replicas", "weight")

    def __init__(
        self, name: str, weight: int, primary: Endpoint, replicas: Sequence[Endpoint],
        least_latency: bool = False,
    ) -> None:
        self.name = name
        self.weight = weight
        self.primary = primary
        self.replicas = tuple(replicas)
        self.least_latency = least_latency
        self._rr = 0
        self._picks = 0

    def endpoints(self) -> tuple[Endpoint, ...]:
        return (self.primary, *self.replicas)

    def pick_read(self) -> Endpoint:
        """The replica for the next read-only call; the primary when none is usable."""
        if self.least_latency:
            self._picks += 1
            if self._picks % _EXPLORE_EVERY:
                best: Endpoint | None = None
                best_score = 0
                for ep in self.replicas:
                    if ep.usable():
                        m = ep.metrics
                        score = m.latency_ewma_ns * (m.waiting + 1)
                        if best is None or score < best_score:
                            best, best_score = ep, score
                return best if best is not None else self.primary
        replicas = self.replicas
        n = len(replicas)
        start = self._rr
        for i in range(n):
            ep = replicas[(start + i) % n]
            if ep.usable():
                self._rr = (start + i + 1) % n
                return ep
        return self.primary


def _describe(kwargs: Mapping[str, Any]) -> str:
    host = kwargs.get("host", "?")
    port = kwargs.get("port", "")
    database = kwargs.get("database", "")
    user = kwargs.get("user", "")
    return f"postgresql://{user}{':***' if kwargs.get('password') else ''}@{host}:{port}/{database}"


def _endpoint_spec(raw: Any) -> tuple[str | None, dict[str, Any]]:
    if isinstance(raw, str):
        return raw, {}
    if isinstance(raw, Mapping):
        extra = {k: v for k, v in raw.items() if k not in _SPEC_KEYS}
        dsn = raw.get("dsn")
        if dsn is not None and not isinstance(dsn, str):
            raise TypeError("a shard's 'dsn' must be a string")
        return dsn, extra
    raise TypeError(f"a shard or replica must be a DSN string or a mapping, not {type(raw)!r}")


def parse_shards(
    shards: Mapping[str, Any], replica_selection: str = "round_robin"
) -> dict[str, Shard]:
    """Turn the user's ``{name: dsn | {"dsn", "weight", "replicas", ...}}`` into shards."""
    if replica_selection not in REPLICA_SELECTION:
        raise ValueError(
            f"replica_selection must be one of {REPLICA_SELECTION}, not {replica_selection!r}"
        )
    if not isinstance(shards, Mapping):
        raise TypeError(
            "shards must be a mapping of shard name to DSN (or to a dict with 'dsn', "
            f"'weight', 'replicas'), not {type(shards).__name__}"
        )
    if not shards:
        raise ValueError("at least one shard is required")
    parsed: dict[str, Shard] = {}
    for name, raw in shards.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"shard names must be non-empty strings, not {name!r}")
        dsn, extra = _endpoint_spec(raw)
        weight = raw.get("weight", 1) if isinstance(raw, Mapping) else 1
        if not isinstance(weight, int) or isinstance(weight, bool) or weight < 1:
            raise ValueError(f"shard {name!r}: weight must be a positive int, not {weight!r}")
        raw_replicas = raw.get("replicas", ()) if isinstance(raw, Mapping) else ()
        if isinstance(raw_replicas, str | Mapping):
            raw_replicas = [raw_replicas]
        primary = Endpoint(name, "primary", dsn, extra)
        replicas = []
        for i, replica in enumerate(raw_replicas):
            rdsn, rextra = _endpoint_spec(replica)
            replicas.append(Endpoint(name, f"replica{i}", rdsn, {**extra, **rextra}))
        least_latency = replica_selection == "least_latency"
        parsed[name] = Shard(name, weight, primary, replicas, least_latency)
    return parsed


def pool_of(connection: Any) -> Any:
    """The asyncpg pool a pool connection proxy was acquired from, or ``None``."""
    if not isinstance(connection, asyncpg.pool.PoolConnectionProxy):
        return None
    holder = getattr(connection, "_holder", None)
    return getattr(holder, "_pool", None)
