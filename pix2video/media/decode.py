"""Decoding the selected frames, streamed: `open_clip` returns a `ClipReader` that decodes
the selection one frame at a time on each pass, so memory does not grow with the clip's
length; `read_clip` is the same reader collected into a `Clip`.

A late ``--start`` is reached by seeking to the keyframe before it (by timestamps, or by
a scan of the keyframes when the timestamps cannot be trusted; `seek`), falling back to
decoding from the start; `DECODE_STATS` counts what was decoded. `Clip` and the
`ClipReader` interface are in `reader`.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av

from ..errors import VideoError
from .probe import (
    DEFAULT_FOLDER_FPS,
    IMAGE_EXTENSIONS,
    Decoder,
    existing,
    fps_fraction,
    list_image_files,
    load_image,
    open_input,
    reason,
    stream_fps,
    to_rgb,
    upright_size,
    video_stream,
    warn_of_other_streams,
    warn_of_transparency,
)
from .reader import Clip, ClipReader
from .seek import (
    SEEK_MIN_FRAMES,
    SeekPoint,
    find_seek_point,
    frames_from_point,
    prime_decoder,
    stream_seconds,
)
from .selection import beyond_error, check_count, parse_position, select
from .timing import folder_times, uneven_times


def read_clip(
    path: str | os.PathLike,
    start: str | int | float | tuple[str, float] | None = None,
    end: str | int | float | tuple[str, float] | None = None,
    stride: int = 1,
    max_frames: int | None = None,
    folder_fps: float = DEFAULT_FOLDER_FPS,
    *,
    seek: bool = True,
) -> Clip:
    """Read the selected frames of a video file or an image folder as RGB arrays.

    Frames ``[start, end)`` are taken (positions as in `parse_position`; in seconds, the frames
    whose time ``index / fps`` lies in the range), then every ``stride``-th one, capped at
    ``max_frames``. Decoding stops as soon as the last needed frame has been read, and a late
    ``start`` is reached by seeking (see `open_clip`). A file that is damaged part-way returns
    the frames that decoded (with a warning) rather than failing.

    This is `open_clip` collected into a list: for long clips, iterate `open_clip` instead,
    which holds one frame at a time.
    """
    reader = open_clip(path, start, end, stride, max_frames, folder_fps, seek=seek)
    return reader._collect(stacklevel=5)


def open_clip(
    path: str | os.PathLike,
    start: str | int | float | tuple[str, float] | None = None,
    end: str | int | float | tuple[str, float] | None = None,
    stride: int = 1,
    max_frames: int | None = None,
    folder_fps: float = DEFAULT_FOLDER_FPS,
    *,
    seek: bool = True,
) -> ClipReader:
    """Open the selection as a `ClipReader` that decodes frames on demand, one at a time.

    The selection is the one `read_clip` takes, and opening validates everything `read_clip`
    validates, with the same errors: it decodes up to the first selected frame, so a missing
    or unreadable file, a file without video, ``--start`` beyond the clip or after ``--end``
    fail here, before any work is done on the frames.

    With ``seek`` (the default), a ``start`` 32 frames or more into a video is reached by
    seeking to the keyframe before it and decoding forward, instead of decoding everything
    before it. Frames are numbered as decoding from the first frame numbers them, so the
    selection is the same either way; the seek is used only when that can be checked (see
    `_VideoReader`), otherwise the reader decodes from the start. ``seek=False`` always
    decodes from the first frame (slower, for comparison and as a last resort).
    """
    path = existing(path)
    stride = check_count(stride, "--stride")
    max_frames = check_count(max_frames, "--max-frames", allow_none=True)
    start_pos = parse_position(start)
    end_pos = parse_position(end)
    if path.is_dir():
        return _FolderReader(path, start_pos, end_pos, stride, max_frames, folder_fps)
    return _VideoReader(path, start_pos, end_pos, stride, max_frames, seek=bool(seek))


class _FolderReader(ClipReader):
    """Image folders: files are listed once at open, images loaded one per step of a pass.

    Every image is checked against the first selected one's size as it is read, so a folder
    with a stray image of another size fails when that image is reached, with the same error
    `read_clip` gives.
    """

    def __init__(self, folder: Path, start_pos, end_pos, stride, max_frames, folder_fps):
        fps = float(fps_fraction(folder_fps))
        files = list_image_files(folder)
        if not files:
            raise VideoError(
                f"The folder {folder} contains no images ({', '.join(IMAGE_EXTENSIONS)})."
            )
        sel = select(start_pos, end_pos, stride, max_frames, fps)
        if sel.start >= len(files):
            raise beyond_error(start_pos, len(files), fps)
        stop = len(files) if sel.stop is None else min(sel.stop, len(files))
        first = load_image(files[sel.start])
        self.source_path, self.source_fps, self.has_audio = folder, fps, False
        self.stride, self.start_index = stride, sel.start
        self.source_size = (first.shape[1], first.shape[0])
        self._files = files
        self._indices = list(range(sel.start, stop, stride))
        self._times = folder_times(folder, files, self._indices, fps, stride)

    def __length_hint__(self) -> int:
        return len(self._indices or ())

    def _pass(self, convert: bool, stacklevel: int) -> Iterator[tuple[int, Any]]:
        w, h = self.source_size
        first_name = self._files[self.start_index].name
        for index in list(self._indices or ()):
            frame = load_image(self._files[index])
            if frame.shape[:2] != (h, w):
                raise VideoError(
                    f"All images must have the same size, but {self._files[index].name} is "
                    f"{frame.shape[1]}x{frame.shape[0]} and {first_name} is {w}x{h}."
                )
            yield index, frame


class _PassState:
    """What one pass over a video has seen, for the report when it ends."""

    def __init__(self) -> None:
        self.decoder: Decoder | None = None  # the one used after a possible fall back
        self.indices: list[int] = []  # selected frames yielded so far
        self.times: list[float | None] = []  # their presentation times, in seconds
        self.count = 0  # frames output before the current one, counting from frame 0


class _VideoReader(ClipReader):
    """Video files, with seeking for a late start.

    A frame's number is its position among the frames a decoder outputs when it starts at the
    first frame (what `read_clip` always did), so a seek is only worth using if the number of
    the frame it lands on is known: the reader finds a `SeekPoint` once, at open, where that
    can be checked (`seek.find_seek_point`). Every pass checks that its seek landed on that
    keyframe (`seek.frames_from_point`); if not, that pass and all later ones decode from the
    first frame, so the frames are the same either way.

    Opening decodes up to the first selected frame and keeps that pass suspended (one decoded
    frame and the open container): the first iteration continues it instead of decoding the
    same frames again, which halves the cost of a single read (`read_clip`) when the start
    cannot be seeked to. `close` (or the end of a ``with`` block) releases it early.
    """

    def __init__(self, path: Path, start_pos, end_pos, stride, max_frames, *, seek: bool):
        self.source_path, self.stride = path, stride
        self._start_pos = start_pos
        self._warned = False
        self._point: SeekPoint | None = None
        self._primed: tuple[_PassState, Iterator] | None = None
        with open_input(path) as container:
            stream = video_stream(container, path)
            self.source_fps = stream_fps(stream)
            self.has_audio = bool(container.streams.audio)
            self._expected = stream.frames or 0
            self._sel = select(start_pos, end_pos, stride, max_frames, self.source_fps)
            self.start_index = self._sel.start
            duration = stream_seconds(container, stream)
            self._estimate = self._expected or (
                round(duration * self.source_fps) if duration else 0
            )
            if seek and self._sel.start >= SEEK_MIN_FRAMES:
                self._point = find_seek_point(container, stream, path, self._sel.start)
            warn_of_other_streams(path, container)
        state = _PassState()
        frames = self._selected_frames(state)
        first = next(frames, None)
        if first is None:
            self._finish_pass(state, stacklevel=3)  # raises: beyond the clip, no frames, ...
        assert first is not None
        self.source_size = upright_size(first[1])
        warn_of_transparency(path, first[1])
        self._primed = (state, _prepend([first], frames))

    def __length_hint__(self) -> int:
        if self._indices is not None:
            return len(self._indices)
        stop = self._estimate if self._sel.stop is None else min(self._sel.stop, self._estimate)
        return len(range(self._sel.start, stop, self.stride))

    def close(self) -> None:
        primed, self._primed = self._primed, None
        if primed is not None:
            primed[1].close()

    def _pass(self, convert: bool, stacklevel: int) -> Iterator[tuple[int, Any]]:
        primed, self._primed = self._primed, None
        if primed is None:
            state = _PassState()
            frames = self._selected_frames(state)
        else:
            state, frames = primed  # the pass opening started, suspended at the first frame
        with contextlib.closing(frames):
            for index, frame in frames:
                yield index, (to_rgb(frame) if convert else frame)
        self._finish_pass(state, stacklevel)

    def _selected_frames(self, state: _PassState) -> Iterator[tuple[int, av.VideoFrame]]:
        """The selected ``(index, frame)`` of one pass, noting what it saw in ``state``."""
        sel = self._sel
        with contextlib.closing(self._indexed_frames(state)) as frames:
            for index, frame in frames:
                if sel.done(index):
                    break
                state.count = index + 1
                if sel.wants(index):
                    state.indices.append(index)
                    state.times.append(frame.time)
                    yield index, frame

    def _indexed_frames(self, state: _PassState) -> Iterator[tuple[int, av.VideoFrame]]:
        """``(index, frame)`` from the seek point (or frame 0) to the end of the stream."""
        point = self._point
        if point is not None:
            with open_input(self.source_path) as container:
                stream = _decoding_stream(container)
                prime_decoder(container, stream)
                state.decoder = Decoder(container, stream)
                frames = frames_from_point(container, stream, state.decoder, point)
                if frames is not None:
                    for offset, frame in enumerate(frames):
                        yield point.index + offset, frame
                    return
            self._point = None  # the seek did not land as planned: from now on, from frame 0
        with open_input(self.source_path) as container:
            stream = _decoding_stream(container)
            state.decoder = Decoder(container, stream)
            yield from enumerate(state.decoder)

    def _finish_pass(self, state: _PassState, stacklevel: int) -> None:
        """Report damage (a warning, once per reader) or an empty selection; keep the indices."""
        path, decoder, indices, count = self.source_path, state.decoder, state.indices, state.count
        problem = None if decoder is None else decoder.fatal or decoder.first_error
        stopped_early = not self._sel.done(count) and self._expected and count < self._expected
        if problem is not None or stopped_early:
            if not indices and count == 0 and problem is not None:
                raise VideoError(
                    f"{path} is damaged: no frame could be decoded ({reason(problem)})."
                ) from problem
            if indices and not self._warned:
                self._warned = True
                errors = decoder.errors if decoder is not None else 0
                warnings.warn(
                    f"{path} is damaged or truncated: {count} of {self._expected or '?'} frames "
                    f"decoded{f' ({errors} bad packets)' if errors else ''}; using the "
                    f"{len(indices)} selected frames that decoded.",
                    stacklevel=stacklevel,
                )
        if not indices:
            if count == 0:
                raise VideoError(f"{path} has no video frames.")
            raise beyond_error(self._start_pos, count, self.source_fps)
        self._indices = indices
        self._times = uneven_times(state.times, self.fps)


def _prepend(box: list, rest: Iterator) -> Iterator:
    """``box``'s one item, then ``rest``; the item is not kept once it has been yielded."""
    yield box.pop()
    yield from rest


def _decoding_stream(container):
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream
