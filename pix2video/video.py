"""Reading clips, choosing frames, resizing, and writing results (with the source's audio).

Everything media-related goes through PyAV (FFmpeg's libraries), so any file FFmpeg can read
works as input (mp4, mov, avi, mkv, webm, mpg, gif; H.264, MJPEG, MPEG-2, VP9, ...), and
outputs are encoded in-process (no ffmpeg binary, no command strings). Image folders are read
with Pillow.

Conventions used throughout:

- Frames are ``HxWx3`` ``uint8`` RGB numpy arrays.
- Positions (``--start`` / ``--end``): an integer is a frame number, a value with a decimal
  point, an ``s`` suffix or ``mm:ss`` is seconds (see `parse_position`). A frame's time is
  ``index / source_fps``; ``end`` is exclusive.
- Every problem a user can cause raises `VideoError` (an `InputError`) with one sentence.
- Long inputs are streamed: `open_clip` returns a `ClipReader` that decodes the selection one
  frame at a time on each pass (seeking to a late ``--start``), so memory does not grow with
  the clip's length; `read_clip` is the same reader collected into a list.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import math
import operator
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .atomic import atomic_path
from .errors import VideoError

__all__ = [
    "DECODE_STATS",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "Clip",
    "ClipReader",
    "DecodeStats",
    "fit_size",
    "fps_fraction",
    "list_image_files",
    "open_clip",
    "parse_position",
    "parse_size",
    "probe",
    "read_audio_info",
    "read_clip",
    "resize_frames",
    "side_by_side",
    "write_video",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Output container by extension: (FFmpeg muxer, video encoder, audio encoder or None).
VIDEO_EXTENSIONS: dict[str, tuple[str, str, str | None]] = {
    ".mp4": ("mp4", "libx264", "aac"),
    ".mov": ("mov", "libx264", "aac"),
    ".mkv": ("matroska", "libx264", "aac"),
    ".webm": ("webm", "libvpx-vp9", "libopus"),
    ".gif": ("gif", "gif", None),
}
# The diffusion model's latent is 8x smaller than the image: sides are multiples of 8. (The
# UNet halves the latent 3 more times; diffusers forwards the skip sizes when that is uneven.)
SIZE_MULTIPLE = 8
MIN_SIDE = 64
DEFAULT_FOLDER_FPS = 30.0

_FRAME_NAME = re.compile(r"^[0-9]{6}\.png$")
_AAC_RATES = {7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200}
_OPUS_RATES = {8000, 12000, 16000, 24000, 48000}


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


# --------------------------------------------------------------------------- positions, sizes


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


def parse_size(text: str | int) -> int | tuple[int, int]:
    """``"512"`` -> 512 (long side), ``"768x448"`` -> (768, 448) (exact width x height)."""
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        value: int | tuple[int, int] = int(text)
    else:
        match = re.fullmatch(r"\s*([0-9]+)\s*(?:[x×*]\s*([0-9]+)\s*)?", str(text).lower())
        if match is None:
            raise VideoError(
                f"Invalid size {text!r}: use one number for the long side (512) or "
                "WIDTHxHEIGHT (768x448)."
            )
        w, h = match.groups()
        value = int(w) if h is None else (int(w), int(h))
    if (value if isinstance(value, int) else min(value)) <= 0:
        raise VideoError(f"Invalid size {text!r}: sizes must be positive.")
    return value


def fit_size(src_w: int, src_h: int, size: int | tuple[int, int]) -> tuple[int, int]:
    """Output (width, height) for the diffusion model: both sides multiples of 8.

    ``size`` as an int is the long side (rounded to the nearest multiple of 8, at least 64);
    the short side is the multiple of 8 (at least 64) whose aspect ratio is closest to the
    source's, compared as a ratio (so 1280x720 gives 512x288 at 512 and 854x480 512x288).
    A ``(W, H)`` tuple is used as given but must be multiples of 8.
    """
    if src_w <= 0 or src_h <= 0:
        raise VideoError(f"Invalid source size {src_w}x{src_h}: sides must be positive.")
    if isinstance(size, (tuple, list)):
        w, h = (int(s) for s in size)
        if w <= 0 or h <= 0 or w % SIZE_MULTIPLE or h % SIZE_MULTIPLE:
            raise VideoError(
                f"Output size {w}x{h} is not usable: width and height must be multiples of "
                f"{SIZE_MULTIPLE} (e.g. {_round_size(w)}x{_round_size(h)})."
            )
        return w, h
    if isinstance(size, bool) or int(size) <= 0:
        raise VideoError(f"Invalid size {size!r}: the long side must be a positive number.")
    long_out = _round_size(int(size))
    long_in, short_in = max(src_w, src_h), min(src_w, src_h)
    short_exact = short_in * long_out / long_in
    lo = max(MIN_SIDE, math.floor(short_exact / SIZE_MULTIPLE) * SIZE_MULTIPLE)
    hi = lo + SIZE_MULTIPLE
    # Nearest in ratio terms: compare against the geometric mean of the two candidates.
    short_out = hi if short_exact >= math.sqrt(lo * hi) else lo
    short_out = min(short_out, long_out)
    return (long_out, short_out) if src_w >= src_h else (short_out, long_out)


def _round_size(n: int) -> int:
    return max(MIN_SIDE, int(math.floor(n / SIZE_MULTIPLE + 0.5)) * SIZE_MULTIPLE)


def fps_fraction(fps: float | Fraction) -> Fraction:
    """Exact frame rate for a float: NTSC rates come back as ``N*1000/1001``.

    ``29.97``, ``30000/1001`` as a float, or ``15000/1001`` (29.97 with stride 2) all map to
    the exact fraction so timestamps do not drift; other rates are the closest fraction with a
    denominator up to 100000 (``45000/1499`` survives a float round trip).
    """
    if isinstance(fps, Fraction):
        rate = fps
    else:
        value = float(fps)
        if not math.isfinite(value) or value <= 0:
            raise VideoError(f"Invalid frame rate {fps!r}: it must be a positive number.")
        k = round(value * 1.001)
        if k >= 1 and abs(value - k * 1000 / 1001) < 1e-5 * value:
            return Fraction(k * 1000, 1001)
        rate = Fraction(value).limit_denominator(100000)
    if rate <= 0:
        raise VideoError(f"Invalid frame rate {fps!r}: it must be a positive number.")
    return rate


# --------------------------------------------------------------------------- reading


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files in ``folder`` in natural order (``f2.png`` before ``f10.png``).

    Frame dumps are rarely zero-padded consistently, and plain string sorting would put frame
    10 before frame 2. Hidden files are ignored.
    """
    folder = Path(folder)
    if not folder.exists():
        raise VideoError(f"The folder {folder} does not exist.")
    if not folder.is_dir():
        raise VideoError(f"{folder} is not a folder.")
    files = [
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    ]
    return sorted(files, key=_natural_key)


