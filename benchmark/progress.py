"""Progress for long loops: a rich bar on a terminal, a few plain lines otherwise, or nothing."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress

T = TypeVar("T")


class Task:
    """One loop's progress; call `advance()` per step and `close()` at the end."""

    def __init__(self, owner: Progress, description: str, total: int):
        self.owner, self.description, self.total = owner, description, total
        self.done = 0
        self.start = time.perf_counter()
        self._next_report = 0.25
        self._rich_id = None
        if owner.rich is not None:
            self._rich_id = owner.rich.add_task(description, total=total)

    def advance(self, n: int = 1, **info: float) -> None:
        self.done += n
        suffix = " ".join(f"{k}={v:.4g}" for k, v in info.items())
        if self.owner.rich is not None:
            self.owner.rich.update(
                self._rich_id, advance=n, description=f"{self.description} {suffix}".strip()
            )
        elif not self.owner.quiet and self.total and self.done / self.total >= self._next_report:
            self._next_report += 0.25
            rate = self.done / max(time.perf_counter() - self.start, 1e-9)
            self.owner.console.print(
                f"{self.description}: {self.done}/{self.total} ({rate:.1f}/s) {suffix}".rstrip(),
                highlight=False,
            )

    def close(self) -> None:
        if self.owner.rich is not None and self._rich_id is not None:
            self.owner.rich.remove_task(self._rich_id)
            elapsed = time.perf_counter() - self.start
            self.owner.console.print(
                f"[dim]{self.description}: {self.done}/{self.total} in {elapsed:.1f}s"
            )


class Progress:
    """Factory of progress tasks shared by the runner and methods."""

    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.console = console or Console(stderr=True, emoji=False)
        self.rich: RichProgress | None = None
        if not quiet and self.console.is_terminal:
            self.rich = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.rich.start()

    def task(self, description: str, total: int) -> Task:
        return Task(self, description, total)

    def track(self, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        items = list(items) if total is None else items
        task = self.task(description, total if total is not None else len(items))  # type: ignore[arg-type]
        try:
            for item in items:
                yield item
                task.advance()
        finally:
            task.close()

    def callback(self, description: str):
        """A `(done, total)` callback for library functions that report their own steps."""
        start = time.perf_counter()
        state: dict[str, Task] = {}

        def report(done: int, total: int) -> None:
            if "task" not in state:
                state["task"] = self.task(description, total)
                state["task"].start = start  # rates count from when the work began
            task = state["task"]
            task.advance(done - task.done)
            if done >= total:
                task.close()

        return report

    def stop(self) -> None:
        if self.rich is not None:
            self.rich.stop()
            self.rich = None
