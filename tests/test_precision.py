"""`--dtype auto` and bfloat16 on the CPU (`pix2video.precision`).

The CPU-feature probe takes the flags as input, so every device kind's choice is tested
here whatever this machine is. The bfloat16 edit runs on any CPU (emulated where it is not
native): the real command line, the job and the pipeline give bitwise identical frames
(same kernels, same shapes, one process), finite and not the float32 frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from support import COCKATOO, PROMPT, SOURCE, png_frames

from pix2video import EditSettings, edit_clip
from pix2video.cli import main
from pix2video.errors import InputError
from pix2video.job import PipelineCache
from pix2video.job.checks import resolve_compute, resolve_device
from pix2video.media import fit_size, read_clip, resize_frames
from pix2video.pipelines.onednn import OneDNNLinear, onednn_available, use_onednn_linears
from pix2video.precision import choose_dtype, cpu_flags, native_bfloat16, onednn_isa_limit

SIZE, FRAMES, STEPS = "128", 2, 2
EPYC = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE = "flags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n"
OLD_XEON = "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes\n"


# --------------------------------------------------------------------------- resolution


@pytest.mark.parametrize(
    "cpuinfo, device, expected, why",
    [
        (EPYC, "cpu", "bfloat16", "avx512_bf16"),
        (SAPPHIRE, "cpu", "bfloat16", "amx_bf16"),
        (OLD_XEON, "cpu", "float32", "no native bfloat16"),
        (ARM, "cpu", "float32", "no native bfloat16"),
        ("", "cpu", None, None),  # no flags line: torch's own probe answers
        (OLD_XEON, "cuda", "float16", "CUDA GPU"),
        (EPYC, "mps", "float32", "mps"),
    ],
    ids=["epyc-avx512bf16", "amx", "avx512-no-bf16", "arm", "unreadable", "cuda", "other"],
)
def test_auto_picks_per_device_kind(cpuinfo, device, expected, why):
    flags = cpu_flags(cpuinfo)
    choice = choose_dtype("auto", device, flags)
    if expected is None:  # whatever torch says about this machine, one of the two
        assert choice.name in ("bfloat16", "float32")
        return
    assert choice.name == expected
    assert why in choice.reason and choice.reason.startswith("auto")


def test_a_onednn_isa_limit_below_bfloat16_keeps_auto_at_float32():
    """CI reruns the bitwise tests under ONEDNN_MAX_CPU_ISA=AVX2 and SSE41: there, as on a
    user's CPU without the instructions, bfloat16 would be emulated, so auto is float32."""
    for isa in ("AVX2", "sse41", "AVX512_CORE"):
        assert onednn_isa_limit({"ONEDNN_MAX_CPU_ISA": isa}) == isa.upper()
        choice = choose_dtype("auto", "cpu", {"avx512_bf16"}, isa.upper())
        assert choice.name == "float32" and "ONEDNN_MAX_CPU_ISA" in choice.reason
    for environ in ({}, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, {"DNNL_MAX_CPU_ISA": "ALL"}):
        assert onednn_isa_limit(environ) is None
    assert onednn_isa_limit({"DNNL_MAX_CPU_ISA": "avx2"}) == "AVX2"
    assert choose_dtype("bfloat16", "cpu", {"avx512_bf16"}, "AVX2").name == "bfloat16"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_an_explicit_dtype_is_kept_on_every_device(dtype, device):
    assert choose_dtype(dtype, device, cpu_flags(OLD_XEON)).name == dtype
    assert choose_dtype(dtype, device).reason == "asked for"


def test_float16_on_the_cpu_and_unknown_dtypes_are_one_sentence():
    with pytest.raises(InputError, match="float16 needs a GPU; on the CPU use auto, bfloat16"):
        choose_dtype("float16", "cpu", cpu_flags(SAPPHIRE))
    with pytest.raises(InputError, match="--dtype must be one of auto, float32"):
        choose_dtype("float8", "cpu")
    assert choose_dtype("float16", "cuda").name == "float16"


