"""One clip split across workers, end to end (`--workers`, `--backend ray`; `job.chain_driver`).

The one-process baseline runs with one torch thread, as each of two CPU workers does on this
2-core machine: the same kernels on the same shapes, so a split edit equals it bit for bit
(the issue's bound is 1e-5). Against a two-thread process the tiny random model turns the
thread count's rounding (~1e-7) into visible differences; that is the thread count, not the
split (`test_frame_chain.py` shows the split exact in float64 in every mode).

Output frames are compared as PNG (lossless) within one grey level: latents 1e-5 apart decode
to frames at most one level apart (measured on the tiny VAE), whereas through H.264 one
level's change moves the encoder's choices. Processes hold their tensors at other addresses and
a CPU's BLAS may round by alignment (on CI's CPU the decoded mp4 frames once differed where
this machine's were equal), so bit equality of frames is not asserted across processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from support import cockatoo_settings, frame_gap, png_frames

from pix2video import EditSettings, edit_clip
from pix2video.cli import main
from pix2video.job import PipelineCache

FRAMES, STEPS, SIZE = 7, 4, "64"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def mask_file(tmp_path_factory) -> Path:
    """A local edit: the middle of the frame."""
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 12:52] = 255
    path = tmp_path_factory.mktemp("mask") / "mask.png"
    Image.fromarray(mask).save(path)
    return path


def settings(folder: Path, mask: Path, **changes) -> EditSettings:
    """A local edit, anchor last, guided: the modes a split must get right together."""
    folder.mkdir(parents=True, exist_ok=True)
    base = cockatoo_settings(
        folder, output=folder / "out", size=SIZE, max_frames=FRAMES, steps=STEPS, mask=mask,
        anchor="last", save_latents=folder / "latents", checkpoint_interval=0,
    )  # fmt: skip
    return base.replace(**changes)


def cli_args(s: EditSettings) -> list[str]:
    return [
        "edit", str(s.input), "-p", s.prompt, "-o", str(s.output), "--source-prompt",
        s.source_prompt, "--model", "tiny", "--size", SIZE, "--max-frames", str(FRAMES),
        "--steps", str(s.steps), "--mask", str(s.mask), "--anchor", "last", "--cache-dir",
        str(s.cache_dir), "--save-latents", str(s.save_latents), "--checkpoint-interval", "0",
        "--dtype", s.dtype,
    ]  # fmt: skip


def final_latents(folder: Path) -> np.ndarray:
    files = sorted((folder / "latents" / "final").glob("*.npy"))
    assert len(files) == FRAMES
    return np.stack([np.load(f) for f in files])


def one_thread_edit(s: EditSettings, pipelines: PipelineCache | None = None):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return edit_clip(s, pipelines=pipelines)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, mask_file):
    folder = tmp_path_factory.mktemp("one")
    result = one_thread_edit(settings(folder, mask_file))
    return result, final_latents(folder)


@pytest.mark.integration
@pytest.mark.bitwise
def test_three_local_workers_equal_one_process(
    tmp_path, mask_file, one_process, report_measurement
):
    baseline, expected = one_process
    s = settings(tmp_path, mask_file, workers=3, steps=STEPS)
    stages: list[str] = []
    driver = PipelineCache()
    result = edit_clip(
        s, progress=lambda stage, done, total: stages.append(stage), pipelines=driver
    )
    gap = float(np.abs(final_latents(tmp_path) - expected).max())
    report_measurement(
        "3 workers vs one process (mask, anchor last, guided): max gap", f"{gap:.2e}"
    )
    assert gap <= TOLERANCE
    assert result.workers == 3 and result.bytes_exchanged > 0
    # depth and inversion were split, every frame done once; the same UNet work as one process
    assert result.depth_computed == FRAMES and result.inversion_computed == FRAMES
    assert result.unet_evaluations_editing == baseline.unet_evaluations_editing
    assert result.unet_evaluations_inversion == baseline.unet_evaluations_inversion
    assert {"depth", "inversion", "editing", "writing"} <= set(stages)
    # the driver loaded no model: every worker decoded its own frames, each frame once,
    # and the output is the one-process run's, frame for frame
    assert not driver._pipes
    assert len(result.worker_decodes) == 3 and min(result.worker_decodes) > 0
    assert sum(result.worker_decodes) == FRAMES
    assert result.peak_frames_held == baseline.peak_frames_held  # read back one at a time
    frames = frame_gap(png_frames(s.output), png_frames(baseline.output))
    report_measurement("3 workers vs one process: output frames' max gap (grey levels)", frames)
    assert frames <= 1


@pytest.mark.bitwise
def test_split_edit_found_cached_is_decoded_by_the_driver_alone(
    tmp_path, mask_file, one_process, report_measurement
):
    """No worker starts for a cached edit: the driver's copy of the model is the only one."""
    baseline, _ = one_process
    s = settings(tmp_path, mask_file, cache_dir=Path(baseline.output).parent / "cache")
    driver = PipelineCache()
    result = one_thread_edit(s.replace(workers=2), pipelines=driver)
    assert result.editing == "cached" and result.worker_decodes == []
    assert len(driver._pipes) == 1
    frames = frame_gap(png_frames(s.output), png_frames(baseline.output))
    report_measurement("cached split edit vs one process: output frames' max gap", frames)
    assert frames <= 1


