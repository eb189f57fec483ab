"""Moving the rows of one table from one source shard to one target: copy, catch up, verify.

* **Copy** walks the source's primary key in steps found by an index-only scan (no hashing),
  and pipes ``COPY (SELECT ... WHERE pk in step AND hash in moving arcs) TO STDOUT (binary)``
  straight into ``COPY ... FROM STDIN (binary)`` on the target: rows are never decoded in
  Python.  The target transaction that loads a batch also writes the batch's last key to the
  progress table *on the target*, so a crash anywhere leaves either both or neither:
  resume continues after the last committed batch, nothing is copied twice.
* **Catch-up** re-syncs each key the capture trigger recorded: delete that key's rows on the
  target and copy the source's current rows of it, in one target transaction, then delete the
  processed capture rows on the source.  Re-syncing a key is idempotent, so a crash between
  the two steps only repeats work.
* **Verify** compares, per moving arc, the row count and an order-independent checksum (sum of
  the first 64 bits of md5 of each row's text) on both sides, server-side.  A differing arc
  is narrowed to its keys (per-key checksums) so the error names them.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tiercache.sharding._rebalance_schema import TableInfo
from tiercache.sharding._rebalance_sql import (
    capture_table,
    hash_expr,
    ident,
    multirange,
    qualified,
)

__all__ = ["ArcDiff", "TableMover"]

# Text forms the checksums read must not depend on session settings.
_STABLE_TEXT = (
    "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'; "
    "SET LOCAL IntervalStyle = 'postgres'; SET LOCAL extra_float_digits = 3; "
    "SET LOCAL bytea_output = 'hex'"
)
BYPASS = "SET LOCAL tiercache.rebalancer = 'on'"


@dataclass
class ArcDiff:
    """One arc whose rows differ between source and target."""

    lo: int
    hi: int
    source: tuple[int, int]  # (rows, checksum)
    target: tuple[int, int]
    keys: list[Any] = field(default_factory=list)  # differing keys (bounded)


def _pk_tuple(cols: Sequence[str]) -> str:
    return "(" + ", ".join(ident(c) for c in cols) + ")"


class TableMover:
    """SQL for one table, one source -> target move (arcs fixed at construction)."""

    def __init__(self, info: TableInfo, arcs_literal: str, lows: list[int]) -> None:
        self.info = info
        self.arcs = arcs_literal
        self.lows = lows
        self.table = qualified(info.name)
        self.hash = hash_expr(ident(info.key), info.key_type)
        self.pk = _pk_tuple(info.pk)
        self.cols = info.column_list

    quote = staticmethod(qualified)

    # -- copy ------------------------------------------------------------------------------

    def _pk_params(self, start: int) -> str:
        return "(" + ", ".join(
            f"${start + i}::text::{t}" for i, t in enumerate(self.info.pk_types)) + ")"

    async def next_bound(self, src: Any, after: list[str] | None, step: int) -> list[str] | None:
        """The primary key ``step`` rows past ``after`` on the source (None: end of table)."""
        pk_text = ", ".join(f"{ident(c)}::text" for c in self.info.pk)
        where = f"WHERE {self.pk} > {self._pk_params(2)}" if after is not None else ""
        row = await src.fetchrow(
            f"SELECT ARRAY[{pk_text}] FROM {self.table} {where} "
            f"ORDER BY {self.pk} OFFSET $1 LIMIT 1", step - 1, *(after or []))
        return None if row is None else list(row[0])

    def _batch_query(self, after: list[str] | None, upto: list[str] | None
                     ) -> tuple[str, list[Any]]:
        conds = [f"{self.hash} <@ (SELECT $1::text::int8multirange)"]
        args: list[Any] = [self.arcs]
        if after is not None:
            conds.append(f"{self.pk} > {self._pk_params(len(args) + 1)}")
            args += after
        if upto is not None:
            conds.append(f"{self.pk} <= {self._pk_params(len(args) + 1)}")
            args += upto
        return f"SELECT {self.cols} FROM {self.table} WHERE {' AND '.join(conds)}", args

    async def pipe(self, src: Any, dst: Any, query: str, args: list[Any]) -> int:
        """Binary COPY of ``query``'s rows from ``src`` into the table on ``dst``; row count."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=16)

        async def sink(chunk: bytes) -> None:
            await queue.put(bytes(chunk))

        async def produce() -> None:
            try:
                await src.copy_from_query(query, *args, output=sink, format="binary")
            finally:
                await queue.put(None)

        async def chunks() -> AsyncIterator[bytes]:
            while (chunk := await queue.get()) is not None:
                yield chunk

        producer = asyncio.create_task(produce())
        try:
            status = await dst.copy_to_table(
                self.info.name.rpartition(".")[2], schema_name=self.info.name.rpartition(".")[0]
                or None, source=chunks(), columns=[c for c, _ in self.info.columns],
                format="binary")
        except BaseException:
            producer.cancel()
            with contextlib.suppress(BaseException):
                await producer
            raise
        await producer  # surfaces a source-side failure (the target then rolled back)
        return int(status.split()[-1])

    async def copy_batch(self, src: Any, dst: Any, after: list[str] | None,
                         upto: list[str] | None, record: Callable[[Any, int], Any]) -> int:
        """One batch in one target transaction, committed with its checkpoint (``record``)."""
        query, args = self._batch_query(after, upto)
        async with dst.transaction():
            await dst.execute(BYPASS)
            n = await self.pipe(src, dst, query, args)
            await record(dst, n)
        return n

    # -- catch-up ----------------------------------------------------------------------------

    async def catch_up_once(self, src: Any, dst: Any, target: str, limit: int
                            ) -> tuple[int, set[Any]]:
        """Re-sync up to ``limit`` captured changes: (capture rows consumed, keys re-synced)."""
        cap = capture_table(self.info.name)
        rows = await src.fetch(
            f"SELECT id, k FROM {cap} WHERE target = $1 ORDER BY id LIMIT $2", target, limit)
        if not rows:
            return 0, set()
        keys = list({r["k"] for r in rows if r["k"] is not None})
        await self.resync_keys(src, dst, keys)
        async with src.transaction():
            await src.execute(BYPASS)
            await src.execute(f"DELETE FROM {cap} WHERE id = ANY($1::bigint[])",
                              [r["id"] for r in rows])
        return len(rows), set(keys)

    async def drain(self, src: Any, dst: Any, target: str, limit: int) -> tuple[int, set[Any]]:
        """Catch up until the capture table has nothing left for ``target``."""
        total, keys = 0, set[Any]()
        while True:
            n, more = await self.catch_up_once(src, dst, target, limit)
            if not n:
                return total, keys
            total, keys = total + n, keys | more

    async def resync_keys(self, src: Any, dst: Any, keys: list[Any]) -> None:
        """Make the target's rows of ``keys`` equal to the source's current rows."""
        if not keys:
            return
        key_array = f"$1::{self.info.key_sql_type}[]"
        async with dst.transaction():
            await dst.execute(BYPASS)
            await dst.execute(
                f"DELETE FROM {self.table} WHERE {ident(self.info.key)} = ANY({key_array})",
                keys)
            await self.pipe(
                src, dst,
                f"SELECT {self.cols} FROM {self.table} "
                f"WHERE {ident(self.info.key)} = ANY({key_array})", [keys])

    async def backlog(self, src: Any, target: str) -> int:
        n: int = await src.fetchval(
            f"SELECT count(*) FROM {capture_table(self.info.name)} WHERE target = $1", target)
        return n

    async def pending_keys(self, src: Any, target: str) -> set[Any]:
        rows = await src.fetch(
            f"SELECT DISTINCT k FROM {capture_table(self.info.name)} WHERE target = $1", target)
        return {r["k"] for r in rows}

    # -- verify -------------------------------------------------------------------------------

    def _row_sum(self) -> str:
        """A row's 64-bit checksum: ``hash_record_extended`` (the type-level hashes hash
        partitioning relies on being stable, no text output) when every column type has one,
        else md5 of the row's text form."""
        cols = ", ".join(ident(c) for c, _ in self.info.columns)
        if self.info.row_hash:
            return f"hash_record_extended(ROW({cols}), 0)::numeric"
        return ("('x' || substr(md5(ROW(" + cols + ")::text), 1, 16))::bit(64)::bigint::numeric")

    async def arc_sums(self, conn: Any) -> dict[int, tuple[int, int]]:
        """``{arc index: (rows, checksum)}`` of the rows in the moving arcs on one shard."""
        async with conn.transaction(readonly=True):
            await conn.execute(_STABLE_TEXT)
            rows = await conn.fetch(
                f"SELECT width_bucket(h, $2::bigint[]) AS b, count(*) AS n, "
                f"coalesce(sum(r), 0) AS s FROM (SELECT {self.hash} AS h, {self._row_sum()} AS r "
                f"FROM {self.table}) q WHERE h <@ (SELECT $1::text::int8multirange) GROUP BY b",
                self.arcs, self.lows)
        return {int(r["b"]) - 1: (int(r["n"]), int(r["s"])) for r in rows}

    async def key_sums(self, conn: Any, keys: list[Any]) -> dict[Any, tuple[int, int]]:
        """Per-key (rows, checksum) for the given keys on one shard."""
        async with conn.transaction(readonly=True):
            await conn.execute(_STABLE_TEXT)
            rows = await conn.fetch(
                f"SELECT {ident(self.info.key)} AS k, count(*) AS n, sum({self._row_sum()}) AS s "
                f"FROM {self.table} WHERE {ident(self.info.key)} = "
                f"ANY($1::{self.info.key_sql_type}[]) GROUP BY 1", keys)
        return {r["k"]: (int(r["n"]), int(r["s"])) for r in rows}

    async def compare_keys(self, src: Any, dst: Any, keys: list[Any]) -> list[Any]:
        """Keys whose rows differ between source and target."""
        if not keys:
            return []
        a, b = await asyncio.gather(self.key_sums(src, keys), self.key_sums(dst, keys))
        return [k for k in keys if a.get(k) != b.get(k)]

    async def sums_by_lo(self, conn: Any) -> dict[int, tuple[int, int]]:
        """:meth:`arc_sums` keyed by each arc's start."""
        return {self.lows[i]: v for i, v in (await self.arc_sums(conn)).items()}

    async def diff_arcs(self, src: Any, dst: Any, arcs: list[tuple[int, int]],
                        a: dict[int, tuple[int, int]], b: dict[int, tuple[int, int]],
                        max_keys: int | None = 20) -> list[ArcDiff]:
        """Arcs of the move whose sums (``a`` source, ``b`` target, by arc start) differ,
        each with its differing keys (all with ``max_keys=None``), in one per-key pass."""
        diffs = []
        for lo, hi in arcs:
            if a.get(lo, (0, 0)) != b.get(lo, (0, 0)):
                diffs.append(ArcDiff(lo, hi, a.get(lo, (0, 0)), b.get(lo, (0, 0))))
        if not diffs:
            return diffs
        subset = multirange([(d.lo, d.hi) for d in diffs])
        ka, kb = await asyncio.gather(self.key_sums_in(src, subset),
                                      self.key_sums_in(dst, subset))
        lows = [d.lo for d in diffs]
        for k in set(ka) | set(kb):
            if ka.get(k) != kb.get(k):
                d = diffs[bisect.bisect_right(lows, _hash(k)) - 1]
                if max_keys is None or len(d.keys) < max_keys:
                    d.keys.append(k)
        return diffs

    async def key_sums_in(self, conn: Any, arcs: str) -> dict[Any, tuple[int, int]]:
        """Per-key (rows, checksum) of the rows in ``arcs`` on one shard."""
        async with conn.transaction(readonly=True):
            await conn.execute(_STABLE_TEXT)
            rows = await conn.fetch(
                f"SELECT {ident(self.info.key)} AS k, count(*) AS n, sum({self._row_sum()}) AS s "
                f"FROM {self.table} WHERE {self.hash} <@ (SELECT $1::text::int8multirange) "
                f"GROUP BY 1", arcs)
        return {r["k"]: (int(r["n"]), int(r["s"])) for r in rows}

    async def count_in(self, conn: Any, arcs: str) -> tuple[int, int]:
        """Rows (and their bytes) whose key hashes into ``arcs`` on one shard."""
        row = await conn.fetchrow(
            f"SELECT count(*), coalesce(sum(pg_column_size(t.*)), 0) FROM {self.table} t "
            f"WHERE {self.hash} <@ (SELECT $1::text::int8multirange)", arcs)
        return int(row[0]), int(row[1])

    async def delete_in(self, conn: Any, arcs: str, step: int) -> AsyncIterator[int]:
        """Delete the rows whose key hashes into ``arcs`` (clean-up, debris), one primary-key
        window of ``step`` rows per transaction; yields the rows deleted per window."""
        after: list[str] | None = None
        while True:
            upto = await self.next_bound(conn, after, step)
            conds = [f"{self.hash} <@ (SELECT $1::text::int8multirange)"]
            args: list[Any] = [arcs]
            if after is not None:
                conds.append(f"{self.pk} > {self._pk_params(2)}")
                args += after
            if upto is not None:
                conds.append(f"{self.pk} <= {self._pk_params(len(args) + 1)}")
                args += upto
            async with conn.transaction():
                await conn.execute(BYPASS)
                status: str = await conn.execute(
                    f"DELETE FROM {self.table} WHERE {' AND '.join(conds)}", *args)
            yield int(status.split()[-1])
            if upto is None:
                return
            after = upto


def _hash(key: Any) -> int:
    from tiercache.sharding.ring import HashRing

    return HashRing.hash_key(bytes(key) if isinstance(key, memoryview) else key)
