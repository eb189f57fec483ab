"""A compact map from 128-bit key digests to the L1 keys holding them (part of the L1 index).

Why not a dict: a ``dict[bytes, key]`` costs a 49-byte ``bytes`` object plus a ~50-byte dict
slot per entry -- as much as the L1 entry itself. Here a digest is two 64-bit words in two
``array('Q')`` columns and the L1 key a reference in a list (the object L1 already holds):
24 bytes per slot, ~27-34 per entry at the table's load factor (0.7-0.9). Open addressing
with double hashing over a prime capacity (linear probing clusters: at load 0.9 a miss
walked ~50 slots, about 8 us of a 70 us L1 miss; double hashing walks ~10); deleted slots
are tombstones until the next rebuild. Not thread-safe on its own: the
:class:`~tiercache._l1index.L1Index` lock guards it.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator
from typing import Final

__all__ = ["DigestTable"]

_EMPTY: Final = object()
_GONE: Final = object()  # tombstone
_MIN: Final = 11  # a prime: every probe step visits every slot
_MASK64: Final = (1 << 64) - 1


def _words(digest: bytes) -> tuple[int, int]:
    n = int.from_bytes(digest, "big")
    return n >> 64, n & _MASK64


def _prime_at_least(n: int) -> int:
    """The smallest prime >= n (trial division: tables are rebuilt rarely)."""
    n = max(n, 2)
    while any(n % d == 0 for d in range(2, int(n ** 0.5) + 1)):
        n += 1
    return n


def _digest(hi: int, lo: int) -> bytes:
    return ((hi << 64) | lo).to_bytes(16, "big")


class DigestTable:
    """``16-byte digest -> held`` (an L1 key, or a list of them); ``held`` is never None."""

    __slots__ = ("_filled", "_hi", "_lo", "_used", "_vals")

    def __init__(self, capacity: int = _MIN) -> None:
        self._hi = array("Q", bytes(8 * capacity))
        self._lo = array("Q", bytes(8 * capacity))
        self._vals: list[object] = [_EMPTY] * capacity
        self._used = 0  # live slots
        self._filled = 0  # live + tombstones

    def _find(self, hi: int, lo: int) -> tuple[int, int]:
        """-> (slot holding the digest or -1, first reusable slot on its probe path)."""
        his, los, vals, cap = self._hi, self._lo, self._vals, len(self._vals)
        i = (hi ^ lo) % cap
        step = 1 + lo % (cap - 1)  # cap is prime: the probe sequence covers every slot
        free = -1
        while True:
            v = vals[i]
            if v is _EMPTY:
                return -1, (i if free < 0 else free)
            if v is _GONE:
                if free < 0:
                    free = i
            elif his[i] == hi and los[i] == lo:
                return i, free
            i += step
            if i >= cap:
                i -= cap

    def get(self, digest: bytes) -> object | None:
        slot, _ = self._find(*_words(digest))
        return None if slot < 0 else self._vals[slot]

    def set(self, digest: bytes, held: object) -> None:
        hi, lo = _words(digest)
        slot, free = self._find(hi, lo)
        if slot >= 0:
            self._vals[slot] = held
            return
        if self._vals[free] is _EMPTY:
            self._filled += 1
        self._hi[free], self._lo[free], self._vals[free] = hi, lo, held
        self._used += 1
        if self._filled * 10 > len(self._vals) * 9:  # load > 0.9: grow (or sweep tombstones)
            self._rebuild()

    def pop(self, digest: bytes) -> object | None:
        slot, _ = self._find(*_words(digest))
        if slot < 0:
            return None
        held = self._vals[slot]
        self._vals[slot] = _GONE
        self._used -= 1
        return held

    def _rebuild(self) -> None:
        live = list(self._live())
        capacity = _prime_at_least(max(_MIN, len(live) * 10 // 7))  # load 0.7, then 0.9
        self._hi = his = array("Q", bytes(8 * capacity))
        self._lo = los = array("Q", bytes(8 * capacity))
        self._vals = vals = [_EMPTY] * capacity
        for hi, lo, held in live:
            i = (hi ^ lo) % capacity
            step = 1 + lo % (capacity - 1)
            while vals[i] is not _EMPTY:
                i += step
                if i >= capacity:
                    i -= capacity
            his[i], los[i], vals[i] = hi, lo, held
        self._used = self._filled = len(live)

    def _live(self) -> Iterator[tuple[int, int, object]]:
        his, los = self._hi, self._lo
        for i, v in enumerate(self._vals):
            if v is not _EMPTY and v is not _GONE:
                yield his[i], los[i], v

    def items(self) -> list[tuple[bytes, object]]:
        """A snapshot of ``(digest, held)``: safe to pop entries while iterating it."""
        return [(_digest(hi, lo), v) for hi, lo, v in self._live()]

    def retain(self, keep: Callable[[object], object | None]) -> None:
        """Replace each ``held`` by ``keep(held)``; None drops the slot. Then compacts."""
        vals = self._vals
        for i, v in enumerate(vals):
            if v is not _EMPTY and v is not _GONE:
                kept = keep(v)
                if kept is None:
                    vals[i] = _GONE
                    self._used -= 1
                else:
                    vals[i] = kept
        self._rebuild()

    def clear(self) -> None:
        self._hi, self._lo = array("Q", bytes(8 * _MIN)), array("Q", bytes(8 * _MIN))
        self._vals = [_EMPTY] * _MIN
        self._used = self._filled = 0

    def __contains__(self, digest: bytes) -> bool:
        return self._find(*_words(digest))[0] >= 0

    def __len__(self) -> int:
        return self._used
