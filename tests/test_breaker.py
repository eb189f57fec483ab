"""CircuitBreaker state machine, driven by an injected clock (no sleeping)."""

from __future__ import annotations

import threading

import pytest

from tiercache.tiers._breaker import CLOSED, HALF_OPEN, OPEN, BreakerGroup, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_opens_after_threshold_consecutive_failures(clock: Clock) -> None:
    b = CircuitBreaker(failure_threshold=3, reset_timeout=2.0, clock=clock)
    for _ in range(2):
        b.record_failure()
        assert b.state is CLOSED and b.allow()
    b.record_failure()
    assert b.state is OPEN
    assert not b.allow()
    assert b.opened_total == 1


def test_success_resets_the_streak(clock: Clock) -> None:
    b = CircuitBreaker(failure_threshold=3, reset_timeout=2.0, clock=clock)
    b.record_failure()
    b.record_failure()
    b.record_success()
    assert b.failures == 0
    b.record_failure()
    b.record_failure()
    assert b.state is CLOSED


def test_half_open_lets_exactly_one_probe_through(clock: Clock) -> None:
    b = CircuitBreaker(failure_threshold=1, reset_timeout=2.0, clock=clock)
    b.record_failure()
    clock.now += 1.999
    assert not b.allow()
    assert b.seconds_until_probe == pytest.approx(0.001, abs=1e-6)
    clock.now += 0.002
    assert b.allow()  # the probe
    assert b.state is HALF_OPEN
    assert not b.allow()  # everybody else still skips
    assert not b.allow()
    b.record_success()
    assert b.state is CLOSED
    assert b.allow()


def test_failed_probe_reopens_for_another_period(clock: Clock) -> None:
    b = CircuitBreaker(failure_threshold=1, reset_timeout=2.0, clock=clock)
    b.record_failure()
    clock.now += 2.0
    assert b.allow()
    b.record_failure()
    assert b.state is OPEN
    assert b.opened_total == 2
    clock.now += 1.0
    assert not b.allow()
    clock.now += 1.0
    assert b.allow()


def test_lost_probe_does_not_block_forever(clock: Clock) -> None:
    """A probe whose task was cancelled never reports; another probe goes after a period."""
    b = CircuitBreaker(failure_threshold=1, reset_timeout=2.0, clock=clock)
    b.record_failure()
    clock.now += 2.0
    assert b.allow()
    clock.now += 1.0
    assert not b.allow()
    clock.now += 1.0
    assert b.allow()


def test_transitions_are_reported(clock: Clock) -> None:
    seen: list[tuple[str, str]] = []
    b = CircuitBreaker(failure_threshold=1, reset_timeout=1.0, clock=clock,
                       on_change=lambda old, new: seen.append((old, new)))
    b.record_failure()
    clock.now += 1.0
    b.allow()
    b.record_success()
    assert seen == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_straggler_failure_while_open_changes_nothing(clock: Clock) -> None:
    b = CircuitBreaker(failure_threshold=1, reset_timeout=2.0, clock=clock)
    b.record_failure()
    clock.now += 1.5
    b.record_failure()  # a call sent before the breaker opened
    clock.now += 0.5
    assert b.allow()
    assert b.opened_total == 1


def test_reset_closes(clock: Clock) -> None:
    b = CircuitBreaker(failure_threshold=1, reset_timeout=60.0, clock=clock)
    b.record_failure()
    b.reset()
    assert b.state is CLOSED and b.allow()


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker(reset_timeout=-1)


def test_one_probe_among_threads(clock: Clock) -> None:
    b = CircuitBreaker(failure_threshold=1, reset_timeout=1.0, clock=clock)
    b.record_failure()
    clock.now += 1.0
    allowed: list[bool] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        allowed.append(b.allow())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert allowed.count(True) == 1


# ------------------------------------------------------------------ per-node group


def group_of(clock: Clock, threshold: int = 2) -> BreakerGroup:
    return BreakerGroup(CircuitBreaker(failure_threshold=threshold, reset_timeout=2.0,
                                       clock=clock))


