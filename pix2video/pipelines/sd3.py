"""The Pix2Video pipeline on SD3 / SD3.5 with one or more SD3 ControlNets.

SD3 is a rectified-flow MMDiT; what differs from the UNet backbones is conditioning and
the walk, so this module is those only (the loop is `core/edit_loop.py`, the rest of the
method `backbone.Pix2VideoBase`):

- three text encoders, as diffusers' `StableDiffusion3Pipeline.encode_prompt` uses them:
  CLIP-L's and CLIP-G's penultimate states side by side (77 tokens), zero-padded to T5's
  width, then T5's states (`max_sequence_length` tokens; zeros without T5); the pooled
  embedding is both CLIPs' projected outputs side by side. It rides in the one text tensor
  as SDXL's does (`sdxl.pack_text`);
- a 16-channel VAE with a shift: latent = (mean - shift_factor) * scaling_factor
  (`Pix2VideoBase.encode_frames`);
- the walk is the checkpoint's `FlowMatchEulerDiscreteScheduler` (`sampling_schedule` ->
  `core.flow_matching.FlowMatchSchedule`): the model output is the velocity, inversion runs
  the same sigmas backwards, the guided update uses x0 = x - sigma * v;
- control images become control *latents* as diffusers' `StableDiffusion3ControlNetPipeline`
  makes them: in [-1, 1], VAE-encoded, less the VAE's shift (none for ControlNets with
  `force_zeros_for_pooled_projection`, the InstantX ones, which also read zero pooled
  text), times the scaling factor. One difference: the posterior's mean, not a sample
  (diffusers draws one without a generator), so a frame's conditioning is deterministic and
  cacheable like every other backbone's;
- the cross-frame attention goes into the joint attention of a set of blocks
  (`core.joint_attention`), not a UNet decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePath

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from diffusers.loaders import SD3LoraLoaderMixin
from diffusers.models.controlnets.controlnet_sd3 import SD3ControlNetModel, SD3MultiControlNetModel

from ..core.flow_matching import FlowMatchSchedule
from ..core.joint_attention import JointAttentionInjection
from ..core.options import EditOptions
from ..errors import InputError, ModelNotAvailableError
from .backbone import FrameLike, Pix2VideoBase
from .control import ControlNetScales
from .inputs import check_prompt_tokens, padded_ids
from .offload import Offloadable
from .sd15_controlnet import stack_control_images
from .sdxl import pack_text, unpack_text
from .text_encoders import PromptMemory

MAX_SEQUENCE_LENGTH = 256
"""T5 tokens of a prompt, diffusers' SD3 default."""


def check_not_turbo(model: str) -> None:
    """Refuse SD3.5 Large Turbo and its kind, told by the name (their configs equal the base's)."""
    if "turbo" in PurePath(str(model).rstrip("/")).name.lower():
        raise ModelNotAvailableError(
            f"The model '{model}' is a few-step (Turbo) SD3 checkpoint: Pix2Video inverts every "
            "frame at the edit's step count, and at 1-4 steps that inversion does not map back "
            "to the frames, so it cannot edit them; use the model it was distilled from (e.g. "
            "stabilityai/stable-diffusion-3.5-large) with 20-50 steps."
        )


