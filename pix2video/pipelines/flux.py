"""The Pix2Video pipeline on FLUX.1 Depth [dev] / Canny [dev] (`FluxControlPipeline`'s conditioning).

FLUX.1 Depth and Canny [dev] are the successors of SD2-depth: the control image is
VAE-encoded and concatenated to the latent channels. What differs from the other backbones
is conditioning, the walk and the guidance, so this module is those only (the loop is
`core/edit_loop.py`, the rest of the method `backbone.Pix2VideoBase`):

- text as diffusers' `FluxPipeline.encode_prompt` makes it: CLIP-L's pooled output and T5's
  states (`max_sequence_length` tokens, 512 as diffusers); the pooled embedding rides in
  the one text tensor (`sdxl.pack_text`);
- the control image becomes control latents as `FluxControlPipeline` makes them: in
  [-1, 1], VAE-encoded, (mean - shift) * scale; the posterior's mean, not a sample, so a
  frame's conditioning is deterministic and cacheable. Latents and control latents stay
  (N, C, h, w) everywhere (loop, masks, caches); `model_output` packs them into 2x2 tokens,
  concatenates them on the channel axis, and unpacks the velocity (diffusers' own
  `_pack_latents`/`_unpack_latents`), with the image ids of the grid for the rotary embedding;
- FLUX [dev] is guidance-distilled: the scale is a model input (`guidance`), so there is
  no classifier-free guidance and one model row per frame (`embedded_guidance`). Inversion
  walks with the source prompt at guidance 1, as the other backbones invert at guidance 1
  and as RF-Solver-Edit inverts FLUX; editing embeds the edit's `guidance_scale`;
- the walk is the checkpoint's `FlowMatchEulerDiscreteScheduler` with FLUX's sigmas
  (linspace(1, 1/n, n)) and dynamic shift, mu from the image-token count as diffusers'
  `calculate_shift` (`sampling_schedule`);
- the cross-frame attention goes into FLUX's double- and single-stream blocks
  (`core.flux_attention`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from diffusers.loaders import FluxLoraLoaderMixin
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.pipelines.flux.pipeline_flux_control import FluxControlPipeline

from ..core.flow_matching import FlowMatchSchedule
from ..core.flux_attention import FluxAttentionInjection
from ..core.options import EditOptions
from ..errors import InputError
from .backbone import FrameLike, Pix2VideoBase
from .inputs import check_prompt_tokens, padded_ids
from .sd15_controlnet import stack_control_images
from .sdxl import pack_text, unpack_text

MAX_SEQUENCE_LENGTH = 512
"""T5 tokens of a prompt, diffusers' FLUX default."""


