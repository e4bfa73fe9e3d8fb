"""The GPU path, run on the CPU for correctness: reduced precision, channels-last, compile.

Timings on a GPU are in the session notes and benchmarks/README.md; here only that each
path runs the real pipeline and agrees with float32 as far as its precision allows.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pix2video.job import PipelineCache
from pix2video.pipelines.checkpoints import load_pipeline

FRAMES = [np.random.default_rng(i).integers(0, 255, (64, 96, 3), dtype=np.uint8) for i in range(2)]


@pytest.fixture(scope="module")
def float32_frames(tiny_pipe):
    return tiny_pipe(FRAMES, "a red car", "a blue car", num_inference_steps=2).frames


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_weights_run_the_pipeline(dtype, float32_frames):
    pipe = load_pipeline("tiny", torch_dtype=dtype)
    assert pipe.unet.dtype == dtype and pipe.vae.dtype == dtype
    out = pipe(FRAMES, "a red car", "a blue car", num_inference_steps=2)
    assert [f.shape for f in out.frames] == [(64, 96, 3)] * 2
    assert torch.isfinite(out.final_latents).all()
    assert out.final_latents.dtype == torch.float32  # the scheduler arithmetic stays float32
    # the random-weight model amplifies rounding, so only a loose agreement is meaningful
    diff = np.mean(
        [
            np.abs(a.astype(float) - b).mean()
            for a, b in zip(out.frames, float32_frames, strict=True)
        ]
    )
    assert diff < 40


def test_channels_last_unet_gives_the_same_result(float32_frames):
    pipe = load_pipeline("tiny")
    pipe.unet.to(memory_format=torch.channels_last)
    out = pipe(FRAMES, "a red car", "a blue car", num_inference_steps=2)
    for a, b in zip(out.frames, float32_frames, strict=True):
        assert np.abs(a.astype(int) - b).max() <= 2


@pytest.mark.slow
def test_compiled_unet_gives_the_same_result(float32_frames):
    """`--compile`: torch.compile (inductor) of the UNet in place; ~15 min on our CPUs."""
    pipe = PipelineCache().get("tiny", "cpu", torch.float32, compile=True)
    out = pipe(FRAMES, "a red car", "a blue car", num_inference_steps=2)
    for a, b in zip(out.frames, float32_frames, strict=True):
        assert np.abs(a.astype(int) - b).max() <= 2
    assert pipe.unet_evaluations == 2 * 2 + 2 * 2 * 2
