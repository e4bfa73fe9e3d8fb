"""Frame-batched editing: time, UNet calls and memory for N = 1, 2, 4, 8 (or auto) frames per call.

Editing only (inversion is timed elsewhere): random x_T and depth stand in for a clip's,
since speed and memory do not depend on their values. Each N runs in its own process
(peak memory is per process) after a one-step warm-up with the same N; its final latents
are compared with N = 1's (the gap is float rounding: see README "Frame-batched editing").

- CPU: the bundled tiny model (exact SD2-depth topology), 512x512, a few steps and frames.
- CUDA (when present): the full-size SD2-depth architecture with random weights
  (`full_size.py`), float16, 512x512, 50 steps, 16 frames, with and without `--compile`.

    python benchmarks/frame_batch.py                      # CPU table (+ GPU tables on CUDA)
    python benchmarks/frame_batch.py --frames 8 --steps 4 --batches 1 2 4 8 auto
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run_one(args: argparse.Namespace) -> dict:
    """One N in this process: warm up, then time `pipe.edit` and count UNet calls."""
    import torch

    from pix2video.core.options import parse_frame_batch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if args.model == "tiny":
        from pix2video import load_pipeline

        pipe = load_pipeline("tiny", device=device, torch_dtype=dtype)
    else:
        from full_size import full_size_pipeline

        pipe = full_size_pipeline(dtype).to(device)
    if device.type == "cuda":
        pipe.unet.to(memory_format=torch.channels_last)
    if args.compile:
        pipe.unet.compile()
    h = w = args.size // pipe.vae_scale_factor
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(args.frames, 4, h, w, generator=g).to(device)
    depth = (torch.rand(args.frames, 1, h, w, generator=g) * 2 - 1).to(device)
    prompt, negative = pipe.encode_prompt("a red sports car"), pipe.encode_prompt("")
    calls = []
    hook = pipe.unet.register_forward_hook(lambda module, inputs, output: calls.append(1))

    def edit(steps: int):
        return pipe.edit(
            x_t,
            depth,
            prompt,
            negative,
            num_inference_steps=steps,
            frame_batch=parse_frame_batch(args.batch),
        )

    edit(1)  # warm-up (and compilation) with the same chunk shapes
    calls.clear()
    evaluations = pipe.unet_evaluations
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    tic = time.perf_counter()
    final, store = edit(args.steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - tic
    hook.remove()
    images = pipe.unet_evaluations - evaluations
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.save(final.float().cpu(), args.save)
    return {
        "batch": args.batch,
        "chosen": store.chunk_size,  # what auto chose
        "seconds": seconds,
        "images": images,
        "calls": len(calls),
        "peak": peak,
    }


def measure(
    args: argparse.Namespace, extra: list[str], timeout: float | None = None
) -> tuple[list[dict], dict]:
    """Every N in a subprocess of its own (each within `timeout` s): (rows, max gap of each
    N's final latents to the first N's)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        finals = {}
        for n in args.batches:
            save = Path(tmp) / f"final-{n}.pt"
            cmd = [sys.executable, __file__, "--one", "--batch", str(n), "--save", str(save)]
            cmd += extra
            out = subprocess.run(
                cmd, check=True, capture_output=True, text=True, timeout=timeout
            ).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            import torch

            finals[n] = torch.load(save)
        base = finals[args.batches[0]]
        gaps = {n: (finals[n] - base).abs().max().item() for n in args.batches}
    return rows, gaps


def table(args: argparse.Namespace, title: str, extra: list[str]) -> None:
    """Run every N in a subprocess and print the table."""
    rows, gaps = measure(args, extra)
    memory = "peak GPU memory" if args.device == "cuda" else "peak RSS"
    print(f"\n{title}\n")
    print(
        f"| N | s/image-evaluation | s/frame | images/s | UNet calls | {memory} | "
        f"max gap to N={args.batches[0]} |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        n = row["batch"]
        label = f"auto ({row['chosen']})" if n == "auto" else n
        print(
            f"| {label} | {row['seconds'] / row['images']:.4f} | "
            f"{row['seconds'] / args.frames:.3f} | {row['images'] / row['seconds']:.1f} | "
            f"{row['calls']} | {row['peak'] / 2**20:.0f} MiB | {gaps[n]:.2e} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batches", nargs="+", default=["1", "2", "4", "8"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-cuda", action="store_true", help="only the CPU table")
    # one measurement (internal: the parent runs each N in its own process)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", default="1", help=argparse.SUPPRESS)
    parser.add_argument("--save", default="", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="tiny", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args)))
        return

    import torch

    common = ["--frames", str(args.frames), "--steps", str(args.steps), "--size", str(args.size)]
    common += ["--threads", str(args.threads)]
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPU cores, {args.threads} threads; "
        f"editing only, {args.frames} frames x {args.steps} steps, CFG on."
    )
    table(
        args,
        f"CPU, tiny model, {args.size}x{args.size}, float32",
        common + ["--model", "tiny", "--device", "cpu"],
    )
    if torch.cuda.is_available() and not args.no_cuda:
        gpu = argparse.Namespace(**{**vars(args), "device": "cuda", "frames": 16, "steps": 50})
        gpu_common = ["--frames", "16", "--steps", "50", "--size", "512"]
        gpu_common += ["--model", "full", "--device", "cuda", "--dtype", "float16"]
        name = torch.cuda.get_device_name()
        for compiled in (False, True):
            table(
                gpu,
                f"{name}, full-size SD2-depth (random weights), 512x512, float16, 50 steps, "
                f"16 frames{', --compile' if compiled else ''}",
                gpu_common + (["--compile"] if compiled else []),
            )


if __name__ == "__main__":
    main()
