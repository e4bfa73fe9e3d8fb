"""The Pix2Video pipeline on SD2-depth: depth, DDIM inversion, then frame-by-frame editing.

Reads like the paper's algorithm (and `ALGORITHM.md`, which states what the authors'
code does):

1. depth of every frame (the checkpoint's estimator, or maps given by the caller);
2. DDIM inversion of every frame with the *source* prompt, guidance 1 (conditional branch
   only), giving each frame its own starting noise x_T;
3. DDIM sampling of every frame from its x_T with the *edit* prompt and classifier-free
   guidance (both branches in one batched UNet call), where
   - the decoder self-attention of frame i reads keys/values from the anchor's and the
     previous frame's features at the same step (`core/attention.py`), and
   - during the first half of the steps the latent is pulled towards the previous frame's
     predicted clean latent (`core/guidance.py`);
4. VAE decoding.

This module holds only what is SD2-depth's own: the depth channel concatenated to the
latent. The loop over (frame, step) is `core/edit_loop.py` (shared by every backbone), the
rest of the method is `backbone.Pix2VideoBase`; `sd15_controlnet.py` is the SD 1.5 +
ControlNet backbone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from ..errors import InputError
from .backbone import FrameLike, Pix2VideoBase
from .depth import estimate_depth, normalize_depth
from .scheduler import reference_scheduler


class Pix2VideoPipeline(Pix2VideoBase):
    """Text-guided video editing with a depth-conditioned Stable Diffusion 2 checkpoint.

    Built from the components of `stabilityai/stable-diffusion-2-depth` (or any checkpoint
    of that layout): `Pix2VideoPipeline.from_pretrained(hub_id_or_folder)`. The scheduler
    is replaced by DDIM configured as in the reference implementation.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["depth_estimator", "feature_extractor"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder,
        tokenizer,
        unet: UNet2DConditionModel,
        scheduler,
        depth_estimator=None,
        feature_extractor=None,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=reference_scheduler(scheduler.config),
            depth_estimator=depth_estimator,
            feature_extractor=feature_extractor,
        )
        self._init_common()

    @torch.inference_mode()
    def prepare_depth(
        self, frames: Sequence[FrameLike], depth_maps: torch.Tensor | np.ndarray | None = None
    ) -> torch.Tensor:
        """(N, 1, h, w) normalised depth at latent resolution, estimated unless given."""
        height, width = np.asarray(frames[0]).shape[:2]
        if depth_maps is None:
            if self.depth_estimator is None or self.feature_extractor is None:
                raise InputError("This model has no depth estimator: pass precomputed depth maps.")
            # one frame at a time: every caller (clip, job, preview) gets bitwise the same maps
            depth_maps = estimate_depth(
                self.depth_estimator, self.feature_extractor, frames, batch_size=1
            )
        depth_maps = torch.as_tensor(
            np.asarray(depth_maps) if not torch.is_tensor(depth_maps) else depth_maps
        )
        if depth_maps.ndim == 4 and depth_maps.shape[1] == 1:
            depth_maps = depth_maps[:, 0]
        if depth_maps.ndim != 3 or depth_maps.shape[0] != len(frames):
            raise InputError(
                f"Expected {len(frames)} depth maps of shape (height, width), got an array of shape "
                f"{tuple(depth_maps.shape)}."
            )
        size = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        return normalize_depth(depth_maps, size).to(self.device)

    def prepare_conditioning(
        self,
        frames: Sequence[FrameLike],
        depth_maps: torch.Tensor | np.ndarray | None = None,
        control_images: Sequence | None = None,
    ) -> torch.Tensor:
        """The depth channel: `prepare_depth`. SD2-depth takes no control images."""
        if control_images is not None:
            raise InputError(
                "This model is depth-conditioned (SD2-depth) and takes no control images."
            )
        return self.prepare_depth(frames, depth_maps)

    def conditioning_shape(self, height: int, width: int) -> tuple[int, ...]:
        return (1, height // self.vae_scale_factor, width // self.vae_scale_factor)

    def model_output(
        self, latent: torch.Tensor, depth: torch.Tensor, t: int, text: torch.Tensor, batch: int
    ) -> torch.Tensor:
        """The UNet reads the latent and the depth as 5 channels."""
        model_input = (
            torch.cat([latent, depth], dim=1).to(self.unet.dtype).expand(batch, -1, -1, -1)
        )
        text = text.to(self.unet.dtype).expand(batch, -1, -1)
        return self.unet(model_input, t, encoder_hidden_states=text).sample.float()
