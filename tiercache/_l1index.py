"""Which L1 entries hold a copy of which L2 key: what invalidation by key, tag and pattern needs.

Why: L1 entries are keyed by argument tuples (``f(1)`` and ``f(x=1)`` are two entries for one
L2 key), so dropping "the entry for L2 key K" in this process -- or in another one, from a bus
message that carries K -- needs the reverse mapping. It is filled on the miss path only (never
on a hit) and pruned of entries L1 has since evicted.

Kept small because it lives as long as the L1 entries: one dict per segment, keyed by the part
of the L2 key after the function's prefix (the 128-bit digest stored as 16 raw bytes), valued
by the L1 key object L1 already holds (no copy). Tags map to relative L2 keys, and cost only
for functions that use tags.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Hashable, Iterable
from typing import Any, Final

__all__ = ["L1Index", "glob_to_regex"]

_MIN_PRUNE: Final = 4096
_NONE: Final = object()


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Redis ``MATCH`` glob semantics (``* ? [abc] [^a] [a-z] \\x``) as a regex."""
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


def _glob_class(pattern: str, i: int) -> tuple[str, int]:
    """The class starting at ``pattern[i]`` (after ``[``) -> (regex, index of its ``]``).

    Redis' rules (``stringmatchlen``): ``^`` negates (``!`` does not), ``\\x`` is a literal
    ``x``, ``a-z`` is a range even reversed or ending in ``]``, ``[]`` is empty, and a class
    left open runs to the end of the pattern.
    """
    n = len(pattern)
    negate = pattern[i : i + 1] == "^"
    i += negate
    parts: list[str] = []
    while i < n and pattern[i] != "]":
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            i += 1
            parts.append(re.escape(pattern[i]))
        elif i + 2 < n and pattern[i + 1] == "-":
            lo, hi = sorted((c, pattern[i + 2]))
            parts.append(f"{re.escape(lo)}-{re.escape(hi)}")
            i += 2
        else:
            parts.append(re.escape(c))
        i += 1
    if not parts:
        return ("." if negate else "(?!)"), i
    return f"[{'^' if negate else ''}{''.join(parts)}]", i


class _Aliases(list[Hashable]):
    """Several call forms (L1 keys) of one L2 key in one segment; rare."""


class _SegmentIndex:
    __slots__ = ("keys", "prefix", "segment")

    def __init__(self, segment: Any, prefix: str) -> None:
        self.segment, self.prefix = segment, prefix
        self.keys: dict[str | bytes, Any] = {}

    def compact(self, rel: str) -> str | bytes | None:
        """The dict key for relative L2 key ``rel``; None if ``rel`` is not ours."""
        if not rel.startswith(self.prefix):
            return None
        rest = rel[len(self.prefix):]
        if self.prefix and len(rest) == 32:
            try:
                raw = bytes.fromhex(rest)
            except ValueError:
                return rest
            if raw.hex() == rest:  # exact round trip only (lowercase digests)
                return raw
        return rest

    def expand(self, key: str | bytes) -> str:
        return self.prefix + (key.hex() if isinstance(key, bytes) else key)

    def drop(self, key: str | bytes) -> int:
        held = self.keys.pop(key, _NONE)
        if held is _NONE:
            return 0
        l1keys = held if isinstance(held, _Aliases) else (held,)
        return sum(bool(self.segment.delete(k)) for k in l1keys)

    def prune(self) -> None:
        contains = self.segment.__contains__
        for key, held in list(self.keys.items()):
            if isinstance(held, _Aliases):
                held[:] = [k for k in held if contains(k)]
                alive = bool(held)
            else:
                alive = contains(held)
            if not alive:
                del self.keys[key]


class L1Index:
    """relative L2 key -> the L1 keys holding it, per segment; tag -> relative L2 keys."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._segments: dict[Any, _SegmentIndex] = {}
        self._tags: dict[str, set[str]] = {}
        self._adds = 0
        self._limit = _MIN_PRUNE

    def register(self, segment: Any, prefix: str) -> None:
        """Every relative L2 key of ``segment`` starts with ``prefix`` ("" = anything).

        A segment registered again with another prefix (two functions sharing a name, one
        with ``key=``) falls back to "" so that both functions' keys fit.
        """
        with self._lock:
            index = self._segments.get(segment)
            if index is None:
                self._segments[segment] = _SegmentIndex(segment, prefix)
            elif index.prefix != prefix and index.prefix:
                index.keys = {index.expand(k): held for k, held in index.keys.items()}
                index.prefix = ""

    def add(self, rel: str, segment: Any, l1key: Hashable, tags: Iterable[str]) -> None:
        with self._lock:
            index = self._segments[segment]
            key = index.compact(rel)
            if key is None:  # not under the prefix (cannot happen for registered prefixes)
                raise ValueError(f"{rel!r} is not under {index.prefix!r}")
            held = index.keys.get(key, _NONE)
            if held is _NONE:
                index.keys[key] = l1key
            elif isinstance(held, _Aliases):
                if l1key not in held:
                    held.append(l1key)
            elif held != l1key:
                index.keys[key] = _Aliases([held, l1key])
            for tag in tags:
                self._tags.setdefault(tag, set()).add(rel)
            self._adds += 1
            if self._adds > self._limit:
                self._prune()

    def _prune(self) -> None:
        """Forget what L1 has evicted or expired; amortised O(1) per add."""
        for index in self._segments.values():
            index.prune()
        for tag in list(self._tags):
            self._tags[tag] = {rel for rel in self._tags[tag] if self._holds(rel)}
            if not self._tags[tag]:
                del self._tags[tag]
        self._adds = 0
        self._limit = max(_MIN_PRUNE, len(self))

    def _holds(self, rel: str) -> bool:
        for index in self._segments.values():
            key = index.compact(rel)
            if key is not None and key in index.keys:
                return True
        return False

    def drop_keys(self, rels: Iterable[str]) -> int:
        """Delete the L1 entries of these relative L2 keys; how many L1 entries went."""
        n = 0
        with self._lock:
            for rel in rels:
                for index in self._segments.values():
                    key = index.compact(rel)
                    if key is not None:
                        n += index.drop(key)
        return n

    def drop_tags(self, tags: Iterable[str]) -> int:
        with self._lock:
            rels: set[str] = set()
            for tag in tags:
                rels |= self._tags.pop(tag, set())
            return self.drop_keys(rels)

    def drop_matching(self, regex: re.Pattern[str]) -> int:
        n = 0
        with self._lock:
            for index in self._segments.values():
                for key in [k for k in index.keys if regex.fullmatch(index.expand(k))]:
                    n += index.drop(key)
        return n

    def drop_segments(self, segments: Iterable[Any]) -> None:
        """Clear whole segments and forget their entries."""
        with self._lock:
            for segment in segments:
                segment.clear()
                index = self._segments.get(segment)
                if index is not None:
                    index.keys.clear()

    def __len__(self) -> int:
        return sum(len(index.keys) for index in self._segments.values())
