"""CPU precision and kernel paths: one UNet call and one edited frame per dtype and setting.

    python benchmarks/cpu_precision.py --backbones sd2-depth sd15-controlnet --size 512
    python benchmarks/cpu_precision.py --backbones sdxl-controlnet --size 512 --dtypes bfloat16

Per full-size backbone (random weights from the configs, `full_size.py`), per dtype
(float32, bfloat16) and setting (`mkl`: torch's `nn.Linear`, what ran before; `onednn`:
linear layers through oneDNN, `pipelines.onednn`, what pix2video now does on the CPU):
- one denoiser call (UNet, plus the ControlNet where there is one) at batch 1 and 2, the
  median of interleaved repeats (A B A B, so the other jobs on the machine weigh on all),
  wall and process CPU time (steadier than wall when other jobs share the cores);
- GFLOP per call by op class (convolution, linear, attention; torch's FLOP counter), the
  achieved GFLOP/s and its fraction of the same run's best single-op rate for that dtype
  (matmul through torch/MKL, oneDNN and numpy/OpenBLAS; convolution through oneDNN);
- the time outside GEMMs and convolutions (torch profiler, one profiled call);
- one edited frame at 2 steps (wall), and the drift of its final latents (relative L2) and
  frame (mean |dpixel|, 0-255) against float32 `mkl`.
The same drift is measured on the bundled tiny model (exact SD2-depth topology, 10 steps).
Only numbers measured in one run are compared; ratios are what carries across machines.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from full_size import (  # noqa: E402
    full_size_controlnet_pipeline,
    full_size_pipeline,
    full_size_sdxl_pipeline,
)

from pix2video.pipelines.onednn import OneDNNLinear  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FRAMES_DIR = ROOT.parent / "shared" / "data" / "blackswan"
BUILDERS = {
    "sd2-depth": full_size_pipeline,
    "sd15-controlnet": full_size_controlnet_pipeline,
    "sdxl-controlnet": full_size_sdxl_pipeline,
}
SETTINGS = ("mkl", "onednn")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PROMPT, SOURCE = "a swarovski blue crystal swan on the lake", "a black swan on the lake"
GEMM_OPS = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::mkldnn_convolution",
    "mkldnn::_linear_pointwise",
)
"""Profiler ops that are GEMMs or convolutions (self time); attention's kernel is not."""


def best_seconds(fn, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - tic)
    return best


