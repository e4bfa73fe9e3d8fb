"""Bring your own model: what a checkpoint is, and loading it with ControlNets and LoRAs.

The pipeline follows from the checkpoint: a UNet that reads 5 channels (4 latent + depth)
is SD2-depth (`pipeline.Pix2VideoPipeline`); one that reads the 4 latent channels is an
SD 1.5-architecture model that sees structure through ControlNets
(`controlnet.Pix2VideoControlNetPipeline`), so it needs at least one. A checkpoint is a
hub id or a diffusers folder (offline-first, `models.load_pretrained`) or, for SD 1.5, one
original-layout `.safetensors`/`.ckpt` file as model sites publish them (diffusers'
`from_single_file`, with the architecture's diffusers configs from `model_config` or the
local cache). LoRAs (a file, a folder or a hub id, each with a scale) are loaded with
diffusers' `load_lora_weights` and fused into the weights at their scales, so an edit
costs the same with or without them. Every failure is one sentence.
An SDXL-family UNet (`is_sdxl_checkpoint`) also reads 4 channels and needs ControlNets; it
gets `sdxl.Pix2VideoSDXLControlNetPipeline` (single files: configs of `sdxl.SDXL_CONFIG`).
An SD3/SD3.5 checkpoint (`is_sd3_checkpoint`: an `SD3Transformer2DModel`, folder or hub id)
gets `sd3.Pix2VideoSD3ControlNetPipeline` with SD3 ControlNets; a FLUX.1 Depth/Canny [dev] one
(`is_flux_checkpoint`: a `FluxTransformer2DModel` reading latents and control latents)
`flux.Pix2VideoFluxControlPipeline`, its own control model; FLUX.1 [dev] with FLUX ControlNets
`flux_controlnet.Pix2VideoFluxControlNetPipeline` (`transformer_checkpoints.py`, also for
their single files).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import ModelNotAvailableError
from ..models import (
    DEFAULT_MODEL,
    _offline,
    fetch_missing,
    is_flux_checkpoint,
    load_pretrained,
    resolve_model_path,
    single_file_family,
    single_file_shapes,
    transformer_file_channels,
)
from ..models import component_config as _component_config
from .onednn import use_onednn_linears

if TYPE_CHECKING:
    from .backbone import Pix2VideoBase

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
SD15_CONFIG = "stable-diffusion-v1-5/stable-diffusion-v1-5"
"""The diffusers configs diffusers picks for an SD 1.5 single file (from the local cache)."""
ORIGINAL_UNET_INPUT = "model.diffusion_model.input_blocks.0.0.weight"
ORIGINAL_SDXL_TEXT_2 = "conditioner.embedders.1.model.positional_embedding"
"""SDXL's second (OpenCLIP bigG) text encoder in the original single-file layout."""
TINY_HINT = " (or `tiny` for the bundled random-weight model)"


def is_single_file(model: str) -> bool:
    path = Path(resolve_model_path(model)).expanduser()
    return path.suffix.lower() in SINGLE_FILE_SUFFIXES and not path.is_dir()


def unet_in_channels(model: str) -> int | None:
    """Channels the checkpoint's UNet reads, without loading it; None when it cannot be told.

    From the single file's first convolution, a folder's `unet/config.json`, or the hub
    cache's copy of it.
    """
    path = Path(resolve_model_path(model)).expanduser()
    if is_single_file(model):
        if not path.is_file():
            raise ModelNotAvailableError(f"The checkpoint file '{model}' does not exist.")
        shape = _single_file_shape(path, ORIGINAL_UNET_INPUT)
        if shape is None:
            raise ModelNotAvailableError(
                f"The file '{model}' is not a Stable Diffusion checkpoint in the original "
                "single-file layout (it has no model.diffusion_model weights)."
            )
        return int(shape[1])
    config = path / "unet" / "config.json"
    if not config.is_file() and not path.exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(str(model), "unet/config.json")
            config = Path(found) if isinstance(found, str) else config
        except Exception:  # noqa: BLE001 - a malformed id: the loader says so
            return None
    if not config.is_file():
        return None
    return int(json.loads(config.read_text()).get("in_channels", 4))


def is_sdxl_checkpoint(model: str) -> bool:
    """Whether the checkpoint is SDXL-family (its UNet reads pooled text and size ids).

    From a single file's second text encoder, or the UNet config of a folder or the hub cache.
    """
    path = Path(resolve_model_path(model)).expanduser()
    if is_single_file(model):
        return path.is_file() and _single_file_shape(path, ORIGINAL_SDXL_TEXT_2) is not None
    config = _component_config(model, "unet/config.json")
    return config is not None and is_sdxl_unet(config)


