"""The asyncpg pools behind a :class:`~tiercache.sharding.pool.ShardedPool`: one per endpoint.

:class:`Fleet` owns the shards, the endpoint pools and the secrets needed to describe them
safely.  It opens them (every primary must come up, replicas may fail and are retried by
``health()``), finds the owner of a connection, and applies pool-wide changes (sizes,
connect arguments, close/terminate).  The sharded pool *has* a fleet; nothing here is on the
query path except :meth:`Fleet.owner`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg

from tiercache.sharding._endpoints import Endpoint, Shard, name_endpoint, parse_shards, pool_of
from tiercache.sharding._fanout import ShardFanoutError
from tiercache.sharding._redact import Redactor, redact_dsn

__all__ = ["Fleet"]

log = logging.getLogger("tiercache.sharding.pool")

#: create_pool arguments that size or shape the pool rather than its connections.
POOL_ONLY = frozenset({
    "init_size", "min_size", "max_size", "max_queries", "max_inactive_connection_lifetime",
    "connect", "setup", "init", "reset", "loop", "connection_class", "record_class",
})


class Fleet:
    """Every shard's primary and replica pools, opened and closed together."""

    __slots__ = ("closing", "owners", "pool_kwargs", "redactor", "retry_after", "session",
                 "shards")

    def __init__(
        self, shards: dict[str, Shard], pool_kwargs: Mapping[str, Any], retry_after: float
    ) -> None:
        self.shards = shards
        self.pool_kwargs = dict(pool_kwargs)
        self.retry_after = retry_after
        self.closing = False  # set by ShardedPool.close()/terminate(): late opens are undone
        # server_settings every connection gets on top of the user's (the ring's digest, so
        # a rebalanced shard can reject sessions that route with a stale ring)
        self.session: dict[str, str] = {}
        self.owners: dict[Any, Endpoint] = {}  # asyncpg pool -> its endpoint
        self.redactor = Redactor()
        self.redactor.add(pool_kwargs.get("password"))
        for ep in self.endpoints():
            self.redactor.add_dsn(ep.dsn)
            self.redactor.add(ep.connect_kwargs.get("password"))
        self._validate()

    def endpoints(self) -> list[Endpoint]:
        return [ep for shard in self.shards.values() for ep in shard.endpoints()]

    def _validate(self) -> None:
        """Raise what ``asyncpg.create_pool`` raises for bad arguments, now, unwrapped.

        Building (not opening) one ``asyncpg.Pool`` runs asyncpg's own checks, so
        ``init_size < min_size`` & co. give asyncpg's very ``ValueError``/``TypeError`` at
        ``create_sharded_pool(...)``, as with asyncpg.  A placeholder loop is passed so no
        event loop is looked up (the real pools are built inside ``await pool``).
        """
        loop = self.pool_kwargs.get("loop") or _NO_LOOP
        for ep in self.endpoints():
            asyncpg.Pool(None, **{**self.pool_kwargs, **ep.connect_kwargs, "loop": loop})

    async def open_all(self) -> None:
        """Open every primary (all must succeed) and every replica (failures are logged).

        A failing primary raises its own exception (class kept, a note names the shard and
        its redacted DSN); several failing primaries raise :class:`ShardFanoutError`.  On
        failure or cancellation nothing is left open, so ``await pool`` can be retried.
        """
        endpoints = self.endpoints()
        try:
            outcomes = await asyncio.gather(
                *(self.open(ep) for ep in endpoints), return_exceptions=True
            )
        except BaseException:  # cancelled: the pools that did open would have no owner
            self.discard(endpoints)
            raise
        primary_errors: dict[str, BaseException] = {}
        for ep, outcome in zip(endpoints, outcomes, strict=True):
            if not isinstance(outcome, BaseException):
                continue
            name_endpoint(self.redactor.exception(outcome), ep)
            if ep.role == "primary":
                primary_errors[ep.shard] = outcome
            else:
                ep.mark_down(self.retry_after)
                log.warning(
                    "tiercache: replica %s of shard %s unavailable at start (%s: %s)",
                    ep.redacted, ep.shard, type(outcome).__name__, outcome,
                )
        if primary_errors:
            self.discard(endpoints)
            if len(primary_errors) == 1:
                (exc,) = primary_errors.values()
                raise exc
            opened = {name: None for name in self.shards if name not in primary_errors}
            dsns = {name: self.shards[name].primary.redacted for name in primary_errors}
            raise ShardFanoutError("create_sharded_pool", opened, primary_errors, dsns)

    async def add(self, name: str, spec: Any) -> Shard:
        """Parse, open and register one more shard (the rebalancer's ``add``).

        Its primary must open (else nothing changes and the error is raised, named); a
        replica that fails is marked down and retried by ``health()``, as at start.
        """
        if self.closing:
            raise asyncpg.InterfaceError("pool is closing")
        if name in self.shards:
            raise ValueError(f"shard {name!r} already exists")
        least = any(s.least_latency for s in self.shards.values())
        shard = parse_shards({name: spec}, "least_latency" if least else "round_robin",
                             self.pool_kwargs)[name]
        loop = self.pool_kwargs.get("loop") or _NO_LOOP
        for ep in shard.endpoints():
            self.redactor.add_dsn(ep.dsn)
            self.redactor.add(ep.connect_kwargs.get("password"))
            asyncpg.Pool(None, **{**self.pool_kwargs, **ep.connect_kwargs, "loop": loop})
        try:
            await self.open(shard.primary)
        except BaseException as exc:
            self.discard([shard.primary])
            name_endpoint(self.redactor.exception(exc), shard.primary)
            raise
        for ep in shard.replicas:
            try:
                await self.open(ep)
            except Exception as exc:  # like a replica at start: retried by health()
                ep.mark_down(self.retry_after)
                log.warning("tiercache: replica %s of shard %s unavailable (%s)", ep.redacted,
                            name, type(exc).__name__)
        self.shards[name] = shard
        return shard

    def discard(self, endpoints: Iterable[Endpoint]) -> None:
        """Terminate and forget the pools of ``endpoints`` (a failed or cancelled start)."""
        for ep in endpoints:
            if ep.pool is not None:
                ep.pool.terminate()
                self.owners.pop(ep.pool, None)
                ep.pool = None

    async def open(self, ep: Endpoint) -> None:
        """Create and await ``ep``'s asyncpg pool (also used to retry a replica later).

        ``health()`` retries replicas, so two probes may open the same endpoint at once, and
        the sharded pool may start closing meanwhile: a pool that lost either race is
        terminated here instead of being left running where ``close()`` cannot see it.
        """
        pool = asyncpg.create_pool(ep.dsn, **self.connect_args(ep, self.pool_kwargs))
        try:
            await pool
        except BaseException:
            pool.terminate()
            raise
        if self.closing:
            pool.terminate()
            raise asyncpg.InterfaceError("pool is closing")
        if ep.pool is not None:  # a concurrent open of this endpoint got there first
            pool.terminate()
            return
        ep.pool = pool
        ep.mark_up()
        self.owners[pool] = ep

    def connect_args(self, ep: Endpoint, base: Mapping[str, Any]) -> dict[str, Any]:
        """``base`` + the endpoint's connect arguments, with :attr:`session` merged into
        ``server_settings``."""
        args = {**base, **ep.connect_kwargs}
        if self.session:
            args["server_settings"] = {**(args.get("server_settings") or {}), **self.session}
        return args

    def retag(self, session: Mapping[str, str]) -> None:
        """New :attr:`session` settings: new connections get them, and every open
        connection is replaced on its next acquire (``expire_connections``)."""
        if dict(session) == self.session:
            return
        self.session = dict(session)
        connect_only = {k: v for k, v in self.pool_kwargs.items() if k not in POOL_ONLY}
        for ep in self.endpoints():
            if ep.pool is not None:
                ep.pool.set_connect_args(ep.dsn, **self.connect_args(ep, connect_only))
                with contextlib.suppress(RuntimeError):  # no running loop: nothing is open
                    asyncio.get_running_loop().create_task(ep.pool.expire_connections())

    def owner(self, connection: Any) -> Endpoint | None:
        """The endpoint whose pool ``connection`` (a pool connection proxy) came from."""
        return self.owners.get(pool_of(connection))

    def selected(self, name: str | None) -> Iterable[Shard]:
        """One shard by name, or every shard for ``None``."""
        return self.shards.values() if name is None else (self.shards[name],)

    def sum_primaries(self, getter: str, name: str | None) -> int:
        """``pool.<getter>()`` of one shard's primary, or summed over every primary.

        Primaries whose pool is not open (before ``await pool``) count as 0.
        """
        return sum(
            getattr(s.primary.pool, getter)() for s in self.selected(name)
            if s.primary.pool is not None
        )

    async def expire_connections(self, name: str | None) -> None:
        await asyncio.gather(*(
            ep.pool.expire_connections()
            for s in self.selected(name) for ep in s.endpoints() if ep.pool is not None
        ))

    def set_connect_args(
        self, dsn: str | None, name: str | None, connect_kwargs: Mapping[str, Any]
    ) -> None:
        """New connect arguments for one shard's primary, or (``name=None``) every pool."""
        self.redactor.add_dsn(dsn)
        self.redactor.add(connect_kwargs.get("password"))
        endpoints = self.endpoints() if name is None else [self.shards[name].primary]
        connect_only = {k: v for k, v in self.pool_kwargs.items() if k not in POOL_ONLY}
        for ep in endpoints:
            if dsn is not None:
                ep.dsn = dsn
                ep.redacted = redact_dsn(dsn)
            ep.connect_kwargs.update(connect_kwargs)
            if ep.pool is not None:
                ep.pool.set_connect_args(ep.dsn, **self.connect_args(ep, connect_only))

    def pools(self) -> list[Any]:
        return [ep.pool for ep in self.endpoints() if ep.pool is not None]


class _NoLoop:
    """Stands in for an event loop while asyncpg validates arguments; never used."""

    __slots__ = ()


_NO_LOOP = _NoLoop()
