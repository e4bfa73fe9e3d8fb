"""Tests of pix2video.evaluation (flow, CLIP scorer, report, metrics) with known answers: synthetic flows/videos and a tiny random CLIP."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch
from support import TINY_CLIP

from pix2video.errors import InputError, ModelNotAvailableError
from pix2video.evaluation.clip_score import ClipScorer
from pix2video.evaluation.flow import consistency_mask, estimate_flow, pixel_mse, warp
from pix2video.evaluation.metrics import evaluate
from pix2video.evaluation.report import EvalReport
from pix2video.models import DEFAULT_CLIP_MODEL

needs_tiny_clip = pytest.mark.skipif(
    not TINY_CLIP.is_dir(), reason=f"tiny random CLIP not found at {TINY_CLIP}"
)

SIZE = 128


# --------------------------------------------------------------------------------------------
# Synthetic videos
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    """256x256x3 float32 smooth random texture (blurred noise) in [0.15, 0.85]."""
    rng = np.random.default_rng(0)
    big = cv2.GaussianBlur(rng.random((256, 256, 3)).astype(np.float32), (0, 0), 3)
    big = (big - big.min()) / (big.max() - big.min())
    return 0.15 + 0.7 * big


def translated_video(texture: np.ndarray, shift: float, n: int = 4) -> list[np.ndarray]:
    """Frames whose content moves right by `shift` px per frame (a 128x128 window, uint8).

    frame[t+1](x, y) = frame[t](x - shift, y): the left strip of width `shift` is new content.
    """
    frames = []
    for t in range(n):
        m = np.float32([[1, 0, t * shift], [0, 1, 0]])
        moved = cv2.warpAffine(texture, m, texture.shape[1::-1], flags=cv2.INTER_CUBIC)
        crop = moved[64 : 64 + SIZE, 64 : 64 + SIZE]
        frames.append(np.clip(np.rint(crop * 255), 0, 255).astype(np.uint8))
    return frames


def as_float(frame: np.ndarray) -> np.ndarray:
    return frame.astype(np.float64) / 255.0


def unwarped_mse(frames: list[np.ndarray]) -> list[float]:
    return [
        float(np.mean((as_float(a) - as_float(b)) ** 2))
        for a, b in zip(frames[:-1], frames[1:], strict=True)
    ]


# --------------------------------------------------------------------------------------------
# Flow, warp, mask
# --------------------------------------------------------------------------------------------


def test_warp_is_backward_with_known_integer_flow():
    rng = np.random.default_rng(1)
    image = rng.random((20, 30, 3)).astype(np.float32)
    flow = np.zeros((20, 30, 2), np.float32)
    flow[..., 0] = 2.0  # out(x, y) = image(x + 2, y)
    flow[..., 1] = -1.0  # ... and y - 1
    out = warp(image, flow)
    assert out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_allclose(out[1:, :-2], image[:-1, 2:], atol=1e-6)
    # border replicate: the last two columns repeat the last column of the source
    np.testing.assert_allclose(out[1:, -1], image[:-1, -1], atol=1e-6)


@pytest.mark.parametrize("shift", [3.0, 1.5])
def test_estimate_flow_recovers_translation_and_direction(texture, shift):
    frames = translated_video(texture, shift, n=2)
    fw = estimate_flow(frames[0], frames[1])
    bw = estimate_flow(frames[1], frames[0])
    assert fw.shape == (SIZE, SIZE, 2) and fw.dtype == np.float32
    # src(p) ~ dst(p + flow(p)): content moving right by `shift` -> forward flow (+shift, 0)
    assert abs(np.median(fw[..., 0]) - shift) < 0.25
    assert abs(np.median(fw[..., 1])) < 0.25
    assert abs(np.median(bw[..., 0]) + shift) < 0.25
    assert abs(np.median(bw[..., 1])) < 0.25

    # warping frame 0 with the backward flow (1 -> 0) lands on frame 1; the other flow does not
    inner = (slice(8, -8), slice(8, -8))
    right = warp(as_float(frames[0]).astype(np.float32), bw)
    wrong = warp(as_float(frames[0]).astype(np.float32), fw)
    err_right = np.mean((right - as_float(frames[1]))[inner] ** 2)
    err_wrong = np.mean((wrong - as_float(frames[1]))[inner] ** 2)
    assert err_right < 1e-4
    assert err_wrong > 20 * err_right


def test_consistency_mask_synthetic_flows():
    h, w = 16, 24
    bw = np.zeros((h, w, 2), np.float32)
    bw[..., 0] = -3.0
    fw = np.zeros((h, w, 2), np.float32)
    fw[..., 0] = 3.0
    mask = consistency_mask(bw, fw)
    assert mask.shape == (h, w) and mask.dtype == bool
    assert not mask[:, :3].any()  # source location x - 3 < 0: outside frame t
    assert mask[:, 3:].all()
    # a forward flow that does not undo the backward one fails the check everywhere
    assert not consistency_mask(bw, np.zeros_like(fw)).any()
    # zero motion is consistent everywhere
    assert consistency_mask(np.zeros_like(bw), np.zeros_like(fw)).all()


@pytest.mark.parametrize("shift", [3.0, 1.5])
def test_mask_excludes_revealed_strip(texture, shift):
    frames = translated_video(texture, shift, n=2)
    bw = estimate_flow(frames[1], frames[0])
    fw = estimate_flow(frames[0], frames[1])
    mask = consistency_mask(bw, fw)
    strip = int(math.ceil(shift)) - 1  # columns x < shift are new content in frame 1
    assert not mask[:, : strip + 1].any()
    assert mask[:, 8:].mean() > 0.95
    _, _, valid = pixel_mse(frames, frames)
    assert 0.9 < valid[0] < 1.0


# --------------------------------------------------------------------------------------------
# PixelMSE
# --------------------------------------------------------------------------------------------


def test_pixel_mse_static_video_is_zero(texture):
    frame = translated_video(texture, 0.0, n=1)[0]
    video = [frame.copy() for _ in range(4)]
    plain, masked, valid = pixel_mse(video, video)
    assert len(plain) == len(masked) == len(valid) == 3
    assert max(plain) < 1e-8 and max(masked) < 1e-8
    assert min(valid) == 1.0


@pytest.mark.parametrize("shift", [3.0, 1.5])
def test_pixel_mse_translated_video_against_itself(texture, shift):
    video = translated_video(texture, shift, n=4)
    plain, masked, valid = pixel_mse(video, video)
    unwarped = unwarped_mse(video)
    assert len(plain) == 3
    assert max(masked) < 1e-4
    assert max(plain) < 1e-3  # only the revealed strip (replicated border) contributes
    assert min(unwarped) > 10 * max(plain)
    assert min(unwarped) > 100 * max(masked)
    assert all(0.9 < v < 1.0 for v in valid)


def test_pixel_mse_rises_with_flicker(texture):
    source = translated_video(texture, 2.0, n=5)
    offsets = np.random.default_rng(3).uniform(-1.0, 1.0, size=len(source))
    means, masked_means = [], []
    for amplitude in (0.0, 0.02, 0.05, 0.1):
        edited = [
            np.clip(as_float(f) + amplitude * o, 0, 1).astype(np.float32)
            for f, o in zip(source, offsets, strict=True)
        ]
        plain, masked, _ = pixel_mse(edited, source)
        means.append(np.mean(plain))
        masked_means.append(np.mean(masked))
    assert all(a < b for a, b in zip(means[:-1], means[1:], strict=True)), means
    assert all(a < b for a, b in zip(masked_means[:-1], masked_means[1:], strict=True))
    # a pure brightness offset d gives masked MSE d^2 on every consistent pixel
    expected = np.mean(np.diff(offsets) ** 2) * 0.1**2
    assert masked_means[-1] == pytest.approx(expected, rel=0.1)


def test_pixel_mse_resizes_source_to_edited_size(texture):
    edited = translated_video(texture, 2.0, n=3)
    source = [cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in edited]
    plain, masked, valid = pixel_mse(edited, source)
    assert len(plain) == 2 and all(math.isfinite(v) for v in plain + masked + valid)
    assert max(masked) < 0.1 * min(unwarped_mse(edited))


def test_mismatched_or_too_few_frames_raise_input_error(texture):
    video = translated_video(texture, 1.0, n=3)
    with pytest.raises(InputError, match="3 frames but the source video has 2"):
        pixel_mse(video, video[:2])
    with pytest.raises(InputError, match="at least 2 frames"):
        pixel_mse(video[:1], video[:1])
    with pytest.raises(InputError, match="HxWx3"):
        pixel_mse([f[..., 0] for f in video], video)
    # frame checks come before loading a model: no ModelNotAvailableError here
    with pytest.raises(InputError):
        evaluate(video, video[:2], "a cat", clip_model="/nonexistent/clip")


# --------------------------------------------------------------------------------------------
# CLIP
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scorer() -> ClipScorer:
    if not TINY_CLIP.is_dir():
        pytest.skip(f"tiny random CLIP not found at {TINY_CLIP}")
    return ClipScorer(str(TINY_CLIP))


def _projected(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@needs_tiny_clip
def test_clip_scores_match_direct_computation(scorer, texture):
    from transformers import CLIPModel, CLIPProcessor

    frames = translated_video(texture, 5.0, n=3)
    prompt = "a watercolor painting of a fox"
    model = CLIPModel.from_pretrained(str(TINY_CLIP)).eval()
    processor = CLIPProcessor.from_pretrained(str(TINY_CLIP))
    with torch.inference_mode():
        pixels = processor(images=frames, return_tensors="pt")["pixel_values"]
        img = _projected(model.get_image_features(pixel_values=pixels))
        tokens = processor.tokenizer([prompt], padding=True, return_tensors="pt")
        txt = _projected(model.get_text_features(**tokens))[0]
    cos = torch.nn.functional.cosine_similarity
    want_text = [float(cos(img[i], txt, dim=0)) for i in range(3)]
    want_image = [float(cos(img[i], img[i + 1], dim=0)) for i in range(2)]

    emb = scorer.image_embeddings(frames)
    assert emb.shape == (3, model.config.projection_dim)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    assert scorer.text_embedding(prompt).shape == (model.config.projection_dim,)
    np.testing.assert_allclose(scorer.clip_text(frames, prompt), want_text, atol=1e-5)
    np.testing.assert_allclose(scorer.clip_image(frames), want_image, atol=1e-5)


@needs_tiny_clip
def test_batching_does_not_change_embeddings(scorer, texture):
    frames = translated_video(texture, 4.0, n=10)  # > one batch of 8
    together = scorer.image_embeddings(frames)
    one_by_one = torch.cat([scorer.image_embeddings([f]) for f in frames])
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=0)


@needs_tiny_clip
def test_prompt_too_long_raises(scorer, texture):
    with pytest.raises(InputError, match=r"too long for CLIP \(\d+ tokens > 77\)"):
        scorer.text_embedding("a photo of a cat " * 30)


@needs_tiny_clip
def test_evaluate_video_against_itself(scorer, texture):
    static = [translated_video(texture, 0.0, n=1)[0]] * 4
    report = evaluate(static, static, "a cat", scorer=scorer)
    assert report.num_frames == 4 and report.clip_model == str(TINY_CLIP)
    assert report.clip_image == pytest.approx(1.0, abs=1e-5)
    assert all(v == pytest.approx(1.0, abs=1e-5) for v in report.clip_image_per_pair)
    assert report.pixel_mse < 1e-8 and report.pixel_mse_masked < 1e-8
    # identical frames score alike; a tolerance, not rounding to 6 decimals, which could put
    # two values 1e-9 apart (rows of one batch on another CPU's kernels) in different bins
    assert np.ptp(report.clip_text_per_frame) <= 1e-6

    moving = translated_video(texture, 3.0, n=4)
    report = evaluate(moving, moving, "a cat", scorer=scorer)
    assert len(report.clip_text_per_frame) == 4
    assert len(report.clip_image_per_pair) == 3 == len(report.pixel_mse_per_pair)
    assert report.pixel_mse_masked < 1e-4 and report.pixel_mse < 1e-3
    assert report.clip_text == pytest.approx(np.mean(report.clip_text_per_frame))


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _report() -> EvalReport:
    return EvalReport(
        clip_text=0.28125,
        clip_image=0.96875,
        pixel_mse=0.0123,
        pixel_mse_masked=0.00456,
        clip_text_per_frame=[0.25, 0.3125, 0.28125],
        clip_image_per_pair=[0.96, 0.9775],
        pixel_mse_per_pair=[0.01, 0.0146],
        pixel_mse_masked_per_pair=[0.004, 0.00512],
        valid_fraction_per_pair=[0.9, 0.95],
        num_frames=3,
        prompt="a fox | in snow",
        clip_model="tiny-clip",
    )


def test_report_json_round_trip(tmp_path):
    report = _report()
    path = report.save_json(tmp_path / "out" / "metrics.json")
    data = json.loads(path.read_text())
    for key in (
        "clip_text",
        "clip_image",
        "pixel_mse",
        "pixel_mse_masked",
        "clip_text_per_frame",
        "clip_image_per_pair",
        "pixel_mse_per_pair",
        "pixel_mse_masked_per_pair",
        "valid_fraction_per_pair",
        "num_frames",
        "prompt",
        "clip_model",
    ):
        assert key in data
    for key in ("clip_text", "clip_image", "pixel_mse", "pixel_mse_masked"):
        assert math.isfinite(data[key])
    assert len(data["clip_text_per_frame"]) == 3 and len(data["pixel_mse_per_pair"]) == 2
    assert EvalReport.from_dict(data) == report


def test_report_json_nan_becomes_null(tmp_path):
    report = _report()
    report.pixel_mse_masked = float("nan")
    report.pixel_mse_masked_per_pair = [float("nan"), float("nan")]
    text = report.save_json(tmp_path / "m.json").read_text()
    data = json.loads(text)  # strict JSON: no NaN tokens
    assert "NaN" not in text and data["pixel_mse_masked"] is None
    assert "n/a" in report.to_markdown()


def test_report_markdown_and_plot(tmp_path):
    report = _report()
    md = report.save_markdown(tmp_path / "m.md").read_text()
    assert md == report.to_markdown()
    for number in ("0.2812", "0.9688", "0.0123", "0.00456", "0.925"):
        assert number in md
    assert "| Metric |" in md and "a fox \\| in snow" in md
    png = report.plot(tmp_path / "plots" / "m.png")
    data = png.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# Model availability
# --------------------------------------------------------------------------------------------


def test_default_clip_model_is_a_known_checkpoint():
    assert DEFAULT_CLIP_MODEL in {"openai/clip-vit-large-patch14", "openai/clip-vit-base-patch32"}


def test_missing_local_clip_folder(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        ClipScorer(str(tmp_path / "no-such-clip"))


def test_unknown_hub_clip_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="not available offline"):
        ClipScorer("nobody/no-such-clip")
