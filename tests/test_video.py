"""Tests of `pix2video.media` on the real clips in ../shared/data and on small generated ones."""

from __future__ import annotations

import os
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from support import BLACKSWAN, COCKATOO, G1, REALSHORT

from pix2video.errors import InputError, VideoError
from pix2video.media import (
    Clip,
    fit_size,
    fps_fraction,
    list_image_files,
    parse_position,
    parse_size,
    probe,
    read_audio_info,
    read_clip,
    resize_frames,
    side_by_side,
    write_video,
)


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"test data {path} is absent (the shared data folder ../shared/data)")
    return path


# ----------------------------------------------------------------------------- helpers


def smooth_frames(n: int, w: int = 128, h: int = 96) -> list[np.ndarray]:
    """A moving colour gradient: smooth, so lossy codecs reproduce it closely."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = []
    for i in range(n):
        r = 128 + 100 * np.sin((x + 4 * i) / 17.0)
        g = 128 + 100 * np.cos((y - 3 * i) / 13.0)
        b = 40 + 170 * (x + y) / (w + h)
        frames.append(np.stack([r, g, b], axis=-1).round().astype(np.uint8))
    return frames


def decode_video(path: Path) -> tuple[list[np.ndarray], av.video.stream.VideoStream]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, stream


def stream_info(path: Path) -> dict:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return {
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "rate": stream.average_rate,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
        }


def decode_mono(path: Path) -> tuple[np.ndarray, int, float]:
    """All audio of ``path`` as mono float64, its sample rate and its first timestamp."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        chunks, first, rate = [], None, stream.codec_context.sample_rate
        for frame in container.decode(stream):
            if first is None:
                first = float(frame.pts * frame.time_base)
            a = frame.to_ndarray()
            channels = frame.layout.nb_channels
            chunks.append(a.mean(0) if frame.format.is_planar else a.reshape(-1, channels).mean(1))
        return np.concatenate(chunks).astype(np.float64), rate, first


def envelope(signal: np.ndarray, rate: int, window: float = 0.02) -> np.ndarray:
    """RMS per 20 ms: comparable across codecs and sample rates, sensitive to timing."""
    n = int(rate * window)
    m = len(signal) // n
    return np.sqrt((signal[: m * n].reshape(m, n) ** 2).mean(1))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


def make_av_clip(path: Path, seconds: float = 6.0, fps: int = 10, rate: int = 16000) -> None:
    """A clip whose audio loudness changes every 50 ms at random: any misalignment shows."""
    rng = np.random.default_rng(7)
    blocks = rng.uniform(0.05, 1.0, size=int(seconds / 0.05))
    amplitude = np.repeat(blocks, int(rate * 0.05))
    audio = (amplitude * rng.standard_normal(amplitude.size) * 0.3).astype(np.float32)
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        sound = container.add_stream("aac", rate=rate)
        sound.codec_context.layout = "mono"
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 4, np.uint8), "rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        frame = av.AudioFrame.from_ndarray(audio[None], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        for packet in sound.encode(frame):
            container.mux(packet)
        for packet in sound.encode(None):
            container.mux(packet)


@pytest.fixture(scope="module")
def cockatoo_2_to_4() -> Clip:
    return read_clip(need(COCKATOO), start="2s", end="4s")


# ----------------------------------------------------------------------------- reading real clips


def test_read_cockatoo_selection_and_metadata(cockatoo_2_to_4):
    clip = cockatoo_2_to_4
    assert len(clip.frames) == 40
    assert clip.indices == list(range(40, 80))
    assert clip.frames[0].shape == (720, 1280, 3) and clip.frames[0].dtype == np.uint8
    assert clip.source_size == (1280, 720)
    assert clip.fps == 20.0 and clip.source_fps == 20.0
    assert clip.start_time == pytest.approx(2.0) and clip.end_time == pytest.approx(4.0)
    assert clip.has_audio and clip.source_path == COCKATOO


def test_cockatoo_has_exactly_280_frames():
    clip = read_clip(need(COCKATOO), start=279)
    assert clip.indices == [279] and clip.start_time == pytest.approx(13.95)
    with pytest.raises(
        VideoError, match=r"--start frame 280 is beyond the clip's 280 frames / 14.00 s"
    ):
        read_clip(COCKATOO, start=280)


