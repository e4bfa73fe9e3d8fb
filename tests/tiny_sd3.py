"""Tiny random models of the SD3/SD3.5 family, built in code (like diffusers' own SD3 tests).

- `build_sd3(folder)`: an SD3.5-topology pipeline saved in diffusers' layout: an
  `SD3Transformer2DModel` with patch 2, 16 latent channels, RMS q/k norms and a dual-attention
  first block (SD3.5 Medium's MMDiT-X), whose last block is context-pre-only; a 16-channel
  VAE with SD3's scaling and shift factors; CLIP-L- and CLIP-G-like text encoders with
  projections (widths differ, as the real ones do) on the bundled tiny CLIP tokenizer; a
  tiny T5 encoder with a Unigram tokenizer made here (`t5_tokenizer`); SD3's scheduler
  (`FlowMatchEulerDiscreteScheduler`, shift 3).
- `build_sd3_lora(folder, path)`: a random LoRA on the transformer's attention (SD3's LoRA saver).
- `build_sd3_controlnet(folder, seed, instantx)`: an SD3 ControlNet of the same width whose
  zero-initialised outputs (`controlnet_blocks`, `pos_embed_input`) get random weights (at
  zero it has no effect and tests nothing). `instantx=True` is the InstantX kind (zero pooled
  text, control latents without the VAE shift); False reads both. `sd35=True` is the kind of
  Stability's SD3.5 ControlNets: no text input, the transformer's position embedding.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_sd15 import ASSETS, build_lora

HEADS, HEAD_DIM = 2, 8  # inner width 16
CLIP_L, CLIP_G, T5_WIDTH = 16, 24, 48
WORDS = (
    "a an the of in on at with photo painting watercolor oil sketch cat dog car swan lake "
    "street snow red blue green sports man woman bird tree"
).split()


def t5_tokenizer():
    """A T5 tokenizer (Unigram over a few words and the letters), made without any download."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -3.0) for w in WORDS]
    pieces += [(c, -6.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,'"]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def _clip(hidden: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(
        CLIPTextConfig(
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
    )


def _t5(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=vocab_size,
            d_model=T5_WIDTH,
            d_ff=64,
            d_kv=12,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
        )
    )


TRANSFORMER_KWARGS = dict(
    sample_size=8,
    patch_size=2,
    in_channels=16,
    attention_head_dim=HEAD_DIM,
    num_attention_heads=HEADS,
    joint_attention_dim=T5_WIDTH,
    caption_projection_dim=HEADS * HEAD_DIM,
    pooled_projection_dim=CLIP_L + CLIP_G,
    out_channels=16,
    pos_embed_max_size=16,
    qk_norm="rms_norm",
)


def build_sd3(folder: Path, num_layers: int = 4) -> Path:
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTokenizer

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        num_layers=num_layers, dual_attention_layers=(0,), **TRANSFORMER_KWARGS
    )
    vae = AutoencoderKL(
        block_out_channels=[8, 8, 16, 16],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=16,
        norm_num_groups=4,
        layers_per_block=1,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    tokenizer = CLIPTokenizer.from_pretrained(ASSETS / "tokenizer")
    tokenizer_3 = t5_tokenizer()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=_clip(CLIP_L),
        tokenizer=tokenizer,
        text_encoder_2=_clip(CLIP_G),
        tokenizer_2=tokenizer,
        text_encoder_3=_t5(len(tokenizer_3)),
        tokenizer_3=tokenizer_3,
    )
    pipe.save_pretrained(folder)
    return folder


def build_sd3_controlnet(
    folder: Path, seed: int, instantx: bool = False, sd35: bool = False
) -> Path:
    from diffusers.models.controlnets.controlnet_sd3 import SD3ControlNetModel

    torch.manual_seed(seed)
    kwargs = dict(TRANSFORMER_KWARGS, force_zeros_for_pooled_projection=instantx)
    if sd35:  # no text, no position embedding of its own (the transformer's), single blocks
        kwargs.update(joint_attention_dim=None, use_pos_embed=False, qk_norm=None)
    controlnet = SD3ControlNetModel(num_layers=2, **kwargs)
    with torch.no_grad():  # zero-initialised: no effect at all
        for linear in controlnet.controlnet_blocks:
            linear.weight.normal_(0, 0.3)
            linear.bias.normal_(0, 0.3)
        projection = controlnet.pos_embed_input.proj
        projection.weight.normal_(0, 1 / projection.weight[0].numel() ** 0.5)
        projection.bias.normal_(0, 0.1)
    controlnet.save_pretrained(folder)
    return folder


