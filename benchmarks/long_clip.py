"""Peak memory and seconds per frame of `pix2video edit` for clips of growing length.

    python benchmarks/long_clip.py --frames 60 600 --size 256 --steps 2
    python benchmarks/long_clip.py --kind controlnet --frames 12 120 --size 512 --steps 1
    python benchmarks/long_clip.py --kind masked --frames 12 120 --size 512 --steps 8

Each length is a generated H.264 clip (moving gradients, 320x240 at 30 fps, with a keyframe
every second) edited by the real command line in its own process (no cache), so the peak
RSS of each run is its own (read from `os.wait4`). Streaming is what is measured: frames
are decoded, inverted, decoded and encoded one by one, so the peak should not grow with the
clip; only the latents (16 KiB a frame at 256x256) do. `--kind`:

- `plain`: the bundled tiny SD2-depth model;
- `controlnet`: a tiny random SD 1.5 model with two canny ControlNets (`tests/tiny_sd15.py`,
  faster than the tiny SD2-depth model), whose control images (2 x 3 x H x W per frame) the
  edit reads at every step;
- `masked`: that model with one canny ControlNet, a local edit through one box mask for
  every frame: it needs each frame's inversion trajectory (steps x 4 x h/8 x w/8 float32)
  during the edit, so use several steps.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

KINDS = ("plain", "masked", "controlnet")


def make_clip(path: Path, frames: int, width: int = 320, height: int = 240) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30, options={"g": "30"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        yy, xx = np.mgrid[0:height, 0:width]
        for i in range(frames):
            rgb = np.stack([(xx + 2 * i) % 256, (yy + i) % 256, (xx + yy) % 256], -1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb.astype(np.uint8), "rgb24")))
        container.mux(stream.encode())


def kind_args(kind: str, folder: Path) -> list[str]:
    """The options of one kind of edit (models and masks made in `folder`)."""
    if kind == "plain":
        return ["--model", "tiny"]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_sd15 import build_controlnet, build_sd15

    args = ["--model", str(build_sd15(folder / "sd15"))]
    for i in (1,) if kind == "masked" else (1, 2):
        args += ["--controlnet", str(build_controlnet(folder / f"controlnet{i}", seed=i))]
        args += ["--control", "canny"]
    if kind == "masked":
        from PIL import Image

        box = np.zeros((240, 320), np.uint8)
        box[60:180, 80:240] = 255
        Image.fromarray(box).save(folder / "box.png")
        args += ["--mask", str(folder / "box.png")]
    return args


def run(clip: Path, out: Path, size: int, steps: int, extra: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, last line of output) of one `pix2video edit` process."""
    return run_edit([
        str(clip), "-p", "a glass sculpture", "--source-prompt", "coloured gradients",
        "--size", str(size), "--steps", str(steps), "--no-cache", "-o", str(out), *extra,
    ])  # fmt: skip


def run_edit(args: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, first line of output) of `pix2video edit ARGS`, offline."""
    command = [sys.executable, "-m", "pix2video", "edit", *args]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    tic = time.perf_counter()
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - tic
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"pix2video edit failed: {stderr.strip()}")
    return wall, usage.ru_maxrss * 1024, stdout.strip().splitlines()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=KINDS, default="plain")
    parser.add_argument("--frames", type=int, nargs="+", default=[60, 600])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        extra = kind_args(args.kind, Path(tmp))
        for n in args.frames:
            clip = Path(tmp) / f"clip{n}.mp4"
            make_clip(clip, n)
            out = Path(tmp) / f"out{n}.mp4"
            wall, rss, summary = run(clip, out, args.size, args.steps, extra)
            rows.append((n, wall, rss))
            print(f"{n} frames: {summary}", file=sys.stderr)
    base = rows[0][2]
    print(
        f"\n| kind | frames | size | steps | wall | s/frame | peak RSS | vs {rows[0][0]} frames |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n, wall, rss in rows:
        print(
            f"| {args.kind} | {n} | {args.size} | {args.steps} | {wall:.0f} s | {wall / n:.2f} "
            f"| {rss / 2**20:.0f} MiB | {rss / base - 1:+.1%} |"
        )


if __name__ == "__main__":
    main()
