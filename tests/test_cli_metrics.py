"""`pix2video eval` and `pix2video ablate` end to end on real footage (the command line in
process, `support.run_cli`: its exit codes, output and files as a user's run gives them)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image
from support import G1, TINY_CLIP, run_cli

VARIANT_NAMES = [
    "per-frame (SDEdit-like)",
    "anchor only",
    "previous only",
    "anchor + random earlier",
    "anchor + previous, no latent update",
    "full (anchor + previous + latent update)",
]


@pytest.fixture(autouse=True)
def _need_data():
    for path in (G1, TINY_CLIP):
        if not path.exists():
            pytest.skip(f"test data {path} is absent (the shared folder ../shared)")


def test_eval_of_a_still_clip_against_itself(tmp_path):
    """Known answers: identical consecutive frames give CLIP-Image 1 and PixelMSE 0."""
    from pix2video.media import read_clip, write_video

    still = tmp_path / "still"
    write_video(still, [read_clip(G1, max_frames=1).frames[0]] * 5, fps=25)
    out = tmp_path / "m.json"
    proc = run_cli(
        "eval", still, "--source", still, "-p", "a person cycling",
        "--clip-model", TINY_CLIP, "--json", out, "--markdown", tmp_path / "m.md",
        "--plot", tmp_path / "m.png", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(out.read_text())
    assert metrics["clip_image"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["pixel_mse"] == pytest.approx(0.0, abs=1e-8)
    assert len(metrics["clip_text_per_frame"]) == 5 and len(metrics["pixel_mse_per_pair"]) == 4
    assert "CLIP-Text" in proc.stdout and "PixelMSE" in proc.stdout
    assert (tmp_path / "m.md").read_text().count("|") > 10
    assert Image.open(tmp_path / "m.png").size[0] > 100


def test_eval_of_a_moving_clip_against_itself(tmp_path):
    proc = run_cli(
        "eval", G1, "--source", G1, "-p", "x", "--clip-model", TINY_CLIP,
        "--json", tmp_path / "m.json", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert len(metrics["pixel_mse_per_pair"]) == 15
    # Warping with the clip's own flow explains most of the frame-to-frame change.
    from pix2video.media import read_clip

    frames = [f.astype(np.float64) / 255 for f in read_clip(G1).frames]
    unwarped = np.mean(
        [np.mean((a - b) ** 2) for a, b in zip(frames[:-1], frames[1:], strict=True)]
    )
    assert metrics["pixel_mse"] < 0.5 * unwarped
    assert metrics["pixel_mse_masked"] <= metrics["pixel_mse"]


def test_eval_rejects_clips_of_different_lengths(tmp_path):
    proc = run_cli(
        "eval", G1, "--source", G1, "--max-frames", "3", "-p", "x",
        "--clip-model", TINY_CLIP, "--json", tmp_path / "m.json", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "16 frames but the source video has 3" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "m.json").exists()


def test_ablate_writes_table_and_contact_sheet_for_all_variants(tmp_path):
    out = tmp_path / "ablation"
    proc = run_cli(
        "ablate", G1, "-p", "a robot cycling", "--source-prompt", "a person cycling",
        "--model", "tiny", "--size", "128", "--steps", "3", "--max-frames", "4",
        "--clip-model", TINY_CLIP, "-o", out, "--columns", "3", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((out / "ablation.json").read_text())
    assert [r["name"] for r in rows] == VARIANT_NAMES
    for row in rows:
        values = [row["metrics"][k] for k in ("clip_text", "clip_image", "pixel_mse")]
        assert all(math.isfinite(v) for v in values + [row["seconds_per_frame"]])
    table = (out / "ablation.md").read_text()
    assert all(f"| {name} |" in table for name in VARIANT_NAMES)
    sheet = np.asarray(Image.open(out / "contact_sheet.png").convert("RGB"))
    assert sheet.shape[0] > 7 * 96 and sheet.shape[1] > 3 * 128  # source + 6 rows, 3 columns
    by_name = {r["name"]: r["metrics"]["pixel_mse"] for r in rows}
    # No injection and no latent update is the SDEdit-like baseline: the most flicker.
    assert by_name["per-frame (SDEdit-like)"] > by_name["full (anchor + previous + latent update)"]


def test_ablate_rejects_an_unknown_variant_before_any_work(tmp_path):
    proc = run_cli(
        "ablate", G1, "-p", "x", "--model", "tiny", "--variants", "anchor only,bogus",
        "-o", tmp_path / "a", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2 and "bogus" in proc.stderr and "anchor only" in proc.stderr
    assert not (tmp_path / "a").exists()
