"""Writing frames: a video (H.264, VP9 or GIF by extension, with the source's audio) or a
folder of PNGs, encoded in-process and written atomically.
"""

from __future__ import annotations

import itertools
import operator
import os
import re
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from ..atomic import atomic_path
from ..errors import VideoError
from .audio import AudioFeed, add_audio_stream, audio_for_output
from .probe import fps_fraction, reason
from .sizes import as_rgb_frame

# Output container by extension: (FFmpeg muxer, video encoder, audio encoder or None).
VIDEO_EXTENSIONS: dict[str, tuple[str, str, str | None]] = {
    ".mp4": ("mp4", "libx264", "aac"),
    ".mov": ("mov", "libx264", "aac"),
    ".mkv": ("matroska", "libx264", "aac"),
    ".webm": ("webm", "libvpx-vp9", "libopus"),
    ".gif": ("gif", "gif", None),
}


_FRAME_NAME = re.compile(r"^[0-9]{6}\.png$")


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
    times: list[float] | None = None,
) -> Path:
    """Write RGB frames as a video (by extension) or as a folder of PNGs, atomically.

    - ``.mp4`` / ``.mov`` / ``.mkv``: H.264 (libx264, yuv420p, BT.709 tags), ``crf`` quality.
    - ``.webm``: VP9 (libvpx-vp9, yuv420p), ``crf`` on VP9's 0-63 scale.
    - ``.gif``: 256-colour palette per frame, loops forever, frame delay from ``fps``.
    - no extension, or an existing folder: ``000000.png``, ``000001.png``, ...

    H.264/VP9 in yuv420p need even sides: an odd width or height is padded by repeating the
    last column/row (one pixel), never cropped. ``fps`` is kept exactly (see `fps_fraction`);
    ``times`` (seconds from the first frame, one per frame: `ClipReader.frame_times`) give
    unevenly spaced frames their own times instead (``fps`` is then their average rate).
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
    first = as_rgb_frame(first, 0, None)

    audio = None
    if audio_from is not None and not folder_output:
        audio_codec = VIDEO_EXTENSIONS[path.suffix.lower()][2]
        if audio_codec is not None:
            audio = audio_for_output(Path(audio_from), audio_start, audio_end)

    if folder_output:
        return _write_png_folder(path, first, iterator)
    return _write_container(path, first, iterator, _Timing(rate, times), crf, audio)


def _check_crf(crf: int, worst: int) -> int:
    try:
        value = operator.index(crf)
    except TypeError:
        value = -1
    if isinstance(crf, bool) or not 0 <= value <= worst:
        raise VideoError(f"Invalid crf {crf!r}: use a whole number from 0 (best) to {worst}.")
    return value


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
                arr = as_rgb_frame(frame, i, shape)
                Image.fromarray(arr).save(tmp / f"{i:06d}.png", compress_level=4)
    except OSError as exc:
        raise VideoError(f"Cannot write {path} ({reason(exc)}).") from exc
    return path


class _Timing:
    """When each frame is shown: every ``1 / rate`` s, or at its own time (``times``)."""

    FINE = Fraction(1, 90000)  # the MPEG clock: exact for every common rate and ms timestamps

    def __init__(self, rate: Fraction, times: list[float] | None) -> None:
        self.rate, self.times = rate, times
        self.time_base = 1 / rate if times is None else self.FINE

    def pts(self, index: int) -> int:
        if self.times is None:
            return index
        return round(self.times[index] / self.FINE)

    def seconds(self, index: int) -> float:
        """When frame ``index`` starts; past the last frame, when the clip ends (the last
        frame of uneven times is shown for the average frame duration)."""
        if self.times is None:
            return float(index / self.rate)
        if index < len(self.times):
            return self.times[index]
        return self.times[-1] + float(1 / self.rate)


def _write_container(path, first, rest, timing: _Timing, crf: int, audio) -> Path:
    muxer, video_codec, audio_codec = VIDEO_EXTENSIONS[path.suffix.lower()]
    try:
        with atomic_path(path) as tmp:
            _encode(tmp, muxer, video_codec, audio_codec, first, rest, timing, crf, audio)
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(f"Cannot write {path} ({reason(exc)}).") from exc
    return path


def _encode(tmp, muxer, video_codec, audio_codec, first, rest, timing, crf, audio) -> None:
    options = {"movflags": "+faststart"} if muxer in ("mp4", "mov") else {}
    if muxer == "gif":
        options = {"loop": "0"}  # loop forever
    container = av.open(str(tmp), mode="w", format=muxer, options=options)
    try:
        stream = _add_video_stream(container, video_codec, first, timing, crf)
        feed = None
        if audio is not None and audio_codec is not None:
            feed = AudioFeed(container, add_audio_stream(container, audio_codec, audio), audio)
        shape = first.shape[:2]
        # Frames are validated as they come, so a bad frame fails the write, not a later read.
        frames = itertools.chain(
            [first], (as_rgb_frame(f, i, shape) for i, f in enumerate(rest, start=1))
        )
        count = 0
        for count, arr in enumerate(frames, start=1):
            _encode_frame(container, stream, arr, timing.pts(count - 1))
            if feed is not None:
                feed.until(timing.seconds(count - 1))
        for packet in stream.encode(None):
            container.mux(packet)
        if feed is not None:
            feed.finish(timing.seconds(count))
    except BaseException:
        try:  # the caller deletes the file; keep the original error, not a close() error
            container.close()
        except Exception:
            pass
        raise
    container.close()


def _add_video_stream(container, codec: str, first: np.ndarray, timing: _Timing, crf: int):
    h, w = first.shape[:2]
    rate = timing.rate
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
    stream.codec_context.time_base = timing.time_base
    return stream


def _encode_frame(container, stream, arr: np.ndarray, pts: int) -> None:
    if stream.pix_fmt == "pal8":
        frame = _palette_frame(arr)
    else:
        frame = av.VideoFrame.from_ndarray(_pad_even(arr), format="rgb24")
        frame = frame.reformat(
            format="yuv420p",
            dst_colorspace="ITU709",
            dst_color_range="MPEG",
        )
    frame.pts = pts
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