def build_sd3_lora(folder: Path, path: Path) -> Path:
    """A random rank-4 LoRA on the transformer's attention projections, one .safetensors file."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    return build_lora(folder, path, StableDiffusion3Pipeline, SD3Transformer2DModel, "transformer")


SD3_RENAMES = (  # diffusers' name -> the original (Stability's) one; the inverse of diffusers'
    # `convert_sd3_transformer_checkpoint_to_diffusers`, checked by a round trip in the tests
    (r"^pos_embed\.pos_embed$", "pos_embed"),
    (r"^pos_embed\.proj\.", "x_embedder.proj."),
    (r"^time_text_embed\.timestep_embedder\.linear_1\.", "t_embedder.mlp.0."),
    (r"^time_text_embed\.timestep_embedder\.linear_2\.", "t_embedder.mlp.2."),
    (r"^time_text_embed\.text_embedder\.linear_1\.", "y_embedder.mlp.0."),
    (r"^time_text_embed\.text_embedder\.linear_2\.", "y_embedder.mlp.2."),
    (r"^proj_out\.", "final_layer.linear."),
    (r"^norm_out\.linear\.", "final_layer.adaLN_modulation.1."),
    (r"\.attn\.norm_q\.", ".x_block.attn.ln_q."),
    (r"\.attn\.norm_k\.", ".x_block.attn.ln_k."),
    (r"\.attn\.norm_added_q\.", ".context_block.attn.ln_q."),
    (r"\.attn\.norm_added_k\.", ".context_block.attn.ln_k."),
    (r"\.attn2\.norm_q\.", ".x_block.attn2.ln_q."),
    (r"\.attn2\.norm_k\.", ".x_block.attn2.ln_k."),
    (r"\.attn\.to_out\.0\.", ".x_block.attn.proj."),
    (r"\.attn2\.to_out\.0\.", ".x_block.attn2.proj."),
    (r"\.attn\.to_add_out\.", ".context_block.attn.proj."),
    (r"\.norm1\.linear\.", ".x_block.adaLN_modulation.1."),
    (r"\.norm1_context\.linear\.", ".context_block.adaLN_modulation.1."),
    (r"\.ff\.net\.0\.proj\.", ".x_block.mlp.fc1."),
    (r"\.ff\.net\.2\.", ".x_block.mlp.fc2."),
    (r"\.ff_context\.net\.0\.proj\.", ".context_block.mlp.fc1."),
    (r"\.ff_context\.net\.2\.", ".context_block.mlp.fc2."),
    (r"^transformer_blocks\.", "joint_blocks."),
)
SD3_QKV = {  # q, k, v of diffusers -> one original qkv
    "attn.to_{}": "x_block.attn.qkv",
    "attn.add_{}_proj": "context_block.attn.qkv",
    "attn2.to_{}": "x_block.attn2.qkv",
}


def sd3_transformer_to_original(state: dict) -> dict:
    """An SD3 transformer's diffusers state dict in Stability's single-file layout (with the
    `model.diffusion_model.` prefix), as sd3.5_*.safetensors hold it."""
    import re

    state, out = dict(state), {}
    last = max(int(k.split(".")[1]) for k in state if k.startswith("transformer_blocks.")) + 1
    for i in range(last):
        for pattern, original in SD3_QKV.items():
            for kind in ("weight", "bias"):
                names = [f"transformer_blocks.{i}.{pattern.format(x)}.{kind}" for x in "qkv"]
                if names[0] in state:
                    out[f"joint_blocks.{i}.{original}.{kind}"] = torch.cat(
                        [state.pop(n) for n in names]
                    )
    for key, value in state.items():
        name = key
        for pattern, replacement in SD3_RENAMES:
            name = re.sub(pattern, replacement, name)
        swapped = name.startswith("final_layer.adaLN") or name.startswith(
            f"joint_blocks.{last - 1}.context_block.adaLN"
        )
        out[name] = torch.cat(value.chunk(2)[::-1]) if swapped else value
    return {f"model.diffusion_model.{k}": v.contiguous() for k, v in out.items()}
