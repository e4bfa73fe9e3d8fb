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

**Inside / outside a mask** (local edits, `eval --mask`): with a mask per frame (nonzero =
the region the edit may change, e.g. the masks `edit --save-masks` writes), the same scores
are also taken per region: CLIP-Text of the frame with the other region painted mid-grey,
PixelMSE over the region's pixels of frame t+1, and the **source MSE**, the mean squared
difference between edited and source frames (pixels in [0, 1]): 0 outside the mask when
the background is untouched.

The flow and warp conventions are in `flow`; the CLIP scorer in `clip_score`; the report
in `report`.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ..errors import InputError
from ..models import DEFAULT_CLIP_MODEL
from .clip_score import ClipScorer
from .flow import WarpErrors, summarise_errors, warp_errors
from .frames import check_pair, to_float, to_uint8
from .report import EvalReport, finite_mean


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
    src = resize_frames([to_uint8(s) for s in source], (w, h))
    text = scorer.text_embedding(prompt)
    if errors is None:
        errors = warp_errors(edited, source)
    scores = {"mask_fraction": finite_mean([float(r.mean()) for r in regions])}
    for name, keep in (("inside", regions), ("outside", [~r for r in regions])):
        grey = [
            np.where(k[..., None], to_uint8(e), 127).astype(np.uint8)
            for e, k in zip(edited, keep, strict=True)
        ]
        scores[f"clip_text_{name}"] = finite_mean(
            [float(v) for v in scorer.image_embeddings(grey) @ text]
        )
        pair = [
            float(err[k].mean()) if k.any() else float("nan")
            for (err, _), k in zip(errors, keep[1:], strict=True)
        ]
        scores[f"pixel_mse_{name}"] = finite_mean(pair)
        diff = [
            float(np.mean((to_float(e) - to_float(s))[k] ** 2)) if k.any() else float("nan")
            for e, s, k in zip(edited, src, keep, strict=True)
        ]
        scores[f"source_mse_{name}"] = finite_mean(diff)
    return scores


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
    check_pair(edited, source)
    if scorer is None:
        scorer = ClipScorer(clip_model, device)
    text = scorer.text_embedding(prompt)  # checks the prompt length before the heavy work
    emb = scorer.image_embeddings(edited)
    clip_text = [float(v) for v in emb @ text]
    clip_image = [float(v) for v in (emb[:-1] * emb[1:]).sum(dim=-1)]
    errors = warp_errors(edited, source)  # the flows, once for every PixelMSE below
    plain, masked, valid = summarise_errors(errors)
    if not any(math.isfinite(v) for v in masked):
        warnings.warn(
            "No pixel passed the flow consistency check; the masked PixelMSE is undefined.",
            stacklevel=2,
        )
    return EvalReport(
        clip_text=finite_mean(clip_text),
        clip_image=finite_mean(clip_image),
        pixel_mse=finite_mean(plain),
        pixel_mse_masked=finite_mean(masked),
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
