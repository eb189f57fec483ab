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

:class:`BreakerGroup` holds one breaker per Redis Cluster node (plus a ``default`` one for a
single Redis, for cluster-wide operations and for keys whose node is not known yet), so one
dead master fails fast without switching off the healthy ones. Its ``state`` is an
aggregate: ``open`` only when every member is open, ``closed`` when every member is closed,
``half_open`` otherwise (degraded: part of the cluster is skipped or being probed).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Final, Literal

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "BreakerGroup", "BreakerState", "CircuitBreaker"]

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


class BreakerGroup:
    """Per-node circuit breakers of one Redis tier, and their aggregate view.

    * ``default``: the breaker given to the tier (or a fresh one). A single Redis uses only
      this one; a cluster uses it for cluster-wide operations (SCAN sweeps, PUBLISH, tags,
      FLUSHDB) and for keys whose node is not known yet (no topology before the first
      successful connection). It is also the template of the node breakers (threshold,
      reset timeout, clock).
    * node breakers: created lazily, by node name (``host:port``), the first time a key of
      that node meets a non-healthy group; at most ``max_nodes`` are kept (:meth:`retire`
      drops nodes that left the topology, e.g. a dead master replaced by its replica).
    * ``healthy``: True while every member is closed with no failure streak. The hot path
      tests only this attribute and skips the per-key node lookup; the first failure clears
      it, :meth:`recheck` sets it again once every member is clean.

    ``state`` (what ``stats()["breaker"]``, metrics and health report): ``open`` only when
    every member is open (nothing reaches Redis), ``closed`` when every member is closed,
    ``half_open`` otherwise (some nodes skipped or probed: degraded). The default breaker
    counts only while no node breaker exists or while it is not closed itself.
    """

    __slots__ = ("_lock", "_nodes", "_on_change", "_retired_opens", "default", "healthy",
                 "max_nodes")

    def __init__(self, default: CircuitBreaker | None = None, *,
                 on_change: NodeChange | None = None, max_nodes: int = 1024) -> None:
        self.default = default or CircuitBreaker(failure_threshold=5, reset_timeout=2.0)
        self._on_change = on_change
        self._nodes: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()
        self._retired_opens = 0  # opened_total of retired breakers: the counter never drops
        self.max_nodes = max_nodes
        self.healthy = True

    # ------------------------------------------------------------ members

    def node(self, name: str) -> CircuitBreaker:
        """The breaker of node ``name`` (created closed on first use)."""
        breaker = self._nodes.get(name)
        if breaker is not None:
            return breaker
        with self._lock:
            breaker = self._nodes.get(name)
            if breaker is None:
                if len(self._nodes) >= self.max_nodes:
                    self._evict_locked()
                tpl = self.default
                breaker = CircuitBreaker(tpl.failure_threshold, tpl.reset_timeout,
                                         clock=tpl._clock, on_change=self._notifier(name))
                self._nodes[name] = breaker
            return breaker

    def seed(self, names: Iterable[str]) -> None:
        """Make sure every node in ``names`` has a breaker (the aggregate covers them all)."""
        for name in names:
            if name not in self._nodes:
                self.node(name)

    def _notifier(self, name: str) -> Callable[[BreakerState, BreakerState], None] | None:
        listener = self._on_change
        if listener is None:
            return None
        return lambda old, new: listener(name, old, new)

    def _evict_locked(self) -> None:
        """Make room: drop clean breakers first, else the oldest one."""
        victim = next((n for n, b in self._nodes.items()
                       if b.state is CLOSED and not b.failures), next(iter(self._nodes)))
        self._retired_opens += self._nodes.pop(victim).opened_total

    @property
    def nodes(self) -> dict[str, CircuitBreaker]:
        """A copy of the node breakers by node name."""
        return dict(self._nodes)

    def members(self) -> list[CircuitBreaker]:
        """The breakers the aggregate ``state`` is made of."""
        nodes = list(self._nodes.values())
        if not nodes or self.default.state is not CLOSED:
            nodes.append(self.default)
        return nodes

    # ------------------------------------------------------------ health flag

    def mark_unhealthy(self) -> None:
        """A failure was seen (attributed or not): take the precise, per-node path."""
        with self._lock:
            self.healthy = False

    def recheck(self) -> bool:
        """Set ``healthy`` again when every breaker is closed without a failure streak."""
        with self._lock:
            self.healthy = all(b.state is CLOSED and not b.failures
                               for b in (self.default, *self._nodes.values()))
            return self.healthy

    def retire(self, live: Iterable[str]) -> None:
        """Forget breakers of nodes not in ``live`` (they left the topology)."""
        keep = set(live)
        if not keep:
            return
        with self._lock:
            for name in [n for n in self._nodes if n not in keep]:
                self._retired_opens += self._nodes.pop(name).opened_total

    # ------------------------------------------------------------ aggregate view

    @property
    def state(self) -> BreakerState:
        states = {b.state for b in self.members()}
        if len(states) == 1:
            return states.pop()
        return HALF_OPEN

    @property
    def opened_total(self) -> int:
        """How many times any member opened (retired members included)."""
        return (self._retired_opens + self.default.opened_total
                + sum(b.opened_total for b in list(self._nodes.values())))

    @property
    def failures(self) -> int:
        """The longest current failure streak of any member."""
        return max(b.failures for b in self.members())

    @property
    def failure_threshold(self) -> int:
        return self.default.failure_threshold

    @property
    def reset_timeout(self) -> float:
        return self.default.reset_timeout

    @property
    def seconds_until_probe(self) -> float:
        """While every member is open: how long until the first one probes (else 0)."""
        members = self.members()
        if any(b.state is not OPEN for b in members):
            return 0.0
        return min(b.seconds_until_probe for b in members)

    def states(self, default_name: str = "default") -> dict[str, BreakerState]:
        """``{node: state}``; the default breaker under ``default_name`` when it counts."""
        out: dict[str, BreakerState] = {n: b.state for n, b in list(self._nodes.items())}
        if not out or self.default.state is not CLOSED:
            out[default_name] = self.default.state
        return out

    def reset(self) -> None:
        """Force every breaker closed (e.g. after an operator fixed Redis)."""
        for breaker in (self.default, *list(self._nodes.values())):
            breaker.reset()
        self.recheck()

    def snapshot(self) -> dict[str, object]:
        return {
            "state": self.state,
            "failures": self.failures,
            "opened_total": self.opened_total,
            "failure_threshold": self.failure_threshold,
            "reset_timeout": self.reset_timeout,
            "nodes": {n: b.snapshot() for n, b in list(self._nodes.items())},
        }

    def __repr__(self) -> str:
        return f"<BreakerGroup {self.state} nodes={len(self._nodes)} healthy={self.healthy}>"
