"""SD3/SD3.5 and FLUX.1 Depth through the front ends the UNet backbones have: messy footage
(`trait_corpus`), a local (masked) edit, an edit cancelled or killed and resumed, a batch
file, the web page, and the depth model and first-use sentences of `edit`.

The tiny SD3 (with a canny SD3 ControlNet) and the tiny FLUX Depth [dev] (with a tiny Depth
Anything) are saved to folders, as a user's models are, and run through the job API the CLI
and the page call (`edit_clip`), the batch runner (`run_batch`, local backend), the CLI and
a `pix2video ui` server (integration). Each trait clip keeps its frame count, timing,
displayed aspect and audio (`check_output`), and identical frames share their conditioning
and inversion as on the UNet backbones. Eight traits run here, those that reach the backbone
(the others end at decoding, the same for every backbone); all 18 traits on both backbones
pass too (36 tests, 50 s on this 2-core machine, run once by hand).
"""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from support import (
    COCKATOO,
    TINY_BLIP,
    browser_page,
    fill_edit_form,
    needs_chromium,
    png_frames,
    preview_then_edit,
)
from test_trait_corpus import check_output, source_frames
from trait_corpus import TRAITS

from pix2video import EditSettings
from pix2video.errors import EditCancelled
from pix2video.job import edit_clip
from pix2video.media import read_clip

