"""Local edits: where a frame may change, as masks from files or segmented from text.

A mask says where the edit goes (white) and what must stay exactly as it was (black). It
acts twice (blended latent diffusion, Avrahami et al. 2022/2023):

1. in the latent loop, after every step, the latent outside the *latent mask* is replaced by
   the frame's own DDIM-inversion latent at the same noise level (`edit_loop.MaskBlend`), so the
   background follows the source and the edited region grows into it seamlessly;
2. after decoding, the frame is composited with the source frame through the *alpha*
   (the mask grown by `dilate` pixels, then softened over `feather` pixels), so every pixel
   farther than dilate + feather from the mask is bit-for-bit the source pixel.

The latent mask is the alpha's support (alpha > 0) max-pooled to latent resolution, so the
latent loop edits at least everything the composite shows of the edit.

Sources: a folder of images, a video, or one image for every frame (`MaskFiles`), or a
text prompt segmented per frame by a CLIPSeg model from transformers (`TextSegmenter`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError, VideoError
from ..models import load_pretrained

MASK_LEVEL = 128
"""A mask pixel (grey level 0-255, resized to the frame) at or above this is 'edit'."""


# ------------------------------------------------------------------------------ mask maths
def binarize(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxW bool at `size` (width, height) from a grey or RGB mask image of any size.

    Colour masks count by their brightest channel; the image is resized with area averaging,
    then thresholded at `MASK_LEVEL` (white = edit).
    """
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask.max(axis=-1)
    if mask.dtype == bool:
        mask = mask.astype(np.uint8) * 255
    elif mask.dtype != np.uint8:
        mask = np.clip(np.asarray(mask, dtype=np.float32) * 255, 0, 255).astype(np.uint8)
    if (mask.shape[1], mask.shape[0]) != tuple(size):
        mask = cv2.resize(mask, tuple(size), interpolation=cv2.INTER_AREA)
    return mask >= MASK_LEVEL


def mask_alpha(mask: np.ndarray, dilate: int = 0, feather: int = 0) -> np.ndarray:
    """HxW float32 alpha in [0, 1]: 1 within `dilate` px of the mask, 0 beyond dilate + feather.

    In between, alpha falls linearly with the (Euclidean) distance to the mask, so a pixel
    at distance >= dilate + feather gets exactly 0 and keeps its source value.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros(mask.shape, np.float32)
    if mask.all() or (dilate == 0 and feather == 0):
        return mask.astype(np.float32)
    # distance of every pixel to the nearest mask pixel (0 on the mask)
    distance = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    if feather == 0:
        return (distance <= dilate).astype(np.float32)
    alpha = 1.0 - (distance - dilate) / np.float32(feather)
    return np.clip(alpha, 0.0, 1.0).astype(np.float32)


def latent_mask(alpha: np.ndarray, factor: int) -> np.ndarray:
    """(h, w) bool at latent resolution: the latent cells that hold any pixel with alpha > 0."""
    support = np.asarray(alpha) > 0
    height, width = support.shape
    if height % factor or width % factor:
        raise InputError(f"Mask sides must be multiples of {factor}, got {width}x{height}.")
    cells = support.reshape(height // factor, factor, width // factor, factor)
    return cells.any(axis=(1, 3))


def composite(source: np.ndarray, edited: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint8 `edited` over `source` through `alpha`; alpha 0 gives the source pixel exactly."""
    if source.shape != edited.shape:
        source = cv2.resize(
            source, (edited.shape[1], edited.shape[0]), interpolation=cv2.INTER_AREA
        )
    if alpha.shape != edited.shape[:2]:
        alpha = cv2.resize(
            alpha, (edited.shape[1], edited.shape[0]), interpolation=cv2.INTER_LINEAR
        )
    src = source.astype(np.float32)
    out = src + alpha[..., None] * (edited.astype(np.float32) - src)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def alpha_to_image(alpha: np.ndarray) -> np.ndarray:
    """uint8 grey image of an alpha; any alpha > 0 stays > 0 (so `eval --mask` sees the region)."""
    return np.ceil(np.asarray(alpha, dtype=np.float32) * 255).astype(np.uint8)


