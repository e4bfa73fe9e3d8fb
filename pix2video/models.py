"""Resolving model names to loaded models, offline-first, with one clear error.

`name` may be a local folder, a Hugging Face hub id, or `tiny` (the random-weight
SD2-depth copy bundled with the package, for smoke runs and tests; `tiny-blip` is its
captioner). A hub id is looked up in the local cache first, so nothing touches the network
when the model is already there; a missing one is downloaded (with progress, `hub.py`) only
when `hub.can_download()` says the hub can be reached, else it is one sentence at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .errors import ModelNotAvailableError

T = TypeVar("T")

ASSETS = Path(__file__).parent / "assets"
BUNDLED_MODELS = {
    "tiny": ASSETS / "tiny-sd2-depth",
    "tiny-sd2-depth": ASSETS / "tiny-sd2-depth",
    "tiny-blip": ASSETS / "tiny-blip",  # the captioner of `tiny` (random weights too)
}
DEFAULT_MODEL = "stabilityai/stable-diffusion-2-depth"
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"  # why this one: see `evaluation.clip_score`
DEFAULT_MASK_MODEL = "CIDAS/clipseg-rd64-refined"  # text -> mask for local edits (`masks`)
DEFAULT_DEPTH_MODEL = "Intel/dpt-hybrid-midas"  # --control depth of the UNet families
DEFAULT_DIT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
"""--control depth of SD3/SD3.5 and FLUX.1 Depth [dev]: a Depth Anything estimator, the family
Black Forest Labs' own FLUX.1 Depth code makes its depth images with (as recalled, v1 Large).
Small (~100 MB, Apache-2.0) rather than Large (CC-BY-NC-4.0, not for commercial work); name
Large with --depth-model."""
SD3_FLUX_MODELS = {
    "stabilityai/stable-diffusion-3.5-medium": "SD3.5 Medium",
    "stabilityai/stable-diffusion-3.5-large": "SD3.5 Large",
    "stabilityai/stable-diffusion-3.5-large-controlnet-depth": "SD3.5 Large depth ControlNet",
    "stabilityai/stable-diffusion-3.5-large-controlnet-canny": "SD3.5 Large canny ControlNet",
    "black-forest-labs/FLUX.1-Depth-dev": "FLUX.1 Depth [dev]",
    "black-forest-labs/FLUX.1-Canny-dev": "FLUX.1 Canny [dev]",
}
"""The SD3/FLUX checkpoints `download` and `doctor` know by name; all are gated on the hub."""
FLUX_CONTROL_MODELS = {"black-forest-labs/FLUX.1-Depth-dev", "black-forest-labs/FLUX.1-Canny-dev"}
GATED_HINT = "it is gated: accept its licence on its hub page and log in (`hf auth login`) first"
BLIP = "Salesforce/blip-image-captioning-base"  # the source prompt (`pipelines.caption`)
TINY_CAPTIONER = "tiny-blip"  # random weights, like `tiny`: captions are arbitrary words
AUTO = "auto"
DEFAULT_CAPTIONER = AUTO
"""The default `--captioner`: `BLIP`, or the bundled tiny BLIP for the bundled tiny model."""


def resolve_captioner(captioner: str, model: str = "") -> str:
    """The captioner `auto` stands for with diffusion model `model`; other names unchanged.

    The bundled tiny model gets the bundled tiny captioner, so its offline smoke run needs
    no source prompt and no download; every other model gets BLIP base.
    """
    if captioner != AUTO:
        return captioner
    return TINY_CAPTIONER if BUNDLED_MODELS.get(model) == BUNDLED_MODELS["tiny"] else BLIP


def resolve_model_path(name: str) -> str:
    """Map `tiny` to the bundled folder; return other names unchanged."""
    bundled = BUNDLED_MODELS.get(name)
    return str(bundled) if bundled is not None else str(name)


def component_config(model: str, name: str) -> dict | None:
    """A component's config (e.g. `unet/config.json`) from a folder or the hub cache, or None."""
    import json

    config = Path(resolve_model_path(model)).expanduser() / name
    if not config.is_file() and not config.parents[1].exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(str(model), name)
            config = Path(found) if isinstance(found, str) else config
        except Exception:  # noqa: BLE001 - a malformed id: the loader says so
            return None
    return json.loads(config.read_text()) if config.is_file() else None


ORIGINAL_PREFIX = "model.diffusion_model."
TRANSFORMER_FILE_KEYS = {
    "flux": (("double_blocks.0.img_attn.norm.key_norm.scale",), ("single_transformer_blocks.0.proj_mlp.weight",)),
    "sd3": (("joint_blocks.0.x_block.attn.qkv.weight",), ("pos_embed.proj.weight", "transformer_blocks.0.attn.add_k_proj.weight")),
}  # fmt: skip
"""Per family, the keys of each layout of its transformer single file: the original one
(BFL's, Stability's; the `model.diffusion_model.` prefix stripped), then diffusers'."""


