"""Every kind of edit on real-footage traits (`trait_corpus`): one output frame per input
frame, with the input's timing, displayed aspect and sound.

The corpus is written once per run (seconds) with PyAV. Each trait's clip goes through a
plain edit, a masked edit, a ControlNet edit, ``--frame-batch 3`` (in process, through the
job API the CLI calls), two local workers, a batch row and the page's ``/edit`` endpoint
(those marked `integration`: spawned processes, a server). Identical decoded frames share
their depth and inversion exactly; a file that changes between two readings is refused.
"""

from __future__ import annotations

import os
import shutil
import signal
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from trait_corpus import TRAITS, Trait, write_video

from pix2video import EditSettings
from pix2video.errors import InputError
from pix2video.job import edit_clip
from pix2video.media import open_clip, resize_frames

STEPS, SIZE = 1, 128
IDS = [Path(t.file).stem for t in TRAITS]


@pytest.fixture(scope="module")
def half_mask(tmp_path_factory) -> Path:
    """White on the right half: the edit may change only that; the left half is the source's."""
    mask = np.zeros((96, 160), np.uint8)
    mask[:, 80:] = 255
    path = tmp_path_factory.mktemp("mask") / "right-half.png"
    Image.fromarray(mask).save(path)
    return path


def settings(source: Path, output: Path, **changes) -> EditSettings:
    values = dict(
        input=str(source), prompt="a bronze statue", source_prompt="a scene", output=str(output),
        model="tiny", size=SIZE, steps=STEPS, cache_dir=str(output.parent / "cache"),
    )  # fmt: skip
    values.update(changes)
    return EditSettings(**values)


def output_timing(path: Path) -> tuple[list[float], float]:
    """(each frame's time from the first, seconds of audio) of a written video."""
    with av.open(str(path)) as container:
        times = [frame.time for frame in container.decode(video=0)]
    with av.open(str(path)) as container:
        audio = 0.0
        for frame in container.decode(audio=0) if container.streams.audio else ():
            audio = max(audio, frame.time + frame.samples / frame.sample_rate)
    return [t - times[0] for t in times], audio


