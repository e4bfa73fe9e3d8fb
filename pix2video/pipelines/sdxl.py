"""The Pix2Video pipeline on SDXL-family checkpoints with one or more SDXL ControlNets.

SDXL (base 1.0 and its many fine-tunes) differs from SD 1.5 in its conditioning only, so
this module is conditioning only; the loop over (frame, step) is `core/edit_loop.py`, the
rest of the method `backbone.Pix2VideoBase`, the control images `control.py`'s:

- two text encoders (CLIP ViT-L and OpenCLIP bigG): the prompt embedding is both
  encoders' penultimate hidden states side by side, and the UNet (and every ControlNet)
  also reads the second encoder's pooled, projected embedding;
- "micro-conditioning" `add_time_ids`: original size, crop corner and target size, here
  the processing size, (0, 0) and the processing size, as diffusers' pipeline sets them
  when the image is not cropped;
- an empty negative prompt is zero embeddings (`force_zeros_for_empty_prompt`, what SDXL
  was trained with and what diffusers' SDXL pipelines do by default);
- the SDXL VAE overflows in float16: with a float16 model it runs in float32 whenever its
  config says `force_upcast` (as diffusers does); a fixed VAE (e.g. `madebyollin/
  sdxl-vae-fp16-fix`, `force_upcast: false`) stays in float16.

Both stages pass all of this: inversion (source prompt, guidance 1) and editing.

The shared loop hands a backbone one tensor of text embeddings per row (it concatenates the
negative and the edit prompt's for classifier-free guidance). The pooled embedding rides in
that tensor as one extra token row, zero-padded to the embedding width (`pack_text`), so
the loop, the job and their caches need not know that SDXL has two text inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from diffusers.loaders import StableDiffusionXLLoraLoaderMixin
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

from .inputs import check_prompt_tokens, padded_ids
from .scheduler import reference_scheduler
from .sd15_controlnet import Pix2VideoControlNetPipeline

SDXL_CONFIG = "stabilityai/stable-diffusion-xl-base-1.0"
"""The diffusers configs of an SDXL single file when no --model-config is given (local cache)."""


def pack_text(embeds: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """(rows, T + 1, D): the token embeddings, then the pooled embedding zero-padded to D."""
    row = embeds.new_zeros(embeds.shape[0], 1, embeds.shape[-1])
    row[:, 0, : pooled.shape[-1]] = pooled
    return torch.cat([embeds, row], dim=1)


def unpack_text(text: torch.Tensor, pooled_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of `pack_text`: (token embeddings, pooled embedding)."""
    return text[:, :-1], text[:, -1, :pooled_dim]


class Pix2VideoSDXLControlNetPipeline(
    StableDiffusionXLLoraLoaderMixin, Pix2VideoControlNetPipeline
):
    """Text-guided video editing with an SDXL-family checkpoint and SDXL ControlNets.

    `from_pretrained(folder_or_hub_id, controlnet=...)` or `.from_single_file(path,
    controlnet=..., config=...)` as for SD 1.5; LoRAs load into the UNet and both text
    encoders (diffusers' SDXL LoRA loader).
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"
    _optional_components = ["feature_extractor", "image_encoder"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder,
        text_encoder_2,
        tokenizer,
        tokenizer_2,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel | MultiControlNetModel | Sequence[ControlNetModel],
        scheduler,
        force_zeros_for_empty_prompt: bool = True,
        feature_extractor=None,
        image_encoder=None,
    ) -> None:
        super(Pix2VideoControlNetPipeline, self).__init__()
        if isinstance(controlnet, (list, tuple)):
            controlnet = MultiControlNetModel(controlnet) if len(controlnet) > 1 else controlnet[0]
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            controlnet=controlnet,
            scheduler=reference_scheduler(scheduler.config),
            feature_extractor=None,  # IP-Adapter parts: not used
            image_encoder=None,
        )
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        self._init_common()
        self.controlnet_scales = [1.0] * self.num_controlnets
        self.controlnet_evaluations = 0
        if vae.dtype == torch.float16 and vae.config.get("force_upcast", False):
            vae.to(torch.float32)  # SDXL's VAE overflows in float16 (diffusers upcasts too)

    @property
    def pooled_dim(self) -> int:
        """Width of the pooled text embedding the UNet reads (after its 6 size ids)."""
        config = self.unet.config
        return config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim

    # ------------------------------------------------------------------ text
    @torch.inference_mode()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """(1, 78, D): both encoders' penultimate states side by side, then the pooled embedding.

        As diffusers' SDXL pipelines (same prompt for both encoders); a prompt longer than
        the encoders' context is an error.
        """
        states, pooled = [], None
        for tokenizer, encoder in (
            (self.tokenizer, self.text_encoder),
            (self.tokenizer_2, self.text_encoder_2),
        ):
            check_prompt_tokens(prompt, tokenizer)
            ids = padded_ids(tokenizer, prompt)
            output = encoder(ids.to(self.device), output_hidden_states=True)
            states.append(output.hidden_states[-2])
            if output[0].ndim == 2:  # the projected, pooled embedding (second encoder)
                pooled = output[0]
        return pack_text(torch.cat(states, dim=-1), pooled).float()

    def encode_negative_prompt(self, prompt: str) -> torch.Tensor:
        """An empty negative prompt is zeros when the checkpoint says so (SDXL's training)."""
        embedding = self.encode_prompt(prompt)
        if prompt == "" and self.config.get("force_zeros_for_empty_prompt", True):
            return torch.zeros_like(embedding)
        return embedding

    def add_time_ids(self, height: int, width: int) -> torch.Tensor:
        """(1, 6) micro-conditioning: original size, crop top-left (0, 0), target size."""
        return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)

    # ------------------------------------------------------------------ the model
    def model_output(
        self,
        latent: torch.Tensor,
        control: torch.Tensor,
        t: int,
        text: torch.Tensor,
        batch: int,
    ) -> torch.Tensor:
        """The ControlNets' residuals, then the UNet, both with the added conditioning."""
        dtype = self.unet.dtype
        embeds, pooled = unpack_text(text.to(dtype), self.pooled_dim)
        x = latent.to(dtype).expand(batch, -1, -1, -1)
        embeds = embeds.expand(batch, -1, -1)
        height, width = (side * self.vae_scale_factor for side in latent.shape[-2:])
        added = {
            "text_embeds": pooled.expand(batch, -1),
            "time_ids": self.add_time_ids(height, width).to(x.device, dtype).expand(batch, -1),
        }
        down, mid = self.controlnet_residuals(x, control, t, embeds, batch, added_cond_kwargs=added)
        return self.unet(
            x,
            t,
            encoder_hidden_states=embeds,
            added_cond_kwargs=added,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample.float()
