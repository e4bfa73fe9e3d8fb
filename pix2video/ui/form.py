"""The page's form as `EditSettings`: its fields, and its values read as the CLI reads options.

Gradio names the API's parameters after the handlers' parameters, so `FORM_FIELDS` is both
the order of the form's inputs and the names scripts call ``/preview`` and ``/edit`` with.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import gradio as gr

from ..settings import BACKBONE_FIELDS, EditSettings
from . import ServerOptions
from .texts import NO_VIDEO

DEFAULTS = EditSettings.defaults()

FORM_FIELDS = (
    "video",
    "prompt",
    "source_prompt",
    "mask_prompt",
    "steps",
    "size",
    "max_frames",
    "start",
    "end",
    "stride",
    "guidance_scale",
    "attend",
    "anchor",
    "latent_guidance_weight",
    "latent_guidance_steps",
    "seed",
    "frame_batch",
    "side_by_side",
)
"""The inputs of ``/edit`` in order (``/preview`` takes all but ``side_by_side``)."""


def whole(value: Any) -> Any:
    """4 from 4.0 or "4" (number and text fields); other values go to validation as they are."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value.strip()):
        return int(value)
    return value


def text_or_none(value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value.strip() if isinstance(value, str) else value


def settings_from_form(form: dict[str, Any], options: ServerOptions, output: Path) -> EditSettings:
    """`EditSettings` from the form's values and the server's options (checked by the job)."""
    o = options
    if not form.get("video"):
        raise gr.Error(NO_VIDEO, duration=None, print_exception=False)
    max_frames = whole(form.get("max_frames"))
    if max_frames is None:
        max_frames = o.max_frames
    elif isinstance(max_frames, int) and max_frames > o.max_frames:
        raise gr.Error(
            f"This server edits at most {o.max_frames} frames at a time; lower Max frames "
            f"from {max_frames}, or choose a shorter range or a larger stride.",
            duration=None,
            print_exception=False,
        )
    values = {
        name: form[name] for name in FORM_FIELDS[1:] if name in form and name not in ("max_frames",)
    }
    for name in ("start", "end", "source_prompt", "mask_prompt", "latent_guidance_steps"):
        if name in values:
            values[name] = text_or_none(values[name])
    for name in ("steps", "stride", "seed", "latent_guidance_steps"):
        if name in values:
            values[name] = whole(values[name])
    if "size" in values:
        values["size"] = text_or_none(values["size"]) or DEFAULTS["size"]
    if "frame_batch" in values:
        values["frame_batch"] = whole(text_or_none(values["frame_batch"]) or "auto")
    return EditSettings(
        input=form["video"],
        output=output,
        max_frames=max_frames,
        model=o.model,
        **{name: getattr(o, name) for name in BACKBONE_FIELDS},
        device=o.device,
        dtype=o.dtype,
        captioner=o.captioner,
        mask_model=o.mask_model,
        cache_dir=o.cache_dir,
        no_cache=o.no_cache,
        **values,
    )
