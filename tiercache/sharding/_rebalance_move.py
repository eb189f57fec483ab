"""Moving the rows of one table from one source shard to one target: copy, catch up, verify.

* **Copy** walks the source's primary key in steps found by an index-only scan, and pipes
  ``COPY (SELECT ... WHERE pk in step AND hash in moving arcs) TO STDOUT (binary)`` straight
  into ``COPY ... FROM STDIN (binary)`` on the target: rows are never decoded in Python, and
  the source reads its table once, in primary-key order (a hash-ordered index walk would
  visit every heap page once per batch: measured slower than hashing every row as soon as
  the table outgrows shared_buffers).  The target transaction that loads a batch also writes
  the batch's last key to the progress table *on the target*, so a crash anywhere leaves
  either both or neither: resume continues after the last committed batch, nothing is copied
  twice.  (``synchronous_commit`` is off for those transactions: a server crash can lose
  only a tail of batches together with their checkpoints, which resume then copies again.)
* **Catch-up** re-syncs each key the capture trigger recorded: delete that key's rows on the
  target and copy the source's current rows of it, in one target transaction, then delete the
  processed capture rows on the source.  Re-syncing a key is idempotent, so a crash between
  the two steps only repeats work.
* **Verify** compares, per moving arc, the row count and an order-independent checksum (sum of
  ``hash_record_extended`` of each row, or of md5 of its text) on both sides, server-side;
  source and target are scanned at the same time, each once.  A differing arc is narrowed to
  its keys (per-key checksums) so the error names them.
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
    fast_hash,
    hash_expr,
    ident,
    multirange,
    qualified,
)

__all__ = ["RING", "SESSION_TEXT", "ArcDiff", "TableMover"]

RING = 2**32
Spans = list[tuple[int, int]]

# Text forms the checksums read must not depend on session settings.
_STABLE_TEXT = (
    "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'; "
    "SET LOCAL IntervalStyle = 'postgres'; SET LOCAL extra_float_digits = 3; "
    "SET LOCAL bytea_output = 'hex'"
)
SESSION_TEXT = _STABLE_TEXT.replace("SET LOCAL", "SET")
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

    def __init__(self, info: TableInfo, spans: Spans) -> None:
        self.info = info
        self.spans = sorted(spans)
        self.arcs = multirange(self.spans)
        self.lows = [lo for lo, _ in self.spans]
        self.table = qualified(info.name)
        self.hash = hash_expr(ident(info.key), info.key_type)
        self.lateral, self.fast = fast_hash("tc_t." + ident(info.key), info.key_type)
        self.pk = _pk_tuple(info.pk)
        self.pk_t = "(" + ", ".join("tc_t." + ident(c) for c in info.pk) + ")"
        self.in_arcs = f"{self.fast} <@ (SELECT $1::text::int8multirange)"
        self.cols = info.column_list
        self.cols_t = ", ".join("tc_t." + ident(c) for c, _ in info.columns)

    quote = staticmethod(qualified)

    # -- copy ------------------------------------------------------------------------------

    def _pk_params(self, start: int) -> str:
        return "(" + ", ".join(
            f"${start + i}::text::{t}" for i, t in enumerate(self.info.pk_types)) + ")"

    async def bounds(self, src: Any, after: list[str] | None, step: int) -> list[list[str]]:
        """Every ``step``-th primary key past ``after``, in one index scan (one OFFSET scan
        per batch re-read the index up to each bound: ~15% of a copy at 1M rows).  Rows
        added beyond the last bound go to the final, open-ended batch."""
        pk_cols = ", ".join(ident(c) for c in self.info.pk)
        pk_text = ", ".join(f"{ident(c)}::text" for c in self.info.pk)
        where = f"WHERE {self.pk} > {self._pk_params(2)}" if after is not None else ""
        rows = await src.fetch(
            f"SELECT ARRAY[{pk_text}] FROM (SELECT {pk_cols}, row_number() OVER (ORDER BY "
            f"{self.pk}) AS tc_rn FROM {self.table} {where}) q WHERE tc_rn % $1 = 0 "
            f"ORDER BY tc_rn", step, *(after or []))
        return [list(r[0]) for r in rows]

    def _window(self, after: list[str] | None, upto: list[str] | None, args: list[Any]
                ) -> str:
        """``AND`` conditions of a primary-key window ``(after, upto]`` (appends the args)."""
        conds = ""
        if after is not None:
            conds += f" AND {self.pk_t} > {self._pk_params(len(args) + 1)}"
            args += after
        if upto is not None:
            conds += f" AND {self.pk_t} <= {self._pk_params(len(args) + 1)}"
            args += upto
        return conds

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
        """One primary-key window in one target transaction, committed with its checkpoint."""
        args: list[Any] = [self.arcs]
        query = (f"SELECT {self.cols_t} FROM {self.table} AS tc_t {self.lateral} "
                 f"WHERE {self.in_arcs}{self._window(after, upto, args)}")
        async with dst.transaction():
            await dst.execute(f"{BYPASS}; SET LOCAL synchronous_commit = off")
            n = await self.pipe(src, dst, query, args)
            await record(dst, n)
        return n

    # -- catch-up ----------------------------------------------------------------------------

    async def catch_up_once(self, src: Any, dst: Any, target: str, limit: int | None,
                            consume: bool = True) -> tuple[int, set[Any]]:
        """Re-sync up to ``limit`` captured changes: (capture rows consumed, keys re-synced).

        ``consume=False`` (inside the fence, everything at once) leaves the capture rows:
        after the flip nothing reads them, and if the flip is refused a retry re-syncs the
        same keys again (idempotent) -- one round trip less while writers wait.
        """
        cap = capture_table(self.info.name)
        rows = await src.fetch(
            f"SELECT id, k FROM {cap} WHERE target = $1 ORDER BY id LIMIT $2", target, limit)
        if not rows:
            return 0, set()
        keys = list({r["k"] for r in rows if r["k"] is not None})
        await self.resync_keys(src, dst, keys)
        if consume:
            await src.execute(f"DELETE FROM {cap} WHERE id = ANY($1::bigint[])",
                              [r["id"] for r in rows])
        return len(rows), set(keys)

    async def drain(self, src: Any, dst: Any, target: str, limit: int) -> tuple[int, set[Any]]:
        """Catch up until the capture table has nothing left for ``target``."""
        total, keys = 0, set[Any]()
        while True:
            n, more = await self.catch_up_once(src, dst, target, limit)
            total, keys = total + n, keys | more
            if n < limit:  # read to the end (new captures wait for the next drain)
                return total, keys

    async def resync_keys(self, src: Any, dst: Any, keys: list[Any]) -> None:
        """Make the target's rows of ``keys`` equal to the source's current rows (``dst`` is a
        rebalancer session: ``tiercache.rebalancer`` is on for it, see ``Flow.held``)."""
        if not keys:
            return
        key_array = f"$1::{self.info.key_sql_type}[]"
        async with dst.transaction():
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
        else md5 of the row's text form.  A bigint: ``sum`` adds bigints in 128 bits (a
        numeric cast per row cost ~30% of a verification)."""
        if self.info.row_hash:
            return f"hash_record_extended(ROW({self.cols_t}), 0)"
        return f"('x' || substr(md5(ROW({self.cols_t})::text), 1, 16))::bit(64)::bigint"

    async def source_sums(self, conn: Any, target: str
                          ) -> tuple[dict[int, tuple[int, int]], list[Any]]:
        """Per-arc ``(rows, checksum)`` on the source, leaving out the keys with a pending
        capture -- read in the *same snapshot* -- which are returned too.  The target only
        changes by catch-up, which is not running, so any key that legitimately differs was
        written after its last catch-up, and its capture row is visible in this snapshot:
        whatever still differs is not a race."""
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await conn.execute(_STABLE_TEXT)
            pending = [r["k"] for r in await conn.fetch(
                f"SELECT DISTINCT k FROM {capture_table(self.info.name)} WHERE target = $1 "
                f"AND k IS NOT NULL", target)]
            sums = await self._sums(conn, pending)
        return sums, pending

    async def target_sums(self, conn: Any) -> dict[int, tuple[int, int]]:
        """Per-arc ``(rows, checksum)`` on a target (run while the sources are scanned; the
        sources' pending keys are subtracted afterwards, see :meth:`without`)."""
        async with conn.transaction(readonly=True):
            await conn.execute(_STABLE_TEXT)
            return await self._sums(conn, [])

    async def _sums(self, conn: Any, exclude: list[Any]) -> dict[int, tuple[int, int]]:
        """One pass: every row hashed once, the moving ones bucketed by arc; by arc start."""
        skip = ""
        args: list[Any] = [self.arcs, self.lows]
        if exclude:
            skip = (f" AND NOT (tc_t.{ident(self.info.key)} = "
                    f"ANY($3::{self.info.key_sql_type}[]))")
            args.append(exclude)
        rows = await conn.fetch(
            f"SELECT width_bucket({self.fast}, $2::bigint[]) AS b, count(*) AS n, "
            f"sum({self._row_sum()}) AS s FROM {self.table} AS tc_t {self.lateral} "
            f"WHERE {self.in_arcs}{skip} GROUP BY b", *args)
        return {self.lows[int(r["b"]) - 1]: (int(r["n"]), int(r["s"])) for r in rows}

    async def without(self, conn: Any, sums: dict[int, tuple[int, int]], keys: list[Any]
                      ) -> dict[int, tuple[int, int]]:
        """``sums`` (of one shard) minus the rows of ``keys`` there, per arc."""
        out = dict(sums)
        for key, (n, s) in (await self.key_sums(conn, keys) if keys else {}).items():
            lo = self.lows[bisect.bisect_right(self.lows, _hash(key)) - 1]
            had = out.get(lo, (0, 0))
            out[lo] = (had[0] - n, had[1] - s)
            if out[lo] == (0, 0):
                del out[lo]
        return out

    async def key_sums(self, conn: Any, keys: list[Any], session_ready: bool = False
                       ) -> dict[Any, tuple[int, int]]:
        """Per-key (rows, checksum) for the given keys on one shard (``session_ready``: the
        connection has :data:`SESSION_TEXT` already, one round trip)."""
        async with contextlib.AsyncExitStack() as stack:
            if not session_ready:
                await stack.enter_async_context(conn.transaction(readonly=True))
                await conn.execute(_STABLE_TEXT)
            rows = await conn.fetch(
                f"SELECT tc_t.{ident(self.info.key)} AS k, count(*) AS n, "
                f"sum({self._row_sum()}) AS s FROM {self.table} AS tc_t "
                f"WHERE tc_t.{ident(self.info.key)} = ANY($1::{self.info.key_sql_type}[]) "
                f"GROUP BY 1", keys)
        return {r["k"]: (int(r["n"]), int(r["s"])) for r in rows}

    async def compare_keys(self, src: Any, dst: Any, keys: list[Any],
                           session_ready: bool = False) -> list[Any]:
        """Keys whose rows differ between source and target."""
        if not keys:
            return []
        a, b = await asyncio.gather(self.key_sums(src, keys, session_ready),
                                    self.key_sums(dst, keys, session_ready))
        return [k for k in keys if a.get(k) != b.get(k)]

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
                f"SELECT tc_t.{ident(self.info.key)} AS k, count(*) AS n, "
                f"sum({self._row_sum()}) AS s FROM {self.table} AS tc_t {self.lateral} "
                f"WHERE {self.fast} <@ (SELECT $1::text::int8multirange) GROUP BY 1", arcs)
        return {r["k"]: (int(r["n"]), int(r["s"])) for r in rows}

    async def count_in(self, conn: Any, arcs: str) -> tuple[int, int]:
        """Rows (and their bytes) whose key hashes into ``arcs`` on one shard."""
        row = await conn.fetchrow(
            f"SELECT count(*), coalesce(sum(pg_column_size(tc_t.*)), 0) FROM {self.table} "
            f"AS tc_t {self.lateral} WHERE {self.fast} <@ (SELECT $1::text::int8multirange)",
            arcs)
        return int(row[0]), int(row[1])

    async def delete_in(self, conn: Any, step: int) -> AsyncIterator[int]:
        """Delete the rows whose key hashes into the arcs (clean-up, debris), one primary-key
        window of ``step`` rows per transaction; yields the rows deleted per window."""
        after: list[str] | None = None
        for upto in [*await self.bounds(conn, None, step), None]:
            args: list[Any] = [self.arcs]
            window = self._window(after, upto, args)
            async with conn.transaction():
                await conn.execute(BYPASS)
                status: str = await conn.execute(
                    f"DELETE FROM {self.table} WHERE ctid = ANY(ARRAY(SELECT tc_t.ctid FROM "
                    f"{self.table} AS tc_t {self.lateral} WHERE {self.in_arcs}{window}))",
                    *args)
            yield int(status.split()[-1])
            after = upto


def _hash(key: Any) -> int:
    from tiercache.sharding.ring import HashRing

    return HashRing.hash_key(bytes(key) if isinstance(key, memoryview) else key)
