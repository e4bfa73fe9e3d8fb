"""Everything that needs CUDA, in one command, in at most 8 minutes on one GPU.

    python benchmarks/gpu_check.py                  # writes benchmarks/gpu_check.md, prints it
    python benchmarks/gpu_check.py --out table.md
    python benchmarks/gpu_check.py --dry-run        # on the CPU, tiny sizes: checks this script

1. the tests marked `cuda` (`tests/test_cuda.py`: float16/bfloat16 pipelines, the SDXL VAE's
   float32 upcast, `--frame-batch auto`, `--compile`, `doctor`; with 2+ GPUs the NCCL exchange
   of one clip against one process; `tests/test_offload.py`: FLUX with `--offload model` and
   `sequential` against the whole model on the GPU), with their measured gaps;
2. the full-size SD2-depth architecture (random weights) in float16 at 512x512: seconds per
   frame and peak GPU memory for N = 1, 2, 4, 8 and auto frames per UNet call
   (`frame_batch.py`, each N in a process of its own);
3. the full-size SDXL architecture with one ControlNet in float16 at 1024x1024, one frame
   (`bench_pipeline.py`; its VAE decodes in float32);
4. `pix2video doctor`.

Every part runs in a subprocess with a time limit; a part that fails or runs out of time is
one line in the table, and the rest still run. The markdown is written whole at the end (to
a temporary name, then renamed): paste it into benchmarks/README.md. `--dry-run` runs the
same parts on the CPU with the tiny model at 64x64 (the cuda tests then skip): a check of the
script itself, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLE = ROOT / "examples" / "cockatoo.mp4"  # in the checkout: no shared data needed
BUDGET_S = 8 * 60  # the parts' limits add up to less
CUDA_TEST_FILES = ("tests/test_cuda.py", "tests/test_offload.py")  # where `cuda` tests live


@dataclass
class Plan:
    """What each part runs: the GPU's sizes, or the dry run's."""

    device: str
    dtype: str
    frame_batch_model: str  # frame_batch.py's --model: "full" or "tiny"
    size: int
    frames: int
    steps: int
    batches: list[str]
    sdxl: list[str]  # bench_pipeline.py's arguments
    limits: dict[str, int] = field(default_factory=dict)  # seconds per part

    @classmethod
    def gpu(cls) -> Plan:
        return cls(
            device="cuda",
            dtype="float16",
            frame_batch_model="full",
            size=512,
            frames=8,
            steps=10,
            batches=["1", "2", "4", "8", "auto"],
            sdxl=["--model", "full-sdxl", "--size", "1024", "--frames", "1", "--steps", "4"],
            limits={"tests": 100, "batch": 45, "sdxl": 120, "doctor": 20},  # batch: per N
        )

    @classmethod
    def dry_run(cls) -> Plan:
        return cls(
            device="cpu",
            dtype="float32",
            frame_batch_model="tiny",
            size=64,
            frames=2,
            steps=1,
            batches=["1", "2", "auto"],
            sdxl=["--model", "tiny", "--size", "64", "--frames", "1", "--steps", "1"],
            limits={"tests": 120, "batch": 120, "sdxl": 120, "doctor": 60},
        )


def run(command: list[str], limit: int) -> tuple[int | None, str]:
    """(exit code, or None when past `limit` seconds; stdout + stderr)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=limit, cwd=ROOT, env=env
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return None, out
    return done.returncode, done.stdout + done.stderr


def failed(code: int | None, limit: int, output: str) -> str:
    """One line for a part that did not finish."""
    if code is None:
        return f"ran past its {limit} s limit"
    last = [line for line in output.strip().splitlines() if line.strip()][-1:] or ["no output"]
    return f"failed (exit {code}): {last[0][:300]}"


def cuda_tests(plan: Plan) -> list[str]:
    """pytest -m cuda: counts, each test's outcome, the measurements it reported."""
    limit = plan.limits["tests"]
    command = [sys.executable, "-m", "pytest", "-m", "cuda", *CUDA_TEST_FILES, "-v"]
    code, out = run(command, limit)
    lines = ["## Tests marked cuda", ""]
    summary = re.findall(r"^=* ?(\d+ (?:passed|skipped|failed|error).*?) in [\d.]+s", out, re.M)
    if code is None or not summary:
        return [*lines, failed(code, limit, out), ""]
    lines += [f"pytest -m cuda: {summary[-1]}.", "", "| test | outcome |", "|---|---|"]
    for name, outcome in re.findall(r"^\S+::(\S+) (PASSED|FAILED|SKIPPED|ERROR)", out, re.M):
        lines.append(f"| {name} | {outcome.lower()} |")
    measured = re.findall(r"^(.+): (\S.*)\n    \(tests/", out, re.M)
    if measured:
        lines += ["", "| measured | value |", "|---|---|"]
        lines += [f"| {what} | {value} |" for what, value in measured]
    return [*lines, ""]


