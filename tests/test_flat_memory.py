"""Flat memory for local edits, ControlNet edits and the transformer backbones' control
latents on long clips (`job.frame_store`).

A local edit's inversion trajectories and a ControlNet edit's control images are needed for
every frame at every step; they wait on disk and are read back a step and a frame at a
time. The job counts decoded frames (`peak_frames_held`) and bytes of conditioning and
trajectory rows (`peak_bytes_held`) alive at once: a 20-frame clip must hold no more than
a 6-frame one (and 20 frames' rows are well over the bounds asserted). Tiny models, 64 px, 1-2 steps.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import png_frames
from test_job import generated_clip

from pix2video import EditSettings, edit_clip
from pix2video.core.edit_loop import trajectory_rows
from pix2video.errors import EditCancelled
from pix2video.job.frame_store import BytesTracker, FrameArrays, Scratch
from pix2video.media import fit_size, read_clip, resize_frames
from pix2video.pipelines.masks import binarize, mask_alpha


@pytest.fixture
def scratch_root(tmp_path, monkeypatch) -> Path:
    """The system's temporary folder for this test, to see what a job leaves there."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def box_mask(path: Path) -> Path:
    mask = np.zeros((64, 96), np.uint8)
    mask[16:48, 24:72] = 255
    Image.fromarray(mask).save(path)
    return path


def masked_settings(tmp_path: Path, clip: Path, name: str, **changes) -> EditSettings:
    base = EditSettings(
        input=clip,
        prompt="a glass sculpture",
        output=tmp_path / name,
        source_prompt="coloured stripes",
        model="tiny",
        size="64",
        dtype="float32",  # compared with float32 pipelines
        steps=2,
        mask=box_mask(tmp_path / "box.png"),
        cache_dir=tmp_path / "cache",
    )
    return base.replace(**changes)


def controlnet_settings(tmp_path: Path, clip: Path, name: str, tiny_sd15, **changes):
    base = EditSettings(
        input=clip,
        prompt="a glass sculpture",
        output=tmp_path / name,
        source_prompt="coloured stripes",
        model=str(tiny_sd15.model),
        controlnet=tuple(str(p) for p in tiny_sd15.controlnets),
        control=("canny", "canny"),
        size="64",
        steps=1,
        dtype="float32",  # compared with float32 pipelines
        cache_dir=tmp_path / "cache",
    )
    return base.replace(**changes)


def held(run) -> dict[int, tuple[int, int]]:
    """(peak frames held, peak bytes held) of a 6- and a 20-frame edit."""
    peaks = {}
    for frames in (6, 20):
        result = run(frames)
        assert result.frames == frames
        peaks[frames] = (result.peak_frames_held, result.peak_bytes_held)
    return peaks


def test_masked_edit_of_20_frames_holds_no_more_than_of_6(tmp_path, pipelines, scratch_root):
    def run(frames: int):
        clip = generated_clip(tmp_path / f"clip{frames}.mp4", frames)
        s = masked_settings(tmp_path, clip, f"out{frames}.mp4", no_cache=True)
        return edit_clip(s, pipelines=pipelines)

    peaks = held(run)
    # one frame's trajectory (2 steps x 4 x 8 x 12 float32) is 3 KiB; a few are in flight
    assert peaks[6] == peaks[20] and 0 < peaks[20][1] < 16 * 2**10
    assert list(scratch_root.iterdir()) == []  # the per-frame files went with the job


def test_controlnet_edit_of_20_frames_holds_no_more_than_of_6(
    tmp_path, pipelines, tiny_sd15, scratch_root
):
    def run(frames: int):
        clip = generated_clip(tmp_path / f"clip{frames}.mp4", frames)
        s = controlnet_settings(tmp_path, clip, f"out{frames}.mp4", tiny_sd15, no_cache=True)
        return edit_clip(s, pipelines=pipelines)

    peaks = held(run)
    # one frame's two control images, as the model reads them (6 x 64 x 96 float32): 144 KiB
    assert peaks[6] == peaks[20] and 0 < peaks[20][1] <= 2 * 6 * 64 * 96 * 4
    assert list(scratch_root.iterdir()) == []


