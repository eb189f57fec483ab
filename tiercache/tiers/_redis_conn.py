"""Building the redis-py clients behind :class:`~tiercache.tiers.redis.RedisTier`.

Why a separate module: the tier needs up to four client kinds (sync/async x cluster/plain),
created lazily, with cache-friendly settings redis-py does not default to:

* **fail fast**: redis-py retries 10 times with exponential backoff by default, which turns
  a dead Redis into multi-second stalls. A cache prefers a miss: one immediate retry (it
  absorbs a stale pooled connection after a server restart; for the cluster it re-reads the
  topology after a failover), no backoff, short socket timeouts.
* **one description, two flavours**: a URL or a user-provided client becomes a
  :class:`ConnSpec`; sync and async clients are built from the same spec, so a tier given
  an async client can still serve sync ``@cached`` functions (and vice versa).
* **no secrets in text**: ``ConnSpec.redacted`` is the URL with the password masked, and
  ``ConnSpec.redactor`` scrubs the password out of any log line or exception message.

Cluster auto-detection asks the node ``INFO cluster`` (``cluster_enabled:1``).
"""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass, field
from typing import Any, Final

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.backoff import NoBackoff
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.retry import Retry as SyncRetry

from tiercache.sharding._redact import MASK, Redactor, redact_dsn

__all__ = [
    "AsyncClient",
    "ConnSpec",
    "SyncClient",
    "async_primaries",
    "detect_cluster_async",
    "detect_cluster_sync",
    "is_async_client",
    "make_async_client",
    "make_pubsub_client",
    "make_sync_client",
    "spec_from_client",
    "spec_from_url",
    "sync_primaries",
]

SyncClient = redis.Redis | redis.cluster.RedisCluster
AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster

_RETRIES: Final = 1


@dataclass
class ConnSpec:
    """Everything needed to (re)build a client; ``nodes`` are (host, port) seeds."""

    nodes: list[tuple[str, int]]
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr
    db: int = 0
    ssl: bool = False
    path: str | None = None  # unix socket (plain Redis only)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # other URL query args
    redacted: str = ""
    redactor: Redactor = field(default_factory=Redactor, repr=False)
    _rotation: itertools.count[int] = field(default_factory=itertools.count, repr=False)

    def __post_init__(self) -> None:
        self.redactor.add(self.password)
        if not self.redacted:
            host, port = self.nodes[0] if self.nodes else ("?", 0)
            auth = f"{self.username or ''}:{MASK}@" if self.password else ""
            where = f"unix://{self.path}" if self.path else f"redis://{auth}{host}:{port}"
            self.redacted = where

    def common_kwargs(
        self, socket_timeout: float | None, connect_timeout: float, max_connections: int
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(self.extra)
        kwargs.update(
            username=self.username,
            password=self.password,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            max_connections=max_connections,
            **_NO_SETINFO,
        )
        return kwargs


# No CLIENT SETINFO on connect: one round trip less per connection, and redis-py's async
# cluster client otherwise fails some concurrent first connections on servers without
# SETINFO (Redis < 7.2). redis-py >= 7 spells it driver_info=None; older ones lib_name=None.
_NO_SETINFO: dict[str, Any] = (
    {"driver_info": None}
    if "driver_info" in inspect.signature(redis.Redis.__init__).parameters
    else {"lib_name": None, "lib_version": None}
)


def spec_from_url(url: str) -> ConnSpec:
    parsed: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    conn_class = parsed.pop("connection_class", None)
    host = parsed.pop("host", "127.0.0.1")
    port = int(parsed.pop("port", 6379))
    path = parsed.pop("path", None) if conn_class is UnixDomainSocketConnection else None
    for owned in ("socket_timeout", "socket_connect_timeout", "max_connections",
                  "decode_responses", "encoding"):
        parsed.pop(owned, None)  # the tier's own arguments decide these; values are bytes
    return ConnSpec(
        nodes=[(host, port)],
        username=parsed.pop("username", None),
        password=parsed.pop("password", None),
        db=int(parsed.pop("db", 0) or 0),
        ssl=conn_class is SSLConnection,
        path=path,
        extra=parsed,
        redacted=redact_dsn(url),
    )


def is_async_client(client: object) -> bool:
    return isinstance(client, redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster)


def spec_from_client(client: SyncClient | AsyncClient) -> tuple[ConnSpec, bool]:
    """Describe a user-provided client (to build its other-flavour twin); -> (spec, cluster)."""
    if isinstance(client, redis.cluster.RedisCluster):
        kw = client.nodes_manager.connection_kwargs
        nodes = [(str(n.host), int(n.port))
                 for n in client.get_nodes()]  # type: ignore[no-untyped-call]
        return _spec(nodes, kw, ssl=bool(kw.get("ssl"))), True
    if isinstance(client, redis.asyncio.cluster.RedisCluster):
        kw = client.connection_kwargs
        found = client.get_nodes() or client.startup_nodes
        nodes = [(str(n.host), int(n.port)) for n in found]
        return _spec(nodes, kw, ssl=kw.get("connection_class") is not None
                     and "SSL" in kw["connection_class"].__name__), True
    kw = client.connection_pool.connection_kwargs
    cls_name = client.connection_pool.connection_class.__name__
    path = kw.get("path") if "Unix" in cls_name else None
    nodes = [] if path else [(str(kw.get("host", "127.0.0.1")), int(kw.get("port", 6379)))]
    return _spec(nodes, kw, ssl="SSL" in cls_name, path=path, db=int(kw.get("db", 0))), False


def _spec(nodes: list[tuple[str, int]], kw: dict[str, Any], *, ssl: bool,
          path: str | None = None, db: int = 0) -> ConnSpec:
    return ConnSpec(nodes=nodes, username=kw.get("username"), password=kw.get("password"),
                    db=db, ssl=ssl, path=path)


# ------------------------------------------------------------------ construction


def make_sync_client(spec: ConnSpec, cluster: bool, socket_timeout: float,
                     connect_timeout: float, max_connections: int) -> SyncClient:
    kwargs = spec.common_kwargs(socket_timeout, connect_timeout, max_connections)
    if cluster:
        seeds = [redis.cluster.ClusterNode(h, p)  # type: ignore[no-untyped-call]
                 for h, p in spec.nodes]
        return redis.cluster.RedisCluster(
            startup_nodes=seeds, ssl=spec.ssl,
            retry=SyncRetry(NoBackoff(), _RETRIES), **kwargs)
    kwargs["retry"] = SyncRetry(NoBackoff(), _RETRIES)
    if spec.path:
        return redis.Redis(unix_socket_path=spec.path, db=spec.db, **kwargs)
    host, port = spec.nodes[0]
    return redis.Redis(host=host, port=port, db=spec.db, ssl=spec.ssl, **kwargs)


def make_async_client(spec: ConnSpec, cluster: bool, socket_timeout: float | None,
                      connect_timeout: float, max_connections: int) -> AsyncClient:
    from redis.asyncio.retry import Retry

    kwargs = spec.common_kwargs(socket_timeout, connect_timeout, max_connections)
    if cluster:
        seeds = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in spec.nodes]
        return redis.asyncio.cluster.RedisCluster(
            startup_nodes=seeds, ssl=spec.ssl, retry=Retry(NoBackoff(), _RETRIES), **kwargs)
    kwargs["retry"] = Retry(NoBackoff(), _RETRIES)
    if spec.path:
        return redis.asyncio.Redis(unix_socket_path=spec.path, db=spec.db, **kwargs)
    host, port = spec.nodes[0]
    return redis.asyncio.Redis(host=host, port=port, db=spec.db, ssl=spec.ssl, **kwargs)


