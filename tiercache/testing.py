"""pytest plugin: a real Redis Cluster and real Postgres shards for tests (ours and users').

Loaded through the ``pytest11`` entry point.  One :class:`~tiercache.local.LocalStack` per test
session; ``TIERCACHE_REDIS_URL`` / ``TIERCACHE_PG_DSNS`` (a JSON object shard -> DSN, or
``s1=dsn,s2=dsn``) point the fixtures at external servers instead, and only the missing half is
started locally.

Fixtures: ``tiercache_stack`` (session), ``redis_cluster_client`` (sync, flushed before the test),
``async_redis_cluster_client`` and ``pg_pools`` (async, need pytest-asyncio). The servers are
per session, the async clients per test and made in the event loop *the test runs in*, whatever
its loop scope (a plain ``@pytest.mark.asyncio``, ``loop_scope="session"``, the ini defaults):
asyncpg and redis.asyncio objects only work in the loop that created them.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tiercache._localstack.env import PG_DSNS_ENV, REDIS_URL_ENV, parse_pg_dsns

if TYPE_CHECKING:
    import asyncpg
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import RedisCluster

    from tiercache.local import LocalStack

try:  # users' suites load this plugin even without pytest-asyncio
    import pytest_asyncio

    _HAVE_PYTEST_ASYNCIO = True
except ImportError:  # pragma: no cover - exercised only without pytest-asyncio
    _HAVE_PYTEST_ASYNCIO = False

__all__ = ["PG_DSNS_ENV", "REDIS_URL_ENV", "ExternalStack"]

LOOP_SCOPES = ("function", "class", "module", "package", "session")


class ExternalStack:
    """Stands in for the LocalStack when ``$TIERCACHE_REDIS_URL``/``$TIERCACHE_PG_DSNS`` are set.

    Same address attributes; fault injection works only on a half that was started locally
    (``local``) and skips the test otherwise — we do not kill servers we do not own.
    """

    def __init__(self, redis_url: str | None, pg_dsns: dict[str, str] | None,
                 local: LocalStack | None) -> None:
        self._redis_url = redis_url
        self._pg_dsns = pg_dsns
        self.local = local

    @property
    def redis_url(self) -> str:
        if self._redis_url is not None:
            return self._redis_url
        assert self.local is not None
        return self.local.redis_url

    @property
    def redis_nodes(self) -> list[tuple[str, int]]:
        if self._redis_url is None and self.local is not None:
            return self.local.redis_nodes
        from redis.cluster import RedisCluster

        client = RedisCluster.from_url(self.redis_url)
        try:
            primaries = client.get_primaries()  # type: ignore[no-untyped-call]
            return [(str(n.host), int(n.port)) for n in primaries]
        finally:
            client.close()

    @property
    def pg_dsns(self) -> dict[str, str]:
        if self._pg_dsns is not None:
            return dict(self._pg_dsns)
        assert self.local is not None
        return self.local.pg_dsns

    def _local_for(self, external: object) -> LocalStack:
        if external is not None or self.local is None:
            pytest.skip("fault injection needs servers started by LocalStack, not external ones")
        return self.local

    def kill_redis_node(self, index: int) -> None:
        self._local_for(self._redis_url).kill_redis_node(index)

    def restart_redis_node(self, index: int, timeout: float = 30.0) -> None:
        self._local_for(self._redis_url).restart_redis_node(index, timeout)

    def kill_pg_shard(self, name: str) -> None:
        self._local_for(self._pg_dsns).kill_pg_shard(name)

    def restart_pg_shard(self, name: str, timeout: float = 30.0) -> None:
        self._local_for(self._pg_dsns).restart_pg_shard(name, timeout)

    def __repr__(self) -> str:  # DSNs carry passwords: names only
        return (f"<ExternalStack redis={'external' if self._redis_url else 'local'} "
                f"postgres={'external' if self._pg_dsns else 'local'} local={self.local!r}>")


def _external_pg_dsns() -> dict[str, str] | None:
    raw = os.environ.get(PG_DSNS_ENV)
    if not raw or not raw.strip():
        return None
    try:
        return parse_pg_dsns(raw)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.fixture(scope="session")
def tiercache_stack() -> Iterator[LocalStack | ExternalStack]:
    """The session's Redis Cluster + Postgres shards (started once, stopped at the end).

    A :class:`~tiercache.local.LocalStack` normally; an :class:`ExternalStack` with the same
    attributes when external servers are configured through the environment.
    """
    from tiercache.local import LocalStack

    redis_url = os.environ.get(REDIS_URL_ENV) or None
    pg_dsns = _external_pg_dsns()
    if redis_url is not None and pg_dsns is not None:
        yield ExternalStack(redis_url, pg_dsns, None)
        return
    stack = LocalStack(redis_masters=0 if redis_url else 3, pg_shards=0 if pg_dsns else 3)
    with stack:
        if redis_url is None and pg_dsns is None:
            yield stack
        else:
            yield ExternalStack(redis_url, pg_dsns, stack)


@pytest.fixture
def redis_cluster_client(tiercache_stack: LocalStack | ExternalStack) -> Iterator[RedisCluster]:
    """A sync RedisCluster client on an empty cluster (every master flushed first)."""
    from redis.cluster import RedisCluster

    client = RedisCluster.from_url(tiercache_stack.redis_url)
    try:
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
        yield client
    finally:
        client.close()


def _test_loop_scope(request: pytest.FixtureRequest) -> str:
    """The loop scope pytest-asyncio runs the requesting test in (marker, then ini default)."""
    marker = request.node.get_closest_marker("asyncio")
    scope = None
    if marker is not None:
        scope = marker.kwargs.get("loop_scope") or marker.kwargs.get("scope")
    if scope is None:
        scope = request.config.getini("asyncio_default_test_loop_scope") or "function"
    if scope not in LOOP_SCOPES:
        raise pytest.UsageError(f"unknown asyncio loop scope {scope!r}")
    return str(scope)


def _in_test_loop(request: pytest.FixtureRequest, name: str) -> Any:
    """``_tiercache_<name>_<loop scope>``: the variant made in the requesting test's loop."""
    return request.getfixturevalue(f"_tiercache_{name}_{_test_loop_scope(request)}")


