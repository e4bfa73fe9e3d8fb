"""Time, UNet evaluations and memory of a Pix2Video edit, per frame, for several clip lengths.

    python benchmarks/bench_pipeline.py --model tiny --size 512 --frames 4 16 --steps 50
    python benchmarks/bench_pipeline.py --model full --size 256 --frames 2 4 --steps 10
    python benchmarks/bench_pipeline.py --model full-controlnet --size 256 --frames 2 --steps 2
    python benchmarks/bench_pipeline.py --model full-sdxl --size 1024 --frames 1 --steps 2 --dtype bfloat16
    python benchmarks/bench_pipeline.py --model full --size 512 --frames 4 16 --device cuda --dtype float16

Each clip length runs in its own process, so the peak memory (RSS; CUDA peak on a GPU) is that
run's alone. Frames are real footage (blackswan, or any folder via --frames-dir) with a
synthetic depth ramp, so the depth estimator is not part of the timing.
`--model full` is the full-size SD2-depth architecture with random weights, `--model
full-controlnet` the full-size SD 1.5 architecture with one ControlNet fed canny edges of the
frames, `--model full-sdxl` the full-size SDXL architecture with one SDXL ControlNet (see
full_size.py); ControlNet evaluations are counted like the UNet's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FRAMES = ROOT.parent / "shared" / "data" / "blackswan"


def reference_store_bytes(pipe, height: int, width: int, steps: int) -> int:
    """What the authors' code keeps: norm1 inputs of all 16 blocks, all steps, 2 branches, 3 frames."""
    total = 0
    h, w = height // 8, width // 8
    for name, module in pipe.unet.named_modules():
        if name.endswith("attn1") and hasattr(module, "to_q"):
            level = _level(name, len(pipe.unet.config.block_out_channels))
            tokens = (h >> level) * (w >> level)
            total += tokens * module.to_q.in_features
    return total * 4 * steps * 2 * 3


def _level(name: str, levels: int) -> int:
    parts = name.split(".")
    if parts[0] == "mid_block":
        return levels - 1
    index = int(parts[1])
    return index if parts[0] == "down_blocks" else levels - 1 - index


