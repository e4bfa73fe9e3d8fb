"""The frames the metrics accept (HxWx3 RGB, uint8 or float in [0, 1]): checks and conversions.

Every metric checks its inputs here first, so a wrong shape or dtype is one sentence
(`InputError`) before any flow is estimated or model loaded.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import InputError


def check_frames(frames: list[np.ndarray], what: str) -> None:
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


def check_pair(edited: list[np.ndarray], source: list[np.ndarray]) -> None:
    check_frames(edited, "edited")
    check_frames(source, "source")
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


def to_float(frame: np.ndarray) -> np.ndarray:
    """HxWx3 float32 in [0, 1]."""
    frame = np.asarray(frame)
    if frame.dtype == np.uint8:
        return frame.astype(np.float32) / 255.0
    return frame.astype(np.float32)


def to_uint8(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype == np.uint8:
        return frame
    return np.clip(np.rint(frame.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def to_gray(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 2:
        return to_uint8(frame)
    return cv2.cvtColor(np.ascontiguousarray(to_uint8(frame)), cv2.COLOR_RGB2GRAY)
