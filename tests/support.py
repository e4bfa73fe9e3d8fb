"""What the test modules share: data paths, frame helpers, settings builders, the tier guard.

Plain helpers live here (imported as ``from support import ...``: pytest puts tests/ on the
path); fixtures live in conftest.py. Nothing here imports torch or the pipelines at import
time, so helpers stay cheap for the modules that need none of that.
"""

from __future__ import annotations

import multiprocessing.process
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image

if TYPE_CHECKING:
    from pix2video.settings import EditSettings

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"  # the project's shared folder: models, data, reference
DATA = SHARED / "data"
MODELS = SHARED / "models"
# The real footage every job test edits: 16:9, 20 fps, 280 frames, with a (silent) audio track.
# The repository ships it (examples/); ../shared/data/videos/cockatoo.mp4 is the same file.
COCKATOO = ROOT / "examples" / "cockatoo.mp4"
REALSHORT = DATA / "videos" / "realshort.mp4"
G1 = DATA / "videos" / "g1.avi"
BLACKSWAN = DATA / "blackswan"
TINY_BLIP = MODELS / "tiny-blip"
TINY_CLIP = MODELS / "tiny-clip"

# The prompts of the cockatoo edits.
PROMPT, SOURCE = "a cockatoo made of blue crystal", "a white cockatoo"


TIERS_OFF_BY_DEFAULT = ("slow",)  # the long numerical runs (all 8 reference frames)


def with_tiers_off_by_default(expression: str) -> str:
    """The `-m` expression a run uses: `expression`, and not `slow` unless it names it. So
    `pytest` is the suite, `pytest -m "not integration"` a tier as written, `pytest -m slow`
    the long runs (a `-m` in pyproject's addopts would be replaced by any on the command line)."""
    off = [tier for tier in TIERS_OFF_BY_DEFAULT if tier not in expression]
    if not off:
        return expression
    clauses = [f"({expression})"] if expression else []
    return " and ".join([*clauses, *(f"not {tier}" for tier in off)])


def need(path: Path) -> Path:
    """`path`, or skip the test when the shared data it names is absent."""
    if not path.exists():
        pytest.skip(f"test data {path} is absent (the shared folder ../shared)")
    return path


def png_frames(folder: str | os.PathLike) -> list[np.ndarray]:
    """The PNG frames of an output folder, in name order, as RGB arrays."""
    return [np.asarray(Image.open(f).convert("RGB")) for f in sorted(Path(folder).glob("*.png"))]


def same_frames(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    """Whether two frame lists are equal bit for bit (and equally long)."""
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def frame_gap(a: list[np.ndarray], b: list[np.ndarray]) -> int:
    """The largest difference in grey levels between two equally long frame lists: a number
    to assert on and report (a failed `==` on frame lists prints every pixel and hides the
    rest of the log)."""
    assert len(a) == len(b), f"{len(a)} frames vs {len(b)}"
    pairs = zip(a, b, strict=True)
    return max(
        (int(np.abs(x.astype(np.int16) - y.astype(np.int16)).max()) for x, y in pairs), default=0
    )


def make_frames(
    n: int,
    height: int = 64,
    width: int = 64,
    seed: int = 0,
    amplitude: float = 90,
    periods: tuple[float, float] = (6.0, 8.0),
    noise: int = 10,
) -> list[np.ndarray]:
    """`n` synthetic frames: a wave of `amplitude` grey levels (x and y `periods` in pixels)
    moving 3 px a frame, plus uniform noise of +-`noise`: enough texture for edges, depth
    and attention to differ between frames; the same frames for the same arguments."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(n):
        wave = amplitude * np.sin((xx + 3 * i) / periods[0]) * np.cos(yy / periods[1])
        jitter = rng.integers(-noise, noise, (height, width, 3))
        frames.append((120 + wave[..., None] + jitter).clip(0, 255).astype(np.uint8))
    return frames


def cockatoo_settings(folder: Path, **values: Any) -> EditSettings:
    """Edit settings for the cockatoo clip (`PROMPT` from `SOURCE`) with the bundled tiny model
    in float32 (what the tests compare with float32 pipelines), writing `folder`/out with its
    cache in `folder`/cache; `values` set or replace any field (size, frames, steps, model,
    ControlNets, output...). Use ``.replace(**changes)`` on the result for per-test changes."""
    from pix2video.settings import EditSettings

    base: dict[str, Any] = dict(
        input=COCKATOO,
        prompt=PROMPT,
        output=Path(folder) / "out",
        source_prompt=SOURCE,
        model="tiny",
        dtype="float32",
        cache_dir=Path(folder) / "cache",
    )
    return EditSettings(**{**base, **values})


# --------------------------------------------------------------------------- the CLI in-process


@dataclass
class CliRun:
    """What a run of the command line left: its exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: Any, cwd: Path | None = None, env: dict[str, str] | None = None) -> CliRun:
    """``pix2video ARGS`` in this process through click's runner, read as a subprocess's run
    is read (exit code, stdout, stderr) but without starting Python and torch again.

    The real command group runs in standalone mode (its one-sentence errors and exit codes),
    in `cwd`, with `env` added to the environment, on one torch thread as the CLI
    subprocesses ran (OMP_NUM_THREADS=1). The tests that prove the installed entry point
    start it for real (`integration`).
    """
    import torch
    from click.testing import CliRunner

    from pix2video.cli import main

    environment = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    threads, old_cwd = torch.get_num_threads(), Path.cwd()
    torch.set_num_threads(1)
    try:
        if cwd is not None:
            os.chdir(cwd)
        result = CliRunner(env=environment).invoke(main, [str(a) for a in args])
    finally:
        os.chdir(old_cwd)
        torch.set_num_threads(threads)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a bug in the test or the CLI, not an exit of the CLI
    return CliRun(result.exit_code, result.stdout, result.stderr)


