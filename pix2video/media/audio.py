"""The source's audio: probing it, and copying the selected span into an output (re-encoded
for the output container, resampled to a rate its encoder takes).
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..errors import VideoError
from .probe import existing, open_input, reason

_AAC_RATES = {7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200}


_OPUS_RATES = {8000, 12000, 16000, 24000, 48000}


def read_audio_info(path: str | os.PathLike) -> dict | None:
    """``{"sample_rate", "channels", "duration", "codec"}`` of the first audio stream, or None.

    The duration is the container's (which excludes encoder priming and padding, e.g. AAC's
    1024-sample lead-in) when it records one, else measured by decoding (webm, ogg).
    """
    path = existing(path)
    if path.is_dir():
        return None
    with open_input(path) as container:
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
                raise VideoError(f"The audio of {path} cannot be decoded ({reason(exc)}).") from exc
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
    with open_input(path) as container:
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


def add_audio_stream(container, codec: str, audio: tuple[np.ndarray, int, str]):
    """An audio stream in `container` for `audio`, at a rate the codec accepts (else 48 kHz)."""
    samples, rate, layout = audio
    allowed = _OPUS_RATES if "opus" in codec else _AAC_RATES
    out_rate = rate if rate in allowed else 48000
    stream = container.add_stream(codec, rate=out_rate)
    stream.codec_context.layout = layout
    stream.codec_context.bit_rate = 128000 if layout == "stereo" else 96000
    return stream


class AudioFeed:
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


def audio_for_output(source: Path, start: float, end: float | None):
    """The audio of `source` between `start` and `end` for the output (None: a frame folder)."""
    if not source.exists():
        raise VideoError(f"The audio source {source} does not exist.")
    if not math.isfinite(start) or start < 0 or (end is not None and end <= start):
        raise VideoError(
            f"Invalid audio range {start!r}..{end!r}: the start must be >= 0 and before the end."
        )
    if source.is_dir():
        return None
    return _decode_audio_segment(source, float(start), None if end is None else float(end))