def is_sdxl_unet(config) -> bool:
    """An SDXL-family UNet reads the pooled text embedding and size ids ("text_time")."""
    return dict(config).get("addition_embed_type") == "text_time"


def is_sd3_checkpoint(model: str) -> bool:
    """Whether a folder, hub id or single file holds an SD3-family transformer."""
    if is_single_file(model):
        return single_file_family(model) == "sd3"
    config = _component_config(model, "transformer/config.json")
    return config is not None and config.get("_class_name") == "SD3Transformer2DModel"


def model_geometry(model: str) -> tuple[int, int]:
    """(latent channels, what frame sides must be multiples of) without loading the model:
    16 and 16 for SD3 and FLUX (VAE factor 8 times patch 2: SD3's patch, FLUX's 2x2
    packing), 4 and 8 for the UNet families."""
    flux = is_flux_checkpoint(model)
    if not (flux or is_sd3_checkpoint(model)):
        return 4, 8
    if is_single_file(model):  # its own shapes; the VAE's factor 8 (FLUX's and SD3's)
        shapes = single_file_shapes(model)
        conv = shapes.get("x_embedder.proj.weight") or shapes.get("pos_embed.proj.weight")
        patch = 2 if flux or conv is None else int(conv[-1])
        return transformer_file_channels(model)[1] // (patch * patch), 8 * patch
    vae = _component_config(model, "vae/config.json") or {}
    transformer = _component_config(model, "transformer/config.json") or {}
    factor = 2 ** (len(vae.get("block_out_channels", (0, 0, 0, 0))) - 1)
    patch = 2 if flux else int(transformer.get("patch_size", 2))
    return int(vae.get("latent_channels", 16)), factor * patch


FEW_STEP_SCHEDULERS = ("LCMScheduler", "TCDScheduler")
"""Schedulers only consistency-distilled (few-step) checkpoints ship with."""


def check_not_few_step(model: str, model_config: str | None = None) -> None:
    """Refuse a few-step (Turbo/LCM-style) checkpoint, told by the scheduler it ships with.

    Such checkpoints sample in 1-4 steps without guidance; DDIM inversion at that step count
    does not map back to the frames (benchmarks/few_step.py; README "Few-step checkpoints").
    SDXL-Turbo and SD-Turbo ship Euler ancestral with trailing timesteps, LCMs their own.
    """
    source = model_config if is_single_file(model) else model
    config = _component_config(source, "scheduler/scheduler_config.json") if source else None
    if config is None:
        return
    name = config.get("_class_name", "")
    turbo = (
        name == "EulerAncestralDiscreteScheduler" and config.get("timestep_spacing") == "trailing"
    )
    if name in FEW_STEP_SCHEDULERS or turbo:
        raise ModelNotAvailableError(
            f"The model '{model}' is a few-step (Turbo/LCM-style) checkpoint: Pix2Video inverts "
            "every frame with DDIM at the edit's step count, and at 1-4 steps that inversion "
            "does not map back to the frames, so it cannot edit them; use the model it was "
            "distilled from (e.g. stabilityai/stable-diffusion-xl-base-1.0) with 20-50 steps."
        )


def _single_file_shape(path: Path, key: str) -> tuple[int, ...] | None:
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                return tuple(f.get_slice(key).get_shape()) if key in f.keys() else None
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one sentence
        raise ModelNotAvailableError(
            f"The checkpoint file '{path}' cannot be read ({type(exc).__name__}: {exc})."
        ) from exc
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    return tuple(state[key].shape) if key in state else None


