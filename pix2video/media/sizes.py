"""Processing sizes and resizing: `--size`, sides that are multiples of 8, side-by-side frames."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import numpy as np
from PIL import Image

from ..errors import VideoError

# The diffusion model's latent is 8x smaller than the image: sides are multiples of 8. (The
# UNet halves the latent 3 more times; diffusers forwards the skip sizes when that is uneven.)
SIZE_MULTIPLE = 8


MIN_SIDE = 64


def parse_size(text: str | int) -> int | tuple[int, int]:
    """``"512"`` -> 512 (long side), ``"768x448"`` -> (768, 448) (exact width x height)."""
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        value: int | tuple[int, int] = int(text)
    else:
        match = re.fullmatch(r"\s*([0-9]+)\s*(?:[x×*]\s*([0-9]+)\s*)?", str(text).lower())
        if match is None:
            raise VideoError(
                f"Invalid size {text!r}: use one number for the long side (512) or "
                "WIDTHxHEIGHT (768x448)."
            )
        w, h = match.groups()
        value = int(w) if h is None else (int(w), int(h))
    if (value if isinstance(value, int) else min(value)) <= 0:
        raise VideoError(f"Invalid size {text!r}: sizes must be positive.")
    return value


def fit_size(
    src_w: int, src_h: int, size: int | tuple[int, int], multiple: int = SIZE_MULTIPLE
) -> tuple[int, int]:
    """Output (width, height) for the diffusion model: both sides multiples of 8 (of
    `multiple`: 16 for SD3, whose transformer reads 2x2 latent patches).

    ``size`` as an int is the long side (rounded to the nearest multiple of 8, at least 64);
    the short side is the multiple of 8 (at least 64) whose aspect ratio is closest to the
    source's, compared as a ratio (so 1280x720 gives 512x288 at 512 and 854x480 512x288).
    A ``(W, H)`` tuple is used as given but must be multiples of 8.
    """
    if src_w <= 0 or src_h <= 0:
        raise VideoError(f"Invalid source size {src_w}x{src_h}: sides must be positive.")
    if isinstance(size, (tuple, list)):
        w, h = (int(s) for s in size)
        if w <= 0 or h <= 0 or w % multiple or h % multiple:
            raise VideoError(
                f"Output size {w}x{h} is not usable: width and height must be multiples of "
                f"{multiple} (e.g. {_round_size(w, multiple)}x{_round_size(h, multiple)})."
            )
        return w, h
    if isinstance(size, bool) or int(size) <= 0:
        raise VideoError(f"Invalid size {size!r}: the long side must be a positive number.")
    long_out = _round_size(int(size), multiple)
    long_in, short_in = max(src_w, src_h), min(src_w, src_h)
    short_exact = short_in * long_out / long_in
    lo = max(MIN_SIDE, math.floor(short_exact / multiple) * multiple)
    hi = lo + multiple
    # Nearest in ratio terms: compare against the geometric mean of the two candidates.
    short_out = hi if short_exact >= math.sqrt(lo * hi) else lo
    short_out = min(short_out, long_out)
    return (long_out, short_out) if src_w >= src_h else (short_out, long_out)


def _round_size(n: int, multiple: int = SIZE_MULTIPLE) -> int:
    return max(MIN_SIDE, int(math.floor(n / multiple + 0.5)) * multiple)


def as_rgb_frame(frame, index: int, shape: tuple[int, int] | None) -> np.ndarray:
    """Validate one output frame: HxWx3 uint8 (grey HxW and RGBA are converted)."""
    arr = np.asarray(frame)
    if arr.dtype != np.uint8:
        raise VideoError(
            f"Frame {index} has dtype {arr.dtype}; frames to write must be uint8 RGB (0-255)."
        )
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise VideoError(
            f"Frame {index} has shape {np.shape(frame)}; frames to write must be HxWx3 RGB."
        )
    if shape is not None and arr.shape[:2] != shape:
        raise VideoError(
            f"Frame {index} is {arr.shape[1]}x{arr.shape[0]} but frame 0 is "
            f"{shape[1]}x{shape[0]}; all frames of a video must have the same size."
        )
    return np.ascontiguousarray(arr)


def resize_frames(frames: Iterable[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
    """Resize to exactly (width, height) with Lanczos (sharp, little aliasing when shrinking).

    Frames already at that size are returned as they are.
    """
    w, h = (int(s) for s in size)
    if w <= 0 or h <= 0:
        raise VideoError(f"Invalid size {w}x{h}: width and height must be positive.")
    out = []
    for i, frame in enumerate(frames):
        arr = as_rgb_frame(frame, i, None)
        if arr.shape[:2] == (h, w):
            out.append(arr)
            continue
        img = Image.fromarray(arr).resize((w, h), Image.Resampling.LANCZOS)
        out.append(np.asarray(img, dtype=np.uint8).copy())
    return out


def side_by_side(left: list[np.ndarray], right: list[np.ndarray]) -> list[np.ndarray]:
    """Input next to output for comparison: ``left`` is scaled to ``right``'s height.

    The scaled width is rounded to an even number so an even-sized result stays even (H.264).
    """
    left, right = list(left), list(right)
    if len(left) != len(right):
        raise VideoError(
            f"Cannot put {len(left)} frames next to {len(right)} frames; the counts must match."
        )
    out = []
    for i, (a, b) in enumerate(zip(left, right, strict=True)):
        a, b = as_rgb_frame(a, i, None), as_rgb_frame(b, i, None)
        height = b.shape[0]
        if a.shape[0] != height:
            width = max(2, 2 * round(a.shape[1] * height / a.shape[0] / 2))
            a = resize_frames([a], (width, height))[0]
        out.append(np.hstack([a, b]))
    return out
