"""Tiny random models of the SD 1.5 + ControlNet family, built in code (like diffusers' tests).

- `build_sd15(folder)`: an SD 1.5-topology pipeline (4-channel UNet with cross-attention,
  attention in every down block but the last and every up block but the first; VAE with
  4 blocks, so latents are 1/8 of the frame as in SD 1.5), the bundled tiny CLIP text
  encoder and tokenizer, SD 1.5's DDIM scheduler config, saved in diffusers' layout.
- `build_controlnet(folder, seed)`: a ControlNet of the same topology whose zero-initialised
  output convolutions (`controlnet_down_blocks`, `controlnet_mid_block`, the conditioning
  embedding's `conv_out`) get random weights: at zero it has no effect and tests nothing;
  the conditioning embedding is scaled so the control image moves the residuals.
- `save_original_checkpoint(folder, path)`: the pipeline's UNet, VAE and text encoder in
  the *original* Stable Diffusion single-file layout (`model.diffusion_model.*`,
  `first_stage_model.*`, `cond_stage_model.transformer.*`), the inverse of diffusers'
  single-file conversion, so `from_single_file` has a real original-format file to read.
- `build_lora(folder, path)`: a random LoRA on the UNet's attention, saved with
  `save_lora_weights` (what `load_lora_weights` reads).
- `build_depth_anything(folder)`: a tiny random Depth Anything (DINOv2 backbone) with its
  image processor, what `--depth-model` takes.
"""

from __future__ import annotations

from pathlib import Path

import torch

ASSETS = Path(__file__).resolve().parents[1] / "pix2video" / "assets" / "tiny-sd2-depth"
BLOCKS = (16, 32)
UNET_KWARGS = dict(
    block_out_channels=BLOCKS,
    layers_per_block=2,
    in_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=2,
    norm_num_groups=4,
)


def build_sd15(folder: Path) -> Path:
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = tiny_unet(("UpBlock2D", "CrossAttnUpBlock2D"))
    vae = tiny_vae()
    text_encoder = CLIPTextModel.from_pretrained(ASSETS / "text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(ASSETS / "tokenizer")
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def build_controlnet(folder: Path, seed: int) -> Path:
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    controlnet = ControlNetModel(conditioning_embedding_out_channels=(8, 8, 16, 16), **UNET_KWARGS)
    with_visible_control(controlnet).save_pretrained(folder)
    return folder


def tiny_unet(up_block_types: tuple[str, str], unet_kwargs: dict = UNET_KWARGS):
    """A 4-channel UNet of 8x8 latents: `unet_kwargs` are the family's (SDXL has its own)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, out_channels=4, up_block_types=up_block_types, **unet_kwargs
    )


def tiny_vae(**config):
    """A 4-block VAE (latents 1/8 of the frame, as the real ones); `config` adds SDXL's."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[8, 8, 16, 16],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        **config,
    )


def with_visible_control(controlnet):
    """`controlnet` with random output convolutions (zero-initialised, they have no effect at
    all) and a control-image embedding scaled so that the image moves the residuals (its
    conv_out is zero too; the default init of the others shrinks the image's signal below
    the latent's)."""
    outputs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    with torch.no_grad():
        for conv in outputs:
            conv.weight.normal_(0, 0.3)
            conv.bias.normal_(0, 0.3)
        for conv in controlnet.controlnet_cond_embedding.modules():
            if isinstance(conv, torch.nn.Conv2d):
                conv.weight.normal_(0, 2 / conv.weight[0].numel() ** 0.5)
                conv.bias.zero_()
    return controlnet


# --------------------------------------------------------------------------- original layout
_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}


