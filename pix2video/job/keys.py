"""Content-hash cache keys of every stage (their format: `cache`).

A key names everything its stage's result depends on, so a new prompt for the same clip
reuses depth and inversion, and a killed job resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import EditSettings
from .masks import LocalEditMasks
from .source import SourceClip


@dataclass(frozen=True)
class StageKeys:
    """Per frame the depth and inversion keys; the edit's key (all frames) and the preview's."""

    depth: list[str]
    inversion: list[str]
    edit: str | None  # None when only the anchor was prepared
    preview: str


def model_identity(s: EditSettings):
    """What names the weights: the checkpoint, and its ControlNets, LoRAs, configs."""
    from .cache import model_fingerprint

    model_id = model_fingerprint(s.model)
    if not (s.controlnet or s.lora or s.model_config or s.depth_model):
        return model_id  # SD2's keys stay as they were
    return {
        "checkpoint": model_id,
        "model_config": model_fingerprint(s.model_config) if s.model_config else None,
        "controlnets": [
            [model_fingerprint(c), scale]
            for c, scale in zip(s.controlnet, s.control_scales, strict=True)
        ],
        "loras": [[model_fingerprint(name), scale] for name, scale in s.loras],
        "depth_model": model_fingerprint(s.depth_model) if s.depth_model else None,
    }


def depth_identity(s: EditSettings):
    """Depth/control images depend on the depth estimator, not on ControlNets or LoRAs."""
    from ..pipelines.checkpoints import is_flux_checkpoint, is_sd3_checkpoint
    from .cache import model_fingerprint

    if s.controlnet or s.control:
        if is_sd3_checkpoint(s.model) or is_flux_checkpoint(s.model):  # made by the model's VAE
            return {"checkpoint": model_fingerprint(s.model), "control": "latents"}
        return None  # the control sources name everything (depth model included)
    depth_id = model_fingerprint(s.model)
    if s.depth_model:
        return {"checkpoint": depth_id, "depth_model": model_fingerprint(s.depth_model)}
    return depth_id


def make_keys(
    s: EditSettings,
    source: SourceClip,
    source_prompt: str,
    compute: dict,
    depth_sources: list,
    masks: LocalEditMasks | None,
    all_frames: bool,
) -> StageKeys:
    """The keys of every stage; `compute` is the device type, dtype and VAE tiling."""
    from .cache import make_key

    model_id = model_identity(s)
    depth_id = depth_identity(s)
    size = [source.width, source.height]
    depth_keys = [
        make_key("depth", model=depth_id, compute=compute, frame=h, size=size, depth=d)
        for h, d in zip(source.frame_hashes, depth_sources, strict=True)
    ]
    inversion_keys = [
        make_key(
            "inversion",
            model=model_id,
            compute=compute,
            frame=h,
            size=size,
            steps=s.steps,
            source_prompt=source_prompt,
            depth=d,
        )
        for h, d in zip(source.frame_hashes, depth_keys, strict=True)
    ]

    def edit_key(positions: list[int]) -> str:
        return _edit_key(
            s, model_id, compute, [inversion_keys[i] for i in positions], masks, positions
        )

    return StageKeys(
        depth=depth_keys,
        inversion=inversion_keys,
        edit=edit_key(list(range(source.num_frames))) if all_frames else None,
        preview=edit_key([source.anchor_position]),
    )


def _edit_key(
    s: EditSettings,
    model_id,
    compute: dict,
    inversion_keys: list[str],
    masks: LocalEditMasks | None,
    positions: list[int],
) -> str:
    """The edit's key over the frames at `positions` (with their inversions' keys): what the
    method's result depends on, guidance settings only where guidance is on."""
    from .cache import hash_array, make_key

    options = s.edit_options()
    guided = len(options.guidance_targets)
    blocks = options.inject_blocks  # SD3's chosen blocks; absent from the other keys
    mask_hashes = None
    if s.masked:  # the latent masks are what the edit depends on
        mask_hashes = [hash_array(masks.latent[i]) for i in positions]
    return make_key(
        "edit",
        model=model_id,
        compute=compute,
        inversions=inversion_keys,
        masks=mask_hashes,
        prompt=s.prompt,
        negative_prompt=s.negative_prompt,
        steps=s.steps,
        guidance_scale=float(s.guidance_scale),
        attend=s.attend,
        anchor=s.anchor,
        seed=s.seed,
        latent_guidance_weight=float(s.latent_guidance_weight) if guided else 0.0,
        latent_guidance_steps=guided,
        latent_guidance_target=s.latent_guidance_target if guided else None,
        feature_store_dtype=s.feature_store_dtype,
        **({"inject_blocks": list(blocks)} if blocks is not None else {}),
        **({"image_attention": "injected"} if _has_image_attention(s.model) else {}),
    )


def _has_image_attention(model: str) -> bool:
    """SD3.5 Medium's kind (MMDiT-X `attn2` blocks), whose edits changed when the injection
    reached `attn2`: its keys say so, so no edit cached before is served for them."""
    from ..models import component_config

    config = component_config(model, "transformer/config.json") or {}
    return bool(config.get("dual_attention_layers"))
