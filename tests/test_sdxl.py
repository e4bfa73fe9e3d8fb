"""SDXL-family checkpoints with SDXL ControlNets, on tiny random models built in code
(`tiny_sdxl.py`): the pipeline against diffusers' `StableDiffusionXLControlNetPipeline`,
the shared loop's properties with injection on, precision, and the job, CLI and loading
paths (folder, single file, LoRA) a user runs.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline
from PIL import Image

from pix2video import EditSettings, edit_clip
from pix2video.cli import main
from pix2video.errors import EditCancelled
from pix2video.job import EditJob, PipelineCache
from pix2video.pipelines.control import canny_image, depth_image
from pix2video.pipelines.scheduler import reference_scheduler
from pix2video.pipelines.sdxl import Pix2VideoSDXLControlNetPipeline, pack_text, unpack_text

PROMPT, SOURCE = "a red sports car", "a swan on a lake"
STEPS, FRAMES = 2, 2
ROOT = Path(__file__).resolve().parents[1]
COCKATOO = ROOT / "examples" / "cockatoo.mp4"


def make_frames(n: int, height: int = 64, width: int = 64, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(n):
        wave = 90 * np.sin((xx + 3 * i) / 6.0) * np.cos(yy / 8.0)
        noise = rng.integers(-10, 10, (height, width, 3))
        frames.append((120 + wave[..., None] + noise).clip(0, 255).astype(np.uint8))
    return frames


def controls(frames: list[np.ndarray]) -> list[np.ndarray]:
    return [canny_image(f, 100, 200) for f in frames]


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    """Folder, original-layout single file, two ControlNets and a LoRA (`tiny_sdxl.py`)."""
    from tiny_sdxl import (
        build_sdxl,
        build_sdxl_controlnet,
        build_sdxl_lora,
        save_original_sdxl_checkpoint,
    )

    root = tmp_path_factory.mktemp("tiny-sdxl")
    model = build_sdxl(root / "sdxl")
    return SimpleNamespace(
        model=model,
        single_file=save_original_sdxl_checkpoint(model, root / "tiny-sdxl.safetensors"),
        controlnets=[build_sdxl_controlnet(root / f"controlnet{i}", seed=i) for i in (1, 2)],
        lora=build_sdxl_lora(model, root / "loras" / "style.safetensors"),
    )


@pytest.fixture(scope="module")
def controlnets(tiny_sdxl):
    return [ControlNetModel.from_pretrained(path) for path in tiny_sdxl.controlnets]


@pytest.fixture(scope="module")
def pipe(tiny_sdxl, controlnets):
    pipe = Pix2VideoSDXLControlNetPipeline.from_pretrained(
        tiny_sdxl.model, controlnet=controlnets[0]
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_reference(pipe, controlnet, images, x_t, scale, steps=3, **call):
    """diffusers' SDXL ControlNet pipeline on the same components, DDIM as ours, from `x_t`."""
    theirs = StableDiffusionXLControlNetPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        text_encoder_2=pipe.text_encoder_2,
        tokenizer=pipe.tokenizer,
        tokenizer_2=pipe.tokenizer_2,
        unet=pipe.unet,
        controlnet=controlnet,
        scheduler=reference_scheduler(pipe.scheduler.config),
        add_watermarker=False,
    )
    theirs.set_progress_bar_config(disable=True)
    return theirs(
        PROMPT,
        image=images,
        num_inference_steps=steps,
        guidance_scale=7.5,
        latents=x_t,
        controlnet_conditioning_scale=scale,
        output_type="latent",
        **call,
    ).images


def our_base_path(pipe, x_t, conditioning, negative="", steps=3):
    final, _ = pipe.edit(
        x_t,
        conditioning,
        pipe.encode_prompt(PROMPT),
        pipe.encode_negative_prompt(negative),
        num_inference_steps=steps,
        attend="none",
        latent_guidance_weight=0.0,
    )
    return final


# ---------------------------------------------------------------------------- base path
def test_pack_text_round_trips():
    embeds, pooled = torch.randn(2, 77, 48), torch.randn(2, 32)
    packed = pack_text(embeds, pooled)
    assert packed.shape == (2, 78, 48)
    back_embeds, back_pooled = unpack_text(packed, 32)
    assert torch.equal(back_embeds, embeds) and torch.equal(back_pooled, pooled)


