"""What a clip is once opened: `Clip` (frames in memory) and `ClipReader` (frames on demand).

`ClipReader` is the interface every reader keeps (`decode` has one for image folders and
one for video files): what is known when it is opened, what after one pass, and how passes
are collected into a `Clip`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Clip:
    """Frames selected from a video or image folder, plus what is needed to write them back.

    ``fps`` is the rate of the *output* (``source_fps / stride``) so that the edited clip lasts
    as long as the selected range; ``end_time - start_time`` equals ``len(frames) / fps``,
    which is the span of audio `write_video` should copy to stay in sync.
    """

    frames: list[np.ndarray]
    fps: float
    source_fps: float
    indices: list[int]
    start_time: float
    end_time: float
    source_size: tuple[int, int]
    source_path: Path
    has_audio: bool

    @property
    def stride(self) -> int:
        """Step between selected source frames (1 when a single frame was selected)."""
        return self.indices[1] - self.indices[0] if len(self.indices) > 1 else 1

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames as they are now."""
        h, w = self.frames[0].shape[:2]
        return w, h


def make_clip(path, frames, indices, source_fps, stride, size, has_audio) -> Clip:
    start_time = indices[0] / source_fps
    return Clip(
        frames=frames,
        fps=source_fps / stride,
        source_fps=source_fps,
        indices=indices,
        start_time=start_time,
        end_time=start_time + len(frames) * stride / source_fps,
        source_size=size,
        source_path=path,
        has_audio=has_audio,
    )


class ClipReader:
    """The selected frames of a video or image folder, decoded on demand, one at a time.

    Minutes-long clips do not fit in memory as a list of frames, and an edit goes over its
    input several times (hash/caption, depth and inversion, side-by-side output). Each
    iteration, ``for index, frame in reader``, decodes the selection again from its first
    frame and yields ``(source index, frame)`` with ``frame`` an ``HxWx3`` ``uint8`` upright
    RGB array: the same frames every time. The reader stores no frames; a running pass holds
    the current one only (decoded and as RGB, plus the decoder's own reference pictures), so a
    frame the caller drops is freed before the next one is decoded.

    Known when the reader is returned: ``source_path``, ``source_fps``, ``fps`` (``source_fps
    / stride``: the output rate that keeps the selection's duration), ``source_size``
    (upright ``(w, h)``), ``has_audio``, ``stride``, ``start_index`` and ``start_time``.

    Known after one complete pass (an iteration that ran to its end, `count`, or `to_clip`):
    ``indices`` and ``end_time`` (None before) and ``len(reader)``. Before that ``len()``
    raises TypeError rather than decoding behind the caller's back (``list(reader)`` then
    still decodes once): call `count` for the exact length up front, at the cost of a pass
    that decodes without converting to RGB. Image folders know all of it when opened.
    ``operator.length_hint(reader)`` is a free estimate (from the container's frame count).

    Opening a video decodes up to the first selected frame (which is how it finds ``--start``
    beyond the clip) and keeps that pass suspended, with its container open, for the first
    iteration to go on from; `close` (or leaving a ``with open_clip(...) as reader`` block)
    lets it go early, and the reader stays usable. Every later pass opens its own container,
    so passes can run one after another or interleaved (``zip(reader, reader)``). Do not
    iterate one reader from several threads at once: the hand-over of that first pass, the
    cached length, the seek point and the warning flag are not locked.
    """

    source_path: Path
    source_fps: float
    source_size: tuple[int, int]
    has_audio: bool
    stride: int
    start_index: int
    _indices: list[int] | None = None
    _times: list[float] | None = None

    @property
    def fps(self) -> float:
        """Rate of the output: ``source_fps / stride``, as `Clip.fps`."""
        return self.source_fps / self.stride

    @property
    def start_time(self) -> float:
        """Time of the first selected frame in the source, in seconds."""
        return self.start_index / self.source_fps

    @property
    def indices(self) -> list[int] | None:
        """Selected source indices (the reader's own list: do not modify), None until known."""
        return self._indices

    @property
    def frame_times(self) -> list[float] | None:
        """Per selected frame, its time in seconds from the first, where the frames are not
        evenly spaced (a variable frame rate, a numbered folder with gaps; `media.timing`);
        None where ``fps`` says when each frame is shown, or before one full pass."""
        return self._times

    @property
    def end_time(self) -> float | None:
        """``start_time + n * stride / source_fps`` as in `Clip` (the audio span to copy)."""
        if self._indices is None:
            return None
        return self.start_time + len(self._indices) * self.stride / self.source_fps

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        return self._pass(convert=True, stacklevel=3)

    def __len__(self) -> int:
        if self._indices is None:
            raise TypeError(
                "The number of frames of a video selection is known after one full pass: "
                "iterate the reader or call count() first."
            )
        return len(self._indices)

    def __bool__(self) -> bool:
        """Always true (a reader has at least one frame); without this, truth testing would
        call ``len()``, which raises before the first pass."""
        return True

    def count(self) -> int:
        """Number of selected frames, decoding the selection once (without RGB) if unknown."""
        if self._indices is None:
            for _ in self._pass(convert=False, stacklevel=4):
                pass
        assert self._indices is not None
        return len(self._indices)

    def close(self) -> None:
        """Release what the reader holds between passes (see `_VideoReader`); it stays usable."""

    def __enter__(self) -> ClipReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def to_clip(self) -> Clip:
        """All the selected frames in memory, as `read_clip` returns them."""
        return self._collect(stacklevel=5)

    def _collect(self, stacklevel: int) -> Clip:
        frames: list[np.ndarray] = []
        indices: list[int] = []
        for index, frame in self._pass(convert=True, stacklevel=stacklevel):
            indices.append(index)
            frames.append(frame)
        return make_clip(
            self.source_path,
            frames,
            indices,
            self.source_fps,
            self.stride,
            self.source_size,
            self.has_audio,
        )

    def _pass(self, convert: bool, stacklevel: int) -> Iterator[tuple[int, Any]]:
        """One pass over the selection; ``convert=False`` yields frames as decoded (no RGB).

        ``stacklevel`` is for warnings raised when the pass ends, counted from the helper that
        warns (3: the code that iterates the pass).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        count = "?" if self._indices is None else len(self._indices)
        return (
            f"<{type(self).__name__} {self.source_path} frames={count} from index "
            f"{self.start_index} stride={self.stride} fps={self.fps:g}>"
        )