def test_cockatoo_seconds_match_frame_numbers(cockatoo_2_to_4):
    clip = read_clip(need(COCKATOO), start=40, end=42)
    assert clip.indices == [40, 41]
    np.testing.assert_array_equal(clip.frames[0], cockatoo_2_to_4.frames[0])


def test_probe_real_clips():
    info = probe(need(COCKATOO))
    assert info == {
        "fps": 20.0,
        "num_frames": 280,
        "width": 1280,
        "height": 720,
        "has_audio": True,
        "duration": pytest.approx(14.0),
    }
    assert probe(need(G1))["num_frames"] == 16 and not probe(G1)["has_audio"]
    assert probe(need(BLACKSWAN))["num_frames"] == 50


def test_read_realshort():
    clip = read_clip(need(REALSHORT))
    assert len(clip.frames) == 36 and clip.indices == list(range(36))
    assert clip.source_size == (320, 240) and clip.frames[0].shape == (240, 320, 3)
    # Labelled 29.97 fps; its timestamps step 2998/90000 s, i.e. 45000/1499 = 30.02 fps.
    assert clip.fps == pytest.approx(30000 / 1001, abs=0.06)
    assert fps_fraction(clip.fps) == Fraction(45000, 1499)
    assert clip.has_audio


def test_read_g1_avi():
    clip = read_clip(need(G1))
    assert len(clip.frames) == 16 and clip.fps == 25.0
    assert clip.source_size == (400, 300) and not clip.has_audio
    assert clip.end_time == pytest.approx(16 / 25)


def test_read_blackswan_folder():
    clip = read_clip(need(BLACKSWAN))
    files = list_image_files(BLACKSWAN)
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(50)]
    assert len(clip.frames) == 50 and clip.indices == list(range(50))
    # The data README says 854x480; the PNGs on disk are 512x512.
    with Image.open(files[0]) as first, Image.open(files[7]) as seventh:
        assert clip.source_size == first.size == (512, 512)
        np.testing.assert_array_equal(clip.frames[7], np.asarray(seventh.convert("RGB")))
    assert clip.fps == 30.0 and not clip.has_audio


def test_folder_selection_uses_folder_fps():
    clip = read_clip(need(BLACKSWAN), start="1s", end="2s", stride=5, folder_fps=10)
    assert clip.indices == [10, 15] and clip.fps == 2.0 and clip.source_fps == 10.0
    assert clip.start_time == pytest.approx(1.0) and clip.end_time == pytest.approx(2.0)


# ----------------------------------------------------------------------------- selection


def test_selection_frames_stride_and_max_frames():
    clip = read_clip(need(REALSHORT), start=5, end=20, stride=3)
    assert clip.indices == [5, 8, 11, 14, 17]
    assert clip.fps == pytest.approx(clip.source_fps / 3)
    assert clip.start_time == pytest.approx(5 / clip.source_fps)
    assert clip.end_time == pytest.approx(20 / clip.source_fps)
    capped = read_clip(REALSHORT, start=5, stride=3, max_frames=2)
    assert capped.indices == [5, 8]
    np.testing.assert_array_equal(capped.frames[1], clip.frames[1])
    assert read_clip(REALSHORT, max_frames=4).indices == [0, 1, 2, 3]


def test_selection_in_seconds():
    clip = read_clip(need(REALSHORT), start="0.5s", end="1.0")
    fps = clip.source_fps  # 30.02: frame i starts at i / fps
    assert clip.indices == [i for i in range(36) if 0.5 <= i / fps < 1.0]
    assert clip.indices[0] == 16 and clip.indices[-1] == 30
    assert read_clip(REALSHORT, start="0:00.5", end=("seconds", 1.0)).indices == clip.indices


def test_stride_halves_fps(cockatoo_2_to_4):
    clip = read_clip(need(COCKATOO), start="2s", end="4s", stride=2)
    assert clip.indices == list(range(40, 80, 2)) and clip.fps == 10.0
    assert clip.end_time - clip.start_time == pytest.approx(len(clip.frames) / clip.fps)
    np.testing.assert_array_equal(clip.frames[1], cockatoo_2_to_4.frames[2])