def test_anchor_frame_equals_diffusers_sdxl_controlnet_pipeline(pipe, controlnets):
    frame = make_frames(1)[0]
    control = controls([frame])
    x_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    pipe.set_controlnet_scales([0.8])
    conditioning = pipe.prepare_conditioning([frame], control_images=control)
    ours = our_base_path(pipe, x_t, conditioning)
    # an empty negative prompt is zeros, as diffusers' default (negative_prompt=None)
    theirs = diffusers_reference(pipe, controlnets[0], Image.fromarray(control[0]), x_t, 0.8)
    gap = (ours - theirs).abs().max().item()
    assert gap < 1e-4, gap
    # a negative prompt is encoded by both text encoders, as diffusers does
    ours_negative = our_base_path(pipe, x_t, conditioning, negative="blurry")
    theirs_negative = diffusers_reference(
        pipe, controlnets[0], Image.fromarray(control[0]), x_t, 0.8, negative_prompt="blurry"
    )
    assert (ours_negative - theirs_negative).abs().max().item() < 1e-4
    assert (ours_negative - ours).abs().max().item() > 1e-3
    # the ControlNet matters: another control image moves the result far more than the gap
    other = pipe.prepare_conditioning([frame], control_images=[np.zeros_like(control[0])])
    assert (our_base_path(pipe, x_t, other) - ours).abs().max().item() > 1000 * max(gap, 1e-6)


def test_two_controlnets_equal_diffusers_multicontrolnet(tiny_sdxl, controlnets):
    multi = Pix2VideoSDXLControlNetPipeline.from_pretrained(tiny_sdxl.model, controlnet=controlnets)
    frame = make_frames(1, seed=4)[0]
    edges = canny_image(frame, 50, 150)
    depth = depth_image(torch.from_numpy(frame[..., 0].astype(np.float32)), (64, 64))
    x_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    multi.set_controlnet_scales([0.7, 1.2])
    conditioning = multi.prepare_conditioning([frame], control_images=[[edges, depth]])
    assert conditioning.shape == (1, 6, 64, 64)
    ours = our_base_path(multi, x_t, conditioning)
    images = [Image.fromarray(edges), Image.fromarray(depth)]
    theirs = diffusers_reference(multi, controlnets, images, x_t, [0.7, 1.2])
    assert (ours - theirs).abs().max().item() < 1e-4
    evaluations = multi.controlnet_evaluations
    our_base_path(multi, x_t, conditioning)
    assert multi.controlnet_evaluations - evaluations == 3 * 2 * 2  # steps x CFG rows x nets


def test_the_size_ids_condition_the_model(pipe):
    """add_time_ids follow the processing size: other ids, another prediction."""
    frame = make_frames(1, seed=3)[0]
    conditioning = pipe.prepare_conditioning([frame], control_images=controls([frame]))
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    text = pipe.encode_prompt(PROMPT)
    original = pipe.add_time_ids
    with torch.inference_mode():
        out = pipe.model_output(x, conditioning, 500, text, 1)
        pipe.add_time_ids = lambda h, w: original(2 * h, 2 * w)
        try:
            other = pipe.model_output(x, conditioning, 500, text, 1)
        finally:
            del pipe.add_time_ids
    assert original(64, 32).tolist() == [[64, 32, 0, 0, 64, 32]]
    assert (other - out).abs().max().item() > 1e-4


# ---------------------------------------------------------------------------- the shared loop
@pytest.fixture(scope="module")
def clip(pipe):
    frames = make_frames(3, seed=5)
    pipe.set_controlnet_scales([1.0])
    conditioning = pipe.prepare_conditioning(frames, control_images=controls(frames))
    latents = pipe.encode_frames(frames)
    x_t = pipe.invert(latents, conditioning, pipe.encode_prompt(SOURCE), STEPS)
    return frames, conditioning, x_t


def _edit(pipe, clip, **kwargs):
    _, conditioning, x_t = clip
    kwargs.setdefault("num_inference_steps", STEPS)
    return pipe.edit(
        x_t, conditioning, pipe.encode_prompt(PROMPT), pipe.encode_negative_prompt(""), **kwargs
    )[0]


