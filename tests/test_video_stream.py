"""`open_clip` / `ClipReader`: streaming reads at constant memory, and seeking to a late start.

The clips are generated here: 300 frames of 64x48 at 30 fps, H.264 with a keyframe every 30
frames and B-frames (so decode order differs from presentation order), each frame showing its
own number in binary as 12 black or white 16x16 blocks, which survive lossy coding. Seeking
must be invisible: every read is compared, bitwise, with the same selection decoded from the
first frame (``seek=False``); `DECODE_STATS` shows how much was decoded to get there.
"""

from __future__ import annotations

import dataclasses
import operator
import warnings
import weakref
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from support import COCKATOO

from pix2video.errors import VideoError
from pix2video.media import DECODE_STATS, ClipReader, open_clip, read_clip, seek

FRAMES, FPS, GOP, W, H = 300, 30, 30, 64, 48


# ----------------------------------------------------------------------------- helpers


def numbered_frame(i: int) -> np.ndarray:
    """Frame ``i`` shows ``i`` in binary: bit b is the block at row b // 4, column b % 4."""
    img = np.full((H, W, 3), 40, np.uint8)
    for bit in range(12):
        if (i >> bit) & 1:
            row, col = divmod(bit, 4)
            img[row * 16 : (row + 1) * 16, col * 16 : (col + 1) * 16] = 230
    return img


def frame_number(frame: np.ndarray) -> int:
    """Read the number back from the centres of the blocks."""
    number = 0
    for bit in range(12):
        row, col = divmod(bit, 4)
        if frame[row * 16 + 4 : row * 16 + 12, col * 16 + 4 : col * 16 + 12].mean() > 135:
            number |= 1 << bit
    return number


def make_clip(path: Path, fmt: str | None = None, pts=lambda i: i, muxer_options=None) -> Path:
    """H.264, keyframe every `GOP` frames, 2 B-frames between references, no scene cuts."""
    options = {"g": str(GOP), "x264-params": "scenecut=0:b-adapt=0:bframes=2"}
    with av.open(str(path), "w", format=fmt, options=muxer_options or {}) as container:
        stream = container.add_stream("libx264", rate=FPS, options=options)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.time_base = Fraction(1, FPS)
        for i in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(numbered_frame(i), "rgb24")
            frame.pts, frame.time_base = pts(i), Fraction(1, FPS)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {
        "mp4": make_clip(folder / "gop.mp4"),
        "mkv": make_clip(folder / "gop.mkv"),
        "ts": make_clip(folder / "gop.ts", fmt="mpegts"),  # first pts is not 0; lands late
        "avi": make_clip(folder / "gop.avi"),  # frame pts in decode order
        # variable rate: one timestamp skipped at frame 100, so timestamps != frame numbers
        "vfr": make_clip(folder / "vfr.mp4", pts=lambda i: i + (i >= 100)),
        "raw": make_clip(folder / "gop.h264", fmt="h264"),  # no timestamps at all
        # index first, so that a truncated copy still opens (and knows it lost frames)
        "faststart": make_clip(folder / "fast.mp4", muxer_options={"movflags": "+faststart"}),
    }


def decoded() -> int:
    return DECODE_STATS.frames_decoded


def assert_same_as_full_decode(reader: ClipReader, start, **kwargs) -> list[int]:
    """Iterate the reader and compare with `read_clip(..., seek=False)`; returns indices."""
    reference = read_clip(reader.source_path, start=start, seek=False, **kwargs)
    got = list(reader)
    assert [i for i, _ in got] == reference.indices
    for (_, frame), expected in zip(got, reference.frames, strict=True):
        np.testing.assert_array_equal(frame, expected)
    assert reader.indices == reference.indices
    assert reader.start_time == reference.start_time
    assert reader.end_time == pytest.approx(reference.end_time, abs=1e-12)
    assert (reader.fps, reader.source_fps) == (reference.fps, reference.source_fps)
    assert reader.source_size == reference.source_size
    return reference.indices


# ----------------------------------------------------------------------------- seeking


@pytest.mark.parametrize(("start", "first"), [(250, 250), ("8.4", 252), (8.4, 252)])
def test_late_start_seeks_and_matches_full_decode(clips, start, first):
    DECODE_STATS.reset()
    reader = open_clip(clips["mp4"], start=start)
    assert DECODE_STATS.seeks >= 1
    # twice (finding the seek point, then the first pass up to the start) frame 0, which
    # primes the decoder, and keyframe 240 to the start: not the 250 frames before it
    assert decoded() <= 2 * (1 + GOP + 1)
    assert reader.start_index == first and reader.start_time == pytest.approx(first / FPS)
    assert (reader.source_size, reader.fps, reader.has_audio) == ((W, H), 30.0, False)
    assert reader.indices is None and reader.end_time is None  # not known before a pass

    got = []
    DECODE_STATS.reset()
    for index, frame in reader:
        assert frame.shape == (H, W, 3) and frame.dtype == np.uint8
        got.append((index, frame_number(frame)))
    selected = FRAMES - first
    assert got == [(i, i) for i in range(first, FRAMES)]
    assert decoded() == selected - 1  # the first pass goes on from where opening stopped
    assert DECODE_STATS.frames_converted == selected
    assert len(reader) == selected and reader.end_time == pytest.approx(FRAMES / FPS)
    DECODE_STATS.reset()
    assert [i for i, _ in reader] == list(range(first, FRAMES))
    assert decoded() <= 1 + GOP + selected  # a later pass: frame 0, then one GOP at most
    assert DECODE_STATS.frames_converted == selected  # frames before the start stay YUV
    assert_same_as_full_decode(reader, start)


