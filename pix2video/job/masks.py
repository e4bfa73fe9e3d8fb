"""A local edit's masks (`--mask` files or `--mask-prompt`), per frame, kept in memory.

From `--mask` files, read in frame order, or segmented from `--mask-prompt` (cached per
frame, and only the frames missing from the cache are decoded). Each mask is kept as packed
bits with its latent mask; `--save-masks` writes the alphas used.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

from ..atomic import atomic_path
from ..errors import InputError
from .context import JobContext
from .source import SourceClip


class LocalEditMasks:
    """The masks of the frames prepared so far: packed bits, latent masks, coverage."""

    def __init__(self, ctx: JobContext, size: tuple[int, int], vae_scale_factor: int) -> None:
        self.width, self.height = size
        self.dilate, self.feather = ctx.settings.mask_dilate, ctx.settings.mask_feather
        self.vae_scale_factor = vae_scale_factor
        self.raw: dict[int, object] = {}  # position -> mask (packed bits)
        self.latent: dict[int, object] = {}  # position -> (h, w) bool
        self.fractions: dict[int, float] = {}  # position -> share of pixels with alpha > 0
        self.coverage = 1.0

    def keep(self, position: int, mask) -> None:
        import numpy as np

        from ..pipelines.masks import latent_mask

        self.raw[position] = np.packbits(mask)
        alpha = self.alpha_at(position)
        self.fractions[position] = float((alpha > 0).mean())
        self.latent[position] = latent_mask(alpha, self.vae_scale_factor)

    def alpha_at(self, position: int):
        """(H, W) float32 alpha of a local edit's frame: the mask grown and feathered."""
        import numpy as np

        from ..pipelines.masks import mask_alpha

        count = self.width * self.height
        mask = np.unpackbits(self.raw[position], count=count).reshape(self.height, -1)
        return mask_alpha(mask.astype(bool), self.dilate, self.feather)

    def latent_masks(self, positions: list[int]):
        """(n, 1, h, w) bool tensor of the latent masks at `positions`."""
        import numpy as np
        import torch

        return torch.from_numpy(np.stack([self.latent[i] for i in positions]))[:, None]

    def save(self, folder: Path, names: list[str]) -> None:
        """`--save-masks`: the alpha of every frame as a grey PNG, named like depth maps."""
        from PIL import Image

        from ..pipelines.masks import alpha_to_image

        try:
            with atomic_path(folder, directory=True) as tmp:
                for i, name in enumerate(names):
                    image = alpha_to_image(self.alpha_at(i))
                    Image.fromarray(image).save(tmp / f"{Path(name).stem}.png")
        except OSError as exc:
            raise InputError(f"Cannot save masks to {folder} ({exc.strerror or exc}).") from exc


def prepare_masks(
    ctx: JobContext,
    source: SourceClip,
    mask_files,
    vae_scale_factor: int,
    device,
    positions: list[int] | None = None,
    masks_dir: Path | None = None,
) -> LocalEditMasks | None:
    """The masks of the frames at `positions` (all when None); None when not a local edit."""
    import numpy as np

    s = ctx.settings
    if not s.masked:
        return None
    tic = time.perf_counter()
    all_frames = positions is None
    positions = list(range(source.num_frames)) if positions is None else positions
    masks = LocalEditMasks(ctx, (source.width, source.height), vae_scale_factor)
    if mask_files is not None:
        _read_mask_files(ctx, masks, mask_files, positions, source.num_frames, all_frames)
    else:
        _segment(ctx, masks, source, positions, device)
    masks.coverage = float(np.mean([masks.fractions[i] for i in positions]))
    if masks_dir is not None and all_frames:
        masks.save(masks_dir, source.frame_names())
    ctx.seconds["masks"] = time.perf_counter() - tic
    return masks


def _read_mask_files(ctx, masks, mask_files, positions, num_frames: int, all_frames: bool):
    from ..pipelines.masks import binarize

    size = (masks.width, masks.height)
    for done, i in enumerate(positions, 1):
        ctx.check_cancelled()
        masks.keep(i, binarize(mask_files.raw(i), size))
        ctx.progress("masks", done, len(positions))
    if all_frames:
        mask_files.check_count(num_frames, read_all=True)
    mask_files.close()


def _segment(ctx: JobContext, masks: LocalEditMasks, source: SourceClip, positions, device):
    """`--mask-prompt`: the text-to-mask model's masks, cached per frame."""
    import torch

    from .cache import make_key, model_fingerprint

    s = ctx.settings
    model_id = model_fingerprint(s.mask_model)
    keys = {
        i: make_key(
            "mask",
            model=model_id,
            frame=source.frame_hashes[i],
            size=[source.width, source.height],
            prompt=s.mask_prompt,
            threshold=float(s.mask_threshold),
        )
        for i in positions
    }
    for i in positions:
        cached = ctx.cache.load("mask", keys[i])
        if torch.is_tensor(cached) and tuple(cached.shape) == (source.height, source.width):
            masks.keep(i, cached.numpy().astype(bool))
    todo = [i for i in positions if i not in masks.raw]
    segment = load_segmenter(s.mask_model, str(device)) if todo else None
    ctx.progress("masks", len(positions) - len(todo), len(positions))
    if todo:
        for i, _frame, small in source.frames(ctx, todo):
            ctx.check_cancelled()
            mask = segment(small, s.mask_prompt, s.mask_threshold)
            ctx.save("mask", keys[i], torch.from_numpy(mask))
            masks.keep(i, mask)
            ctx.progress("masks", len(masks.raw), len(positions))


@functools.lru_cache(maxsize=1)
def load_segmenter(model: str, device: str):
    """The text-to-mask model (kept loaded between jobs, like the captioner)."""
    from ..pipelines.masks import TextSegmenter

    return TextSegmenter(model, device)
