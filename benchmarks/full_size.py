"""The full-size SD2-depth architecture with random weights, built from its config (no download).

Speed and memory depend on the architecture, not on the weight values, so this stands in for
`stabilityai/stable-diffusion-2-depth` in benchmarks. The depth estimator is the tiny DPT of
the bundled model (benchmarks pass precomputed depth, so it is never timed).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from pix2video.models import BUNDLED_MODELS
from pix2video.pipeline import Pix2VideoPipeline

SD2_DEPTH_UNET = dict(
    sample_size=64,
    in_channels=5,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
)
SD2_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
)
OPENCLIP_H_TEXT = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=512,
)


def full_size_pipeline(dtype: torch.dtype = torch.float32, seed: int = 0) -> Pix2VideoPipeline:
    """Pix2VideoPipeline with SD2-depth's UNet, VAE and text encoder shapes, random weights."""
    torch.manual_seed(seed)
    tiny = BUNDLED_MODELS["tiny"]
    tokenizer = CLIPTokenizer.from_pretrained(tiny / "tokenizer")
    tiny_pipe = Pix2VideoPipeline.from_pretrained(str(tiny))
    pipe = Pix2VideoPipeline(
        vae=AutoencoderKL(**SD2_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**OPENCLIP_H_TEXT)),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**SD2_DEPTH_UNET),
        scheduler=DDIMScheduler.from_config(tiny_pipe.scheduler.config),
        depth_estimator=tiny_pipe.depth_estimator,
        feature_extractor=tiny_pipe.feature_extractor,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dtype=dtype)
