"""Tiny random FLUX.1 Control [dev]-topology models, built in code (like diffusers' own FLUX tests).

- `build_flux_control(folder)`: a `FluxControlPipeline` saved in diffusers' layout: a
  `FluxTransformer2DModel` with guidance embedding that reads 2 x the packed latent
  channels (latents and control latents side by side, as FLUX.1 Depth/Canny [dev]: 4
  latent channels x 4 packed x 2 = 32 in, 16 out), 2 double- and 3 single-stream blocks,
  RoPE axes summing to the head width; a 4-channel VAE with FLUX's scaling and shift
  factors; a CLIP-L-like text encoder (pooled output) on the bundled tiny CLIP tokenizer;
  a tiny T5 with the Unigram tokenizer made locally (`tiny_sd3.t5_tokenizer`); FLUX's
  scheduler (dynamic shift).
- `build_flux_lora(folder, path)`: a random LoRA on the transformer's attention (FLUX's saver).
- `flux_variant(folder, out, **config)`: a copy whose transformer config is changed
  (schnell's `guidance_embeds: false`, a plain text-to-image FLUX's in_channels).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from tiny_sd3 import _t5, t5_tokenizer
from tiny_sd15 import ASSETS, build_lora

HEADS, HEAD_DIM = 2, 8  # inner width 16
CLIP_WIDTH = 16
LATENT_CHANNELS = 4
TRANSFORMER_KWARGS = dict(
    patch_size=1,
    in_channels=2 * 4 * LATENT_CHANNELS,
    out_channels=4 * LATENT_CHANNELS,
    num_layers=2,
    num_single_layers=3,
    attention_head_dim=HEAD_DIM,
    num_attention_heads=HEADS,
    joint_attention_dim=48,  # tiny_sd3's T5 width
    pooled_projection_dim=CLIP_WIDTH,
    guidance_embeds=True,
    axes_dims_rope=(2, 2, 4),
)
SCHEDULER_KWARGS = dict(
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)


def _clip():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=541,  # the bundled tiny tokenizer's
            hidden_size=CLIP_WIDTH,
            intermediate_size=2 * CLIP_WIDTH,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            hidden_act="gelu",
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        )
    )


def build_flux_control(folder: Path, control: bool = True) -> Path:
    """FLUX.1 Depth/Canny [dev]'s topology; `control=False`: FLUX.1 [dev]'s (a `FluxPipeline`
    whose transformer reads the packed latents only, for FLUX ControlNets)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxControlPipeline,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTokenizer

    torch.manual_seed(0)
    in_channels = TRANSFORMER_KWARGS["in_channels"] // (1 if control else 2)
    transformer = FluxTransformer2DModel(**{**TRANSFORMER_KWARGS, "in_channels": in_channels})
    vae = AutoencoderKL(
        block_out_channels=[8, 8, 16, 16],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        layers_per_block=1,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    tokenizer_2 = t5_tokenizer()
    pipe = (FluxControlPipeline if control else FluxPipeline)(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_KWARGS),
        vae=vae,
        text_encoder=_clip(),
        tokenizer=CLIPTokenizer.from_pretrained(ASSETS / "tokenizer"),
        text_encoder_2=_t5(len(tokenizer_2)),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.save_pretrained(folder)
    return folder


def build_flux_controlnet(
    folder: Path, path: Path, num_layers: int = 1, num_single_layers: int = 2, seed: int = 1
) -> Path:
    """A FLUX ControlNet (InstantX's kind: VAE-encoded control images) for the FLUX.1 [dev] in
    `folder`, fewer blocks than the transformer (diffusers repeats their residuals over
    intervals); the zero-initialised outputs (`controlnet_blocks`, `controlnet_x_embedder`)
    get random weights, since at zero it has no effect and tests nothing."""
    from diffusers import FluxTransformer2DModel
    from diffusers.models.controlnets.controlnet_flux import FluxControlNetModel

    transformer = FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer")
    torch.manual_seed(seed)
    net = FluxControlNetModel.from_transformer(
        transformer,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=HEAD_DIM,
        num_attention_heads=HEADS,
        load_weights_from_transformer=False,
    )
    with torch.no_grad():
        for linear in [*net.controlnet_blocks, *net.controlnet_single_blocks]:
            linear.weight.normal_(0, 0.3)
            linear.bias.normal_(0, 0.3)
        net.controlnet_x_embedder.weight.normal_(0, 0.3)
        net.controlnet_x_embedder.bias.normal_(0, 0.1)
    net.save_pretrained(path)
    return path


def flux_variant(folder: Path, out: Path, **config) -> Path:
    """A copy of the saved model whose transformer config reads `config` (weights unread)."""
    shutil.copytree(folder, out)
    path = out / "transformer" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    return out


def build_flux_lora(folder: Path, path: Path) -> Path:
    """A random rank-4 LoRA on the transformer's attention projections, one .safetensors file."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    return build_lora(folder, path, FluxPipeline, FluxTransformer2DModel, "transformer")