class Pix2VideoFluxControlPipeline(FluxLoraLoaderMixin, Pix2VideoBase):
    """Text-guided video editing with FLUX.1 Depth [dev] or Canny [dev] (the control model
    is the checkpoint itself: its transformer reads the control latents beside the latents).

    `from_pretrained(folder_or_hub_id)` of a `FluxControlPipeline` checkpoint.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->transformer->vae"
    embedded_guidance = True

    def __init__(
        self,
        scheduler: FlowMatchEulerDiscreteScheduler,
        vae: AutoencoderKL,
        text_encoder,
        tokenizer,
        text_encoder_2,
        tokenizer_2,
        transformer: FluxTransformer2DModel,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
            scheduler=scheduler,
        )
        self._init_common()
        self.max_sequence_length = MAX_SEQUENCE_LENGTH

    @property
    def size_multiple(self) -> int:
        """Frame sides: multiples of the VAE's factor times the 2x2 packing."""
        return self.vae_scale_factor * 2

    def injection(self, options: EditOptions) -> FluxAttentionInjection:
        """FLUX blocks `options.inject_blocks` (the default set when None)."""
        return FluxAttentionInjection(
            self.transformer, options.inject_blocks, self.max_sequence_length
        )

    def sampling_schedule(
        self, num_inference_steps: int, latent_size: Sequence[int] | None = None
    ) -> FlowMatchSchedule:
        """`FluxControlPipeline`'s walk for latents of `latent_size` (h, w): its sigmas, and the
        shift mu of that many image tokens."""
        if latent_size is None:
            raise ValueError("FLUX's schedule depends on the latents' size: give latent_size.")
        tokens = (int(latent_size[0]) // 2) * (int(latent_size[1]) // 2)
        config = self.scheduler.config
        mu = calculate_shift(
            tokens,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        return FlowMatchSchedule.from_scheduler(
            self.scheduler, num_inference_steps, self.device, sigmas=sigmas, mu=mu
        )

    # ------------------------------------------------------------------ text
    @torch.inference_mode()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """(1, T5 tokens + 1, D): T5's states, then CLIP's pooled output (module doc)."""
        check_prompt_tokens(prompt, self.tokenizer_2, self.max_sequence_length)
        clip_ids = padded_ids(self.tokenizer, prompt)
        pooled = self.text_encoder(clip_ids.to(self.device)).pooler_output.float()
        t5_ids = padded_ids(self.tokenizer_2, prompt, self.max_sequence_length)
        states = self.text_encoder_2(t5_ids.to(self.device))[0].float()
        return pack_text(states, pooled)

    def encode_negative_prompt(self, prompt: str) -> torch.Tensor:
        """FLUX [dev] has no unconditional branch: only an empty negative prompt is taken."""
        if prompt:
            raise InputError(
                "FLUX [dev] models take no negative prompt (their guidance is embedded, without "
                "an unconditional branch): leave it out."
            )
        return self.encode_prompt("")

    # ------------------------------------------------------------------ conditioning
    def prepare_conditioning(
        self,
        frames: Sequence[FrameLike],
        depth_maps: torch.Tensor | np.ndarray | None = None,
        control_images: Sequence | None = None,
    ) -> torch.Tensor:
        """(N, C, h, w) control latents of the frames' control images (module doc).

        `control_images[i]` is frame i's depth or canny image, an H x W x 3 uint8 array (or
        PIL image) of the frames' size.
        """
        if depth_maps is not None:
            raise InputError(
                "A FLUX Control pipeline takes control images (control.py makes depth images), "
                "not depth maps."
            )
        if control_images is None:
            raise InputError(
                "A FLUX Control pipeline needs one control image per frame (its depth or canny "
                "image)."
            )
        rows = stack_control_images(frames, control_images, 1)
        return torch.cat([self.control_latents(row[None]) for row in rows])

    @torch.inference_mode()
    def control_latents(self, image: torch.Tensor) -> torch.Tensor:
        """(1, C, h, w) of one frame's (1, 3, H, W) uint8 control image."""
        config = self.vae.config
        pixels = 2.0 * (image.float() / 255.0) - 1.0  # diffusers' VaeImageProcessor
        pixels = pixels.to(device=self.device, dtype=self.vae.dtype)
        mean = self.vae.encode(pixels).latent_dist.mean
        return ((mean - config.shift_factor) * config.scaling_factor).float()

    def conditioning_shape(self, height: int, width: int) -> tuple[int, ...]:
        f = self.vae_scale_factor
        return (self.latent_channels, height // f, width // f)

    # ------------------------------------------------------------------ the model
    def model_output(
        self,
        latent: torch.Tensor,
        control: torch.Tensor,
        t: float,
        text: torch.Tensor,
        batch: int,
        guidance: float = 3.5,
    ) -> torch.Tensor:
        """The velocity (batch, C, h, w): latents and control latents packed into tokens
        side by side, the guidance scale embedded (module doc)."""
        dtype, device = self.transformer.dtype, latent.device
        embeds, pooled = unpack_text(text.to(dtype), self.transformer.config.pooled_projection_dim)
        channels, height, width = latent.shape[1:]
        pack = FluxControlPipeline._pack_latents
        x = latent.to(dtype).expand(batch, -1, -1, -1)
        c = control.to(device=device, dtype=dtype).expand(batch, -1, -1, -1)
        tokens = torch.cat(
            [pack(x, batch, channels, height, width), pack(c, batch, channels, height, width)],
            dim=2,
        )
        image_ids = FluxControlPipeline._prepare_latent_image_ids(
            batch, height // 2, width // 2, device, dtype
        )
        text_ids = torch.zeros(embeds.shape[1], 3, device=device, dtype=dtype)
        timestep = torch.full((batch,), t, dtype=torch.float32, device=device)
        scale = torch.full((batch,), guidance, dtype=torch.float32, device=device)
        velocity = self.transformer(
            hidden_states=tokens,
            timestep=timestep / 1000,
            guidance=scale if self.transformer.config.guidance_embeds else None,
            pooled_projections=pooled.expand(batch, -1),
            encoder_hidden_states=embeds.expand(batch, -1, -1),
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]
        f = self.vae_scale_factor
        return FluxControlPipeline._unpack_latents(velocity, height * f, width * f, f).float()
