"""CircuitBreaker state machine, driven by an injected clock (no sleeping)."""

from __future__ import annotations

import threading

import pytest

from tiercache.tiers._breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


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
