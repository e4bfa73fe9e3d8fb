"""Which frames: `--start` / `--end` positions, the stride and `--max-frames`.

An integer is a frame number, a value with a decimal point, an ``s`` suffix or ``mm:ss`` is
seconds (`parse_position`). A frame's time is ``index / source_fps``; ``end`` is exclusive.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

import numpy as np

from ..errors import VideoError


def parse_position(value: str | int | float | None) -> tuple[str, float] | None:
    """Parse ``--start`` / ``--end`` into ``("frame", n)`` or ``("seconds", t)``.

    Integers are frame numbers (``12``, ``"12"``, ``"12f"``); a value with a decimal point
    (``"2.5"``, ``2.0``), an ``s`` suffix (``"2s"``) or a clock (``"1:02.5"``, ``"0:01:02"``)
    is seconds. The split is by notation so that ``12`` never silently means 12 seconds.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise VideoError(f"Invalid position {value!r}: use a frame number, seconds or mm:ss.")
    if isinstance(value, tuple):
        return _checked_position(value)
    if isinstance(value, (int, np.integer)):
        return _checked_position(("frame", int(value)))
    if isinstance(value, (float, np.floating)):
        return _checked_position(("seconds", float(value)))
    text = str(value).strip().lower()
    try:
        if re.fullmatch(r"[0-9]+f?", text):
            return ("frame", int(text.rstrip("f")))
        if text.endswith("s") and not text.endswith(":s"):
            return _checked_position(("seconds", float(text[:-1].strip())))
        if ":" in text:
            return ("seconds", _parse_clock(text))
        if re.fullmatch(r"(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?", text):
            return _checked_position(("seconds", float(text)))
    except ValueError:
        pass
    raise VideoError(
        f"Invalid position {value!r}: use a frame number (12), seconds (2.5 or 2.5s) or "
        "a clock time (1:02.5)."
    )


def _parse_clock(text: str) -> float:
    """``mm:ss(.f)`` or ``hh:mm:ss(.f)`` to seconds; ValueError when malformed."""
    parts = text.split(":")
    if len(parts) > 3 or not all(re.fullmatch(r"[0-9]+(?:\.[0-9]*)?", p) for p in parts):
        raise ValueError(text)
    if any("." in p for p in parts[:-1]) or any(float(p) >= 60 for p in parts[1:]):
        raise ValueError(text)
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + float(part)
    return seconds


def _checked_position(pos: tuple) -> tuple[str, float]:
    """Validate an already-parsed position (non-negative, finite, known unit)."""
    if len(pos) != 2 or pos[0] not in ("frame", "seconds"):
        raise VideoError(f"Invalid position {pos!r}: expected ('frame', n) or ('seconds', t).")
    unit, number = pos
    if isinstance(number, bool) or not isinstance(number, (int, float, np.number)):
        raise VideoError(f"Invalid position {pos!r}: the value must be a number.")
    if not math.isfinite(number) or number < 0:
        raise VideoError(f"Invalid position {pos!r}: positions must be zero or positive.")
    if unit == "frame":
        if number != int(number):
            raise VideoError(f"Invalid position {pos!r}: a frame number must be a whole number.")
        return ("frame", int(number))
    return ("seconds", float(number))


def _describe(pos: tuple[str, float]) -> str:
    return f"frame {pos[1]}" if pos[0] == "frame" else f"{pos[1]:g} s"


def _position_to_index(pos: tuple[str, float], fps: float) -> int:
    """First frame index at or after the position (frame ``i`` starts at ``i / fps``)."""
    if pos[0] == "frame":
        return int(pos[1])
    return max(0, math.ceil(pos[1] * fps - 1e-6))


def check_count(value: int | None, name: str, allow_none: bool = False) -> int | None:
    """`value` as an int of at least 1 (or None with `allow_none`); `name` is the option."""
    if value is None and allow_none:
        return None
    try:
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or number < 1:
        raise VideoError(f"{name} must be a whole number of at least 1, got {value!r}.")
    return number


@dataclass
class _Selection:
    """Which source indices to keep; ``stop`` is exclusive (None: to the end of the clip)."""

    start: int
    stop: int | None
    stride: int

    def wants(self, index: int) -> bool:
        return index >= self.start and (index - self.start) % self.stride == 0

    def done(self, index: int) -> bool:
        return self.stop is not None and index >= self.stop


def select(start_pos, end_pos, stride: int, max_frames: int | None, fps: float) -> _Selection:
    """The `_Selection` that --start, --end, --stride and --max-frames make at `fps`."""
    start = _position_to_index(start_pos, fps) if start_pos else 0
    stop = _position_to_index(end_pos, fps) if end_pos else None
    if stop is not None and start >= stop:
        raise VideoError(
            f"--start ({_describe(start_pos or ('frame', 0))}) must come before "
            f"--end ({_describe(end_pos)})."
        )
    if max_frames is not None:
        capped = start + (max_frames - 1) * stride + 1
        stop = capped if stop is None else min(stop, capped)
    return _Selection(start, stop, stride)


def beyond_error(start_pos, count: int, fps: float) -> VideoError:
    """The error for a --start past the last of `count` frames."""
    return VideoError(
        f"--start {_describe(start_pos)} is beyond the clip's {count} frames / {count / fps:.2f} s."
    )
