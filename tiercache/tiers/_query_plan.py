"""What one L3 read depends on: the per-SQL-text :class:`Plan` and the generation names.

Why a separate module: the names of generations (the shard epoch, a table, its star, one key
bucket) and how a call's arguments select them are shared by the memory read path
(:mod:`tiercache.tiers.query`), the Redis store (:mod:`._query_redis`) and the NOTIFY
listener; the cache itself only keeps counters and entries under them.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

from tiercache import codec
from tiercache.tiers._query_catalog import Resolved
from tiercache.tiers._sql import Analysis
from tiercache.tiers._sql_keys import BUCKETS, bucket

__all__ = ["BUCKET", "EPOCH", "MAX_ROW_BUCKETS", "STAR", "BucketDeps", "Plan", "identity_of",
           "params_key", "row_names"]

EPOCH = ""  # the shard epoch's generation key (no table can have an empty name)
STAR = "\x00*"  # <table>STAR: bumped by row-keyed writes; every read but a point read needs it
BUCKET = "\x00#"  # <table>BUCKET<n>: one key bucket of a table (see _sql_keys)
_SIMPLE = frozenset({int, str, type(None)})  # params whose == is exact (no 1 == 1.0 == True)
# A write pinned to more key buckets than this bumps its table instead (one name per bucket
# is an HINCRBY field and a local counter each: a bulk write would cost more than it saves).
MAX_ROW_BUCKETS = 1024
_MASK = BUCKETS - 1
BucketDeps = dict[int, tuple[tuple[str, str], ...]]  # a table's per-bucket generation keys


class Plan:
    """Everything about one (SQL text, shard, identity, method, extra) that a hit needs.

    ``fields`` are the generation names a read depends on (epoch, then each table and its
    star); a point read (``key_index``/``key_bucket`` set) depends on ``fine_fields`` (epoch,
    its table) plus the bucket of its key value, computed per call.
    """

    __slots__ = ("analysis", "bdeps", "bucket_prefix", "deps", "fields", "fine_deps", "fine_fields",
                 "fine_zeros", "key_bucket", "key_index", "key_kind", "prefix", "refusal",
                 "shard", "zeros")

    def __init__(self, shard: str, analysis: Analysis, tables: Iterable[str],
                 refusal: str | None, prefix: str) -> None:
        self.shard = shard
        self.analysis = analysis
        self.refusal = refusal
        names = sorted(set(tables))
        self.fields = (EPOCH, *(f for t in names for f in (t, t + STAR)))
        self.deps: tuple[tuple[str, str], ...] = tuple((shard, t) for t in self.fields)
        self.zeros = (0,) * len(self.deps)
        self.prefix = prefix
        self.key_index = -1  # params index of the key value of a point read
        self.key_bucket: int | None = None  # a point read on a literal key
        self.key_kind = ""
        self.bucket_prefix = ""
        self.fine_fields: tuple[str, ...] = ()
        self.fine_deps: tuple[tuple[str, str], ...] = ()
        self.fine_zeros: tuple[int, ...] = ()
        self.bdeps: BucketDeps = {}

    def pin(self, table: str, kind: str, index: int, const_bucket: int | None,
            bdeps: BucketDeps) -> None:
        """Make this a point read of ``table`` (key at params[index], or a literal's bucket);
        ``bdeps``: the table's per-bucket generation keys, built on first use (a dict: most
        of a table's buckets are never read), shared by its plans."""
        self.bdeps = bdeps
        self.key_index, self.key_bucket, self.key_kind = index, const_bucket, kind
        self.bucket_prefix = table + BUCKET
        self.fine_fields = (EPOCH, table)
        self.fine_deps = tuple((self.shard, t) for t in self.fine_fields)
        self.fine_zeros = (0, 0)

    def names(self, args: tuple[Any, ...]) -> tuple[str, ...]:
        """The generation names this call depends on (its key's bucket for a point read)."""
        if not self.fine_fields:
            return self.fields
        b = self.key_bucket
        if 0 <= self.key_index < len(args):
            b = bucket(args[self.key_index], self.key_kind)
        if b is None:
            return self.fields
        return (*self.fine_fields, f"{self.bucket_prefix}{b}")

    def deps_for(self, args: tuple[Any, ...]) -> tuple[tuple[str, str], ...]:
        """:meth:`names` as ``(shard, name)`` generation keys (the memory store's)."""
        if not self.fine_fields:
            return self.deps
        b = self.key_bucket
        i = self.key_index
        if 0 <= i < len(args):
            v = args[i]
            b = v & _MASK if type(v) is int and self.key_kind == "int" else bucket(v, self.key_kind)
        if b is None:
            return self.deps
        deps = self.bdeps.get(b)
        if deps is None:
            deps = self.bdeps[b] = (*self.fine_deps, (self.shard, f"{self.bucket_prefix}{b}"))
        return deps


def identity_of(endpoint: Any) -> str:
    """An endpoint's identity for keys: its redacted DSN (user, host, database) plus the
    session settings it connects with (a plain string is taken as is)."""
    if isinstance(endpoint, str):
        return endpoint
    # The effective connect arguments (pool-wide and per shard) are the asyncpg pool's own.
    kwargs = getattr(getattr(endpoint, "pool", None), "_connect_kwargs", None)
    if not isinstance(kwargs, dict):
        kwargs = getattr(endpoint, "connect_kwargs", None) or {}
    settings = {k: v for k, v in (kwargs.get("server_settings") or {}).items()
                if k != "application_name" and not k.startswith("tiercache.")}
    extra = {k: kwargs[k] for k in ("user", "database") if k in kwargs}
    return (f"{getattr(endpoint, 'redacted', endpoint)!s}|{sorted(settings.items())!r}"
            f"|{sorted(extra.items())!r}")


def params_key(args: tuple[Any, ...]) -> Hashable:
    """``args`` itself when every param compares exactly, else a canonical encoding."""
    for a in args:
        if type(a) not in _SIMPLE:
            break
    else:
        return args
    try:
        return codec.encode([list(args)])
    except TypeError:
        return repr(tuple((type(a).__qualname__, a) for a in args)).encode()




def row_names(a: Analysis, rel: Resolved, rows: list[Any]) -> list[str] | None:
    """The generations a row-keyed write bumps (its buckets and the table's star), or None
    when its rows are not pinned to known key values (then: the whole table)."""
    pk, kind, table = rel.pk, rel.pk_kind, rel.table
    if pk is None or kind is None or table is None or pk in a.set_cols:
        return None
    refs: list[Any] = []
    if a.rows is not None:
        for row in a.rows:
            ref = dict(row).get(pk)
            if ref is None:
                return None  # a defaulted key (serial): which row is unknown
            refs.append(ref)
    else:
        ref = dict(a.eq).get(pk)
        if ref is None:
            return None
        refs.append(ref)
    buckets: set[int] = set()
    for params in rows:
        if not isinstance(params, tuple | list):
            return None
        for ref in refs:
            if ref[0] == "p":
                i = int(ref[1]) - 1
                if not 0 <= i < len(params):
                    return None
                b = bucket(params[i], kind)
            else:
                b = bucket(ref[1], kind)
            if b is None:
                return None
            buckets.add(b)
    if len(buckets) > MAX_ROW_BUCKETS:
        return None  # a bulk write: the table
    return [table + STAR, *(f"{table}{BUCKET}{b}" for b in sorted(buckets))]
