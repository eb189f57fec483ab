"""Run one coroutine per shard, concurrently and bounded, and collect every outcome.

Fan-out is the one place where a sharded pool must *not* stop at the first failure: a
``SELECT count(*)`` over 16 shards with one shard down should tell the caller which shard is
down and still hand over the 15 answers it got.  Hence :class:`ShardFanoutError` carries both
``results`` and ``errors``; it is raised only after every shard has finished.

Cancellation of the caller cancels every in-flight shard call (nothing keeps running behind
the caller's back, which would hold connections and locks).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from tiercache.sharding._endpoints import Endpoint, Shard

__all__ = ["ShardFanoutError", "fanout", "fanout_targets"]

T = TypeVar("T")


class ShardFanoutError(Exception):
    """One or more shards failed during a fan-out call.

    ``errors`` maps each failing shard to its exception, ``results`` holds the answers of
    the shards that succeeded, so callers may decide to use partial results.  The message
    names every failing shard (and its redacted DSN when ``dsns`` is given).
    """

    def __init__(
        self,
        operation: str,
        results: Mapping[str, Any],
        errors: Mapping[str, BaseException],
        dsns: Mapping[str, str] | None = None,
    ) -> None:
        self.operation = operation
        self.results: dict[str, Any] = dict(results)
        self.errors: dict[str, BaseException] = dict(errors)
        where = dict(dsns or {})
        details = "; ".join(
            f"{shard}{f' ({where[shard]})' if shard in where else ''}: "
            f"{type(exc).__name__}: {exc}"
            for shard, exc in sorted(self.errors.items())
        )
        super().__init__(
            f"{operation} failed on {len(self.errors)} of "
            f"{len(self.errors) + len(self.results)} shard(s) "
            f"[{', '.join(sorted(self.errors))}] -- {details}"
        )

    @property
    def failed_shards(self) -> list[str]:
        """The names of the shards that failed, sorted."""
        return sorted(self.errors)


async def fanout(
    operation: str,
    shards: Sequence[str],
    call: Callable[[str], Awaitable[T]],
    *,
    concurrency: int,
    scrub: Callable[[BaseException], BaseException] | None = None,
) -> dict[str, T]:
    """Await ``call(shard)`` for every shard, at most ``concurrency`` at a time.

    Returns ``{shard: result}`` in ``shards`` order, or raises :class:`ShardFanoutError`
    once all shards are done if any failed.  With a single shard the call is awaited
    directly (no task), and with ``concurrency >= len(shards)`` no semaphore is used, which
    keeps the fan-out overhead close to that of the slowest shard.
    """
    if concurrency < 1:
        raise ValueError("fan-out concurrency must be >= 1")
    results: dict[str, T] = {}
    errors: dict[str, BaseException] = {}
    if not shards:
        return results

    if len(shards) == 1:
        shard = shards[0]
        try:
            results[shard] = await call(shard)
        except Exception as exc:
            errors[shard] = scrub(exc) if scrub else exc
    else:
        if concurrency >= len(shards):
            outcomes = await _run_all(shards, call)
        else:
            sem = asyncio.Semaphore(concurrency)

            async def bounded(shard: str) -> T:
                async with sem:
                    return await call(shard)

            outcomes = await asyncio.gather(
                *(bounded(s) for s in shards), return_exceptions=True
            )
        for shard, outcome in zip(shards, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    # CancelledError/KeyboardInterrupt of a child: not a shard failure.
                    raise outcome
                errors[shard] = scrub(outcome) if scrub else outcome
            else:
                results[shard] = outcome
    if errors:
        raise ShardFanoutError(operation, results, errors)
    return results


async def _run_all(
    shards: Sequence[str], call: Callable[[str], Awaitable[T]]
) -> list[T | BaseException]:
    """All calls at once: the first in the calling task, the rest as tasks.

    Running one call inline saves a task (creation, scheduling, a loop iteration) per
    fan-out; on loopback that is a measurable share of a trivial statement's latency.
    """
    tasks = [asyncio.ensure_future(call(s)) for s in shards[1:]]
    try:
        first: T | BaseException
        try:
            first = await call(shards[0])
        except Exception as exc:
            first = exc
        rest = await asyncio.gather(*tasks, return_exceptions=True)
    except BaseException:
        # Cancelled (or interrupted): nothing may keep running behind the caller's back.
        for task in tasks:
            task.cancel()
        raise
    return [first, *rest]


def fanout_targets(
    shards: Mapping[str, Shard], names: Iterable[str] | None, readonly: bool
) -> dict[str, Endpoint]:
    """``{name: endpoint}`` for every shard (or the named ones), validated up front so an
    unknown name fails before any statement runs anywhere."""
    if isinstance(names, str):  # a single name, not an iterable of characters
        names = (names,)
    targets: dict[str, Endpoint] = {}
    for name in shards if names is None else names:
        shard = shards.get(name)
        if shard is None:
            raise ValueError(f"unknown shard {name!r}; shards are {list(shards)}")
        targets[name] = shard.pick_read() if readonly and shard.replicas else shard.primary
    return targets