def single_file_shapes(model: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a `.safetensors` file's tensors, read from its header only (the
    original layout's `model.diffusion_model.` prefix stripped); {} for anything else."""
    path = Path(resolve_model_path(model)).expanduser()
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return {}
    return dict(_header_shapes(str(path), path.stat().st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _header_shapes(path: str, mtime_ns: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    try:
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            shapes = [(k, tuple(f.get_slice(k).get_shape())) for k in f.keys()]
    except Exception:  # noqa: BLE001 - unreadable: not a transformer file; its loader says why
        return ()
    return tuple((k.removeprefix(ORIGINAL_PREFIX), shape) for k, shape in shapes)


def single_file_family(model: str) -> str | None:
    """ "flux" or "sd3" for a single file holding that transformer (either layout), else None."""
    shapes = single_file_shapes(model)
    for family, layouts in TRANSFORMER_FILE_KEYS.items():
        if any(all(k in shapes for k in keys) for keys in layouts):
            return family
    return None


def transformer_file_channels(model: str) -> tuple[int, int]:
    """(input, output) channels per token of a FLUX/SD3 transformer single file: its first
    and last projections (FLUX: packed 2x2; SD3: per patch)."""
    shapes = single_file_shapes(model)
    first = next(shapes[k] for k in ("img_in.weight", "x_embedder.weight", "x_embedder.proj.weight",
                                      "pos_embed.proj.weight") if k in shapes)  # fmt: skip
    last = next(shapes[k] for k in ("final_layer.linear.weight", "proj_out.weight") if k in shapes)
    inputs = first[1] * (first[2] * first[3] if len(first) == 4 else 1)
    return int(inputs), int(last[0])


def is_flux_checkpoint(model: str) -> bool:
    """Whether a folder, hub id or single file holds a FLUX.1 transformer."""
    if single_file_family(model) == "flux":
        return True
    config = component_config(model, "transformer/config.json")
    return config is not None and config.get("_class_name") == "FluxTransformer2DModel"


def reads_control_itself(model: str) -> bool:
    """FLUX.1 Depth/Canny [dev]: a FLUX transformer that reads the packed latents and control
    latents side by side (2 x 4 x the VAE's channels) is its own control model, which one
    `--control` feeds without `--controlnet`."""
    if not is_flux_checkpoint(model):  # a known one not cached yet is told by its name
        return model in FLUX_CONTROL_MODELS
    if single_file_shapes(model):
        inputs, outputs = transformer_file_channels(model)
        return inputs == 2 * outputs
    latent = (component_config(model, "vae/config.json") or {}).get("latent_channels", 16)
    transformer = component_config(model, "transformer/config.json") or {}
    return transformer.get("in_channels") == 2 * 4 * latent


def known_models() -> dict[str, str]:
    """Hub id -> what it is, for every model pix2video uses unasked or knows by name."""
    return {
        DEFAULT_MODEL: "the default diffusion model",
        BLIP: "the default captioner",
        DEFAULT_MASK_MODEL: "the default segmentation model",
        DEFAULT_DEPTH_MODEL: "the default depth model of the UNet models",
        DEFAULT_DIT_DEPTH_MODEL: "the default depth model of SD3 and FLUX",
        DEFAULT_CLIP_MODEL: "the CLIP model of eval",
        **SD3_FLUX_MODELS,
    }


def default_depth_model(model: str | None) -> str:
    """The `--control depth` estimator when none is named: Depth Anything V2 for an SD3/FLUX
    transformer (told by its config or single file's keys, or a known hub id not yet cached),
    DPT otherwise."""
    if not model:
        return DEFAULT_DEPTH_MODEL
    if model in SD3_FLUX_MODELS or component_config(model, "transformer/config.json"):
        return DEFAULT_DIT_DEPTH_MODEL
    return DEFAULT_DIT_DEPTH_MODEL if single_file_family(model) else DEFAULT_DEPTH_MODEL


def gated_hint(name: str) -> str:
    """'; it is gated: ...' for the gated models pix2video knows, else ''."""
    return f"; {GATED_HINT}" if name in SD3_FLUX_MODELS else ""


def _offline() -> bool:
    """Nothing may be downloaded now (offline mode, or the hub does not answer): `hub.py`."""
    from .hub import can_download

    return not can_download()


def load_pretrained(
    loader: Callable[..., T], name: str, what: str, fallback_hint: str = "", **kwargs
) -> T:
    """Call `loader(name_or_path, **kwargs)` (a `from_pretrained`), turning failures into one sentence.

    Order: local folder; hub id from the local cache only; then (unless offline) a download.
    """
    path = resolve_model_path(name)
    if Path(path).exists():
        if not Path(path).is_dir():
            raise ModelNotAvailableError(
                f"The {what} '{name}' is a file; pass a model folder or a hub id."
            )
        try:
            return loader(path, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any loader failure becomes one sentence
            raise ModelNotAvailableError(
                f"The folder '{name}' does not hold a loadable {what} ({type(exc).__name__}: {exc})."
            ) from exc
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise ModelNotAvailableError(f"The {what} folder '{name}' does not exist.")
    require_available(name, what, fallback_hint)
    try:
        return loader(path, local_files_only=True, **kwargs)
    except Exception as exc:  # noqa: BLE001
        cached_error = exc
    from .hub import can_download, download_model

    if not can_download():
        raise not_available(name, what, fallback_hint) from cached_error
    try:
        download_model(path)  # with progress, resumable, checked
        return loader(path, local_files_only=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - files our selection missed: the loader's own way
        cached_error = exc
    try:
        return loader(path, **kwargs)
    except Exception as exc:  # noqa: BLE001
        cached_error = exc
    raise ModelNotAvailableError(
        f"The {what} '{name}' could not be downloaded or loaded "
        f"({type(cached_error).__name__}: {first_line(cached_error)}); check the name, or "
        f"pass a local folder{fallback_hint}."
    ) from cached_error


def fetch_missing(name: str, what: str) -> None:
    """Download the hub id `name` now when the cache lacks it (with progress), so that what it
    is (UNet or SD3/FLUX transformer) is read from its configs before a loader is chosen: on
    first use an SD3.5 or FLUX id would otherwise take the UNet loaders' path. Offline: the
    `not_available` sentence at once."""
    from .hub import download_model, in_cache, is_hub_id

    if name in BUNDLED_MODELS or not is_hub_id(name) or in_cache(name):
        return
    require_available(name, what)
    download_model(name)


def require_available(name: str, what: str, fallback_hint: str = "") -> None:
    """Fail at once when the hub id `name` is not in the local cache and cannot be downloaded.

    Cheap (no model library is imported), so a loader can call it before importing
    transformers or diffusers, which takes seconds.
    """
    from .hub import can_download, in_cache, is_hub_id

    if name in BUNDLED_MODELS or not is_hub_id(name) or in_cache(name):
        return
    if not can_download():
        raise not_available(name, what, fallback_hint)


def not_available(name: str, what: str, fallback_hint: str = "") -> ModelNotAvailableError:
    from .hub import offline_reason

    return ModelNotAvailableError(
        f"The {what} '{name}' is not available offline: it is not in the local hub cache "
        f"and {offline_reason()}; get it with `pix2video download {name}` where there is "
        f"internet (then copy the hub cache), or pass a local folder{fallback_hint}"
        f"{gated_hint(name)}."
    )


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0].rstrip(".")


# ------------------------------------------------------------------------------ what to fetch
def models_for(
    model: str | None = None,
    controlnets: tuple[str, ...] = (),
    captioner: str | None = None,
    mask_model: str | None = None,
    depth_model: str | None = None,
    clip_model: str | None = None,
    names: tuple[str, ...] = (),
    defaults: bool = False,
    controls: tuple[str, ...] = (),
) -> list[tuple[str, str]]:
    """(what, name) of every model these options load, without repeats; `defaults` adds the
    default of each kind that is not given (what `pix2video edit/ui/eval` use unasked), and
    `--control depth` the depth model it reads with `model` (`default_depth_model`)."""
    if defaults:
        model = model or DEFAULT_MODEL
        captioner = captioner or AUTO
        mask_model = mask_model or DEFAULT_MASK_MODEL
        clip_model = clip_model or DEFAULT_CLIP_MODEL
    if defaults or "depth" in controls:
        depth_model = depth_model or default_depth_model(model)
    wanted = [("model", n) for n in names]
    wanted += [("diffusion model", model)] if model else []
    wanted += [("ControlNet", c) for c in controlnets]
    if captioner:
        wanted.append(("captioner", resolve_captioner(captioner, model or DEFAULT_MODEL)))
    wanted += [("segmentation model", mask_model)] if mask_model else []
    wanted += [("depth model", depth_model)] if depth_model else []
    wanted += [("CLIP model", clip_model)] if clip_model else []
    seen: set[str] = set()
    unique = []
    for what, name in wanted:
        if name not in seen:
            seen.add(name)
            unique.append((what, name))
    return unique