def frame_batch_table(plan: Plan) -> list[str]:
    """frame_batch.py's N per process, as one markdown table."""
    sys.path.insert(0, str(HERE))
    from frame_batch import measure

    title = (
        f"## SD2-depth ({plan.frame_batch_model}), {plan.dtype}, {plan.size}x{plan.size}, "
        f"{plan.frames} frames, {plan.steps} steps: frames per UNet call"
    )
    args = argparse.Namespace(batches=plan.batches, frames=plan.frames)
    extra = [
        "--frames", str(plan.frames), "--steps", str(plan.steps), "--size", str(plan.size),
        "--model", plan.frame_batch_model, "--device", plan.device, "--dtype", plan.dtype,
    ]  # fmt: skip
    try:
        rows, gaps = measure(args, extra, timeout=plan.limits["batch"])
    except subprocess.TimeoutExpired:
        return [title, "", f"ran past its {plan.limits['batch']} s limit (one N)", ""]
    except subprocess.CalledProcessError as exc:
        return [title, "", failed(exc.returncode, 0, exc.stderr or ""), ""]
    memory = "peak GPU memory" if plan.device == "cuda" else "peak RSS"
    lines = [title, "", f"| N | s/frame | UNet calls | {memory} | max gap to N=1 |"]
    lines.append("|---|---|---|---|---|")
    for row in rows:
        n = row["batch"]
        label = f"auto ({row['chosen']})" if n == "auto" else n
        lines.append(
            f"| {label} | {row['seconds'] / plan.frames:.3f} | {row['calls']} | "
            f"{row['peak'] / 2**20:.0f} MiB | {gaps[n]:.2e} |"
        )
    return [*lines, ""]


def sdxl_frame(plan: Plan) -> list[str]:
    """bench_pipeline.py on one frame: seconds, peak memory."""
    limit = plan.limits["sdxl"]
    from pix2video.media import read_clip, write_video

    with tempfile.TemporaryDirectory() as tmp:
        out_json, frames = Path(tmp) / "sdxl.json", Path(tmp) / "frames"
        write_video(frames, read_clip(EXAMPLE, max_frames=1).frames, fps=25)  # PNGs
        command = [sys.executable, str(HERE / "bench_pipeline.py"), *plan.sdxl]
        command += ["--device", plan.device, "--dtype", plan.dtype, "--json", str(out_json)]
        command += ["--frames-dir", str(frames)]
        code, out = run(command, limit)
        model = plan.sdxl[plan.sdxl.index("--model") + 1]
        size = plan.sdxl[plan.sdxl.index("--size") + 1]
        lines = [f"## {model} at {size}x{size}, {plan.dtype}, one frame", ""]
        if code != 0 or not out_json.exists():
            return [*lines, failed(code, limit, out), ""]
        row = json.loads(out_json.read_text())[0]
    peak = row.get("cuda_peak_bytes", row["peak_rss_bytes"])
    memory = "peak GPU memory" if "cuda_peak_bytes" in row else "peak RSS"
    lines += [f"| s/frame | editing s/frame | decoding s/frame | {memory} |", "|---|---|---|---|"]
    lines.append(
        f"| {row['seconds_per_frame']:.2f} | {row.get('editing_s_per_frame', 0):.2f} | "
        f"{row.get('decoding_s_per_frame', 0):.2f} | {peak / 2**20:.0f} MiB |"
    )
    return [*lines, ""]


def doctor(plan: Plan) -> list[str]:
    limit = plan.limits["doctor"]
    code, out = run([sys.executable, "-m", "pix2video", "doctor"], limit)
    lines = ["## pix2video doctor", ""]
    if code != 0:
        return [*lines, failed(code, limit, out), ""]
    return [*lines, "```", out.strip(), "```", ""]


PARTS = {"tests": cuda_tests, "batch": frame_batch_table, "sdxl": sdxl_frame, "doctor": doctor}


def report(plan: Plan, parts: list[str]) -> str:
    """Every part's markdown, with a header naming the machine and the time each took."""
    import torch

    if plan.device == "cuda":
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        machine = f"{len(names)} GPU(s): {', '.join(names)}"
    else:
        machine = f"dry run on the CPU ({os.cpu_count()} cores): not a measurement"
    lines = [f"# gpu_check: {machine}; torch {torch.__version__}", ""]
    timings = []
    for name in parts:
        tic = time.perf_counter()
        lines += PARTS[name](plan)
        timings.append(f"{name} {time.perf_counter() - tic:.0f} s")
    lines.append(f"Time per part: {', '.join(timings)}.")
    return "\n".join(lines) + "\n"


def write_atomically(text: str, path: Path) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "gpu_check.md")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check the script")
    parser.add_argument(
        "--parts", nargs="+", choices=list(PARTS), default=list(PARTS), help="a subset"
    )
    args = parser.parse_args(argv)
    if not args.out.parent.is_dir():
        print(f"Error: the folder {args.out.parent} does not exist.", file=sys.stderr)
        return 2
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("Error: no CUDA GPU here; --dry-run checks the script on the CPU.", file=sys.stderr)
        return 2
    text = report(Plan.dry_run() if args.dry_run else Plan.gpu(), args.parts)
    write_atomically(text, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
