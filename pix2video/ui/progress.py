"""A job's progress and a model's download as `gr.Progress` updates (with an ETA)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..hub import DownloadMeter
from ..job import STAGES


class ProgressFeed:
    """The job's ``progress(stage, done, total)`` as `gr.Progress` updates with an ETA.

    The ETA is per stage (stages count different units). Work already done at a stage's
    first report (cached, resumed) does not count towards the rate, as in the CLI.
    """

    def __init__(self, progress: Callable[..., Any], clock: Callable[[], float] = time.monotonic):
        self.progress = progress
        self.clock = clock
        self.stage: str | None = None
        self.started = 0.0
        self.first_done = 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self.clock()
        if stage != self.stage:
            self.stage, self.started, self.first_done = stage, now, done
        desc = stage.capitalize()
        worked = done - self.first_done
        if worked > 0 and done < total:
            eta = (now - self.started) / worked * (total - done)
            desc += f", about {format_seconds(eta)} left"
        self.progress((done, total), desc=desc, unit=STAGES.get(stage, "steps"))


def download_progress(progress: Callable[..., Any]) -> DownloadMeter:
    """A model download as `gr.Progress` updates: MB done of the total, and the speed."""
    return DownloadMeter(
        lambda text, done, total: progress((done // 10**6, total // 10**6), desc=text, unit="MB")
    )


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    return f"{seconds // 60} min {seconds % 60:02d} s"
