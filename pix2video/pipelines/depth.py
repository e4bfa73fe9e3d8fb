"""Depth maps: from the checkpoint's estimator or from files, normalised as the reference does.

The depth-conditioned UNet reads one extra input channel: the frame's depth at latent
resolution, min-max normalised to [-1, 1]. The reference resizes *bilinearly*
(align_corners=False); diffusers' own depth2img pipeline uses bicubic, which gives a
visibly different conditioning, so we follow the reference. Pixels equal to -1 mark
background in precomputed maps and are pushed just behind the farthest real depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

BACKGROUND = -1.0
BACKGROUND_MARGIN = 10.0


def normalize_depth(depth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) raw depth -> (B, 1, h, w) in [-1, 1] at latent size `size` = (h, w)."""
    depth = depth.float()
    if depth.ndim == 2:
        depth = depth[None]
    depth = torch.stack([_fill_background(d) for d in depth])
    depth = F.interpolate(depth[:, None], size=size, mode="bilinear", align_corners=False)
    lo = depth.amin(dim=(1, 2, 3), keepdim=True)
    hi = depth.amax(dim=(1, 2, 3), keepdim=True)
    return 2.0 * (depth - lo) / (hi - lo).clamp_min(1e-8) - 1.0


def _fill_background(depth: torch.Tensor) -> torch.Tensor:
    background = depth == BACKGROUND
    if not background.any() or background.all():
        return depth
    fill = depth[~background].min() - BACKGROUND_MARGIN
    return torch.where(background, fill, depth)


@torch.inference_mode()
def estimate_depth(
    depth_estimator: torch.nn.Module,
    feature_extractor,
    frames: Sequence[np.ndarray],
    batch_size: int = 4,
) -> torch.Tensor:
    """Raw `predicted_depth` (B, h, w) of RGB uint8 frames from a DPT-style estimator."""
    param = next(depth_estimator.parameters())
    maps = []
    for i in range(0, len(frames), batch_size):
        batch = list(frames[i : i + batch_size])
        pixels = feature_extractor(images=batch, return_tensors="pt").pixel_values
        pixels = pixels.to(device=param.device, dtype=param.dtype)
        maps.append(depth_estimator(pixels).predicted_depth.float().cpu())
    return torch.cat(maps)


def load_depth_maps(
    depth_dir: str | Path, frame_names: Sequence[str], frame_size: tuple[int, int]
) -> torch.Tensor:
    """Load one `.npy` per frame, named like the frame (`000012.png` -> `000012.npy`).

    `frame_size` is (width, height) of the frames; a map must be 2-D with the frames'
    aspect ratio (any resolution: it is resized to the latent grid anyway).
    """
    depth_dir = Path(depth_dir)
    if not depth_dir.is_dir():
        raise InputError(f"The depth folder '{depth_dir}' does not exist.")
    maps = []
    for name in frame_names:
        path = depth_dir / (Path(name).stem + ".npy")
        if not path.is_file():
            raise InputError(
                f"The depth folder '{depth_dir}' has no '{path.name}' for frame '{name}'."
            )
        try:
            depth = np.load(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one user error
            raise InputError(
                f"The depth map '{path}' cannot be read as a .npy array ({exc})."
            ) from exc
        maps.append(check_depth_map(depth, frame_size, str(path)))
    shapes = {m.shape for m in maps}
    if len(shapes) > 1:
        raise InputError(
            f"The depth maps in '{depth_dir}' have different shapes: {sorted(shapes)}."
        )
    return torch.from_numpy(np.stack(maps))


def check_depth_map(
    depth: np.ndarray, frame_size: tuple[int, int], name: str = "depth map"
) -> np.ndarray:
    """Return `depth` as float32 (H, W) or raise `InputError` saying what is wrong with it."""
    depth = np.asarray(depth)
    if depth.ndim == 3 and 1 in (depth.shape[0], depth.shape[-1]):
        depth = depth.reshape(depth.shape[1:] if depth.shape[0] == 1 else depth.shape[:-1])
    if depth.ndim != 2:
        raise InputError(
            f"The {name} has shape {depth.shape}; expected a 2-D (height, width) array."
        )
    if not np.issubdtype(depth.dtype, np.number) or not np.isfinite(depth).all():
        raise InputError(f"The {name} holds non-numeric, NaN or infinite values.")
    width, height = frame_size
    map_ratio, frame_ratio = depth.shape[1] / depth.shape[0], width / height
    if abs(map_ratio / frame_ratio - 1) > 0.02:
        raise InputError(
            f"The {name} is {depth.shape[1]}x{depth.shape[0]} but the frames are {width}x{height}: "
            "aspect ratios differ, so it belongs to other footage or another crop."
        )
    return depth.astype(np.float32)