def test_rotated_video_is_returned_upright(tmp_path):
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:8, :8] = 255  # marker top-left as stored
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(90)  # show rotated 90 degrees counter-clockwise
        for i in range(2):
            frame = av.VideoFrame.from_ndarray(stored, "rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    clip = read_clip(path)
    assert clip.source_size == (32, 64) and clip.frames[0].shape == (64, 32, 3)
    assert clip.frames[0][-8:, :8].mean() > 200 and clip.frames[0][:8, :8].mean() < 50
    info = probe(path)
    assert (info["width"], info["height"]) == (32, 64)


def test_natural_sort_and_image_modes(tmp_path):
    colours = {"f10.png": 10, "f2.png": 2, "f1.png": 1, "F3.jpg": 3}
    for name, value in colours.items():
        Image.new("RGB", (8, 6), (value * 20, 0, 0)).save(tmp_path / name, quality=100)
    Image.new("L", (8, 6), 200).save(tmp_path / "f4.bmp")
    Image.new("RGBA", (8, 6), (1, 2, 3, 128)).save(tmp_path / "f5.webp", lossless=True, exact=True)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".f0.png").write_bytes(b"hidden")
    names = [p.name for p in list_image_files(tmp_path)]
    assert names == ["f1.png", "f2.png", "F3.jpg", "f4.bmp", "f5.webp", "f10.png"]
    with pytest.warns(UserWarning, match="no frame numbered 6, 7, 8, 9; each frame keeps"):
        clip = read_clip(tmp_path)
    assert [int(f[0, 0, 0]) for f in clip.frames[:2]] == [20, 40]
    assert clip.frames[3][0, 0].tolist() == [200, 200, 200]
    assert clip.frames[4][0, 0].tolist() == [1, 2, 3]
    assert int(clip.frames[5][0, 0, 0]) == 200


# ----------------------------------------------------------------------------- positions and sizes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (12, ("frame", 12)),
        ("12", ("frame", 12)),
        ("12f", ("frame", 12)),
        ("2.5", ("seconds", 2.5)),
        ("2.5s", ("seconds", 2.5)),
        ("3s", ("seconds", 3.0)),
        (2.0, ("seconds", 2.0)),
        (".5", ("seconds", 0.5)),
        ("1:02.5", ("seconds", 62.5)),
        ("01:00:03", ("seconds", 3603.0)),
        (("frame", 4), ("frame", 4)),
    ],
)
def test_parse_position(value, expected):
    assert parse_position(value) == expected


@pytest.mark.parametrize("value", ["abc", "-3", "1:75", "2.5x", "", True, -1, float("nan")])
def test_parse_position_rejects(value):
    with pytest.raises(InputError, match="position"):
        parse_position(value)


def test_parse_size():
    assert parse_size("512") == 512
    assert parse_size("768x448") == (768, 448)
    assert parse_size(" 768X448 ") == (768, 448)
    for bad in ("big", "512x", "0", "x448", "-512"):
        with pytest.raises(InputError, match="size"):
            parse_size(bad)


def test_fit_size():
    # Sides are multiples of 8 (the latent grid): 16:9 keeps its ratio exactly at 512 and 256.
    assert fit_size(1280, 720, 512) == (512, 288)
    assert fit_size(1280, 720, 256) == (256, 144)
    assert fit_size(854, 480, 512) == (512, 288)
    assert fit_size(720, 1280, 512) == (288, 512)
    assert fit_size(400, 300, 512) == (512, 384)
    assert fit_size(512, 512, 500) == (504, 504)
    assert fit_size(3000, 100, 512) == (512, 64)  # the short side is at least 64
    assert fit_size(1280, 720, 768) == (768, 432)
    for w, h in [(1280, 720), (854, 480), (400, 300), (333, 777), (1920, 1080)]:
        for size in (256, 512, 768):
            out = fit_size(w, h, size)
            assert all(s % 8 == 0 and s >= 64 for s in out)
            assert max(out) == size
            exact_short = min(w, h) * size / max(w, h)
            assert abs(min(out) - exact_short) <= 4
    assert fit_size(1280, 720, (768, 440)) == (768, 440)
    with pytest.raises(InputError, match="must be multiples of 8"):
        fit_size(1280, 720, (770, 448))


