"""glibc malloc settings for `pix2video edit`: CPU time, page faults and peak memory per setting.

    python benchmarks/allocator.py                      # edit runs + long-clip peaks
    python benchmarks/allocator.py --repeats 3 --long 60 600

Each candidate is a set of glibc's own malloc environment variables given to a separate
`pix2video edit` process (the command line leaves malloc alone when any is set, so the
candidate is exactly what runs); "pix2video" sets none and measures what the command
does by itself. Two measurements:

1. The same edit (tiny model, 2 frames at 512x512, --no-cache) run with every candidate in
   turn, `--repeats` rounds alternated, printing wall, user and system seconds, CPU use,
   minor page faults, voluntary context switches and peak RSS of each run (`os.wait4`).
2. The long-clip peak (`long_clip.py`'s clip and command, 256 px, 2 steps) at each length
   of `--long`, per candidate: the peak should not grow with the clip.

Wall and CPU figures are comparable only within one run of this script on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from long_clip import make_clip  # noqa: E402

NO_TUNING = {"MALLOC_ARENA_MAX": str(8 * (os.cpu_count() or 1))}  # glibc's 64-bit default
CANDIDATES: dict[str, dict[str, str]] = {
    "no tuning": NO_TUNING,
    "mmap 16 MiB + 1 arena (before)": {
        "MALLOC_ARENA_MAX": "1",
        "MALLOC_MMAP_THRESHOLD_": str(16 << 20),
    },
    "mmap 16 MiB": {"MALLOC_MMAP_THRESHOLD_": str(16 << 20)},
    "1 arena": {"MALLOC_ARENA_MAX": "1"},
    "pix2video": {},
}


def run(args: list[str], env_extra: dict[str, str]) -> dict[str, float]:
    """Resource use of one `pix2video edit ARGS` process with `env_extra` set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_extra, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, "-m", "pix2video", "edit", *args, "-q", "--no-cache"]
    tic = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - tic
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"pix2video edit failed: {proc.stderr.read().decode().strip()}")
    proc.stderr.close()
    return {
        "wall": wall,
        "user": usage.ru_utime,
        "sys": usage.ru_stime,
        "cpu": (usage.ru_utime + usage.ru_stime) / wall,
        "faults": usage.ru_minflt,
        "switches": usage.ru_nvcsw,
        "rss": usage.ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="steps of the 512x512 edit")
    parser.add_argument("--long", type=int, nargs="*", default=[60, 600])
    parser.add_argument("--only", nargs="*", default=None, help="candidate names to run")
    args = parser.parse_args()
    names = args.only or list(CANDIDATES)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_clip(tmp / "short.mp4", 2, 640, 480)
        edit = [str(tmp / "short.mp4"), "-p", "a glass sculpture", "--source-prompt"]
        edit += ["gradients", "--model", "tiny", "--size", "512", "--steps", str(args.steps)]
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for round_ in range(args.repeats):
            for name in names:
                r = run([*edit, "-o", str(tmp / "out.mp4")], CANDIDATES[name])
                runs[name].append(r)
                print(
                    f"round {round_ + 1} {name:<32} wall {r['wall']:6.1f} s  user {r['user']:6.1f}"
                    f"  sys {r['sys']:5.1f}  cpu {r['cpu']:4.0%}  faults {r['faults']:>9,}"
                    f"  switches {r['switches']:>6,}  rss {r['rss']:5.0f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
        peaks: dict[str, list[float]] = {name: [] for name in names}
        for n in args.long:
            make_clip(tmp / f"long{n}.mp4", n)
            for name in names:
                long = [str(tmp / f"long{n}.mp4"), "-p", "a glass sculpture", "--source-prompt"]
                long += ["gradients", "--model", "tiny", "--size", "256", "--steps", "2"]
                r = run([*long, "-o", str(tmp / "long.mp4")], CANDIDATES[name])
                peaks[name].append(r["rss"])
                print(f"{n} frames {name:<32} peak {r['rss']:.0f} MiB", file=sys.stderr)

    med = statistics.median
    header = "| setting | wall s | user s | sys s | CPU | faults | vol. switches | peak (512x512) |"
    long_cols = "".join(f" peak {n} fr |" for n in args.long)
    print(f"\nmedian of {args.repeats} alternated runs; long clips: 256 px, 2 steps\n")
    print(header + long_cols + (" growth |" if len(args.long) > 1 else ""))
    print("|---" * (8 + len(args.long) + (len(args.long) > 1)) + "|")
    for name in names:
        rs = runs[name] or [
            dict.fromkeys(("wall", "user", "sys", "cpu", "faults", "switches", "rss"), float("nan"))
        ]
        row = (
            f"| {name} | {med(r['wall'] for r in rs):.1f} | {med(r['user'] for r in rs):.1f} "
            f"| {med(r['sys'] for r in rs):.1f} | {med(r['cpu'] for r in rs):.0%} "
            f"| {med(r['faults'] for r in rs):,.0f} | {med(r['switches'] for r in rs):,.0f} "
            f"| {med(r['rss'] for r in rs):.0f} MiB |"
        )
        row += "".join(f" {p:.0f} MiB |" for p in peaks[name])
        if len(args.long) > 1:
            row += f" {peaks[name][-1] / peaks[name][0] - 1:+.1%} |"
        print(row)


if __name__ == "__main__":
    main()
