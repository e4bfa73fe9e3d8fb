"""What only the SD 1.5 + ControlNet pipeline has, on tiny random models built in code
(`tiny_sd15.py`): v-prediction checkpoints against diffusers' DDIM with v-prediction (and
'sample' refused), both inversion and editing reading the control images, a masked edit,
control-image errors, canny and depth images. The base path against diffusers'
`StableDiffusionControlNetPipeline` (one and two ControlNets) and the shared loop's orders
and resume are in `test_backbones.py`, parametrized over the backbone family.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image
from support import make_frames
from test_backbones import (  # noqa: F401 (fixtures)
    EDIT,
    REFERENCE_STEPS,
    SCENE,
    Backbone,
    clip,
    controlnets,
    controls,
    our_base_path,
    pipe,
    sd15,
)

from pix2video.errors import InputError
from pix2video.pipelines.control import canny_image, depth_image
from pix2video.pipelines.sd15_controlnet import Pix2VideoControlNetPipeline

STEPS = REFERENCE_STEPS  # the shared loop's steps for SD 1.5 too (`sd15().loop_steps`)


@pytest.fixture(scope="module")
def backbone(tiny_sd15) -> Backbone:
    """This module's family for the fixtures shared with `test_backbones.py`."""
    return sd15(tiny_sd15)


# ---------------------------------------------------------------------------- base path
def scheduler(tiny_sd15, prediction_type: str):
    """The checkpoint's scheduler, as a checkpoint trained for `prediction_type` ships it."""
    return DDIMScheduler.from_pretrained(
        tiny_sd15.model / "scheduler", prediction_type=prediction_type
    )


def test_v_prediction_equals_diffusers_ddim_with_v_prediction(tiny_sd15, backbone, controlnets):
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
    theirs = backbone.reference(
        v_pipe,
        controlnets[0],
        Image.fromarray(control[0]),
        x_t,
        1.0,
        scheduler_changes={"prediction_type": "v_prediction"},
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
def test_inversion_and_editing_both_read_the_control_images(pipe, clip):
    frames, conditioning, x_t = clip
    blank = torch.zeros_like(conditioning)
    other_x_t = pipe.invert(pipe.encode_frames(frames), blank, pipe.encode_prompt(SCENE), STEPS)
    assert (other_x_t - x_t).abs().max() > 1e-3


def test_masked_edit_keeps_the_source_outside_the_mask(pipe):
    frames = make_frames(2, seed=6)
    mask = np.zeros((64, 64), np.float32)
    mask[16:48, 16:48] = 1.0
    out = pipe(
        frames,
        EDIT,
        SCENE,
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
