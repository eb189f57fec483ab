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

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import asyncpg.exceptions as pgexc

from tiercache.sharding._pool_metrics import EndpointMetrics
from tiercache.sharding._redact import redact_dsn

__all__ = [
    "CONNECTION_ERRORS", "REPLICA_SELECTION", "SINGLE_SHARD", "Endpoint", "Shard", "name_endpoint",
    "parse_shards", "pool_of",
]

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
    """A DSN-like label for an endpoint given by connect arguments (no password, ever)."""
    host = kwargs.get("host") or os.environ.get("PGHOST") or "<libpq default host>"
    port = kwargs.get("port") or os.environ.get("PGPORT") or ""
    database = kwargs.get("database") or os.environ.get("PGDATABASE") or ""
    user = kwargs.get("user") or os.environ.get("PGUSER") or ""
    password = ":***" if kwargs.get("password") or os.environ.get("PGPASSWORD") else ""
    return f"postgresql://{user}{password}@{host}{':' if port else ''}{port}/{database}"


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


def _endpoint(
    shard: str, role: str, raw: Any, inherited: Mapping[str, Any], defaults: Mapping[str, Any]
) -> Endpoint:
    """One endpoint; a mapping must say where the server is (``dsn`` or ``host``).

    Without either asyncpg would quietly connect to its default server (``PGHOST`` or
    localhost:5432): for one shard of several that is a misconfiguration, never an intent.
    """
    dsn, extra = _endpoint_spec(raw)
    extra = {**inherited, **extra}
    if dsn is None and not extra.get("host") and not defaults.get("host"):
        raise ValueError(
            f"shard {shard!r} ({role}) has no 'dsn' (nor 'host'): give its DSN, e.g. "
            f'{{"{shard}": {{"dsn": "postgresql://...", ...}}}}'
        )
    ep = Endpoint(shard, role, dsn, extra)
    if dsn is None:
        ep.redacted = _describe({**defaults, **extra})
    return ep


#: The shard name of a pool made from one DSN (or from asyncpg-style connect arguments).
SINGLE_SHARD = "default"


def parse_shards(
    shards: Mapping[str, Any] | str | None,
    replica_selection: str = "round_robin",
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Shard]:
    """Turn the user's ``{name: dsn | {"dsn", "weight", "replicas", ...}}`` into shards.

    A DSN string (or ``None``: asyncpg's connect arguments and libpq defaults) is one shard
    named ``"default"``, as ``asyncpg.create_pool(dsn, **connect_kwargs)`` is one server.
    ``defaults`` are the pool-wide connect arguments (a ``host=`` there is an address).
    """
    if replica_selection not in REPLICA_SELECTION:
        raise ValueError(
            f"replica_selection must be one of {REPLICA_SELECTION}, not {replica_selection!r}"
        )
    defaults = defaults or {}
    if shards is None or isinstance(shards, str):
        primary = Endpoint(SINGLE_SHARD, "primary", shards, {})
        if shards is None:
            primary.redacted = _describe(defaults)
        return {SINGLE_SHARD: Shard(SINGLE_SHARD, 1, primary, ())}
    if not isinstance(shards, Mapping):
        raise TypeError(
            "shards must be a DSN string or a mapping of shard name to DSN (or to a dict with "
            f"'dsn', 'weight', 'replicas'), not {type(shards).__name__}"
        )
    if not shards:
        raise ValueError("at least one shard is required")
    parsed: dict[str, Shard] = {}
    for name, raw in shards.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"shard names must be non-empty strings, not {name!r}")
        weight = raw.get("weight", 1) if isinstance(raw, Mapping) else 1
        if not isinstance(weight, int) or isinstance(weight, bool) or weight < 1:
            raise ValueError(f"shard {name!r}: weight must be a positive int, not {weight!r}")
        primary = _endpoint(name, "primary", raw, {}, defaults)
        raw_replicas = raw.get("replicas", ()) if isinstance(raw, Mapping) else ()
        if isinstance(raw_replicas, str | Mapping):
            raw_replicas = [raw_replicas]
        replicas = [
            _endpoint(name, f"replica{i}", replica, primary.connect_kwargs, defaults)
            for i, replica in enumerate(raw_replicas)
        ]
        least_latency = replica_selection == "least_latency"
        parsed[name] = Shard(name, weight, primary, replicas, least_latency)
    return parsed


def name_endpoint(exc: BaseException, ep: Endpoint) -> BaseException:
    """Add a note naming ``ep``'s shard, role and redacted DSN to ``exc`` (once); return it.

    The exception keeps its class (``except asyncpg.X`` and ``except OSError`` still work);
    the note shows in tracebacks and in ``logging.exception`` output.
    """
    note = f"tiercache: shard {ep.shard!r} ({ep.role}) at {ep.redacted}"
    notes = getattr(exc, "__notes__", None)
    if notes is None or note not in notes:
        exc.add_note(note)
    return exc


def pool_of(connection: Any) -> Any:
    """The asyncpg pool a pool connection proxy was acquired from, or ``None``."""
    if not isinstance(connection, asyncpg.pool.PoolConnectionProxy):
        return None
    holder = getattr(connection, "_holder", None)
    return getattr(holder, "_pool", None)