def test_fps_fraction():
    assert fps_fraction(29.97) == Fraction(30000, 1001)
    assert fps_fraction(30000 / 1001 / 2) == Fraction(15000, 1001)
    assert fps_fraction(23.976) == Fraction(24000, 1001)
    assert fps_fraction(25) == 25 and fps_fraction(2) == 2 and fps_fraction(12.5) == Fraction(25, 2)
    assert fps_fraction(45000 / 1499) == Fraction(45000, 1499)
    with pytest.raises(InputError, match="frame rate"):
        fps_fraction(0)


def test_resize_and_side_by_side():
    frames = smooth_frames(2, 90, 60)
    small = resize_frames(frames, (64, 128))
    assert small[0].shape == (128, 64, 3) and small[0].dtype == np.uint8
    assert resize_frames(frames, (90, 60))[0] is not None
    right = smooth_frames(2, 64, 40)
    both = side_by_side(frames, right)
    # left 90x60 scaled to height 40 is 60 wide (even), then the 64-wide right frame
    assert both[0].shape == (40, 124, 3)
    np.testing.assert_array_equal(both[1][:, 60:], right[1])
    with pytest.raises(VideoError, match="counts must match"):
        side_by_side(frames, right[:1])


# ----------------------------------------------------------------------------- writing


@pytest.mark.parametrize("fps", [Fraction(30000, 1001), 29.97, 25.0])
def test_write_mp4_roundtrip(tmp_path, fps):
    frames = smooth_frames(12)
    out = write_video(tmp_path / "out.mp4", frames, fps)
    assert out == tmp_path / "out.mp4"
    info = stream_info(out)
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert info["rate"] == fps_fraction(fps)  # exact: 29.97 is stored as 30000/1001
    decoded, _ = decode_video(out)
    assert len(decoded) == 12
    diff = np.abs(np.stack(decoded).astype(int) - np.stack(frames).astype(int)).mean()
    assert diff < 8, diff
    clip = read_clip(out)
    assert clip.fps == pytest.approx(float(fps_fraction(fps)), abs=1e-9)
    assert os.listdir(tmp_path) == ["out.mp4"]


def test_write_keeps_realshort_rate(tmp_path):
    clip = read_clip(need(REALSHORT), max_frames=6)
    out = write_video(tmp_path / "r.mov", clip.frames, clip.fps)
    assert stream_info(out)["rate"] == Fraction(45000, 1499)


def test_write_odd_size_is_padded(tmp_path):
    frames = smooth_frames(3, 65, 33)
    info = stream_info(write_video(tmp_path / "odd.mp4", frames, 10))
    assert (info["width"], info["height"]) == (66, 34)


def test_write_gif(tmp_path):
    frames = smooth_frames(10, 64, 48)
    out = write_video(tmp_path / "a.gif", frames, 10)
    decoded, stream = decode_video(out)
    assert len(decoded) == 10
    assert float(stream.duration * stream.time_base) == pytest.approx(1.0, abs=0.05)
    assert b"NETSCAPE2.0" in out.read_bytes()  # the looping extension
    diff = np.abs(np.stack(decoded).astype(int) - np.stack(frames).astype(int)).mean()
    assert diff < 8, diff


def test_write_webm(tmp_path):
    frames = smooth_frames(8, 96, 64)
    out = write_video(tmp_path / "a.webm", frames, 25)
    info = stream_info(out)
    assert info["codec"] == "vp9" and info["pix_fmt"] == "yuv420p"
    assert info["rate"] == 25
    decoded, _ = decode_video(out)
    assert len(decoded) == 8
    assert read_clip(out).fps == 25.0