def read_frames(path: Path) -> list[np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the job's warnings are checked where they are said
        return [frame for _, frame in open_clip(path, None, None, 1, None)]


def check_output(trait: Trait, path: Path) -> list[np.ndarray]:
    """The output keeps the trait's frame count, timing, displayed aspect and audio."""
    e = trait.expected
    frames = read_frames(path)
    assert len(frames) == e.frames, f"{trait.name}: {len(frames)} frames, not {e.frames}"
    height, width = frames[0].shape[:2]
    w, h = e.display_size
    assert (width > height) == (w > h), f"{trait.name}: {width}x{height} for {w}x{h}"
    assert abs(height - width * h / w) <= 8, f"{trait.name}: {width}x{height} for {w}x{h}"
    times, audio = output_timing(path)
    expected = e.times or [i / e.fps for i in range(e.frames)]
    assert np.allclose(times, expected, atol=1e-3), f"{trait.name}: times {times}"
    if e.audio:  # kept, and cut where the video ends
        end = expected[-1] + (expected[-1] / (e.frames - 1) if e.times else 1 / e.fps)
        assert end - 0.07 <= audio <= end + 0.07, f"{trait.name}: {audio} s of audio"
    else:
        assert audio == 0.0
    return frames


def source_frames(clip: Path, size: tuple[int, int]) -> list[np.ndarray]:
    return [resize_frames([f], size)[0] for f in read_frames(clip)]


# --------------------------------------------------------------------------- in process


@pytest.mark.parametrize("trait", TRAITS, ids=IDS)
def test_plain_edit_keeps_count_timing_aspect_and_audio(trait, corpus, pipelines, tmp_path):
    clip = trait.write(corpus)
    latents = tmp_path / "latents"
    s = settings(clip, tmp_path / "out.mp4", save_latents=str(latents))
    warned: list[str] = []
    last: dict[str, tuple[int, int]] = {}
    result = edit_clip(
        s, lambda stage, done, total: last.update({stage: (done, total)}),
        pipelines=pipelines, warn=warned.append,
    )  # fmt: skip
    n = trait.expected.frames
    assert last["depth"] == last["inversion"] == (n, n)  # repeats counted as served
    check_output(trait, tmp_path / "out.mp4")
    if trait.expected.warning:  # what the output leaves out is said once
        assert [w for w in warned if trait.expected.warning in w] == warned[:1], warned
    else:
        assert not warned, warned
    assert result.frames == trait.expected.frames
    assert result.uneven_timing == (trait.expected.times is not None)
    # identical decoded frames: one depth map and one inversion serve all of them, exactly
    assert result.frames_reused == trait.expected.repeats
    assert (
        result.depth_computed == result.inversion_computed == result.frames - result.frames_reused
    )
    inverted = [np.load(p) for p in sorted((latents / "inverted").iterdir())]
    distinct = {a.tobytes() for a in inverted}
    assert len(distinct) == result.frames - trait.expected.repeats


@pytest.mark.parametrize("trait", TRAITS, ids=IDS)
def test_masked_edit_keeps_the_background(trait, corpus, pipelines, half_mask, tmp_path):
    clip = trait.write(corpus)
    out = tmp_path / "out.mp4"
    s = settings(clip, out, mask=str(half_mask), mask_feather=0, mask_dilate=0)
    edit_clip(s, pipelines=pipelines)
    edited = check_output(trait, out)
    height, width = edited[0].shape[:2]
    for source, frame in zip(source_frames(clip, (width, height)), edited, strict=True):
        left = slice(0, width // 2 - 8)  # the source's pixels (up to H.264's rounding)
        right = slice(width // 2 + 8, width)
        kept = np.abs(frame[:, left].astype(int) - source[:, left]).mean()
        changed = np.abs(frame[:, right].astype(int) - source[:, right]).mean()
        assert kept < 4, f"{trait.name}: the background moved by {kept:.1f} grey levels"
        assert changed > 4 * kept + 1, f"{trait.name}: the edit changed {changed:.1f}"


@pytest.mark.parametrize("trait", TRAITS, ids=IDS)
def test_controlnet_edit(trait, corpus, pipelines, tiny_sd15, tmp_path):
    clip = trait.write(corpus)
    s = settings(
        clip, tmp_path / "out.mp4", model=str(tiny_sd15.model),
        controlnet=(str(tiny_sd15.controlnets[0]),), control=("canny",),
    )  # fmt: skip
    result = edit_clip(s, pipelines=pipelines)
    check_output(trait, tmp_path / "out.mp4")
    assert result.frames_reused == trait.expected.repeats


@pytest.mark.parametrize("trait", TRAITS, ids=IDS)
def test_frame_batch_3(trait, corpus, pipelines, tmp_path):
    clip = trait.write(corpus)
    result = edit_clip(settings(clip, tmp_path / "out.mp4", frame_batch=3), pipelines=pipelines)
    check_output(trait, tmp_path / "out.mp4")
    assert result.frame_batch == min(3, trait.expected.frames)


def test_a_file_that_changes_between_two_readings_is_refused(corpus, pipelines, tmp_path):
    """The first pass counts 8 frames; before the second, the file is cut to 5."""
    clip = tmp_path / "growing.mp4"
    shutil.copy(corpus / "black_lead.mp4", clip)
    frames = read_frames(clip)

    replaced = []

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "depth" and not replaced:
            shorter = tmp_path / "shorter.mp4"
            write_video(shorter, frames[:5])
            os.replace(shorter, clip)
            replaced.append(True)

    with pytest.raises(InputError, match="fewer frames on a second reading"):
        edit_clip(
            settings(clip, tmp_path / "out.mp4", no_cache=True), progress, pipelines=pipelines
        )
    assert replaced and not (tmp_path / "out.mp4").exists()


# --------------------------------------------------------------------------- other processes


@pytest.mark.integration
@pytest.mark.parametrize("trait", TRAITS, ids=IDS)
def test_two_local_workers(trait, corpus, tmp_path):
    clip = trait.write(corpus)
    result = edit_clip(settings(clip, tmp_path / "out.mp4", workers=2))
    check_output(trait, tmp_path / "out.mp4")
    assert result.workers == min(2, trait.expected.frames)
    # each worker shares the work of identical frames among its own frames
    assert result.frames_reused <= trait.expected.repeats


@pytest.mark.integration
def test_every_trait_as_a_batch_row(corpus, pipelines, tmp_path):
    from pix2video.batch import LocalBackend, read_batch, run_batch

    rows = [
        f"  - {{input: {trait.write(corpus)}, output: {Path(trait.file).stem}.mp4}}"
        for trait in TRAITS
    ]
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(
        f"defaults: {{model: tiny, size: {SIZE}, steps: {STEPS}, prompt: a bronze statue, "
        f"source_prompt: a scene, cache_dir: {tmp_path / 'cache'}}}\njobs:\n" + "\n".join(rows)
    )
    outcome = run_batch(read_batch(jobs, tmp_path / "out"), LocalBackend(pipelines))
    assert outcome.exit_code == 0 and outcome.counts["ok"] == len(TRAITS), outcome.records
    for trait in TRAITS:
        check_output(trait, tmp_path / "out" / f"{Path(trait.file).stem}.mp4")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A `pix2video ui` server (as in test_ui) and a gradio_client on it."""
    gradio_client = pytest.importorskip("gradio_client", reason="the test extra installs gradio")
    from test_ui import Server, free_port

    tmp = tmp_path_factory.mktemp("corpus-ui")
    args = ["--model", "tiny", "--port", str(free_port()), "--cache-dir", str(tmp / "cache")]
    server = Server.start(args, tmp)
    client = gradio_client.Client(server.url, verbose=False, download_files=str(tmp / "dl"))
    yield server, client
    server.stop(signal.SIGTERM)


UPLOADABLE = [t for t in TRAITS if not t.file.endswith("gap")]  # a page takes files, not folders


@pytest.mark.integration
@pytest.mark.parametrize("trait", UPLOADABLE, ids=[Path(t.file).stem for t in UPLOADABLE])
def test_the_pages_edit_endpoint(trait, corpus, page, tmp_path):
    from gradio_client import handle_file

    server, client = page
    video, status = client.predict(
        video=handle_file(str(trait.write(corpus))), prompt="a bronze statue",
        source_prompt="a scene", steps=STEPS, size=str(SIZE), api_name="/edit",
    )  # fmt: skip
    path = video["video"] if isinstance(video, dict) else video
    check_output(trait, Path(path))
    assert status.startswith(f"Edited {trait.expected.frames} frame"), status


# --------------------------------------------------------------------------- timing rules


def test_uneven_times_are_kept_and_even_ones_are_not():
    from pix2video.media.timing import uneven_times

    assert uneven_times([0.0, 0.04, 0.08, 0.12], 25) is None  # on the grid
    assert uneven_times([1.4, 1.44, 1.48], 25) is None  # a start time is not unevenness
    assert uneven_times([0.0, 0.0401, 0.0799], 25) is None  # millisecond jitter
    assert uneven_times([0.0, 0.04, 0.2], 25) == pytest.approx([0.0, 0.04, 0.2])
    assert uneven_times([0.0, None, 0.2], 25) is None  # a missing time: not trusted
    assert uneven_times([0.0, 0.2, 0.1], 25) is None  # not increasing: not trusted


def test_a_folder_of_every_fifth_frame_has_no_gap(tmp_path):
    from trait_corpus import W, frames_of, write_folder

    write_folder(tmp_path / "f", frames_of([0, 1, 2], W, 96), [0, 5, 10])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning of a gap
        reader = open_clip(tmp_path / "f", None, None, 1, None)
    assert reader.frame_times is None and reader.fps == 30
    write_folder(tmp_path / "g", frames_of([0, 1, 2], W, 96), [0, 5, 15])
    with pytest.warns(UserWarning, match="no frame numbered 10;"):
        reader = open_clip(tmp_path / "g", None, None, 1, None)
    assert reader.frame_times == pytest.approx([0, 1 / 30, 3 / 30])
