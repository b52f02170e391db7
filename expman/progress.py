"""Progress for long steps (image builds) on stderr; silent when not a terminal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console


class Reporter:
    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self.quiet = quiet

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, markup=False)

    @contextmanager
    def activity(self, title: str) -> Iterator[Callable[[int, int, str], None]]:
        """A spinner titled ``title``; the yielded callback reports step N of M."""
        if self.quiet:
            yield lambda step, total, text: None
            return
        with self.console.status(title) as status:

            def on_step(step: int, total: int, text: str) -> None:
                status.update(f"{title}: step {step}/{total}: {text[:80]}")
                if not self.console.is_terminal:
                    self.console.print(f"{title}: step {step}/{total}: {text}", markup=False)

            yield on_step

    @contextmanager
    def bar(self, title: str, minimum: int = 20) -> Iterator[Callable[[int, int], None]]:
        """A progress bar for ``title`` shown once a job has ``minimum`` items; the yielded
        callback reports N of M done. Terminal only: nothing is printed to a pipe."""
        if self.quiet or not self.console.is_terminal:
            yield lambda done, total: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        ) as progress:
            task = progress.add_task(title, total=None, visible=False)

            def on_step(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total, visible=total >= minimum)

            yield on_step
