"""Write policies: when a store's writes reach the system of record (see :mod:`tiercache.store`).

Small frozen objects with validated arguments and one contract each, in Caffeine's style:

* :class:`WriteThrough` -- the writer succeeds first, then every tier is updated; a writer
  error reaches the caller and no tier holds the new value.
* :class:`WriteBehind` -- the tiers are updated at once, the write is queued (coalesced per
  key) and written in batches later; with ``journal=True`` it is durable in a Redis Stream
  before ``put`` returns, so a crash of the process loses no acknowledged write.
* :class:`Retry` -- how a failed batch is retried (exponential backoff with full jitter)
  before it goes to the dead-letter list.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["JournalMode", "Retry", "WriteBehind", "WriteThrough"]

#: ``True``: ``put`` raises :class:`~tiercache.store.JournalUnavailable` when the write cannot
#: be made durable; ``"best_effort"``: it logs, counts and goes on; ``False``: no journal.
JournalMode = bool | Literal["best_effort"]


def _positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, "
                         f"got {value!r}")
    return float(value)


def _count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class Retry:
    """Retry a failed batch ``attempts`` times in all (1 = no retry), sleeping a random time
    in ``[0, min(max_backoff, backoff * 2**n)]`` before retry ``n`` ("full jitter": many
    processes failing together do not retry in lockstep)."""

    attempts: int = 5
    backoff: float = 0.05
    max_backoff: float = 5.0

    def __post_init__(self) -> None:
        _count("Retry.attempts", self.attempts, 1)
        _positive("Retry.backoff", self.backoff, allow_zero=True)
        _positive("Retry.max_backoff", self.max_backoff, allow_zero=True)

    def delay(self, retry: int, rand: random.Random | None = None) -> float:
        """Seconds to sleep before retry number ``retry`` (0-based)."""
        cap = min(self.max_backoff, self.backoff * (2.0 ** min(retry, 60)))
        return (rand or random).uniform(0.0, cap)


@dataclass(frozen=True)
class WriteThrough:
    """The writer first, then the tiers.

    Contract: when ``put``/``delete`` returns, the system of record has the write and no
    tier of this process serves the old value (other processes' L1 drop it through the
    bus). When the writer raises, the error reaches the caller and no tier holds the new
    value -- concurrent readers included. Retries are the writer's business (it runs on
    the caller's path, where the caller decides).
    """

    def __repr__(self) -> str:
        return "WriteThrough()"


@dataclass(frozen=True)
class WriteBehind:
    """Tiers at once, the system of record later, in batches.

    Contract: after ``put`` returns, every tier serves the new value and the write is
    queued; with ``journal=True`` it is also in the store's Redis Stream, so it is written
    even if this process dies right after (a surviving or restarted process replays it).
    Writes are coalesced per key (last write wins; a delete after a put wins), flushed as
    one ``writer``/``deleter`` call when ``batch_size`` keys are queued or ``max_delay``
    seconds passed, retried per ``retry``, then moved to the dead-letter list -- never
    dropped. A full queue (``max_queue`` keys) makes ``put`` wait. Delivery is
    at-least-once: writers must be idempotent (an upsert).

    ``claim_after``: seconds without a heartbeat after which another process takes over a
    flusher's unacknowledged journal entries (keep it well above a GC pause).
    """

    max_delay: float = 0.5
    batch_size: int = 500
    max_queue: int = 100_000
    journal: JournalMode = True
    retry: Retry = field(default_factory=Retry)
    claim_after: float = 10.0

    def __post_init__(self) -> None:
        _positive("max_delay", self.max_delay, allow_zero=True)
        _count("batch_size", self.batch_size, 1)
        _count("max_queue", self.max_queue, 1)
        if self.journal not in (True, False, "best_effort") or (
                isinstance(self.journal, int) and not isinstance(self.journal, bool)):
            raise ValueError(f"journal must be True, False or 'best_effort', "
                             f"got {self.journal!r}")
        if isinstance(self.retry, int) and not isinstance(self.retry, bool):
            object.__setattr__(self, "retry", Retry(attempts=self.retry))
        if not isinstance(self.retry, Retry):
            raise TypeError(f"retry must be a Retry or an int (attempts), got {self.retry!r}")
        _positive("claim_after", self.claim_after)

    @property
    def journaled(self) -> bool:
        return self.journal is not False
