"""The transformer backbones' text encoders run once per prompt and are freed after a job's
prompts (`pipelines/text_encoders.py`), on the tiny FLUX.1 Depth and SD3 models, offline.

- a prompt is encoded once, then remembered; released encoders are gone (None), a seen
  prompt needs none, a new one reloads them from the checkpoint and equals a fresh
  pipeline's embedding bitwise;
- encoders that cannot be reloaded as they are (a pipeline built from components) are moved
  to the CPU, not dropped;
- a job frees them once its prompts are encoded; a second job with the same prompts on the
  reused pipeline (a server's `PipelineCache`) encodes nothing and gives the same frames.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from support import COCKATOO, png_frames

from pix2video.pipelines.checkpoints import load_pipeline

ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> SimpleNamespace:
    from tiny_flux import build_flux_control
    from tiny_sd3 import build_sd3, build_sd3_controlnet
    from tiny_sd15 import build_depth_anything

    root = tmp_path_factory.mktemp("text-encoders")
    return SimpleNamespace(
        flux=build_flux_control(root / "flux-depth"),
        sd3=build_sd3(root / "sd3"),
        sd3_controlnet=build_sd3_controlnet(root / "sd3-cn", seed=1),
        depth_model=build_depth_anything(root / "depth-anything"),
    )


def loaded(tiny, family: str):
    if family == "flux":
        return load_pipeline(str(tiny.flux))
    return load_pipeline(str(tiny.sd3), controlnets=[str(tiny.sd3_controlnet)])


def encoders(pipe) -> list:
    return [getattr(pipe, name, None) for name in ENCODERS]


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_prompts_are_encoded_once_and_released_encoders_reload_for_a_new_prompt(tiny, family):
    pipe = loaded(tiny, family)
    first = pipe.encode_prompt("a red car")
    assert pipe.encode_prompt("a red car") is first and pipe.text_encoder_calls == 1
    pipe.release_text_encoders()
    assert all(e is None for e in encoders(pipe))
    assert pipe.encode_prompt("a red car") is first  # remembered: no encoder needed
    assert all(e is None for e in encoders(pipe))
    again = pipe.encode_prompt("a swan on a lake")  # new: the encoders come back
    assert pipe.text_encoder_calls == 2 and pipe.text_encoder is not None
    fresh = loaded(tiny, family)
    assert torch.equal(again, fresh.encode_prompt("a swan on a lake"))
    assert torch.equal(first, fresh.encode_prompt("a red car"))


def test_encoders_that_cannot_be_reloaded_are_moved_to_the_cpu_not_dropped(tiny):
    from pix2video.pipelines.flux import Pix2VideoFluxControlPipeline

    pipe = loaded(tiny, "flux")
    built = Pix2VideoFluxControlPipeline(**pipe.components)  # no checkpoint to reload from
    assert not built.text_encoders_reloadable and pipe.text_encoders_reloadable
    embedding = built.encode_prompt("a red car")
    built.release_text_encoders()
    assert all(e is not None and e.device.type == "cpu" for e in encoders(built)[:2])
    assert torch.equal(built.encode_prompt("a new prompt"), pipe.encode_prompt("a new prompt"))
    assert torch.equal(embedding, pipe.encode_prompt("a red car"))


def test_a_job_frees_the_encoders_and_a_reused_pipeline_encodes_nothing_again(
    tiny, tmp_path, pipelines
):
    from pix2video import EditSettings, edit_clip

    settings = EditSettings(
        input=COCKATOO, prompt="a red car", source_prompt="a swan", model=str(tiny.flux),
        control=("depth",), depth_model=str(tiny.depth_model), size="64x32", max_frames=2,
        steps=2, dtype="float32", output=tmp_path / "first", no_cache=True,
    )  # fmt: skip
    edit_clip(settings, pipelines=pipelines)
    pipe = next(iter(pipelines._pipes.values()))
    assert all(e is None for e in encoders(pipe)) and pipe.text_encoder_calls == 3
    edit_clip(settings.replace(output=tmp_path / "second"), pipelines=pipelines)
    assert pipe.text_encoder_calls == 3 and all(e is None for e in encoders(pipe))
    first, second = png_frames(tmp_path / "first"), png_frames(tmp_path / "second")
    assert len(first) == 2 and all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