def _natural_key(path: Path) -> tuple:
    parts = re.split(r"([0-9]+)", path.name)
    key = tuple((1, int(p), "") if p.isdigit() else (0, 0, p.lower()) for p in parts)
    return key + ((0, 0, path.name),)


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise VideoError(f"The input {path} does not exist.")
    return path


def _check_count(value: int | None, name: str, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    try:
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or number < 1:
        raise VideoError(f"{name} must be a whole number of at least 1, got {value!r}.")
    return number


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


def _select(start_pos, end_pos, stride: int, max_frames: int | None, fps: float) -> _Selection:
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


def _beyond_error(start_pos, count: int, fps: float) -> VideoError:
    return VideoError(
        f"--start {_describe(start_pos)} is beyond the clip's {count} frames / {count / fps:.2f} s."
    )


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


# --------------------------------------------------------------------------- streaming reader


@dataclass
class DecodeStats:
    """How much decoding reading really did (module-wide: `DECODE_STATS`), for tests.

    Seeking and streaming are invisible in the frames they return (those must be identical to
    a read from the first frame), so the only way to check that a late ``--start`` did not
    decode the whole beginning, or that a pass decoded each frame once, is to count. The
    counters are plain integers without locks: exact from one thread, approximate when several
    threads decode at once. `reset` them before the code under test.
    """

    frames_decoded: int = 0
    """Frames output by video decoders (converted or not), plus images loaded from folders."""
    frames_converted: int = 0
    """Decoded frames converted to RGB arrays (the step `ClipReader.count` skips)."""
    seeks: int = 0
    """Seeks issued on a video (the first frame after each is checked; see `_VideoReader`)."""

    def reset(self) -> None:
        self.frames_decoded = self.frames_converted = self.seeks = 0


DECODE_STATS = DecodeStats()


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
        state = _PassState()
        frames = self._selected_frames(state)
        first = next(frames, None)
        if first is None:
            self._finish_pass(state, stacklevel=3)  # raises: beyond the clip, no frames, ...
        assert first is not None
        self.source_size = _upright_size(first[1])
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


def _load_image(path: Path) -> np.ndarray:
    """Load any Pillow-readable image as upright 8-bit RGB."""
    DECODE_STATS.frames_decoded += 1
    DECODE_STATS.frames_converted += 1
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                gray = (np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8)
                return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise VideoError(f"Cannot read the image {path} ({exc}).") from exc


def _open_input(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r")
    except PermissionError as exc:
        raise VideoError(f"{path} cannot be read (permission denied).") from exc
    except av.FFmpegError as exc:
        raise VideoError(f"{path} is not a video FFmpeg can read ({_reason(exc)}).") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise VideoError(f"{path} cannot be opened ({exc}).") from exc


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _stream_rate(stream) -> Fraction | None:
    """The container's frame rate, exactly (None when it has no plausible one)."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and 0 < float(rate) < 1000:
            return Fraction(rate)
    return None


def _stream_fps(stream) -> float:
    """Frame rate from the container, or from the duration when the container has none."""
    rate = _stream_rate(stream)
    if rate is not None:
        return float(rate)
    if stream.frames and stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
        if seconds > 0:
            return stream.frames / seconds
    return DEFAULT_FOLDER_FPS


def _first_frame_rotation(container, stream) -> int:
    """Display rotation (degrees) of the first frame; phones store portrait video sideways."""
    for frame in _Decoder(container, stream):
        return _quarter_turns(frame) * 90
    return 0


def _video_stream(container, path: Path):
    if not container.streams.video:
        raise VideoError(f"{path} has no video stream.")
    return container.streams.video[0]


def _quarter_turns(frame: av.VideoFrame) -> int:
    """Counter-clockwise quarter turns that make the frame upright (its display matrix)."""
    try:
        return round((frame.rotation or 0) / 90) % 4
    except Exception:  # side data missing or unreadable: show the frame as stored
        return 0


def _upright_size(frame: av.VideoFrame) -> tuple[int, int]:
    """(width, height) of the frame as `_to_rgb` returns it, without converting it."""
    w, h = frame.width, frame.height
    return (h, w) if _quarter_turns(frame) % 2 else (w, h)


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """Any pixel format (yuv420p, yuv444p, pal8, 10-bit...) to upright RGB24."""
    DECODE_STATS.frames_converted += 1
    rgb = frame.to_ndarray(format="rgb24")
    quarter_turns = _quarter_turns(frame)
    if quarter_turns:
        rgb = np.rot90(rgb, k=quarter_turns)
    return np.ascontiguousarray(rgb)


class _Decoder:
    """Decodes packet by packet so one damaged packet costs one frame, not the whole clip.

    ``errors`` counts packets that failed to decode; ``fatal`` holds the error that stopped
    demuxing (a truncated or garbled file), after which buffered frames are still flushed.
    Every frame the decoder outputs is counted in `DECODE_STATS`.
    """

    def __init__(self, container, stream):
        self.container, self.stream = container, stream
        self.errors = 0
        self.first_error: BaseException | None = None
        self.fatal: BaseException | None = None

    def _note(self, exc: BaseException) -> None:
        self.errors += 1
        self.first_error = self.first_error or exc

    def __iter__(self) -> Iterator[av.VideoFrame]:
        packets = self.container.demux(self.stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return  # the demuxer's last (empty) packet has already flushed the decoder
            except (av.FFmpegError, ValueError) as exc:
                self.fatal = exc
                break
            try:
                frames = self.stream.decode(packet)
            except (av.FFmpegError, ValueError) as exc:
                self._note(exc)
                continue
            DECODE_STATS.frames_decoded += len(frames)
            yield from frames
        try:
            frames = self.stream.codec_context.decode(None)
        except (av.FFmpegError, ValueError):
            return
        DECODE_STATS.frames_decoded += len(frames)
        yield from frames


def probe(path: str | os.PathLike, folder_fps: float = DEFAULT_FOLDER_FPS) -> dict:
    """Cheap metadata: fps, num_frames, width, height, has_audio, duration.

    Only the first frame is decoded (for its display rotation, so width/height are those of
    the upright frames `read_clip` returns). ``num_frames`` comes from the container's index
    when it has one (mp4, avi), otherwise it is estimated from the duration (mkv, webm);
    `read_clip` gives the exact count.
    """
    path = _existing(path)
    if path.is_dir():
        files = list_image_files(path)
        if not files:
            raise VideoError(
                f"The folder {path} contains no images ({', '.join(IMAGE_EXTENSIONS)})."
            )
        first = _load_image(files[0])
        fps = float(fps_fraction(folder_fps))
        return {
            "fps": fps,
            "num_frames": len(files),
            "width": first.shape[1],
            "height": first.shape[0],
            "has_audio": False,
            "duration": len(files) / fps,
        }
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        fps = _stream_fps(stream)
        duration = None
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        num_frames = stream.frames or (round(duration * fps) if duration else 0)
        if duration is None:
            duration = num_frames / fps
        width, height = stream.codec_context.width, stream.codec_context.height
        if _first_frame_rotation(container, stream) % 180:
            width, height = height, width  # as `read_clip` returns it: upright
        return {
            "fps": fps,
            "num_frames": int(num_frames),
            "width": width,
            "height": height,
            "has_audio": bool(container.streams.audio),
            "duration": duration,
        }


# --------------------------------------------------------------------------- audio


def read_audio_info(path: str | os.PathLike) -> dict | None:
    """``{"sample_rate", "channels", "duration", "codec"}`` of the first audio stream, or None.

    The duration is the container's (which excludes encoder priming and padding, e.g. AAC's
    1024-sample lead-in) when it records one, else measured by decoding (webm, ogg).
    """
    path = _existing(path)
    if path.is_dir():
        return None
    with _open_input(path) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        else:
            samples = 0
            try:
                for frame in container.decode(stream):
                    samples += frame.samples
            except av.FFmpegError as exc:
                raise VideoError(
                    f"The audio of {path} cannot be decoded ({_reason(exc)})."
                ) from exc
            duration = samples / rate if rate else 0.0
        return {
            "sample_rate": rate,
            "channels": stream.codec_context.channels,
            "duration": duration,
            "codec": stream.codec_context.name,
        }


def _decode_audio_segment(
    path: Path, start: float, end: float | None
) -> tuple[np.ndarray, int, str] | None:
    """Audio of ``[start, end)`` (seconds from the video's first frame) as planar float32.

    Returns ``(samples[channels, n], sample_rate, layout)`` or None when there is no audio in
    that range. Silence is prepended where the audio starts after ``start`` so sample 0 of the
    result always lines up with ``start``.
    """
    with _open_input(path) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        layout = "mono" if stream.codec_context.channels == 1 else "stereo"
        origin = 0.0  # times are relative to the first video frame, as in `Clip`
        if container.streams.video and container.streams.video[0].start_time is not None:
            video = container.streams.video[0]
            origin = float(video.start_time * video.time_base)
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        if start > 2.0:
            try:
                target = int((origin + start - 1.0) / stream.time_base)
                container.seek(target, stream=stream, backward=True)
            except av.FFmpegError:
                container.seek(0)
        chunks: list[np.ndarray] = []
        first_time: float | None = None
        expected = 0  # samples collected so far, to bridge frames without timestamps
        try:
            for frame in container.decode(stream):
                if frame.pts is not None and frame.time_base is not None:
                    t = float(frame.pts * frame.time_base) - origin
                elif first_time is not None:
                    t = first_time + expected / rate
                else:
                    t = 0.0
                if end is not None and t >= end:
                    break
                if first_time is None:
                    first_time = t
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
                    expected += out.samples
        except av.FFmpegError:
            pass  # a damaged audio tail: keep what decoded
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray())
    if not chunks or first_time is None:
        return None
    samples = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
    offset = round((start - first_time) * rate)
    if offset < 0:
        samples = np.concatenate([np.zeros((samples.shape[0], -offset), np.float32), samples], 1)
        offset = 0
    stop = None if end is None else offset + round((end - start) * rate)
    segment = samples[:, offset:stop]
    if segment.shape[1] == 0:
        return None
    return np.ascontiguousarray(segment), rate, layout


def _add_audio_stream(container, codec: str, audio: tuple[np.ndarray, int, str]):
    samples, rate, layout = audio
    allowed = _OPUS_RATES if "opus" in codec else _AAC_RATES
    out_rate = rate if rate in allowed else 48000
    stream = container.add_stream(codec, rate=out_rate)
    stream.codec_context.layout = layout
    stream.codec_context.bit_rate = 128000 if layout == "stereo" else 96000
    return stream


class _AudioFeed:
    """Encodes the audio segment alongside the video so the file is interleaved by time.

    Audio starts at pts 0 (with the first frame) and is cut where the video ends, so the two
    tracks have the same length whatever ``audio_end`` was.
    """

    def __init__(self, container, stream, audio: tuple[np.ndarray, int, str]):
        self.container, self.stream = container, stream
        self.samples, self.rate, self.layout = audio
        self.pos = 0

    def until(self, seconds: float) -> None:
        """Encode audio up to ``seconds`` (rounded to whole chunks)."""
        limit = min(self.samples.shape[1], round(seconds * self.rate))
        chunk = 4096
        while self.pos < limit:
            stop = min(self.pos + chunk, limit)
            part = np.ascontiguousarray(self.samples[:, self.pos : stop])
            frame = av.AudioFrame.from_ndarray(part, format="fltp", layout=self.layout)
            frame.sample_rate = self.rate
            frame.pts = self.pos
            frame.time_base = Fraction(1, self.rate)
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
            self.pos = stop

    def finish(self, video_seconds: float) -> None:
        self.until(video_seconds)
        for packet in self.stream.encode(None):
            self.container.mux(packet)


# --------------------------------------------------------------------------- writing


def _as_rgb_frame(frame, index: int, shape: tuple[int, int] | None) -> np.ndarray:
    """Validate one output frame: HxWx3 uint8 (grey HxW and RGBA are converted)."""
    arr = np.asarray(frame)
    if arr.dtype != np.uint8:
        raise VideoError(
            f"Frame {index} has dtype {arr.dtype}; frames to write must be uint8 RGB (0-255)."
        )
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise VideoError(
            f"Frame {index} has shape {np.shape(frame)}; frames to write must be HxWx3 RGB."
        )
    if shape is not None and arr.shape[:2] != shape:
        raise VideoError(
            f"Frame {index} is {arr.shape[1]}x{arr.shape[0]} but frame 0 is "
            f"{shape[1]}x{shape[0]}; all frames of a video must have the same size."
        )
    return np.ascontiguousarray(arr)


def _pad_even(arr: np.ndarray) -> np.ndarray:
    """yuv420p needs even sides: repeat the last row/column rather than fail or crop."""
    h, w = arr.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return arr
    return np.pad(arr, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _is_folder_output(path: Path) -> bool:
    return path.is_dir() or path.suffix == ""


def write_video(
    path: str | os.PathLike,
    frames: list[np.ndarray] | Iterable[np.ndarray],
    fps: float | Fraction,
    audio_from: str | os.PathLike | None = None,
    audio_start: float = 0.0,
    audio_end: float | None = None,
    crf: int = 18,
) -> Path:
    """Write RGB frames as a video (by extension) or as a folder of PNGs, atomically.

    - ``.mp4`` / ``.mov`` / ``.mkv``: H.264 (libx264, yuv420p, BT.709 tags), ``crf`` quality.
    - ``.webm``: VP9 (libvpx-vp9, yuv420p), ``crf`` on VP9's 0-63 scale.
    - ``.gif``: 256-colour palette per frame, loops forever, frame delay from ``fps``.
    - no extension, or an existing folder: ``000000.png``, ``000001.png``, ...

    H.264/VP9 in yuv420p need even sides: an odd width or height is padded by repeating the
    last column/row (one pixel), never cropped. ``fps`` is kept exactly (see `fps_fraction`).
    When ``audio_from`` has audio and the container can hold it, its ``[audio_start,
    audio_end)`` seconds are re-encoded (AAC, or Opus for webm) starting at time 0, in sync
    with the first frame. The file is written under a temporary name next to ``path`` and
    renamed into place only when complete: on any failure nothing is left behind.
    """
    path = Path(path)
    rate = fps_fraction(fps)
    folder_output = _is_folder_output(path)
    if not folder_output and path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise VideoError(
            f"Cannot write {path}: unknown output type '{path.suffix}'; use "
            f"{', '.join(VIDEO_EXTENSIONS)} or a folder name for PNG frames."
        )
    crf = _check_crf(crf, 63 if path.suffix.lower() == ".webm" else 51)
    parent = path.parent
    if not parent.is_dir():
        raise VideoError(f"Cannot write {path}: the folder {parent} does not exist.")
    if folder_output and path.is_dir():
        check_reusable_folder(path)

    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise VideoError(f"Cannot write {path}: there are no frames to write.")
    first = _as_rgb_frame(first, 0, None)

    audio = None
    if audio_from is not None and not folder_output:
        audio_codec = VIDEO_EXTENSIONS[path.suffix.lower()][2]
        if audio_codec is not None:
            audio = _audio_for_output(Path(audio_from), audio_start, audio_end)

    if folder_output:
        return _write_png_folder(path, first, iterator)
    return _write_container(path, first, iterator, rate, crf, audio)


def _check_crf(crf: int, worst: int) -> int:
    try:
        value = operator.index(crf)
    except TypeError:
        value = -1
    if isinstance(crf, bool) or not 0 <= value <= worst:
        raise VideoError(f"Invalid crf {crf!r}: use a whole number from 0 (best) to {worst}.")
    return value


def _audio_for_output(source: Path, start: float, end: float | None):
    if not source.exists():
        raise VideoError(f"The audio source {source} does not exist.")
    if not math.isfinite(start) or start < 0 or (end is not None and end <= start):
        raise VideoError(
            f"Invalid audio range {start!r}..{end!r}: the start must be >= 0 and before the end."
        )
    if source.is_dir():
        return None
    return _decode_audio_segment(source, float(start), None if end is None else float(end))


def check_reusable_folder(path: Path) -> None:
    """Only overwrite a folder that is empty or holds nothing but an earlier frame dump."""
    foreign = [p.name for p in path.iterdir() if not _FRAME_NAME.match(p.name)]
    if foreign:
        raise VideoError(
            f"Cannot write frames to {path}: it already contains other files (e.g. "
            f"{sorted(foreign)[0]}); choose a new or empty folder."
        )


def _write_png_folder(path: Path, first: np.ndarray, rest: Iterator) -> Path:
    try:
        with atomic_path(path, directory=True) as tmp:
            shape = first.shape[:2]
            Image.fromarray(first).save(tmp / "000000.png", compress_level=4)
            for i, frame in enumerate(rest, start=1):
                arr = _as_rgb_frame(frame, i, shape)
                Image.fromarray(arr).save(tmp / f"{i:06d}.png", compress_level=4)
    except OSError as exc:
        raise VideoError(f"Cannot write {path} ({_reason(exc)}).") from exc
    return path


def _write_container(path, first, rest, rate: Fraction, crf: int, audio) -> Path:
    muxer, video_codec, audio_codec = VIDEO_EXTENSIONS[path.suffix.lower()]
    try:
        with atomic_path(path) as tmp:
            _encode(tmp, muxer, video_codec, audio_codec, first, rest, rate, crf, audio)
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(f"Cannot write {path} ({_reason(exc)}).") from exc
    return path


def _encode(tmp, muxer, video_codec, audio_codec, first, rest, rate, crf, audio) -> None:
    options = {"movflags": "+faststart"} if muxer in ("mp4", "mov") else {}
    if muxer == "gif":
        options = {"loop": "0"}  # loop forever
    container = av.open(str(tmp), mode="w", format=muxer, options=options)
    try:
        stream = _add_video_stream(container, video_codec, first, rate, crf)
        feed = None
        if audio is not None and audio_codec is not None:
            feed = _AudioFeed(container, _add_audio_stream(container, audio_codec, audio), audio)
        shape = first.shape[:2]
        # Frames are validated as they come, so a bad frame fails the write, not a later read.
        frames = itertools.chain(
            [first], (_as_rgb_frame(f, i, shape) for i, f in enumerate(rest, start=1))
        )
        count = 0
        for count, arr in enumerate(frames, start=1):
            _encode_frame(container, stream, arr, count - 1)
            if feed is not None:
                feed.until(float((count - 1) / rate))
        for packet in stream.encode(None):
            container.mux(packet)
        if feed is not None:
            feed.finish(float(count / rate))
    except BaseException:
        try:  # the caller deletes the file; keep the original error, not a close() error
            container.close()
        except Exception:
            pass
        raise
    container.close()


def _add_video_stream(container, codec: str, first: np.ndarray, rate: Fraction, crf: int):
    h, w = first.shape[:2]
    if codec == "gif":
        stream = container.add_stream("gif", rate=rate)
        stream.pix_fmt = "pal8"
    else:
        if codec == "libx264":
            options = {"crf": str(crf), "preset": "medium"}
        else:  # libvpx-vp9: constant quality (bit_rate 0), good speed/quality trade-off
            options = {"crf": str(crf), "b": "0", "deadline": "good", "cpu-used": "4"}
            options["row-mt"] = "1"
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.pix_fmt = "yuv420p"
        w, h = w + w % 2, h + h % 2
        ctx = stream.codec_context
        ctx.colorspace, ctx.color_primaries, ctx.color_trc = 1, 1, 1  # BT.709
        ctx.color_range = 1  # limited ("tv") range, what players expect
    stream.width, stream.height = w, h
    stream.codec_context.time_base = 1 / rate
    return stream


def _encode_frame(container, stream, arr: np.ndarray, index: int) -> None:
    if stream.pix_fmt == "pal8":
        frame = _palette_frame(arr)
    else:
        frame = av.VideoFrame.from_ndarray(_pad_even(arr), format="rgb24")
        frame = frame.reformat(
            format="yuv420p",
            dst_colorspace="ITU709",
            dst_color_range="MPEG",
        )
    frame.pts = index
    frame.time_base = stream.codec_context.time_base
    for packet in stream.encode(frame):
        container.mux(packet)


def _palette_frame(arr: np.ndarray) -> av.VideoFrame:
    """Quantise to a 256-colour palette of this frame (better than a fixed 3-3-2 palette)."""
    quantised = Image.fromarray(arr).quantize(colors=256)
    palette = np.zeros((256, 4), dtype=np.uint8)
    rgb = np.frombuffer(bytes(quantised.getpalette() or []), dtype=np.uint8).reshape(-1, 3)
    rgb = rgb[:256]
    palette[: len(rgb), 0] = 255  # alpha: opaque (ARGB order)
    palette[: len(rgb), 1:] = rgb
    index = np.ascontiguousarray(np.asarray(quantised, dtype=np.uint8))
    return av.VideoFrame.from_ndarray((index, palette), format="pal8")


# --------------------------------------------------------------------------- resizing


def resize_frames(frames: Iterable[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
    """Resize to exactly (width, height) with Lanczos (sharp, little aliasing when shrinking).

    Frames already at that size are returned as they are.
    """
    w, h = (int(s) for s in size)
    if w <= 0 or h <= 0:
        raise VideoError(f"Invalid size {w}x{h}: width and height must be positive.")
    out = []
    for i, frame in enumerate(frames):
        arr = _as_rgb_frame(frame, i, None)
        if arr.shape[:2] == (h, w):
            out.append(arr)
            continue
        img = Image.fromarray(arr).resize((w, h), Image.Resampling.LANCZOS)
        out.append(np.asarray(img, dtype=np.uint8).copy())
    return out


def side_by_side(left: list[np.ndarray], right: list[np.ndarray]) -> list[np.ndarray]:
    """Input next to output for comparison: ``left`` is scaled to ``right``'s height.

    The scaled width is rounded to an even number so an even-sized result stays even (H.264).
    """
    left, right = list(left), list(right)
    if len(left) != len(right):
        raise VideoError(
            f"Cannot put {len(left)} frames next to {len(right)} frames; the counts must match."
        )
    out = []
    for i, (a, b) in enumerate(zip(left, right, strict=True)):
        a, b = _as_rgb_frame(a, i, None), _as_rgb_frame(b, i, None)
        height = b.shape[0]
        if a.shape[0] != height:
            width = max(2, 2 * round(a.shape[1] * height / a.shape[0] / 2))
            a = resize_frames([a], (width, height))[0]
        out.append(np.hstack([a, b]))
    return out
