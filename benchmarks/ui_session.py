"""A prompt-iteration session against the real `pix2video ui` server, timed from a client.

    python benchmarks/ui_session.py --frames 8 --size 512 --steps 50

Starts `pix2video ui --model tiny` on a free local port (fresh cache), then through
gradio_client: previews the anchor frame, edits the clip, and edits it again with only the
prompt changed. Prints seconds to the preview and to each edit, the UNet evaluations the
server reported for each run, and the server's RSS (from /proc, sampled every 0.2 s) idle
and at its peak during the jobs.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "examples" / "cockatoo.mp4"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--clip", default=str(CLIP))
    args = parser.parse_args()

    from gradio_client import Client, handle_file

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
        server = subprocess.Popen(
            [sys.executable, "-m", "pix2video", "ui", "--model", "tiny", "--port", str(port),
             "--cache-dir", str(Path(tmp) / "cache"), "--max-frames", str(args.frames)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}/"
        for line in server.stdout:
            if url.rstrip("/") in line:
                break
        threading.Thread(target=server.stdout.read, daemon=True).start()
        time.sleep(2)
        idle = rss_bytes(server.pid)
        peak = [idle]
        running = [True]

        def sample() -> None:
            while running[0]:
                peak[0] = max(peak[0], rss_bytes(server.pid))
                time.sleep(0.2)

        threading.Thread(target=sample, daemon=True).start()
        client = Client(url, verbose=False)
        form = dict(
            video=handle_file(args.clip),
            source_prompt="a white cockatoo on a perch",
            steps=args.steps,
            size=str(args.size),
            max_frames=args.frames,
        )
        timings, statuses = {}, {}
        tic = time.perf_counter()
        _, statuses["preview"], _ = client.predict(
            prompt="a cockatoo made of blue crystal", api_name="/preview", **form
        )
        timings["preview"] = time.perf_counter() - tic
        for name, prompt in (("edit", "a cockatoo made of blue crystal"),
                             ("second prompt", "a cockatoo made of gold")):  # fmt: skip
            tic = time.perf_counter()
            _, statuses[name] = client.predict(prompt=prompt, api_name="/edit", **form)
            timings[name] = time.perf_counter() - tic
        running[0] = False
        server.terminate()
        server.wait(timeout=60)

    print(f"tiny model, {args.frames} frames of {Path(args.clip).name}, long side {args.size}, "
          f"{args.steps} steps; server RSS idle {idle / 2**20:.0f} MiB, peak during the jobs "
          f"{peak[0] / 2**20:.0f} MiB\n")  # fmt: skip
    print("| run | seconds | UNet evaluations (server's status) |\n|---|---|---|")
    for name, seconds in timings.items():
        evaluations = re.search(r"UNet evaluations?:?[^\n]*", statuses[name])
        print(f"| {name} | {seconds:.1f} | {evaluations.group(0) if evaluations else '?'} |")


if __name__ == "__main__":
    main()
