"""What a ``pool.transaction()`` block wrote, so its commit bumps those tables, not the shard.

Why the statistics view: ``pg_stat_xact_user_tables`` counts, inside the transaction, the
rows each table gained, changed or lost -- through any statement: COPY, cursors, triggers,
foreign-key cascades included, none of which a parse of the statements would see.  It is read
once, just before COMMIT (one round trip per transaction).  What it does not count is seen in
the statements themselves (a query logger on the connection): TRUNCATE bumps its tables; DDL,
``SET ROLE`` or anything unparsable bumps the shard epoch, as does a failure to read the view.
A block that raised rolled back: nothing to bump.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Final

from tiercache.tiers._sql import analyze, table_name

if TYPE_CHECKING:
    from tiercache.tiers.query import QueryCache

__all__ = ["TransactionWatch"]

# The view also holds counts of this backend's earlier transactions that are not flushed to
# the shared statistics yet (up to ~1 s): the block's writes are the growth from BEGIN on.
_COUNTS_SQL: Final = """
SELECT schemaname, relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_xact_user_tables
WHERE n_tup_ins + n_tup_upd + n_tup_del > 0
"""


class TransactionWatch:
    """Attach before BEGIN; :meth:`start` after BEGIN, :meth:`collect` before COMMIT,
    :meth:`done` after it."""

    def __init__(self, cache: QueryCache, connection: Any) -> None:
        self._cache = cache
        self._conn = connection
        self._tables: set[str] = set()
        self._epoch = False
        self._collected = False
        self._before: dict[tuple[str, str], int] | None = None
        connection.add_query_logger(self._logged)

    async def _counts(self) -> dict[tuple[str, str], int]:
        return {(r[0], r[1]): int(r[2]) for r in await self._conn.fetch(_COUNTS_SQL)}

    async def start(self) -> None:
        """Right after BEGIN: the counts the block's writes will add to."""
        try:
            self._before = await self._counts()
        except Exception:
            self._before = None

    def _logged(self, record: Any) -> None:
        query = getattr(record, "query", None)
        if not isinstance(query, str):
            return
        a = analyze(query)
        if a.kind == "write":
            self._tables |= a.tables  # the view misses TRUNCATE; the rest it has anyway
        elif (a.kind == "other" or a.refusal == "unparsable") and a.refusal != "transaction":
            self._epoch = True  # DDL, SET, DO...: unknown reach (SAVEPOINT & co. change nothing)

    async def collect(self) -> None:
        """Inside the transaction, just before COMMIT: the tables it wrote."""
        try:
            after = await self._counts()
        except Exception:
            self._epoch = True  # could not tell: the whole shard
        else:
            before = self._before
            if before is None:
                self._epoch = True
            else:
                self._tables |= {table_name(rel, schema) for (schema, rel), n in after.items()
                                 if n > before.get((schema, rel), 0)}
        self._collected = True

    async def done(self, shard: str) -> None:
        """After COMMIT (or its failure): bump what was written; detach the logger."""
        with contextlib.suppress(Exception):
            self._conn.remove_query_logger(self._logged)
        if not self._collected:
            return  # the block raised: rolled back, nothing changed
        if self._epoch:
            await self._cache.bump_shard(shard)
        elif self._tables:
            await self._cache.bump(shard, self._tables)
