"""Evaluation metrics of an edited video: CLIP-Text, CLIP-Image and PixelMSE (Pix2Video, Sec. 5).

Definitions (frames are HxWx3 RGB, uint8, or float in [0, 1]):

- **CLIP-Text** (edit fidelity): mean over the edited frames of the cosine similarity between
  the frame's CLIP image embedding and the CLIP text embedding of the edit prompt.
- **CLIP-Image** (temporal coherence in feature space): mean over consecutive pairs (t, t+1)
  of edited frames of the cosine similarity of their CLIP image embeddings.
- **PixelMSE** (temporal coherence in pixel space): optical flow is estimated on the *source*
  video, edited frame t is warped to t+1 with it, and the mean squared error against edited
  frame t+1 is taken (pixel values in [0, 1]); mean over pairs.
- **PixelMSE, masked** (beyond the paper): the same error restricted to pixels of t+1 that
  pass a forward-backward flow consistency check (Sundaram et al., ECCV 2010) and whose
  source location lies inside frame t, so occluded / newly revealed pixels, which no warp can
  predict, do not count. It is reported beside the plain one, together with the fraction of
  pixels kept (`valid_fraction_per_pair`).

Flow and warp convention (the direction matters):

- `estimate_flow(src, dst)` returns `flow` with ``src(p) ~ dst(p + flow(p))``: for every
  pixel of `src`, where it is in `dst`. It is OpenCV's DIS optical flow (preset MEDIUM) on
  grayscale frames (Farneback for frames smaller than DIS' 12-pixel minimum); no weights.
- `warp(image, flow)` is a backward warp: ``out(p) = image(p + flow(p))`` (`cv2.remap`,
  bilinear, border replicate).
- To bring edited frame t onto frame t+1 we need, for every pixel of t+1, where it came from
  in t, i.e. the flow t+1 -> t: ``flow_bw = estimate_flow(source[t+1], source[t])`` and
  ``warped = warp(edited[t], flow_bw)``, compared with ``edited[t+1]``.
- The consistency check uses ``flow_fw = estimate_flow(source[t], source[t+1])`` sampled at
  ``p + flow_bw(p)``; see `consistency_mask`.

If the edited frames have another size than the source frames (e.g. the edit ran at 512x512),
the source frames are resized to the edited size before the flow is computed.

**Inside / outside a mask** (local edits, `eval --mask`): with a mask per frame (nonzero =
the region the edit may change, e.g. the masks `edit --save-masks` writes), the same scores
are also taken per region: CLIP-Text of the frame with the other region painted mid-grey,
PixelMSE over the region's pixels of frame t+1, and the **source MSE**, the mean squared
difference between edited and source frames (pixels in [0, 1]): 0 outside the mask when
the background is untouched.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..atomic import write_output
from ..errors import InputError
from ..models import DEFAULT_CLIP_MODEL, load_pretrained

# `DEFAULT_CLIP_MODEL` (defined in `models`, so the CLI can show it without importing torch):
# the CLIP used for CLIP-Text / CLIP-Image unless another is named.
#
# ViT-L/14 is the CLIP that most text-driven video-editing papers since Tune-A-Video and
# Pix2Video report their CLIP scores with, so numbers computed with it are comparable to the
# published ones. `openai/clip-vit-base-patch32` is several times faster (and smaller to
# download) but gives systematically different values; pass it explicitly for quick checks.

FLOW_METHOD = "opencv-dis-medium"
CLIP_MAX_TOKENS = 77
CLIP_BATCH_SIZE = 8
CONSISTENCY_ALPHA = 0.01
CONSISTENCY_BETA = 0.5
_DIS_MIN_SIZE = 12  # DIS refuses images whose width and height are both below 12 pixels


# --------------------------------------------------------------------------------------------
# Frame checks and conversions
# --------------------------------------------------------------------------------------------


def _check_frames(frames: list[np.ndarray], what: str) -> None:
    if len(frames) == 0:
        raise InputError(f"The {what} frames are empty; pass at least 2 frames.")
    shape = None
    for i, frame in enumerate(frames):
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise InputError(
                f"{what.capitalize()} frame {i} has shape {tuple(frame.shape)}; "
                "frames must be HxWx3 RGB arrays."
            )
        if frame.dtype != np.uint8 and not np.issubdtype(frame.dtype, np.floating):
            raise InputError(
                f"{what.capitalize()} frame {i} has dtype {frame.dtype}; frames must be uint8 "
                "(0-255) or float (0-1)."
            )
        if shape is None:
            shape = frame.shape
        elif frame.shape != shape:
            raise InputError(
                f"{what.capitalize()} frame {i} has shape {tuple(frame.shape)} but frame 0 has "
                f"{tuple(shape)}; all {what} frames must have the same size."
            )


def _check_pair(edited: list[np.ndarray], source: list[np.ndarray]) -> None:
    _check_frames(edited, "edited")
    _check_frames(source, "source")
    if len(edited) != len(source):
        raise InputError(
            f"The edited video has {len(edited)} frames but the source video has "
            f"{len(source)}; pass the same number of frames for both."
        )
    if len(edited) < 2:
        raise InputError(
            f"Only {len(edited)} frame given; the temporal metrics (CLIP-Image, PixelMSE) "
            "need at least 2 frames."
        )


def _to_float(frame: np.ndarray) -> np.ndarray:
    """HxWx3 float32 in [0, 1]."""
    frame = np.asarray(frame)
    if frame.dtype == np.uint8:
        return frame.astype(np.float32) / 255.0
    return frame.astype(np.float32)


def _to_uint8(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype == np.uint8:
        return frame
    return np.clip(np.rint(frame.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def _to_gray(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 2:
        return _to_uint8(frame)
    return cv2.cvtColor(np.ascontiguousarray(_to_uint8(frame)), cv2.COLOR_RGB2GRAY)


# --------------------------------------------------------------------------------------------
# Optical flow, warping, consistency
# --------------------------------------------------------------------------------------------


def estimate_flow(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Dense optical flow from `src` to `dst`: HxWx2 float32 (x, y) with ``src(p) ~ dst(p + flow(p))``.

    OpenCV DIS (preset MEDIUM) on grayscale; Farneback for frames under 12 pixels. Frames are
    HxWx3 RGB (uint8 or float in [0, 1]) or HxW grayscale, both of the same size.
    """
    a, b = _to_gray(src), _to_gray(dst)
    if a.shape != b.shape:
        raise InputError(
            f"Cannot estimate optical flow between frames of sizes {a.shape} and {b.shape}."
        )
    if max(a.shape) >= _DIS_MIN_SIZE:
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        flow = dis.calc(a, b, None)
    else:
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 1, 5, 3, 5, 1.1, 0)
    return np.ascontiguousarray(flow, dtype=np.float32)


