"""Glob patterns (local ``invalidate_pattern`` and ``p`` in bus messages): linear time, bounded.

Before: the glob became a ``.*`` regex, and ``"*?" * 7 + "!"`` over 20 L1 entries took
~12 s (x6 per extra ``*?``) under the fence lock -- on the event loop for a bus message.
"""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiercache._l1index import MAX_PATTERN, _glob_class, glob_to_regex
from tiercache.cache import TierCache
from tiercache.tiers.memory import MemoryTier

ADVERSARIAL = ["*?" * 7 + "!", "*?" * 60 + "!", "*a" * 50 + "b", "a*" * 500 + "b",
               "*" + "?*" * 300 + "z", "[a-z]*" * 100 + "!", "?" * 1000,
               "*\\**\\**\\**\\**\\*!", "*[^x]*[^x]*[^x]*[^x]*[^x]*[^x]*[^x]*!"]


def _old_regex(pattern: str) -> re.Pattern[str]:
    """The translation this replaced (kept here as the semantic reference)."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            regex, i = _glob_class(pattern, i + 1)
            out.append(regex)
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


@settings(max_examples=3000, deadline=None)
@given(st.text("ab*?[]^-\\!", max_size=10), st.text("ab-]!*\\^[", max_size=10))
def test_same_matches_as_the_regex_translation(pattern: str, key: str) -> None:
    assert glob_to_regex(pattern).fullmatch(key) == bool(_old_regex(pattern).fullmatch(key))


@pytest.mark.parametrize(("pattern", "key", "hit"), [
    ("user:*", "user:1", True), ("user:*", "use", False), ("*", "", True), ("", "", True),
    ("a*b*c", "abc", True), ("a*b*c", "acb", False), ("a*a", "a", False), ("a*a", "aa", True),
    ("k[0-2]", "k1", True), ("k[^0-2]", "k1", False), ("k[2-0]", "k1", True),
    ("x[]", "x", False), ("x[^]", "xy", True), ("a\\*b", "a*b", True), ("a\\*b", "axb", False),
    ("[a", "a", True), ("abc\\", "abc\\", True), ("*ab*ab*", "xabab", True),
    ("*ab*ab*", "xaba", False), ("?*?", "ab", True), ("?*?", "a", False),
])
def test_redis_semantics(pattern: str, key: str, hit: bool) -> None:
    assert glob_to_regex(pattern).fullmatch(key) is hit


def test_pattern_length_is_bounded() -> None:
    glob_to_regex("*" * MAX_PATTERN)
    with pytest.raises(ValueError, match="at most 1024"):
        glob_to_regex("*" * (MAX_PATTERN + 1))


def test_adversarial_patterns_over_10k_keys() -> None:
    keys = [f"mod.fn:{i:032x}" for i in range(5000)]
    keys += ["a" * 200 + str(i) for i in range(5000)]  # long runs the patterns almost fit
    start = time.perf_counter()
    for pattern in ADVERSARIAL:
        matcher = glob_to_regex(pattern)
        assert not any(matcher.fullmatch(k) for k in keys)  # none ends as these patterns do
    took = time.perf_counter() - start
    print(f"{len(ADVERSARIAL)} adversarial patterns x {len(keys)} keys: {took * 1000:.0f} ms")
    assert took < 5  # a hang guard, not a speed assertion


async def test_invalidate_pattern_on_10k_l1_entries() -> None:
    cache = TierCache(l1=MemoryTier(maxsize=20_000), l2=None, namespace="glob")

    @cache.cached()
    async def f(x: int) -> int:
        return x

    for i in range(10_000):
        await f(i)
    start = time.perf_counter()
    for pattern in ADVERSARIAL:
        assert await cache.invalidate_pattern(pattern) == 0
    took = time.perf_counter() - start
    print(f"invalidate_pattern x{len(ADVERSARIAL)} over 10k L1 entries: {took * 1000:.0f} ms")
    assert took < 5
    assert await cache.invalidate_pattern("*") == 10_000
    await cache.aclose()
