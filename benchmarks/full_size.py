"""Full-size architectures with random weights, built from their configs (no download).

Speed and memory depend on the architecture, not on the weight values, so these stand in for
the real checkpoints in benchmarks:
- `full_size_pipeline`: `stabilityai/stable-diffusion-2-depth` (the depth estimator is the
  tiny DPT of the bundled model; benchmarks pass precomputed depth, so it is never timed);
- `full_size_controlnet_pipeline`: an SD 1.5 checkpoint (UNet 860M, CLIP ViT-L/14 text
  encoder, SD VAE) with one SD 1.5 ControlNet (361M, e.g. `control_v11f1p_sd15_depth`);
- `full_size_sdxl_pipeline`: `stabilityai/stable-diffusion-xl-base-1.0` (UNet 2.6B, CLIP
  ViT-L and OpenCLIP bigG text encoders, the SDXL VAE) with one full SDXL ControlNet (1.25B,
  the shape of `diffusers/controlnet-depth-sdxl-1.0`: the UNet's encoder half);
- `full_size_sd35_pipeline`: `stabilityai/stable-diffusion-3.5-medium` (MMDiT-X transformer
  2.5B: 24 joint blocks of 24 x 64 heads, dual attention in blocks 0-12, RMS q/k norms; the
  16-channel SD3 VAE) with one ControlNet of Stability's SD3.5 kind (the shape diffusers'
  `convert_sd3_controlnet_to_diffusers.py` gives `stable-diffusion-3.5-large-controlnet-depth`:
  half the transformer's depth in blocks without text, the transformer's position embedding)
  scaled to Medium's width (12 blocks of 24 x 64; Stability released these for Large only);
- `full_size_flux_pipeline`: FLUX.1 Depth [dev] at full width (hidden 3072 = 24 x 128 heads,
  T5 width 4096, pooled 768, guidance embedding, in_channels 128 = 64 packed latent + 64
  packed control channels; FLUX's VAE) with fewer blocks than its 19 double + 38 single
  (FLUX's 12B do not fit this machine's memory), for a per-block cost.

The transformer backbones get no text encoders (T5-XXL alone is 9.5 GB, and the pipelines
free their encoders once the prompts are encoded): `precomputed_prompts` gives them prompt
embeddings of the real shapes, read from the pipeline's prompt memory (`PromptMemory`).
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


SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 6 size ids x 256 + the pooled 1280
)
OPENCLIP_BIGG_TEXT = dict(
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=1280,
)
SDXL_VAE = dict(SD2_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)


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


def full_size_sdxl_pipeline(dtype: torch.dtype = torch.float32, seed: int = 0):
    """Pix2VideoSDXLControlNetPipeline with SDXL base's shapes and one SDXL ControlNet.

    The weights are created in `dtype` (not in float32 and cast), so building the 4.5B
    parameters peaks at their size in `dtype`; a float16 VAE is upcast as the pipeline does.
    """
    from diffusers import ControlNetModel, EulerDiscreteScheduler
    from transformers import CLIPTextModelWithProjection

    from pix2video.pipelines.sdxl import Pix2VideoSDXLControlNetPipeline

    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(BUNDLED_MODELS["tiny"] / "tokenizer")
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        unet = UNet2DConditionModel(**SDXL_UNET)
        controlnet = ControlNetModel.from_unet(unet)
        pipe = Pix2VideoSDXLControlNetPipeline(
            vae=AutoencoderKL(**SDXL_VAE),
            text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT)),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**OPENCLIP_BIGG_TEXT)),
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=unet,
            controlnet=controlnet,
            scheduler=EulerDiscreteScheduler(
                beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
            ),
        )
    finally:
        torch.set_default_dtype(default)
    pipe.set_progress_bar_config(disable=True)
    return pipe


SD35_MEDIUM_TRANSFORMER = dict(  # stabilityai/stable-diffusion-3.5-medium, transformer/config.json
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=384,
    dual_attention_layers=tuple(range(13)),
    qk_norm="rms_norm",
)
SD35_CONTROLNET = dict(  # the SD3.5 Large ControlNets' kind (diffusers' conversion script)
    patch_size=2,  # at Medium's width; Large's: 19 layers of 38 heads, caption 2048
    in_channels=16,
    num_layers=12,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=None,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=None,
    pos_embed_type=None,
    use_pos_embed=False,
    force_zeros_for_pooled_projection=False,
)
SD3_VAE = dict(
    SD2_VAE,
    latent_channels=16,
    sample_size=1024,
    scaling_factor=1.5305,
    shift_factor=0.0609,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
FLUX_VAE = dict(SD3_VAE, scaling_factor=0.3611, shift_factor=0.1159)
FLUX_DEPTH_TRANSFORMER = dict(  # black-forest-labs/FLUX.1-Depth-dev, transformer/config.json
    patch_size=1,
    in_channels=128,  # 16 latent channels x 2x2 packed, latents and control latents
    out_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
FLUX_SCHEDULER = dict(
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)


def _in_dtype(dtype: torch.dtype, build):
    """`build()` with every parameter created in `dtype` (no float32 copy on the way)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return build()
    finally:
        torch.set_default_dtype(default)


