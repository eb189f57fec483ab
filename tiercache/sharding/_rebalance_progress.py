"""Progress reporting for the rebalancer: rich bars (rows copied, rate, ETA) or nothing."""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["NullProgress", "Progress", "RichProgress", "make_progress"]


class Progress(Protocol):
    def start(self, label: str, total: int) -> None: ...
    def advance(self, label: str, rows: int) -> None: ...
    def note(self, text: str) -> None: ...
    def stop(self) -> None: ...


class NullProgress:
    def start(self, label: str, total: int) -> None:
        pass

    def advance(self, label: str, rows: int) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def stop(self) -> None:
        pass


class RichProgress:
    """One bar per table move; notes (phases, fence time) are printed above the bars."""

    def __init__(self, console: Any = None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bars

        self._bars = Bars(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TaskProgressColumn(), TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)
        self._tasks: dict[str, Any] = {}
        self._bars.start()

    def start(self, label: str, total: int) -> None:
        if label not in self._tasks:
            self._tasks[label] = self._bars.add_task(label, total=max(total, 1), rate="")

    def advance(self, label: str, rows: int) -> None:
        task = self._tasks[label]
        self._bars.advance(task, rows)
        speed = self._bars.tasks[task].speed  # rows/s over rich's recent window
        if speed:
            self._bars.update(task, rate=f"{speed:,.0f} rows/s")

    def note(self, text: str) -> None:
        self._bars.console.log(text)

    def stop(self) -> None:
        self._bars.stop()


def make_progress(progress: bool | Progress) -> Progress:
    if progress is True:
        return RichProgress()
    if progress is False:
        return NullProgress()
    return progress
