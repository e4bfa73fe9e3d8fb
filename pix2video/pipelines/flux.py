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
from .offload import Offloadable
from .sd15_controlnet import stack_control_images
from .sdxl import pack_text, unpack_text
from .text_encoders import PromptMemory

MAX_SEQUENCE_LENGTH = 512
"""T5 tokens of a prompt, diffusers' FLUX default."""


class FluxBase(Offloadable, PromptMemory, FluxLoraLoaderMixin, Pix2VideoBase):
    """What both FLUX [dev] pipelines share (module doc): text, walk, injection, control
    latents. A subclass registers its modules, calls `_init_common()` and gives
    `model_output`; `num_controls` control images per frame become its control latents."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->transformer->vae"
    embedded_guidance = True
    family = "FLUX Control"
    """The pipeline's name in its error sentences."""

    @property
    def num_controls(self) -> int:
        """Control images per frame (one for FLUX.1 Depth/Canny: the model's own)."""
        return 1

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
    def encode_text(self, prompt: str) -> torch.Tensor:
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
        """(N, C * k, h, w) control latents of the frames' k control images (module doc).

        `control_images[i]` is frame i's depth or canny image (k = 1) or its list of k images
        (one per ControlNet), each an H x W x 3 uint8 array (or PIL image) of the frames' size.
        """
        if depth_maps is not None:
            raise InputError(
                f"A {self.family} pipeline takes control images (control.py makes depth "
                "images), not depth maps."
            )
        if control_images is None:
            raise InputError(
                f"A {self.family} pipeline needs one control image per frame (its depth or "
                "canny image)."
            )
        rows = stack_control_images(frames, control_images, self.num_controls)
        return torch.cat([self.control_latents(row[None]) for row in rows])

    @torch.inference_mode()
    def control_latents(self, images: torch.Tensor) -> torch.Tensor:
        """(1, C * k, h, w) of one frame's (1, 3k, H, W) uint8 control images."""
        config = self.vae.config
        latents = []
        for image in images.split(3, dim=1):
            pixels = 2.0 * (image.float() / 255.0) - 1.0  # diffusers' VaeImageProcessor
            pixels = pixels.to(device=self.device, dtype=self.vae.dtype)
            mean = self.vae.encode(pixels).latent_dist.mean
            latents.append(((mean - config.shift_factor) * config.scaling_factor).float())
        return torch.cat(latents, dim=1)

    def conditioning_shape(self, height: int, width: int) -> tuple[int, ...]:
        f = self.vae_scale_factor
        return (self.latent_channels * self.num_controls, height // f, width // f)

    def transformer_inputs(
        self, latent: torch.Tensor, t: float, text: torch.Tensor, batch: int, guidance: float
    ):
        """(inputs, pack) for `batch` rows of (·, C, h, w) latents: the keyword arguments of a
        FLUX transformer call (the latents packed as diffusers' `_pack_latents` packs them, the
        grid's ids for the rotary embedding, the text's (zeros), the embedded guidance where the
        model has it), and `pack` bound to their shape for other latents of that grid."""
        dtype, device = self.transformer.dtype, latent.device
        channels, height, width = latent.shape[1:]

        def pack(x: torch.Tensor) -> torch.Tensor:
            x = x.to(device=device, dtype=dtype).expand(batch, -1, -1, -1)
            return FluxControlPipeline._pack_latents(x, batch, channels, height, width)

        embeds, pooled = unpack_text(text.to(dtype), self.transformer.config.pooled_projection_dim)
        text_ids = torch.zeros(self.max_sequence_length, 3, device=device, dtype=dtype)
        scale = torch.full((batch,), guidance, dtype=torch.float32, device=device)
        inputs = dict(
            hidden_states=pack(latent),
            timestep=torch.full((batch,), t, dtype=torch.float32, device=device) / 1000,
            guidance=scale if self.transformer.config.guidance_embeds else None,
            pooled_projections=pooled.expand(batch, -1),
            encoder_hidden_states=embeds.expand(batch, -1, -1),
            txt_ids=text_ids[: embeds.shape[1]],
            img_ids=FluxControlPipeline._prepare_latent_image_ids(
                batch, height // 2, width // 2, device, dtype
            ),
        )
        return inputs, pack

    def unpack(self, tokens: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """(batch, C, h, w) float32 of the transformer's output tokens for `latent`'s grid."""
        f = self.vae_scale_factor
        height, width = latent.shape[-2:]
        return FluxControlPipeline._unpack_latents(tokens, height * f, width * f, f).float()


class Pix2VideoFluxControlPipeline(FluxBase):
    """Text-guided video editing with FLUX.1 Depth [dev] or Canny [dev] (the control model
    is the checkpoint itself: its transformer reads the control latents beside the latents).

    `from_pretrained(folder_or_hub_id)` of a `FluxControlPipeline` checkpoint.
    """

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
        inputs, pack = self.transformer_inputs(latent, t, text, batch, guidance)
        inputs["hidden_states"] = torch.cat([inputs["hidden_states"], pack(control)], dim=2)
        velocity = self.transformer(**inputs, return_dict=False)[0]
        return self.unpack(velocity, latent)
