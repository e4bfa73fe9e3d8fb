"""Seconds from asking for a caption to the one-sentence answer with the hub unreachable.

A new user without internet, on an empty hub cache, with `HF_ENDPOINT` pointing at a closed
local port (and no `HF_HUB_OFFLINE`):

- ``ui``: `pix2video ui --model tiny`, the example clip chosen in headless Chromium; seconds
  until the status box holds a sentence (a caption or "type a source prompt");
- ``cli``: `pix2video edit examples/cockatoo.mp4 -p x --model tiny` without
  ``--source-prompt``; seconds until it exits (with its one-sentence error, or an edit).

Each measurement is capped at ``--cap`` seconds (then reported as ">= cap").

    python benchmarks/offline_first_use.py [--cap 300] [--only ui|cli] [--captioner ID]

``--captioner`` is passed to both (e.g. Salesforce/blip-image-captioning-base: the captioner
every real model uses, which `--model tiny` no longer needs). The commands run in this
checkout (its folder is their working directory).
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
CHROMIUM = "/usr/bin/chromium"
CLOSED_PORT = "http://127.0.0.1:9"


def unreachable_env(home: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=CLOSED_PORT, HF_HOME=home, PYTHONUNBUFFERED="1")
    env["PIX2VIDEO_CACHE_DIR"] = str(Path(home) / "pix2video-cache")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_cli(cap: float, extra: list[str]) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as home:
        command = [
            sys.executable, "-m", "pix2video", "edit", str(CLIP), "-p", "x", "--model", "tiny",
            "--size", "128", "--max-frames", "2", "--steps", "2", "-o", f"{home}/out.mp4", *extra,
        ]  # fmt: skip
        tic = time.perf_counter()
        try:
            done = subprocess.run(
                command,
                env=unreachable_env(home),
                capture_output=True,
                text=True,
                timeout=cap,
                cwd=ROOT,
            )
        except subprocess.TimeoutExpired:
            return cap, "(still running at the cap)"
        lines = (done.stdout + done.stderr).strip().splitlines()
        return time.perf_counter() - tic, lines[-1] if lines else ""


def measure_ui(cap: float, extra: list[str]) -> tuple[float, str]:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as home:
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pix2video",
                "ui",
                "--model",
                "tiny",
                "--port",
                str(port),
                *extra,
            ],
            env=unreachable_env(home),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(server.stdout), daemon=True).start()
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while not any("running on" in line for line in lines):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start:\n" + "".join(lines))
                time.sleep(0.1)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                page = browser.new_page()
                page.goto(url)
                page.wait_for_selector("#status textarea")
                page.locator("#input-video input[type=file]").set_input_files(str(CLIP))
                tic = time.perf_counter()
                try:
                    page.wait_for_function(
                        "() => /[.]\\s*$/.test(document.querySelector('#status textarea').value)",
                        timeout=cap * 1000,
                        polling=100,
                    )
                    seconds = time.perf_counter() - tic
                    text = page.locator("#status textarea").input_value()
                except Exception:  # noqa: BLE001 - the cap
                    seconds, text = cap, "(no status at the cap)"
                browser.close()
            return seconds, re.sub(r"\s+", " ", text)
        finally:
            server.terminate()
            server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=float, default=300)
    parser.add_argument("--only", choices=("ui", "cli"))
    parser.add_argument("--captioner", default=None)
    args = parser.parse_args()
    extra = ["--captioner", args.captioner] if args.captioner else []
    for name, measure in (("ui", measure_ui), ("cli", measure_cli)):
        if args.only in (None, name):
            seconds, text = measure(args.cap, extra)
            print(f"{name}: {seconds:.1f} s -> {text}", flush=True)


if __name__ == "__main__":
    main()
