"""How close an edit runs to the machine's limit: UNet share of the wall time, FLOPs, FLOP/s.

    python benchmarks/utilisation.py --model tiny --size 512 --frames 2 --steps 50
    python benchmarks/utilisation.py --model tiny --size 512 --frames 2 --steps 50 --device cuda

One process, in this order: the machine's dense float32 matmul rate (torch.mm of 2048x2048,
best of several), the UNet's FLOPs for one batch-1 and one batch-2 forward at the edit's
latent size (counted with `torch.utils.flop_counter.FlopCounterMode`, not estimated), then
one real edit through `pix2video.job.edit_clip` (the code the command line runs) with a
forward hook timing every UNet call. It prints wall time per frame, UNet time per frame and
their ratio (the overhead), the achieved FLOP/s of the UNet and of the whole edit, and both
as a fraction of the measured matmul rate.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
FRAMES_DIR = ROOT.parent / "shared" / "data" / "blackswan"


def matmul_flops_per_second(device: str, n: int = 2048, repeats: int = 5) -> float:
    """Best-of-`repeats` dense fp32 matmul rate: what the machine can do at best."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        _sync(device)
        tic = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - tic)
    return 2 * n**3 / best


def unet_flops(pipe, height: int, width: int, batch: int) -> int:
    latent = torch.zeros(
        batch, 5, height // 8, width // 8, device=pipe.device, dtype=pipe.unet.dtype
    )
    text = torch.zeros(batch, 77, pipe.text_encoder.config.hidden_size, device=pipe.device)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        pipe.unet(latent, 500, encoder_hidden_states=text.to(pipe.unet.dtype))
    return counter.get_total_flops()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--inversion-batch", type=int, default=None)
    parser.add_argument("--frames-dir", default=str(FRAMES_DIR))
    parser.add_argument("--json", default=None, help="Also write the numbers here.")
    args = parser.parse_args()

    from pix2video.cli.memory import use_one_malloc_arena
    from pix2video.job import PipelineCache, edit_clip
    from pix2video.settings import EditSettings

    use_one_malloc_arena()
    torch.set_num_threads(args.threads)
    peak = matmul_flops_per_second(args.device)

    pipelines = PipelineCache()
    pipe = pipelines.get(args.model, torch.device(args.device), getattr(torch, args.dtype))
    flops_1 = unet_flops(pipe, args.size, args.size, 1)
    flops_2 = unet_flops(pipe, args.size, args.size, 2)

    unet_seconds = [0.0]
    started: list[float] = []

    def before(_module, _inputs):
        _sync(args.device)
        started.append(time.perf_counter())

    def after(_module, _inputs, _output):
        _sync(args.device)
        unet_seconds[0] += time.perf_counter() - started.pop()

    hooks = [pipe.unet.register_forward_pre_hook(before), pipe.unet.register_forward_hook(after)]

    with tempfile.TemporaryDirectory() as tmp:
        frames = sorted(Path(args.frames_dir).glob("*.png"))[: args.frames]
        clip = Path(tmp) / "clip"
        clip.mkdir()
        for i, f in enumerate(frames):
            Image.open(f).convert("RGB").resize((args.size, args.size)).save(clip / f"{i:06d}.png")
        depth = Path(tmp) / "depth"
        depth.mkdir()
        ramp = np.linspace(0, 1, args.size, dtype=np.float32)[:, None].repeat(args.size, 1)
        for i in range(len(frames)):
            np.save(depth / f"{i:06d}.npy", ramp)
        settings = EditSettings(
            input=clip,
            prompt="a swarovski blue crystal swan on the lake",
            output=Path(tmp) / "out",
            source_prompt="a black swan on the lake",
            model=args.model,
            device=args.device,
            dtype=args.dtype,
            size=f"{args.size}x{args.size}",
            depth_dir=depth,
            steps=args.steps,
            no_cache=True,
            inversion_batch=args.inversion_batch,
        )
        tic = time.perf_counter()
        result = edit_clip(settings, pipelines=pipelines)
        wall = time.perf_counter() - tic
    for hook in hooks:
        hook.remove()

    n = result.frames
    inversion_calls = result.unet_evaluations_inversion  # batch-1 calls (or batched rows)
    editing_calls = result.unet_evaluations_editing // 2  # batch-2 calls
    flops_per_frame = (inversion_calls * flops_1 + editing_calls * flops_2) / n
    unet_per_frame = unet_seconds[0] / n
    wall_per_frame = wall / n
    numbers = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "device": args.device,
        "size": args.size,
        "frames": n,
        "steps": args.steps,
        "matmul_gflops": peak / 1e9,
        "unet_gflop_batch1": flops_1 / 1e9,
        "unet_gflop_batch2": flops_2 / 1e9,
        "unet_gflop_per_frame": flops_per_frame / 1e9,
        "wall_s_per_frame": wall_per_frame,
        "unet_s_per_frame": unet_per_frame,
        "overhead": wall_per_frame / unet_per_frame - 1,
        "unet_gflops_achieved": flops_per_frame / unet_per_frame / 1e9,
        "edit_gflops_achieved": flops_per_frame / wall_per_frame / 1e9,
        "stages_s": {k: round(v, 2) for k, v in result.seconds.items()},
    }
    numbers["unet_fraction_of_matmul"] = numbers["unet_gflops_achieved"] / numbers["matmul_gflops"]
    numbers["edit_fraction_of_matmul"] = numbers["edit_gflops_achieved"] / numbers["matmul_gflops"]
    print(json.dumps(numbers, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2) + "\n")
    print(
        f"\n| machine | size | s/frame | UNet s/frame | overhead | UNet GFLOP/frame | UNet GFLOP/s "
        f"| edit GFLOP/s | matmul GFLOP/s | edit / matmul |\n|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {numbers['machine']} | {args.size} | {wall_per_frame:.2f} | {unet_per_frame:.2f} "
        f"| {numbers['overhead']:+.0%} | {flops_per_frame / 1e9:.1f} "
        f"| {numbers['unet_gflops_achieved']:.1f} | {numbers['edit_gflops_achieved']:.1f} "
        f"| {peak / 1e9:.1f} | {numbers['edit_fraction_of_matmul']:.0%} |",
        file=sys.stdout,
    )


if __name__ == "__main__":
    main()
