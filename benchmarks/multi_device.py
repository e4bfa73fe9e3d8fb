"""One clip on 1..W workers (`core.frame_chain`): wall time, bytes exchanged, and a scaling model.

Editing only: random x_T and depth stand in for a clip's (speed and traffic do not depend on
their values). W = 1 is one process without a chain; W > 1 starts W processes joined by a
`torch.distributed` group (gloo on CPUs, NCCL on GPUs), each editing its run of positions
exactly as `pix2video edit --workers W` does. After a one-step warm-up every worker times
the same edit; the wall time is the slowest worker's, the bytes are every worker's sends.
The final latents are compared with W = 1's.

Then the scaling model of README "One clip on several GPUs": what crosses per step for
full-size SD2-depth at 512x512 (computed from the UNet config; the same formula is checked
against the bytes the tiny model's workers measured here), the pipeline bubble, and the
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

LINKS = {"NVLink (~150 GB/s per direction, p2p)": 150e9, "25 Gb/s Ethernet": 25e9 / 8}


def load(args):
    import torch

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


def worker(rank: int, world: int, port: int, args, out: str) -> None:
    import torch
    import torch.distributed as dist

    from pix2video.core.frame_chain import ChainPlace, ChainSplit

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
    place = ChainPlace(ChainSplit.even(args.frames, world), rank)
    span = place.span

    def edit(steps: int):
        return pipe.edit(
            x_t[span.start : span.stop].to(device), depth.to(device), prompt, negative,
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


def one_process(args) -> tuple:
    import torch

    torch.set_num_threads(args.threads)
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


def split_run(args, world: int) -> dict:
    import torch
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(
            worker, args=(world, port, args, out), nprocs=world, start_method="spawn"
        )
        parts = [torch.load(Path(out) / f"{r}.pt") for r in range(world)]
    per_step = [sum(p["bytes"][i] for p in parts) for i in range(len(parts[0]["bytes"]))]
    return {
        "seconds": max(p["seconds"] for p in parts),
        "bytes_per_step": sum(per_step) / len(per_step),
        "last_step_bytes": per_step[-1],
        "messages": sum(p["messages"] for p in parts),
        "final": torch.cat([p["final"] for p in parts]),
    }


# ---------------------------------------------------------------------------- the model
def row_bytes(unet_config: dict, latent_side: int, dtype_bytes: int, branches: int = 2) -> int:
    """Bytes of one frame's inputs to every decoder self-attention layer (both CFG branches).

    Up block i works at latent_side / 2^(blocks-1-i) with reversed(block_out_channels)[i]
    channels; each of its layers_per_block+1 attentions holds transformer_layers_per_block
    blocks whose attn1 input is (tokens, channels).
    """
    channels = list(reversed(unet_config["block_out_channels"]))
    blocks = len(channels)
    depth = unet_config.get("transformer_layers_per_block", 1)
    total = 0
    for i, kind in enumerate(unet_config["up_block_types"]):
        if "CrossAttn" not in kind:
            continue
        side = latent_side // 2 ** (blocks - 1 - i)
        per_block = depth[i] if isinstance(depth, (list, tuple)) else depth
        layers = (unet_config["layers_per_block"] + 1) * per_block
        total += layers * branches * side * side * channels[i] * dtype_bytes
    return total


def scaling_model(frames: int, steps: int, frame_ms: float, measured: bool) -> list[str]:
    """Expected efficiency of the split chain for full-size SD2-depth at 512x512, fp16, CFG."""
    from full_size import SD2_DEPTH_UNET

    row = row_bytes(SD2_DEPTH_UNET, 64, 2)
    x0 = 4 * 64 * 64 * 2
    layer_rows = _layer_bytes(SD2_DEPTH_UNET, 64, 2)
    lines = [
        f"Full-size SD2-depth, 512x512, float16, CFG: one frame's decoder self-attention inputs "
        f"= {row / 2**20:.1f} MiB per step ({len(layer_rows)} layers, largest "
        f"{max(layer_rows) / 2**20:.1f} MiB); x0 = {x0 / 2**10:.0f} KiB.",
        f"Per step a worker receives the previous worker's last row and the anchor's: "
        f"{2 * row / 2**20:.1f} MiB (+ x0 on guided steps); worker 0 sends the anchor's row to "
        f"each of the W-1 others.",
        f"Clip: {frames} frames, {steps} steps; time per frame-step "
        f"{frame_ms:g} ms ({'measured' if measured else 'ASSUMED: no GPU measured it'}).",
        "",
        "| GPUs | frames per GPU | step (compute) | fill + drain | anchor fan-out per step | link | efficiency |",
        "|---|---|---|---|---|---|---|",
    ]
    for gpus in (2, 8, 32):
        per_gpu = -(-frames // gpus)
        step = per_gpu * frame_ms / 1e3
        for link, bandwidth in LINKS.items():
            hop = max(layer_rows) / bandwidth  # a boundary row's largest layer on the wire
            # the chain within a step: worker w's first chunk waits for w-1's last chunk, so
            # the pipeline fills (and drains) over W-1 workers, each about one step behind
            # the one before when it holds many chunks
            fill = (gpus - 1) * (step + len(layer_rows) * hop)
            fan_out = (gpus - 1) * row / bandwidth  # worker 0's sends, overlapped with compute
            busy = max(step, fan_out)
            total = steps * busy + fill
            efficiency = steps * step / total
            lines.append(
                f"| {gpus} | {per_gpu} | {step:.2f} s | {fill:.1f} s | {fan_out * 1e3:.0f} ms | "
                f"{link} | {efficiency:.0%} |"
            )
    return lines


def _layer_bytes(unet_config: dict, latent_side: int, dtype_bytes: int) -> list[int]:
    channels = list(reversed(unet_config["block_out_channels"]))
    blocks = len(channels)
    out = []
    for i, kind in enumerate(unet_config["up_block_types"]):
        if "CrossAttn" in kind:
            side = latent_side // 2 ** (blocks - 1 - i)
            out += [2 * side * side * channels[i] * dtype_bytes] * (
                unet_config["layers_per_block"] + 1
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
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
    args = parser.parse_args()

    if not args.model_only:
        import torch

        print(f"{args.model} model, {args.device}, {args.size}px, {args.frames} frames, "
              f"{args.steps} steps, frame batch {args.frame_batch}, {args.threads} threads in all")  # fmt: skip
        print("| workers | wall s | vs 1 worker | MiB sent per step | messages | max gap vs 1 |")
        print("|---|---|---|---|---|---|")
        base_seconds, base_final = one_process(args)
        print(f"| 1 | {base_seconds:.2f} | 1.00x | 0 | 0 | 0 |", flush=True)
        for world in [w for w in args.workers if w > 1]:
            run = split_run(args, world)
            gap = (run["final"] - base_final).abs().max().item()
            print(
                f"| {world} | {run['seconds']:.2f} | {base_seconds / run['seconds']:.2f}x | "
                f"{run['bytes_per_step'] / 2**20:.3f} | {run['messages']} | {gap:.1e} |",
                flush=True,
            )
            if args.model == "tiny":
                from pix2video.core.frame_chain import ChainSplit

                row = row_bytes(load(args).unet.config, args.size // 8, 4)
                split = ChainSplit.even(args.frames, world)
                # worker w > 0 reads the anchor's row and its previous position's (one if equal)
                rows = sum(len({0, split.starts[w] - 1}) for w in range(1, world))
                print(
                    f"    last (unguided) step: {run['last_step_bytes'] / 2**20:.3f} MiB sent; "
                    f"formula {rows} rows x {row / 2**20:.3f} MiB = {rows * row / 2**20:.3f} MiB"
                )
        del torch
    print()
    print(
        "\n".join(
            scaling_model(args.clip_frames, 50, args.frame_ms or 25.0, args.frame_ms is not None)
        )
    )
    print(json.dumps({"note": "efficiency = compute / (compute + fill + drain); see README"}))


if __name__ == "__main__":
    main()
