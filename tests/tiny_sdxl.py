"""Tiny random models of the SDXL family, built in code (like diffusers' own SDXL tests).

- `build_sdxl(folder)`: an SDXL-topology pipeline: a UNet whose first block has no
  attention, deeper transformer stacks further down (`transformer_layers_per_block`),
  linear projections, and the added "text_time" conditioning (pooled text embedding +
  size/crop ids); two text encoders (a CLIP-L-like one and a bigG-like one with a
  projection, as wide as its hidden size, whose pooled output the UNet reads); SDXL's VAE
  scaling factor and `force_upcast`, with decoder activations that overflow float16 as the
  real SDXL VAE's do; SDXL's scheduler config.
- `build_sdxl_controlnet(folder, seed)`: an SDXL ControlNet of the same topology
  (`ControlNetModel.from_unet`), its zero-initialised output convolutions made random
  (as `tiny_sd15.build_controlnet` does, for the same reason).
- `save_original_sdxl_checkpoint(folder, path)`: the pipeline in the original SDXL
  single-file layout (`model.diffusion_model.*`, `first_stage_model.*`,
  `conditioner.embedders.0.transformer.*` for CLIP-L and the OpenCLIP layout under
  `conditioner.embedders.1.model.*` for the second encoder).
- `build_sdxl_lora(folder, path)`: a random LoRA on the UNet's attention.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_sd15 import (
    ASSETS,
    _clip_to_original,
    _unet_to_original,
    _vae_to_original,
    build_lora,
    tiny_unet,
    tiny_vae,
    with_visible_control,
)

TIME_EMBED = 8  # addition_time_embed_dim: 6 ids (original size, crop, target size) x 8
VAE_GAIN = 1e5  # the decoder's first activations overflow float16 (max 65504); GroupNorm
# rescales them further on, so float32 decodes normally: the SDXL VAE's float16 failure
TEXT_1, TEXT_2 = 16, 32  # hidden sizes: they must differ (diffusers tells them apart by width)
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")  # attention in the deeper block only
UNET_KWARGS = dict(
    block_out_channels=(16, 32),
    layers_per_block=2,
    in_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    transformer_layers_per_block=(1, 2),
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=TIME_EMBED,
    projection_class_embeddings_input_dim=6 * TIME_EMBED + TEXT_2,
    cross_attention_dim=TEXT_1 + TEXT_2,
    norm_num_groups=4,
)


def _text_config(hidden: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=541,  # the bundled tiny tokenizer's
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=hidden,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def build_sdxl(folder: Path) -> Path:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    unet = tiny_unet(UP_BLOCKS, UNET_KWARGS)
    vae = tiny_vae(scaling_factor=0.13025, force_upcast=True)
    with torch.no_grad():  # activations beyond float16's range, as in SDXL's own VAE
        vae.decoder.conv_in.weight.mul_(VAE_GAIN)
        vae.decoder.conv_in.bias.mul_(VAE_GAIN)
    tokenizer = CLIPTokenizer.from_pretrained(ASSETS / "tokenizer")
    scheduler = EulerDiscreteScheduler(  # SDXL base's scheduler config
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(_text_config(TEXT_1)),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(TEXT_2)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def build_sdxl_controlnet(folder: Path, seed: int) -> Path:
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    unet = tiny_unet(UP_BLOCKS, UNET_KWARGS)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    with_visible_control(controlnet).save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------- original layout
_OPENCLIP_NAMES = (
    ("layer_norm1", "ln_1"),
    ("layer_norm2", "ln_2"),
    ("mlp.fc1", "mlp.c_fc"),
    ("mlp.fc2", "mlp.c_proj"),
    ("self_attn.out_proj", "attn.out_proj"),
)


def _open_clip_to_original(state: dict) -> dict:
    """A `CLIPTextModelWithProjection` state in OpenCLIP's layout (q/k/v as one in_proj)."""
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    out = {
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
        "text_projection": state.pop("text_projection.weight").T.contiguous(),
    }
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for n in layers:
        prefix = f"encoder.layers.{n}."
        for leaf in ("weight", "bias"):
            qkv = [state.pop(f"{prefix}self_attn.{p}_proj.{leaf}") for p in "qkv"]
            out[f"transformer.resblocks.{n}.attn.in_proj_{leaf}"] = torch.cat(qkv)
            for ours, theirs in _OPENCLIP_NAMES:
                out[f"transformer.resblocks.{n}.{theirs}.{leaf}"] = state.pop(
                    f"{prefix}{ours}.{leaf}"
                )
    assert not state, f"unmapped text encoder keys: {sorted(state)}"
    return out


def save_original_sdxl_checkpoint(folder: Path, path: Path) -> Path:
    """The diffusers SDXL pipeline in `folder` as one original-layout `.safetensors` file."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    text = CLIPTextModel.from_pretrained(folder / "text_encoder")
    text_2 = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2")
    unet_state = unet.state_dict()
    added = {  # the pooled text + size ids embedding: `label_emb` in the original layout
        "model.diffusion_model." + original: unet_state.pop(ours)
        for ours, original in DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"].items()
    }
    state = {
        **_unet_to_original(unet_state, dict(unet.config)),
        **added,
        **_vae_to_original(vae.state_dict(), dict(vae.config)),
        **_clip_to_original("conditioner.embedders.0.transformer.", text.state_dict()),
        **{
            "conditioner.embedders.1.model." + k: v
            for k, v in _open_clip_to_original(text_2.state_dict()).items()
        },
    }
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def build_sdxl_lora(folder: Path, path: Path) -> Path:
    """A random rank-4 LoRA on the SDXL UNet's attention projections, one .safetensors file."""
    from diffusers import StableDiffusionXLPipeline

    return build_lora(folder, path, StableDiffusionXLPipeline)