@pytest.mark.bitwise
def test_masked_edit_from_disk_equals_the_in_memory_pipeline(tmp_path, pipelines):
    """The job (trajectories and depth read back from disk, a step at a time) and
    `Pix2VideoPipeline.__call__` (every trajectory in one tensor) give the same latents and
    frames: same kernels on the same values."""
    clip = generated_clip(tmp_path / "clip.mp4", 3)
    s = masked_settings(tmp_path, clip, "out", save_latents=tmp_path / "latents")
    edit_clip(s, pipelines=pipelines)
    job_final = [np.load(f) for f in sorted((tmp_path / "latents" / "final").glob("*.npy"))]

    frames = read_clip(clip)
    size = fit_size(*frames.source_size, 64)
    small = resize_frames(frames.frames, size)
    alpha = mask_alpha(
        binarize(np.asarray(Image.open(s.mask)), size), s.mask_dilate, s.mask_feather
    )
    pipe = pipelines.get("tiny", "cpu", "float32")
    out = pipe(small, s.prompt, s.source_prompt, num_inference_steps=2, masks=[alpha] * 3)
    assert len(job_final) == 3
    assert np.array_equal(np.concatenate(job_final), out.final_latents.numpy())
    for a, b in zip(png_frames(tmp_path / "out"), out.frames, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.bitwise
def test_controlnet_edit_with_cache_without_cache_and_resumed_agree(
    tmp_path, pipelines, tiny_sd15, scratch_root
):
    """Control images stored as uint8 (in the cache, or a scratch folder without it) give
    bitwise the edit of float rows; a cancelled edit resumes to the same frames."""
    clip = generated_clip(tmp_path / "clip.mp4", 4)
    steps = {"steps": 3, "checkpoint_interval": 0.0}
    s = controlnet_settings(tmp_path, clip, "plain", tiny_sd15, no_cache=True, **steps)
    edit_clip(s, pipelines=pipelines)
    assert list(scratch_root.iterdir()) == []

    cancel = threading.Event()

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "editing" and done > 4:  # after the first step's checkpoint
            cancel.set()

    s = controlnet_settings(tmp_path, clip, "resumed", tiny_sd15, **steps)
    with pytest.raises(EditCancelled):
        edit_clip(s, progress=progress, cancel=cancel, pipelines=pipelines)
    assert list((tmp_path / "cache" / "v1" / "depth").glob("*.npy"))
    result = edit_clip(s, pipelines=pipelines)
    assert result.editing == "resumed" and result.depth_cached == 4
    plain, resumed = png_frames(tmp_path / "plain"), png_frames(tmp_path / "resumed")
    assert len(plain) == 4
    assert all(np.array_equal(a, b) for a, b in zip(plain, resumed, strict=True))


def test_frame_arrays_read_rows_back_from_the_cache_or_the_scratch_folder(tmp_path):
    from pix2video.job.cache import Cache

    warnings: list[str] = []
    scratch = Scratch()
    for cache in (Cache(tmp_path / "cache"), Cache(None)):
        arrays = FrameArrays("trajectory", (3, 2, 2), np.float32, cache, scratch, warnings.append)
        values = {k: np.random.default_rng(i).random((3, 2, 2), np.float32) for i, k in
                  enumerate("abc")}  # fmt: skip
        for key, value in values.items():
            arrays.put(key, value)
        assert np.array_equal(
            arrays.read(["c", "a"], row=1), np.stack([values["c"][1], values["a"][1]])
        )
        assert np.array_equal(arrays.read(["b"]), values["b"][None])
        assert "b" in arrays and "d" not in arrays
    # a new store finds what the cache holds (a later edit reuses it); not the scratch's
    again = FrameArrays(
        "trajectory", (3, 2, 2), np.float32, Cache(tmp_path / "cache"), Scratch(), warnings.append
    )
    assert "a" in again
    other_shape = FrameArrays(
        "trajectory", (2, 2, 2), np.float32, Cache(tmp_path / "cache"), Scratch(), warnings.append
    )
    assert "a" not in other_shape  # another number of steps: a miss, not a wrong read
    folder = scratch.path
    assert (folder / "trajectory").is_dir()
    scratch.close()
    assert not folder.exists() and warnings == []


def test_bytes_tracker_counts_arrays_alive_at_once():
    tracker = BytesTracker()
    a = tracker.track(np.zeros(100, np.uint8))
    b = tracker.track(torch.zeros(10))
    assert tracker.peak == 140
    del a, b
    tracker.track(np.zeros(50, np.uint8))
    assert tracker.peak == 140


def test_in_memory_trajectories_serve_a_step_of_several_frames():
    paths = torch.arange(2 * 3 * 4 * 1 * 1, dtype=torch.float32).reshape(2, 3, 4, 1, 1)
    rows = trajectory_rows(paths)([1, 0], 2)
    assert torch.equal(rows, torch.stack([paths[1, 2], paths[0, 2]]))


@pytest.mark.bitwise
def test_frame_batched_masked_edit_reads_each_chunks_source_latents_from_disk(tmp_path, pipelines):
    """Chunks of 3 frames per UNet call: outside the mask every latent is still its own
    frame's source (read for the whole chunk at once), bitwise as one frame at a time."""
    from pix2video.pipelines.masks import latent_mask

    clip = generated_clip(tmp_path / "clip.mp4", 4)
    finals = {}
    for batch in (1, 3):
        s = masked_settings(
            tmp_path, clip, f"out{batch}", frame_batch=batch, no_cache=True,
            save_latents=tmp_path / f"latents{batch}", mask_dilate=0, mask_feather=0,
        )  # fmt: skip
        result = edit_clip(s, pipelines=pipelines)
        assert result.frame_batch == batch
        files = sorted((tmp_path / f"latents{batch}" / "final").glob("*.npy"))
        finals[batch] = np.concatenate([np.load(f) for f in files])
    size = (finals[1].shape[3] * 8, finals[1].shape[2] * 8)
    alpha = mask_alpha(
        binarize(np.asarray(Image.open(s.mask)), size), s.mask_dilate, s.mask_feather
    )
    outside = ~latent_mask(alpha, 8)
    assert outside.any() and (~outside).any()
    assert np.array_equal(finals[1][:, :, outside], finals[3][:, :, outside])
    assert np.abs(finals[1] - finals[3]).max() < 1e-2  # inside: float reassociation only


@pytest.fixture(scope="module")
def tiny_transformers(tmp_path_factory) -> dict[str, dict]:
    """The settings of a tiny SD3.5 + SD3 ControlNet and a tiny FLUX.1 Canny/Depth [dev]."""
    from tiny_flux import build_flux_control
    from tiny_sd3 import build_sd3, build_sd3_controlnet

    root = tmp_path_factory.mktemp("tiny-transformers")
    return {
        "SD3.5 + ControlNet": dict(
            model=str(build_sd3(root / "sd3")),
            controlnet=(str(build_sd3_controlnet(root / "sd3-controlnet", seed=1)),),
            control=("canny",),
        ),
        "FLUX.1 Canny": dict(model=str(build_flux_control(root / "flux")), control=("canny",)),
    }


@pytest.mark.parametrize("backbone", ["SD3.5 + ControlNet", "FLUX.1 Canny"])
def test_transformer_edit_of_20_frames_holds_no_more_than_of_6(
    tmp_path, pipelines, tiny_transformers, scratch_root, backbone
):
    """The transformer backbones' per-frame control latents wait on disk like the UNets'
    control images: a 20-frame edit holds what a 6-frame one does."""

    def run(frames: int):
        clip = generated_clip(tmp_path / f"clip{frames}.mp4", frames)
        s = EditSettings(
            input=clip, prompt="a glass sculpture", source_prompt="coloured stripes",
            output=tmp_path / f"out{frames}.mp4", size="64", steps=1, dtype="float32",
            no_cache=True, **tiny_transformers[backbone],
        )  # fmt: skip
        return edit_clip(s, pipelines=pipelines)

    peaks = held(run)
    # measured: 4 KiB (SD3) and 1 KiB (FLUX) of control latents alive at most, a frame's rows
    assert peaks[6] == peaks[20] and 0 < peaks[20][1] <= 4 * 2**10
    assert list(scratch_root.iterdir()) == []
