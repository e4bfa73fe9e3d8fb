"""Opening an input and probing it: what a video file or image folder holds, and the
decoder of its video stream (upright RGB frames, counted in `DECODE_STATS`).

PyAV (FFmpeg's libraries) opens any file FFmpeg reads; image folders are read with Pillow
in natural order. Every problem a user can cause raises `VideoError` with one sentence.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import VideoError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


DEFAULT_FOLDER_FPS = 30.0


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


def existing(path: str | os.PathLike) -> Path:
    """`path` as a Path, or a `VideoError` saying that it does not exist."""
    path = Path(path)
    if not path.exists():
        raise VideoError(f"The input {path} does not exist.")
    return path


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
    """Seeks issued on a video (the first frame after each is checked; see `seek`)."""

    def reset(self) -> None:
        self.frames_decoded = self.frames_converted = self.seeks = 0


DECODE_STATS = DecodeStats()


def load_image(path: Path) -> np.ndarray:
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


def open_input(path: Path) -> av.container.InputContainer:
    """`path` opened with PyAV; every way of failing is one `VideoError` sentence."""
    try:
        return av.open(str(path), mode="r")
    except PermissionError as exc:
        raise VideoError(f"{path} cannot be read (permission denied).") from exc
    except av.FFmpegError as exc:
        raise VideoError(f"{path} is not a video FFmpeg can read ({reason(exc)}).") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise VideoError(f"{path} cannot be opened ({exc}).") from exc


def reason(exc: BaseException) -> str:
    """The short cause of `exc` for an error sentence (its strerror, message or type)."""
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def stream_rate(stream) -> Fraction | None:
    """The container's frame rate, exactly (None when it has no plausible one)."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and 0 < float(rate) < 1000:
            return Fraction(rate)
    return None


def stream_fps(stream) -> float:
    """Frame rate from the container, or from the duration when the container has none."""
    rate = stream_rate(stream)
    if rate is not None:
        return float(rate)
    if stream.frames and stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
        if seconds > 0:
            return stream.frames / seconds
    return DEFAULT_FOLDER_FPS


def _first_frame_rotation(container, stream) -> int:
    """Display rotation (degrees) of the first frame; phones store portrait video sideways."""
    for frame in Decoder(container, stream):
        return _quarter_turns(frame) * 90
    return 0


def video_stream(container, path: Path):
    """The first video stream of `container`, or a `VideoError` when it has none."""
    if not container.streams.video:
        raise VideoError(f"{path} has no video stream.")
    return container.streams.video[0]


def _quarter_turns(frame: av.VideoFrame) -> int:
    """Counter-clockwise quarter turns that make the frame upright (its display matrix)."""
    try:
        return round((frame.rotation or 0) / 90) % 4
    except Exception:  # side data missing or unreadable: show the frame as stored
        return 0


def upright_size(frame: av.VideoFrame) -> tuple[int, int]:
    """(width, height) of the frame as `to_rgb` returns it, without converting it."""
    w, h = frame.width, frame.height
    return (h, w) if _quarter_turns(frame) % 2 else (w, h)


def to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """Any pixel format (yuv420p, yuv444p, pal8, 10-bit...) to upright RGB24."""
    DECODE_STATS.frames_converted += 1
    rgb = frame.to_ndarray(format="rgb24")
    quarter_turns = _quarter_turns(frame)
    if quarter_turns:
        rgb = np.rot90(rgb, k=quarter_turns)
    return np.ascontiguousarray(rgb)


def warn_of_other_streams(path: Path, container) -> None:
    """The edit carries the first video stream only: say so where there are more."""
    others = len(container.streams.video) - 1
    if others:
        warnings.warn(
            f"{path} has {others + 1} video streams; the first is edited and the "
            f"other{'s' if others > 1 else ''} left out.",
            stacklevel=5,
        )


def warn_of_transparency(path: Path, frame: av.VideoFrame) -> None:
    """The output is opaque: say so where the first frame has transparent pixels (a format
    with alpha alone is not enough: GIF decodes to BGRA, almost always opaque)."""
    name = frame.format.name
    if not any(c.is_alpha for c in frame.format.components):
        return
    with contextlib.suppress(ValueError, av.FFmpegError):
        if frame.to_ndarray(format="rgba")[..., 3].min() < 255:
            warnings.warn(
                f"{path} has an alpha channel ({name}); the output is opaque: the colours "
                "stored under transparent pixels are edited and shown.",
                stacklevel=4,
            )


class Decoder:
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
    path = existing(path)
    if path.is_dir():
        files = list_image_files(path)
        if not files:
            raise VideoError(
                f"The folder {path} contains no images ({', '.join(IMAGE_EXTENSIONS)})."
            )
        first = load_image(files[0])
        fps = float(fps_fraction(folder_fps))
        return {
            "fps": fps,
            "num_frames": len(files),
            "width": first.shape[1],
            "height": first.shape[0],
            "has_audio": False,
            "duration": len(files) / fps,
        }
    with open_input(path) as container:
        stream = video_stream(container, path)
        fps = stream_fps(stream)
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
