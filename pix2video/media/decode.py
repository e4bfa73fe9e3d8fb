"""Decoding the selected frames, streamed: `open_clip` returns a `ClipReader` that decodes
the selection one frame at a time on each pass, so memory does not grow with the clip's
length; `read_clip` is the same reader collected into a `Clip`.

A late ``--start`` is reached by seeking to the keyframe before it (by timestamps, or by
a scan of the keyframes when the timestamps cannot be trusted), falling back to decoding
from the start; `DECODE_STATS` counts what was decoded.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from ..errors import VideoError
from .probe import (
    DECODE_STATS,
    DEFAULT_FOLDER_FPS,
    IMAGE_EXTENSIONS,
    _Decoder,
    _existing,
    _load_image,
    _open_input,
    _reason,
    _stream_fps,
    _stream_rate,
    _to_rgb,
    _upright_size,
    _video_stream,
    _warn_of_other_streams,
    _warn_of_transparency,
    fps_fraction,
    list_image_files,
)
from .selection import _beyond_error, _check_count, _select, parse_position
from .timing import folder_times, uneven_times


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
    path = _existing(path)
    stride = _check_count(stride, "--stride")
    max_frames = _check_count(max_frames, "--max-frames", allow_none=True)
    start_pos = parse_position(start)
    end_pos = parse_position(end)
    if path.is_dir():
        return _FolderReader(path, start_pos, end_pos, stride, max_frames, folder_fps)
    return _VideoReader(path, start_pos, end_pos, stride, max_frames, seek=bool(seek))


def _make_clip(path, frames, indices, source_fps, stride, size, has_audio) -> Clip:
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
        return _make_clip(
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
        sel = _select(start_pos, end_pos, stride, max_frames, fps)
        if sel.start >= len(files):
            raise _beyond_error(start_pos, len(files), fps)
        stop = len(files) if sel.stop is None else min(sel.stop, len(files))
        first = _load_image(files[sel.start])
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
            frame = _load_image(self._files[index])
            if frame.shape[:2] != (h, w):
                raise VideoError(
                    f"All images must have the same size, but {self._files[index].name} is "
                    f"{frame.shape[1]}x{frame.shape[0]} and {first_name} is {w}x{h}."
                )
            yield index, frame


# Below this start index, decoding from the first frame costs about what a seek would (the
# seek lands on the keyframe before the start, and GOPs are typically 1 to 10 s long).
_SEEK_MIN_FRAMES = 32


# How far before the start (in seconds) to retry when a seek lands after it: demuxers that
# index by decode time (mp4 with B-frames) can land on the keyframe just past the target.
_SEEK_BACKOFF_S = (0, 2, 20)


# A frame's timestamp may sit this far (in frames) from its slot and still count as that slot
# (millisecond timestamps at 29.97 fps are up to 0.015 frames off).
_MAX_TIMESTAMP_JITTER = Fraction(1, 4)


# Packets to read past the start when scanning timestamps: enough to see every frame shown
# before the start however deep the codec's B-frame reordering (at most 16 in H.264/HEVC).
_REORDER_MARGIN = 32


_SEEK_ERRORS = (av.FFmpegError, OSError, ValueError, OverflowError)


@dataclass(frozen=True)
class _SeekPoint:
    """Where passes start: the timestamp to seek to, and the keyframe that seek lands on.

    ``seek_to`` is kept apart from the keyframe's ``pts`` because some demuxers do not land on
    the keyframe at or before the timestamp asked for (mpegts lands up to a second after it):
    passes repeat the seek that was seen to land on the keyframe.
    """

    seek_to: int
    pts: int
    index: int  # the keyframe's index when decoding from frame 0


class _PassState:
    """What one pass over a video has seen, for the report when it ends."""

    def __init__(self) -> None:
        self.decoder: _Decoder | None = None  # the one used after a possible fall back
        self.indices: list[int] = []  # selected frames yielded so far
        self.times: list[float | None] = []  # their presentation times, in seconds
        self.count = 0  # frames output before the current one, counting from frame 0


class _VideoReader(ClipReader):
    """Video files, with seeking for a late start.

    A frame's number is its position among the frames a decoder outputs when it starts at the
    first frame (what `read_clip` always did), so a seek is only worth using if the number of
    the frame it lands on is known. The reader finds a `_SeekPoint` once, at open:

    1. Constant-rate streams (the container's average and nominal rates agree to half a frame
       over the whole clip: true of encoder output, screen and camera recordings at a fixed
       rate): seek to the start's timestamp and number the frames from their timestamps,
       ``(pts - frame 0's pts) * time_base * fps``, rounded. The first frame after the seek
       must be a keyframe at or before the start and the frames up to the start must follow
       one another slot by slot, or the timestamps are not trusted.
    2. Otherwise (variable frame rate, e.g. many phone recordings, or timestamps that failed
       the checks): read the packets up to the start without decoding them (I/O only) and take
       the last keyframe shown at or before the start; its index is the number of packets
       shown before it. Exact for codecs that give one frame per packet.
    3. Streams without timestamps (raw H.264), demuxers that cannot seek, or anything odd:
       decode from the first frame.

    Every pass then decodes frame 0 (see `_prime_decoder`), seeks to the point and checks
    that the first decoded frame is that keyframe, whole (key flag, timestamp, not corrupt),
    before numbering frames from its index by counting, as decoding from the start does; if it
    is not, that pass and all later ones decode from the first frame, so the frames are the
    same either way. What remains unchecked is a stream whose frames before the keyframe
    failed to decode or decode to several frames per packet: there decoding from the start
    numbers frames by what decoded, seeking by their timestamps.

    Opening decodes up to the first selected frame and keeps that pass suspended (one decoded
    frame and the open container): the first iteration continues it instead of decoding the
    same frames again, which halves the cost of a single read (`read_clip`) when the start
    cannot be seeked to. `close` (or the end of a ``with`` block) releases it early.
    """

    def __init__(self, path: Path, start_pos, end_pos, stride, max_frames, *, seek: bool):
        self.source_path, self.stride = path, stride
        self._start_pos = start_pos
        self._warned = False
        self._point: _SeekPoint | None = None
        self._primed: tuple[_PassState, Iterator] | None = None
        with _open_input(path) as container:
            stream = _video_stream(container, path)
            self.source_fps = _stream_fps(stream)
            self.has_audio = bool(container.streams.audio)
            self._expected = stream.frames or 0
            self._sel = _select(start_pos, end_pos, stride, max_frames, self.source_fps)
            self.start_index = self._sel.start
            duration = _stream_seconds(container, stream)
            self._estimate = self._expected or (
                round(duration * self.source_fps) if duration else 0
            )
            if seek and self._sel.start >= _SEEK_MIN_FRAMES:
                self._point = self._find_seek_point(container, stream)
            _warn_of_other_streams(path, container)
        state = _PassState()
        frames = self._selected_frames(state)
        first = next(frames, None)
        if first is None:
            self._finish_pass(state, stacklevel=3)  # raises: beyond the clip, no frames, ...
        assert first is not None
        self.source_size = _upright_size(first[1])
        _warn_of_transparency(path, first[1])
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

    # ------------------------------------------------------------------ finding the seek point

    def _find_seek_point(self, container, stream) -> _SeekPoint | None:
        """The keyframe passes start from (None: decode from frame 0)."""
        stream.thread_type = "AUTO"
        first = _prime_decoder(container, stream)
        if first is None:
            return None  # nothing decodes: the first pass reports it
        origin = first.pts
        del first
        rate = _stream_rate(stream)
        if rate is not None and origin is not None and _constant_rate(container, stream, rate):
            trusted, point = self._seek_by_timestamps(container, stream, rate, origin)
            if trusted:
                return point
        return self._seek_by_scan(container, stream)

    def _seek_by_timestamps(
        self, container, stream, rate: Fraction, origin: int
    ) -> tuple[bool, _SeekPoint | None]:
        """Seek to the start by timestamp, checking each frame's slot up to it.

        ``origin`` is frame 0's timestamp (not always the stream's start time: a demuxer may
        count frames the decoder drops). Returns ``(trusted, point)``: not trusted when the
        timestamps do not number the frames (the caller then scans packets instead); a
        trusted None point when seeking is pointless (it lands on frame 0) or impossible.
        """
        target = self._sel.start
        time_base = stream.time_base
        if time_base is None:
            return False, None
        for back in _SEEK_BACKOFF_S:
            seconds = (target - Fraction(1, 2)) / rate - back
            pts = origin + math.floor(seconds / time_base)
            if pts <= origin:
                return True, None  # the seek would land on frame 0: decode from the start
            try:
                _seek_video(container, stream, pts)
            except _SEEK_ERRORS:
                return True, None
            point: _SeekPoint | None = None
            previous = None
            for frame in _Decoder(container, stream):
                if frame.is_corrupt:
                    return True, None  # frames decoded after a seek are not whole: no seeking
                index = _timestamp_index(frame, origin, rate)
                if index is None:
                    return False, None
                if previous is None:
                    if not frame.key_frame:
                        return False, None
                    if index > target:
                        break  # landed after the start: seek further back
                    point = _SeekPoint(pts, frame.pts, index) if index > 0 else None
                elif index != previous + 1:
                    return False, None
                if index == target:
                    return True, point
                previous = index
            else:
                if previous is not None:
                    return True, point  # the clip ends before the start: passes report it
                # nothing decoded: the seek went past the end (mpegts lands late): back off
        return False, None

    def _seek_by_scan(self, container, stream) -> _SeekPoint | None:
        """Seek to the last keyframe shown at or before the start, indexed by a packet scan."""
        ranks = _scan_keyframes(self.source_path, self._sel.start)
        if not ranks or stream.time_base is None:
            return None
        key = max(ranks)
        for back in _SEEK_BACKOFF_S:
            seek_to = key - math.floor(back / stream.time_base)
            try:
                _seek_video(container, stream, seek_to)
            except _SEEK_ERRORS:
                return None
            first = next(iter(_Decoder(container, stream)), None)
            if first is None:
                continue  # past the end (some demuxers land late): seek further back
            if first.key_frame and first.pts in ranks:
                index = ranks[first.pts]
                return _SeekPoint(seek_to, first.pts, index) if index > 0 else None
            if first.pts is None or first.pts <= key:
                return None  # landed on something the scan does not know
        return None

    # ------------------------------------------------------------------ passes

    def _pass(self, convert: bool, stacklevel: int) -> Iterator[tuple[int, Any]]:
        primed, self._primed = self._primed, None
        if primed is None:
            state = _PassState()
            frames = self._selected_frames(state)
        else:
            state, frames = primed  # the pass opening started, suspended at the first frame
        with contextlib.closing(frames):
            for index, frame in frames:
                yield index, (_to_rgb(frame) if convert else frame)
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
            with _open_input(self.source_path) as container:
                stream = _decoding_stream(container)
                _prime_decoder(container, stream)
                state.decoder = _Decoder(container, stream)
                frames = _frames_from_point(container, stream, state.decoder, point)
                if frames is not None:
                    for offset, frame in enumerate(frames):
                        yield point.index + offset, frame
                    return
            self._point = None  # the seek did not land as planned: from now on, from frame 0
        with _open_input(self.source_path) as container:
            stream = _decoding_stream(container)
            state.decoder = _Decoder(container, stream)
            yield from enumerate(state.decoder)

    def _finish_pass(self, state: _PassState, stacklevel: int) -> None:
        """Report damage (a warning, once per reader) or an empty selection; keep the indices."""
        path, decoder, indices, count = self.source_path, state.decoder, state.indices, state.count
        problem = None if decoder is None else decoder.fatal or decoder.first_error
        stopped_early = not self._sel.done(count) and self._expected and count < self._expected
        if problem is not None or stopped_early:
            if not indices and count == 0 and problem is not None:
                raise VideoError(
                    f"{path} is damaged: no frame could be decoded ({_reason(problem)})."
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
            raise _beyond_error(self._start_pos, count, self.source_fps)
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


def _prime_decoder(container, stream) -> av.VideoFrame | None:
    """Decode frame 0 before seeking, and return it (None if nothing decodes).

    Decoders keep state from the start of a stream that a seek would skip: FFmpeg's H.264
    decoder learns from the first packet's SEI which x264 build wrote the file and works
    around that build's bugs, and without it the later keyframes of the shared cockatoo.mp4
    (x264, 4:4:4) decode as flat green frames, with no error. A seek flushes the decoder's
    pictures but keeps what it learned.
    """
    return next(iter(_Decoder(container, stream)), None)


def _seek_video(container, stream, pts: int) -> None:
    """Seek to the keyframe at or before ``pts`` (a hook the tests replace to make it fail)."""
    DECODE_STATS.seeks += 1
    container.seek(int(pts), stream=stream, backward=True, any_frame=False)


def _frames_from_point(container, stream, decoder: _Decoder, point: _SeekPoint):
    """Frames from the seek point on, or None unless the first one is exactly that keyframe."""
    try:
        _seek_video(container, stream, point.seek_to)
    except _SEEK_ERRORS:
        return None
    frames = iter(decoder)
    first = next(frames, None)
    if first is None or first.is_corrupt or not first.key_frame or first.pts != point.pts:
        return None
    return itertools.chain((first,), frames)


def _timestamp_index(frame: av.VideoFrame, origin: int, rate: Fraction) -> int | None:
    """The frame's slot from its timestamp, or None without one or between two slots."""
    if frame.pts is None or frame.time_base is None:
        return None
    exact = (frame.pts - origin) * frame.time_base * rate
    index = round(exact)
    if index < 0 or abs(exact - index) > _MAX_TIMESTAMP_JITTER:
        return None
    return index


