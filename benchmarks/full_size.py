"""Full-size architectures with random weights, built from their configs (no download).

Speed and memory depend on the architecture, not on the weight values, so these stand in for
the real checkpoints in benchmarks:
- `full_size_pipeline`: `stabilityai/stable-diffusion-2-depth` (the depth estimator is the
  tiny DPT of the bundled model; benchmarks pass precomputed depth, so it is never timed);
- `full_size_controlnet_pipeline`: an SD 1.5 checkpoint (UNet 860M, CLIP ViT-L/14 text
  encoder, SD VAE) with one SD 1.5 ControlNet (361M, e.g. `control_v11f1p_sd15_depth`).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from pix2video.models import BUNDLED_MODELS
from pix2video.pipelines.sd2_depth import Pix2VideoPipeline
from pix2video.pipelines.sd15_controlnet import Pix2VideoControlNetPipeline

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
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
)
SD15_CONTROLNET = dict(
    in_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
    conditioning_embedding_out_channels=(16, 32, 96, 256),
)
CLIP_L_TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
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


def full_size_controlnet_pipeline(
    dtype: torch.dtype = torch.float32, seed: int = 0
) -> Pix2VideoControlNetPipeline:
    """Pix2VideoControlNetPipeline with SD 1.5's UNet, VAE, text encoder and one ControlNet."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    tiny = BUNDLED_MODELS["tiny"]
    pipe = Pix2VideoControlNetPipeline(
        vae=AutoencoderKL(**SD2_VAE),  # SD 1.5 and SD2 share the VAE architecture
        text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT)),
        tokenizer=CLIPTokenizer.from_pretrained(tiny / "tokenizer"),
        unet=UNet2DConditionModel(**SD15_UNET),
        controlnet=ControlNetModel(**SD15_CONTROLNET),
        scheduler=DDIMScheduler.from_pretrained(tiny / "scheduler"),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dtype=dtype)