def reset_peak_rss() -> None:
    """On Linux, restart the process's peak-RSS count (VmHWM) from its current size."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss() -> int:
    """Peak RSS in bytes since `reset_peak_rss` (Linux), else since the process started."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_one(args) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from pix2video.cli.memory import use_one_malloc_arena
    from pix2video.pipelines.checkpoints import load_pipeline

    use_one_malloc_arena()  # as the `pix2video` command does
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    controlnet = args.model in ("full-controlnet", "full-sdxl")
    if args.model in ("full", "full-controlnet", "full-sdxl"):
        sys.path.insert(0, str(Path(__file__).parent))
        from full_size import (
            full_size_controlnet_pipeline,
            full_size_pipeline,
            full_size_sdxl_pipeline,
        )

        build = {
            "full": full_size_pipeline,
            "full-controlnet": full_size_controlnet_pipeline,
            "full-sdxl": full_size_sdxl_pipeline,
        }[args.model]
        pipe = build(dtype).to(args.device)
    else:
        pipe = load_pipeline(args.model, device=args.device, torch_dtype=dtype)
    width, height = args.size, args.size
    files = sorted(Path(args.frames_dir).glob("*.png"))[: args.num_frames]
    frames = [np.array(Image.open(f).convert("RGB").resize((width, height))) for f in files]
    ramp = np.linspace(0, 1, height, dtype=np.float32)[:, None].repeat(width, 1)
    depth = np.stack([ramp + 0.1 * f.mean(-1) / 255 for f in frames])

    calls = {"forward": 0, "images": 0}

    def count(_module, inputs, _kwargs=None):
        calls["forward"] += 1
        calls["images"] += inputs[0].shape[0]

    pipe.unet.register_forward_pre_hook(count)
    controlnet_images = {"n": 0}
    conditioning = {"depth_maps": depth}
    if controlnet:
        from pix2video.pipelines.control import canny_image

        conditioning = {"control_images": [canny_image(f, 100, 200) for f in frames]}

        def count_controlnet(_module, inputs):
            controlnet_images["n"] += inputs[0].shape[0]

        pipe.controlnet.register_forward_pre_hook(count_controlnet)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    reset_peak_rss()  # the edit's peak, not building the random weights (in float32 first)
    store_dtype = {"float16": torch.float16, "float32": None}[args.feature_store_dtype]
    tic = time.perf_counter()
    out = pipe(
        frames,
        "a swarovski blue crystal swan on the lake",
        "a black swan on the lake",
        num_inference_steps=args.steps,
        feature_store_dtype=store_dtype,
        feature_store_device="cpu" if args.store_on_cpu else None,
        schedule=args.schedule,
        **conditioning,
    )
    wall = time.perf_counter() - tic
    n = len(frames)
    result = {
        "frames": n,
        "size": f"{width}x{height}",
        "steps": args.steps,
        "schedule": args.schedule,
        "seconds_per_frame": wall / n,
        **{f"{k}_s_per_frame": v / n for k, v in out.timings.items()},
        "unet_images_per_frame": out.unet_evaluations / n,
        "unet_forward_calls_per_frame": calls["forward"] / n,
        "unet_images_counted_per_frame": calls["images"] / n,
        "controlnet_images_per_frame": controlnet_images["n"] / n,
        "feature_store_peak_bytes": out.feature_store_peak_bytes,
        "reference_store_bytes": reference_store_bytes(pipe, height, width, args.steps),
        "peak_rss_bytes": peak_rss(),
    }
    if args.device.startswith("cuda"):
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default="tiny",
        help="tiny, full, full-controlnet, full-sdxl, or a model folder / hub id",
    )
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--feature-store-dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--store-on-cpu", action="store_true")
    parser.add_argument("--schedule", default="auto", choices=["auto", "step", "frame"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames-dir", default=str(DEFAULT_FRAMES))
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--num-frames", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.num_frames is not None:  # child process: one run, JSON on stdout
        print(json.dumps(run_one(args)))
        return

    rows = []
    for n in args.frames:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--num-frames", str(n)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.exit(f"benchmark run with {n} frames failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(
        f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, "
        f"device {args.device}, model {args.model}, dtype {args.dtype}, store {args.feature_store_dtype}"
    )
    header = (
        "| frames | size | steps | s/frame | depth | inversion | editing | decoding "
        "| UNet images/frame | UNet calls/frame | ControlNet images/frame | feature store "
        "| reference store | peak RSS |"
    )
    print(header)
    print(
        "|" + "---|" * header.count("|")[:-1] if False else "|---" * (header.count("|") - 1) + "|"
    )
    for r in rows:
        print(
            f"| {r['frames']} | {r['size']} | {r['steps']} | {r['seconds_per_frame']:.2f} "
            f"| {r['depth_s_per_frame']:.2f} | {r['inversion_s_per_frame']:.2f} "
            f"| {r['editing_s_per_frame']:.2f} | {r['decoding_s_per_frame']:.2f} "
            f"| {r['unet_images_counted_per_frame']:.0f} | {r['unet_forward_calls_per_frame']:.0f} "
            f"| {r['controlnet_images_per_frame']:.0f} "
            f"| {r['feature_store_peak_bytes'] / 2**20:.1f} MiB | {r['reference_store_bytes'] / 2**20:.0f} MiB "
            f"| {r['peak_rss_bytes'] / 2**20:.0f} MiB |"
        )
    if len(rows) > 1:
        growth = rows[-1]["peak_rss_bytes"] / rows[0]["peak_rss_bytes"] - 1
        print(f"peak RSS {rows[-1]['frames']} vs {rows[0]['frames']} frames: {growth:+.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
