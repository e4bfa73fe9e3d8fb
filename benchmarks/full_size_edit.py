"""A full-size SD2-depth edit through the real CLI, at `--dtype auto` and `--dtype float32`.

    python benchmarks/full_size_edit.py                  # 1 frame, 512 px, 10 steps
    python benchmarks/full_size_edit.py --frames 2 --repeats 2

What a user with `stabilityai/stable-diffusion-2-depth` on this CPU pays, wall to wall: the
model is the full-size architecture with random weights (`full_size.py`), saved once as a
diffusers folder, and `pix2video edit` runs on a real clip in a fresh process per run (model
loading, depth, inversion, editing, decoding, writing), without the cache. The dtypes run
alternately (auto, float32, auto, ...), so a slower moment of the machine weighs on both.
Prints the wall time per run and dtype, the ratio of the medians, and whether every output
frame is finite and differs between the dtypes only as rounding drift would.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "blackswan"
PROMPT, SOURCE = "a swarovski blue crystal swan on the lake", "a black swan on the lake"


def model_folder(where: Path) -> Path:
    """The full-size SD2-depth architecture (random weights) saved as a diffusers folder."""
    folder = where / "sd2-depth-full-size"
    if not (folder / "model_index.json").exists():
        from full_size import full_size_pipeline

        full_size_pipeline().save_pretrained(folder)
    return folder


def edit(model: Path, dtype: str, args, out: Path) -> float:
    command = [
        sys.executable, "-m", "pix2video", "edit", str(args.clip), "-p", PROMPT,
        "--source-prompt", SOURCE, "--model", str(model), "--size", str(args.size),
        "--max-frames", str(args.frames), "--steps", str(args.steps), "--dtype", dtype,
        "--no-cache", "--seed", "0", "-o", str(out),
    ]  # fmt: skip
    tic = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - tic
    if done.returncode:
        sys.exit(f"pix2video edit --dtype {dtype} failed:\n{done.stderr[-2000:]}")
    precision = [line for line in done.stdout.splitlines() if line.startswith("Precision")]
    print(f"{dtype}: {seconds:.1f} s wall; {' '.join(precision)}", flush=True)
    return seconds


def frames(path: Path) -> np.ndarray:
    from pix2video.media import read_clip

    return np.stack(read_clip(str(path)).frames).astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clip", type=Path, default=CLIP)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    model = model_folder(args.workdir)
    times: dict[str, list[float]] = {"auto": [], "float32": []}
    outputs = {d: args.workdir / f"full_size_edit_{d}.mp4" for d in times}
    for _ in range(args.repeats):
        for dtype in times:
            times[dtype].append(edit(model, dtype, args, outputs[dtype]))
    auto, f32 = (statistics.median(times[d]) for d in times)
    a, b = frames(outputs["auto"]), frames(outputs["float32"])
    print(
        f"median wall: auto {auto:.1f} s, float32 {f32:.1f} s: auto is {f32 / auto:.2f}x faster "
        f"({args.frames} frame(s), {args.size} px, {args.steps} steps); outputs finite: "
        f"{bool(np.isfinite(a).all() and np.isfinite(b).all())}, mean |dpixel| auto vs "
        f"float32: {np.abs(a - b).mean():.2f} of 255"
    )


if __name__ == "__main__":
    main()
