"""Which L1 entries hold a copy of which L2 key: what invalidation by key, tag and pattern needs.

Why: L1 entries are keyed by argument tuples (``f(1)`` and ``f(x=1)`` are two entries for one
L2 key), so dropping "the entry for L2 key K" in this process -- or in another one, from a bus
message that carries K -- needs the reverse mapping. It is filled on the miss path only (never
on a hit) and pruned of entries L1 has since evicted.

Kept small because it lives as long as the L1 entries: per segment, the part of the L2 key
after the function's prefix (the 128-bit digest, in a compact :class:`DigestTable`), mapped to
the L1 key object L1 already holds (no copy). Tags map to relative L2 keys, and cost only
for functions that use tags.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Hashable, Iterable
from typing import Any, Final

from tiercache._digests import DigestTable

__all__ = ["MAX_PATTERN", "GlobMatcher", "L1Index", "glob_to_regex"]

_MIN_PRUNE: Final = 4096


#: Longest glob accepted (local calls raise ValueError, bus messages over it are dropped).
MAX_PATTERN: Final = 1024


class GlobMatcher:
    """A Redis glob matched in linear-ish time: no backtracking regex.

    The pattern is cut at its ``*`` into segments that each match a fixed number of
    characters (literals, ``?``, classes). The first segment is matched at the start, the
    last at the end, and each middle one at its leftmost place after the previous one --
    leftmost is always right for globs, so nothing is retried. Each segment is a regex with
    no quantifier, which ``re`` matches in O(len(segment)) per position: a whole match is
    O(len(pattern) * len(key)) at worst, in C. (A ``.*`` regex, the old way, took 12 s for
    ``"*?" * 7 + "!"`` over 20 keys, x6 per extra ``*?``.)
    """

    __slots__ = ("_first", "_last", "_middle", "_min", "_star", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        segments = _segments(pattern)
        self._star = len(segments) > 1
        compiled = [(re.compile("".join(seg), re.DOTALL), len(seg)) for seg in segments]
        self._first = compiled[0]
        self._last = compiled[-1]
        self._middle = compiled[1:-1]
        self._min = sum(n for _, n in compiled)

    def fullmatch(self, key: str) -> bool:
        first, n_first = self._first
        if not self._star:
            return first.fullmatch(key) is not None
        end = len(key) - self._last[1]
        if end < n_first or len(key) < self._min:
            return False
        if first.match(key) is None or self._last[0].match(key, end) is None:
            return False
        pos = n_first
        for segment, _ in self._middle:
            m = segment.search(key, pos, end)
            if m is None:
                return False
            pos = m.end()
        return True

    def __repr__(self) -> str:
        return f"GlobMatcher({self.pattern!r})"


def _segments(pattern: str) -> list[list[str]]:
    """The pattern cut at ``*``: per segment, one regex fragment per character matched."""
    segments: list[list[str]] = [[]]
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if segments[-1] or len(segments) == 1:
                segments.append([])
        elif c == "?":
            segments[-1].append(".")
        elif c == "\\" and i + 1 < n:
            i += 1
            segments[-1].append(re.escape(pattern[i]))
        elif c == "[":
            regex, i = _glob_class(pattern, i + 1)
            segments[-1].append(regex)
        else:
            segments[-1].append(re.escape(c))
        i += 1
    return segments


def glob_to_regex(pattern: str) -> GlobMatcher:
    """Redis ``MATCH`` glob semantics (``* ? [abc] [^a] [a-z] \\x``): ``.fullmatch(key)``.

    Raises ``ValueError`` for a pattern longer than :data:`MAX_PATTERN` characters.
    """
    if len(pattern) > MAX_PATTERN:
        raise ValueError(f"glob pattern of {len(pattern)} characters; at most {MAX_PATTERN}")
    return _compiled(pattern)


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> GlobMatcher:
    return GlobMatcher(pattern)


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
    """One segment's keys: digests (the common case) in a compact table, other keys in a dict.

    ``prefix`` is how every relative L2 key of the segment starts (``"module.qualname:"``);
    what follows it is a 32-hex digest for default keys, stored as 16 raw bytes.
    """

    __slots__ = ("digests", "keys", "prefix", "segment")

    def __init__(self, segment: Any, prefix: str) -> None:
        self.segment, self.prefix = segment, prefix
        self.keys: dict[str, Any] = {}
        self.digests = DigestTable()

    def compact(self, rel: str) -> str | bytes | None:
        """The stored form of relative L2 key ``rel``; None if ``rel`` is not ours."""
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

    def get(self, key: str | bytes) -> Any:
        return self.digests.get(key) if isinstance(key, bytes) else self.keys.get(key)

    def put(self, key: str | bytes, held: Any) -> None:
        if isinstance(key, bytes):
            self.digests.set(key, held)
        else:
            self.keys[key] = held

    def holds(self, key: str | bytes) -> bool:
        return key in self.digests if isinstance(key, bytes) else key in self.keys

    def drop(self, key: str | bytes) -> int:
        held = self.digests.pop(key) if isinstance(key, bytes) else self.keys.pop(key, None)
        if held is None:
            return 0
        l1keys = held if isinstance(held, _Aliases) else (held,)
        return sum(bool(self.segment.delete(k)) for k in l1keys)

    def stored(self) -> list[str | bytes]:
        """Every stored key (a snapshot)."""
        return [*self.keys, *(d for d, _ in self.digests.items())]

    def widen(self) -> None:
        """Forget the prefix: every key is then stored whole, as a string."""
        keys = {self.expand(k): held for k, held in self.keys.items()}
        keys.update((self.expand(d), held) for d, held in self.digests.items())
        self.keys, self.prefix = keys, ""
        self.digests.clear()

    def prune(self) -> None:
        contains = self.segment.__contains__

        def alive(held: Any) -> Any:
            if isinstance(held, _Aliases):
                held[:] = [k for k in held if contains(k)]
                return held or None
            return held if contains(held) else None

        for key, held in list(self.keys.items()):
            if alive(held) is None:
                del self.keys[key]
        self.digests.retain(alive)

    def clear(self) -> None:
        self.keys.clear()
        self.digests.clear()

    def __len__(self) -> int:
        return len(self.keys) + len(self.digests)


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

        Called once per decorated function (never on the read path). A segment registered
        again with another prefix (two functions sharing a name, one with ``key=``) falls
        back to "" so that both functions' keys fit.
        """
        with self._lock:
            index = self._segments.get(segment)
            if index is None:
                self._segments[segment] = _SegmentIndex(segment, prefix)
            elif index.prefix != prefix and index.prefix:
                index.widen()

    def add(self, rel: str, segment: Any, l1key: Hashable, tags: Iterable[str]) -> None:
        with self._lock:
            index = self._segments[segment]
            key = index.compact(rel)
            if key is None:  # not under the prefix (cannot happen for registered prefixes)
                raise ValueError(f"{rel!r} is not under {index.prefix!r}")
            held = index.get(key)
            if held is None:
                index.put(key, l1key)
            elif isinstance(held, _Aliases):
                if l1key not in held:
                    held.append(l1key)
            elif held != l1key:
                index.put(key, _Aliases([held, l1key]))
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
            if key is not None and index.holds(key):
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

    def drop_matching(self, regex: GlobMatcher) -> int:
        n = 0
        with self._lock:
            for index in self._segments.values():
                for key in [k for k in index.stored() if regex.fullmatch(index.expand(k))]:
                    n += index.drop(key)
        return n

    def drop_segments(self, segments: Iterable[Any]) -> None:
        """Clear whole segments and forget their entries."""
        with self._lock:
            for segment in segments:
                segment.clear()
                index = self._segments.get(segment)
                if index is not None:
                    index.clear()

    def __len__(self) -> int:
        return sum(len(index) for index in self._segments.values())
