"""Peak resident memory of a split edit's driver against its workers' and a one-process edit's.

The driver of `pix2video edit --workers N` loads no diffusion model (the workers load it and
decode their own frames), so it should stay near a process that has only read the clip,
while each worker holds the model as a one-process edit does. Each configuration runs in a
fresh Python process (peaks do not carry over); the peak of that process is its own
`ru_maxrss`, the workers' is `RUSAGE_CHILDREN`'s (the largest waited-for child: Linux
reports the maximum, not a sum). CPU only; what this means per GPU is worked out in
benchmarks/README.md from the weights' sizes.

    python benchmarks/driver_memory.py                       # tiny model, 2 workers
    python benchmarks/driver_memory.py --model /tmp/sd2full --size 64 --frames 2 --steps 1

where /tmp/sd2full is the full-size SD2-depth architecture with random weights, saved once:
`full_size.full_size_pipeline(torch.float16).save_pretrained("/tmp/sd2full")` (2.5 GB).
    cd /tmp && PYTHONPATH=/tmp/older python ~/pix2video/benchmarks/driver_memory.py  # older code
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]


def measure(args) -> dict:
    """Run one edit in this process; its peak RSS and its children's, in MiB."""
    from pix2video import EditSettings, edit_clip

    with tempfile.TemporaryDirectory() as folder:
        settings = EditSettings(
            input=ROOT / "examples" / "cockatoo.mp4",
            prompt="a cockatoo made of blue crystal",
            output=Path(folder) / "out.mp4",
            source_prompt="a white cockatoo",
            model=args.model,
            size=str(args.size),
            max_frames=args.frames,
            steps=args.steps,
            cache_dir=Path(folder) / "cache",
            workers=args.workers,
        )
        result = edit_clip(settings)
    mib = 1024.0  # ru_maxrss is in KiB on Linux
    return {
        "workers": args.workers,
        "self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / mib,
        "largest_child_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / mib,
        "worker_decodes": getattr(result, "worker_decodes", []),  # older versions: none
    }


def run(args, workers: int) -> dict:
    """`measure` in a fresh process."""
    command = [sys.executable, __file__, "--inside", "--workers", str(workers),
               "--model", args.model, "--size", str(args.size), "--frames", str(args.frames),
               "--steps", str(args.steps)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        print(json.dumps(measure(args)))
        return
    one, split = run(args, 1), run(args, args.workers)
    print(f"{args.model}, {args.size}px, {args.frames} frames, {args.steps} steps (CPU)")
    print("| run | process | peak RSS MiB | frames it decoded |")
    print("|---|---|---|---|")
    print(f"| one process | the job | {one['self_mib']:.0f} | {args.frames} |")
    by_driver = args.frames - sum(split["worker_decodes"])  # all of them, before the change
    print(f"| {args.workers} workers | driver | {split['self_mib']:.0f} | {by_driver} |")
    print(
        f"| {args.workers} workers | largest worker | {split['largest_child_mib']:.0f} | "
        f"{', '.join(map(str, split['worker_decodes'])) or 'n/a'} (per worker) |"
    )


if __name__ == "__main__":
    main()