@pytest.mark.bitwise
def test_step_and_frame_order_are_bitwise_identical_with_injection(pipe, clip):
    processors = dict(pipe.unet.attn_processors)
    by_step = _edit(pipe, clip, schedule="step")
    by_frame = _edit(pipe, clip, schedule="frame")
    assert torch.equal(by_step, by_frame)
    independent = _edit(pipe, clip, attend="none", latent_guidance_weight=0.0)
    assert torch.equal(by_step[0], independent[0])  # the anchor attends to nobody
    assert (by_step[1:] - independent[1:]).abs().max() > 1e-3  # injection changes the others
    after = pipe.unet.attn_processors
    assert all(after[name] is processors[name] for name in processors)


@pytest.mark.bitwise
def test_resume_from_a_checkpoint_is_bitwise_identical(pipe, clip):
    checkpoints = []
    full = _edit(pipe, clip, on_step_end=checkpoints.append)
    assert [c.step for c in checkpoints] == list(range(STEPS))
    resumed = _edit(pipe, clip, resume=checkpoints[0])
    assert torch.equal(full, resumed)


def test_float16_upcasts_the_vae_and_gives_finite_frames(tiny_sdxl, pipe):
    """The SDXL VAE overflows in float16: it runs in float32, the UNet in float16 (CPU)."""
    net = ControlNetModel.from_pretrained(tiny_sdxl.controlnets[0], dtype=torch.float16)
    half = Pix2VideoSDXLControlNetPipeline.from_pretrained(
        tiny_sdxl.model, controlnet=net, dtype=torch.float16
    )
    assert half.unet.dtype == torch.float16 and half.vae.dtype == torch.float32
    frames = make_frames(2, seed=8)
    kwargs = dict(num_inference_steps=STEPS, control_images=controls(frames))
    out = half(frames, PROMPT, SOURCE, **kwargs)
    assert torch.isfinite(out.final_latents).all()
    pipe.set_controlnet_scales([1.0])
    full = pipe(frames, PROMPT, SOURCE, **kwargs)
    gaps = [
        np.abs(a.astype(int) - b.astype(int)) for a, b in zip(out.frames, full.frames, strict=True)
    ]
    assert max(g.mean() for g in gaps) < 2.0, [g.mean() for g in gaps]  # half UNet rounding
    # without the upcast the same latents decode to NaN: the overflow is real
    with torch.inference_mode():
        latent = out.final_latents[:1].half() / half.vae.config.scaling_factor
        overflowing = half.vae.to(torch.float16).decode(latent).sample
    half.vae.to(torch.float32)
    assert not torch.isfinite(overflowing).all()


# ---------------------------------------------------------------------------- job and CLI
@pytest.fixture(scope="module")
def pipelines() -> PipelineCache:
    return PipelineCache(size=2)


def settings(tmp_path: Path, tiny_sdxl, **changes) -> EditSettings:
    base = EditSettings(
        input=COCKATOO,
        prompt="a cockatoo made of blue crystal",
        output=tmp_path / "out",
        source_prompt="a white cockatoo",
        model=str(tiny_sdxl.model),
        controlnet=(str(tiny_sdxl.controlnets[0]),),
        control=("canny",),
        size="64x32",
        max_frames=FRAMES,
        steps=STEPS,
        dtype="float32",  # compared with float32 pipelines
        cache_dir=tmp_path / "cache",
    )
    return base.replace(**changes)


def png_frames(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(f).convert("RGB")) for f in sorted(Path(folder).glob("*.png"))]


def run(tmp_path, tiny_sdxl, pipelines, name: str, **changes):
    s = settings(tmp_path, tiny_sdxl, output=tmp_path / name, **changes)
    result = edit_clip(s, pipelines=pipelines)
    return result, png_frames(tmp_path / name)


@pytest.mark.bitwise
def test_cli_edit_with_sdxl_and_two_controlnets_equals_the_job(tmp_path, tiny_sdxl, pipelines):
    cn1, cn2 = (str(p) for p in tiny_sdxl.controlnets)
    args = [
        COCKATOO,
        "-p",
        "a cockatoo made of blue crystal",
        "--source-prompt",
        "a white cockatoo",
    ]
    args += ["--model", tiny_sdxl.model, "--controlnet", cn1, "--controlnet", cn2]
    args += ["--control", "canny", "--control", "canny", "--control-scale", "0.5"]
    args += ["--control-scale", "1.5", "--size", "64x32", "--max-frames", FRAMES]
    args += ["--steps", STEPS, "-o", tmp_path / "cli", "-q", "--cache-dir", tmp_path / "c1"]
    args += ["--dtype", "float32"]
    result = CliRunner().invoke(main, ["edit", *map(str, args)])
    assert result.exit_code == 0, result.output
    from_cli = png_frames(tmp_path / "cli")
    job, from_job = run(
        tmp_path,
        tiny_sdxl,
        pipelines,
        "job",
        controlnet=(cn1, cn2),
        control=("canny", "canny"),
        control_scale=(0.5, 1.5),
    )
    assert type(pipelines.get(str(tiny_sdxl.model), "cpu", "float32", controlnets=(cn1, cn2)))
    assert len(from_cli) == FRAMES and from_cli[0].shape == (32, 64, 3)
    assert all(np.array_equal(a, b) for a, b in zip(from_cli, from_job, strict=True))
    assert job.unet_evaluations == FRAMES * STEPS * 3  # inversion 1 row, editing 2 (CFG)


