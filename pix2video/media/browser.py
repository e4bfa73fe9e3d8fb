"""What a web browser can show: a check of a clip, and a small H.264 copy of one it cannot.

Browsers play few of the files FFmpeg reads: H.264 (8-bit 4:2:0, not the 4:4:4 or 10-bit
profiles), VP8/VP9/AV1 in MP4 or WebM, with AAC, MP3, Opus or Vorbis sound. AVI, MJPEG
QuickTime files, MPEG-2 (.mpg), phones' HEVC and 10-bit clips edit fine but show as
"not playable" in a page, so the page shows a preview made here instead: the clip's first
`PREVIEW_SECONDS` at a small size, with its sound and its frame timing.
"""

from __future__ import annotations

import os
from pathlib import Path

import av

from .decode import open_clip
from .encode import write_video
from .sizes import fit_size, resize_frames

PREVIEW_LONG_SIDE = 480
PREVIEW_SECONDS = 60.0

_CONTAINERS = {".mp4", ".m4v", ".webm"}
_VIDEO = {"h264", "vp8", "vp9", "av1"}
_AUDIO = {"aac", "mp3", "opus", "vorbis"}
_PIXELS = {"yuv420p", "yuvj420p"}
_H264_PROFILES = {"baseline", "constrained baseline", "main", "high"}


def browser_playable(path: str | os.PathLike) -> bool:
    """Whether common browsers (Chromium, Firefox, Safari) play the file as it is."""
    path = Path(path)
    if path.suffix.lower() not in _CONTAINERS or not path.is_file():
        return False
    try:
        with av.open(str(path)) as container:
            if len(container.streams.video) != 1:
                return False
            video = container.streams.video[0].codec_context
            if video.name not in _VIDEO or video.pix_fmt not in _PIXELS:
                return False
            if video.name == "h264" and (video.profile or "").lower() not in _H264_PROFILES:
                return False
            return all(a.codec_context.name in _AUDIO for a in container.streams.audio)
    except (av.FFmpegError, OSError, ValueError):
        return False


def write_browser_preview(
    source: str | os.PathLike,
    output: str | os.PathLike,
    long_side: int = PREVIEW_LONG_SIDE,
    seconds: float = PREVIEW_SECONDS,
) -> Path:
    """An H.264 MP4 of the clip's first ``seconds`` at ``long_side`` (at most), for a page.

    Raises `VideoError` (one sentence) for what cannot be read, as an edit would.
    """
    reader = open_clip(source, None, float(seconds), 1, None)
    reader.count()  # the frame times, before the first frame is written
    has_audio = reader.has_audio and not Path(source).is_dir()
    return write_video(
        output,
        _small_frames(reader, long_side),
        reader.fps,
        audio_from=source if has_audio else None,
        audio_start=reader.start_time,
        audio_end=reader.end_time,
        crf=23,
        times=reader.frame_times,
    )


def _small_frames(reader, long_side: int):
    width, height = reader.source_size
    size = fit_size(width, height, min(long_side, max(width, height)))
    for _, frame in reader:
        yield resize_frames([frame], size)[0]