async def _async_redis_client(stack: LocalStack | ExternalStack) -> AsyncIterator[Any]:
    from redis.asyncio.cluster import RedisCluster as AsyncCluster

    client = AsyncCluster.from_url(stack.redis_url)
    try:
        await client.initialize()
        await client.flushall(target_nodes=AsyncCluster.PRIMARIES)
        yield client
    finally:
        await client.aclose()


async def _pg_pools(stack: LocalStack | ExternalStack) -> AsyncIterator[dict[str, Any]]:
    import asyncpg

    pools: dict[str, Any] = {}
    try:
        for name, dsn in stack.pg_dsns.items():
            pools[name] = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        yield pools
    finally:
        for pool in pools.values():
            await pool.close()


if _HAVE_PYTEST_ASYNCIO:

    def _register_loop_variants() -> None:
        """One function-scoped fixture per loop scope; the public ones pick the test's."""
        for scope in LOOP_SCOPES:
            for name, body in (("async_redis_cluster_client", _async_redis_client),
                               ("pg_pools", _pg_pools)):

                async def variant(tiercache_stack: Any, _body: Any = body) -> AsyncIterator[Any]:
                    async for value in _body(tiercache_stack):
                        yield value

                fixture_name = f"_tiercache_{name}_{scope}"
                variant.__name__ = variant.__qualname__ = fixture_name
                globals()[fixture_name] = pytest_asyncio.fixture(
                    variant, name=fixture_name, loop_scope=scope)  # type: ignore[call-overload]

    _register_loop_variants()

    @pytest.fixture
    def async_redis_cluster_client(request: pytest.FixtureRequest) -> AsyncRedisCluster:
        """An asyncio RedisCluster client on an empty cluster (every master flushed first),
        made in the test's event loop and closed after the test."""
        client: AsyncRedisCluster = _in_test_loop(request, "async_redis_cluster_client")
        return client

    @pytest.fixture
    def pg_pools(request: pytest.FixtureRequest) -> dict[str, asyncpg.Pool]:
        """One asyncpg pool per shard name, made in the test's event loop, closed after it."""
        pools: dict[str, asyncpg.Pool] = _in_test_loop(request, "pg_pools")
        return pools

else:  # pragma: no cover

    @pytest.fixture
    def async_redis_cluster_client() -> None:
        pytest.skip("async_redis_cluster_client needs pytest-asyncio")

    @pytest.fixture
    def pg_pools() -> None:
        pytest.skip("pg_pools needs pytest-asyncio")
