"""One clip on 1..W workers (`core.frame_chain`): wall time, bytes exchanged, and a scaling model.

Editing only: random x_T and depth stand in for a clip's (speed and traffic do not depend on
their values). W = 1 is one process without a chain; W > 1 starts W processes joined by a
`torch.distributed` group (gloo on CPUs, NCCL on GPUs), each editing its runs of positions
as `pix2video edit --workers W` does (`--split dealt`: runs of `--frame-batch` frames dealt
in turn, the default; `even`: one run per worker). After a one-step warm-up every worker times
the same edit; the wall time is the slowest worker's, the bytes are every worker's sends.
The final latents are compared with W = 1's.

Then the scaling model of README "One clip on several GPUs": what crosses per step for
full-size SD2-depth at 512x512 (computed from the UNet config; the same formula is checked
against the bytes the tiny model's workers sent here), the pipeline bubble, and the
expected efficiency at 2, 8 and 32 GPUs over NVLink and over 25 Gb/s Ethernet for a given
time per frame-step (`--frame-ms`: measure it with `frame_batch.py` on the GPU; without a
GPU the default is an assumption, printed as such).

    python benchmarks/multi_device.py                           # CPU, tiny model, 1..3 workers
    python benchmarks/multi_device.py --device cuda --model full --workers 1 2 4 8 --frames 64
    python benchmarks/multi_device.py --model-only --frame-ms 20
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
for quiet in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_NO_ADVISORY_WARNINGS"):
    os.environ.setdefault(quiet, "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))

LINKS = {  # bytes per second, seconds per message
    "NVLink": (150e9, 10e-6),
    "25 Gb/s Ethernet": (25e9 / 8, 50e-6),
}


def load(args):
    import torch
    from diffusers.utils import logging

    logging.disable_progress_bar()
    dtype = getattr(torch, args.dtype)
    if args.model == "tiny":
        from pix2video import load_pipeline

        return load_pipeline("tiny", torch_dtype=dtype)
    from full_size import full_size_pipeline

    return full_size_pipeline(dtype)


def clip(args, pipe):
    import torch

    h = w = args.size // pipe.vae_scale_factor
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(args.frames, 4, h, w, generator=g)
    depth = torch.rand(args.frames, 1, h, w, generator=g) * 2 - 1
    return x_t, depth, pipe.encode_prompt("a red sports car"), pipe.encode_prompt("")


def worker(rank: int, world: int, split: str, port: int, args, out: str) -> None:
    import torch
    import torch.distributed as dist

    from pix2video.core.frame_chain import ChainPlace

    device = torch.device(args.device if args.device == "cpu" else f"cuda:{rank}")
    if device.type == "cpu":
        torch.set_num_threads(max(1, args.threads // world))
    else:
        torch.cuda.set_device(device)
    backend = "gloo" if device.type == "cpu" else "nccl"
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    pipe = load(args).to(device)
    x_t, depth, prompt, negative = clip(args, pipe)
    place = ChainPlace(split_of(split, args, world), rank)

    def edit(steps: int):  # anchor "first": processing order is clip order
        return pipe.edit(
            x_t[place.positions].to(device), depth.to(device), prompt, negative,
            num_inference_steps=steps, frame_batch=args.frame_batch, chain=place,
        )  # fmt: skip

    edit(1)  # warm-up
    dist.barrier()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    tic = time.perf_counter()
    final, store = edit(args.steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - tic
    counts = store.exchange.counts
    torch.save(
        {"seconds": seconds, "bytes": counts.per_step_bytes_sent, "final": final.float().cpu(),
         "messages": counts.messages_sent},
        Path(out) / f"{rank}.pt",
    )  # fmt: skip
    dist.barrier()
    dist.destroy_process_group()


def split_of(split: str, args, world: int):
    from pix2video.core.frame_chain import ChainSplit

    if split == "even":
        return ChainSplit.even(args.frames, world)
    return ChainSplit.dealt(args.frames, world, args.frame_batch)


def one_process(args, threads: int) -> tuple:
    import torch

    torch.set_num_threads(threads)
    device = torch.device(args.device)
    pipe = load(args).to(device)
    x_t, depth, prompt, negative = clip(args, pipe)

    def edit(steps: int):
        return pipe.edit(
            x_t.to(device), depth.to(device), prompt, negative, num_inference_steps=steps,
            frame_batch=args.frame_batch,
        )[0]  # fmt: skip

    edit(1)
    tic = time.perf_counter()
    final = edit(args.steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - tic, final.float().cpu()


def split_run(args, world: int, split: str) -> dict:
    import torch
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(
            worker, args=(world, split, port, args, out), nprocs=world, start_method="spawn"
        )
        parts = [torch.load(Path(out) / f"{r}.pt") for r in range(world)]
    per_step = [sum(p["bytes"][i] for p in parts) for i in range(len(parts[0]["bytes"]))]
    order = torch.as_tensor(split_of(split, args, world).gathered_order()).argsort()
    return {
        "seconds": max(p["seconds"] for p in parts),
        "bytes_per_step": sum(per_step) / len(per_step),
        "last_step_bytes": per_step[-1],
        "messages": sum(p["messages"] for p in parts),
        "final": torch.cat([p["final"] for p in parts])[order],
    }


# ---------------------------------------------------------------------------- the model
def layer_bytes(unet_config: dict, latent_side: int, dtype_bytes: int, branches: int = 2) -> list:
    """Bytes of one frame's input to each decoder self-attention layer (both CFG branches).

    Up block i works at latent_side / 2^(blocks-1-i) with reversed(block_out_channels)[i]
    channels; each of its layers_per_block+1 attentions holds transformer_layers_per_block
    blocks whose attn1 input is (tokens, channels).
    """
    channels = list(reversed(unet_config["block_out_channels"]))
    blocks = len(channels)
    depth = unet_config.get("transformer_layers_per_block", 1)
    out = []
    for i, kind in enumerate(unet_config["up_block_types"]):
        if "CrossAttn" not in kind:
            continue
        side = latent_side // 2 ** (blocks - 1 - i)
        per_block = depth[i] if isinstance(depth, (list, tuple)) else depth
        layers = (unet_config["layers_per_block"] + 1) * per_block
        out += [branches * side * side * channels[i] * dtype_bytes] * layers
    return out


def rows_sent_per_step(split) -> int:
    """Frames whose decoder inputs cross per step with the default attend ("anchor+previous"):
    the anchor's (position 0) to every other worker, and each run's last to the next run's
    worker (once if that is the anchor already)."""
    pairs = {(0, w) for w in range(1, split.workers)}
    for start in split.starts[1:]:
        pairs.add((start - 1, split.owner(start)))
    return len(pairs)


def scaling_model(frames: int, steps: int, frame_ms: float, run_length: int, measured: bool):
    """Expected efficiency of the split chain for full-size SD2-depth at 512x512, fp16, CFG.

    Dealt runs (the default): run r+1's layer l waits for run r's input to layer l, so
    consecutive runs trail each other by one layer's transfer (`hop`, its largest); the W
    workers go round a ring, so a worker's next run can start after max(its call, W hops).
    A worker's step is its runs' calls (the busiest worker has ceil(runs / W)); worker 0
    also sends the anchor's rows to the W-1 others each step. The pipeline fills once, over
    W-1 hops. One run per worker: worker w trails w-1 by a run, and a worker holds sends of
    at most two steps, so the first waits for the last: a step takes max(1, (W-1)/2) runs,
    plus W-1 runs to fill.
    """
    import math

    from full_size import SD2_DEPTH_UNET

    layers = layer_bytes(SD2_DEPTH_UNET, 64, 2)
    row, x0 = sum(layers), 4 * 64 * 64 * 2
    t = frame_ms / 1e3
    call = run_length * t
    runs = math.ceil(frames / run_length)
    lines = [
        f"Full-size SD2-depth, 512x512, float16, CFG: one frame's decoder self-attention inputs "
        f"= {row / 2**20:.1f} MiB per step ({len(layers)} layers, largest "
        f"{max(layers) / 2**20:.2f} MiB); x0 = {x0 / 2**10:.0f} KiB.",
        f"Clip: {frames} frames, {steps} steps, runs of {run_length} frames (one UNet call of "
        f"{call * 1e3:g} ms); {frame_ms:g} ms per frame-step "
        f"({'measured' if measured else 'ASSUMED: no GPU measured it here'}).",
        "",
        "| GPUs | link | hop (largest layer) | a run's rows on the wire | anchor fan-out per step "
        "| step: ideal / dealt runs | efficiency, dealt runs | efficiency, one run per GPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for gpus in (2, 8, 32):
        ideal_step = frames * t / gpus
        per_gpu = math.ceil(runs / gpus)
        run_even = math.ceil(frames / gpus) * t
        even = steps * max(1.0, (gpus - 1) / 2) * run_even + (gpus - 1) * run_even
        for link, (bandwidth, latency) in LINKS.items():
            hop = max(layers) / bandwidth + latency
            wire = row / bandwidth + len(layers) * latency
            fan_out = (gpus - 1) * wire
            period = max(call, gpus * hop, wire)
            step = max(per_gpu * period, per_gpu * wire + fan_out)
            total = steps * step + (gpus - 1) * hop
            lines.append(
                f"| {gpus} | {link} | {hop * 1e3:.2f} ms | {wire * 1e3:.1f} ms | "
                f"{fan_out * 1e3:.0f} ms | {ideal_step:.2f} s / {step:.2f} s | "
                f"{steps * ideal_step / total:.0%} | {steps * ideal_step / even:.0%} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--split", nargs="+", choices=["dealt", "even"], default=["dealt", "even"])
    parser.add_argument("--model", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--frame-batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--model-only", action="store_true", help="print the scaling model only")
    parser.add_argument("--clip-frames", type=int, default=9000, help="frames of the modelled clip")
    parser.add_argument("--frame-ms", type=float, default=None, help="GPU ms per frame-step")
    parser.add_argument("--run-length", type=int, default=8, help="frames per run, modelled")
    args = parser.parse_args()

    if not args.model_only:
        import torch

        print(f"{args.model} model, {args.device}, {args.size}px, {args.frames} frames, "
              f"{args.steps} steps, frame batch {args.frame_batch}, {args.threads} threads in all")  # fmt: skip
        print(
            "| workers | split | wall s | vs 1 worker | MiB sent per step | messages | max gap vs 1 "
            "| max gap vs 1 at a worker's threads |"
        )
        print("|---|---|---|---|---|---|---|---|")
        base_seconds, base_final = one_process(args, args.threads)
        print(f"| 1 | - | {base_seconds:.2f} | 1.00x | 0 | 0 | 0 | - |", flush=True)
        share_final = base_final
        if args.device == "cpu" and args.threads > 1:  # what one worker's share does alone
            share = max(1, args.threads // max(args.workers))
            seconds, share_final = one_process(args, share)
            gap = (share_final - base_final).abs().max().item()
            print(f"| 1 ({share} thread) | - | {seconds:.2f} | {base_seconds / seconds:.2f}x | "
                  f"0 | 0 | {gap:.1e} | 0 |", flush=True)  # fmt: skip
        checks = []
        dtype_bytes = getattr(torch, args.dtype).itemsize
        if args.model == "tiny":
            unet_config = load(args).unet.config
        else:
            from full_size import SD2_DEPTH_UNET as unet_config
        for world in [w for w in args.workers if w > 1]:
            for split in args.split:
                run = split_run(args, world, split)
                gap = (run["final"] - base_final).abs().max().item()
                same_threads = (run["final"] - share_final).abs().max().item()
                print(
                    f"| {world} | {split} | {run['seconds']:.2f} | "
                    f"{base_seconds / run['seconds']:.2f}x | "
                    f"{run['bytes_per_step'] / 2**20:.3f} | {run['messages']} | {gap:.1e} | "
                    f"{same_threads:.1e} |",
                    flush=True,
                )
                row = sum(layer_bytes(unet_config, args.size // 8, dtype_bytes))
                rows = rows_sent_per_step(split_of(split, args, world))
                checks.append(
                    f"{world} workers, {split}: last step {run['last_step_bytes'] / 2**20:.3f} "
                    f"MiB sent; formula {rows} rows x {row / 2**20:.3f} MiB = "
                    f"{rows * row / 2**20:.3f} MiB (+ x0s on guided steps)"
                )
        print("\n".join(checks))
        del torch
    print()
    print(
        "\n".join(
            scaling_model(
                args.clip_frames,
                50,
                args.frame_ms or 25.0,
                args.run_length,
                args.frame_ms is not None,
            )
        )  # fmt: skip
    )
    print(json.dumps({"note": "efficiency = ideal compute time / modelled time; see README"}))


if __name__ == "__main__":
    main()
