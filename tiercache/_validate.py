"""One validator for every TTL-like argument, so each entry point refuses the same inputs alike.

Why: ``set(k, v, ttl=0)`` used to return normally and store nothing, ``ttl="60"`` failed deep
inside with ``'>' not supported``, while ``@cached(ttl=0)`` said clearly what was wrong. Every
public entry point that takes a TTL (``cached``, ``set``, ``set_many``, the tiers' ``set``)
calls :func:`ttl_seconds` before doing anything.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

__all__ = ["duration_seconds", "ttl_seconds"]


def _number(value: Any, name: str, what: str) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
    return float(value)


def ttl_seconds(value: Any, name: str = "ttl") -> float | None:
    """``value`` as seconds > 0, or None (no expiry / the tier's default).

    Accepts ``int``/``float`` seconds and ``timedelta`` (``math.inf`` passes through: the
    MemoryTier reads it as "never expires").
    Raises ``TypeError`` for other types (``"60"``, ``True``) and ``ValueError`` for
    ``<= 0`` and NaN: a TTL that would store nothing is a bug at the call site, not a no-op.
    """
    if value is None:
        return None
    seconds = _number(value, name, "a number of seconds, a timedelta or None")
    if not seconds > 0:  # also NaN
        raise ValueError(f"{name} must be > 0 seconds or None, got {value!r}")
    return seconds


def duration_seconds(value: Any, name: str) -> float:
    """A wait/timeout in seconds: finite and >= 0 (``0`` = do not wait)."""
    seconds = _number(value, name, "a number of seconds or a timedelta")
    if not 0 <= seconds < math.inf:
        raise ValueError(f"{name} must be >= 0 seconds and finite, got {value!r}")
    return seconds