def load_backbone(
    model: str,
    device: str | torch.device = "cpu",
    torch_dtype: torch.dtype | None = None,
    controlnets: Sequence[str] = (),
    loras: Sequence[tuple[str, float]] = (),
    depth_model: str | None = None,
    model_config: str | None = None,
):
    """The pipeline the checkpoint calls for, with its ControlNets and LoRAs, on `device`."""
    fetch_missing(model, "diffusion model")  # its configs say which loader it needs
    kwargs = {"dtype": torch_dtype} if torch_dtype is not None else {}
    sd3, flux = is_sd3_checkpoint(model), is_flux_checkpoint(model)
    channels = None if sd3 or flux else unet_in_channels(model)
    if flux or sd3:
        from .transformer_checkpoints import load_flux, load_sd3

        if sd3:
            check_not_few_step(model, model_config)
        pipe = (load_flux if flux else load_sd3)(model, controlnets, kwargs, model_config)
    elif channels == 5:
        if controlnets:
            raise ModelNotAvailableError(
                f"The model '{model}' is depth-conditioned (SD2-depth) and takes no ControlNet; "
                "drop --controlnet, or use an SD 1.5 checkpoint with it."
            )
        if is_single_file(model):
            raise ModelNotAvailableError(
                f"Load the SD2-depth model '{model}' from its diffusers folder or hub id, not "
                "a single file."
            )
        pipe = _load_sd2_depth(model, depth_model, kwargs)
    elif channels not in (None, 4):
        raise ModelNotAvailableError(
            f"The model '{model}' has a UNet that reads {channels} channels (an inpainting or "
            "other special checkpoint); use an SD2-depth or an SD 1.5 text-to-image checkpoint."
        )
    elif not controlnets:
        if channels is None:  # unknown: let the SD2-depth loader say what it is
            pipe = _load_sd2_depth(model, depth_model, kwargs)
        else:
            example = (
                "diffusers/controlnet-depth-sdxl-1.0"
                if is_sdxl_checkpoint(model)
                else "lllyasviel/control_v11f1p_sd15_depth"
            )
            raise ModelNotAvailableError(
                f"The model '{model}' is not depth-conditioned, so it needs a ControlNet for the "
                f"video's structure: add --controlnet ID --control canny|depth (e.g. {example} "
                "with --control depth)."
            )
    else:
        pipe = _load_controlnet_pipeline(model, controlnets, model_config, kwargs)
    if loras:
        apply_loras(pipe, loras)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    if pipe.device.type == "cpu":
        use_onednn_linears(pipe)  # MKL's linear is the slow path on AMD CPUs (`onednn`)
    return pipe


def _load_sd2_depth(model: str, depth_model: str | None, kwargs: dict):
    from .sd2_depth import Pix2VideoPipeline

    components = {}
    if depth_model is not None:
        from .control import DepthEstimator

        estimator = DepthEstimator(depth_model)
        components = {"depth_estimator": estimator.model, "feature_extractor": estimator.processor}
    pipe = load_pretrained(
        Pix2VideoPipeline.from_pretrained,
        model,
        "diffusion model",
        fallback_hint=TINY_HINT,
        **components,
        **kwargs,
    )
    if pipe.unet.config.in_channels != 5:
        raise ModelNotAvailableError(
            f"The model '{model}' is not depth-conditioned (its UNet reads "
            f"{pipe.unet.config.in_channels} channels, not 4 latent + 1 depth); use a "
            "stable-diffusion-2-depth checkpoint, or add --controlnet for an SD 1.5 one."
        )
    return pipe


def _load_controlnet_pipeline(
    model: str, controlnets: Sequence[str], model_config: str | None, kwargs: dict
):
    from diffusers import ControlNetModel

    from .sd15_controlnet import Pix2VideoControlNetPipeline
    from .sdxl import Pix2VideoSDXLControlNetPipeline

    check_not_few_step(model, model_config)
    nets = [
        load_pretrained(ControlNetModel.from_pretrained, c, "ControlNet", **kwargs)
        for c in controlnets
    ]
    sdxl = is_sdxl_checkpoint(model)
    if is_single_file(model):
        pipe = _load_single_file(model, nets, model_config, kwargs, sdxl)
    else:
        pipeline_class = Pix2VideoSDXLControlNetPipeline if sdxl else Pix2VideoControlNetPipeline
        extras = {} if sdxl else {"safety_checker": None}
        pipe = load_pretrained(
            pipeline_class.from_pretrained,
            model,
            "diffusion model",
            controlnet=nets,
            feature_extractor=None,
            **extras,
            **kwargs,
        )
    unet = pipe.unet.config
    for name, net in zip(controlnets, nets, strict=True):
        if net.config.cross_attention_dim != unet.cross_attention_dim or tuple(
            net.config.block_out_channels
        ) != tuple(unet.block_out_channels):
            raise ModelNotAvailableError(
                f"The ControlNet '{name}' was made for another architecture than the model "
                f"'{model}' (cross-attention {net.config.cross_attention_dim} vs "
                f"{unet.cross_attention_dim}); use a ControlNet for the model's base "
                f"({'SDXL' if sdxl else 'SD 1.5'})."
            )
    return pipe