@pytest.mark.bitwise
def test_preview_is_the_anchor_frame_of_the_full_edit(tmp_path, tiny_sdxl, pipelines):
    from pix2video import preview_anchor

    s = settings(tmp_path, tiny_sdxl, output=tmp_path / "full")
    preview = preview_anchor(s, pipelines=pipelines)
    result = edit_clip(s, pipelines=pipelines)
    assert result.inversion_cached == 1  # the preview's inversion is reused
    assert np.array_equal(preview.edited, png_frames(tmp_path / "full")[0])


def test_single_file_checkpoint_edits_like_its_folder(tmp_path, tiny_sdxl, pipelines):
    """Another loader and layout: equal weights, frames within one grey level."""
    from pix2video.pipelines.checkpoints import is_sdxl_checkpoint

    assert is_sdxl_checkpoint(str(tiny_sdxl.single_file))
    assert is_sdxl_checkpoint(str(tiny_sdxl.model))
    _, from_folder = run(tmp_path, tiny_sdxl, pipelines, "folder")
    result, from_file = run(
        tmp_path,
        tiny_sdxl,
        pipelines,
        "file",
        model=str(tiny_sdxl.single_file),
        model_config=str(tiny_sdxl.model),
    )
    assert result.inversion_computed == FRAMES  # another checkpoint: nothing reused
    cn = (str(tiny_sdxl.controlnets[0]),)
    folder_pipe = pipelines.get(str(tiny_sdxl.model), "cpu", "float32", controlnets=cn)
    file_pipe = pipelines.get(
        str(tiny_sdxl.single_file),
        "cpu",
        "float32",
        controlnets=cn,
        model_config=str(tiny_sdxl.model),
    )
    assert type(file_pipe) is Pix2VideoSDXLControlNetPipeline
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ours, theirs = (
            getattr(folder_pipe, name).state_dict(),
            getattr(file_pipe, name).state_dict(),
        )
        assert ours.keys() == theirs.keys(), name
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    for a, b in zip(from_folder, from_file, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


@pytest.mark.bitwise
def test_lora_changes_the_edit_and_scale_zero_is_no_lora(tmp_path, tiny_sdxl, pipelines):
    _, plain = run(tmp_path, tiny_sdxl, pipelines, "plain")
    with_lora, styled = run(tmp_path, tiny_sdxl, pipelines, "lora", lora=(f"{tiny_sdxl.lora}:1",))
    assert with_lora.inversion_computed == FRAMES  # the LoRA is in the cache keys
    assert not np.array_equal(styled[0], plain[0])
    _, zero = run(tmp_path, tiny_sdxl, pipelines, "zero", lora=(f"{tiny_sdxl.lora}:0",))
    assert all(np.array_equal(a, b) for a, b in zip(plain, zero, strict=True))


@pytest.mark.bitwise
def test_cancelled_sdxl_edit_resumes_to_the_same_frames(tmp_path, tiny_sdxl, pipelines):
    s = settings(tmp_path, tiny_sdxl, steps=4, output=tmp_path / "out", checkpoint_interval=0.0)
    reference = edit_clip(s.replace(output=tmp_path / "ref", no_cache=True), pipelines=pipelines)
    cancel = threading.Event()

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "editing" and done == 2 * FRAMES:  # after step 2 of 4
            cancel.set()

    with pytest.raises(EditCancelled):
        edit_clip(s, progress=progress, cancel=cancel, pipelines=pipelines)
    assert not s.output.exists()
    resumed = edit_clip(s, pipelines=pipelines)
    assert resumed.editing == "resumed" and resumed.resumed_from_step == 1
    expected = png_frames(Path(reference.output))
    assert all(np.array_equal(a, b) for a, b in zip(expected, png_frames(s.output), strict=True))


def test_masked_sdxl_edit_keeps_every_pixel_outside_the_mask(tmp_path, tiny_sdxl, pipelines):
    mask = np.zeros((32, 64), np.uint8)
    mask[8:24, 16:48] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    result, edited = run(
        tmp_path,
        tiny_sdxl,
        pipelines,
        "masked",
        mask=tmp_path / "mask.png",
        mask_dilate=0,
        mask_feather=0,
    )
    assert result.masked
    from pix2video.media import read_clip, resize_frames

    frames = resize_frames(read_clip(COCKATOO, max_frames=FRAMES).frames, (64, 32))
    for frame, out in zip(frames, edited, strict=True):
        assert np.array_equal(out[mask == 0], frame[mask == 0])
        assert not np.array_equal(out[mask > 0], frame[mask > 0])


def test_default_size_is_1024_for_sdxl_and_512_for_others(tmp_path, tiny_sdxl):
    from pix2video.job.source import read_source
    from pix2video.media import fit_size

    assert EditSettings.defaults()["size"] == "auto"
    for model, long_side in ((str(tiny_sdxl.model), 1024), ("tiny", 512)):
        job = EditJob(settings(tmp_path, tiny_sdxl, model=model, size="auto"))
        source = read_source(job.ctx, anchor_only=True)
        assert (source.width, source.height) == fit_size(*source.reader.source_size, long_side)
        assert max(source.width, source.height) == long_side  # aspect kept, multiples of 8


def _cli(tmp_path, *extra) -> tuple[int, str, Path]:
    out = tmp_path / "err.mp4"
    args = [COCKATOO, "-p", "x", "--source-prompt", "y", "--size", "64x32", "--max-frames", FRAMES]
    args += ["--steps", 1, "-o", out, "--cache-dir", tmp_path / "c", *extra]
    result = CliRunner().invoke(main, ["edit", *map(str, args)])
    return result.exit_code, result.output, out


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "no-controlnet",
            "not depth-conditioned, so it needs a ControlNet .*controlnet-depth-sdxl",
        ),
        (
            "sd15-controlnet",
            "made for another architecture .*ControlNet for the model's base \\(SDXL\\)",
        ),
        ("turbo", "is a few-step \\(Turbo/LCM-style\\) checkpoint: .*cannot edit them"),
    ],
)
def test_errors_are_one_sentence(tmp_path, tiny_sdxl, tiny_sd15, case, message):
    extra = ["--model", tiny_sdxl.model]
    if case == "sd15-controlnet":
        extra += ["--controlnet", tiny_sd15.controlnets[0], "--control", "canny"]
    elif case == "turbo":  # the same weights, shipped with SDXL-Turbo's scheduler
        import shutil

        from diffusers import EulerAncestralDiscreteScheduler

        turbo = shutil.copytree(tiny_sdxl.model, tmp_path / "turbo")
        EulerAncestralDiscreteScheduler.from_pretrained(
            turbo / "scheduler", timestep_spacing="trailing"
        ).save_pretrained(turbo / "scheduler")
        extra = ["--model", turbo, "--controlnet", tiny_sdxl.controlnets[0], "--control", "canny"]
    code, output, out = _cli(tmp_path, *extra)
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()


def test_frame_batched_sdxl_equals_one_at_a_time(tiny_sdxl, controlnets):
    """Several frames per UNet call: the pooled text row and size ids ride along each frame."""
    pipe = Pix2VideoSDXLControlNetPipeline.from_pretrained(
        tiny_sdxl.model, controlnet=controlnets[0]
    ).to(dtype=torch.float64)  # float64: batching changes float32 rounding, not the maths
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(3)
    x_t = torch.randn(5, 4, 8, 8, generator=g, dtype=torch.float64)
    control = torch.rand(5, 3, 64, 64, generator=g, dtype=torch.float64)
    text = pipe.encode_prompt(PROMPT), pipe.encode_negative_prompt("")
    one = pipe.edit(x_t, control, *text, num_inference_steps=STEPS)[0]
    before = pipe.unet_evaluations
    batched = pipe.edit(x_t, control, *text, num_inference_steps=STEPS, frame_batch=2)[0]
    assert pipe.unet_evaluations - before == 2 * 5 * STEPS  # images: 5 frames, 2 branches
    assert (batched - one).abs().max().item() <= 1e-10
