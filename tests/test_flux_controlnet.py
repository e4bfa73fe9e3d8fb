"""FLUX.1 [dev] with FLUX ControlNets (`pipelines/flux_controlnet.py`), on tiny random models
built in code (`tiny_flux.py`: a FLUX.1 [dev] topology and InstantX-kind ControlNets), offline.

- the base path (injection and guided update off) equals diffusers' `FluxControlNetPipeline`
  from the same noise, for one ControlNet and two (`FluxMultiControlNetModel`); the gap is
  reported; the control image and the conditioning scale matter;
- frame batches equal one frame at a time (float64), injection and guided update on;
- `load_pipeline` picks the pipeline for FLUX.1 [dev] + a FLUX ControlNet and refuses one of
  another family, a ControlNet beside FLUX.1 Depth, Union/XLabs kinds, schnell; bad inputs
  are one sentence; LoRA scale 0 is none;
- the CLI (`--model FLUX.1-dev --controlnet FLUX-CN --control canny`) edits a clip, its
  control latents cached for the next edit.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from diffusers import FluxControlNetPipeline
from PIL import Image
from support import COCKATOO, make_frames, png_frames

from pix2video.cli import main
from pix2video.errors import InputError, ModelNotAvailableError
from pix2video.pipelines.checkpoints import load_pipeline
from pix2video.pipelines.control import canny_image
from pix2video.pipelines.flux_controlnet import Pix2VideoFluxControlNetPipeline

EDIT, SCENE = "a red sports car", "a swan on a lake"
HEIGHT, WIDTH = 32, 64  # latents 4 x 8: 2 x 4 packed image tokens
LATENT = (4, HEIGHT // 8, WIDTH // 8)
REFERENCE_STEPS, GUIDANCE = 3, 10.0
TOLERANCE = 1e-5  # ours vs diffusers (float32), measured and reported


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> SimpleNamespace:
    from tiny_flux import build_flux_control, build_flux_controlnet

    root = tmp_path_factory.mktemp("tiny-flux-dev")
    model = build_flux_control(root / "flux-dev", control=False)
    nets = [
        build_flux_controlnet(model, root / "cn-canny", seed=1),
        build_flux_controlnet(model, root / "cn-depth", seed=2),
    ]
    return SimpleNamespace(model=model, controlnets=nets, root=root)


def our_pipeline(tiny, nets: int = 1, dtype=torch.float32) -> Pix2VideoFluxControlNetPipeline:
    pipe = load_pipeline(str(tiny.model), controlnets=[str(c) for c in tiny.controlnets[:nets]])
    assert isinstance(pipe, Pix2VideoFluxControlNetPipeline)
    return pipe.to(dtype=dtype)


@pytest.fixture(scope="module")
def pipe(tiny) -> Pix2VideoFluxControlNetPipeline:
    return our_pipeline(tiny)


def controls(frames: list[np.ndarray], k: int = 1) -> list:
    images = [canny_image(f, 100 + 20 * i, 200) for i in range(k) for f in frames]
    per_frame = [images[i :: len(frames)] for i in range(len(frames))]
    return [row[0] for row in per_frame] if k == 1 else per_frame


def noise(n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, *LATENT, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def edit(pipe, x_t, conditioning, prompt=EDIT, **options) -> torch.Tensor:
    text = pipe.encode_prompt(prompt) if isinstance(prompt, str) else prompt
    options = {"num_inference_steps": REFERENCE_STEPS, "guidance_scale": GUIDANCE, **options}
    return pipe.edit(x_t, conditioning, text, pipe.encode_negative_prompt(""), **options)[0]


# ---------------------------------------------------------------------------- base path
def diffusers_path(pipe, images, x_t, scales) -> torch.Tensor:
    """diffusers' `FluxControlNetPipeline` on `pipe`'s components from `x_t`: final latents,
    unpacked to (1, C, h, w)."""
    theirs = FluxControlNetPipeline(
        scheduler=pipe.scheduler,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        text_encoder_2=pipe.text_encoder_2,
        tokenizer_2=pipe.tokenizer_2,
        transformer=pipe.transformer,
        controlnet=pipe.controlnet,
    )
    theirs.set_progress_bar_config(disable=True)
    packed = FluxControlNetPipeline._pack_latents(x_t, 1, LATENT[0], *LATENT[1:])
    out = theirs(
        EDIT,
        control_image=images if len(images) > 1 else images[0],
        controlnet_conditioning_scale=scales if len(scales) > 1 else scales[0],
        height=HEIGHT,
        width=WIDTH,
        num_inference_steps=REFERENCE_STEPS,
        guidance_scale=GUIDANCE,
        latents=packed,
        output_type="latent",
    ).images
    return FluxControlNetPipeline._unpack_latents(out, HEIGHT, WIDTH, pipe.vae_scale_factor)


@pytest.mark.parametrize("nets", [1, 2], ids=["one ControlNet", "two ControlNets"])
def test_anchor_frame_equals_diffusers_flux_controlnet_pipeline(
    tiny, posterior_mean, report_measurement, nets
):
    pipe = our_pipeline(tiny, nets)
    scales = [0.7, 1.3][:nets]
    pipe.set_controlnet_scales(scales)
    frame = make_frames(1, HEIGHT, WIDTH)[0]
    control = controls([frame], nets)
    x_t = noise(1, seed=0)
    conditioning = pipe.prepare_conditioning([frame], control_images=control)
    assert conditioning.shape == (1, LATENT[0] * nets, *LATENT[1:])
    evaluations = pipe.controlnet_evaluations
    ours = edit(pipe, x_t, conditioning, attend="none", latent_guidance_weight=0.0)
    assert pipe.controlnet_evaluations - evaluations == REFERENCE_STEPS * nets
    images = [Image.fromarray(a) for a in (control[0] if nets > 1 else control)]
    theirs = diffusers_path(pipe, images, x_t, scales)
    gap = (ours - theirs).abs().max().item()
    report_measurement(
        f"FLUX + {nets} ControlNet(s) anchor vs diffusers (3 steps), max |dlatent|", f"{gap:.2e}"
    )
    assert gap < TOLERANCE, gap
    # the control image and the conditioning scale matter, far more than the gap
    other = pipe.prepare_conditioning([frame], control_images=controls([frame * 0], nets))
    moved = edit(pipe, x_t, other, attend="none", latent_guidance_weight=0.0)
    assert (moved - ours).abs().max().item() > 1000 * max(gap, 1e-7)
    pipe.set_controlnet_scales([0.0] * nets)
    unscaled = edit(pipe, x_t, conditioning, attend="none", latent_guidance_weight=0.0)
    assert (unscaled - ours).abs().max().item() > 1000 * max(gap, 1e-7)


@pytest.fixture(scope="module")
def pipe64(tiny) -> Pix2VideoFluxControlNetPipeline:
    return our_pipeline(tiny, 2, torch.float64)


def test_frame_batch_3_equals_one_frame_at_a_time_in_float64(pipe64, report_measurement):
    """Two ControlNets, injection in every block and the guided update on: three frames per
    model call equal one at a time to float reassociation."""
    frames = make_frames(3, HEIGHT, WIDTH, seed=5)
    conditioning = pipe64.prepare_conditioning(frames, control_images=controls(frames, 2))
    x_t, prompt = noise(3, seed=3, dtype=torch.float64), pipe64.encode_prompt(EDIT)
    run = {
        n: pipe64.edit(x_t, conditioning, prompt, prompt, num_inference_steps=REFERENCE_STEPS,
                       guidance_scale=GUIDANCE, frame_batch=n, inject_blocks=range(5))
        for n in (1, 3)
    }  # fmt: skip
    assert run[3][1].chunk_size == 3
    gap = (run[3][0] - run[1][0]).abs().max().item()
    report_measurement(
        "FLUX + ControlNets frame-batch 3 vs 1 (float64), max |dlatent|", f"{gap:.2e}"
    )
    assert gap < 1e-12, gap
    alone = edit(pipe64, x_t, conditioning, prompt, attend="none", latent_guidance_weight=0.0)
    assert (run[1][0][1:] - alone[1:]).abs().max().item() > 1e-4  # injection is live


def test_the_whole_call_edits_a_clip(pipe):
    frames = make_frames(2, HEIGHT, WIDTH, seed=11)
    out = pipe(frames, EDIT, SCENE, num_inference_steps=2, guidance_scale=GUIDANCE,
               control_images=controls(frames))  # fmt: skip
    assert len(out.frames) == 2 and out.frames[0].shape == (HEIGHT, WIDTH, 3)
    assert out.unet_evaluations == 2 * 2 + 2 * 2  # inversion + editing, no CFG pairs


def test_lora_scale_zero_is_no_lora(tiny, tmp_path):
    from tiny_flux import build_flux_lora

    lora = build_flux_lora(tiny.model, tmp_path / "lora.safetensors")
    nets = [str(tiny.controlnets[0])]
    outputs = {}
    for name, loras in {"none": [], "zero": [(str(lora), 0.0)], "one": [(str(lora), 1.0)]}.items():
        loaded = load_pipeline(str(tiny.model), controlnets=nets, loras=loras)
        x, text = noise(1, seed=5), loaded.encode_prompt(EDIT)
        with torch.inference_mode():
            outputs[name] = loaded.model_output(x, torch.ones(1, *LATENT), 500.0, text, 1)
    assert torch.equal(outputs["zero"], outputs["none"])
    assert (outputs["one"] - outputs["none"]).abs().max().item() > 1e-3


# ---------------------------------------------------------------------------- refusals
def one_sentence(message: str) -> bool:
    return re.search(r"[.!?]\s+[A-Z]", message) is None and message.endswith(".")


def _config_variant(path, out, **config):
    import json
    import shutil

    shutil.copytree(path, out)
    file = out / "config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **config}))
    return out


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("sd3-controlnet", r"is a SD3ControlNetModel, not a FLUX ControlNet"),
        ("union", r"is of the Union .*kind, which Pix2Video does not run yet"),
        ("xlabs", r"is of the XLabs kind"),
        ("flux-depth", r"reads the control image itself .*takes no --controlnet"),
        ("schnell", r"few-step FLUX.1 \[schnell\]-kind checkpoint"),
        ("mismatch", r"have different numbers of blocks \(1\+2, 2\+1\), so their residuals"),
        ("none", r"needs a FLUX ControlNet for the video's structure: add --controlnet"),
    ],
)
def test_refusals_are_one_sentence(tiny, case, pattern):
    from tiny_flux import build_flux_control, flux_variant

    model, net = tiny.model, tiny.controlnets[0]
    out = tiny.root / case
    if case == "sd3-controlnet":
        net = _config_variant(net, out, _class_name="SD3ControlNetModel")
    elif case in ("union", "xlabs"):
        key = "num_mode" if case == "union" else "conditioning_embedding_channels"
        net = _config_variant(net, out, **{key: 10 if case == "union" else 16})
    elif case == "flux-depth":
        model = build_flux_control(out)
    elif case == "schnell":
        model = flux_variant(model, out, guidance_embeds=False)
    controlnets = [] if case == "none" else [str(net)]
    if case == "mismatch":
        from tiny_flux import build_flux_controlnet

        other = build_flux_controlnet(model, out, num_layers=2, num_single_layers=1)
        controlnets.append(str(other))
    with pytest.raises(ModelNotAvailableError, match=pattern) as error:
        load_pipeline(str(model), controlnets=controlnets)
    assert one_sentence(str(error.value)), str(error.value)


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("count", r"Expected one control image per ControlNet \(2\) for every frame; got 1"),
        ("bare", r"Expected one control image per ControlNet \(2\) for every frame; got 1\."),
        ("scales", r"Give one control scale per ControlNet \(2\); got 1"),
        ("depth", r"FLUX ControlNet pipeline takes control images .*not depth maps"),
        ("negative", r"FLUX \[dev\] models take no negative prompt"),
    ],
)
def test_bad_inputs_are_one_sentence(pipe64, case, pattern):
    frames = make_frames(1, HEIGHT, WIDTH)
    kwargs = dict(frames=frames, prompt=EDIT, source_prompt=SCENE, num_inference_steps=1,
                  control_images=controls(frames, 2))  # fmt: skip
    if case == "count":
        kwargs.update(control_images=[[image] for image in controls(frames)])
    elif case == "bare":  # one image, not in a list, where two nets want two: one, not its rows
        kwargs.update(control_images=controls(frames))
    elif case == "depth":
        kwargs.update(depth_maps=np.zeros((1, HEIGHT, WIDTH), np.float32))
    elif case == "negative":
        kwargs.update(negative_prompt="blurry")
    with pytest.raises(InputError, match=pattern) as error:
        pipe64.set_controlnet_scales([1.0]) if case == "scales" else pipe64(**kwargs)
    assert one_sentence(str(error.value)), str(error.value)


# ---------------------------------------------------------------------------- CLI
def cli_edit(tmp_path, tiny, name: str, *extra) -> tuple[int, str]:
    """`pix2video edit` of 3 cockatoo frames at 64x32: FLUX.1 [dev] + a canny ControlNet."""
    args = [COCKATOO, "-p", EDIT, "--source-prompt", SCENE, "--model", tiny.model]
    args += ["--controlnet", tiny.controlnets[0], "--control", "canny", "--size", "64x32"]
    args += ["--max-frames", 3, "--steps", 2, "--guidance-scale", GUIDANCE, "--dtype", "float32"]
    args += ["-o", tmp_path / name, "--cache-dir", tmp_path / "cache", *extra]
    result = CliRunner().invoke(main, ["edit", *map(str, args)])
    return result.exit_code, result.output


def test_cli_edits_a_clip_and_reuses_its_control_latents(tmp_path, tiny):
    code, output = cli_edit(tmp_path, tiny, "first", "-q")
    assert code == 0, output
    first = png_frames(tmp_path / "first")
    assert len(first) == 3 and first[0].shape == (32, 64, 3)
    code, output = cli_edit(tmp_path, tiny, "blocks", "--inject-blocks", "2,3,4")
    assert code == 0 and "inversion: 3 cached" in output, output
    other = png_frames(tmp_path / "blocks")
    assert np.array_equal(first[0], other[0])  # the anchor attends to nobody
    assert any(not np.array_equal(a, b) for a, b in zip(first[1:], other[1:], strict=True))