@pytest.mark.parametrize("kind", ["mkv", "ts", "avi", "vfr"])
def test_seeking_in_other_containers_matches_full_decode(clips, kind):
    DECODE_STATS.reset()
    reader = open_clip(clips[kind], start=250, end=280, stride=3)
    assert DECODE_STATS.seeks >= 1
    numbers = [frame_number(f) for _, f in reader]
    # mpegts lands late and is retried 2 s earlier; the others land on keyframe 240
    assert decoded() < 150  # not the 250 frames before the start
    DECODE_STATS.reset()
    assert [frame_number(f) for _, f in reader] == numbers
    assert decoded() < 100
    indices = assert_same_as_full_decode(reader, 250, end=280, stride=3)
    assert indices == list(range(250, 280, 3))
    # in the vfr clip too: frame numbers count frames, whatever the timestamps say
    assert numbers == indices


def test_seek_in_real_clip_needs_the_first_packet():
    """cockatoo.mp4's keyframe 145 decodes as flat green unless frame 0 was decoded first."""
    if not COCKATOO.exists():
        pytest.skip(f"test data {COCKATOO} is absent")
    DECODE_STATS.reset()
    reader = open_clip(COCKATOO, start=200, end=204)
    # twice frame 0 and keyframe 145 to the start (finding the point, starting the first pass)
    assert DECODE_STATS.seeks >= 1 and decoded() <= 2 * (1 + 200 - 145 + 1)
    assert_same_as_full_decode(reader, 200, end=204)


def test_no_timestamps_decodes_from_the_start(clips):
    DECODE_STATS.reset()
    reader = open_clip(clips["raw"], start=250, end=260)
    # (a threaded decoder may hand over a frame or two more with the one asked for)
    assert DECODE_STATS.seeks == 0 and 251 <= decoded() <= 253
    assert [frame_number(f) for _, f in reader] == list(range(250, 260))
    assert decoded() <= 253 + 10  # the first pass went on from frame 250


def test_failing_seek_falls_back_to_decoding_from_the_start(clips, monkeypatch):
    def refuse(container, stream, pts):
        raise av.FFmpegError(5, "seek refused")

    monkeypatch.setattr(seek, "seek_video", refuse)
    DECODE_STATS.reset()
    reader = open_clip(clips["mp4"], start=250, max_frames=5)
    assert decoded() >= 251  # decoded its way to the start
    assert assert_same_as_full_decode(reader, 250, max_frames=5) == list(range(250, 255))


def test_pass_that_lands_elsewhere_falls_back(clips):
    """Each pass checks the frame it lands on; a wrong one means decoding from the start."""
    reader = open_clip(clips["mp4"], start=250, max_frames=5)
    assert reader._point is not None and reader._point.index == 240
    reader.close()  # drop the pass opening started, so the next one seeks
    reader._point = dataclasses.replace(reader._point, pts=reader._point.pts + 1)
    DECODE_STATS.reset()
    assert [frame_number(f) for _, f in reader] == list(range(250, 255))
    assert reader._point is None and decoded() > 250


def test_start_beyond_the_clip_is_found_by_seeking(clips):
    DECODE_STATS.reset()
    with pytest.raises(
        VideoError, match=r"--start frame 300 is beyond the clip's 300 frames / 10.00 s"
    ):
        open_clip(clips["mp4"], start=300)
    assert decoded() <= 2 * (1 + GOP + 1)  # the last GOP (twice), not the whole clip
    with pytest.raises(VideoError, match=r"--start 11 s is beyond the clip's 300 frames"):
        open_clip(clips["mkv"], start="11s")
    assert open_clip(clips["mp4"], start=299).start_index == 299


# ----------------------------------------------------------------------------- passes


def test_passes_are_identical_and_decode_each_frame_once(clips):
    DECODE_STATS.reset()
    reader = open_clip(clips["mp4"])
    assert decoded() == 1  # up to the first selected frame
    with pytest.raises(TypeError, match="count"):
        len(reader)
    assert operator.length_hint(reader) == FRAMES  # the container's count, free
    sums = []
    for first_pass in (True, False):
        DECODE_STATS.reset()
        checksums = [(i, int(frame.sum(dtype=np.int64))) for i, frame in reader]
        assert DECODE_STATS.frames_converted == FRAMES  # each frame once, never held
        assert DECODE_STATS.frames_decoded == (FRAMES - 1 if first_pass else FRAMES)
        sums.append(checksums)
    assert sums[0] == sums[1] and [i for i, _ in sums[0]] == list(range(FRAMES))
    assert len(reader) == FRAMES and reader.indices == list(range(FRAMES))
    assert reader.end_time == pytest.approx(10.0)

    late = open_clip(clips["mp4"], start=250, stride=2)
    passes = []
    for _ in range(2):
        DECODE_STATS.reset()
        passes.append([(i, frame.tobytes()) for i, frame in late])
        assert DECODE_STATS.frames_decoded <= 1 + GOP + 50 and DECODE_STATS.frames_converted == 25
    assert passes[0] == passes[1] and len(passes[0]) == 25


