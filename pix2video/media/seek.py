"""Seeking to a late ``--start``: where passes may start instead of frame 0, and getting there.

A frame's number is its position among the frames a decoder outputs when it starts at the
first frame (what `read_clip` always did), so a seek is only worth using if the number of
the frame it lands on is known. A reader finds a `SeekPoint` once, at open
(`find_seek_point`):

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

Every pass then decodes frame 0 (see `prime_decoder`), seeks to the point and checks
that the first decoded frame is that keyframe, whole (key flag, timestamp, not corrupt),
before numbering frames from its index by counting, as decoding from the start does
(`frames_from_point`); if it is not, the reader decodes from the first frame. What remains
unchecked is a stream whose frames before the keyframe failed to decode or decode to
several frames per packet: there decoding from the start numbers frames by what decoded,
seeking by their timestamps.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from .probe import DECODE_STATS, Decoder, stream_rate

# Below this start index, decoding from the first frame costs about what a seek would (the
# seek lands on the keyframe before the start, and GOPs are typically 1 to 10 s long).
SEEK_MIN_FRAMES = 32


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
class SeekPoint:
    """Where passes start: the timestamp to seek to, and the keyframe that seek lands on.

    ``seek_to`` is kept apart from the keyframe's ``pts`` because some demuxers do not land on
    the keyframe at or before the timestamp asked for (mpegts lands up to a second after it):
    passes repeat the seek that was seen to land on the keyframe.
    """

    seek_to: int
    pts: int
    index: int  # the keyframe's index when decoding from frame 0


def find_seek_point(container, stream, path: Path, target: int) -> SeekPoint | None:
    """The keyframe passes to frame ``target`` of ``path`` start from (None: decode from frame 0)."""
    stream.thread_type = "AUTO"
    first = prime_decoder(container, stream)
    if first is None:
        return None  # nothing decodes: the first pass reports it
    origin = first.pts
    del first
    rate = stream_rate(stream)
    if rate is not None and origin is not None and _constant_rate(container, stream, rate):
        trusted, point = _seek_by_timestamps(container, stream, target, rate, origin)
        if trusted:
            return point
    return _seek_by_scan(container, stream, path, target)


def _seek_by_timestamps(
    container, stream, target: int, rate: Fraction, origin: int
) -> tuple[bool, SeekPoint | None]:
    """Seek to the start by timestamp, checking each frame's slot up to it.

    ``origin`` is frame 0's timestamp (not always the stream's start time: a demuxer may
    count frames the decoder drops). Returns ``(trusted, point)``: not trusted when the
    timestamps do not number the frames (the caller then scans packets instead); a
    trusted None point when seeking is pointless (it lands on frame 0) or impossible.
    """
    time_base = stream.time_base
    if time_base is None:
        return False, None
    for back in _SEEK_BACKOFF_S:
        seconds = (target - Fraction(1, 2)) / rate - back
        pts = origin + math.floor(seconds / time_base)
        if pts <= origin:
            return True, None  # the seek would land on frame 0: decode from the start
        try:
            seek_video(container, stream, pts)
        except _SEEK_ERRORS:
            return True, None
        point: SeekPoint | None = None
        previous = None
        for frame in Decoder(container, stream):
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
                point = SeekPoint(pts, frame.pts, index) if index > 0 else None
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


def _seek_by_scan(container, stream, path: Path, target: int) -> SeekPoint | None:
    """Seek to the last keyframe shown at or before the start, indexed by a packet scan."""
    ranks = _scan_keyframes(path, target)
    if not ranks or stream.time_base is None:
        return None
    key = max(ranks)
    for back in _SEEK_BACKOFF_S:
        seek_to = key - math.floor(back / stream.time_base)
        try:
            seek_video(container, stream, seek_to)
        except _SEEK_ERRORS:
            return None
        first = next(iter(Decoder(container, stream)), None)
        if first is None:
            continue  # past the end (some demuxers land late): seek further back
        if first.key_frame and first.pts in ranks:
            index = ranks[first.pts]
            return SeekPoint(seek_to, first.pts, index) if index > 0 else None
        if first.pts is None or first.pts <= key:
            return None  # landed on something the scan does not know
    return None


def prime_decoder(container, stream) -> av.VideoFrame | None:
    """Decode frame 0 before seeking, and return it (None if nothing decodes).

    Decoders keep state from the start of a stream that a seek would skip: FFmpeg's H.264
    decoder learns from the first packet's SEI which x264 build wrote the file and works
    around that build's bugs, and without it the later keyframes of the shared cockatoo.mp4
    (x264, 4:4:4) decode as flat green frames, with no error. A seek flushes the decoder's
    pictures but keeps what it learned.
    """
    return next(iter(Decoder(container, stream)), None)


def seek_video(container, stream, pts: int) -> None:
    """Seek to the keyframe at or before ``pts`` (a hook the tests replace to make it fail)."""
    DECODE_STATS.seeks += 1
    container.seek(int(pts), stream=stream, backward=True, any_frame=False)


def frames_from_point(container, stream, decoder: Decoder, point: SeekPoint):
    """Frames from the seek point on, or None unless the first one is exactly that keyframe."""
    try:
        seek_video(container, stream, point.seek_to)
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
    seconds = stream_seconds(container, stream)
    if seconds is None:
        return average == nominal
    return abs(average - nominal) * seconds < Fraction(1, 2)


def stream_seconds(container, stream) -> Fraction | None:
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