def test_group_without_nodes_is_its_default_breaker(clock: Clock) -> None:
    g = group_of(clock)
    assert g.state is CLOSED and g.healthy and g.states("10.0.0.1:6379") == {
        "10.0.0.1:6379": CLOSED}
    g.default.record_failure()
    g.default.record_failure()
    assert g.state is OPEN and g.opened_total == 1 and g.failures == 2
    assert g.seconds_until_probe == pytest.approx(2.0)
    assert g.states() == {"default": OPEN}


def test_group_state_is_open_only_when_every_node_is_open(clock: Clock) -> None:
    g = group_of(clock)
    a, b, c = g.node("a:1"), g.node("b:1"), g.node("c:1")
    assert g.node("a:1") is a and a.failure_threshold == 2 and a.reset_timeout == 2.0
    assert g.state is CLOSED and g.states() == {"a:1": CLOSED, "b:1": CLOSED, "c:1": CLOSED}
    for _ in range(2):
        a.record_failure()
    assert g.state is HALF_OPEN  # degraded: one master skipped, the others serve
    assert g.seconds_until_probe == 0.0
    assert g.states() == {"a:1": OPEN, "b:1": CLOSED, "c:1": CLOSED}
    for breaker in (b, c):
        breaker.record_failure()
        breaker.record_failure()
    assert g.state is OPEN and g.opened_total == 3
    clock.now += 2.0
    assert a.allow() and g.state is HALF_OPEN  # one probing, the others still open
    for breaker in (a, b, c):
        breaker.record_success()
    assert g.state is CLOSED and g.opened_total == 3


def test_group_default_breaker_counts_once_nodes_exist_only_when_not_closed(
        clock: Clock) -> None:
    g = group_of(clock)
    g.node("a:1")
    assert g.states("cluster") == {"a:1": CLOSED}
    g.default.record_failure()
    g.default.record_failure()  # cluster-wide operations failing
    assert g.state is HALF_OPEN and g.states("cluster") == {"a:1": CLOSED, "cluster": OPEN}
    g.reset()
    assert g.state is CLOSED and g.healthy


def test_group_healthy_flag_follows_failures_and_recheck(clock: Clock) -> None:
    g = group_of(clock, threshold=3)
    a = g.node("a:1")
    a.record_failure()
    g.mark_unhealthy()
    assert not g.healthy and not g.recheck()  # a failure streak: stay on the precise path
    a.record_success()
    assert g.recheck() and g.healthy
    g.mark_unhealthy()  # an unattributed failure (a multi-node batch)
    assert g.recheck()  # nothing to hold on to


def test_group_retires_departed_nodes_and_keeps_their_opens_counted(clock: Clock) -> None:
    g = group_of(clock)
    dead = g.node("dead:1")
    g.node("live:1")
    dead.record_failure()
    dead.record_failure()
    g.mark_unhealthy()
    assert g.state is HALF_OPEN and not g.recheck()
    g.retire([])  # topology unknown: nothing dropped
    assert "dead:1" in g.nodes
    g.retire(["live:1", "promoted:1"])  # a failover replaced it
    assert set(g.nodes) == {"live:1"} and g.state is CLOSED and g.recheck()
    assert g.opened_total == 1  # a counter never goes back
    assert g.snapshot()["nodes"] == {"live:1": g.node("live:1").snapshot()}


def test_group_is_bounded(clock: Clock) -> None:
    g = BreakerGroup(CircuitBreaker(failure_threshold=1, clock=clock), max_nodes=3)
    sick = g.node("n0")
    sick.record_failure()
    for i in range(1, 10):
        g.node(f"n{i}")
    assert len(g.nodes) == 3 and "n0" in g.nodes  # clean ones go first
    assert g.opened_total == 1


def test_group_node_transitions_are_reported_with_the_node(clock: Clock) -> None:
    seen: list[tuple[str, str, str]] = []
    g = BreakerGroup(CircuitBreaker(failure_threshold=1, clock=clock),
                     on_change=lambda n, old, new: seen.append((n, old, new)))
    g.node("a:1").record_failure()
    g.node("a:1").record_success()
    assert seen == [("a:1", CLOSED, OPEN), ("a:1", OPEN, CLOSED)]