def _constant_rate(container, stream, rate: Fraction) -> bool:
    """True when timestamps can number frames: the average rate (the frame count over the
    duration) and the nominal rate agree to within half a frame over the clip.

    A constant-rate stream with one dropped frame fails this (its average is one frame short
    of the nominal rate), as does a variable-rate phone recording.
    """
    average, nominal = stream.average_rate, stream.base_rate
    if not average or not nominal or rate != average:
        return False
    seconds = _stream_seconds(container, stream)
    if seconds is None:
        return average == nominal
    return abs(average - nominal) * seconds < Fraction(1, 2)


def _stream_seconds(container, stream) -> Fraction | None:
    if stream.duration and stream.time_base:
        return stream.duration * stream.time_base
    if container.duration:
        return Fraction(container.duration, av.time_base)
    return None


def _scan_keyframes(path: Path, target: int) -> dict[int, int] | None:
    """Index (when decoding from frame 0) of each keyframe shown at or before frame ``target``.

    A frame's index is the number of frames shown before it, which the packets' presentation
    timestamps give without decoding anything (I/O only). Packets the demuxer marks as
    discarded (mp4 edit lists) are not output by the decoder and are not counted. None when
    packets lack timestamps or repeat one.
    """
    shown: list[int] = []
    keyframes: list[int] = []
    try:
        with av.open(str(path), mode="r") as container:
            stream = container.streams.video[0]
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the demuxer's end-of-stream marker
                if packet.pts is None or packet.is_corrupt:
                    return None
                if packet.is_discard:
                    continue
                shown.append(packet.pts)
                if packet.is_keyframe:
                    keyframes.append(packet.pts)
                if len(shown) > target + _REORDER_MARGIN:
                    break
    except _SEEK_ERRORS:
        return None
    shown.sort()
    if not shown or len(set(shown)) != len(shown):
        return None
    last = shown[min(target, len(shown) - 1)]  # the start, or the last frame if beyond
    return {pts: bisect.bisect_left(shown, pts) for pts in keyframes if pts <= last}