def test_write_png_folder_exact(tmp_path):
    frames = smooth_frames(3, 30, 20)
    out = write_video(tmp_path / "frames", frames, 10)
    assert sorted(os.listdir(out)) == ["000000.png", "000001.png", "000002.png"]
    clip = read_clip(out)
    for a, b in zip(clip.frames, frames, strict=True):
        np.testing.assert_array_equal(a, b)
    # An existing frame dump is replaced as a whole (no stale frames remain).
    write_video(out, frames[:2], 10)
    assert sorted(os.listdir(out)) == ["000000.png", "000001.png"]
    assert sorted(os.listdir(tmp_path)) == ["frames"]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(VideoError, match="already contains other files"):
        write_video(other, frames, 10)
    assert os.listdir(other) == ["notes.txt"]


# ----------------------------------------------------------------------------- audio


def test_audio_copied_for_cockatoo_range(tmp_path, cockatoo_2_to_4):
    clip = cockatoo_2_to_4
    out = write_video(
        tmp_path / "c.mp4",
        clip.frames,
        clip.fps,
        audio_from=clip.source_path,
        audio_start=clip.start_time,
        audio_end=clip.end_time,
    )
    audio = read_audio_info(out)
    video = probe(out)
    assert video["num_frames"] == 40 and video["fps"] == 20.0
    assert audio["codec"] == "aac" and audio["sample_rate"] == 16000
    assert audio["duration"] == pytest.approx(video["duration"], abs=0.1)
    assert video["duration"] == pytest.approx(2.0, abs=0.01)
    assert decode_mono(out)[2] == pytest.approx(0.0, abs=1e-3)  # audio starts with frame 0
    # cockatoo's audio track is digital silence, so its content cannot prove sync; the
    # realshort and generated-clip tests below do.
    assert np.abs(decode_mono(out)[0]).max() < 1e-3


def test_audio_with_stride_keeps_duration(tmp_path):
    clip = read_clip(need(COCKATOO), start="2s", end="4s", stride=2)
    out = write_video(
        tmp_path / "c2.mp4",
        clip.frames,
        clip.fps,
        audio_from=clip.source_path,
        audio_start=clip.start_time,
        audio_end=clip.end_time,
    )
    video = probe(out)
    assert video["fps"] == 10.0 and video["num_frames"] == 20
    assert video["duration"] == pytest.approx(2.0, abs=0.01)
    assert read_audio_info(out)["duration"] == pytest.approx(2.0, abs=0.1)


@pytest.mark.parametrize(("suffix", "codec", "stride"), [(".mp4", "aac", 1), (".webm", "opus", 2)])
def test_audio_segment_is_in_sync_realshort(tmp_path, suffix, codec, stride):
    clip = read_clip(need(REALSHORT), start=12, stride=stride)
    out = write_video(
        tmp_path / f"r{suffix}",
        clip.frames,
        clip.fps,
        audio_from=clip.source_path,
        audio_start=clip.start_time,
        audio_end=clip.end_time,
    )
    assert read_audio_info(out)["codec"] == codec
    source, rate, first = decode_mono(REALSHORT)
    assert first == 0.0
    got, got_rate, got_first = decode_mono(out)
    assert got_first == pytest.approx(0.0, abs=1e-3)
    a, b = round(clip.start_time * rate), round(clip.end_time * rate)
    right = correlation(envelope(source[a:b], rate), envelope(got, got_rate))
    shift = round(0.04 * rate)  # 40 ms early / late: about one frame
    early = correlation(envelope(source[a - shift : b - shift], rate), envelope(got, got_rate))
    late = correlation(envelope(source[a + shift : b + shift], rate), envelope(got, got_rate))
    assert right > 0.95, (right, early, late)
    assert max(early, late) < right - 0.3


def test_audio_segment_after_seek_is_in_sync(tmp_path):
    src = tmp_path / "src.mp4"
    make_av_clip(src)
    clip = read_clip(src, start="3.0s", end="5.0s")
    assert clip.indices == list(range(30, 50))
    out = write_video(
        tmp_path / "out.mkv",
        clip.frames,
        clip.fps,
        audio_from=src,
        audio_start=clip.start_time,
        audio_end=clip.end_time,
    )
    source, rate, _ = decode_mono(src)
    got, got_rate, _ = decode_mono(out)
    assert len(got) / got_rate == pytest.approx(2.0, abs=0.1)
    env_out = envelope(got, got_rate, 0.05)
    right = correlation(envelope(source[3 * rate : 5 * rate], rate, 0.05), env_out)
    wrong = correlation(envelope(source[int(3.1 * rate) : int(5.1 * rate)], rate, 0.05), env_out)
    assert right > 0.9 and wrong < 0.5, (right, wrong)