def _sample_grid(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return xs + flow[..., 0], ys + flow[..., 1]


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Backward warp: ``out(p) = image(p + flow(p))``, bilinear, border replicate.

    With ``flow = estimate_flow(b, a)`` this brings `a` onto `b`. Returns the dtype of `image`
    (pass float frames to avoid rounding).
    """
    image = np.asarray(image)
    flow = np.asarray(flow, dtype=np.float32)
    if flow.ndim != 3 or flow.shape[2] != 2 or flow.shape[:2] != image.shape[:2]:
        raise InputError(
            f"The flow has shape {tuple(flow.shape)} but the image is "
            f"{tuple(image.shape[:2])}; the flow must be HxWx2 of the image size."
        )
    map_x, map_y = _sample_grid(flow)
    src = np.ascontiguousarray(image)
    if src.dtype == np.float64:
        src = src.astype(np.float32)
    out = cv2.remap(src, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if out.ndim == 2 and image.ndim == 3:  # cv2 drops a trailing channel axis of size 1
        out = out[..., None]
    return out


def consistency_mask(flow_bw: np.ndarray, flow_fw: np.ndarray) -> np.ndarray:
    """HxW bool: pixels p of frame t+1 whose flow passes the forward-backward check.

    `flow_bw` is the flow t+1 -> t (``estimate_flow(frame[t+1], frame[t])``), `flow_fw` the
    flow t -> t+1. With ``q = p + flow_bw(p)`` and ``f = flow_fw(q)`` (bilinear), p is kept when
    ``|flow_bw(p) + f|^2 < alpha (|flow_bw(p)|^2 + |f|^2) + beta`` (alpha=0.01, beta=0.5;
    Sundaram et al. 2010) and q lies inside frame t. Occluded and newly revealed pixels fail.
    """
    flow_bw = np.asarray(flow_bw, dtype=np.float32)
    flow_fw = np.asarray(flow_fw, dtype=np.float32)
    if flow_bw.shape != flow_fw.shape or flow_bw.ndim != 3 or flow_bw.shape[2] != 2:
        raise InputError(
            f"Flows of shapes {tuple(flow_bw.shape)} and {tuple(flow_fw.shape)} cannot be "
            "checked against each other; both must be HxWx2 of the same size."
        )
    h, w = flow_bw.shape[:2]
    fw_at_q = warp(flow_fw, flow_bw)
    diff = np.sum((flow_bw + fw_at_q) ** 2, axis=-1)
    mags = np.sum(flow_bw**2, axis=-1) + np.sum(fw_at_q**2, axis=-1)
    consistent = diff < CONSISTENCY_ALPHA * mags + CONSISTENCY_BETA
    qx, qy = _sample_grid(flow_bw)
    inside = (qx >= 0) & (qx <= w - 1) & (qy >= 0) & (qy <= h - 1)
    return consistent & inside


def pixel_mse(
    edited: list[np.ndarray], source: list[np.ndarray]
) -> tuple[list[float], list[float], list[float]]:
    """PixelMSE per consecutive pair: (plain, masked, valid_fraction), each N-1 values.

    Plain: ``mean((warp(edited[t], flow_bw) - edited[t+1])**2)`` over all pixels and channels,
    values in [0, 1], with ``flow_bw = estimate_flow(source[t+1], source[t])``. Masked: the
    same mean over the pixels kept by `consistency_mask` (NaN when none is kept).
    Source frames of another size than the edited ones are resized to the edited size first.
    """
    _check_pair(edited, source)
    return _summarise(_warp_errors(edited, source))


WarpErrors = list[tuple[np.ndarray, np.ndarray]]
"""Per pair (t, t+1): the HxW warped squared error and the flow consistency mask."""


def _warp_errors(edited: list[np.ndarray], source: list[np.ndarray]) -> WarpErrors:
    """The per-pixel PixelMSE of every pair, with the source's flow (resized to the edit)."""
    h, w = np.asarray(edited[0]).shape[:2]
    src = [np.asarray(s) for s in source]
    if src[0].shape[:2] != (h, w):
        src = [cv2.resize(_to_uint8(s), (w, h), interpolation=cv2.INTER_AREA) for s in src]
    gray = [_to_gray(s) for s in src]
    errors = []
    for t in range(len(edited) - 1):
        flow_bw = estimate_flow(gray[t + 1], gray[t])
        flow_fw = estimate_flow(gray[t], gray[t + 1])
        warped = warp(_to_float(edited[t]), flow_bw)
        err = np.mean((warped - _to_float(edited[t + 1])) ** 2, axis=-1)  # HxW, channel mean
        errors.append((err, consistency_mask(flow_bw, flow_fw)))
    return errors


def _summarise(errors: WarpErrors) -> tuple[list[float], list[float], list[float]]:
    """(plain, masked, valid_fraction) per pair, as `pixel_mse` returns them."""
    plain = [float(err.mean()) for err, _ in errors]
    valid = [float(mask.mean()) for _, mask in errors]
    masked = [float(err[m].mean()) if m.any() else float("nan") for err, m in errors]
    return plain, masked, valid


def region_scores(
    edited: list[np.ndarray],
    source: list[np.ndarray],
    regions: list[np.ndarray],
    scorer: ClipScorer,
    prompt: str,
    errors: WarpErrors | None = None,
) -> dict[str, float]:
    """CLIP-Text, PixelMSE and source MSE inside and outside `regions` (HxW bool per frame).

    The PixelMSE is `pixel_mse`'s per-pixel error restricted to each region (`errors`, when
    the caller has them already, saves computing the flows again). For the source MSE, source
    frames of another size are resized to the edited size the way `edit` resizes them
    (Lanczos), so it is exactly 0 outside an untouched background.
    """
    h, w = np.asarray(edited[0]).shape[:2]
    if len(regions) != len(edited) or any(np.shape(r) != (h, w) for r in regions):
        raise InputError(
            f"Expected {len(edited)} masks of {w}x{h} (one per edited frame); got "
            f"{len(regions)} of shapes {sorted({np.shape(r) for r in regions})}."
        )
    from ..media import resize_frames

    # resized as the edit resized them, so an untouched pixel compares equal
    src = resize_frames([_to_uint8(s) for s in source], (w, h))
    text = scorer.text_embedding(prompt)
    if errors is None:
        errors = _warp_errors(edited, source)
    scores = {"mask_fraction": _mean([float(r.mean()) for r in regions])}
    for name, keep in (("inside", regions), ("outside", [~r for r in regions])):
        grey = [
            np.where(k[..., None], _to_uint8(e), 127).astype(np.uint8)
            for e, k in zip(edited, keep, strict=True)
        ]
        scores[f"clip_text_{name}"] = _mean(
            [float(v) for v in scorer.image_embeddings(grey) @ text]
        )
        pair = [
            float(err[k].mean()) if k.any() else float("nan")
            for (err, _), k in zip(errors, keep[1:], strict=True)
        ]
        scores[f"pixel_mse_{name}"] = _mean(pair)
        diff = [
            float(np.mean((_to_float(e) - _to_float(s))[k] ** 2)) if k.any() else float("nan")
            for e, s, k in zip(edited, src, keep, strict=True)
        ]
        scores[f"source_mse_{name}"] = _mean(diff)
    return scores


# --------------------------------------------------------------------------------------------
# CLIP
# --------------------------------------------------------------------------------------------


def _features(out: Any, kind: str) -> torch.Tensor:
    """The projected embedding from `get_{image,text}_features`, whatever transformers returns.

    transformers 4.x returns the projected tensor; 5.x returns a `BaseModelOutputWithPooling`
    whose `pooler_output` holds the projected embedding.
    """
    if isinstance(out, torch.Tensor):
        return out
    for name in (f"{kind}_embeds", "pooler_output"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"Unexpected output of get_{kind}_features: {type(out).__name__}")


class ClipScorer:
    """CLIP image / text embeddings and the CLIP-Text / CLIP-Image scores."""

    def __init__(self, model: str = DEFAULT_CLIP_MODEL, device: str = "cpu"):
        from transformers import CLIPModel, CLIPProcessor

        self.model_name = str(model)
        self.device = torch.device(device)
        self.model = load_pretrained(CLIPModel.from_pretrained, self.model_name, what="CLIP model")
        self.processor = load_pretrained(
            CLIPProcessor.from_pretrained, self.model_name, what="CLIP processor"
        )
        self.model.to(self.device).eval()
        self.batch_size = CLIP_BATCH_SIZE

    def _max_tokens(self) -> int:
        limit = getattr(self.model.config.text_config, "max_position_embeddings", CLIP_MAX_TOKENS)
        return int(limit or CLIP_MAX_TOKENS)

    def image_embeddings(self, frames: list[np.ndarray]) -> torch.Tensor:
        """N x D float32 CPU tensor of L2-normalised image embeddings (batches of 8)."""
        _check_frames(frames, "input")
        chunks = []
        with torch.inference_mode():
            for i in range(0, len(frames), self.batch_size):
                batch = [_to_uint8(f) for f in frames[i : i + self.batch_size]]
                inputs = self.processor(images=batch, return_tensors="pt")
                pixels = inputs["pixel_values"].to(self.device, dtype=self.model.dtype)
                emb = _features(self.model.get_image_features(pixel_values=pixels), "image")
                chunks.append(emb.float().cpu())
        emb = torch.cat(chunks)
        return emb / emb.norm(dim=-1, keepdim=True)

    def text_embedding(self, prompt: str) -> torch.Tensor:
        """D float32 CPU tensor: the L2-normalised embedding of `prompt`.

        Raises `InputError` when the prompt has more tokens than CLIP's context (77, start and
        end tokens included) instead of silently truncating it.
        """
        limit = self._max_tokens()
        ids = self.processor.tokenizer(prompt, truncation=False, verbose=False)["input_ids"]
        if len(ids) > limit:
            raise InputError(
                f"The prompt is too long for CLIP ({len(ids)} tokens > {limit}); shorten it."
            )
        inputs = self.processor.tokenizer([prompt], padding=True, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.inference_mode():
            emb = _features(self.model.get_text_features(**inputs), "text")[0].float().cpu()
        return emb / emb.norm()

    def clip_text(self, frames: list[np.ndarray], prompt: str) -> list[float]:
        """Per frame: cosine(image embedding, prompt embedding)."""
        text = self.text_embedding(prompt)
        return [float(v) for v in self.image_embeddings(frames) @ text]

    def clip_image(self, frames: list[np.ndarray]) -> list[float]:
        """Per consecutive pair (t, t+1): cosine of the two image embeddings (N-1 values)."""
        emb = self.image_embeddings(frames)
        return [float(v) for v in (emb[:-1] * emb[1:]).sum(dim=-1)]


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(sum(finite) / len(finite)) if finite else float("nan")


def _fmt(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else "n/a"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


@dataclass
class EvalReport:
    """The metrics of one edited video; means plus the per-frame / per-pair values."""

    clip_text: float
    clip_image: float
    pixel_mse: float
    pixel_mse_masked: float
    clip_text_per_frame: list[float] = field(default_factory=list)
    clip_image_per_pair: list[float] = field(default_factory=list)
    pixel_mse_per_pair: list[float] = field(default_factory=list)
    pixel_mse_masked_per_pair: list[float] = field(default_factory=list)
    valid_fraction_per_pair: list[float] = field(default_factory=list)
    num_frames: int = 0
    prompt: str = ""
    clip_model: str = ""
    regions: dict[str, float] | None = None  # inside/outside a mask (`region_scores`), if given

    def to_dict(self) -> dict:
        """JSON-ready dict: the dataclass fields plus `valid_fraction` (mean) and `flow_method`.

        Non-finite values (a masked PixelMSE with no valid pixel) become `None`.
        """
        data = {k: _json_safe(v) for k, v in asdict(self).items()}
        if self.regions is not None:
            data["regions"] = {k: _json_safe(v) for k, v in self.regions.items()}
        data["valid_fraction"] = _json_safe(_mean(self.valid_fraction_per_pair))
        data["flow_method"] = FLOW_METHOD
        return data

    @classmethod
    def from_dict(cls, data: dict) -> EvalReport:
        """Inverse of `to_dict` (extra keys ignored, `None` read back as NaN)."""

        def back(v: Any) -> Any:
            if v is None:
                return float("nan")
            if isinstance(v, list):
                return [back(x) for x in v]
            return v

        values = {
            f.name: back(data[f.name])
            for f in fields(cls)
            if f.name in data and f.name != "regions"
        }
        if data.get("regions") is not None:
            values["regions"] = {k: back(v) for k, v in data["regions"].items()}
        return cls(**values)

    def to_markdown(self) -> str:
        rows = [
            ("CLIP-Text ↑", self.clip_text_per_frame, self.clip_text, "frame vs prompt"),
            ("CLIP-Image ↑", self.clip_image_per_pair, self.clip_image, "frame t vs t+1"),
            ("PixelMSE ↓", self.pixel_mse_per_pair, self.pixel_mse, "flow-warped t vs t+1"),
            (
                "PixelMSE masked ↓",
                self.pixel_mse_masked_per_pair,
                self.pixel_mse_masked,
                "consistent pixels only",
            ),
            (
                "valid fraction",
                self.valid_fraction_per_pair,
                _mean(self.valid_fraction_per_pair),
                "pixels kept by the mask",
            ),
        ]
        prompt = self.prompt.replace("|", "\\|").replace("\n", " ")
        lines = [
            f"**Prompt:** {prompt}  ",
            f"**Frames:** {self.num_frames} · **CLIP:** `{self.clip_model}` · "
            f"**Flow:** {FLOW_METHOD}",
            "",
            "| Metric | Mean | Min | Max | Compares |",
            "|---|---:|---:|---:|---|",
        ]
        for name, values, mean, what in rows:
            finite = [v for v in values if math.isfinite(v)]
            lo = _fmt(min(finite)) if finite else "n/a"
            hi = _fmt(max(finite)) if finite else "n/a"
            lines.append(f"| {name} | {_fmt(mean)} | {lo} | {hi} | {what} |")
        if self.regions is not None:
            r = self.regions
            lines += [
                "",
                f"Inside / outside the mask ({_fmt(100 * r['mask_fraction'])}% of the pixels inside):",
                "",
                "| Metric | Inside | Outside | Compares |",
                "|---|---:|---:|---|",
            ]
            for key, label, what in (
                ("clip_text", "CLIP-Text ↑", "region (other part grey) vs prompt"),
                ("pixel_mse", "PixelMSE ↓", "flow-warped t vs t+1, region pixels"),
                ("source_mse", "Source MSE", "edited vs source frame (0 = untouched)"),
            ):
                inside, outside = _fmt(r[f"{key}_inside"]), _fmt(r[f"{key}_outside"])
                lines.append(f"| {label} | {inside} | {outside} | {what} |")
        return "\n".join(lines) + "\n"

    def save_json(self, path: str | Path) -> Path:
        return write_output(
            path, lambda tmp: tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        )

    def save_markdown(self, path: str | Path) -> Path:
        return write_output(path, lambda tmp: tmp.write_text(self.to_markdown()))

    def plot(self, path: str | Path) -> Path:
        """PNG with the per-frame CLIP-Text, per-pair CLIP-Image and per-pair PixelMSE curves."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 7.5), layout="constrained")
        FigureCanvasAgg(fig)
        ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True)
        frames = list(range(len(self.clip_text_per_frame)))
        pairs = [t + 0.5 for t in range(len(self.clip_image_per_pair))]
        ax1.plot(frames, self.clip_text_per_frame, "o-", color="tab:blue")
        ax1.axhline(self.clip_text, color="tab:blue", ls="--", lw=0.8)
        ax1.set_ylabel("CLIP-Text")
        ax1.set_title(f"{self.prompt[:80]}  ({self.clip_model})", fontsize=9)
        ax2.plot(pairs, self.clip_image_per_pair, "o-", color="tab:green")
        ax2.axhline(self.clip_image, color="tab:green", ls="--", lw=0.8)
        ax2.set_ylabel("CLIP-Image (t, t+1)")
        pairs_mse = [t + 0.5 for t in range(len(self.pixel_mse_per_pair))]
        ax3.plot(pairs_mse, self.pixel_mse_per_pair, "o-", color="tab:red", label="PixelMSE")
        ax3.plot(
            pairs_mse,
            self.pixel_mse_masked_per_pair,
            "s--",
            color="tab:orange",
            label="PixelMSE (consistent pixels)",
        )
        ax3.set_ylabel("PixelMSE (t→t+1)")
        ax3.set_xlabel("frame")
        ax3.legend(fontsize=8)
        return write_output(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def evaluate(
    edited: list[np.ndarray],
    source: list[np.ndarray],
    prompt: str,
    scorer: ClipScorer | None = None,
    clip_model: str = DEFAULT_CLIP_MODEL,
    device: str = "cpu",
    regions: list[np.ndarray] | None = None,
) -> EvalReport:
    """CLIP-Text, CLIP-Image and PixelMSE (plain and masked) of `edited` against `source`.

    `scorer` is reused when given (its model wins over `clip_model`); otherwise `clip_model`
    is loaded. Frame checks run before any model is loaded. With `regions` (HxW bool per
    frame: where a local edit may change the frame), also the scores inside and outside.
    """
    _check_pair(edited, source)
    if scorer is None:
        scorer = ClipScorer(clip_model, device)
    text = scorer.text_embedding(prompt)  # checks the prompt length before the heavy work
    emb = scorer.image_embeddings(edited)
    clip_text = [float(v) for v in emb @ text]
    clip_image = [float(v) for v in (emb[:-1] * emb[1:]).sum(dim=-1)]
    errors = _warp_errors(edited, source)  # the flows, once for every PixelMSE below
    plain, masked, valid = _summarise(errors)
    if not any(math.isfinite(v) for v in masked):
        warnings.warn(
            "No pixel passed the flow consistency check; the masked PixelMSE is undefined.",
            stacklevel=2,
        )
    return EvalReport(
        clip_text=_mean(clip_text),
        clip_image=_mean(clip_image),
        pixel_mse=_mean(plain),
        pixel_mse_masked=_mean(masked),
        clip_text_per_frame=clip_text,
        clip_image_per_pair=clip_image,
        pixel_mse_per_pair=plain,
        pixel_mse_masked_per_pair=masked,
        valid_fraction_per_pair=valid,
        num_frames=len(edited),
        prompt=prompt,
        clip_model=scorer.model_name,
        regions=None
        if regions is None
        else region_scores(edited, source, regions, scorer, prompt, errors),
    )


__all__ = [
    "CLIP_MAX_TOKENS",
    "DEFAULT_CLIP_MODEL",
    "FLOW_METHOD",
    "ClipScorer",
    "EvalReport",
    "consistency_mask",
    "estimate_flow",
    "evaluate",
    "pixel_mse",
    "region_scores",
    "warp",
]
