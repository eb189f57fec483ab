"""Circuit breaker for remote tiers: stop hammering a dead Redis, probe it again later.

Why: when Redis is down every call would otherwise wait for a connect/read timeout, and a
cache that makes each request slower than no cache at all is worse than useless. States:

* ``closed``: calls go through; ``failure_threshold`` consecutive failures open it.
* ``open``: calls are skipped at once; after ``reset_timeout`` seconds it turns half-open.
* ``half_open``: exactly one probe call is let through; its success closes the breaker,
  its failure opens it for another ``reset_timeout``. A probe that never reports back
  (its task was cancelled) stops blocking further probes after ``reset_timeout``.

The hot path reads one attribute: ``if breaker.state is not CLOSED and not breaker.allow()``.
Transitions take a lock (sync callers run in many threads); the closed path never does.
The clock is injectable for tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final, Literal

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "BreakerState", "CircuitBreaker"]

BreakerState = Literal["closed", "open", "half_open"]
CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"


class CircuitBreaker:
    """Consecutive-failure breaker with a timed half-open probe.

    ``on_change(old, new)`` is called (outside the lock) on every state transition, e.g.
    for logging; it must not raise.
    """

    __slots__ = (
        "_clock",
        "_lock",
        "_on_change",
        "_opened_at",
        "_probe_started",
        "failure_threshold",
        "failures",
        "opened_total",
        "reset_timeout",
        "state",
    )

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 2.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState, BreakerState], None] | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if reset_timeout < 0:
            raise ValueError("reset_timeout must be >= 0")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self.state: BreakerState = CLOSED
        self.failures = 0  # consecutive failures while closed
        self.opened_total = 0  # how many times it opened (for stats)
        self._opened_at = 0.0
        self._probe_started: float | None = None

    def allow(self) -> bool:
        """May a call go out now? (Cheap when closed; callers test ``state`` first anyway.)"""
        if self.state is CLOSED:
            return True
        changed: tuple[BreakerState, BreakerState] | None = None
        with self._lock:
            now = self._clock()
            if self.state is OPEN:
                if now - self._opened_at < self.reset_timeout:
                    return False
                changed = (OPEN, HALF_OPEN)
                self.state = HALF_OPEN
                self._probe_started = None
            if self.state is HALF_OPEN:
                probe = self._probe_started
                if probe is not None and now - probe < self.reset_timeout:
                    allowed = False
                else:
                    self._probe_started = now
                    allowed = True
            else:  # closed by a concurrent success
                allowed = True
        if changed is not None:
            self._notify(*changed)
        return allowed

    def record_success(self) -> None:
        """A call completed: reset the failure streak, close a half-open breaker."""
        if self.state is CLOSED:
            if self.failures:
                self.failures = 0
            return
        with self._lock:
            old = self.state
            self.state = CLOSED
            self.failures = 0
            self._probe_started = None
        if old is not CLOSED:
            self._notify(old, CLOSED)

    def record_failure(self) -> None:
        """A call failed because the server is unreachable/unhealthy."""
        changed: tuple[BreakerState, BreakerState] | None = None
        with self._lock:
            if self.state is CLOSED:
                self.failures += 1
                if self.failures >= self.failure_threshold:
                    changed = (CLOSED, OPEN)
            elif self.state is HALF_OPEN:
                changed = (HALF_OPEN, OPEN)
            # already open: a straggler sent before it opened; nothing to change
            if changed is not None:
                self.state = OPEN
                self.opened_total += 1
                self._opened_at = self._clock()
                self._probe_started = None
        if changed is not None:
            self._notify(*changed)

    def reset(self) -> None:
        """Force the breaker closed (e.g. after an operator fixed Redis)."""
        self.record_success()

    def _notify(self, old: BreakerState, new: BreakerState) -> None:
        if self._on_change is not None:
            self._on_change(old, new)

    @property
    def seconds_until_probe(self) -> float:
        """How long an open breaker keeps skipping calls (0 when closed/half-open)."""
        if self.state is not OPEN:
            return 0.0
        return max(0.0, self.reset_timeout - (self._clock() - self._opened_at))

    def snapshot(self) -> dict[str, object]:
        return {
            "state": self.state,
            "failures": self.failures,
            "opened_total": self.opened_total,
            "failure_threshold": self.failure_threshold,
            "reset_timeout": self.reset_timeout,
        }

    def __repr__(self) -> str:
        return (
            f"<CircuitBreaker {self.state} failures={self.failures}/{self.failure_threshold}"
            f" reset_timeout={self.reset_timeout}>"
        )
