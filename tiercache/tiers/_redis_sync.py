"""The blocking ``*_sync`` twins of :class:`~tiercache.tiers.redis.RedisTier`.

Sync ``@cached`` functions run in plain threads (web workers, scripts): they get a sync
redis-py client, created on first use under a lock (thread-safe, connection-pooled), with
exactly the failure semantics of the async methods -- miss or skipped write, never an
exception, except ``TypeError`` for an unencodable value.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from time import perf_counter
from typing import Any, TypeVar

import redis.cluster

from tiercache.codec import Entry
from tiercache.tiers._breaker import CLOSED, CircuitBreaker
from tiercache.tiers._redis_conn import (
    SyncClient,
    detect_cluster_sync,
    make_sync_client,
    sync_primaries,
)
from tiercache.tiers._redis_ops import LOCAL_LEASE_PREFIX, RedisTierBase, scan_cursor
from tiercache.tiers.base import MISSING, Missing
from tiercache.tiers.keys import (
    RELEASE_LUA,
    TAG_POP_LUA,
    check_user_key,
    check_user_keys,
    is_reserved,
    lease_key,
    namespace_wide,
    tag_add_args,
    tag_key,
)
from tiercache.tiers.keys import (
    key_text as _text,
)

__all__ = ["SyncTwins"]

T = TypeVar("T")
_ALL_PRIMARIES = redis.cluster.RedisCluster.PRIMARIES


class SyncTwins(RedisTierBase):
    """Blocking methods; the async ones live on RedisTier itself."""

    socket_timeout: float
    connect_timeout: float
    max_connections: int
    _cluster: bool | None

    def __init__(self, ttl: float | None, ttl_jitter: float,
                 breaker: CircuitBreaker | None) -> None:
        super().__init__(ttl, ttl_jitter, breaker)
        self._user_sync: SyncClient | None = None
        self._sclient: SyncClient | None = None
        self._sync_lock = threading.Lock()

    def _client_sync(self) -> SyncClient:
        client = self._sclient
        if client is not None:
            return client
        with self._sync_lock:
            if self._sclient is None:
                if self._user_sync is not None:
                    self._sclient = self._user_sync
                else:
                    if self._cluster is None:
                        self._cluster = detect_cluster_sync(
                            self._spec, self.connect_timeout, self.socket_timeout)
                    self._sclient = make_sync_client(
                        self._spec, self._cluster, self.socket_timeout, self.connect_timeout,
                        self.max_connections)
            return self._sclient

    def _call_sync(self, op: str, fn: Callable[[SyncClient], T], default: T) -> T:
        breaker = self.breaker
        if breaker.state is not CLOSED and not breaker.allow():
            self._skip()
            return default
        start = perf_counter()
        try:
            result = fn(self._sclient or self._client_sync())
        except Exception as exc:
            self._failed(op, exc)
            return default
        self._histogram(op).observe(perf_counter() - start)
        breaker.record_success()
        return result

    # ------------------------------------------------------------ reads

    def get_entry_sync(self, key: str) -> Entry | Missing:
        breaker = self.breaker
        if breaker.state is not CLOSED and not breaker.allow():
            self._skip()
            return MISSING
        start = perf_counter()
        try:
            raw = (self._sclient or self._client_sync()).get(key)
        except Exception as exc:
            self._failed("get", exc)
            return MISSING
        self._lat_get.observe(perf_counter() - start)
        breaker.record_success()
        return self._decode(key, raw)

    def get_sync(self, key: str) -> Any:
        entry = self.get_entry_sync(key)
        return MISSING if entry is MISSING else entry.value

    def get_many_sync(self, keys: Iterable[str]) -> dict[str, Any]:
        return self._get_many_sync(list(keys), False)

    def get_many_entries_sync(self, keys: Iterable[str]) -> dict[str, Entry]:
        return self._get_many_sync(list(keys), True)

    def _get_many_sync(self, wanted: list[str], entries: bool) -> dict[str, Any]:
        if not wanted:
            return {}

        def fetch(client: SyncClient) -> list[Any]:
            if isinstance(client, redis.cluster.RedisCluster):
                return list(client.mget_nonatomic(wanted))
            return list(client.mget(wanted))

        raws = self._call_sync("get_many", fetch, None)
        return {} if raws is None else self._decode_many(wanted, raws, entries)

    # ------------------------------------------------------------ writes

    def set_sync(self, key: str, value: Any, ttl: float | None = None, *,
                 load_time: float = 0.0) -> None:
        check_user_key(key)
        payload, px = self._pack(value, ttl, load_time)
        if px == 0:
            self.delete_sync(key)
            return
        if self._call_sync("set", lambda c: c.set(key, payload, px=px), None) is not None:
            self.sets += 1

    def set_many_sync(self, mapping: Mapping[str, Any], ttl: float | None = None) -> None:
        check_user_keys(mapping)
        batch = self._pack_many(mapping, ttl)
        if not batch:
            return

        def write(client: SyncClient) -> bool:
            pipe = client.pipeline(transaction=False)
            for key, payload, px in batch:
                if px == 0:
                    pipe.delete(key)
                else:
                    pipe.set(key, payload, px=px)
            pipe.execute()
            return True

        if self._call_sync("set_many", write, False):
            self.sets += sum(1 for _, _, px in batch if px != 0)

    def delete_sync(self, key: str) -> bool:
        check_user_key(key)
        removed = int(self._call_sync("delete", lambda c: c.delete(key), 0))
        self.deletes += removed
        return bool(removed)

    def delete_many_sync(self, keys: Iterable[str]) -> int:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return 0
        check_user_keys(wanted)
        removed = int(self._call_sync("delete_many", lambda c: c.delete(*wanted), 0))
        self.deletes += removed
        return removed

    def delete_pattern_sync(self, pattern: str) -> int:
        internals = namespace_wide(pattern)

        def sweep(client: SyncClient) -> int:
            total = 0
            for node in sync_primaries(client):
                target = {} if node is None else {"target_nodes": node}
                cursor = 0
                while True:
                    reply = client.scan(cursor, match=pattern, count=1000, **target)
                    cursor, found = scan_cursor(reply, node)
                    if found and not internals:
                        found = [k for k in found if not is_reserved(_text(k))]
                    if found:
                        total += int(client.unlink(*found))
                    if cursor == 0:
                        break
            return total

        removed = self._call_sync("delete_pattern", sweep, 0)
        self.deletes += removed
        return removed

    # ------------------------------------------------------------ tags, leases

    def add_tags_sync(self, key: str, tags: Iterable[str], ttl: float | None = None) -> None:
        check_user_key(key)
        calls = tag_add_args(key, tags, ttl if ttl is not None else self.ttl)
        if not calls:
            return

        def index(client: SyncClient) -> None:
            pipe = client.pipeline(transaction=False)
            for args in calls:
                pipe.execute_command("EVAL", *args)
            pipe.execute()

        self._call_sync("add_tags", index, None)

    def invalidate_tags_sync(self, tags: Iterable[str], *,
                             namespace: str | None = None) -> int:
        wanted = list(dict.fromkeys(tags))
        if not wanted:
            return 0

        ns = namespace or ""

        def drop(client: SyncClient) -> int:
            pipe = client.pipeline(transaction=False)
            for tag in wanted:
                pipe.execute_command("EVAL", TAG_POP_LUA, 1, tag_key(tag, ns))
            members = self._tag_members(wanted, pipe.execute(raise_on_error=False))
            return int(client.delete(*members)) if members else 0

        removed = self._call_sync("invalidate_tags", drop, 0)
        self.deletes += removed
        return removed

    def acquire_lease_sync(self, key: str, ttl_ms: int) -> str | None:
        token = secrets.token_hex(16)
        lkey = lease_key(key)

        def take(client: SyncClient) -> str | None:
            return token if client.set(lkey, token, nx=True, px=ttl_ms) else None

        local: str | None = LOCAL_LEASE_PREFIX + token
        return self._call_sync("acquire_lease", take, local)

    def release_lease_sync(self, key: str, token: str) -> bool:
        if token.startswith(LOCAL_LEASE_PREFIX):
            return True
        lkey = lease_key(key)
        return bool(self._call_sync(
            "release_lease", lambda c: c.eval(RELEASE_LUA, 1, lkey, token), 0))

    # ------------------------------------------------------------ bus, health

    def publish_sync(self, channel: str, message: bytes) -> None:
        self._call_sync("publish", lambda c: c.publish(channel, message), 0)

    def ping_sync(self) -> float:
        try:
            client = self._client_sync()
            start = perf_counter()
            if isinstance(client, redis.cluster.RedisCluster):
                client.ping(target_nodes=_ALL_PRIMARIES)
            else:
                client.ping()
            return perf_counter() - start
        except Exception as exc:
            self._spec.redactor.exception(exc)
            raise

    def clear_sync(self) -> None:
        def flush(client: SyncClient) -> None:
            if isinstance(client, redis.cluster.RedisCluster):
                client.flushdb(target_nodes=_ALL_PRIMARIES)
            else:
                client.flushdb()

        self._call_sync("clear", flush, None)

    def close_sync(self) -> None:
        with self._sync_lock:
            client, self._sclient = self._sclient, None
        if client is not None and client is not self._user_sync:
            client.close()
