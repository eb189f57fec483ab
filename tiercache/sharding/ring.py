"""``HashRing``: the consistent-hash shard router, ketama-compatible with uhashring.

Two modes:

``mode="ketama"`` (default)
    Bit-for-bit the placement of ``uhashring.HashRing(nodes, hash_fn="ketama")`` 2.5: node
    ``n`` gets ``(vnodes * N * weight_n) // sum(weights)`` virtual nodes ``f"{n}-{w}"``, each
    hashed with MD5 into ``replicas`` (<= 4) little-endian 32-bit points; a key goes to the
    first point strictly above ``md5(key)[0:4]``, wrapping around; on a point collision the
    node inserted last wins. Because every node's share depends on the *total* weight, adding
    a node (or changing one weight) moves points of every node when weights differ: more
    keys move than the ideal ``1/N``.

``mode="stable"``
    Node ``n`` gets ``vnodes * weight_n`` virtual nodes, independent of the others, so adding
    or removing a node moves only the keys it gains or loses (about ``weight / total``) even
    with unequal weights. Collisions go to the smallest name, so placement does not depend on
    the order nodes were added. Not uhashring-compatible; prefer it for new deployments.

Node names may be any hashable object but ``None`` (``str``, ``int``, ...), as in uhashring:
what is hashed is ``str(name)``, so ``HashRing([1, 2, 3])`` places keys exactly like
``uhashring.HashRing([1, 2, 3], hash_fn="ketama")``, and lookups return the name object you
gave (``1``, not ``"1"``). Weights are ints >= 1, given as ``{name: 3}`` or uhashring's
``{name: {"weight": 3}}``.

Keys may be ``str`` (hashed as UTF-8), ``int`` (its decimal digits, like ``str(key)``),
``bytes``/``bytearray``/``memoryview`` (the raw bytes; uhashring would hash the repr
``"b'...'"`` instead, so bytes keys are the one place placement differs) or anything else
(``str(key)``, as uhashring does).

The per-key work (MD5 + lookup) runs in C in ``tiercache._ext._ring``; this module keeps the
node bookkeeping, once, over whichever implementation :mod:`tiercache._impl` picked.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generic, Literal, Self

from tiercache._impl import load

if TYPE_CHECKING:
    from typing_extensions import TypeVar

    from tiercache._fallback import _ring as ring_impl

    N = TypeVar("N", bound=Hashable, default=str)
else:
    from typing import TypeVar

    ring_impl = load("_ring")
    N = TypeVar("N", bound=Hashable)

__all__ = ["HashRing", "Mode", "ring_class"]

Mode = Literal["ketama", "stable"]
RING_SIZE = 2**32
DEFAULT_VNODES = 40  # uhashring's ketama default


def _check_weight(name: object, weight: object) -> int:
    if isinstance(weight, Mapping):  # uhashring's {"weight": w} node configuration
        extra = set(weight) - {"weight"}
        if extra:
            raise ValueError(
                f"node {name!r}: only 'weight' is supported in a node configuration, got "
                f"{sorted(map(str, extra))} (tiercache routes by name; pass vnodes= to HashRing)"
            )
        weight = weight.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
        raise ValueError(f"weight of node {name!r} must be an int >= 1, got {weight!r}")
    return weight


def _check_name(name: N) -> N:
    """Any hashable name but None and "" (both are what a missing config value looks like)."""
    hash(name)  # TypeError for an unhashable name, as a dict key would raise
    if name is None or name == "":
        raise ValueError(f"node names must not be None or empty, got {name!r}")
    return name


def _parse_nodes(nodes: object) -> dict[Any, int]:
    if isinstance(nodes, str):
        nodes = [nodes]
    if isinstance(nodes, Mapping):
        return {_check_name(n): _check_weight(n, w) for n, w in nodes.items()}
    if isinstance(nodes, (bytes, bytearray, memoryview)) or not isinstance(nodes, Iterable):
        # uhashring raises ValueError here too (HashRing(None), HashRing(5))
        raise ValueError(
            "nodes must be a list of names or a dict name -> weight, got "
            f"{type(nodes).__name__}"
        )
    return {_check_name(n): 1 for n in nodes}


def _tie_key(name: Hashable) -> tuple[str, str]:
    """Total order over names of any type (stable mode's collision winner)."""
    return str(name), repr(name)


class _RingLogic(Generic[N]):
    """Node bookkeeping shared by both implementations; the lookups come from Continuum."""

    _weights: dict[N, int]
    _distribution: dict[N, int]
    _sorted_points: list[int]
    _point_owners: list[int]
    mode: Mode
    vnodes: int
    replicas: int

    if TYPE_CHECKING:  # provided by the Continuum base class

        def _load(
            self, points: Sequence[int], owners: Sequence[int], names: tuple[Hashable, ...]
        ) -> None: ...
        def node_for_hash(self, h: int) -> N: ...
        def get_node(self, key: object) -> N: ...
        def get_node_many(self, keys: Iterable[object]) -> list[N]: ...

    def __init__(
        self,
        nodes: Iterable[N] | Mapping[N, int | Mapping[str, int]] | N = (),
        *,
        vnodes: int | None = None,
        replicas: int = 4,
        mode: Mode = "ketama",
    ) -> None:
        super().__init__()
        if mode not in ("ketama", "stable"):
            raise ValueError(f"mode must be 'ketama' or 'stable', got {mode!r}")
        vnodes = DEFAULT_VNODES if vnodes is None else vnodes
        if isinstance(vnodes, bool) or not isinstance(vnodes, int) or vnodes < 1:
            raise ValueError(f"vnodes must be an int >= 1, got {vnodes!r}")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 4:
            raise ValueError(f"replicas must be an int between 1 and 4, got {replicas!r}")
        self.mode, self.vnodes, self.replicas = mode, vnodes, replicas
        self._weights = _parse_nodes(nodes)
        self._rebuild()

    # ------------------------------------------------------------------ membership

    @property
    def nodes(self) -> list[N]:
        """Node names, in the order they were first added."""
        return list(self._weights)

    @property
    def weights(self) -> dict[N, int]:
        return dict(self._weights)

    def add_node(self, name: N, weight: int | Mapping[str, int] = 1) -> None:
        """Add a node, or change its weight (it keeps its place in the insertion order)."""
        _check_name(name)
        weight = _check_weight(name, weight)
        if self._weights.get(name) == weight:
            return
        self._weights[name] = weight
        self._rebuild()

    def remove_node(self, name: N) -> None:
        """Remove a node; ``KeyError`` if it is not on the ring."""
        if name not in self._weights:
            raise KeyError(f"node {name!r} is not on the ring (nodes: {self.nodes})")
        del self._weights[name]
        self._rebuild()

    def copy(self) -> Self:
        """An independent ring with the same nodes and settings (for what-if diffs)."""
        return type(self)(self._weights, vnodes=self.vnodes, replicas=self.replicas, mode=self.mode)

    def __len__(self) -> int:
        return len(self._weights)

    def __contains__(self, name: object) -> bool:
        return name in self._weights

    def __repr__(self) -> str:
        return f"HashRing({self._weights!r}, mode={self.mode!r}, vnodes={self.vnodes})"

    # ------------------------------------------------------------------ continuum

    def _vnode_counts(self) -> dict[N, int]:
        if self.mode == "stable":
            return {name: self.vnodes * w for name, w in self._weights.items()}
        total, count = sum(self._weights.values()), len(self._weights)
        return {name: (self.vnodes * count * w) // total for name, w in self._weights.items()}

    def _rebuild(self) -> None:
        names = tuple(self._weights)
        owner_of: dict[int, int] = {}
        self._distribution = {}
        for index, (name, vnodes) in enumerate(self._vnode_counts().items()):
            points = ring_impl.hash_points(str(name), vnodes, self.replicas)
            self._distribution[name] = len(points)
            if self.mode == "ketama":  # last writer wins, like uhashring's dict assignment
                owner_of.update(dict.fromkeys(points, index))
                continue
            for point in points:  # stable: the smallest name wins, whatever the order
                other = owner_of.get(point)
                if other is None or _tie_key(name) < _tie_key(names[other]):
                    owner_of[point] = index
        self._sorted_points = sorted(owner_of)
        self._point_owners = [owner_of[p] for p in self._sorted_points]
        self._load(self._sorted_points, self._point_owners, names)

    def distribution(self) -> dict[N, int]:
        """Points generated per node (uhashring's ``distribution``)."""
        return dict(self._distribution)

    def arcs(self) -> list[tuple[int, int, N]]:
        """Half-open hash ranges ``[start, end)`` and their owner, covering ``0 .. 2**32``.

        Adjacent ranges of one owner are merged. Empty ring: ``[]``.
        """
        points = self.points()
        if not points:
            return []
        arcs: list[tuple[int, int, N]] = []
        start = 0
        for point, owner in points:  # [previous point, this point) belongs to this owner
            if point > start:
                _append_arc(arcs, start, point, owner)
            start = point
        _append_arc(arcs, start, RING_SIZE, points[0][1])  # the wrap-around tail
        return arcs

    def points(self) -> list[tuple[int, N]]:
        """Every point on the continuum and its owner, ascending."""
        names = tuple(self._weights)
        return [(p, names[o]) for p, o in zip(self._sorted_points, self._point_owners, strict=True)]

    def diff(self, other: _RingLogic[N]) -> list[tuple[int, int, N, N]]:
        """Ranges ``[start, end)`` whose owner changes from this ring to ``other``.

        Each item is ``(start, end, old_owner, new_owner)``; adjacent ranges with the same
        move are merged. This is what a rebalancer has to copy.
        """
        mine, theirs = self.arcs(), other.arcs()
        if not mine or not theirs:
            raise LookupError("diff() needs two rings with nodes")
        moves: list[tuple[int, int, N, N]] = []
        i = j = 0
        start = 0
        while start < RING_SIZE:
            end = min(mine[i][1], theirs[j][1])
            old, new = mine[i][2], theirs[j][2]
            if old != new:
                if moves and moves[-1][1] == start and moves[-1][2:] == (old, new):
                    moves[-1] = (moves[-1][0], end, old, new)
                else:
                    moves.append((start, end, old, new))
            start = end
            if mine[i][1] == end:
                i += 1
            if theirs[j][1] == end:
                j += 1
        return moves

    @staticmethod
    def hash_key(key: object) -> int:
        """The ketama hash of a key (uhashring's ``hashi(key)``)."""
        return ring_impl.hash_key(key)


def _append_arc(arcs: list[tuple[int, int, N]], start: int, end: int, owner: N) -> None:
    if arcs and arcs[-1][2] == owner and arcs[-1][1] == start:
        arcs[-1] = (arcs[-1][0], end, owner)
    else:
        arcs.append((start, end, owner))


def ring_class(impl: ModuleType) -> type[HashRing[Any]]:
    """A ``HashRing`` class over a given implementation module (tests run both)."""
    if impl is ring_impl:
        return HashRing
    namespace = {"__module__": __name__, "hash_key": staticmethod(impl.hash_key)}
    cls = type("HashRing", (_RingLogic, impl.Continuum), namespace)
    return cls


class HashRing(_RingLogic[N], ring_impl.Continuum):
    """Consistent-hash ring over shard names; see the module docstring for the modes.

    ``nodes`` is a list of names (weight 1 each) or a dict ``name -> weight`` (int >= 1, or
    uhashring's ``{"weight": w}``); names are any hashable but None/"" and ``str(name)`` is
    hashed. ``HashRing(None)`` (or any non-iterable) is a ``ValueError``, as in uhashring.
    Lookups (``get_node``, ``get_node_many``) raise ``LookupError`` on an empty ring. A lookup
    racing ``add_node``/``remove_node`` in another thread sees the old ring or the new one;
    serialize the changes themselves (one writer).
    """
