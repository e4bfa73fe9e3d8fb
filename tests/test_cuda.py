"""The paths that need CUDA (marker `cuda`; skipped without a GPU, run by
`benchmarks/gpu_check.py`): float16 and bfloat16 pipelines, the SDXL VAE's float32 upcast,
`--frame-batch auto`, `--compile`, `doctor`'s CUDA lines, and with two GPUs the NCCL
exchange of one clip split across them. Tiny random models: that each path runs and agrees
with the CPU's float32 as far as its precision allows; speed is `gpu_check.py`'s table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from support import make_frames
from test_backbones import controls
from test_gpu_path import FRAMES
from test_multi_worker import settings
from test_sdxl import PROMPT, SOURCE, STEPS

from pix2video import edit_clip
from pix2video.cli import main
from pix2video.job import PipelineCache
from pix2video.pipelines.checkpoints import load_pipeline

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def cpu_frames(tiny_pipe):
    return tiny_pipe(FRAMES, "a red car", "a blue car", num_inference_steps=2).frames


def mean_gap(frames, expected) -> float:
    return float(
        np.mean([np.abs(a.astype(float) - b).mean() for a, b in zip(frames, expected, strict=True)])
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_reduced_precision_on_cuda(dtype, cpu_frames, report_measurement):
    pipe = load_pipeline("tiny", device="cuda", torch_dtype=dtype)
    out = pipe(FRAMES, "a red car", "a blue car", num_inference_steps=2)
    assert torch.isfinite(out.final_latents).all()
    gap = mean_gap(out.frames, cpu_frames)
    report_measurement(f"CUDA {dtype} vs CPU float32: mean grey-level gap", f"{gap:.2f}")
    assert gap < 40  # the random model amplifies rounding (test_gpu_path.py)


def test_sdxl_float16_upcasts_the_vae_on_cuda(tiny_sdxl):
    from diffusers import ControlNetModel

    from pix2video.pipelines.sdxl import Pix2VideoSDXLControlNetPipeline

    net = ControlNetModel.from_pretrained(tiny_sdxl.controlnets[0], dtype=torch.float16)
    half = Pix2VideoSDXLControlNetPipeline.from_pretrained(
        tiny_sdxl.model, controlnet=net, dtype=torch.float16
    ).to("cuda")
    half.set_progress_bar_config(disable=True)
    assert half.unet.dtype == torch.float16 and half.vae.dtype == torch.float32
    frames = make_frames(2, seed=8)
    out = half(frames, PROMPT, SOURCE, num_inference_steps=STEPS, control_images=controls(frames))
    assert torch.isfinite(out.final_latents).all()
    assert all(np.isfinite(f.astype(float)).all() and f.std() > 0 for f in out.frames)


def test_auto_frame_batch_on_cuda(report_measurement):
    pipe = load_pipeline("tiny", device="cuda")
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(6, 4, 8, 8, generator=g).cuda()
    depth = (torch.rand(6, 1, 8, 8, generator=g) * 2 - 1).cuda()
    text, negative = pipe.encode_prompt("a red car"), pipe.encode_prompt("")
    one, _ = pipe.edit(x_t, depth, text, negative, num_inference_steps=2, frame_batch=1)
    auto, store = pipe.edit(x_t, depth, text, negative, num_inference_steps=2, frame_batch="auto")
    report_measurement("CUDA --frame-batch auto on 6 tiny frames: chosen", str(store.chunk_size))
    assert 2 <= store.chunk_size <= 6  # a tiny model fits the whole clip in one call
    gap = float((auto - one).abs().max())
    report_measurement("CUDA auto frame batch vs one at a time: max gap", f"{gap:.2e}")
    assert gap < 1e-3


def test_compiled_unet_on_cuda(cpu_frames):
    pipe = PipelineCache().get("tiny", "cuda", torch.float32, compile=True)
    out = pipe(FRAMES, "a red car", "a blue car", num_inference_steps=2)
    plain = load_pipeline("tiny", device="cuda")(
        FRAMES, "a red car", "a blue car", num_inference_steps=2
    )
    for a, b in zip(out.frames, plain.frames, strict=True):
        assert np.abs(a.astype(int) - b).max() <= 2


def test_doctor_lists_the_gpus():
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0, result.output
    for i in range(torch.cuda.device_count()):
        assert f"cuda:{i}" in result.output and torch.cuda.get_device_name(i) in result.output


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_nccl_exchange_equals_one_process(tmp_path: Path, report_measurement):
    """One clip on cuda:0 and cuda:1 (NCCL) against one process on cuda:0."""
    from test_multi_worker import final_latents

    edit_clip(settings(tmp_path / "one", None, device="cuda:0"))
    two = settings(tmp_path / "two", None, device="cuda", devices=("cuda:0", "cuda:1"))
    result = edit_clip(two)
    assert result.workers == 2 and result.bytes_exchanged > 0
    gap = float(np.abs(final_latents(tmp_path / "two") - final_latents(tmp_path / "one")).max())
    report_measurement("NCCL, 2 GPUs vs one process: max gap", f"{gap:.2e}")
    assert gap <= 1e-4  # same kernels; cuDNN may pick others for other batch shapes
