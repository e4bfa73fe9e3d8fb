"""Local edits (`pix2video.pipelines.masks`): mask maths, the blended latent loop, and `edit --mask`.

Pipeline runs use the tiny SD2-depth model on synthetic frames; job and CLI runs use
examples/cockatoo.mp4 at 128x72 with PNG outputs, so comparisons with the source are exact.
The text-prompted path runs a tiny random CLIPSeg built in code.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from support import COCKATOO, cockatoo_settings, png_frames

from pix2video import EditSettings, edit_clip
from pix2video.cli import main
from pix2video.core.inversion import source_trajectory
from pix2video.errors import EditCancelled
from pix2video.media import fit_size, read_clip, resize_frames
from pix2video.pipelines.masks import binarize, composite, latent_mask, mask_alpha

FRAMES, STEPS, SIZE = 3, 2, "128"


# ------------------------------------------------------------------------------ helpers
def distance_to(mask: np.ndarray) -> np.ndarray:
    """Brute-force Euclidean distance of every pixel to the nearest mask pixel."""
    ys, xs = np.nonzero(mask)
    yy, xx = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    d2 = (yy[..., None] - ys) ** 2 + (xx[..., None] - xs) ** 2
    return np.sqrt(d2.min(axis=-1))


def blob(height: int, width: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def grey_pngs(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(f)) for f in sorted(folder.glob("*.png"))]


def source_frames(n: int = FRAMES) -> list[np.ndarray]:
    """The cockatoo frames at the processing size, resized exactly as the job resizes them."""
    clip = read_clip(COCKATOO, max_frames=n)
    w, h = fit_size(clip.frames[0].shape[1], clip.frames[0].shape[0], int(SIZE))
    return resize_frames(clip.frames, (w, h))


def write_masks(folder: Path, masks: list[np.ndarray]) -> Path:
    folder.mkdir()
    for i, m in enumerate(masks):
        Image.fromarray((m * 255).astype(np.uint8)).save(folder / f"m{i:03d}.png")
    return folder


# ------------------------------------------------------------------------------ mask maths
@pytest.mark.parametrize(("dilate", "feather"), [(0, 0), (3, 0), (0, 5), (4, 6)])
def test_alpha_is_one_near_the_mask_and_exactly_zero_beyond_dilate_plus_feather(dilate, feather):
    mask = blob(40, 56, 18, 20, 6) | blob(40, 56, 30, 44, 3)
    alpha = mask_alpha(mask, dilate, feather)
    distance = distance_to(mask)
    assert alpha.dtype == np.float32 and alpha.shape == mask.shape
    assert np.all(alpha[distance <= dilate] == 1.0)
    assert np.all(alpha[distance >= dilate + feather + 1e-3] == 0.0)
    ramp = (distance > dilate + 0.5) & (distance < dilate + feather - 0.5)
    if feather:
        assert np.all((alpha[ramp] > 0) & (alpha[ramp] < 1))  # soft, not a hard edge
    else:
        assert not ramp.any()


def test_empty_and_full_masks():
    assert not mask_alpha(np.zeros((8, 8), bool), 3, 3).any()
    assert np.all(mask_alpha(np.ones((8, 8), bool), 3, 3) == 1.0)


def test_latent_mask_covers_every_pixel_the_alpha_touches():
    alpha = mask_alpha(blob(64, 64, 20, 40, 5), 2, 3)
    cells = latent_mask(alpha, 8)
    assert cells.shape == (8, 8)
    covered = np.repeat(np.repeat(cells, 8, axis=0), 8, axis=1)
    assert np.all(covered[alpha > 0]) and not covered.all()


def test_composite_is_exact_where_alpha_is_zero_or_one():
    rng = np.random.default_rng(0)
    source, edited = (rng.integers(0, 256, (16, 24, 3), dtype=np.uint8) for _ in range(2))
    alpha = np.zeros((16, 24), np.float32)
    alpha[:, 8:16] = 0.5
    alpha[:, 16:] = 1.0
    out = composite(source, edited, alpha)
    assert np.array_equal(out[:, :8], source[:, :8])
    assert np.array_equal(out[:, 16:], edited[:, 16:])
    middle = (source[:, 8:16].astype(float) + edited[:, 8:16]) / 2
    assert np.abs(out[:, 8:16] - middle).max() <= 0.5


def test_binarize_resizes_and_thresholds_white_as_edit():
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, 20:] = 255
    mask = binarize(image, (8, 4))
    assert mask.shape == (4, 8) and mask[:, 4:].all() and not mask[:, :4].any()


def test_source_trajectory_orders_levels_as_editing_visits_them():
    levels = [torch.full((1, 4, 2, 2), float(i)) for i in range(5)]  # clean, 4 inversion steps
    path = source_trajectory(levels)
    assert path.shape == (1, 4, 4, 2, 2)
    # step s of 4 lands on the level inversion reached after step 2 - s; the last on the clean one
    assert [float(path[0, s, 0, 0, 0]) for s in range(4)] == [3.0, 2.0, 1.0, 0.0]


# ------------------------------------------------------------------------------ the pipeline
def synthetic_frames(n: int = 3, size: int = 64) -> list[np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size]
    return [
        np.stack([(xx * 4 + 5 * i) % 256, (yy * 4) % 256, (xx + yy + 9 * i) % 256], -1).astype(
            np.uint8
        )
        for i in range(n)
    ]


def run_pipe(pipe, frames, masks=None, attend="anchor+previous", **kwargs):
    depth = torch.stack([torch.linspace(1, 2, 64)[None].expand(64, 64) + i for i in range(3)])
    return pipe(
        frames,
        "a red sports car",
        "stripes",
        depth_maps=depth,
        num_inference_steps=3,
        attend=attend,
        masks=masks,
        **kwargs,
    )


@pytest.mark.bitwise
def test_all_white_mask_is_exactly_the_unmasked_edit(tiny_pipe):
    frames = synthetic_frames()
    plain = run_pipe(tiny_pipe, frames)
    white = run_pipe(tiny_pipe, frames, masks=[np.ones((64, 64), np.float32)] * 3)
    assert torch.equal(plain.final_latents, white.final_latents)
    assert all(np.array_equal(a, b) for a, b in zip(plain.frames, white.frames, strict=True))
    assert white.unet_evaluations == plain.unet_evaluations


@pytest.mark.bitwise
def test_all_black_mask_gives_the_source_frames_and_latents(tiny_pipe):
    frames = synthetic_frames()
    black = run_pipe(tiny_pipe, frames, masks=[np.zeros((64, 64), np.float32)] * 3)
    assert all(np.array_equal(a, b) for a, b in zip(black.frames, frames, strict=True))
    assert torch.equal(black.final_latents, tiny_pipe.encode_frames(frames).cpu())


@pytest.mark.parametrize("attend", ["anchor+previous", "anchor", "previous", "none"])
def test_partial_mask_edits_inside_and_keeps_the_rest_in_every_attend_mode(tiny_pipe, attend):
    frames = synthetic_frames()
    alphas = [mask_alpha(blob(64, 64, 24 + 4 * i, 30, 9), 2, 4) for i in range(3)]
    out = run_pipe(tiny_pipe, frames, masks=alphas, attend=attend)
    for source, edited, alpha in zip(frames, out.frames, alphas, strict=True):
        assert np.array_equal(edited[alpha == 0], source[alpha == 0])
        inside = alpha == 1
        assert np.abs(edited[inside].astype(int) - source[inside]).mean() > 5  # edited there


def test_masks_with_reused_inversions_or_wrong_shapes_are_refused(tiny_pipe):
    from pix2video.errors import InputError

    frames = synthetic_frames()
    with pytest.raises(InputError, match="Expected 3 masks of 64x64"):
        run_pipe(tiny_pipe, frames, masks=[np.ones((32, 64))] * 3)
    with pytest.raises(InputError, match="do not pass inverted_latents with masks"):
        run_pipe(
            tiny_pipe,
            frames,
            masks=[np.ones((64, 64))] * 3,
            inverted_latents=torch.zeros(3, 4, 8, 8),
        )


# ------------------------------------------------------------------------------ job and CLI
def settings(tmp_path: Path, **changes) -> EditSettings:
    """The cockatoo at `SIZE`, `FRAMES` frames, `STEPS` steps, with a narrow mask edge."""
    base = cockatoo_settings(
        tmp_path, size=SIZE, max_frames=FRAMES, steps=STEPS, mask_dilate=3, mask_feather=4
    )
    return base.replace(**changes)


def moving_masks(n: int = FRAMES) -> list[np.ndarray]:
    return [blob(72, 128, 36, 50 + 6 * i, 12) for i in range(n)]


def test_mask_folder_keeps_every_pixel_beyond_dilate_plus_feather(tmp_path, pipelines):
    masks = moving_masks()
    folder = write_masks(tmp_path / "masks", masks)
    s = settings(tmp_path, mask=folder, save_masks=tmp_path / "used")
    result = edit_clip(s, pipelines=pipelines)
    assert result.masked and 0 < result.mask_coverage < 1
    sources, edited = source_frames(), png_frames(tmp_path / "out")
    used = grey_pngs(tmp_path / "used")
    assert len(used) == FRAMES and len(edited) == FRAMES
    for source, frame, mask, saved in zip(sources, edited, masks, used, strict=True):
        far = distance_to(mask) >= 3 + 4
        assert far.any() and np.array_equal(frame[far], source[far])
        assert np.array_equal(saved > 0, ~far | (distance_to(mask) < 7))
        assert np.abs(frame[mask].astype(int) - source[mask]).mean() > 5


@pytest.mark.bitwise
def test_all_white_and_all_black_mask_files(tmp_path, pipelines):
    plain = settings(tmp_path, output=tmp_path / "plain")
    edit_clip(plain, pipelines=pipelines)
    white = Image.fromarray(np.full((30, 50), 255, np.uint8))
    white.save(tmp_path / "white.png")
    Image.fromarray(np.zeros((30, 50), np.uint8)).save(tmp_path / "black.png")
    edit_clip(
        settings(tmp_path, output=tmp_path / "w", mask=tmp_path / "white.png"), pipelines=pipelines
    )
    edit_clip(
        settings(tmp_path, output=tmp_path / "b", mask=tmp_path / "black.png"), pipelines=pipelines
    )
    expected = png_frames(tmp_path / "plain")
    assert all(
        np.array_equal(a, b) for a, b in zip(png_frames(tmp_path / "w"), expected, strict=True)
    )
    sources = source_frames()
    assert all(
        np.array_equal(a, b) for a, b in zip(png_frames(tmp_path / "b"), sources, strict=True)
    )


@pytest.mark.bitwise
def test_mask_video_is_read_in_step_with_the_frames(tmp_path, pipelines):
    import av

    masks = moving_masks()
    path = tmp_path / "masks.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=30)
        stream.width, stream.height, stream.pix_fmt = 128, 72, "gray"
        for m in masks:
            gray = (m * 255).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(gray, format="gray")))
        container.mux(stream.encode())
    edit_clip(settings(tmp_path, mask=path, output=tmp_path / "v"), pipelines=pipelines)
    write_masks(tmp_path / "folder", masks)
    edit_clip(
        settings(tmp_path, mask=tmp_path / "folder", output=tmp_path / "f"), pipelines=pipelines
    )
    assert all(
        np.array_equal(a, b)
        for a, b in zip(png_frames(tmp_path / "v"), png_frames(tmp_path / "f"), strict=True)
    )


@pytest.mark.bitwise
def test_masked_edit_resumes_after_a_cancel_with_the_same_result(tmp_path, pipelines):
    folder = write_masks(tmp_path / "masks", moving_masks())
    reference = settings(tmp_path, mask=folder, steps=4, output=tmp_path / "ref", no_cache=True)
    edit_clip(reference, pipelines=pipelines)
    s = settings(tmp_path, mask=folder, steps=4, output=tmp_path / "out", checkpoint_interval=0.0)
    cancel = threading.Event()

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "editing" and done == 2 * FRAMES:
            cancel.set()

    with pytest.raises(EditCancelled):
        edit_clip(s, progress=progress, cancel=cancel, pipelines=pipelines)
    resumed = edit_clip(s, pipelines=pipelines)
    assert resumed.editing == "resumed" and resumed.unet_evaluations_inversion == 0
    assert all(
        np.array_equal(a, b)
        for a, b in zip(png_frames(tmp_path / "out"), png_frames(tmp_path / "ref"), strict=True)
    )
    # a new mask is a new edit, never the cached one
    other = write_masks(tmp_path / "other", [blob(72, 128, 20, 20, 8)] * FRAMES)
    again = edit_clip(s.replace(mask=other, output=tmp_path / "o"), pipelines=pipelines)
    assert again.editing == "computed" and again.inversion_cached == FRAMES


def test_mask_prompt_segments_deterministically_and_keeps_the_rest(
    tmp_path, pipelines, tiny_clipseg
):
    s = settings(
        tmp_path,
        mask_prompt="the cockatoo",
        mask_model=str(tiny_clipseg),
        mask_threshold=0.9,  # the random model's probabilities are noise: keep the top 10%
        mask_dilate=0,
        mask_feather=1,
        save_masks=tmp_path / "used",
        no_cache=True,
    )
    edit_clip(s, pipelines=pipelines)
    edit_clip(
        s.replace(output=tmp_path / "again", save_masks=tmp_path / "used2"), pipelines=pipelines
    )
    used, used2 = grey_pngs(tmp_path / "used"), grey_pngs(tmp_path / "used2")
    assert all(np.array_equal(a, b) for a, b in zip(used, used2, strict=True))
    assert any(0 < (m > 0).mean() < 1 for m in used)
    for source, frame, alpha in zip(
        source_frames(), png_frames(tmp_path / "out"), used, strict=True
    ):
        assert np.array_equal(frame[alpha == 0], source[alpha == 0])


def invoke(args, code: int):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result.output


def cli_args(tmp_path: Path, *extra) -> list:
    return [
        "edit", COCKATOO, "-p", "a crystal cockatoo", "--source-prompt", "a cockatoo",
        "--model", "tiny", "--size", SIZE, "--max-frames", FRAMES, "--steps", STEPS,
        "-o", tmp_path / "out.mp4", "--cache-dir", tmp_path / "cache", *extra,
    ]  # fmt: skip


def test_cli_local_edit_with_mask_prompt(tmp_path, tiny_clipseg):
    output = invoke(
        cli_args(tmp_path, "--mask-prompt", "the bird", "--mask-model", tiny_clipseg), 0
    )
    assert "Wrote" in output and (tmp_path / "out.mp4").exists()
    assert "Local edit: " in output and "every other pixel is the source's" in output


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("short-folder", "has 2 images but the selection has 3 frames"),
        ("long-folder", "has 4 images but the selection has 3 frames"),
        ("unreadable", "cannot be read"),
        ("missing", "does not exist"),
        ("offline-model", "not available offline"),
        ("both", "Give --mask or --mask-prompt, not both"),
        ("save-without-mask", "--save-masks needs a mask"),
    ],
)
def test_mask_errors_are_one_sentence_and_nothing_is_written(tmp_path, case, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    extra: list = []
    if case in ("short-folder", "long-folder"):
        count = 2 if case == "short-folder" else 4
        extra = ["--mask", write_masks(tmp_path / "m", moving_masks(count))]
    elif case == "unreadable":
        (tmp_path / "bad.png").write_bytes(b"not an image")
        extra = ["--mask", tmp_path / "bad.png"]
    elif case == "missing":
        extra = ["--mask", tmp_path / "nothing"]
    elif case == "offline-model":
        extra = ["--mask-prompt", "the bird", "--mask-model", "someone/no-such-clipseg"]
    elif case == "both":
        extra = ["--mask", tmp_path, "--mask-prompt", "the bird"]
    elif case == "save-without-mask":
        extra = ["--save-masks", tmp_path / "used"]
    output = invoke(cli_args(tmp_path, *extra), 2)
    assert message in output and "Traceback" not in output
    assert len(output.strip().splitlines()) == 1, output
    assert not (tmp_path / "out.mp4").exists()


def test_eval_with_mask_scores_inside_and_outside(tmp_path, pipelines, shared_dir):
    import json

    folder = write_masks(tmp_path / "masks", moving_masks())
    edit_clip(settings(tmp_path, mask=folder, save_masks=tmp_path / "used"), pipelines=pipelines)
    report = tmp_path / "m.json"
    output = invoke(
        [
            "eval", tmp_path / "out", "--source", COCKATOO, "--max-frames", FRAMES,
            "-p", "a crystal cockatoo", "--clip-model", shared_dir / "models" / "tiny-clip",
            "--mask", tmp_path / "used", "--json", report,
        ],
        0,
    )  # fmt: skip
    assert "Inside / outside the mask" in output
    regions = json.loads(report.read_text())["regions"]
    assert regions["source_mse_outside"] == 0.0  # the background is untouched, bit for bit
    assert regions["source_mse_inside"] > 1e-3
    assert regions["pixel_mse_outside"] >= 0 and regions["pixel_mse_inside"] > 0
    assert 0 < regions["mask_fraction"] < 1
    assert all(-1 <= regions[f"clip_text_{k}"] <= 1 for k in ("inside", "outside"))
    wrong = write_masks(tmp_path / "two", moving_masks(2))
    output = invoke(
        [
            "eval", tmp_path / "out", "--source", COCKATOO, "--max-frames", FRAMES,
            "-p", "x", "--clip-model", shared_dir / "models" / "tiny-clip", "--mask", wrong,
        ],
        2,
    )  # fmt: skip
    assert "has 2 images but the edited clip has 3 frames" in output


def test_keep_source_size_composites_over_the_full_size_source(tmp_path, pipelines):
    masks = moving_masks()
    folder = write_masks(tmp_path / "masks", masks)
    edit_clip(settings(tmp_path, mask=folder, keep_source_size=True), pipelines=pipelines)
    full = read_clip(COCKATOO, max_frames=FRAMES).frames
    for source, frame, mask in zip(full, png_frames(tmp_path / "out"), masks, strict=True):
        assert frame.shape == source.shape == (720, 1280, 3)
        # the alpha is scaled up 10x with bilinear interpolation, which mixes in the diagonal
        # neighbours of a pixel: a margin of two processing pixels
        far = np.kron(distance_to(mask) >= 3 + 4 + 2, np.ones((10, 10), bool))
        assert np.array_equal(frame[far], source[far])
        assert not np.array_equal(frame[~far], source[~far])


def test_batch_eval_of_a_local_edit_scores_inside_and_outside(tmp_path, pipelines, shared_dir):
    import json

    from pix2video.batch.jobs import read_batch
    from pix2video.batch.runner import Evaluation, LocalBackend, run_batch

    write_masks(tmp_path / "masks", moving_masks())
    jobs = tmp_path / "jobs.jsonl"
    row = {
        "input": str(COCKATOO), "prompt": "a crystal cockatoo", "source_prompt": "a cockatoo",
        "model": "tiny", "size": SIZE, "max_frames": FRAMES, "steps": STEPS, "mask": "masks",
        "output": "local", "cache_dir": "cache",
    }  # fmt: skip
    jobs.write_text(json.dumps(row) + "\n")
    evaluation = Evaluation(clip_model=str(shared_dir / "models" / "tiny-clip"))
    outcome = run_batch(
        read_batch(jobs, tmp_path / "out"), LocalBackend(pipelines), evaluation=evaluation
    )
    (record,) = outcome.records
    assert record["status"] == "ok", record
    regions = record["metrics"]["regions"]
    assert regions["source_mse_outside"] == 0.0 and regions["source_mse_inside"] > 1e-3
    assert not list(tmp_path.glob(".pix2video-masks-*"))
