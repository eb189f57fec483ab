"""The ``copy_*`` methods of :class:`~tiercache.sharding.pool.ShardedPool`.

Kept apart only because asyncpg's COPY signatures are long: each method mirrors its
:class:`asyncpg.Pool` twin parameter for parameter (same names, kinds and defaults) and adds the
keyword-only routing arguments; the work is done by the pool's ``_route``/``_run`` hot path.

The ``COPY <table> ...`` strings built here are never executed: they are only the text the
slow-query log shows.  asyncpg builds (and quotes) the real COPY statement from the arguments.
The parameter lists repeat each other because asyncpg's do; they are kept spelled out, not
generated, so signatures, defaults and ``inspect.signature`` match asyncpg exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tiercache.sharding._endpoints import Endpoint

__all__ = ["CopyMethodsMixin"]


class CopyMethodsMixin:
    """asyncpg's ``copy_from_query``, ``copy_from_table``, ``copy_to_table`` and
    ``copy_records_to_table``, routed by ``shard_key=``/``shard=``."""

    __slots__ = ()

    if TYPE_CHECKING:

        def _route(self, shard_key: Any, shard: str | None, readonly: bool) -> Endpoint: ...

        async def _run(
            self, ep: Endpoint, method: str, text: str, args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> Any: ...

    async def copy_from_query(
        self,
        query: str,
        *args: Any,
        output: Any,
        timeout: float | None = None,
        format: Any = None,
        oids: Any = None,
        delimiter: Any = None,
        null: Any = None,
        header: Any = None,
        quote: Any = None,
        escape: Any = None,
        force_quote: Any = None,
        encoding: Any = None,
        shard_key: Any = None,
        shard: str | None = None,
        readonly: bool = False,
    ) -> str:
        """:meth:`asyncpg.Pool.copy_from_query` on the routed shard."""
        ep = self._route(shard_key, shard, readonly)
        result: str = await self._run(
            ep, "copy_from_query", query, (query, *args),
            {
                "output": output, "timeout": timeout, "format": format, "oids": oids,
                "delimiter": delimiter, "null": null, "header": header, "quote": quote,
                "escape": escape, "force_quote": force_quote, "encoding": encoding,
            },
        )
        return result

    async def copy_from_table(
        self,
        table_name: str,
        *,
        output: Any,
        columns: Any = None,
        schema_name: str | None = None,
        timeout: float | None = None,
        format: Any = None,
        oids: Any = None,
        delimiter: Any = None,
        null: Any = None,
        header: Any = None,
        quote: Any = None,
        escape: Any = None,
        force_quote: Any = None,
        encoding: Any = None,
        shard_key: Any = None,
        shard: str | None = None,
        readonly: bool = False,
    ) -> str:
        """:meth:`asyncpg.Pool.copy_from_table` on the routed shard."""
        ep = self._route(shard_key, shard, readonly)
        result: str = await self._run(
            ep, "copy_from_table", f"COPY {table_name} TO STDOUT", (table_name,),
            {
                "output": output, "columns": columns, "schema_name": schema_name,
                "timeout": timeout, "format": format, "oids": oids, "delimiter": delimiter,
                "null": null, "header": header, "quote": quote, "escape": escape,
                "force_quote": force_quote, "encoding": encoding,
            },
        )
        return result

    async def copy_to_table(
        self,
        table_name: str,
        *,
        source: Any,
        columns: Any = None,
        schema_name: str | None = None,
        timeout: float | None = None,
        format: Any = None,
        oids: Any = None,
        freeze: Any = None,
        delimiter: Any = None,
        null: Any = None,
        header: Any = None,
        quote: Any = None,
        escape: Any = None,
        force_quote: Any = None,
        force_not_null: Any = None,
        force_null: Any = None,
        encoding: Any = None,
        where: Any = None,
        shard_key: Any = None,
        shard: str | None = None,
    ) -> str:
        """:meth:`asyncpg.Pool.copy_to_table` on the routed shard's primary."""
        ep = self._route(shard_key, shard, False)
        result: str = await self._run(
            ep, "copy_to_table", f"COPY {table_name} FROM STDIN", (table_name,),
            {
                "source": source, "columns": columns, "schema_name": schema_name,
                "timeout": timeout, "format": format, "oids": oids, "freeze": freeze,
                "delimiter": delimiter, "null": null, "header": header, "quote": quote,
                "escape": escape, "force_quote": force_quote,
                "force_not_null": force_not_null, "force_null": force_null,
                "encoding": encoding, "where": where,
            },
        )
        return result

    async def copy_records_to_table(
        self,
        table_name: str,
        *,
        records: Any,
        columns: Any = None,
        schema_name: str | None = None,
        timeout: float | None = None,
        where: Any = None,
        shard_key: Any = None,
        shard: str | None = None,
    ) -> str:
        """:meth:`asyncpg.Pool.copy_records_to_table` on the routed shard's primary."""
        ep = self._route(shard_key, shard, False)
        result: str = await self._run(
            ep, "copy_records_to_table", f"COPY {table_name} FROM STDIN", (table_name,),
            {
                "records": records, "columns": columns, "schema_name": schema_name,
                "timeout": timeout, "where": where,
            },
        )
        return result
