"""``Row``: what an ``asyncpg.Record`` becomes after a trip through L2.

Why a class of our own: the codec never imports a class named by a payload, and asyncpg has
no public way to build a Record. ``Row`` behaves like a Record where code reads one: by
column name or position, slices as tuples, ``get``/``keys``/``values``/``items``,
``dict(row)``, ``len``, iteration over the values, ``in`` tests column names, and equality,
ordering and hash are those of the tuple of values (so a Row equals the Record it was made
from, and a tuple). It is read-only and small: two slots, the column names shared by every
Row of one result set.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NoReturn

__all__ = ["Row"]


class _Columns:
    """Column names and name -> position, shared by the Rows of one result."""

    __slots__ = ("index", "names")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.index = {name: i for i, name in reversed(list(enumerate(names)))}


class Row:
    """A read-only, Record-like row: ``row["col"]``, ``row[0]``, ``row.get("col")``."""

    __slots__ = ("_columns", "_values")
    _columns: _Columns
    _values: tuple[Any, ...]

    def __init__(self, names: Iterable[str], values: Iterable[Any]) -> None:
        names, values = tuple(names), tuple(values)
        if len(names) != len(values):
            raise ValueError(f"{len(names)} column names for {len(values)} values")
        if not all(type(n) is str for n in names):
            raise TypeError("column names must be str")
        object.__setattr__(self, "_columns", _Columns(names))
        object.__setattr__(self, "_values", values)

    @classmethod
    def _make(cls, columns: _Columns, values: tuple[Any, ...]) -> Row:
        """Build without re-checking (the codec checked lengths and shares ``columns``)."""
        row = object.__new__(cls)
        object.__setattr__(row, "_columns", columns)
        object.__setattr__(row, "_values", values)
        return row

    # ------------------------------------------------------------------ Record's surface

    def __getitem__(self, key: Any) -> Any:
        if type(key) is str:
            try:
                return self._values[self._columns.index[key]]
            except KeyError:
                raise KeyError(key) from None
        if isinstance(key, int | slice):
            try:
                return self._values[key]
            except IndexError:
                raise IndexError("row index out of range") from None
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        i = self._columns.index.get(key)
        return default if i is None else self._values[i]

    def keys(self) -> Iterator[str]:
        return iter(self._columns.names)

    def values(self) -> Iterator[Any]:
        return iter(self._values)

    def items(self) -> Iterator[tuple[str, Any]]:
        return zip(self._columns.names, self._values, strict=True)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, name: object) -> bool:
        return name in self._columns.index

    # ------------------------------------------------------------------ value semantics

    def _other(self, other: object) -> tuple[Any, ...] | None:
        if isinstance(other, Row):
            return other._values
        if isinstance(other, tuple):
            return other
        if _is_record(other):
            return tuple(other)  # type: ignore[arg-type]
        return None

    def __eq__(self, other: object) -> bool:
        values = self._other(other)
        return NotImplemented if values is None else self._values == values

    def __ne__(self, other: object) -> bool:
        values = self._other(other)
        return NotImplemented if values is None else self._values != values

    def __lt__(self, other: object) -> bool:
        values = self._other(other)
        return NotImplemented if values is None else self._values < values

    def __le__(self, other: object) -> bool:
        values = self._other(other)
        return NotImplemented if values is None else self._values <= values

    def __gt__(self, other: object) -> bool:
        values = self._other(other)
        return NotImplemented if values is None else self._values > values

    def __ge__(self, other: object) -> bool:
        values = self._other(other)
        return NotImplemented if values is None else self._values >= values

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        if not self._values:
            return "<Row>"
        fields = " ".join(f"{n}={v!r}" for n, v in zip(self._columns.names, self._values,
                                                       strict=True))
        return f"<Row {fields}>"

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError(f"Row is read-only (cannot set {name!r})")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"Row is read-only (cannot delete {name!r})")

    def __reduce__(self) -> tuple[Any, ...]:  # copy.copy/deepcopy keep working
        return (Row, (self._columns.names, self._values))


def _is_record(obj: object) -> bool:
    return _RECORD is not None and isinstance(obj, _RECORD)


def _record_type() -> type | None:
    """``asyncpg.Record``, or None when asyncpg is not importable."""
    return _RECORD


def _import_record() -> type | None:
    try:
        from asyncpg import Record
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        return None
    record: type = Record
    return record


_RECORD: type | None = _import_record()
