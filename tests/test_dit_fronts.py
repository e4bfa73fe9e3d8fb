"""SD3/SD3.5 and FLUX.1 Depth through the front ends the UNet backbones have: messy footage
(`trait_corpus`), a local (masked) edit, an interrupted edit resumed, and a batch row.

The tiny SD3 (with a canny SD3 ControlNet) and the tiny FLUX Depth [dev] (with a tiny Depth
Anything) are saved to folders, as a user's models are, and run through the job API the CLI
and the page call (`edit_clip`) and the batch runner (`run_batch`, local backend). Each
trait clip keeps its frame count, timing, displayed aspect and audio (`check_output`), and
identical frames share their conditioning and inversion as on the UNet backbones.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from support import png_frames
from test_trait_corpus import check_output, source_frames
from trait_corpus import TRAITS

from pix2video import EditSettings
from pix2video.errors import EditCancelled
from pix2video.job import edit_clip

STEPS, SIZE = 2, 128  # SD3/FLUX frame sides are multiples of 16: 128 x 80 for the corpus
SUBSET = ("every_third.avi", "black_lead.mp4", "vfr.mp4", "rotated.mp4", "odd_size.mp4")
"""Repeated frames, black frames, a variable frame rate, a rotation matrix, an odd size: the
traits that reach the backbone (the container traits end at decoding, the same for all)."""
TRAIT_SUBSET = [t for t in TRAITS if t.file in SUBSET]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> SimpleNamespace:
    """The tiny SD3 + canny SD3 ControlNet and the tiny FLUX Depth + Depth Anything folders."""
    from tiny_flux import build_flux_control
    from tiny_sd3 import build_sd3, build_sd3_controlnet
    from tiny_sd15 import build_depth_anything

    root = tmp_path_factory.mktemp("dit-models")
    return SimpleNamespace(
        sd3=build_sd3(root / "sd3"),
        controlnet=build_sd3_controlnet(root / "controlnet", seed=1),
        flux=build_flux_control(root / "flux-depth"),
        depth_model=build_depth_anything(root / "depth-anything"),
    )


def backbone_values(models, backbone: str) -> dict:
    """The settings that pick `backbone`: SD3 with its canny ControlNet, FLUX with `--control
    depth` read by the model itself."""
    if backbone == "sd3":
        return dict(model=str(models.sd3), controlnet=(str(models.controlnet),), control=("canny",))
    return dict(model=str(models.flux), control=("depth",), depth_model=str(models.depth_model))


def settings(models, backbone: str, source: Path, output: Path, **changes) -> EditSettings:
    values = dict(
        input=str(source), prompt="a red sports car", source_prompt="a swan on a lake",
        output=str(output), size=SIZE, steps=STEPS, dtype="float32",
        cache_dir=str(output.parent / "cache"), **backbone_values(models, backbone),
    )  # fmt: skip
    values.update(changes)
    return EditSettings(**values)


BACKBONES = ["sd3", "flux"]


# --------------------------------------------------------------------------- messy footage
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("trait", TRAIT_SUBSET, ids=[Path(t.file).stem for t in TRAIT_SUBSET])
def test_trait_clip_keeps_count_timing_aspect_and_shares_repeats(
    trait, backbone, models, corpus, pipelines, tmp_path
):
    clip = trait.write(corpus)
    s = settings(models, backbone, clip, tmp_path / "out.mp4")
    result = edit_clip(s, pipelines=pipelines)
    check_output(trait, tmp_path / "out.mp4")
    assert result.frames == trait.expected.frames
    assert result.frames_reused == trait.expected.repeats
    assert result.inversion_computed == result.frames - result.frames_reused


# --------------------------------------------------------------------------- local edits
@pytest.mark.parametrize("backbone", BACKBONES)
def test_masked_edit_keeps_the_background(backbone, models, corpus, pipelines, tmp_path):
    """White on the right half: the left half stays the source's (up to H.264's rounding)."""
    from PIL import Image

    (trait,) = [t for t in TRAITS if t.file == "black_lead.mp4"]
    clip = trait.write(corpus)
    mask = np.zeros((80, 128), np.uint8)
    mask[:, 64:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out.mp4"
    mask_values = dict(mask=str(tmp_path / "mask.png"), mask_feather=0, mask_dilate=0)
    edit_clip(settings(models, backbone, clip, out, **mask_values), pipelines=pipelines)
    edited = check_output(trait, out)
    height, width = edited[0].shape[:2]
    kept_gaps, changed_gaps = [], []
    for source, frame in zip(source_frames(clip, (width, height)), edited, strict=True):
        left, right = slice(0, width // 2 - 16), slice(width // 2 + 16, width)
        kept_gaps.append(np.abs(frame[:, left].astype(int) - source[:, left]).mean())
        changed_gaps.append(np.abs(frame[:, right].astype(int) - source[:, right]).mean())
    assert max(kept_gaps) < 4, kept_gaps
    assert np.mean(changed_gaps) > 4 * max(kept_gaps) + 1, changed_gaps


# --------------------------------------------------------------------------- resume
@pytest.mark.bitwise
@pytest.mark.parametrize("backbone", BACKBONES)
def test_cancelled_edit_resumes_from_its_checkpoint_to_the_same_frames(
    backbone, models, corpus, pipelines, tmp_path
):
    """Cancelled after editing step 1 of 3 (a checkpoint after every step), the rerun
    inverts nothing, edits only the steps left and writes what an uninterrupted edit does."""
    (trait,) = [t for t in TRAITS if t.file == "rotated.mp4"]
    clip, n = trait.write(corpus), trait.expected.frames
    whole = settings(
        models, backbone, clip, tmp_path / "whole", steps=3, cache_dir=str(tmp_path / "c0")
    )
    reference = edit_clip(whole, pipelines=pipelines)
    s = settings(models, backbone, clip, tmp_path / "cut", steps=3, checkpoint_interval=0.0)
    cancel = threading.Event()

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "editing" and done == n:  # every frame has taken step 1
            cancel.set()

    with pytest.raises(EditCancelled, match="cancelled; finished work is cached"):
        edit_clip(s, progress=progress, cancel=cancel, pipelines=pipelines)
    assert not Path(s.output).exists()
    resumed = edit_clip(s, pipelines=pipelines)
    assert resumed.editing == "resumed" and resumed.resumed_from_step == 0
    assert resumed.unet_evaluations_inversion == 0 and resumed.inversion_cached == n
    rows = 1 if backbone == "flux" else 2  # FLUX: guidance embedded, one row per frame
    assert resumed.unet_evaluations_editing == 2 * n * rows
    assert reference.unet_evaluations_editing == 3 * n * rows
    cut, uncut = png_frames(tmp_path / "cut"), png_frames(tmp_path / "whole")
    assert len(cut) == n and all(np.array_equal(a, b) for a, b in zip(cut, uncut, strict=True))


# --------------------------------------------------------------------------- batch
def test_sd3_and_flux_rows_of_one_batch(models, corpus, pipelines, tmp_path):
    """A jobs file with an SD3 row and a FLUX row (model folders relative to the file) runs
    both through the local backend, each output the trait's timing and count."""
    from pix2video.batch import LocalBackend, read_batch, run_batch

    (trait,) = [t for t in TRAITS if t.file == "vfr.mp4"]
    clip = trait.write(corpus)
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(
        f"defaults: {{size: {SIZE}, steps: {STEPS}, prompt: a red sports car, "
        f"source_prompt: a swan on a lake, cache_dir: {tmp_path / 'cache'}}}\njobs:\n"
        f"  - {{input: {clip}, output: sd3.mp4, model: {models.sd3}, "
        f"controlnet: {models.controlnet}, control: canny}}\n"
        f"  - {{input: {clip}, output: flux.mp4, model: {models.flux}, control: depth, "
        f"depth_model: {models.depth_model}}}\n"
    )
    outcome = run_batch(read_batch(jobs, tmp_path / "out"), LocalBackend(pipelines))
    assert outcome.exit_code == 0 and outcome.counts["ok"] == 2, outcome.records
    sd3 = check_output(trait, tmp_path / "out" / "sd3.mp4")
    flux = check_output(trait, tmp_path / "out" / "flux.mp4")
    assert np.abs(sd3[0].astype(int) - flux[0]).mean() > 1  # two models, two edits
