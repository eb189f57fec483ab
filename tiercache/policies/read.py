"""Read policies: when an entry is fresh, when it is due for a background reload, and how long
a stale copy may still be served.

Each policy is a small immutable object with one contract (Caffeine's style); the core
(:mod:`tiercache._refresh`) asks it about an entry's *stamp* -- the L2 envelope's
``stored_at`` (wall clock), ``ttl`` and ``load_time`` -- so the answer is the same whether the
entry came from L1, from L2, or from another process.

* :class:`Expiry` -- the plain rule every ``@cached`` function has: fresh until ``ttl``, its
  L1 copy never outlives its L2 entry (``min(l1_ttl, remaining ttl)``).
* :class:`RefreshAhead` -- after ``ratio * ttl`` a read gets the cached value at once and
  starts one background reload (``refreshAfterWrite``).
* :class:`XFetch` -- probabilistic early recomputation (Vattani, Chierichetti, Lowenstein,
  VLDB 2015): recompute when ``now - delta * beta * ln(rand()) >= expiry``, ``delta`` being
  the measured load time kept in the envelope.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Expiry", "ReadPolicy", "RefreshAhead", "XFetch", "l1_ttl"]


@runtime_checkable
class ReadPolicy(Protocol):
    """What the core asks a read policy about one entry (all times in seconds)."""

    def due(self, age: float, ttl: float, load_time: float, rand: float) -> bool:
        """Should a read at ``age`` start a background reload (the value is still served)?
        ``rand`` is uniform in (0, 1], drawn by the caller (seedable in tests)."""
        ...

    def refresh_in(self, ttl: float, load_time: float, rand: float) -> float:
        """Seconds after the write at which reads should start asking :meth:`due`: the L1
        copy is kept only that long, so the C hit path needs no clock of its own."""
        ...


@dataclass(frozen=True, slots=True)
class Expiry:
    """No early reload: an entry is fresh for its whole ``ttl``."""

    def due(self, age: float, ttl: float, load_time: float, rand: float) -> bool:
        return False

    def refresh_in(self, ttl: float, load_time: float, rand: float) -> float:
        return ttl


@dataclass(frozen=True, slots=True)
class RefreshAhead:
    """After ``ratio * ttl`` serve the cached value and reload it once in the background.

    A failed reload keeps the old value (logged, counted in ``refreshes_failed``); the next
    read after a short back-off tries again. ``lock=True`` makes one *process* reload, through
    the Redis lease ``@cached(lock=True)`` uses.
    """

    ratio: float = 0.8
    lock: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, int | float) or not (
                0.0 < self.ratio < 1.0):
            raise ValueError(f"RefreshAhead(ratio=) must be a number in (0, 1), got "
                             f"{self.ratio!r}")

    def due(self, age: float, ttl: float, load_time: float, rand: float) -> bool:
        return age >= self.ratio * ttl

    def refresh_in(self, ttl: float, load_time: float, rand: float) -> float:
        return self.ratio * ttl


@dataclass(frozen=True, slots=True)
class XFetch:
    """Recompute early with probability ``exp(-remaining / (delta * beta))`` per read.

    ``beta`` > 1 favours earlier recomputation. An entry never loaded through the loader
    (``delta`` = 0, e.g. written with ``cache.set``) is never recomputed early.
    """

    beta: float = 1.0
    lock: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.beta, bool) or not isinstance(self.beta, int | float) or not (
                self.beta > 0 and math.isfinite(self.beta)):
            raise ValueError(f"XFetch(beta=) must be a positive number, got {self.beta!r}")

    def due(self, age: float, ttl: float, load_time: float, rand: float) -> bool:
        # now - delta * beta * ln(rand) >= expiry, with now = stored_at + age
        return age - load_time * self.beta * math.log(rand) >= ttl

    def refresh_in(self, ttl: float, load_time: float, rand: float) -> float:
        """One draw of the formula per L1 fill: the same distribution of the first early
        recompute as asking it on every read, without a clock on the L1 hit path."""
        return max(0.0, ttl + load_time * self.beta * math.log(rand))


def draw() -> float:
    """A uniform number in (0, 1] (``ln(0)`` is undefined)."""
    return 1.0 - random.random()


def l1_ttl(l1_default: float | None, remaining: float | None) -> float | None:
    """The L1 rule: ``min(L1 TTL, the entry's remaining TTL)``; None = no expiry."""
    candidates = [t for t in (l1_default, remaining) if t is not None]
    return min(candidates) if candidates else None