def test_audio_info():
    info = read_audio_info(need(COCKATOO))
    assert info["sample_rate"] == 16000 and info["channels"] == 1
    assert info["duration"] == pytest.approx(13.9, abs=0.05)
    assert read_audio_info(need(G1)) is None


def test_audio_ignored_where_container_has_none(tmp_path):
    frames = smooth_frames(4, 32, 32)
    out = write_video(tmp_path / "a.gif", frames, 10, audio_from=need(REALSHORT))
    assert read_audio_info(out) is None
    out = write_video(tmp_path / "n.mp4", frames, 10, audio_from=need(G1))  # G1: no audio
    assert read_audio_info(out) is None and len(decode_video(out)[0]) == 4


# ----------------------------------------------------------------------------- atomic writes


def failing_frames(n_good: int):
    frames = smooth_frames(n_good, 32, 32)
    yield from frames
    raise RuntimeError("renderer crashed")


@pytest.mark.parametrize("name", ["x.mp4", "x.webm", "x.gif", "frames"])
def test_failure_mid_write_leaves_nothing(tmp_path, name):
    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_video(tmp_path / name, failing_frames(3), 10, audio_from=None)
    assert os.listdir(tmp_path) == []


def test_failure_keeps_previous_output(tmp_path):
    target = tmp_path / "keep.mp4"
    target.write_bytes(b"previous result")
    bad = smooth_frames(3, 32, 32) + [np.zeros((16, 16, 3), np.uint8)]
    with pytest.raises(VideoError, match="same size"):
        write_video(target, bad, 10)
    assert target.read_bytes() == b"previous result"
    assert os.listdir(tmp_path) == ["keep.mp4"]


def test_unwritable_output(tmp_path):
    frames = smooth_frames(2, 32, 32)
    missing = tmp_path / "no" / "such" / "dir" / "out.mp4"
    with pytest.raises(VideoError, match="cannot write|Cannot write") as err:
        write_video(missing, frames, 10)
    assert "does not exist" in str(err.value)
    assert os.listdir(tmp_path) == []
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    with pytest.raises(VideoError, match="Cannot write"):
        write_video(afile / "out.mp4", frames, 10)
    if os.geteuid() != 0:  # root ignores permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(VideoError, match="Cannot write"):
            write_video(locked / "out.mp4", frames, 10)
        assert os.listdir(locked) == []


# ----------------------------------------------------------------------------- bad inputs


def test_missing_path(tmp_path):
    with pytest.raises(VideoError, match="does not exist"):
        read_clip(tmp_path / "nope.mp4")
    with pytest.raises(VideoError, match="does not exist"):
        probe(tmp_path / "nope.mp4")


def test_folder_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("no frames here")
    with pytest.raises(VideoError, match="contains no images"):
        read_clip(tmp_path)


def test_folder_with_mixed_sizes_and_broken_image(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "1.png")
    Image.new("RGB", (8, 6)).save(tmp_path / "2.png")
    with pytest.raises(VideoError, match="same size"):
        read_clip(tmp_path)
    (tmp_path / "2.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(VideoError, match="Cannot read the image"):
        read_clip(tmp_path)


def test_text_file_named_mp4(tmp_path):
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video\n" * 20)
    with pytest.raises(VideoError, match="is not a video FFmpeg can read"):
        read_clip(fake)
    with pytest.raises(VideoError, match="is not a video FFmpeg can read"):
        probe(fake)


@pytest.mark.parametrize("source", [COCKATOO, REALSHORT], ids=["cockatoo", "realshort"])
def test_truncated_copy_of_real_mp4(tmp_path, source):
    # Both keep their index (moov) at the end, so a truncated copy cannot be opened at all.
    data = need(source).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match="is not a video FFmpeg can read"):
        read_clip(cut)
    with pytest.raises(VideoError, match="is not a video FFmpeg can read"):
        probe(cut)