def test_reader_keeps_no_frames(clips):
    """A frame the caller drops is freed before the next one: at most one is ever alive."""
    reader = open_clip(clips["mp4"], start=100, max_frames=40)
    refs: list[weakref.ref] = []
    most_alive = 0
    for _, frame in reader:
        refs.append(weakref.ref(frame))
        most_alive = max(most_alive, sum(ref() is not None for ref in refs))
    del frame
    assert len(refs) == 40 and most_alive == 1


def test_count_decodes_without_converting(clips):
    reader = open_clip(clips["mp4"], start=250, end=290)
    DECODE_STATS.reset()
    assert reader.count() == 40 and len(reader) == 40
    assert DECODE_STATS.frames_converted == 0 and 39 <= DECODE_STATS.frames_decoded <= 41
    DECODE_STATS.reset()
    assert reader.count() == 40 and DECODE_STATS.frames_decoded == 0  # cached
    # list() asks len() first; the TypeError before a pass keeps it to one pass
    fresh = open_clip(clips["mp4"], start=250, end=290)
    DECODE_STATS.reset()
    assert len(list(fresh)) == 40 and DECODE_STATS.frames_decoded <= 41


def test_read_clip_is_the_reader_collected(clips):
    with open_clip(clips["mkv"], start=40, end=50, stride=2) as reader:
        clip = reader.to_clip()
    again = read_clip(clips["mkv"], start=40, end=50, stride=2)
    assert clip.indices == again.indices == [40, 42, 44, 46, 48]
    for a, b in zip(clip.frames, again.frames, strict=True):
        np.testing.assert_array_equal(a, b)
    assert (clip.start_time, clip.end_time) == (again.start_time, again.end_time)


# ----------------------------------------------------------------------------- damage, folders


def test_truncated_file_warns_once_and_yields_what_decoded(tmp_path, clips):
    data = clips["faststart"].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.8)])
    for start in (0, 150):  # 150: seeks
        reader = open_clip(cut, start=start)  # no warning yet: the damage is further in
        assert (reader._point is not None) == (start > 0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = [(i, frame_number(f)) for i, f in reader]
            second = [(i, frame_number(f)) for i, f in reader]
            assert reader.count() == len(first)
        assert first == second and first == [(i, i) for i in range(start, start + len(first))]
        assert start + 20 < start + len(first) < FRAMES
        messages = [str(w.message) for w in caught]
        assert len(messages) == 1 and "damaged or truncated" in messages[0], messages
        with pytest.warns(UserWarning, match="damaged or truncated"):
            reference = read_clip(cut, start=start, seek=False)
        assert reference.indices == [i for i, _ in first]


def test_image_folder_reader(tmp_path):
    for i in range(7):
        Image.new("RGB", (8, 6), (i * 30, 0, 0)).save(tmp_path / f"f{i}.png")
    DECODE_STATS.reset()
    reader = open_clip(tmp_path, start=1, stride=2, folder_fps=10)
    assert DECODE_STATS.frames_decoded == 1  # listed, and one image read for its size
    assert len(reader) == 3 and reader.indices == [1, 3, 5]  # known before any pass
    assert reader.source_size == (8, 6) and reader.fps == 5.0 and not reader.has_audio
    assert reader.start_time == pytest.approx(0.1) and reader.end_time == pytest.approx(0.7)
    for _ in range(2):
        assert [(i, int(f[0, 0, 0])) for i, f in reader] == [(1, 30), (3, 90), (5, 150)]
    assert DECODE_STATS.frames_decoded == 1 + 6
    # the size check happens as each image is read: open succeeds, the pass fails there
    Image.new("RGB", (8, 8)).save(tmp_path / "f3.png")
    reader = open_clip(tmp_path, start=1, stride=2)
    frames = iter(reader)
    assert next(frames)[0] == 1
    with pytest.raises(VideoError, match="All images must have the same size, but f3.png is 8x8"):
        next(frames)
    (tmp_path / "f3.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(VideoError, match="Cannot read the image"):
        list(open_clip(tmp_path))


def test_open_fails_like_read_clip(tmp_path, clips):
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video\n" * 20)
    cases = [
        (tmp_path / "nope.mp4", {}, "does not exist"),
        (fake, {}, "is not a video FFmpeg can read"),
        (clips["mp4"], {"start": 10, "end": 10}, "must come before"),
        (clips["mp4"], {"stride": 0}, "--stride must be"),
        (tmp_path, {}, "contains no images"),
    ]
    for path, kwargs, phrase in cases:
        with pytest.raises(VideoError, match=phrase):
            open_clip(path, **kwargs)
        with pytest.raises(VideoError, match=phrase):
            read_clip(path, **kwargs)
