"""What only the SDXL family has, on tiny random models built in code (`tiny_sdxl.py`): the
packed text rows and size ids, the float16 VAE upcast, frame batching with the pooled text
row, the preview and the 1024 px default size. What every backbone family does alike (the
comparisons with diffusers' `StableDiffusionXLControlNetPipeline`, the shared loop, the job,
CLI and loading paths) is in `test_backbones.py`, parametrized over the family.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel
from support import make_frames, png_frames
from test_backbones import Backbone, controlnets, controls, pipe, sdxl, settings  # noqa: F401

from pix2video import EditSettings, edit_clip
from pix2video.job import EditJob
from pix2video.pipelines.sdxl import Pix2VideoSDXLControlNetPipeline, pack_text, unpack_text

PROMPT, SOURCE = "a red sports car", "a swan on a lake"
STEPS = 2


@pytest.fixture(scope="module")
def backbone(tiny_sdxl) -> Backbone:
    """This module's family for the fixtures shared with `test_backbones.py`."""
    return sdxl(tiny_sdxl)


# ---------------------------------------------------------------------------- base path
def test_pack_text_round_trips():
    embeds, pooled = torch.randn(2, 77, 48), torch.randn(2, 32)
    packed = pack_text(embeds, pooled)
    assert packed.shape == (2, 78, 48)
    back_embeds, back_pooled = unpack_text(packed, 32)
    assert torch.equal(back_embeds, embeds) and torch.equal(back_pooled, pooled)


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
@pytest.mark.bitwise
def test_preview_is_the_anchor_frame_of_the_full_edit(tmp_path, backbone, pipelines):
    from pix2video import preview_anchor

    s = settings(tmp_path, backbone, output=tmp_path / "full")
    preview = preview_anchor(s, pipelines=pipelines)
    result = edit_clip(s, pipelines=pipelines)
    assert result.inversion_cached == 1  # the preview's inversion is reused
    assert np.array_equal(preview.edited, png_frames(tmp_path / "full")[0])


def test_default_size_is_1024_for_sdxl_and_512_for_others(tmp_path, tiny_sdxl, backbone):
    from pix2video.job.source import read_source
    from pix2video.media import fit_size

    assert EditSettings.defaults()["size"] == "auto"
    for model, long_side in ((str(tiny_sdxl.model), 1024), ("tiny", 512)):
        job = EditJob(settings(tmp_path, backbone, model=model, size="auto"))
        source = read_source(job.ctx, anchor_only=True)
        assert (source.width, source.height) == fit_size(*source.reader.source_size, long_side)
        assert max(source.width, source.height) == long_side  # aspect kept, multiples of 8


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
