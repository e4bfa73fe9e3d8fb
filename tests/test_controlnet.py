"""The SD 1.5 + ControlNet pipeline on tiny random models built in code (`tiny_sd15.py`).

The base path (no injection, no latent guidance) is checked against diffusers' own
`StableDiffusionControlNetPipeline` started from the same x_T, with one and with two
ControlNets; v-prediction checkpoints against diffusers' DDIM with v-prediction; the
shared loop's properties (processing orders, resume, masks) with injection on.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, DDIMScheduler, StableDiffusionControlNetPipeline
from PIL import Image
from support import make_frames

from pix2video.errors import InputError
from pix2video.pipelines.backbone import reference_scheduler
from pix2video.pipelines.control import canny_image, depth_image
from pix2video.pipelines.sd15_controlnet import Pix2VideoControlNetPipeline

PROMPT, SOURCE = "a red sports car", "a swan on a lake"
STEPS = 3


@pytest.fixture(scope="module")
def controlnets(tiny_sd15):
    return [ControlNetModel.from_pretrained(path) for path in tiny_sd15.controlnets]


@pytest.fixture(scope="module")
def pipe(tiny_sd15, controlnets):
    pipe = Pix2VideoControlNetPipeline.from_pretrained(tiny_sd15.model, controlnet=controlnets[0])
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def multi_pipe(tiny_sd15, controlnets):
    pipe = Pix2VideoControlNetPipeline.from_pretrained(tiny_sd15.model, controlnet=controlnets)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def controls(frames: list[np.ndarray]) -> list[np.ndarray]:
    return [canny_image(f, 100, 200) for f in frames]


def diffusers_reference(pipe, controlnet, images, x_t, scale, **scheduler_changes):
    """diffusers' ControlNet pipeline on the same components, DDIM as ours, from `x_t`."""
    theirs = StableDiffusionControlNetPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=pipe.unet,
        controlnet=controlnet,
        scheduler=reference_scheduler({**pipe.scheduler.config, **scheduler_changes}),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    theirs.set_progress_bar_config(disable=True)
    return theirs(
        PROMPT,
        image=images,
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        latents=x_t,
        controlnet_conditioning_scale=scale,
        output_type="latent",
    ).images


def our_base_path(pipe, x_t, conditioning):
    final, _ = pipe.edit(
        x_t,
        conditioning,
        pipe.encode_prompt(PROMPT),
        pipe.encode_prompt(""),
        num_inference_steps=STEPS,
        attend="none",
        latent_guidance_weight=0.0,
    )
    return final


# ---------------------------------------------------------------------------- base path
def test_anchor_frame_equals_diffusers_controlnet_pipeline(pipe, controlnets):
    frame = make_frames(1)[0]
    control = controls([frame])
    x_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    pipe.set_controlnet_scales([0.8])
    conditioning = pipe.prepare_conditioning([frame], control_images=control)
    ours = our_base_path(pipe, x_t, conditioning)
    theirs = diffusers_reference(pipe, controlnets[0], Image.fromarray(control[0]), x_t, 0.8)
    gap = (ours - theirs).abs().max().item()
    assert gap < 1e-4, gap
    # the ControlNet matters: another control image moves the result far more than that
    other = pipe.prepare_conditioning([frame], control_images=[np.zeros_like(control[0])])
    assert (our_base_path(pipe, x_t, other) - ours).abs().max().item() > 1000 * max(gap, 1e-6)


def test_two_controlnets_equal_diffusers_multicontrolnet(multi_pipe, controlnets):
    frame = make_frames(1, seed=4)[0]
    edges = canny_image(frame, 50, 150)
    depth = depth_image(torch.from_numpy(frame[..., 0].astype(np.float32)), (64, 64))
    x_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    multi_pipe.set_controlnet_scales([0.7, 1.2])
    conditioning = multi_pipe.prepare_conditioning([frame], control_images=[[edges, depth]])
    assert conditioning.shape == (1, 6, 64, 64)
    ours = our_base_path(multi_pipe, x_t, conditioning)
    images = [Image.fromarray(edges), Image.fromarray(depth)]
    theirs = diffusers_reference(multi_pipe, controlnets, images, x_t, [0.7, 1.2])
    assert (ours - theirs).abs().max().item() < 1e-4
    evaluations = multi_pipe.controlnet_evaluations
    our_base_path(multi_pipe, x_t, conditioning)
    assert multi_pipe.controlnet_evaluations - evaluations == STEPS * 2 * 2  # CFG rows x nets