def make_pubsub_client(spec: ConnSpec, nodes: list[tuple[str, int]],
                       connect_timeout: float) -> redis.asyncio.Redis:
    """A plain async client on one node, for SUBSCRIBE (classic pub/sub spans the cluster).

    Successive calls rotate over ``nodes`` so a subscriber reconnecting after its node died
    lands on another one. No read timeout (a subscriber waits for messages); a PING every
    30 s finds dead links.
    """
    kwargs: dict[str, Any] = dict(spec.extra)
    kwargs.update(username=spec.username, password=spec.password, socket_timeout=None,
                  socket_connect_timeout=connect_timeout, health_check_interval=30)
    if spec.path:
        return redis.asyncio.Redis(unix_socket_path=spec.path, **kwargs)
    choices = nodes or spec.nodes
    host, port = choices[next(spec._rotation) % len(choices)]
    return redis.asyncio.Redis(host=host, port=port, db=spec.db, ssl=spec.ssl, **kwargs)


# ------------------------------------------------------------------ cluster detection


def _cluster_enabled(info: Any) -> bool:
    if isinstance(info, dict):
        return str(info.get("cluster_enabled", "0")) == "1"
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_enabled:1" in text


def detect_cluster_sync(spec: ConnSpec, connect_timeout: float, socket_timeout: float) -> bool:
    """Is the server a cluster node? Raises redis errors when it is unreachable."""
    probe = make_sync_client(spec, False, socket_timeout, connect_timeout, 1)
    try:
        return _cluster_enabled(probe.info("cluster"))
    finally:
        probe.close()


async def detect_cluster_async(spec: ConnSpec, connect_timeout: float,
                               socket_timeout: float) -> bool:
    probe = make_async_client(spec, False, socket_timeout, connect_timeout, 1)
    try:
        return _cluster_enabled(await probe.info("cluster"))
    finally:
        await probe.aclose()


# ------------------------------------------------------------------ topology


def sync_primaries(client: SyncClient) -> list[Any]:
    """Per-master targets for node-wide commands (SCAN, FLUSHDB); ``[None]`` = plain Redis."""
    if isinstance(client, redis.cluster.RedisCluster):
        return list(client.get_primaries())  # type: ignore[no-untyped-call]
    return [None]


async def async_primaries(client: AsyncClient) -> list[Any]:
    if isinstance(client, redis.asyncio.cluster.RedisCluster):
        await client.initialize()
        return list(client.get_primaries())
    return [None]