def _unet_prefixes(config: dict, keys: list[str]) -> list[tuple[str, str]]:
    """(diffusers prefix, original prefix) of every UNet sub-block, for any depth."""
    n, per = len(config["block_out_channels"]), config["layers_per_block"]
    pairs = []
    for i in range(n):
        for j in range(per):
            pairs.append(
                (f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{(per + 1) * i + j + 1}.0.")
            )
            pairs.append(
                (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{(per + 1) * i + j + 1}.1.")
            )
        pairs.append(
            (f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(per + 1) * (i + 1)}.0.op.")
        )
        has_attention = any(k.startswith(f"up_blocks.{i}.attentions.") for k in keys)
        for j in range(per + 1):
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{(per + 1) * i + j}.0."))
            pairs.append(
                (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{(per + 1) * i + j}.1.")
            )
        upsampler = f"output_blocks.{(per + 1) * i + per}.{2 if has_attention else 1}."
        pairs.append((f"up_blocks.{i}.upsamplers.0.", upsampler))
    pairs.append(("mid_block.attentions.0.", "middle_block.1."))
    pairs += [(f"mid_block.resnets.{j}.", f"middle_block.{2 * j}.") for j in range(2)]
    return pairs


def _unet_to_original(state: dict, config: dict) -> dict:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    top = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    prefixes = _unet_prefixes(config, list(state))
    out = {}
    for key, value in state.items():
        new = top.get(key)
        if new is None:
            for diffusers_prefix, original_prefix in prefixes:
                if key.startswith(diffusers_prefix):
                    rest = key[len(diffusers_prefix) :]
                    if ".resnets." in diffusers_prefix:
                        name, _, leaf = rest.partition(".")
                        rest = f"{_RESNET[name]}.{leaf}"
                    new = original_prefix + rest
                    break
        assert new is not None, f"no original name for UNet key {key}"
        out["model.diffusion_model." + new] = value
    return out


def _vae_to_original(state: dict, config: dict) -> dict:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    top = DIFFUSERS_TO_LDM_MAPPING["vae"]
    n = len(config["block_out_channels"])
    pairs = []
    for i in range(n):
        pairs.append((f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."))
        pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
        pairs.append((f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n - 1 - i}.block."))
        pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."))
    for part in ("encoder", "decoder"):
        pairs += [
            (f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}.") for j in range(2)
        ]
        pairs.append((f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."))
    attention = {
        "group_norm": "norm",
        "to_q": "q",
        "to_k": "k",
        "to_v": "v",
        "to_out.0": "proj_out",
    }
    out = {}
    for key, value in state.items():
        new = top.get(key)
        if new is None:
            for diffusers_prefix, original_prefix in pairs:
                if key.startswith(diffusers_prefix):
                    rest = key[len(diffusers_prefix) :].replace("conv_shortcut", "nin_shortcut")
                    if diffusers_prefix.endswith("attentions.0."):
                        layer, _, leaf = rest.rpartition(".")
                        rest = f"{attention[layer]}.{leaf}"
                        if leaf == "weight" and value.ndim == 2:
                            value = value[:, :, None, None]  # the original uses 1x1 convolutions
                    new = original_prefix + rest
                    break
        assert new is not None, f"no original name for VAE key {key}"
        out["first_stage_model." + new] = value
    return out


def _clip_to_original(prefix: str, state: dict) -> dict:
    """A CLIP text encoder's weights under `prefix` with the original names, which are
    transformers 4's (`text_model.` first)."""
    return {
        prefix + ("" if k.startswith("text_model.") else "text_model.") + k: v
        for k, v in state.items()
    }


def save_original_checkpoint(folder: Path, path: Path) -> Path:
    """The diffusers pipeline in `folder` as one original-layout `.safetensors` file."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    text = CLIPTextModel.from_pretrained(folder / "text_encoder")
    state = {
        **_unet_to_original(unet.state_dict(), dict(unet.config)),
        **_vae_to_original(vae.state_dict(), dict(vae.config)),
        **_clip_to_original("cond_stage_model.transformer.", text.state_dict()),
    }
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


# --------------------------------------------------------------------------- LoRA, depth model
def build_lora(
    folder: Path, path: Path, pipeline_class=None, model_class=None, component: str = "unet"
) -> Path:
    """A random rank-4 LoRA on the attention projections of the pipeline's `component` (its
    UNet, or a transformer of `model_class`), as one .safetensors file written by
    `pipeline_class.save_lora_weights` (SD 1.5's, or the family's)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    model = (model_class or UNet2DConditionModel).from_pretrained(folder / component)
    torch.manual_seed(7)
    model.add_adapter(
        LoraConfig(
            r=4,
            lora_alpha=4,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            init_lora_weights=False,  # random B: a LoRA that changes the output
        )
    )
    (pipeline_class or StableDiffusionPipeline).save_lora_weights(
        path.parent,
        **{f"{component}_lora_layers": get_peft_model_state_dict(model)},
        weight_name=path.name,
        safe_serialization=True,
    )
    return path


def build_depth_anything(folder: Path) -> Path:
    """A tiny random Depth Anything (DINOv2 backbone) and its image processor."""
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessor,
    )

    backbone = Dinov2Config(
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=28,
        patch_size=14,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=16,
        neck_hidden_sizes=[8, 8, 16, 16],
        fusion_hidden_size=8,
        head_hidden_size=8,
        depth_estimation_type="relative",
    )
    torch.manual_seed(3)
    model = DepthAnythingForDepthEstimation(config).eval()
    model.save_pretrained(folder)
    DPTImageProcessor(
        size={"height": 28, "width": 28}, keep_aspect_ratio=False, ensure_multiple_of=14
    ).save_pretrained(folder)
    return folder
