"""Optical flow of the source, warps and the flow-warped PixelMSE (temporal coherence in pixels).

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
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import InputError
from .frames import check_pair, to_float, to_gray, to_uint8

FLOW_METHOD = "opencv-dis-medium"
CONSISTENCY_ALPHA = 0.01
CONSISTENCY_BETA = 0.5
_DIS_MIN_SIZE = 12  # DIS refuses images whose width and height are both below 12 pixels


def estimate_flow(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Dense optical flow from `src` to `dst`: HxWx2 float32 (x, y) with ``src(p) ~ dst(p + flow(p))``.

    OpenCV DIS (preset MEDIUM) on grayscale; Farneback for frames under 12 pixels. Frames are
    HxWx3 RGB (uint8 or float in [0, 1]) or HxW grayscale, both of the same size.
    """
    a, b = to_gray(src), to_gray(dst)
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
    check_pair(edited, source)
    return summarise_errors(warp_errors(edited, source))


WarpErrors = list[tuple[np.ndarray, np.ndarray]]
"""Per pair (t, t+1): the HxW warped squared error and the flow consistency mask."""


def warp_errors(edited: list[np.ndarray], source: list[np.ndarray]) -> WarpErrors:
    """The per-pixel PixelMSE of every pair, with the source's flow (resized to the edit)."""
    h, w = np.asarray(edited[0]).shape[:2]
    src = [np.asarray(s) for s in source]
    if src[0].shape[:2] != (h, w):
        src = [cv2.resize(to_uint8(s), (w, h), interpolation=cv2.INTER_AREA) for s in src]
    gray = [to_gray(s) for s in src]
    errors = []
    for t in range(len(edited) - 1):
        flow_bw = estimate_flow(gray[t + 1], gray[t])
        flow_fw = estimate_flow(gray[t], gray[t + 1])
        warped = warp(to_float(edited[t]), flow_bw)
        err = np.mean((warped - to_float(edited[t + 1])) ** 2, axis=-1)  # HxW, channel mean
        errors.append((err, consistency_mask(flow_bw, flow_fw)))
    return errors


def summarise_errors(errors: WarpErrors) -> tuple[list[float], list[float], list[float]]:
    """(plain, masked, valid_fraction) per pair, as `pixel_mse` returns them."""
    plain = [float(err.mean()) for err, _ in errors]
    valid = [float(mask.mean()) for _, mask in errors]
    masked = [float(err[m].mean()) if m.any() else float("nan") for err, m in errors]
    return plain, masked, valid