STEPS, SIZE = 2, 128  # SD3/FLUX frame sides are multiples of 16: 128 x 80 for the corpus
SUBSET = (
    "every_third.avi", "frozen.mp4", "black_lead.mp4", "vfr.mp4", "rotated.mp4",
    "odd_size.mp4", "one.mp4", "two.mp4",
)  # fmt: skip
"""Repeated frames, a frozen stretch, black frames, a variable frame rate, a rotation matrix,
an odd size, clips of one and two frames (the anchor alone; the anchor and one frame): the
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


# --------------------------------------------------------------------------- the page
@pytest.mark.integration
@needs_chromium
def test_the_page_previews_and_edits_with_an_sd3_folder(models, tmp_path, report_measurement):
    """`pix2video ui --model SD3_FOLDER --controlnet CN --control canny`: in the browser, the
    anchor preview, then the edit (3 frames at 128 px, 2 steps), as with the UNet models."""
    from test_ui import Server, free_port

    args = ["--model", models.sd3, "--controlnet", models.controlnet, "--control", "canny"]
    args += ["--port", free_port(), "--cache-dir", tmp_path / "cache", "--dtype", "float32"]
    args += ["--captioner", TINY_BLIP] if TINY_BLIP.is_dir() else []
    server = Server.start([str(a) for a in args], tmp_path)
    try:
        with browser_page(server.url) as page:
            assert f"Model: {models.sd3}" in page.locator("body").inner_text()
            fill_edit_form(
                page, COCKATOO, "a red sports car", "a swan on a lake",
                steps=2, max_frames=3, size=128,
            )  # fmt: skip
            preview_s, edit_s, text = preview_then_edit(page, frames=3)
            assert "with the source's audio" in text
            src = page.locator("#result-video video").get_attribute("src")
            result = tmp_path / "result.mp4"
            result.write_bytes(page.request.get(src).body())
    finally:
        code = server.stop(signal.SIGTERM)
    assert code == 0 and "Traceback" not in server.output, server.output
    frames = read_clip(result).frames
    assert len(frames) == 3 and frames[0].shape[1] == 128 and frames[0].shape[0] % 16 == 0
    report_measurement("ui browser, tiny SD3: preview click -> image, s", f"{preview_s:.1f}")
    report_measurement("ui browser, tiny SD3: edit click -> video, s", f"{edit_s:.1f}")


@pytest.mark.parametrize(
    "extra, pattern",
    [
        ((), r"^Error: The model '.*' \(FLUX.1 Depth/Canny \[dev\]\) reads a control image "),
        (("--control", "depth", "--control", "canny"), r"^Error: --control needs a --controlnet"),
        (
            ("--controlnet", "X", "--control", "depth"),
            r"^Error: The model .* reads its control image itself and takes no --controlnet: ",
        ),
    ],
    ids=["no-control", "two-controls", "a-controlnet"],
)
def test_the_page_with_a_flux_folder_refuses_what_it_cannot_read_in_one_sentence(
    models, extra, pattern
):
    """A FLUX.1 Depth [dev] server takes one --control and no --controlnet; anything else is
    one sentence before Gradio or a model loads."""
    from click.testing import CliRunner
    from test_ui import free_port

    from pix2video import cli

    args = ["ui", "--model", str(models.flux), "--port", str(free_port()), *extra]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2 and re.match(pattern, result.output), result.output
    assert result.output.count("\n") == 1, result.output


# --------------------------------------------------------------------------- the depth model
@pytest.mark.parametrize("backbone", BACKBONES)
def test_control_depth_without_a_depth_model_reads_depth_anything_v2(
    backbone, models, corpus, pipelines, tmp_path, monkeypatch
):
    """SD3 and FLUX read Depth Anything V2 Small when no --depth-model is named; offline
    with an empty hub cache that is one sentence naming it and the command that gets it, in
    seconds and with no output."""
    from huggingface_hub import constants

    from pix2video.errors import ModelNotAvailableError

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    (trait,) = [t for t in TRAITS if t.file == "two.mp4"]
    values = dict(control=("depth",), depth_model=None)
    s = settings(models, backbone, trait.write(corpus), tmp_path / "out.mp4", **values)
    tic = time.perf_counter()
    with pytest.raises(ModelNotAvailableError) as caught:
        edit_clip(s, pipelines=pipelines)
    seconds = time.perf_counter() - tic
    assert str(caught.value) == (
        "The depth model (image processor) 'depth-anything/Depth-Anything-V2-Small-hf' is not "
        "available offline: it is not in the local hub cache and HF_HUB_OFFLINE is set; get it "
        "with `pix2video download depth-anything/Depth-Anything-V2-Small-hf` where there is "
        "internet (then copy the hub cache), or pass a local folder."
    )
    assert seconds < 30 and not (tmp_path / "out.mp4").exists()


@pytest.mark.integration
@pytest.mark.bitwise
def test_sd3_edit_killed_while_editing_resumes_from_its_checkpoint(models, tmp_path):
    """`pix2video edit` of the SD3 folder killed (SIGKILL) once a checkpoint is written: the
    same command resumes after that step and writes the uninterrupted edit's frames."""
    import torch
    from test_cli import cached, run_subprocess, start_and_stop, stats

    steps = 20

    def args(name: str) -> list:
        return [
            "edit", COCKATOO, "-p", "a red sports car", "--source-prompt", "a swan on a lake",
            "--model", models.sd3, "--controlnet", models.controlnet, "--control", "canny",
            "--size", "64x32", "--max-frames", 4, "--steps", steps, "--dtype", "float32",
            "-o", tmp_path / name, "--cache-dir", tmp_path / f"{name}-cache",
            "--stats-json", tmp_path / f"{name}.json", "--checkpoint-interval", 0,
        ]  # fmt: skip

    whole = run_subprocess(args("whole"), tmp_path)
    assert whole.returncode == 0, whole.stderr
    cache = tmp_path / "cut-cache"
    code, _, _ = start_and_stop(args("cut"), tmp_path, lambda: cached(cache, "checkpoint"))
    assert code == -signal.SIGKILL and not (tmp_path / "cut").exists()
    (checkpoint,) = cached(cache, "checkpoint")
    step = torch.load(checkpoint, weights_only=True)["value"]["step"]
    resumed = run_subprocess(args("cut"), tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"editing: resumed after step {step + 1} of {steps}" in resumed.stdout
    s = stats(tmp_path / "cut.json")
    assert s["unet_evaluations_inversion"] == 0
    assert s["unet_evaluations_editing"] == (steps - 1 - step) * 4 * 2
    cut, uncut = png_frames(tmp_path / "cut"), png_frames(tmp_path / "whole")
    assert len(cut) == 4 and all(np.array_equal(a, b) for a, b in zip(cut, uncut, strict=True))


@pytest.mark.integration
def test_the_pages_endpoints_preview_and_edit_with_a_flux_depth_folder(models, tmp_path):
    """`pix2video ui --model FLUX_FOLDER --control depth --depth-model DA`: /preview then /edit
    through gradio_client, with the page's defaults for what the form leaves out (no
    negative prompt: FLUX [dev] takes none)."""
    gradio_client = pytest.importorskip("gradio_client", reason="the test extra installs gradio")
    from test_ui import Server, free_port

    args = ["--model", models.flux, "--control", "depth", "--depth-model", models.depth_model]
    args += ["--port", free_port(), "--cache-dir", tmp_path / "cache", "--dtype", "float32"]
    server = Server.start([str(a) for a in args], tmp_path)
    try:
        client = gradio_client.Client(server.url, verbose=False, download_files=str(tmp_path))
        form = dict(
            video=gradio_client.handle_file(str(COCKATOO)), prompt="a red sports car",
            source_prompt="a swan on a lake", steps=2, max_frames=3, size="128",
        )  # fmt: skip
        image, status, _ = client.predict(**form, api_name="/preview")
        assert status.startswith("Anchor frame"), status
        video, status = client.predict(**form, api_name="/edit")
        assert status.startswith("Edited 3 frames"), status
        path = video["video"] if isinstance(video, dict) else video
        frames = read_clip(path).frames
    finally:
        code = server.stop(signal.SIGTERM)
    assert code == 0 and "Traceback" not in server.output, server.output
    assert len(frames) == 3 and frames[0].shape[1] == 128


@pytest.mark.parametrize(
    "model, extra",
    [
        ("black-forest-labs/FLUX.1-Depth-dev", ("--control", "depth")),
        ("stabilityai/stable-diffusion-3.5-large", ("--controlnet", "x/y", "--control", "canny")),
    ],
    ids=["flux-depth", "sd35-large"],
)
def test_a_known_sd35_or_flux_id_not_cached_is_one_sentence_naming_it(
    model, extra, tmp_path, monkeypatch
):
    """On first use an SD3.5/FLUX hub id is fetched before its kind is told from its configs;
    offline that is the model's one sentence (gated: log in first), not a rule of another
    family (FLUX.1 Depth [dev] is its own control model, known by name)."""
    from click.testing import CliRunner
    from huggingface_hub import constants

    from pix2video import cli

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    args = ["edit", str(COCKATOO), "-p", "a red car", "--source-prompt", "a bird"]
    args += ["--model", model, *extra, "--max-frames", "1", "-o", str(tmp_path / "out.mp4")]
    result = CliRunner().invoke(cli.main, args)
    text = result.output.strip()
    assert result.exit_code == 2 and "\n" not in text, result.output
    assert text.startswith(f"Error: The diffusion model '{model}' is not available offline: ")
    assert text.endswith("log in (`hf auth login`) first."), text