def single_op_rates(dtype: torch.dtype) -> dict[str, float]:
    """GFLOP/s of one matmul (2048^2 x 2048) through each library, and of one convolution."""
    n = 2048
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    rates = {
        "matmul torch": 2 * n**3 / best_seconds(lambda: torch.nn.functional.linear(a, b)),
        "matmul oneDNN": 2
        * n**3
        / best_seconds(lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")),
    }
    if dtype == torch.float32:
        an, bn = a.numpy(), b.numpy()
        rates["matmul numpy"] = 2 * n**3 / best_seconds(lambda: an @ bn)
    x = torch.randn(2, 320, 64, 64, dtype=dtype)
    conv = nn.Conv2d(320, 320, 3, padding=1).to(dtype)
    flops = 2 * 2 * 320 * 320 * 9 * 64 * 64
    with torch.inference_mode():
        rates["convolution"] = flops / best_seconds(lambda: conv(x))
    return {k: v / 1e9 for k, v in rates.items()}


def set_linears(pipe, setting: str) -> None:
    """`mkl`: plain `nn.Linear` (torch's default path); `onednn`: `OneDNNLinear`."""
    cls = OneDNNLinear if setting == "onednn" else nn.Linear
    for component in pipe.components.values():
        if isinstance(component, nn.Module):
            for module in component.modules():
                if isinstance(module, nn.Linear) and type(module) in (nn.Linear, OneDNNLinear):
                    module.__class__ = cls


def call_inputs(pipe, name: str, size: int):
    """(latent, conditioning, text) for one denoiser call at `size` x `size`."""
    h = w = size // pipe.vae_scale_factor
    latent = torch.randn(1, 4, h, w)
    if name == "sd2-depth":
        conditioning = torch.rand(1, 1, h, w) * 2 - 1
    else:
        conditioning = torch.rand(1, 3 * 1, size, size)
    text = pipe.encode_prompt(PROMPT)
    return latent, conditioning, text


def denoiser_call(pipe, inputs, batch: int) -> torch.Tensor:
    latent, conditioning, text = inputs
    with torch.inference_mode():
        return pipe.model_output(latent, conditioning, 500, text, batch)


def count_cpu_attention() -> None:
    """torch's FLOP counter knows the GPU attention kernels, not the CPU's flash attention
    (`_scaled_dot_product_flash_attention_for_cpu`): without this, a 512 px UNet's ~125
    GFLOP of self-attention would count as nothing. Same formula as the GPU kernels'."""
    from torch.utils import flop_counter

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(op)
    def _cpu_flash(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def flops_by_class(pipe, inputs, batch: int) -> dict[str, float]:
    count_cpu_attention()
    counter = FlopCounterMode(display=False)
    with counter:
        denoiser_call(pipe, inputs, batch)
    classes = {"convolution": 0, "linear": 0, "attention": 0, "other": 0}
    for op, flops in counter.get_flop_counts()["Global"].items():
        name = str(op)
        if "convolution" in name:
            classes["convolution"] += flops
        elif name.split(".")[-1] in ("mm", "addmm") or ".mm" in name or "addmm" in name:
            classes["linear"] += flops
        elif "bmm" in name or "attention" in name:
            classes["attention"] += flops
        else:
            classes["other"] += flops
    return {k: v / 1e9 for k, v in classes.items()}


def outside_gemms(pipe, inputs, batch: int) -> float:
    """Fraction of one call's CPU time spent outside GEMMs and convolutions."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        denoiser_call(pipe, inputs, batch)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    gemm = sum(e.self_cpu_time_total for e in events if e.key in GEMM_OPS)
    return 1 - gemm / total if total else float("nan")


def edit_one_frame(pipe, name: str, frame: np.ndarray, steps: int):
    size = frame.shape[0]
    if name == "sd2-depth":
        ramp = np.linspace(0, 1, size, dtype=np.float32)[:, None].repeat(size, 1)
        conditioning = {"depth_maps": (ramp + 0.1 * frame.mean(-1) / 255)[None]}
    else:
        from pix2video.pipelines.control import canny_image

        conditioning = {"control_images": [canny_image(frame, 100, 200)]}
    tic = time.perf_counter()
    out = pipe([frame], PROMPT, SOURCE, num_inference_steps=steps, **conditioning)
    return time.perf_counter() - tic, out


def drift(out, ref) -> tuple[float, float]:
    a, b = out.final_latents.float(), ref.final_latents.float()
    latent = float((a - b).norm() / b.norm())
    pixels = float(
        np.mean(
            [
                np.abs(x.astype(int) - y.astype(int)).mean()
                for x, y in zip(out.frames, ref.frames, strict=True)
            ]
        )
    )
    return latent, pixels


def build(name: str, dtype_name: str):
    dtype = DTYPES[dtype_name]
    if name == "sdxl-controlnet":
        return BUILDERS[name](dtype=dtype)  # created in `dtype`: no float32 copy on the way
    return BUILDERS[name]().to(dtype=dtype)  # same seed: same weights in every dtype


def measure(pipes: dict, inputs, args, frame: np.ndarray, name: str) -> dict:
    """Calls (interleaved over `pipes`' dtypes and the linear settings), profile and edit."""
    candidates = [(d, s) for d in pipes for s in SETTINGS]
    times = {(c, b): [] for c in candidates for b in (1, 2)}
    cpu = {(c, b): [] for c in candidates for b in (1, 2)}
    for rep in range(args.repeats + 1):  # the first round warms up and is not counted
        for d, s in candidates:
            set_linears(pipes[d], s)
            for b in (1, 2):
                tic, cpu_tic = time.perf_counter(), time.process_time()
                denoiser_call(pipes[d], inputs, b)
                if rep:
                    times[((d, s), b)].append(time.perf_counter() - tic)
                    cpu[((d, s), b)].append(time.process_time() - cpu_tic)
    edit_one_frame(next(iter(pipes.values())), name, frame, 1)  # warms the edit's code paths
    found = {}
    for d, s in candidates:
        set_linears(pipes[d], s)
        seconds, out = edit_one_frame(pipes[d], name, frame, args.edit_steps)
        found[(d, s)] = dict(
            t1=statistics.median(times[((d, s), 1)]),
            t2=statistics.median(times[((d, s), 2)]),
            c1=statistics.median(cpu[((d, s), 1)]),
            outside=outside_gemms(pipes[d], inputs, 1),
            seconds=seconds,
            out=out,
        )
    return found


def bench_backbone(name: str, args, frame: np.ndarray, rates: dict) -> list[str]:
    """One backbone's rows. Its dtypes run interleaved in one process, or one after the
    other where both would not fit in memory together (`--one-dtype-at-a-time`)."""
    groups = [[d] for d in args.dtypes] if args.one_dtype_at_a_time else [list(args.dtypes)]
    found, flops = {}, None
    for group in groups:
        pipes = {d: build(name, d) for d in group}
        inputs = call_inputs(next(iter(pipes.values())), name, args.size)
        if flops is None:
            flops = flops_by_class(next(iter(pipes.values())), inputs, 1)
        found.update(measure(pipes, inputs, args, frame, name))
        del pipes, inputs
    reference = found.get(("float32", "mkl"))
    base = found[(args.dtypes[0], "mkl")]
    rows = []
    for (d, s), f in found.items():
        achieved = sum(flops.values()) / f["t1"]
        best = max(rates[d].values())
        latent_drift, pixel_drift = (
            drift(f["out"], reference["out"]) if reference else (float("nan"),) * 2
        )
        rows.append(
            f"| {name} | {d} | {s} | {f['t1']:.2f} | {f['t2']:.2f} | {base['t1'] / f['t1']:.2f}x "
            f"| {f['c1']:.2f} | {base['c1'] / f['c1']:.2f}x | {flops['convolution']:.0f} / "
            f"{flops['linear']:.0f} / {flops['attention']:.0f} | {achieved:.0f} "
            f"| {achieved / best:.0%} | {f['outside']:.0%} | {f['seconds']:.1f} "
            f"| {latent_drift:.1e} | {pixel_drift:.2f} |"
        )
        print(rows[-1], flush=True)
    return rows


def tiny_drift(frame: np.ndarray, steps: int) -> str:
    from pix2video import load_pipeline

    outs = {}
    for d in ("float32", "bfloat16"):
        pipe = load_pipeline("tiny", torch_dtype=DTYPES[d])
        _, outs[d] = edit_one_frame(pipe, "sd2-depth", frame, steps)
    latent, pixels = drift(outs["bfloat16"], outs["float32"])
    return f"tiny model, bfloat16 vs float32, {steps} steps: final latents {latent:.1e} relative, frame {pixels:.2f} mean |dpixel|"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbones", nargs="+", default=["sd2-depth"], choices=list(BUILDERS))
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES)
    )
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--edit-steps", type=int, default=2)
    parser.add_argument("--tiny-steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--one-dtype-at-a-time",
        action="store_true",
        help="build and time one dtype, free it, then the next (SDXL in float32 and bfloat16 "
        "together need ~27 GB); the rows are then not interleaved",
    )
    parser.add_argument("--skip-tiny", action="store_true", help="no tiny-model drift line")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    files = sorted(FRAMES_DIR.glob("*.png")) or sorted(FRAMES_DIR.glob("*.jpg"))
    frame = np.array(Image.open(files[0]).convert("RGB").resize((args.size, args.size)))

    rates = {d: single_op_rates(DTYPES[d]) for d in args.dtypes}
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads"
    )
    for d, r in rates.items():
        print(f"single ops {d}: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in r.items()))
    print(
        "| backbone | dtype | linear layers | call b1 (s) | call b2 (s) | speed-up b1 "
        "| CPU time b1 (s) | CPU-time speed-up | GFLOP conv / linear / attention | GFLOP/s "
        f"| of best single op | outside GEMMs | 1 frame, {args.edit_steps} steps (s) "
        "| final-latent drift | frame drift |"
    )
    print("|" + "---|" * 15)
    for name in args.backbones:
        bench_backbone(name, args, frame, rates)
    if not args.skip_tiny:
        print(tiny_drift(frame, args.tiny_steps))


if __name__ == "__main__":
    main()
