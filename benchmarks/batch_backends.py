"""`pix2video batch` on the local and the Ray backend, the same jobs side by side.

    python benchmarks/batch_backends.py --jobs 4 8 --frames 2 --size 64 --steps 2

For each job count N: N edits of examples/cockatoo.mp4 (tiny model, one prompt each), run as
the command a user types, each run with a fresh cache and output folder, in this order:

- local: `--backend local` (one process; its torch threads: OMP_NUM_THREADS, default 1 here);
- ray, own instance: `--backend ray --cpus-per-worker C` (the command starts and stops Ray);
- ray, 1 worker: `--backend ray --workers 1 --cpus-per-worker C`, joining an instance this
  script started, so that it runs the jobs one after another like the local backend.

The Ray overhead per job is the slope difference, (ray1(N2) - ray1(N1) - local(N2) +
local(N1)) / (N2 - N1): what each job costs on a Ray worker beyond the same job in-process,
with the fixed costs (starting Ray, the workers importing torch and loading the model) left
out. Machines of our kind differ up to 3x in speed: compare numbers from one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "examples" / "cockatoo.mp4"
PROMPTS = ("crystal", "gold", "marble", "wooden", "paper", "glass", "copper", "ice", "jade")


def jobs_file(folder: Path, count: int) -> Path:
    """`count` jobs on the same clip, one prompt each (depth and inversion shared via the cache)."""
    rows = [
        f"{CLIP},a cockatoo made of {PROMPTS[i % len(PROMPTS)]} {i},a white cockatoo,j{i}"
        for i in range(count)
    ]
    path = folder / f"jobs-{count}.csv"
    path.write_text("input,prompt,source_prompt,output\n" + "\n".join(rows) + "\n")
    return path


def timed(args: list[str], folder: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds of the command, sum of the jobs' own seconds as their workers timed them)."""
    tic = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pix2video", "batch", *args, "-q"],
        env=env,
        cwd=folder,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - tic
    if proc.returncode != 0:
        raise SystemExit(f"pix2video batch failed ({proc.returncode}): {proc.stderr.strip()}")
    out = Path(args[args.index("-o") + 1])
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return seconds, sum(r["seconds"]["total"] for r in records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs=2, default=[4, 8])
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--cpus-per-worker", type=int, default=1)
    args = parser.parse_args()

    import ray

    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.cpus_per_worker))  # same kernels
    common = ["--model", "tiny", "--size", str(args.size), "--max-frames", str(args.frames)]
    common += ["--steps", str(args.steps)]
    ray_opts = ["--backend", "ray", "--cpus-per-worker", str(args.cpus_per_worker)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tic = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False)  # workers inherit os.environ
        env = dict(os.environ)  # with what joining needs (RAY_AUTH_MODE=token)
        address = ray.get_runtime_context().gcs_address
        print(
            f"ray.init: {time.perf_counter() - tic:.1f} s, {ray.cluster_resources()['CPU']:g} CPUs"
        )
        results: dict[str, dict[int, tuple[float, float]]] = {"local": {}, "ray": {}, "ray1": {}}
        for n in args.jobs:
            jobs = jobs_file(folder, n)
            for name, extra in (
                ("local", []),
                ("ray1", [*ray_opts, "--ray-address", address, "--workers", "1"]),
            ):
                out = folder / f"{name}-{n}"
                run = [str(jobs), "-o", str(out), "--cache-dir", str(out / ".cache"), *common]
                results[name][n] = timed(run + extra, folder, env)
        ray.shutdown()
        env.pop("RAY_AUTH_MODE", None)
        for n in args.jobs:  # a Ray instance of its own per command
            out = folder / f"ray-{n}"
            run = [str(jobs_file(folder, n)), "-o", str(out), "--cache-dir", str(out / ".c")]
            results["ray"][n] = timed(run + common + ray_opts, folder, env)

    n1, n2 = args.jobs
    print(f"\n{args.frames} frames, {args.size}, {args.steps} steps, tiny model; seconds")
    print(
        f"| backend | wall, {n1} jobs | wall, {n2} jobs | wall per extra job | in-job per extra job |"
    )
    print("|---|---:|---:|---:|---:|")
    labels = {
        "local": "local",
        "ray": f"ray, own instance, all CPUs ({args.cpus_per_worker} per worker)",
        "ray1": "ray, joined instance, 1 worker",
    }
    for name, label in labels.items():
        (a, ja), (b, jb) = results[name][n1], results[name][n2]
        per, job = (b - a) / (n2 - n1), (jb - ja) / (n2 - n1)
        print(f"| {label} | {a:.1f} | {b:.1f} | {per:.2f} | {job:.2f} |")
    (l1, lj1), (l2, lj2) = results["local"][n1], results["local"][n2]
    (r1, rj1), (r2, rj2) = results["ray1"][n1], results["ray1"][n2]
    wall = (r2 - r1 - l2 + l1) / (n2 - n1)
    inside = (rj2 - rj1 - lj2 + lj1) / (n2 - n1)
    print(f"\nRay overhead per job (1 worker vs local, slope difference): {wall:+.2f} s,")
    print(f"of which the job itself ran slower on the worker: {inside:+.2f} s, and scheduling,")
    print(f"transport and recording: {wall - inside:+.2f} s.")
    print(f"Ray fixed cost (1 worker, joined, vs local at {n1} jobs): {r1 - l1:+.1f} s")
    print(
        f"Starting Ray in the command (own instance vs joined, {n1} jobs): "
        f"{results['ray'][n1][0] - r1:+.1f} s"
    )


if __name__ == "__main__":
    main()