# ------------------------------------------------------------------------------ from files
class MaskFiles:
    """Per-frame masks from a folder of images, a video, or one image used for every frame.

    Read in frame order on demand (a video is decoded once per pass, one frame at a time);
    position i of the selection takes the source's i-th mask, so the source must hold
    exactly as many masks as the selection has frames (`check_count`). `control.ControlFiles`
    reads control frames the same way (`noun` names them in messages).
    """

    noun = "mask"

    def __init__(self, path: str | os.PathLike, frames: str = "the selection") -> None:
        """`frames` names what the masks must match, for messages ("the edited clip")."""
        from .. import media as video

        self.frames = frames
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise InputError(f"The {self.noun} '{self.path}' does not exist.")
        self.single: np.ndarray | None = None
        self.files: list[Path] | None = None
        if self.path.is_dir():
            self.files = video.list_image_files(self.path)
            if not self.files:
                raise InputError(f"The {self.noun} folder '{self.path}' has no images.")
        elif self.path.suffix.lower() in video.IMAGE_EXTENSIONS:
            self.single = self._read_image(self.path)
        else:
            try:
                self._reader = video.open_clip(self.path)
            except VideoError as exc:
                raise InputError(f"The {self.noun} '{self.path}' cannot be read: {exc}") from exc
        self._iterator: Iterator | None = None
        self._next = 0
        self.expected: int | None = None  # the selection's frame count, once known

    @staticmethod
    def _read_image(path: Path) -> np.ndarray:
        """A grey mask image (any channel white is white)."""
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise InputError(f"The mask image '{path}' cannot be read.")
        if image.ndim == 3:
            image = image[..., :3].max(axis=-1)  # channel order does not matter for max
        if image.dtype != np.uint8:
            image = (image.astype(np.float32) * 255 / np.iinfo(image.dtype).max).astype(np.uint8)
        return image

    def _count_error(self, count: str, num_frames: int) -> InputError:
        what = "folder" if self.files is not None else "video"
        unit = "images" if self.files is not None else "frames"
        return InputError(
            f"The {self.noun} {what} '{self.path}' has {count} {unit} but {self.frames} has "
            f"{num_frames} frames: give one {self.noun} per frame."
        )

    def check_count(self, num_frames: int, read_all: bool = False) -> None:
        """One sentence unless the source holds one mask per selected frame.

        A folder is checked by its file count; a video only after its frames were read
        (`read_all`: all `num_frames` positions were asked for), by looking one frame further.
        """
        self.expected = num_frames
        if self.files is not None and len(self.files) != num_frames:
            raise self._count_error(str(len(self.files)), num_frames)
        if self.files is None and self.single is None and read_all:
            if next(self._iterator, None) is not None:
                raise self._count_error(f"more than {num_frames}", num_frames)

    def raw(self, position: int) -> np.ndarray:
        """The mask image for the selection's frame `position` (frames are asked in order)."""
        if self.single is not None:
            return self.single
        if self.files is not None:
            return self._read_image(self.files[position])
        if self._iterator is None or position < self._next:
            self._iterator, self._next = iter(self._reader), 0
        item = None
        while self._next <= position:
            item = next(self._iterator, None)
            if item is None:
                raise self._count_error(str(self._next), self.expected or position + 1)
            self._next += 1
        return item[1]

    def close(self) -> None:
        self._iterator, self._next = None, 0


# ------------------------------------------------------------------------------ from text
class TextSegmenter:
    """Masks of the region a text names, per frame, with a CLIPSeg model from transformers.

    The model (hub id or folder) is loaded offline-first like every model here; its
    probabilities are resized to the frame and thresholded. Deterministic.
    """

    def __init__(self, model: str, device: str = "cpu") -> None:
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        self.model_name = model
        self.processor = load_pretrained(
            CLIPSegProcessor.from_pretrained, model, "segmentation model (CLIPSeg processor)"
        )
        self.model = load_pretrained(
            CLIPSegForImageSegmentation.from_pretrained, model, "segmentation model"
        )
        self.model.to(device).eval()
        self.device = device

    def probabilities(self, frame: np.ndarray, prompt: str) -> np.ndarray:
        """HxW float32: the probability that each pixel shows `prompt`."""
        import torch

        inputs = self.processor(text=[prompt], images=[frame], return_tensors="pt", padding=True)
        with torch.inference_mode():
            logits = self.model(**inputs.to(self.device)).logits
        probs = torch.sigmoid(logits.float()).reshape(logits.shape[-2:]).cpu().numpy()
        height, width = frame.shape[:2]
        return cv2.resize(probs, (width, height), interpolation=cv2.INTER_LINEAR)

    def __call__(self, frame: np.ndarray, prompt: str, threshold: float) -> np.ndarray:
        """HxW bool: pixels whose probability is at least `threshold`."""
        return self.probabilities(frame, prompt) >= threshold


def read_regions(path: str | os.PathLike, frames: list[np.ndarray]) -> list[np.ndarray]:
    """Per edited frame, the HxW bool region of a mask source (nonzero = inside).

    For `eval --mask`: the masks `edit --save-masks` wrote mark every pixel the edit may
    have changed with a nonzero value (`alpha_to_image`); they are resized to the frames.
    """
    masks = MaskFiles(path, frames="the edited clip")
    masks.check_count(len(frames))
    height, width = frames[0].shape[:2]
    regions = []
    for i in range(len(frames)):
        raw = masks.raw(i)
        raw = raw.max(axis=-1) if raw.ndim == 3 else raw
        if raw.shape != (height, width):
            raw = cv2.resize(raw, (width, height), interpolation=cv2.INTER_LINEAR)
        regions.append(raw > 0)
    masks.check_count(len(frames), read_all=True)
    masks.close()
    return regions
