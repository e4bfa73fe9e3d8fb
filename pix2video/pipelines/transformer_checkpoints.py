"""Loading the transformer backbones (SD3/SD3.5 with SD3 ControlNets; FLUX.1 Depth/Canny
[dev]; FLUX.1 [dev] with FLUX ControlNets): what the checkpoint's configs say picks the
pipeline, and every refusal is one sentence (`checkpoints.load_backbone` calls these).

A single file (`.safetensors`, told by its keys: `models.single_file_family`) holds the
transformer alone, in the original layout (BFL's FLUX, Stability's SD3/SD3.5 files, whose
text encoders, if any, are not read) or diffusers'. It is loaded with diffusers'
`from_single_file` on the architecture's config, and the other components (VAE, text
encoders, scheduler) come from the same place: `--model-config` (a diffusers folder or hub
id), else the hub id diffusers itself picks for those keys (`DIFFUSERS_DEFAULT_PIPELINE_PATHS`,
from the local cache when offline).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

from ..errors import ModelNotAvailableError
from ..models import ORIGINAL_PREFIX, _offline, load_pretrained, single_file_shapes
from ..models import component_config as _component_config


def weights_source(
    model: str, model_config: str | None, transformer_class, kwargs: dict
) -> tuple[str, dict]:
    """(where the configs and components come from, extra `from_pretrained` arguments): the
    model itself, or for a single file its config's source and the transformer it holds."""
    if not single_file_shapes(model):
        return model, {}
    source = model_config or default_config(model)
    if source is None:
        raise ModelNotAvailableError(
            f"The single file '{model}' holds a transformer whose model diffusers cannot tell "
            "from its keys; pass --model-config with the diffusers folder or hub id of the "
            "model it belongs to (for example black-forest-labs/FLUX.1-dev)."
        )
    if Path(source).expanduser().is_dir():
        source = str(Path(source).expanduser())
    error: Exception | None = None
    for local_only in [True] if _offline() else [True, False]:
        try:
            transformer = transformer_class.from_single_file(
                str(Path(model).expanduser()),
                config=source,
                subfolder="transformer",
                local_files_only=local_only,
                **kwargs,
            )
            return source, {"transformer": transformer}
        except Exception as exc:  # noqa: BLE001 - any loader failure becomes one sentence
            error = exc
    raise ModelNotAvailableError(
        f"The single-file transformer '{model}' could not be loaded with the configs of "
        f"'{source}' ({type(error).__name__}); pass --model-config with a diffusers folder or "
        "hub id of the same architecture (and size)."
    ) from error


def default_config(model: str) -> str | None:
    """The hub id diffusers picks for a single file's keys (FLUX.1 [dev]/Depth/Fill, SD3
    Medium, SD3.5 Medium/Large), from the file's header; None when it cannot tell."""
    from diffusers.loaders.single_file_utils import (
        DIFFUSERS_DEFAULT_PIPELINE_PATHS,
        infer_diffusers_model_type,
    )

    shapes = {
        ORIGINAL_PREFIX + k: SimpleNamespace(shape=v) for k, v in single_file_shapes(model).items()
    }
    try:
        kind = infer_diffusers_model_type(shapes)
    except Exception:  # noqa: BLE001 - keys diffusers does not know
        return None
    if not kind.startswith(("flux-dev", "flux-depth", "flux-fill", "flux-schnell", "sd3", "sd35")):
        return None
    return DIFFUSERS_DEFAULT_PIPELINE_PATHS[kind]["pretrained_model_name_or_path"]


def load_sd3(model: str, controlnets: Sequence[str], kwargs: dict, model_config: str | None = None):
    """`sd3.Pix2VideoSD3ControlNetPipeline` with its SD3 ControlNets; one sentence each failure."""
    from diffusers import SD3Transformer2DModel
    from diffusers.models.controlnets.controlnet_sd3 import SD3ControlNetModel

    from .sd3 import Pix2VideoSD3ControlNetPipeline, check_not_turbo

    check_not_turbo(model)  # the scheduler's few-step check is `load_backbone`'s
    if not controlnets:
        raise ModelNotAvailableError(
            f"The model '{model}' (SD3) needs an SD3 ControlNet for the video's structure: add "
            "--controlnet ID --control canny|depth (e.g. "
            "stabilityai/stable-diffusion-3.5-large-controlnet-depth with --control depth)."
        )
    for name in controlnets:
        config = _component_config(name, "config.json")
        if config is not None and config.get("_class_name") != "SD3ControlNetModel":
            raise ModelNotAvailableError(
                f"The ControlNet '{name}' is a {config.get('_class_name')}, not an SD3 "
                f"ControlNet, so the SD3 model '{model}' cannot use it."
            )
    nets = [
        load_pretrained(SD3ControlNetModel.from_pretrained, c, "ControlNet", **kwargs)
        for c in controlnets
    ]
    for name, net in zip(controlnets, nets, strict=True):
        if net.config.extra_conditioning_channels:
            raise ModelNotAvailableError(
                f"The ControlNet '{name}' is an SD3 inpainting ControlNet (it reads a mask "
                "beside the control image), which cannot condition a video edit; use a canny, "
                "depth or blur one."
            )
    source, extra = weights_source(model, model_config, SD3Transformer2DModel, kwargs)
    return load_pretrained(
        Pix2VideoSD3ControlNetPipeline.from_pretrained,
        source,
        "diffusion model",
        controlnet=nets,
        **extra,
        **kwargs,
    )


