"""`benchmarks/gpu_check.py`, the one command for the first GPU, checked on the CPU: its
dry run writes every part's table (the cuda tests reported as skipped), whole; without a GPU
and without --dry-run it is one sentence; its GPU plan fits the 8 minutes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))

from gpu_check import BUDGET_S, Plan  # noqa: E402


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.integration
def test_dry_run_writes_every_part(tmp_path):
    out = tmp_path / "check.md"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# gpu_check: dry run on the CPU")
    # no GPU: every cuda test skips (7 in test_cuda.py, 2 in test_offload.py; its other 4 are
    # not marked cuda)
    assert "pytest -m cuda: 9 skipped, 4 deselected." in text
    assert "| test_nccl_exchange_equals_one_process | skipped |" in text
    assert "| N | s/frame | UNet calls | peak RSS | max gap to N=1 |" in text
    for n in ("| 1 |", "| 2 |", "| auto (1) |"):  # auto on a CPU is one frame per call
        assert n in text
    assert "## tiny at 64x64, float32, one frame" in text and "failed" not in text
    assert "## pix2video doctor" in text and "cuda" in text
    assert "Time per part: tests" in text
    assert text in run.stdout
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.integration
@pytest.mark.skipif(_has_cuda(), reason="this machine has a GPU")
def test_without_a_gpu_it_is_one_sentence(tmp_path):
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.md")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.strip() == (
        "Error: no CUDA GPU here; --dry-run checks the script on the CPU."
    )
    assert not list(tmp_path.iterdir())


def test_the_gpu_plan_fits_eight_minutes():
    plan = Plan.gpu()
    limits = plan.limits
    total = limits["tests"] + limits["batch"] * len(plan.batches) + limits["sdxl"]
    assert total + limits["doctor"] <= BUDGET_S == 8 * 60
    assert plan.batches == ["1", "2", "4", "8", "auto"] and plan.dtype == "float16"