def full_size_sd35_pipeline(
    dtype: torch.dtype = torch.bfloat16, seed: int = 0, num_layers: int = 24
):
    """Pix2VideoSD3ControlNetPipeline with SD3.5 Medium's shapes and one SD3.5-kind ControlNet
    (module doc), no text encoders (`precomputed_prompts`). `num_layers` < 24 keeps the width
    with fewer joint blocks (the ControlNet half as many, at least 1), for smoke runs."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from diffusers.models.controlnets.controlnet_sd3 import SD3ControlNetModel

    from pix2video.pipelines.sd3 import Pix2VideoSD3ControlNetPipeline

    torch.manual_seed(seed)
    dual = tuple(i for i in SD35_MEDIUM_TRANSFORMER["dual_attention_layers"] if i < num_layers)
    transformer_config = dict(
        SD35_MEDIUM_TRANSFORMER, num_layers=num_layers, dual_attention_layers=dual
    )
    controlnet_config = dict(SD35_CONTROLNET, num_layers=max(1, num_layers // 2))

    def build():
        return Pix2VideoSD3ControlNetPipeline(
            transformer=SD3Transformer2DModel(**transformer_config),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=AutoencoderKL(**SD3_VAE),
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=None,
            tokenizer_2=None,
            text_encoder_3=None,
            tokenizer_3=None,
            controlnet=SD3ControlNetModel(**controlnet_config),
        )

    pipe = _in_dtype(dtype, build)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def full_size_flux_pipeline(
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    num_layers: int = 2,
    num_single_layers: int = 4,
):
    """Pix2VideoFluxControlPipeline with FLUX.1 Depth [dev]'s width and `num_layers` double-
    + `num_single_layers` single-stream blocks (FLUX.1: 19 + 38), no text encoders."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    from pix2video.pipelines.flux import Pix2VideoFluxControlPipeline

    torch.manual_seed(seed)
    config = dict(
        FLUX_DEPTH_TRANSFORMER, num_layers=num_layers, num_single_layers=num_single_layers
    )

    def build():
        return Pix2VideoFluxControlPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
            vae=AutoencoderKL(**FLUX_VAE),
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=None,
            tokenizer_2=None,
            transformer=FluxTransformer2DModel(**config),
        )

    pipe = _in_dtype(dtype, build)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def precomputed_prompts(pipe, prompts, seed: int = 0) -> None:
    """Put random embeddings of the real shapes for `prompts` in a transformer pipeline's
    prompt memory, so no text encoder runs: SD3 (77 CLIP + 256 T5 tokens) x 4096 and a
    pooled 2048; FLUX 512 T5 tokens x 4096 and a pooled 768 (`sdxl.pack_text`)."""
    from collections import OrderedDict

    from pix2video.pipelines.sdxl import pack_text

    config = pipe.transformer.config
    tokens = pipe.max_sequence_length + (77 if hasattr(pipe, "text_encoder_3") else 0)
    generator = torch.Generator().manual_seed(seed)
    memory = pipe.__dict__.setdefault("_prompt_memory", OrderedDict())
    for prompt in prompts:
        embeds = torch.randn(1, tokens, config.joint_attention_dim, generator=generator)
        pooled = torch.randn(1, config.pooled_projection_dim, generator=generator)
        memory[prompt] = pack_text(embeds, pooled)
