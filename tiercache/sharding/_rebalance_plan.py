"""The rebalancer's plan: which hash arcs move from which shard to which, and how many rows.

A :class:`Plan` is plain data (JSON round-trip) so that the journal can store it and a resumed
process rebuilds exactly the rings it was made from.  DSNs are never part of it: they carry
passwords, and the journal lives in a database table.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from tiercache.sharding.ring import HashRing

__all__ = ["Move", "Plan", "TableMove", "ring_from_spec", "ring_spec"]


def ring_spec(ring: HashRing) -> dict[str, Any]:
    """A JSON-able description of a ring (node names must be str, as shard names are)."""
    for name in ring.nodes:
        if not isinstance(name, str):
            raise TypeError(f"the rebalancer needs str shard names, got {name!r}")
    return {"weights": ring.weights, "mode": ring.mode, "vnodes": ring.vnodes,
            "replicas": ring.replicas}


def ring_from_spec(spec: dict[str, Any]) -> HashRing:
    return HashRing(dict(spec["weights"]), mode=spec["mode"], vnodes=int(spec["vnodes"]),
                    replicas=int(spec["replicas"]))


@dataclass
class Move:
    """The arcs ``[lo, hi)`` of the hash space that go from ``source`` to ``target``."""

    source: str
    target: str
    arcs: list[tuple[int, int]]

    @property
    def share(self) -> float:
        """Fraction of the key space moving (0..1)."""
        return sum(hi - lo for lo, hi in self.arcs) / 2**32


@dataclass
class TableMove:
    """Rows of one table moving along one :class:`Move`: exact count (at plan time), bytes."""

    table: str
    source: str
    target: str
    rows: int
    bytes: int
    source_rows: int  # rows of the table on the source (for the batch step and the summary)
    index_bytes: int = 0  # estimate: the source's index bytes per heap byte, times ``bytes``


@dataclass
class Plan:
    """A dry-run result; ``apply`` executes it.  Counts are exact at the time of planning."""

    old_ring: dict[str, Any]
    new_ring: dict[str, Any]
    tables: dict[str, str]  # table -> shard-key column
    moves: list[Move]
    table_moves: list[TableMove] = field(default_factory=list)
    job: str = field(default_factory=lambda: uuid.uuid4().hex[:16])

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.table_moves)

    @property
    def bytes(self) -> int:
        return sum(t.bytes for t in self.table_moves)

    def rows_of(self, table: str, source: str | None = None, target: str | None = None) -> int:
        return sum(t.rows for t in self.table_moves if t.table == table
                   and source in (None, t.source) and target in (None, t.target))

    def table_move(self, table: str, source: str, target: str) -> TableMove:
        for tm in self.table_moves:
            if (tm.table, tm.source, tm.target) == (table, source, target):
                return tm
        raise KeyError((table, source, target))

    def summary(self) -> str:
        """Human-readable: per table, source -> target, rows to move, bytes, share of keys."""
        old, new = self.old_ring["weights"], self.new_ring["weights"]
        lines = [f"rebalance plan {self.job}: {_fmt_ring(old)} -> {_fmt_ring(new)} "
                 f"({self.new_ring['mode']})"]
        if not self.moves:
            lines.append("  nothing moves")
            return "\n".join(lines)
        width = max(len(t) for t in self.tables)
        for table in self.tables:
            lines.append(f"  {table}:")
            for tm in (t for t in self.table_moves if t.table == table):
                move = next(m for m in self.moves if (m.source, m.target) == (tm.source, tm.target))
                pct = 100.0 * tm.rows / tm.source_rows if tm.source_rows else 0.0
                lines.append(
                    f"    {tm.source:>6} -> {tm.target:<6} {tm.rows:>12,} rows "
                    f"{_fmt_bytes(tm.bytes):>10}  ({pct:.1f}% of {tm.source}; "
                    f"{100 * move.share:.2f}% of keys, {len(move.arcs)} arcs)"
                )
        lines.append(f"  {'total':<{width}} {self.rows:,} rows, {_fmt_bytes(self.bytes)}")
        for target in self.targets():  # disk space: Postgres cannot report free space
            need = sum(t.bytes + t.index_bytes for t in self.table_moves if t.target == target)
            lines.append(f"  {target} needs ~{_fmt_bytes(need)} more (rows + indexes, before "
                         f"WAL; the sources free as much after clean-up and VACUUM)")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({
            "job": self.job, "old_ring": self.old_ring, "new_ring": self.new_ring,
            "tables": self.tables,
            "moves": [{"source": m.source, "target": m.target, "arcs": m.arcs}
                      for m in self.moves],
            "table_moves": [vars(t) for t in self.table_moves],
        })

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data = json.loads(text)
        return cls(
            old_ring=data["old_ring"], new_ring=data["new_ring"], tables=dict(data["tables"]),
            moves=[Move(m["source"], m["target"], [(int(lo), int(hi)) for lo, hi in m["arcs"]])
                   for m in data["moves"]],
            table_moves=[TableMove(**t) for t in data["table_moves"]], job=data["job"],
        )

    def sources(self) -> list[str]:
        return sorted({m.source for m in self.moves})

    def targets(self) -> list[str]:
        return sorted({m.target for m in self.moves})


def moves_between(old: HashRing, new: HashRing) -> list[Move]:
    """Group ``old.diff(new)`` by (source, target)."""
    grouped: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for lo, hi, src, dst in old.diff(new):
        grouped.setdefault((src, dst), []).append((lo, hi))
    return [Move(s, t, arcs) for (s, t), arcs in sorted(grouped.items())]


def _fmt_ring(weights: dict[str, int]) -> str:
    return "{" + ", ".join(n if w == 1 else f"{n}:{w}" for n, w in weights.items()) + "}"


def _fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"  # pragma: no cover