# --------------------------------------------------------------------------- the tier guard


class StartedOutsideIntegration(AssertionError):
    """A test outside the `integration` tier started a process."""


def _is_ours(program: str) -> bool:
    """Whether `program` is this Python, or a program of its environment (the console
    script, Ray's binaries, Playwright's driver), rather than a system tool."""
    path = Path(program)
    if not path.is_absolute():
        return Path(program).name.startswith("python") or program == "pix2video"
    candidates = {path, path.resolve()}
    here = {Path(sys.executable), Path(sys.executable).resolve()}
    if candidates & here:
        return True
    if sys.prefix != sys.base_prefix:  # a virtual environment: anything installed in it
        prefix = Path(sys.prefix).resolve()
        return any(p.is_relative_to(prefix) for p in candidates)
    return False


@contextmanager
def in_process_only(what: str) -> Iterator[None]:
    """Within the block, starting a Python process (the CLI, a worker, Ray) or a process of
    the environment (Playwright's browser driver) fails with `StartedOutsideIntegration`
    naming `what`. System tools a library may call (fc-list, ldconfig) stay allowed."""
    popen_child = subprocess.Popen._execute_child
    process_start = multiprocessing.process.BaseProcess.start

    def guarded_child(self, args, executable, *rest, **kwargs):
        program = executable or (args if isinstance(args, str | bytes | os.PathLike) else args[0])
        program = os.fsdecode(program)
        if _is_ours(program):
            raise StartedOutsideIntegration(
                f"{what} started {program} but is not marked `integration`"
            )
        return popen_child(self, args, executable, *rest, **kwargs)

    def guarded_start(self):
        raise StartedOutsideIntegration(
            f"{what} started a {type(self).__name__} but is not marked `integration`"
        )

    subprocess.Popen._execute_child = guarded_child
    multiprocessing.process.BaseProcess.start = guarded_start
    try:
        yield
    finally:
        subprocess.Popen._execute_child = popen_child
        multiprocessing.process.BaseProcess.start = process_start


CHROMIUM = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
"""Debian's chromium (`.ci/run` installs it): Playwright cannot download its own browsers here."""
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="/usr/bin/chromium is not installed (.ci/run installs it)"
)


@contextmanager
def browser_page(url: str, height: int = 1000) -> Iterator:
    """A Playwright page of the server at `url`, loaded, in the system's chromium.

    Requests to any other host are refused and, at the end, asserted absent: the page must
    work offline."""
    if CHROMIUM is None:
        pytest.skip("/usr/bin/chromium is not installed (.ci/run installs it)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the test extra installs playwright"
    )
    external: list[str] = []

    def local_only(route) -> None:
        if route.request.url.startswith(url):
            route.continue_()
        else:
            external.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": height})
            page.route("**/*", local_only)
            page.goto(url)
            page.wait_for_selector("#status textarea")  # Gradio renders the page after load
            yield page
        finally:
            browser.close()
    assert not external, f"the page requested other hosts: {external}"


def wait_status(page, pattern: str, timeout: float = 60_000) -> str:
    """The page's status text once it matches the regular expression `pattern`."""
    page.wait_for_function(
        "p => new RegExp(p).test(document.querySelector('#status textarea').value)",
        arg=pattern,
        timeout=timeout,
    )
    return page.locator("#status textarea").input_value()


def fill_edit_form(page, video: Path, prompt: str, source_prompt: str, **advanced) -> None:
    """Upload `video`, wait for the captioner's word (so it cannot overwrite what is typed
    next), type the prompts and set the Advanced fields (`steps`, `max_frames`, `size`)."""
    page.locator("#input-video input[type=file]").set_input_files(str(video))
    wait_status(page, "Source prompt suggested|source prompt is needed")
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#source-prompt textarea").fill(source_prompt)
    page.get_by_text("Advanced").click()
    for name, value in advanced.items():
        field = "textarea" if name == "size" else "input"
        page.locator(f"#{name.replace('_', '-')} {field}").fill(str(value))


def preview_then_edit(page, frames: int, timeout: float = 120_000) -> tuple[float, float, str]:
    """Click Preview and wait for the anchor frame, then Edit and wait for the video:
    (seconds to the preview, seconds to the video, the status after the edit)."""
    tic = time.perf_counter()
    page.locator("#preview-button").click()
    page.wait_for_selector("#preview-image img", timeout=timeout)
    preview_s = time.perf_counter() - tic
    wait_status(page, "Anchor frame")
    tic = time.perf_counter()
    page.locator("#edit-button").click()
    page.wait_for_selector("#result-video video[src]", timeout=timeout)
    edit_s = time.perf_counter() - tic
    return preview_s, edit_s, wait_status(page, f"Edited {frames} frames")
