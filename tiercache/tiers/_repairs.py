"""Repairs: L2 invalidations and writes that could not be applied, kept until Redis is back.

Why: when a delete, a tag or pattern invalidation, or a write cannot reach Redis (breaker
open, timeout, connection refused), the *old* L2 value survives the outage. Served again
after recovery it would undo an invalidation the caller was told about, or show a process
a value older than its own ``set()``. So the tier remembers what L2 still owes:

* a key to delete (a failed delete, and a failed ``set``/``add_tags``: the old L2 value of
  that key must never be served after the write, so it is deleted instead);
* a tag invalidation ``(namespace, tag)``, a pattern (``delete_pattern``, ``clear``).

Before L2 serves reads again, the tier applies what is pending (one repairer at a time);
until then a read of a key with a pending repair is a miss: a pending key, or any key of
a namespace with a pending tag/pattern (the tier cannot know which keys those cover).

Bounded: past ``limit`` items the keys and tags collapse into one namespace-wide flush per
namespace seen (``delete_pattern("{ns}:*")``), which is always correct, only colder.
Each item carries a sequence number so an item re-added while a repair runs is not lost.
The hot read path tests one attribute (``active``) when nothing is pending.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable
from typing import Final, TypeVar

from tiercache.tiers.keys import namespace_of

__all__ = ["Repairs", "glob_escape"]

K = TypeVar("K", bound=Hashable)
RETRY_INTERVAL: Final = 0.05  # seconds between two repair attempts while Redis is down
_GLOB: Final = frozenset("*?[]\\")


def glob_escape(text: str) -> str:
    return "".join("\\" + c if c in _GLOB else c for c in text)


def _pattern_namespace(pattern: str) -> str | None:
    """The literal namespace a pattern is confined to, or None (it may touch any)."""
    head, sep, _ = pattern.partition(":")
    if not sep or any(c in _GLOB for c in head):
        return None
    return head


class Repairs:
    """Pending L2 repairs of one tier (thread-safe; see the module docstring)."""

    def __init__(self, limit: int = 10_000) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self.active = False  # the hot path's only test
        self.keys: dict[str, int] = {}
        self.tags: dict[tuple[str, str], int] = {}
        self.patterns: dict[str, int] = {}
        self._blocked: set[str] = set()  # namespaces with a pending tag/pattern
        self._block_all = False
        self._seq = 0
        self._lock = threading.Lock()
        self._running = False
        self._next_try = 0.0
        self.deferred = 0
        self.applied = 0
        self.overflows = 0

    def __len__(self) -> int:
        return len(self.keys) + len(self.tags) + len(self.patterns)

    # ------------------------------------------------------------ remember

    def add_keys(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._seq += 1
                self.keys[key] = self._seq
            self._added(len(keys))

    def add_tags(self, namespace: str, tags: list[str]) -> None:
        with self._lock:
            for tag in tags:
                self._seq += 1
                self.tags[(namespace, tag)] = self._seq
            self._added(len(tags))

    def add_pattern(self, pattern: str) -> None:
        with self._lock:
            self._seq += 1
            self.patterns[pattern] = self._seq
            self._added(1)

    def discard_key(self, key: str) -> None:
        """A later write of ``key`` reached Redis: its pending delete is moot."""
        with self._lock:
            if self.keys.pop(key, None) is not None:
                self._refresh()

    def _added(self, n: int) -> None:
        self.deferred += n
        self._next_try = 0.0
        if len(self) > self.limit:
            self.overflows += 1
            spaces = {namespace_of(k) for k in self.keys} | {ns for ns, _ in self.tags}
            self.keys.clear()
            self.tags.clear()
            for ns in spaces:
                self._seq += 1
                self.patterns[glob_escape(ns) + ":*"] = self._seq
        self._refresh()

    def _refresh(self) -> None:
        blocked = {ns for ns, _ in self.tags}
        block_all = False
        for pattern in self.patterns:
            ns = _pattern_namespace(pattern)
            if ns is None:
                block_all = True
            else:
                blocked.add(ns)
        self._blocked, self._block_all = blocked, block_all
        self.active = bool(self.keys or self.tags or self.patterns)

    # ------------------------------------------------------------ read side

    def blocks(self, key: str) -> bool:
        """Must a read of ``key`` miss until the repairs are applied?"""
        return (self._block_all or key in self.keys
                or (bool(self._blocked) and namespace_of(key) in self._blocked))

    # ------------------------------------------------------------ apply

    def begin(self) -> tuple[dict[str, int], dict[tuple[str, str], int], dict[str, int]] | None:
        """A snapshot to apply, or None (another repair runs, or one failed just now)."""
        with self._lock:
            if self._running or not self.active or time.monotonic() < self._next_try:
                return None
            self._running = True
            return dict(self.patterns), dict(self.tags), dict(self.keys)

    def end(self) -> None:
        with self._lock:
            self._running = False
            if self.active:
                self._next_try = time.monotonic() + RETRY_INTERVAL

    def done_patterns(self, done: dict[str, int]) -> None:
        self._done(self.patterns, done)

    def done_tags(self, done: dict[tuple[str, str], int]) -> None:
        self._done(self.tags, done)

    def done_keys(self, done: dict[str, int]) -> None:
        self._done(self.keys, done)

    def _done(self, table: dict[K, int], done: dict[K, int]) -> None:
        with self._lock:
            for item, seq in done.items():
                if table.get(item) == seq:
                    del table[item]
                    self.applied += 1
            self._refresh()

    def snapshot(self) -> dict[str, int]:
        return {"pending": len(self), "deferred": self.deferred, "applied": self.applied,
                "overflows": self.overflows}
