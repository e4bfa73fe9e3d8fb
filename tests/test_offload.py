"""`--offload model|sequential` (`pipelines/offload.py`): what can be checked without a GPU.

The offloaded edit itself (diffusers' hooks moving the weights to a GPU) needs a GPU: its test
is skipped without one (no GPU was lent to the sessions that built this). The others check the refusals (the CPU; a UNet backbone; a wrong mode), each
one sentence before anything is loaded, and that the pipeline reports the execution device
once offload is on.
"""

from __future__ import annotations

import re

import pytest
import torch
from click.testing import CliRunner
from support import COCKATOO

from pix2video.cli import main
from pix2video.errors import InputError
from pix2video.settings import EditSettings


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    from tiny_flux import build_flux_control

    return build_flux_control(tmp_path_factory.mktemp("offload") / "flux-depth")


def one_sentence(message: str) -> bool:
    return re.search(r"[.!?]\s+[A-Z]", message) is None and message.endswith(".")


@pytest.mark.parametrize(
    "model, pattern",
    [
        ("flux", r"this edit runs on the CPU, where they already are: drop --offload"),
        ("tiny", r"--offload is for the transformer backbones \(FLUX, SD3/SD3.5\)"),
    ],
)
def test_cli_refuses_offload_on_the_cpu_and_for_a_unet_backbone(tmp_path, flux, model, pattern):
    args = [COCKATOO, "-p", "a red car", "--source-prompt", "a swan", "--size", "64x32"]
    args += ["--model", flux if model == "flux" else model, "--max-frames", 1, "--steps", 1]
    args += ["--control", "depth"] if model == "flux" else []
    args += ["--offload", "model", "--device", "cpu", "-o", tmp_path / "out", "--no-cache"]
    result = CliRunner().invoke(main, ["edit", *map(str, args)])
    assert result.exit_code != 0 and re.search(pattern, result.output), result.output
    assert "Traceback" not in result.output
    message = next(line for line in result.output.splitlines() if "--offload" in line)
    assert one_sentence(message.split(": ", 1)[-1] if message.startswith("Error") else message)


def test_a_wrong_mode_and_the_cpu_are_one_sentence(flux):
    with pytest.raises(InputError, match=r"offload.*all"):
        EditSettings(input=COCKATOO, prompt="a car", output="out", offload="all").validate()
    from pix2video.pipelines.checkpoints import load_pipeline

    pipe = load_pipeline(str(flux))
    with pytest.raises(InputError, match=r"runs on the CPU") as error:
        pipe.enable_offload("model", "cpu")
    assert one_sentence(str(error.value))
    assert pipe.offload_device is None and pipe.device.type == "cpu"


def test_under_offload_the_pipeline_reports_the_execution_device(flux):
    """diffusers' `device` says where the weights rest (the CPU); the loop needs the GPU's."""
    from pix2video.pipelines.checkpoints import load_pipeline

    pipe = load_pipeline(str(flux))
    pipe.__dict__["_offload_execution"] = torch.device("cuda", 0)  # as `enable_offload` sets it
    assert pipe.device == torch.device("cuda", 0)
    assert pipe.transformer.device.type == "cpu"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_an_offloaded_edit_on_a_gpu_equals_the_whole_model_there(tmp_path, flux, mode):
    """On a GPU: the same FLUX.1 Depth edit with the weights offloaded and without."""
    import numpy as np
    from support import png_frames

    from pix2video import edit_clip

    frames = {}
    for offload in (None, mode):
        name = f"out-{offload}"
        s = EditSettings(
            input=COCKATOO, prompt="a golden cockatoo", source_prompt="a white cockatoo",
            model=str(flux), control=("canny",), size="64x32", max_frames=2, steps=2,
            device="cuda", dtype="float32", offload=offload, output=tmp_path / name,
            no_cache=True,
        )  # fmt: skip
        result = edit_clip(s)
        assert result.frames == 2 and result.device.startswith("cuda")
        frames[offload] = png_frames(tmp_path / name)
    for a, b in zip(frames[None], frames[mode], strict=True):
        assert np.abs(a.astype(int) - b).max() <= 1  # the same kernels on the same GPU
