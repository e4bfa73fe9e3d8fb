"""Peak memory and seconds per frame of `pix2video edit` for clips of growing length.

    python benchmarks/long_clip.py --frames 60 600 --size 256 --steps 2

Each length is a generated H.264 clip (moving gradients, 320x240 at 30 fps, with a keyframe
every second) edited by the real command line in its own process (tiny model, no cache), so
the peak RSS of each run is its own (read from `os.wait4`). Streaming is what is measured:
frames are decoded, inverted, decoded and encoded one by one, so the peak should not grow
with the clip; only the latents (16 KiB a frame at 256x256) do.
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


def make_clip(path: Path, frames: int, width: int = 320, height: int = 240) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30, options={"g": "30"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        yy, xx = np.mgrid[0:height, 0:width]
        for i in range(frames):
            rgb = np.stack([(xx + 2 * i) % 256, (yy + i) % 256, (xx + yy) % 256], -1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb.astype(np.uint8), "rgb24")))
        container.mux(stream.encode())


def run(clip: Path, out: Path, size: int, steps: int) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, last line of output) of one `pix2video edit` process."""
    return run_edit([
        str(clip), "-p", "a glass sculpture", "--source-prompt", "coloured gradients",
        "--model", "tiny", "--size", str(size), "--steps", str(steps), "--no-cache",
        "-o", str(out),
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
    parser.add_argument("--frames", type=int, nargs="+", default=[60, 600])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.frames:
            clip = Path(tmp) / f"clip{n}.mp4"
            make_clip(clip, n)
            wall, rss, summary = run(clip, Path(tmp) / f"out{n}.mp4", args.size, args.steps)
            rows.append((n, wall, rss))
            print(f"{n} frames: {summary}", file=sys.stderr)
    base = rows[0][2]
    print(f"\n| frames | size | steps | wall | s/frame | peak RSS | vs {rows[0][0]} frames |")
    print("|---|---|---|---|---|---|---|")
    for n, wall, rss in rows:
        print(
            f"| {n} | {args.size} | {args.steps} | {wall:.0f} s | {wall / n:.2f} "
            f"| {rss / 2**20:.0f} MiB | {rss / base - 1:+.1%} |"
        )


if __name__ == "__main__":
    main()
