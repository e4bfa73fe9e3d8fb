"""Frame timing: when the selected frames are not evenly spaced, their own times.

Most clips run at one rate, and ``fps`` says when every frame is shown. Some do not: phone
recordings with a variable frame rate, screen recordings that only write a frame when the
screen changes, and numbered frame folders with a missing number. Writing those at their
average rate would play them back unevenly fast and slow. Here the reader's per-frame
presentation times are kept when they stray from the even grid, so the writer can give each
output frame the time its input frame had.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

MAX_JITTER = 0.25
"""How far (in frames at the average rate) a time may sit from the even grid and still count
as evenly spaced (millisecond timestamps at 29.97 fps are up to 0.015 frames off)."""

_NUMBER = re.compile(r"([0-9]+)(?!.*[0-9])")  # the last run of digits in a name


def uneven_times(times: Sequence[float | None], fps: float) -> list[float] | None:
    """Seconds from the first frame, per frame, if they stray from the ``fps`` grid; else None.

    None too when a time is missing or they do not increase (then they cannot be trusted, and
    the frames are written evenly, as before).
    """
    if len(times) < 2 or any(t is None for t in times) or fps <= 0:
        return None
    first = times[0]
    relative = [t - first for t in times]  # type: ignore[operator]
    if any(b <= a for a, b in zip(relative, relative[1:], strict=False)):
        return None
    if all(abs(t * fps - i) <= MAX_JITTER for i, t in enumerate(relative)):
        return None
    return relative


def numbered_frames(files: Sequence[Path]) -> list[int] | None:
    """The frame number in each file name (``frame_0007.png`` -> 7), or None where a name has
    none or the numbers do not increase with the files' order."""
    numbers = []
    for file in files:
        match = _NUMBER.search(file.stem)
        if match is None:
            return None
        numbers.append(int(match.group(1)))
    if any(b <= a for a, b in zip(numbers, numbers[1:], strict=False)):
        return None
    return numbers


def frame_slots(numbers: Sequence[int]) -> tuple[list[int], int]:
    """(each number's slot, the step): slots count in the numbers' common step, so an export
    of every 5th frame (``0000, 0005, 0010``) has no gap, while ``1, 2, 3, 5`` lacks slot 3."""
    step = math.gcd(*(b - a for a, b in zip(numbers, numbers[1:], strict=False))) or 1
    return [(n - numbers[0]) // step for n in numbers], step


def describe_numbers(numbers: Sequence[int], most: int = 5) -> str:
    """``4, 9, 10`` or ``4, 9, 10, 11, 12 and 3 more``."""
    shown = ", ".join(str(n) for n in numbers[:most])
    return shown if len(numbers) <= most else f"{shown} and {len(numbers) - most} more"


def folder_times(
    folder: Path, files: Sequence[Path], indices: Sequence[int], fps: float, stride: int
) -> list[float] | None:
    """The times of a numbered folder's selected frames (`files[i]` for i in `indices`),
    where the names skip numbers; else None. Warns once, naming the missing numbers: each
    frame keeps its time, so the frame before a gap is shown longer."""
    numbers = numbered_frames(files)
    if numbers is None or not indices:
        return None
    slots, step = frame_slots(numbers)
    times = uneven_times([slots[i] / fps for i in indices], fps / stride)
    if times is not None:
        present = set(slots)
        span = range(slots[indices[0]], slots[indices[-1]] + 1)
        missing = [numbers[0] + k * step for k in span if k not in present]
        warnings.warn(
            f"{folder} has no frame numbered {describe_numbers(missing)}; each frame keeps "
            "its time, so the frame before a gap is shown longer.",
            stacklevel=5,
        )
    return times