def scheduler(tiny_sd15, prediction_type: str):
    """The checkpoint's scheduler, as a checkpoint trained for `prediction_type` ships it."""
    return DDIMScheduler.from_pretrained(
        tiny_sd15.model / "scheduler", prediction_type=prediction_type
    )


def test_v_prediction_equals_diffusers_ddim_with_v_prediction(tiny_sd15, controlnets):
    """eps = sqrt(a) v + sqrt(1-a) x: the same trajectory as diffusers' DDIM on v."""
    v_pipe = Pix2VideoControlNetPipeline.from_pretrained(
        tiny_sd15.model, controlnet=controlnets[0], scheduler=scheduler(tiny_sd15, "v_prediction")
    )
    assert v_pipe.scheduler.config.prediction_type == "v_prediction"
    frame = make_frames(1, seed=2)[0]
    control = controls([frame])
    x_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    conditioning = v_pipe.prepare_conditioning([frame], control_images=control)
    ours = our_base_path(v_pipe, x_t, conditioning)
    theirs = diffusers_reference(
        v_pipe,
        controlnets[0],
        Image.fromarray(control[0]),
        x_t,
        1.0,
        prediction_type="v_prediction",
    )
    assert (ours - theirs).abs().max().item() < 1e-4
    # and it is not the epsilon reading of the same outputs
    eps_pipe = Pix2VideoControlNetPipeline.from_pretrained(
        tiny_sd15.model, controlnet=controlnets[0]
    )
    assert (our_base_path(eps_pipe, x_t, conditioning) - ours).abs().max().item() > 1e-2


def test_sample_prediction_is_refused_in_one_sentence(tiny_sd15, controlnets):
    from pix2video.errors import ModelNotAvailableError

    with pytest.raises(ModelNotAvailableError, match="predicts 'sample'.*epsilon or v_prediction"):
        Pix2VideoControlNetPipeline.from_pretrained(
            tiny_sd15.model, controlnet=controlnets[0], scheduler=scheduler(tiny_sd15, "sample")
        )


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
        x_t, conditioning, pipe.encode_prompt(PROMPT), pipe.encode_prompt(""), **kwargs
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


def test_inversion_and_editing_both_read_the_control_images(pipe, clip):
    frames, conditioning, x_t = clip
    blank = torch.zeros_like(conditioning)
    other_x_t = pipe.invert(pipe.encode_frames(frames), blank, pipe.encode_prompt(SOURCE), STEPS)
    assert (other_x_t - x_t).abs().max() > 1e-3


def test_masked_edit_keeps_the_source_outside_the_mask(pipe):
    frames = make_frames(2, seed=6)
    mask = np.zeros((64, 64), np.float32)
    mask[16:48, 16:48] = 1.0
    out = pipe(
        frames,
        PROMPT,
        SOURCE,
        num_inference_steps=STEPS,
        control_images=controls(frames),
        masks=[mask, mask],
    )
    for source, edited in zip(frames, out.frames, strict=True):
        assert np.array_equal(edited[mask == 0], source[mask == 0])
        assert not np.array_equal(edited[mask == 1], source[mask == 1])


def test_control_image_errors_are_one_sentence(pipe):
    frames = make_frames(2)
    with pytest.raises(InputError, match="Expected 2 control images"):
        pipe.prepare_conditioning(frames, control_images=controls(frames)[:1])
    with pytest.raises(InputError, match="needs one control image per frame"):
        pipe.prepare_conditioning(frames)
    with pytest.raises(InputError, match="must be 64x64 RGB"):
        pipe.prepare_conditioning(frames, control_images=[np.zeros((32, 32, 3), np.uint8)] * 2)


def test_canny_and_depth_images_are_deterministic():
    frame = make_frames(1, seed=9)[0]
    edges = canny_image(frame, 100, 200)
    assert edges.shape == (64, 64, 3) and edges.dtype == np.uint8
    assert set(np.unique(edges)) <= {0, 255} and 0 < (edges > 0).mean() < 0.9
    assert np.array_equal(edges, canny_image(frame.copy(), 100, 200))
    assert (canny_image(frame, 10, 20) > 0).sum() > (edges > 0).sum()  # lower thresholds: more
    raw = torch.linspace(1, 5, 16 * 16).reshape(16, 16)
    image = depth_image(raw, (64, 32))
    assert image.shape == (32, 64, 3) and image.max() == 255
    assert np.array_equal(image, depth_image(raw.clone(), (64, 32)))
    assert image[-1].mean() > image[0].mean()  # larger depth values are brighter