def test_truncated_streamable_mp4_returns_decodable_frames(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(30)]
    full = write_video(tmp_path / "full.mp4", frames, 10)  # index at the front (faststart)
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.warns(UserWarning, match="damaged or truncated"):
        clip = read_clip(cut)
    assert 5 < len(clip.frames) < 30
    reference = read_clip(full, max_frames=3)
    np.testing.assert_array_equal(clip.frames[2], reference.frames[2])
    cut.write_bytes(data[: int(len(data) * 0.02)] + b"\x00" * 200)
    with pytest.raises(VideoError):
        read_clip(cut)


def test_video_without_frames(tmp_path):
    empty = tmp_path / "empty.mkv"
    with av.open(str(empty), "w", format="matroska") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height = 64, 64
        sound = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((2, 4096), np.float32), "fltp", "stereo")
        frame.sample_rate, frame.pts = 16000, 0
        for packet in [*sound.encode(frame), *sound.encode(None)]:
            container.mux(packet)
    with pytest.raises(VideoError, match="has no video frames"):
        read_clip(empty)
    audio_only = tmp_path / "sound.m4a"
    with av.open(str(audio_only), "w", format="mp4") as container:
        sound = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((2, 4096), np.float32), "fltp", "stereo")
        frame.sample_rate, frame.pts = 16000, 0
        for packet in [*sound.encode(frame), *sound.encode(None)]:
            container.mux(packet)
    with pytest.raises(VideoError, match="has no video stream"):
        read_clip(audio_only)


def test_range_errors():
    with pytest.raises(
        VideoError, match=r"--start frame 36 is beyond the clip's 36 frames / 1.20 s"
    ):
        read_clip(need(REALSHORT), start=36)
    with pytest.raises(VideoError, match=r"--start 5 s is beyond the clip's 36 frames"):
        read_clip(REALSHORT, start="5s")
    with pytest.raises(
        VideoError, match=r"--start \(frame 10\) must come before --end \(frame 10\)"
    ):
        read_clip(REALSHORT, start=10, end=10)
    with pytest.raises(VideoError, match="must come before"):
        read_clip(REALSHORT, start="1s", end=20)
    with pytest.raises(VideoError, match="beyond the clip's 50 frames"):
        read_clip(need(BLACKSWAN), start=50)
    # an end past the clip is clamped, not an error
    assert read_clip(REALSHORT, start=34, end=1000).indices == [34, 35]


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        ({"stride": 0}, "--stride must be a whole number of at least 1"),
        ({"stride": 1.5}, "--stride must be"),
        ({"max_frames": 0}, "--max-frames must be a whole number of at least 1"),
        ({"start": "soon"}, "Invalid position"),
    ],
)
def test_bad_options(kwargs, phrase):
    with pytest.raises(VideoError, match=phrase):
        read_clip(need(G1), **kwargs)


def test_bad_write_arguments(tmp_path):
    frames = smooth_frames(2, 32, 32)
    with pytest.raises(VideoError, match="unknown output type"):
        write_video(tmp_path / "x.xyz", frames, 10)
    with pytest.raises(VideoError, match="no frames to write"):
        write_video(tmp_path / "x.mp4", [], 10)
    with pytest.raises(VideoError, match="uint8"):
        write_video(tmp_path / "x.mp4", [f.astype(np.float32) for f in frames], 10)
    with pytest.raises(VideoError, match="frame rate"):
        write_video(tmp_path / "x.mp4", frames, 0)
    with pytest.raises(VideoError, match="does not exist"):
        write_video(tmp_path / "x.mp4", frames, 10, audio_from=tmp_path / "none.mp4")
    assert os.listdir(tmp_path) == []


def test_errors_are_one_sentence(tmp_path):
    """The CLI prints the message as is: one line, ending with a full stop."""
    messages = []
    for call in (
        lambda: read_clip(tmp_path / "nope.mp4"),
        lambda: read_clip(tmp_path),
        lambda: fit_size(10, 10, (65, 64)),
        lambda: parse_size("big"),
    ):
        with pytest.raises(VideoError) as err:
            call()
        messages.append(str(err.value))
    for message in messages:
        assert "\n" not in message and message.endswith("."), message


def test_no_raw_warnings_from_clean_reads():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_clip(need(G1))
