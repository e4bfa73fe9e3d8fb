"""Control images for ControlNets: canny edges, estimated depth, or frames the user gives.

Each is made per frame at the processing size and is deterministic, so it can be cached
like SD2-depth's depth. They follow the recipes the ControlNets were trained with (and
that diffusers' documentation uses):

- `canny_image`: OpenCV's Canny edges of the frame, white on black, in three channels;
- `DepthEstimator` + `depth_image`: a transformers depth-estimation model's prediction,
  resized bicubically to the frame and scaled to 0..255 by its maximum, as transformers'
  `depth-estimation` pipeline returns it (`Intel/dpt-hybrid-midas` by default; Depth
  Anything V2 and any other `AutoModelForDepthEstimation` checkpoint work);
- `ControlFiles`: a folder of images or a video with one control frame per selected
  frame (or one image for all), read in step with the clip like `--mask` files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..models import load_pretrained
from .depth import estimate_depth
from .masks import MaskFiles


def canny_image(frame: np.ndarray, low: int, high: int) -> np.ndarray:
    """H x W x 3 uint8: the Canny edges of an RGB frame (thresholds `low` < `high`)."""
    edges = cv2.Canny(np.ascontiguousarray(frame), low, high)
    return np.repeat(edges[..., None], 3, axis=-1)


class DepthEstimator:
    """A transformers depth-estimation model and its image processor, loaded offline-first."""

    def __init__(self, model: str, device: str | torch.device = "cpu") -> None:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        self.name = model
        self.processor = load_pretrained(
            AutoImageProcessor.from_pretrained, model, "depth model (image processor)"
        )
        self.model = load_pretrained(
            AutoModelForDepthEstimation.from_pretrained, model, "depth model"
        )
        self.model.to(device).eval()

    def __call__(self, frame: np.ndarray) -> torch.Tensor:
        """(h', w') raw predicted depth of one RGB frame (larger = nearer for MiDaS-style models)."""
        return estimate_depth(self.model, self.processor, [frame], batch_size=1)[0]


def depth_image(depth: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """H x W x 3 uint8 control image of a raw depth map, `size` = (width, height).

    As transformers' depth-estimation pipeline: bicubic resize, then depth * 255 / max.
    """
    width, height = size
    resized = F.interpolate(
        depth.float()[None, None], size=(height, width), mode="bicubic", align_corners=False
    )[0, 0].numpy()
    peak = float(resized.max())
    scaled = resized * 255 / peak if peak > 0 else np.zeros_like(resized)
    grey = scaled.astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


class ControlFiles(MaskFiles):
    """Control frames given by the user: a folder, a video, or one image for every frame."""

    noun = "control"

    @staticmethod
    def _read_image(path: Path) -> np.ndarray:
        """An RGB control image."""
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise InputError(f"The control image '{path}' cannot be read.")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def frame(self, position: int, size: tuple[int, int]) -> np.ndarray:
        """The control frame of the selection's frame `position`, resized to `size` (w, h)."""
        from ..media import resize_frames

        image = np.asarray(self.raw(position))
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        return resize_frames([image[..., :3]], size)[0]


class ControlNetScales:
    """A pipeline mixin for one or more ControlNets (SD 1.5, SDXL, SD3, FLUX): `controlnet`
    is one model or diffusers' Multi*ControlNetModel of several (its `nets`), and each net
    has its conditioning scale."""

    controlnet_scales: list[float]

    @property
    def controlnets(self) -> list:
        nets = getattr(self.controlnet, "nets", None)
        return list(nets) if nets is not None else [self.controlnet]

    @property
    def num_controlnets(self) -> int:
        return len(self.controlnets)

    def set_controlnet_scales(self, scales: Sequence[float]) -> None:
        """One conditioning scale per ControlNet, in their order."""
        if len(scales) != self.num_controlnets:
            raise InputError(
                f"Give one control scale per ControlNet ({self.num_controlnets}); got {len(scales)}."
            )
        self.controlnet_scales = [float(s) for s in scales]
