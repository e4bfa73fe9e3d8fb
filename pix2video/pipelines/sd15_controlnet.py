"""The Pix2Video pipeline on any SD 1.5-architecture checkpoint with one or more ControlNets.

SD2-depth reads depth as a fifth UNet channel; an SD 1.5 checkpoint (a fine-tune, a
DreamBooth, a single `.safetensors` file from a model site) reads structure through
ControlNets instead. Each ControlNet sees the frame's control image (canny edges, depth,
or a frame the user gives, `control.py`) and adds its residuals to the UNet's; several
are summed (`MultiControlNetModel`), each with its conditioning scale. As the reference
uses depth in both stages, the control images condition inversion *and* editing.

Only the conditioning is this module's: the loop over (frame, step) is `core/edit_loop.py`, the
rest of the method `backbone.Pix2VideoBase`. The injection processors only touch the
UNet's decoder (`up_blocks`), which a ControlNet does not have, so its attention is
ordinary self-attention of the current frame, as in diffusers' ControlNet pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from diffusers.loaders import FromSingleFileMixin
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

from ..errors import InputError
from .backbone import FrameLike, Pix2VideoBase
from .control import ControlNetScales
from .scheduler import reference_scheduler


def control_to_float(rows: torch.Tensor) -> torch.Tensor:
    """uint8 control images -> float32 in [0, 1], as diffusers' ControlNet pipeline scales them."""
    return rows.float() / 255.0


def stack_control_images(
    frames: Sequence[FrameLike], control_images: Sequence | None, k: int
) -> torch.Tensor:
    """(N, 3k, H, W) uint8: per frame, its k ControlNets' control images stacked on channels;
    one `InputError` for a missing one, a wrong count or a wrong size."""
    if control_images is None:
        raise InputError("A ControlNet pipeline needs one control image per frame.")
    height, width = np.asarray(frames[0]).shape[:2]
    if len(control_images) != len(frames):
        raise InputError(
            f"Expected {len(frames)} control images (one per frame); got {len(control_images)}."
        )
    rows = []
    for images in control_images:
        images = images if isinstance(images, (list, tuple)) else [images]  # one bare image
        if len(images) != k:
            raise InputError(
                f"Expected one control image per ControlNet ({k}) for every frame; got "
                f"{len(images)}."
            )
        arrays = [
            np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
            for image in images
        ]
        for array in arrays:
            if array.shape != (height, width, 3) or array.dtype != np.uint8:
                raise InputError(
                    f"Control images must be {width}x{height} RGB (uint8) like the frames; "
                    f"got an array of shape {array.shape} ({array.dtype})."
                )
        rows.append(torch.cat([torch.from_numpy(a).permute(2, 0, 1) for a in arrays]))
    return torch.stack(rows)


class Pix2VideoControlNetPipeline(ControlNetScales, Pix2VideoBase, FromSingleFileMixin):
    """Text-guided video editing with an SD 1.5-architecture checkpoint and ControlNets.

    `Pix2VideoControlNetPipeline.from_pretrained(folder_or_hub_id, controlnet=...)` or
    `.from_single_file(path, controlnet=..., config=...)`; `controlnet` is a
    `ControlNetModel` or a `MultiControlNetModel`. `controlnet_scales` holds one
    conditioning scale per ControlNet (default 1.0 each).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["safety_checker", "feature_extractor"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder,
        tokenizer,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel | MultiControlNetModel | Sequence[ControlNetModel],
        scheduler,
        safety_checker=None,
        feature_extractor=None,
    ) -> None:
        super().__init__()
        if isinstance(controlnet, (list, tuple)):
            controlnet = MultiControlNetModel(controlnet) if len(controlnet) > 1 else controlnet[0]
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            controlnet=controlnet,
            scheduler=reference_scheduler(scheduler.config),
            safety_checker=None,  # edits are the user's own footage; not loaded
            feature_extractor=None,
        )
        self._init_common()
        self.controlnet_scales = [1.0] * self.num_controlnets
        self.controlnet_evaluations = 0

    # ------------------------------------------------------------------ conditioning
    def prepare_conditioning(
        self,
        frames: Sequence[FrameLike],
        depth_maps: torch.Tensor | np.ndarray | None = None,
        control_images: Sequence | None = None,
    ) -> torch.Tensor:
        """(N, 3k, H, W) control images in [0, 1], the k ControlNets' images stacked on channels.

        `control_images[i]` is frame i's image (one ControlNet) or its list of images, one
        per ControlNet, each an H x W x 3 uint8 array (or PIL image) of the frames' size,
        as diffusers' ControlNet pipeline feeds them (no normalisation to [-1, 1]).
        """
        if depth_maps is not None:
            raise InputError(
                "A ControlNet pipeline takes control images (control.py makes depth images), "
                "not depth maps."
            )
        return control_to_float(self.control_rows(frames, control_images)).to(self.device)

    def control_rows(self, frames: Sequence[FrameLike], control_images: Sequence | None):
        """(N, 3k, H, W) uint8: the control images as stored (a quarter of their float size)."""
        return stack_control_images(frames, control_images, self.num_controlnets)

    def conditioning_shape(self, height: int, width: int) -> tuple[int, ...]:
        return (3 * self.num_controlnets, height, width)

    def model_output(
        self,
        latent: torch.Tensor,
        control: torch.Tensor,
        t: int,
        text: torch.Tensor,
        batch: int,
    ) -> torch.Tensor:
        """The ControlNets' residuals, then the UNet with them (as diffusers' pipeline does)."""
        dtype = self.unet.dtype
        x = latent.to(dtype).expand(batch, -1, -1, -1)
        text = text.to(dtype).expand(batch, -1, -1)
        down, mid = self.controlnet_residuals(x, control, t, text, batch)
        return self.unet(
            x,
            t,
            encoder_hidden_states=text,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample.float()

    def controlnet_residuals(
        self,
        x: torch.Tensor,
        control: torch.Tensor,
        t: int,
        text: torch.Tensor,
        batch: int,
        **extra,
    ) -> tuple:
        """(down, mid) residuals of the ControlNets (summed when several) for the latents `x`.

        `control` is one frame's control images stacked on channels (3 per ControlNet);
        `extra` are a backbone's added inputs (SDXL's pooled text and size ids).
        """
        images = list(
            control.to(device=x.device, dtype=x.dtype).expand(batch, -1, -1, -1).split(3, 1)
        )
        if isinstance(self.controlnet, MultiControlNetModel):
            cond, scale = images, self.controlnet_scales
        else:
            cond, scale = images[0], self.controlnet_scales[0]
        down, mid = self.controlnet(
            x,
            t,
            encoder_hidden_states=text,
            controlnet_cond=cond,
            conditioning_scale=scale,
            return_dict=False,
            **extra,
        )
        self.controlnet_evaluations += batch * self.num_controlnets
        return down, mid