def test_this_machine_resolves_auto_as_its_flags_say():
    device, choice = resolve_compute("cpu", "auto")
    native = native_bfloat16(cpu_flags()) and onednn_isa_limit() is None
    want = "bfloat16" if native else "float32"
    assert device.type == "cpu" and choice.name == want
    assert resolve_device("cpu", "auto") == (device, getattr(torch, want))
    assert EditSettings("in.mp4", "p", "out.mp4").dtype == "auto"


# --------------------------------------------------------------------------- a bfloat16 edit


@pytest.mark.bitwise
def test_bfloat16_edit_cli_job_and_pipeline_are_identical_and_finite(tmp_path, report_measurement):
    pipelines = PipelineCache(size=2)
    args = [COCKATOO, "-p", PROMPT, "--source-prompt", SOURCE, "--model", "tiny", "--size", SIZE]
    args += ["--max-frames", FRAMES, "--steps", STEPS, "--dtype", "bfloat16", "-q"]
    result = CliRunner().invoke(
        main, ["edit", *map(str, args), "-o", str(tmp_path / "cli"), "--cache-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output

    settings = EditSettings(
        COCKATOO, PROMPT, tmp_path / "job", source_prompt=SOURCE, model="tiny", size=SIZE,
        max_frames=FRAMES, steps=STEPS, dtype="bfloat16", cache_dir=tmp_path / "c2",
    )  # fmt: skip
    job = edit_clip(settings, pipelines=pipelines)
    assert (job.dtype, job.dtype_reason) == ("bfloat16", "asked for")

    clip = read_clip(COCKATOO, max_frames=FRAMES)
    frames = resize_frames(clip.frames, fit_size(*clip.source_size, int(SIZE)))
    pipe = pipelines.get("tiny", torch.device("cpu"), torch.bfloat16)
    assert pipe.unet.dtype == torch.bfloat16
    out = pipe(frames, PROMPT, SOURCE, num_inference_steps=STEPS)
    assert out.final_latents.dtype == out.inverted_latents.dtype == torch.float32  # trajectories
    assert torch.isfinite(out.final_latents).all()

    from_cli, from_job = png_frames(tmp_path / "cli"), png_frames(tmp_path / "job")
    assert len(from_cli) == len(from_job) == len(out.frames) == FRAMES
    for a, b, c in zip(from_cli, from_job, out.frames, strict=True):
        assert np.array_equal(a, b) and np.array_equal(b, c)

    fp32 = edit_clip(
        settings.replace(dtype="float32", output=tmp_path / "f32", cache_dir=tmp_path / "c3"),
        pipelines=pipelines,
    )
    assert fp32.dtype == "float32"
    gap = max(
        np.abs(a.astype(int) - b.astype(int)).mean()
        for a, b in zip(from_job, png_frames(Path(fp32.output)), strict=True)
    )
    report_measurement("bfloat16 vs float32 tiny edit, mean |dpixel| (0-255)", f"{gap:.2f}")
    assert 0 < gap < 64  # a different precision, still the same edit


# --------------------------------------------------------------------------- oneDNN linears


@pytest.mark.parametrize("shape", [(7, 40), (2, 77, 40), (3, 5, 6, 40)])
def test_onednn_linear_is_nn_linear_up_to_rounding(shape):
    torch.manual_seed(0)
    plain = torch.nn.Linear(40, 24)
    fast = torch.nn.Linear(40, 24)
    fast.load_state_dict(plain.state_dict())
    assert use_onednn_linears(fast) == (1 if onednn_available() else 0)
    x = torch.randn(*shape)
    with torch.inference_mode():
        want, got = plain(x), fast(x)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # summation order only
        # a transposed (non-contiguous) input, bfloat16 weights, float64 (falls back)
        xt = torch.randn(*shape[:-1][::-1], 40).transpose(0, -2) if len(shape) > 2 else x
        torch.testing.assert_close(fast(xt), plain(xt), rtol=1e-5, atol=1e-5)
        fast.to(torch.float64), plain.to(torch.float64)
        assert torch.equal(fast(x.double()), plain(x.double()))
        fast.to(torch.bfloat16), plain.to(torch.bfloat16)
        torch.testing.assert_close(
            fast(x.bfloat16()).float(), plain(x.bfloat16()).float(), rtol=2e-2, atol=2e-2
        )
    y = fast.float()(x.requires_grad_())  # gradients: the ordinary path
    y.sum().backward()
    assert x.grad is not None and fast.state_dict().keys() == plain.state_dict().keys()


FALLBACK = """
import torch
from pix2video.pipelines.onednn import OneDNNLinear
layer = torch.nn.Linear(40, 24).to(torch.bfloat16)
x = torch.randn(3, 40, dtype=torch.bfloat16)
want = torch.nn.functional.linear(x, layer.weight, layer.bias)
layer.__class__ = OneDNNLinear
with torch.no_grad():
    assert torch.equal(layer(x), want) and torch.equal(layer(x), want)
print("ok")
"""


@pytest.mark.integration
def test_bfloat16_linears_fall_back_where_onednn_has_no_bfloat16_kernel():
    """--dtype bfloat16 on a CPU (or an ONEDNN_MAX_CPU_ISA) without bfloat16 instructions:
    oneDNN refuses the kernel; the layer computes as torch's own linear instead of failing."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
    done = subprocess.run(
        [sys.executable, "-c", FALLBACK], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_cpu_pipelines_run_every_linear_through_onednn_and_stay_swappable(tiny_pipe):
    if not onednn_available():
        pytest.skip("this torch build has no oneDNN")
    linears = [m for m in tiny_pipe.unet.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is OneDNNLinear for m in linears)
    processors = tiny_pipe.unet.attn_processors
    tiny_pipe.unet.set_attn_processor(dict(processors))  # still swappable, unchanged
    assert tiny_pipe.unet.attn_processors.keys() == processors.keys()


def test_float32_edit_with_onednn_linears_is_mkls_up_to_rounding(tiny_pipe, report_measurement):
    """The float32 result of today's kernels, up to rounding the random tiny model amplifies."""
    clip = read_clip(COCKATOO, max_frames=FRAMES)
    frames = resize_frames(clip.frames, fit_size(*clip.source_size, int(SIZE)))
    fast = tiny_pipe(frames, PROMPT, SOURCE, num_inference_steps=STEPS)
    linears = [m for m in tiny_pipe.unet.modules() if type(m) is OneDNNLinear]
    try:
        for m in linears:
            m.__class__ = torch.nn.Linear
        plain = tiny_pipe(frames, PROMPT, SOURCE, num_inference_steps=STEPS)
    finally:
        for m in linears:
            m.__class__ = OneDNNLinear
    scale = plain.final_latents.abs().max().item()
    gap = (fast.final_latents - plain.final_latents).abs().max().item()
    report_measurement(
        "oneDNN vs MKL linears, float32 tiny edit, max |dlatent|", f"{gap:.1e} of {scale:.1f}"
    )
    assert gap < 1e-2 * scale


def test_summary_and_doctor_name_the_dtype_and_why():
    from pix2video.cli.edit import format_summary
    from pix2video.environment import devices
    from pix2video.job import EditResult

    result = EditResult(
        output="out.mp4", frames=1, frame_indices=[0], size=(64, 64), output_size=(64, 64),
        fps=25.0, has_audio=False, source_prompt="s", captioned=False, device="cpu",
        dtype="bfloat16", steps=2, dtype_reason="auto: this CPU computes bfloat16 natively, x",
    )  # fmt: skip
    assert "Precision: bfloat16 on cpu (auto: this CPU computes bfloat16 natively, x)." in (
        format_summary(result)
    )
    auto = dict(devices())["--dtype auto"]
    assert auto.startswith("cpu: ") and resolve_compute("cpu", "auto")[1].describe() in auto