def load_flux(
    model: str, controlnets: Sequence[str], kwargs: dict, model_config: str | None = None
):
    """`flux.Pix2VideoFluxControlPipeline` for FLUX.1 Depth/Canny [dev], or
    `flux_controlnet.Pix2VideoFluxControlNetPipeline` for FLUX.1 [dev] with FLUX ControlNets;
    one sentence each refusal: schnell (few-step), a FLUX without control, a ControlNet beside
    a model that reads the control image itself or of another family."""
    from diffusers import FluxTransformer2DModel

    from .flux import Pix2VideoFluxControlPipeline

    source, extra = weights_source(model, model_config, FluxTransformer2DModel, kwargs)
    transformer = (
        dict(extra["transformer"].config)
        if extra
        else _component_config(model, "transformer/config.json") or {}
    )
    latent = (_component_config(source, "vae/config.json") or {}).get("latent_channels", 16)
    if not transformer.get("guidance_embeds", False):
        raise ModelNotAvailableError(
            f"The model '{model}' is a few-step FLUX.1 [schnell]-kind checkpoint (no guidance "
            "embedding): Pix2Video inverts every frame at the edit's step count, and at 1-4 "
            "steps that inversion does not map back to the frames, so use FLUX.1 [dev] (with a "
            "FLUX ControlNet) or FLUX.1 Depth/Canny [dev] with 20-50 steps."
        )
    reads_control = transformer.get("in_channels") == 2 * 4 * latent
    if controlnets and reads_control:
        raise ModelNotAvailableError(
            f"The FLUX model '{model}' reads the control image itself (FLUX.1 Depth/Canny "
            "[dev]), so it takes no --controlnet: use --control depth|canny alone."
        )
    if controlnets:
        return load_flux_controlnet(model, controlnets, kwargs, source, extra)
    if not reads_control:
        raise ModelNotAvailableError(
            f"The model '{model}' is a FLUX.1 model without control (its transformer reads "
            f"{transformer.get('in_channels')} channels, not the packed latents and control "
            "latents side by side), so it needs a FLUX ControlNet for the video's structure: add "
            "--controlnet ID --control depth|canny, or use black-forest-labs/FLUX.1-Depth-dev."
        )
    return load_pretrained(
        Pix2VideoFluxControlPipeline.from_pretrained, source, "diffusion model", **extra, **kwargs
    )


def load_flux_controlnet(
    model: str, controlnets: Sequence[str], kwargs: dict, source: str, extra: dict
):
    """FLUX.1 [dev] with FLUX ControlNets that read control latents (InstantX's kind)."""
    from diffusers.models.controlnets.controlnet_flux import FluxControlNetModel

    from .flux_controlnet import Pix2VideoFluxControlNetPipeline

    for name in controlnets:
        config = _component_config(name, "config.json")
        if config is not None and config.get("_class_name") != "FluxControlNetModel":
            raise ModelNotAvailableError(
                f"The ControlNet '{name}' is a {config.get('_class_name')}, not a FLUX "
                f"ControlNet, so the FLUX model '{model}' cannot use it."
            )
        if config is not None and (
            config.get("num_mode") or config.get("conditioning_embedding_channels")
        ):
            kind = "Union (it reads a control mode)" if config.get("num_mode") else "XLabs"
            raise ModelNotAvailableError(
                f"The FLUX ControlNet '{name}' is of the {kind} kind, which Pix2Video does not "
                "run yet; use one that reads VAE-encoded control images (for example "
                "InstantX/FLUX.1-dev-Controlnet-Canny or Shakker-Labs/FLUX.1-dev-ControlNet-Depth)."
            )
    nets = [
        load_pretrained(FluxControlNetModel.from_pretrained, c, "ControlNet", **kwargs)
        for c in controlnets
    ]
    blocks = {(n.config.num_layers, n.config.num_single_layers) for n in nets}
    if len(blocks) > 1:
        raise ModelNotAvailableError(
            f"The FLUX ControlNets {', '.join(controlnets)} have different numbers of blocks "
            f"({', '.join(f'{a}+{b}' for a, b in sorted(blocks))}), so their residuals cannot "
            "be summed block by block (diffusers would drop the extra ones); use ControlNets "
            "of one kind together."
        )
    return load_pretrained(
        Pix2VideoFluxControlNetPipeline.from_pretrained,
        source,
        "diffusion model",
        controlnet=nets,
        **extra,
        **kwargs,
    )