def _load_single_file(
    model: str, nets: list, model_config: str | None, kwargs: dict, sdxl: bool = False
):
    """`from_single_file` offline-first: configs from `model_config` or the local hub cache."""
    from .sd15_controlnet import Pix2VideoControlNetPipeline
    from .sdxl import SDXL_CONFIG, Pix2VideoSDXLControlNetPipeline

    path = str(Path(model).expanduser())
    pipeline_class = Pix2VideoSDXLControlNetPipeline if sdxl else Pix2VideoControlNetPipeline
    extras = {} if sdxl else {"safety_checker": None}
    default_config = SDXL_CONFIG if sdxl else SD15_CONFIG
    config = model_config or (SDXL_CONFIG if sdxl else None)
    if config is not None and Path(config).expanduser().is_dir():
        config = str(Path(config).expanduser())
    attempts = [True] if _offline() else [True, False]
    error: Exception | None = None
    for local_only in attempts:
        try:
            return pipeline_class.from_single_file(
                path,
                controlnet=nets,
                config=config,
                local_files_only=local_only,
                **extras,
                **kwargs,
            )
        except Exception as exc:  # noqa: BLE001 - any loader failure becomes one sentence
            error = exc
    needed = config or default_config
    raise ModelNotAvailableError(
        f"The single-file checkpoint '{model}' could not be loaded with the diffusers configs "
        f"of '{needed}' ({type(error).__name__}); download those configs once with "
        f"`huggingface-cli download {default_config} --include '*.json' '*.txt'`, or pass "
        "--model-config with a diffusers folder of the same architecture."
    ) from error


def apply_loras(pipe, loras: Sequence[tuple[str, float]]) -> None:
    """Load every (path or id, scale) LoRA and fuse them into the weights at their scales."""
    names = []
    for i, (name, _scale) in enumerate(loras):
        adapter = f"lora{i}"
        path = Path(name).expanduser()
        try:
            if path.is_file():
                pipe.load_lora_weights(
                    str(path.parent), weight_name=path.name, adapter_name=adapter
                )
            elif path.is_dir():
                pipe.load_lora_weights(str(path), adapter_name=adapter)
            elif name.startswith(("/", ".", "~")) or name.count("/") > 1:
                raise ModelNotAvailableError(f"The LoRA '{name}' does not exist.")
            else:
                _load_hub_lora(pipe, name, adapter)
        except ModelNotAvailableError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ModelNotAvailableError(
                f"The LoRA '{name}' could not be loaded into the model ({type(exc).__name__}: "
                f"{exc}); is it a LoRA for this model's architecture?"
            ) from exc
        names.append(adapter)
    pipe.set_adapters(names, adapter_weights=[scale for _, scale in loras])
    pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
    encoders = ("text_encoder", "text_encoder_2", "text_encoder_3")
    if any(getattr(getattr(pipe, n, None), "peft_config", None) for n in encoders):
        pipe.text_encoders_fused = True  # `text_encoders.PromptMemory` cannot reload them
    pipe.unload_lora_weights()  # the fused weights stay; the adapter layers go


def _load_hub_lora(pipe, name: str, adapter: str) -> None:
    try:
        pipe.load_lora_weights(name, adapter_name=adapter, local_files_only=True)
        return
    except Exception as exc:  # noqa: BLE001
        error = exc
    if not _offline():
        try:
            pipe.load_lora_weights(name, adapter_name=adapter)
            return
        except Exception as exc:  # noqa: BLE001
            error = exc
    raise ModelNotAvailableError(
        f"The LoRA '{name}' is not available offline and could not be downloaded "
        f"({type(error).__name__}); download it once with `pix2video download {name}`, "
        "or pass a file or folder."
    ) from error


def load_pipeline(
    model: str = DEFAULT_MODEL,
    device: str | torch.device = "cpu",
    torch_dtype: torch.dtype | None = None,
    controlnets: Sequence[str] = (),
    loras: Sequence[tuple[str, float]] = (),
    depth_model: str | None = None,
    model_config: str | None = None,
) -> Pix2VideoBase:
    """Load a checkpoint offline-first with the pipeline it calls for (`load_backbone`).

    A depth-conditioned SD2 checkpoint (hub id, folder or `tiny`) gives a
    `Pix2VideoPipeline` (`depth_model` replaces its depth estimator); an SD 1.5 one (hub
    id, folder or single file) with `controlnets` a `Pix2VideoControlNetPipeline`. `loras`
    are (path or id, scale) pairs fused into the weights.
    """
    return load_backbone(model, device, torch_dtype, controlnets, loras, depth_model, model_config)
