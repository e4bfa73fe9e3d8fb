"""The Pix2Video pipeline on FLUX.1 [dev] with FLUX ControlNets (`FluxControlNetPipeline`'s
conditioning).

FLUX.1 [dev] itself reads only the latents; a FLUX ControlNet (InstantX, Shakker-Labs,
Jasper: `FluxControlNetModel`) reads the latents plus the control image's latents and adds
residuals to the transformer's double- and single-stream blocks. Everything but that is
`flux.FluxBase` (text, walk, embedded guidance, injection, control latents as
`FluxControlNetPipeline` makes them: VAE-encoded, (mean - shift) * scale, the posterior's
mean so a frame's conditioning is deterministic and cacheable):

- each ControlNet reads its own control latents (packed into 2x2 tokens as the latents),
  the timestep, the prompt, and the embedded guidance scale where its config has a guidance
  embedding (as diffusers: the first ControlNet's config decides for all);
- the residuals of several ControlNets are summed as `FluxMultiControlNetModel` sums them,
  each times its conditioning scale (`set_controlnet_scales`);
- the transformer reads them as `controlnet_block_samples` / `controlnet_single_block_samples`.

XLabs ControlNets (pixel control images through an `input_hint_block`) and Union ControlNets
(a control mode) are refused when loaded (`checkpoints.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from diffusers.models.controlnets.controlnet_flux import (
    FluxControlNetModel,
    FluxMultiControlNetModel,
)

from .control import ControlNetScales
from .flux import MAX_SEQUENCE_LENGTH, FluxBase


class Pix2VideoFluxControlNetPipeline(ControlNetScales, FluxBase):
    """Text-guided video editing with FLUX.1 [dev] and one or more FLUX ControlNets.

    `from_pretrained(folder_or_hub_id, controlnet=...)` of a FLUX.1 [dev] checkpoint;
    `controlnet` is a `FluxControlNetModel`, a list of them or a `FluxMultiControlNetModel`.
    `controlnet_scales` holds one conditioning scale per ControlNet (default 1.0 each).
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->controlnet->transformer->vae"
    _optional_components = ["image_encoder", "feature_extractor"]
    family = "FLUX ControlNet"

    def __init__(
        self,
        scheduler: FlowMatchEulerDiscreteScheduler,
        vae: AutoencoderKL,
        text_encoder,
        tokenizer,
        text_encoder_2,
        tokenizer_2,
        transformer: FluxTransformer2DModel,
        controlnet: FluxControlNetModel | FluxMultiControlNetModel | Sequence[FluxControlNetModel],
        image_encoder=None,
        feature_extractor=None,
    ) -> None:
        super().__init__()
        if isinstance(controlnet, (list, tuple)):
            controlnet = (
                FluxMultiControlNetModel(controlnet) if len(controlnet) > 1 else controlnet[0]
            )
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
            scheduler=scheduler,
            controlnet=controlnet,
            image_encoder=None,  # IP-Adapter parts: not used
            feature_extractor=None,
        )
        self._init_common()
        self.controlnet_scales = [1.0] * len(self.controlnets)
        self.controlnet_evaluations = 0
        self.max_sequence_length = MAX_SEQUENCE_LENGTH

    @property
    def num_controls(self) -> int:
        return self.num_controlnets

    def model_output(
        self,
        latent: torch.Tensor,
        control: torch.Tensor,
        t: float,
        text: torch.Tensor,
        batch: int,
        guidance: float = 3.5,
    ) -> torch.Tensor:
        """The velocity (batch, C, h, w): the ControlNets' residuals (summed), then the
        transformer, the guidance scale embedded (module doc)."""
        inputs, pack = self.transformer_inputs(latent, t, text, batch, guidance)
        controls = [pack(c) for c in self._split(control)]
        double, single = self.controlnet_residuals(inputs, controls, guidance)
        return self.unpack(
            self.transformer(
                **inputs,
                controlnet_block_samples=double,
                controlnet_single_block_samples=single,
                return_dict=False,
            )[0],
            latent,
        )

    def _split(self, control: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each ControlNet's control latents of the (·, C * k, h, w) conditioning rows."""
        return control.chunk(self.num_controlnets, dim=1)

    def controlnet_residuals(
        self, inputs: dict, controls: list[torch.Tensor], guidance: float
    ) -> tuple[list[torch.Tensor] | None, list[torch.Tensor] | None]:
        """The double- and single-stream residuals of all ControlNets, each times its scale,
        summed (`FluxMultiControlNetModel`), from the transformer's `inputs`; the guidance
        embedded as the first one's config says (diffusers' pipeline)."""
        scale = torch.full_like(inputs["timestep"], guidance)
        inputs = {
            **inputs,
            "guidance": scale if self.controlnets[0].config.guidance_embeds else None,
        }
        double = single = None
        for net, image, weight in zip(
            self.controlnets, controls, self.controlnet_scales, strict=True
        ):
            blocks, singles = net(
                **inputs, controlnet_cond=image, conditioning_scale=weight, return_dict=False
            )
            double = blocks if double is None else _add(double, blocks)
            single = singles if single is None else _add(single, singles)
        self.controlnet_evaluations += inputs["hidden_states"].shape[0] * self.num_controlnets
        return double, single


def _add(a: list[torch.Tensor] | None, b: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
    """Residual lists summed block by block (None: a ControlNet without such blocks)."""
    if a is None or b is None:
        return a if b is None else b
    return [x + y for x, y in zip(a, b, strict=True)]
