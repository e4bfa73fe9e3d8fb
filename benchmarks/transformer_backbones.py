"""SD3.5 Medium + ControlNet and FLUX.1 Depth (few blocks) beside SDXL and SD2-depth: one frame.

    python benchmarks/transformer_backbones.py --runs sd35:512 sd35:1024 flux:512:1,2 \\
        flux:512:2,4 sdxl:512 sd2-depth:512
    python benchmarks/transformer_backbones.py --runs sd35:64:2 flux:64:1,1   # smoke (small)

Each run is `MODEL:SIZE[:BLOCKS]` and goes in its own process (so peak memories do not mix):
the full-size architecture with random weights built in bfloat16 from its config
(`full_size.py`; no download, no text encoders: prompt embeddings of the real shapes come
from `full_size.precomputed_prompts`), linear layers through oneDNN as `load_pipeline` does
on the CPU, one blackswan frame edited at `--steps` steps through the pipeline's
`__call__` (control latents or depth, inversion, editing, decoding; ControlNets fed the
frame's canny edges, SD2-depth a synthetic depth ramp), after an untimed 1-step edit of
the same frame (`--warmup`: the first calls' one-time costs out of the timing). Per run:

- wall seconds for the frame and its split (`out.timings`);
- denoiser evaluations per frame (`out.unet_evaluations`: images through the transformer or
  UNet, a batched guidance call counts 2), forward calls, ControlNet images;
- peak RSS of the edit (VmHWM, reset once the model is built; so weights + activations) and
  the weights' size;
- for FLUX and SD3 (`BLOCKS`: FLUX `double,single`, SD3 joint blocks): every block's time
  (forward hooks), so seconds per double / single / joint block per evaluation, the rest of
  the transformer, and the projection to the full model (FLUX.1: 19 + 38 blocks; SD3.5
  Medium: 24) by replacing the measured blocks' time with the full count's.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FRAMES_DIR = ROOT.parent / "shared" / "data" / "blackswan"
PROMPT, SOURCE = "a swarovski blue crystal swan on the lake", "a black swan on the lake"
FULL_BLOCKS = {"flux": (19, 38), "sd35": (24,)}
NAMES = {
    "sd35": "SD3.5 Medium + ControlNet",
    "flux": "FLUX.1 Depth [dev] width",
    "sdxl": "SDXL + ControlNet",
    "sd2-depth": "SD2-depth",
}


def parse_run(spec: str) -> tuple[str, int, tuple[int, ...]]:
    parts = spec.split(":")
    if parts[0] not in NAMES or len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(
            f"a run is MODEL:SIZE[:BLOCKS], MODEL one of {', '.join(NAMES)}; got {spec!r}"
        )
    blocks = tuple(int(b) for b in parts[2].split(",")) if len(parts) == 3 else ()
    return parts[0], int(parts[1]), blocks


def build(model: str, blocks: tuple[int, ...], dtype):
    sys.path.insert(0, str(HERE))
    import full_size

    if model == "sd35":
        pipe = full_size.full_size_sd35_pipeline(dtype, num_layers=blocks[0] if blocks else 24)
    elif model == "flux":
        double, single = blocks or (2, 4)
        pipe = full_size.full_size_flux_pipeline(dtype, num_layers=double, num_single_layers=single)
    elif model == "sdxl":
        pipe = full_size.full_size_sdxl_pipeline(dtype)
    else:
        pipe = full_size.full_size_pipeline().to(dtype=dtype)
    if model in ("sd35", "flux"):
        full_size.precomputed_prompts(pipe, [PROMPT, SOURCE, ""])
    return pipe


class BlockTimer:
    """Wall time of every call of the given modules, summed per kind (forward hooks)."""

    def __init__(self, kinds: dict[str, list]) -> None:
        self.reset(kinds)
        for kind, modules in kinds.items():
            for module in modules:
                module.register_forward_pre_hook(self._start)
                module.register_forward_hook(self._stop(kind))

    def reset(self, kinds) -> None:
        self.seconds = dict.fromkeys(kinds, 0.0)
        self.calls = dict.fromkeys(kinds, 0)
        self.each = {kind: [] for kind in kinds}  # every call's seconds

    def _start(self, module, _inputs):
        module._tic = time.perf_counter()

    def _stop(self, kind):
        def hook(module, _inputs, _output):
            seconds = time.perf_counter() - module._tic
            self.seconds[kind] += seconds
            self.calls[kind] += 1
            self.each[kind].append(seconds)

        return hook


def run_one(model: str, size: int, blocks: tuple[int, ...], args) -> dict:
    import numpy as np
    import torch
    from bench_pipeline import peak_rss, reset_peak_rss
    from PIL import Image

    from pix2video.cli.memory import use_one_malloc_arena
    from pix2video.pipelines.control import canny_image
    from pix2video.pipelines.onednn import use_onednn_linears

    use_one_malloc_arena()  # as the `pix2video` command does
    torch.set_num_threads(args.threads)
    tic = time.perf_counter()
    pipe = build(model, blocks, getattr(torch, args.dtype))
    if args.linears == "onednn":
        use_onednn_linears(pipe)  # as `load_pipeline` does on the CPU
    build_seconds = time.perf_counter() - tic
    denoiser = pipe.transformer if model in ("sd35", "flux") else pipe.unet
    weights = sum(
        p.numel() * p.element_size()
        for c in pipe.components.values()
        if isinstance(c, torch.nn.Module)
        for p in c.parameters()
    )
    parameters = {
        name: sum(p.numel() for p in c.parameters())
        for name, c in pipe.components.items()
        if isinstance(c, torch.nn.Module)
    }
    kinds = {"denoiser": [denoiser]}
    if model == "flux":
        kinds.update(
            double=list(denoiser.transformer_blocks),
            single=list(denoiser.single_transformer_blocks),
        )
    elif model == "sd35":
        kinds.update(joint=list(denoiser.transformer_blocks), controlnet=[pipe.controlnet])
    timer = BlockTimer(kinds)

    files = sorted(Path(args.frames_dir).glob("*.png"))
    frame = np.array(Image.open(files[0]).convert("RGB").resize((size, size)))
    if model == "sd2-depth":
        ramp = np.linspace(0, 1, size, dtype=np.float32)[:, None].repeat(size, 1)
        conditioning = {"depth_maps": (ramp + 0.1 * frame.mean(-1) / 255)[None]}
    else:
        conditioning = {"control_images": [canny_image(frame, 100, 200)]}
    if args.warmup:  # one-time costs (first kernels, allocations) out of the timing
        pipe([frame], PROMPT, SOURCE, num_inference_steps=args.warmup, **conditioning)
        timer.reset(kinds)
    controlnet_before = getattr(pipe, "controlnet_evaluations", 0)
    reset_peak_rss()  # the edit's peak: weights (resident) + activations
    tic = time.perf_counter()
    out = pipe([frame], PROMPT, SOURCE, num_inference_steps=args.steps, **conditioning)
    wall = time.perf_counter() - tic
    evaluations = out.unet_evaluations
    result = dict(
        model=model,
        size=size,
        blocks=list(blocks),
        steps=args.steps,
        dtype=args.dtype,
        linears=args.linears,
        seconds_per_frame=wall,
        timings=out.timings,
        evaluations_per_frame=evaluations,
        forward_calls_per_frame=timer.calls["denoiser"],
        controlnet_images_per_frame=getattr(pipe, "controlnet_evaluations", 0) - controlnet_before,
        peak_rss_bytes=peak_rss(),
        weights_bytes=weights,
        parameters=parameters,
        build_seconds=build_seconds,
        block_seconds=timer.seconds,
        block_calls=timer.calls,
        call_seconds={k: timer.each[k] for k in ("denoiser", "controlnet") if k in timer.each},
        warmup_steps=args.warmup,
    )
    if model in FULL_BLOCKS:
        result.update(per_block(result))
    return result


def per_block(row: dict) -> dict:
    """A FLUX or SD3 run's seconds per block per evaluation image (a batched call of 2 counts
    2), the rest of the transformer per image, and the projection to the full model: the
    measured blocks' time replaced by the full count's."""
    model, seconds, block_calls = row["model"], row["block_seconds"], row["block_calls"]
    images, calls = row["evaluations_per_frame"], max(row["forward_calls_per_frame"], 1)
    kinds = ("double", "single") if model == "flux" else ("joint",)
    counts = {k: block_calls[k] // calls for k in kinds}
    per = {k: seconds[k] / (counts[k] * images) for k in kinds}
    rest = (seconds["denoiser"] - sum(seconds[k] for k in kinds)) / images
    full = dict(zip(kinds, FULL_BLOCKS[model], strict=True))
    added = sum((full[k] - counts[k]) * per[k] for k in kinds) * images
    return dict(
        block_counts=counts,
        seconds_per_block_image=per,
        denoiser_rest_per_image=rest,
        projected_denoiser_per_image=rest + sum(full[k] * per[k] for k in kinds),
        projected_seconds_per_frame=row["seconds_per_frame"] + added,
    )


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| model | blocks | size | s/frame | control | inversion | editing | decoding "
        "| denoiser images/frame (calls) | ControlNet images/frame | weights | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["timings"]
        blocks = {
            "flux": lambda b: f"{b[0]} double + {b[1]} single",
            "sd35": lambda b: f"{b[0]} joint",
        }.get(r["model"], lambda b: "all")(
            r.get("block_counts") and list(r["block_counts"].values())
        )
        lines.append(
            f"| {NAMES[r['model']]} | {blocks} | {r['size']}x{r['size']} "
            f"| {r['seconds_per_frame']:.1f} | {t['depth']:.1f} | {t['inversion']:.1f} "
            f"| {t['editing']:.1f} | {t['decoding']:.1f} | {r['evaluations_per_frame']} "
            f"({r['forward_calls_per_frame']}) | {r['controlnet_images_per_frame']} "
            f"| {r['weights_bytes'] / 2**30:.2f} GiB | {r['peak_rss_bytes'] / 2**30:.2f} GiB |"
        )
    block_rows = [{**r, **per_block(r)} for r in rows if r["model"] in FULL_BLOCKS]
    if block_rows:
        lines += [
            "",
            "| model | blocks | size | s per block per image | rest of the model per image "
            "| full model per image (projected) | s/frame (projected to the full model) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in block_rows:
            per = ", ".join(f"{k} {v:.2f}" for k, v in r["seconds_per_block_image"].items())
            counts = " + ".join(f"{v} {k}" for k, v in r["block_counts"].items())
            full = " + ".join(
                f"{n} {k}" for k, n in zip(r["block_counts"], FULL_BLOCKS[r["model"]], strict=True)
            )
            lines.append(
                f"| {NAMES[r['model']]} | {counts} | {r['size']}x{r['size']} | {per} "
                f"| {r['denoiser_rest_per_image']:.2f} | {r['projected_denoiser_per_image']:.1f} "
                f"({full}) | {r['projected_seconds_per_frame']:.0f} |"
            )
    lines += block_differences(block_rows)
    return lines


def block_differences(rows: list[dict]) -> list[str]:
    """Two FLUX runs at one size: the denoiser's time per call, more blocks less fewer, beside
    what the hooks give for the blocks that differ (a check on the per-block cost)."""
    lines = []
    flux = [r for r in rows if r["model"] == "flux"]
    for size in sorted({r["size"] for r in flux}):
        runs = sorted((r for r in flux if r["size"] == size), key=lambda r: r["blocks"])
        for a, b in zip(runs, runs[1:], strict=False):
            calls = a["forward_calls_per_frame"]
            measured = (b["block_seconds"]["denoiser"] - a["block_seconds"]["denoiser"]) / calls
            extra = {k: b["block_counts"][k] - a["block_counts"][k] for k in ("double", "single")}
            per = b["seconds_per_block_image"]
            hooks = sum(extra[k] * per[k] for k in extra)
            lines.append(
                f"FLUX {size}x{size}: {'+'.join(map(str, b['blocks']))} blocks less "
                f"{'+'.join(map(str, a['blocks']))}: {measured:.2f} s per call; the hooks' "
                f"{extra['double']} double + {extra['single']} single: {hooks:.2f} s"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs",
        nargs="+",
        type=parse_run,
        default=[parse_run(s) for s in ("sd35:512", "flux:512:1,2", "flux:512:2,4")],
        help="MODEL:SIZE[:BLOCKS], MODEL in sd35, flux, sdxl, sd2-depth; BLOCKS: FLUX "
        "double,single (default 2,4), SD3 joint blocks (default 24)",
    )
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="steps of an untimed edit of the same frame first (0: none); the peak RSS "
        "and the counts are the timed edit's",
    )
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--linears", default="onednn", choices=["onednn", "mkl"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames-dir", default=str(FRAMES_DIR))
    parser.add_argument("--json", help="append each run's result to this file (JSON lines)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one is not None:  # child process: one run, JSON on stdout
        sys.path.insert(0, str(HERE))
        print(json.dumps(run_one(*parse_run(args.one), args)))
        return

    import torch

    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads, {args.dtype}, linears {args.linears}, {args.steps} steps",
        flush=True,
    )
    rows = []
    for model, size, blocks in args.runs:
        spec = f"{model}:{size}" + (":" + ",".join(map(str, blocks)) if blocks else "")
        passed = [a for a in sys.argv[1:] if a != "--runs" and a not in _specs(sys.argv)]
        cmd = [sys.executable, __file__, *passed, "--one", spec]
        tic = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"{spec} failed after {time.perf_counter() - tic:.0f} s:\n{proc.stderr[-3000:]}")
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{spec}: {json.dumps(row)}", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    print("\n".join(table(rows)))


def _specs(argv: list[str]) -> set[str]:
    """The run specs on the command line (after --runs), not passed to the children."""
    if "--runs" not in argv:
        return set()
    specs = set()
    for a in argv[argv.index("--runs") + 1 :]:
        if a.startswith("--"):
            break
        specs.add(a)
    return specs


if __name__ == "__main__":
    main()
