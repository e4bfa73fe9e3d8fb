"""`Reporter`: a command's progress bars (rich, on stderr) and its messages.

Fed by the job's ``progress(stage, done, total)`` callback and by model downloads; silent
with ``--quiet``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import click

from ..job import STAGES

REFRESH_SECONDS = 0.2  # progress bars are redrawn at most this often


class Reporter:
    """Progress bars (rich, on stderr) and messages; silent when ``quiet``.

    `update(stage, done, total)` has the signature of the pipeline's ``progress`` callback.
    """

    UNITS = {**STAGES, "ablation": "variants", "jobs": "jobs"}

    def __init__(self, quiet: bool = False, debug: bool = False) -> None:
        self.quiet = quiet
        self.debug = debug  # leave the libraries' own logging and progress bars on
        self._progress = None
        self._tasks: dict[str, Any] = {}
        self._last_refresh = 0.0

    def info(self, message: str) -> None:
        if not self.quiet:
            click.echo(message)

    def line(self, message: str) -> None:
        """A line above the bars while they are shown (on stdout otherwise)."""
        if self.quiet:
            return
        if self._progress is not None:  # not wrapped: one job, one line
            self._progress.console.print(message, markup=False, highlight=False, soft_wrap=True)
        else:
            click.echo(message)

    def warn(self, message: str) -> None:
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.console.print(f"Warning: {message}", markup=False, highlight=False)
        else:
            click.echo(f"Warning: {message}", err=True)

    @contextlib.contextmanager
    def live(self) -> Iterator[Reporter]:
        """Show progress bars while the block runs."""
        if self.quiet:
            yield self
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            _CountColumn(MofNCompleteColumn()),
            TextColumn("{task.fields[unit]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            # redrawn from `update`, not by rich's refresh thread: a second thread made glibc
            # keep frame buffers of long clips (see `use_one_malloc_arena`)
            auto_refresh=False,
        )
        self._progress = progress
        try:
            with progress:
                yield self
        finally:
            self._progress = None
            self._tasks.clear()

    def start(self, stage: str, total: int, completed: int = 0) -> None:
        """Open a bar; ``completed`` work (cached, resumed) does not count towards the ETA."""
        if self._progress is None:
            return
        if stage in self._tasks:
            self._progress.update(self._tasks[stage], total=total, completed=completed)
            return
        self._tasks[stage] = self._progress.add_task(
            stage, total=total, completed=completed, unit=self.UNITS.get(stage, "frames")
        )

    def close(self, *stages: str) -> None:
        """Remove these bars (a new job's stages then start from zero, ETA included)."""
        for stage in stages:
            task = self._tasks.pop(stage, None)
            if task is not None and self._progress is not None:
                self._progress.remove_task(task)

    def download(self, model: str, done: int, total: int) -> None:
        """A model's download (`hub.DownloadProgress`): a bar with sizes and speed."""
        if self._progress is None:
            return
        if model not in self._tasks:
            self._tasks[model] = self._progress.add_task(
                model, total=total, completed=done, unit="", bytes=True
            )
        self.update(model, done, total)

    @contextlib.contextmanager
    def downloads(self) -> Iterator[None]:
        """Within the block, model downloads show as bars (`download`)."""
        from ..hub import reporting_downloads

        with reporting_downloads(self.download if not self.quiet else None):
            yield

    def update(self, stage: str, done: int, total: int, unit: str | None = None) -> None:
        """Move a bar (opened at `done` if new); `unit` replaces the words after the counts."""
        if self._progress is None:
            return
        if stage not in self._tasks:  # work already done (cached, resumed) is not in the ETA
            self.start(stage, total, done)
        fields = {"unit": unit} if unit is not None else {}
        self._progress.update(self._tasks[stage], completed=done, total=total, **fields)
        now = time.monotonic()
        if now - self._last_refresh >= REFRESH_SECONDS or done == total:
            self._last_refresh = now
            self._progress.refresh()


def _CountColumn(counts):  # noqa: N802 - builds a rich column class lazily (rich loads late)
    """Done/total as counts (`counts`), or as sizes and speed for a download's bar."""
    from rich.progress import DownloadColumn, ProgressColumn, TransferSpeedColumn
    from rich.text import Text

    class CountColumn(ProgressColumn):
        def __init__(self) -> None:
            super().__init__()
            self.sizes, self.speed = DownloadColumn(), TransferSpeedColumn()

        def render(self, task) -> Text:
            if not task.fields.get("bytes"):
                return counts.render(task)
            return Text.assemble(self.sizes.render(task), " ", self.speed.render(task))

    return CountColumn()
