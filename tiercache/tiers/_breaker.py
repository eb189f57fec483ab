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

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "BreakerState", "CircuitBreaker", "NodeBreakers"]

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


NodeChange = Callable[[str, BreakerState, BreakerState], None]
_RANK: Final = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class NodeBreakers:
    """One :class:`CircuitBreaker` per Redis node (``"host:port"``) and their aggregate.

    Why: with one breaker per deployment, one dead master of three makes it flap (healthy
    nodes close it, the dead one opens it), so the dead node's keys keep paying timeouts
    while the healthy nodes' keys are skipped half the time. Per node, the dead node's keys
    fail fast once its breaker opened and the other nodes keep serving.

    * node breakers copy the ``template`` (threshold, reset timeout, clock); the first one
      created *is* the template (a single Redis keeps the very breaker it was given);
    * ``degraded``: False while every breaker is closed without a failure streak. The hot
      path tests only this flag and skips the per-key node lookup. A failure nobody can be
      blamed for (a multi-node batch) keeps the tier degraded for ``reset_timeout``, so the
      next batches are split per node and the culprit found;
    * ``state`` is the worst member state (``open`` if any node is open), what the core,
      metrics and health read; :meth:`states` gives ``{node: state}``.
    """

    __slots__ = ("_hold_until", "_lock", "_on_change", "_retired_opens", "degraded",
                 "max_nodes", "nodes", "template")

    def __init__(self, template: CircuitBreaker | None = None, *,
                 on_change: NodeChange | None = None, max_nodes: int = 1024) -> None:
        self.template = template or CircuitBreaker(failure_threshold=5, reset_timeout=2.0)
        self._on_change = on_change
        self.nodes: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()
        self._retired_opens = 0
        self._hold_until = 0.0
        self.max_nodes = max_nodes
        self.degraded = False

    def get(self, name: str) -> CircuitBreaker:
        """The breaker of node ``name`` (created closed on first sight)."""
        breaker = self.nodes.get(name)
        if breaker is not None:
            return breaker
        with self._lock:
            breaker = self.nodes.get(name)
            if breaker is None:
                if len(self.nodes) >= self.max_nodes:
                    victim = next((n for n, b in self.nodes.items() if b.state is CLOSED),
                                  next(iter(self.nodes)))
                    self._retired_opens += self.nodes.pop(victim).opened_total
                tpl = self.template
                if not self.nodes and tpl.opened_total == 0 and self._retired_opens == 0:
                    breaker = tpl
                    user = tpl._on_change
                else:
                    breaker = CircuitBreaker(tpl.failure_threshold, tpl.reset_timeout,
                                             clock=tpl._clock)
                    user = None
                breaker._on_change = self._notifier(name, user)
                self.nodes[name] = breaker
            return breaker

    def _notifier(self, name: str, user: Callable[[BreakerState, BreakerState], None] | None
                  ) -> Callable[[BreakerState, BreakerState], None] | None:
        listener = self._on_change
        if listener is None:
            return user

        def changed(old: BreakerState, new: BreakerState) -> None:
            listener(name, old, new)
            if user is not None:
                user(old, new)
        return changed

    # ------------------------------------------------------------ outcomes

    def failed(self, breaker: CircuitBreaker | None) -> None:
        """A call failed because a server is down; ``None``: nobody to blame."""
        if breaker is not None:
            breaker.record_failure()
        else:
            self._hold_until = self.template._clock() + self.template.reset_timeout
        self.degraded = True

    def succeeded(self, breaker: CircuitBreaker) -> None:
        breaker.record_success()
        if self.degraded:
            self.recheck()

    def recheck(self) -> bool:
        """Leave degraded mode once every breaker is clean (and no hold is running)."""
        if self.template._clock() < self._hold_until:
            return False
        clean = all(b.state is CLOSED and not b.failures for b in list(self.nodes.values()))
        if clean:
            self.degraded = False
        return clean

    def retire(self, live: set[str]) -> None:
        """Forget breakers of nodes that left the topology (e.g. a failed-over master)."""
        if not live:
            return
        with self._lock:
            for name in [n for n in self.nodes if n not in live]:
                self._retired_opens += self.nodes.pop(name).opened_total

    # ------------------------------------------------------------ aggregate view

    @property
    def state(self) -> BreakerState:
        worst: BreakerState = CLOSED
        for breaker in list(self.nodes.values()):
            if _RANK[breaker.state] > _RANK[worst]:
                worst = breaker.state
        return worst

    def all_open(self) -> bool:
        """Is every known node's breaker open and not yet due for a probe?"""
        nodes = list(self.nodes.values())
        return bool(nodes) and all(b.state is OPEN and b.seconds_until_probe > 0
                                   for b in nodes)

    def states(self) -> dict[str, BreakerState]:
        return {name: b.state for name, b in list(self.nodes.items())}

    @property
    def opened_total(self) -> int:
        return self._retired_opens + sum(b.opened_total for b in list(self.nodes.values()))

    @property
    def failures(self) -> int:
        return max((b.failures for b in list(self.nodes.values())), default=0)

    @property
    def failure_threshold(self) -> int:
        return self.template.failure_threshold

    @property
    def reset_timeout(self) -> float:
        return self.template.reset_timeout

    @property
    def seconds_until_probe(self) -> float:
        """How long until the next open node breaker probes (0 when none is open)."""
        waits = [b.seconds_until_probe for b in list(self.nodes.values()) if b.state is OPEN]
        return min(waits, default=0.0)

    def reset(self) -> None:
        """Force every breaker closed (e.g. after an operator fixed Redis)."""
        for breaker in list(self.nodes.values()):
            breaker.reset()
        self._hold_until = 0.0
        self.recheck()

    def snapshot(self) -> dict[str, object]:
        return {"state": self.state, "failures": self.failures,
                "opened_total": self.opened_total,
                "failure_threshold": self.failure_threshold,
                "reset_timeout": self.reset_timeout,
                "nodes": {n: b.snapshot() for n, b in list(self.nodes.items())}}

    def __repr__(self) -> str:
        return f"<NodeBreakers {self.state} nodes={len(self.nodes)} degraded={self.degraded}>"