@pytest.mark.integration
def test_two_ray_workers_from_the_cli(
    tmp_path, mask_file, one_process, ray_address, report_measurement
):
    """Two workers on the run's Ray instance (conftest's `ray_address`, joined as a cluster)."""
    _, expected = one_process
    s = settings(tmp_path, mask_file)
    ray = ["--backend", "ray", "--ray-address", ray_address, "--workers", "2"]
    run = subprocess.run(
        [sys.executable, "-m", "pix2video", *cli_args(s), *ray],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Workers: 2," in run.stdout
    gap = float(np.abs(final_latents(tmp_path) - expected).max())
    report_measurement("2 Ray workers (CLI) vs one process: max gap", f"{gap:.2e}")
    assert gap <= TOLERANCE


def _workers_of(process: subprocess.Popen) -> list[psutil.Process]:
    children = psutil.Process(process.pid).children(recursive=True)
    return [c for c in children if "spawn_main" in " ".join(c.cmdline())]


def _wait_for_checkpoint(cache: Path, process: subprocess.Popen, newer_than: float = 0.0) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if any(
            f.stat().st_mtime > newer_than for f in cache.glob("**/checkpoint/*.pt") if f.is_file()
        ):
            return
        time.sleep(0.05)
    raise AssertionError("no editing checkpoint appeared")


@pytest.mark.integration
def test_ctrl_c_then_a_lost_worker_end_as_an_uninterrupted_edit(tmp_path, mask_file):
    """Ctrl-C stops every worker and keeps the cache; the same command then resumes, loses a
    worker (SIGKILL) after another step, restarts on the one that remains, and its result
    equals an uninterrupted edit."""
    steps = 16  # long enough to interrupt twice
    baseline = tmp_path / "baseline"
    one_thread_edit(settings(baseline, mask_file, steps=steps))
    s = settings(tmp_path / "split", mask_file, steps=steps)
    command = [sys.executable, "-m", "pix2video", *cli_args(s), "--workers", "2"]
    command[command.index("--steps") + 1] = str(steps)
    cache = Path(s.cache_dir)

    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(cache, first)
    workers = _workers_of(first)
    assert len(workers) == 2
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 130, err
    assert "resume" in err.lower()
    assert not Path(s.output).exists()
    psutil.wait_procs(workers, timeout=15)
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)

    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(cache, second, newer_than=time.time())
    victims = _workers_of(second)
    assert len(victims) == 2
    os.kill(victims[1].pid, signal.SIGKILL)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-2000:]
    assert "Worker 1 was lost; editing again after step" in err + out
    assert "resumed after step" in out and "Workers: 1, " in out and "restarted 1 time" in out, out
    gap = float(np.abs(final_latents(tmp_path / "split") - final_latents(baseline)).max())
    assert gap <= TOLERANCE


@pytest.mark.parametrize(
    "options, message",
    [
        (["--devices", "gpu0"], "--devices takes cpu or cuda:N, comma-separated; got 'gpu0'."),
        (
            ["--devices", "cuda:0,cuda:1"],
            "--devices names cuda:0, but this machine has 0 CUDA GPUs.",
        ),
        (["--ray-address", "10.0.0.1:6379"], "--ray-address needs --backend ray."),
        (["--backend", "ray", "--devices", "cpu,cpu"], "Ray places its workers itself"),
        (["--workers", "2", "--latent-guidance-target", "step:1"], "Several workers edit"),
        (["--backend", "ray", "--ray-address", "127.0.0.1:9"], "Cannot reach Ray at 127.0.0.1:9"),
    ],
)
def test_bad_worker_options_are_one_sentence(tmp_path, mask_file, options, message):
    s = settings(tmp_path, mask_file)
    tic = time.monotonic()
    result = CliRunner().invoke(main, [*cli_args(s), *options])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]
    assert time.monotonic() - tic < 30
    assert not Path(s.output).exists() and not list(tmp_path.glob("out*"))