class Pix2VideoSD3ControlNetPipeline(
    ControlNetScales, Offloadable, PromptMemory, SD3LoraLoaderMixin, Pix2VideoBase
):
    """Text-guided video editing with an SD3/SD3.5 checkpoint and SD3 ControlNets.

    `from_pretrained(folder_or_hub_id, controlnet=...)`; `controlnet` is an
    `SD3ControlNetModel`, a list of them or an `SD3MultiControlNetModel`.
    `controlnet_scales` holds one conditioning scale per ControlNet (default 1.0 each).
    """

    model_cpu_offload_seq = (
        "text_encoder->text_encoder_2->text_encoder_3->controlnet->transformer->vae"
    )
    _optional_components = ["text_encoder_3", "tokenizer_3", "image_encoder", "feature_extractor"]

    def __init__(
        self,
        transformer: SD3Transformer2DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
        vae: AutoencoderKL,
        text_encoder,
        tokenizer,
        text_encoder_2,
        tokenizer_2,
        text_encoder_3,
        tokenizer_3,
        controlnet: SD3ControlNetModel | SD3MultiControlNetModel | Sequence[SD3ControlNetModel],
        image_encoder=None,
        feature_extractor=None,
    ) -> None:
        super().__init__()
        if isinstance(controlnet, (list, tuple)):
            controlnet = (
                SD3MultiControlNetModel(controlnet) if len(controlnet) > 1 else controlnet[0]
            )
        if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
            scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            text_encoder_3=text_encoder_3,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            tokenizer_3=tokenizer_3,
            transformer=transformer,
            scheduler=scheduler,
            controlnet=controlnet,
            image_encoder=None,  # IP-Adapter parts: not used
            feature_extractor=None,
        )
        self._init_common()
        for net in self.controlnets:
            if net.config.get("use_pos_embed", True) is False:  # SD3.5's: the transformer's
                net.pos_embed = net._get_pos_embed_from_transformer(transformer)
        self.controlnet_scales = [1.0] * len(self.controlnets)
        self.controlnet_evaluations = 0
        self.max_sequence_length = MAX_SEQUENCE_LENGTH

    @property
    def size_multiple(self) -> int:
        """Frame sides: multiples of the VAE's factor times the transformer's patch."""
        return self.vae_scale_factor * self.transformer.config.patch_size

    @property
    def pooled_dim(self) -> int:
        return self.transformer.config.pooled_projection_dim

    def injection(self, options: EditOptions) -> JointAttentionInjection:
        """Joint attention of `options.inject_blocks` (the default set when None)."""
        return JointAttentionInjection(self.transformer, options.inject_blocks)

    def sampling_schedule(
        self, num_inference_steps: int, latent_size: Sequence[int] | None = None
    ) -> FlowMatchSchedule:
        return FlowMatchSchedule.from_scheduler(self.scheduler, num_inference_steps, self.device)

    # ------------------------------------------------------------------ text
    @torch.inference_mode()
    def encode_text(self, prompt: str) -> torch.Tensor:
        """(1, 77 + T5 tokens + 1, D): the prompt embedding, then the pooled one (module doc).

        A prompt longer than T5 reads (without T5: CLIP) is an error; CLIP reads its first
        77 tokens, as in diffusers.
        """
        self._check_prompt_length(prompt)
        states, pooled = [], []
        for tokenizer, encoder in (
            (self.tokenizer, self.text_encoder),
            (self.tokenizer_2, self.text_encoder_2),
        ):
            ids = padded_ids(tokenizer, prompt)
            output = encoder(ids.to(self.device), output_hidden_states=True)
            states.append(output.hidden_states[-2].float())
            pooled.append(output[0].float())
        t5 = self._t5_states(prompt)
        clip = torch.cat(states, dim=-1)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return pack_text(torch.cat([clip, t5], dim=-2), torch.cat(pooled, dim=-1))

    def _t5_states(self, prompt: str) -> torch.Tensor:
        """(1, max_sequence_length, D) T5 states of `prompt`; zeros without T5 (as diffusers)."""
        if self.text_encoder_3 is None:
            width = self.transformer.config.joint_attention_dim
            return torch.zeros(1, self.max_sequence_length, width, device=self.device)
        ids = padded_ids(self.tokenizer_3, prompt, self.max_sequence_length)
        return self.text_encoder_3(ids.to(self.device))[0].float()

    def _check_prompt_length(self, prompt: str) -> None:
        """T5 reads the longest prompt (`max_sequence_length`); without T5, CLIP's 77 tokens."""
        if self.text_encoder_3 is not None:
            check_prompt_tokens(prompt, self.tokenizer_3, self.max_sequence_length)
        else:
            check_prompt_tokens(prompt, self.tokenizer)

    # ------------------------------------------------------------------ conditioning
    def prepare_conditioning(
        self,
        frames: Sequence[FrameLike],
        depth_maps: torch.Tensor | np.ndarray | None = None,
        control_images: Sequence | None = None,
    ) -> torch.Tensor:
        """(N, C * k, h, w) control latents, the k ControlNets' stacked on channels (module doc).

        `control_images[i]` is frame i's image (one ControlNet) or its list of images, one per
        ControlNet, each an H x W x 3 uint8 array (or PIL image) of the frames' size.
        """
        if depth_maps is not None:
            raise InputError(
                "A ControlNet pipeline takes control images (control.py makes depth images), "
                "not depth maps."
            )
        rows = stack_control_images(frames, control_images, self.num_controlnets)
        return torch.cat([self.control_latents(row[None]) for row in rows])

    @torch.inference_mode()
    def control_latents(self, images: torch.Tensor) -> torch.Tensor:
        """(1, C * k, h, w) of one frame's (1, 3k, H, W) uint8 control images."""
        config = self.vae.config
        latents = []
        for net, image in zip(self.controlnets, images.split(3, dim=1), strict=True):
            pixels = 2.0 * (image.float() / 255.0) - 1.0  # diffusers' VaeImageProcessor
            pixels = pixels.to(device=self.device, dtype=self.vae.dtype)
            mean = self.vae.encode(pixels).latent_dist.mean
            shift = 0.0 if net.config.force_zeros_for_pooled_projection else config.shift_factor
            latents.append(((mean - shift) * config.scaling_factor).float())
        return torch.cat(latents, dim=1)

    def conditioning_shape(self, height: int, width: int) -> tuple[int, ...]:
        f = self.vae_scale_factor
        return (self.latent_channels * self.num_controlnets, height // f, width // f)

    # ------------------------------------------------------------------ the model
    def model_output(
        self,
        latent: torch.Tensor,
        control: torch.Tensor,
        t: float,
        text: torch.Tensor,
        batch: int,
    ) -> torch.Tensor:
        """The velocity: the ControlNets' block residuals (summed), then the transformer."""
        dtype = self.transformer.dtype
        embeds, pooled = unpack_text(text.to(dtype), self.pooled_dim)
        x = latent.to(dtype).expand(batch, -1, -1, -1)
        embeds, pooled = embeds.expand(batch, -1, -1), pooled.expand(batch, -1)
        timestep = torch.full((batch,), t, dtype=torch.float32, device=x.device)
        residuals = self.controlnet_residuals(x, control, timestep, embeds, pooled)
        return self.transformer(
            hidden_states=x,
            timestep=timestep,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            block_controlnet_hidden_states=residuals,
            return_dict=False,
        )[0].float()

    def controlnet_residuals(
        self,
        x: torch.Tensor,
        control: torch.Tensor,
        timestep: torch.Tensor,
        embeds: torch.Tensor,
        pooled: torch.Tensor,
    ) -> list[torch.Tensor]:
        """Each block's residual from the ControlNets, summed as `SD3MultiControlNetModel`
        sums them; each reads the text as its config says (diffusers' pipeline reads the
        first ControlNet's config for all)."""
        batch = x.shape[0]
        images = control.to(device=x.device, dtype=x.dtype).expand(batch, -1, -1, -1)
        images = images.chunk(self.num_controlnets, dim=1)
        residuals = None
        for net, image, scale in zip(self.controlnets, images, self.controlnet_scales, strict=True):
            zero_pooled = net.config.force_zeros_for_pooled_projection
            samples = net(
                hidden_states=x,
                timestep=timestep,
                encoder_hidden_states=embeds if net.config.joint_attention_dim else None,
                pooled_projections=torch.zeros_like(pooled) if zero_pooled else pooled,
                controlnet_cond=image,
                conditioning_scale=scale,
                return_dict=False,
            )[0]
            if residuals is None:
                residuals = list(samples)
            else:
                residuals = [a + b for a, b in zip(residuals, samples, strict=True)]
        self.controlnet_evaluations += batch * self.num_controlnets
        return residuals
