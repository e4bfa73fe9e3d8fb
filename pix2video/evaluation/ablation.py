"""The paper's ablations on one clip: which parts of Pix2Video buy temporal consistency.

Pix2Video (Ceylan, Huang, Mitra, ICCV 2023, Sec. 5 and Fig. 6) keeps an edited clip coherent
with two additions to plain per-frame DDIM editing: decoder self-attention that reads the
*anchor* and the *previous* edited frame, and a guided latent update that pulls each frame's
predicted clean latent towards the previous frame's during the early steps. Each variant in
`VARIANTS` removes or swaps one of them, so the metrics show what each part contributes:

- **per-frame (SDEdit-like)**: no cross-frame attention and no latent update. Every frame is
  edited on its own from its inverted noise: the SDEdit-style baseline, whose frames agree
  only as far as the depth and the inversion make them agree (heavy flicker in the paper).
- **anchor only**: keys/values from the anchor alone. The look stays tied to frame 0, but
  nothing links neighbouring frames, so fast motion gives flicker / local inconsistency.
- **previous only**: keys/values from the previous frame alone. Neighbours agree, but errors
  accumulate along the chain: the paper reports that the edit drifts and fades over time.
- **anchor + random earlier**: the anchor plus a random earlier frame instead of the
  previous one (the paper's third attention ablation); weaker short-range coherence.
- **anchor + previous, no latent update**: the paper's attention without the guided latent
  update, which the paper shows leaves more flicker.
- **full**: anchor + previous attention and the latent update (the method as published).

Every variant starts from the same inverted noise with the same depth, seed and settings:
depth and DDIM inversion do not depend on the variant, so they run once and are shared.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..atomic import write_output
from ..core.inversion import ProgressCallback
from ..core.options import EditOptions
from ..errors import InputError
from ..pipelines.backbone import Pix2VideoOutput
from ..pipelines.inputs import check_call_inputs
from ..pipelines.sd2_depth import Pix2VideoPipeline
from .metrics import DEFAULT_CLIP_MODEL, ClipScorer, EvalReport, evaluate

VARIANTS: dict[str, dict[str, Any]] = {
    "per-frame (SDEdit-like)": {"attend": "none", "latent_guidance_weight": 0.0},
    "anchor only": {"attend": "anchor"},
    "previous only": {"attend": "previous"},
    "anchor + random earlier": {"attend": "anchor+random"},
    "anchor + previous, no latent update": {"latent_guidance_weight": 0.0},
    "full (anchor + previous + latent update)": {},
}
"""Variant name -> overrides of the pipeline's keyword arguments (ordered as in the table)."""

# Pipeline arguments the ablation sets itself (or that make no sense shared by all variants).
_RESERVED = frozenset(
    {"self", "frames", "prompt", "source_prompt", "depth_maps", "progress", "resume", "on_step_end"}
)

# Contact sheet layout, in pixels.
LABEL_WIDTH = 200
"""Width of the label column on the left of the contact sheet."""
HEADER_HEIGHT = 16
"""Height of the strip above the thumbnails naming each column's frame index."""
GAP = 4
"""Space after each thumbnail, horizontally and vertically."""
DEFAULT_THUMB_HEIGHT = 256
"""Largest thumbnail height when none is given (smaller frames are shown at their size)."""
SOURCE_LABEL = "source"


@dataclass
class AblationRow:
    """One variant's result: its effective settings, metrics, cost and edited frames."""

    name: str
    settings: dict
    report: EvalReport
    seconds_per_frame: float
    frames: list[np.ndarray]

    def to_dict(self) -> dict:
        """JSON-ready: name, settings, metrics (`EvalReport.to_dict`) and seconds per frame."""
        return {
            "name": self.name,
            "settings": _json_settings(self.settings),
            "metrics": self.report.to_dict(),
            "seconds_per_frame": self.seconds_per_frame,
        }


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def select_variants(variants: Sequence[str] | None) -> list[str]:
    """The variant names to run, in the order given (all of `VARIANTS` when None)."""
    if variants is None:
        return list(VARIANTS)
    if isinstance(variants, str):
        variants = [variants]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        valid = ", ".join(repr(v) for v in VARIANTS)
        raise InputError(f"Unknown ablation variant(s) {unknown!r}; valid names are: {valid}.")
    if not variants:
        raise InputError("No ablation variant selected; name at least one.")
    return list(dict.fromkeys(variants))


def _call_defaults(pipe: Pix2VideoPipeline) -> dict[str, Any]:
    """Default values of the pipeline's keyword arguments (its `__call__` signature)."""
    params = inspect.signature(type(pipe).__call__).parameters
    return {
        name: p.default
        for name, p in params.items()
        if name not in _RESERVED and p.default is not inspect.Parameter.empty
    }


def _check_pipeline_kwargs(pipe: Pix2VideoPipeline, kwargs: dict[str, Any]) -> None:
    """Fail before any model work on an argument the pipeline would reject."""
    allowed = _call_defaults(pipe)
    bad = sorted(k for k in kwargs if k not in allowed)
    if bad:
        raise InputError(
            f"Unknown or reserved pipeline argument(s) {bad} for the ablation; "
            f"allowed: {', '.join(sorted(allowed))}."
        )


def variant_settings(
    pipe: Pix2VideoPipeline, name: str, pipeline_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The settings that distinguish a variant, stated in full.

    `attend` and `latent_guidance_weight` are always present (with the pipeline's defaults
    where the variant does not override them), followed by the shared `pipeline_kwargs`
    (tensors given as precomputed `depth` / `inverted_latents` are left out).
    """
    defaults = _call_defaults(pipe)
    settings = {k: defaults[k] for k in ("attend", "latent_guidance_weight")}
    shared = {k: v for k, v in pipeline_kwargs.items() if not torch.is_tensor(v)}
    return {**settings, **shared, **VARIANTS[name]}


def _shared_inputs(
    pipe: Pix2VideoPipeline,
    frames: list[np.ndarray],
    source_prompt: str,
    depth_maps: Any,
    num_inference_steps: int,
    given: dict[str, Any],
    progress: ProgressCallback | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised depth and inverted noise x_T of every frame (input order), computed once
    (unless `given` has them: the caller's `depth`, `inverted_latents`).

    Inversion is per frame and conditioned on the *source* prompt, so it is the same for
    every variant and for either anchor end (the pipeline reorders it itself): every variant
    starts from the same x_T (also why frame 0, the anchor, comes out identical in all
    variants: it gets ordinary self-attention and no latent update).
    """
    depth, inverted_latents = given.get("depth"), given.get("inverted_latents")
    if depth is None:
        depth = pipe.prepare_depth(frames, depth_maps)
    if inverted_latents is None:
        source_embedding = pipe.encode_prompt(source_prompt)
        latents = pipe.encode_frames(frames)
        inverted_latents = pipe.invert(
            latents, depth, source_embedding, num_inference_steps, progress
        )
    return depth, inverted_latents


def run_ablation(
    pipe: Pix2VideoPipeline,
    frames: list[np.ndarray],
    prompt: str,
    source_prompt: str,
    *,
    variants: list[str] | None = None,
    scorer: ClipScorer | None = None,
    clip_model: str = DEFAULT_CLIP_MODEL,
    depth_maps: torch.Tensor | np.ndarray | None = None,
    progress: ProgressCallback | None = None,
    **pipeline_kwargs: Any,
) -> list[AblationRow]:
    """Edit one clip with each ablation variant (same seed and settings) and evaluate each.

    Args:
        pipe: a loaded `Pix2VideoPipeline`.
        frames: RGB uint8 frames (at least 2: the temporal metrics compare consecutive ones),
            sides multiples of 64.
        prompt / source_prompt: the edit prompt and the description of the input.
        variants: names from `VARIANTS` (default: all, in table order).
        scorer: a `ClipScorer` to reuse; otherwise `clip_model` is loaded (before any
            diffusion work, so a missing CLIP fails fast).
        depth_maps: raw depth per frame, as for the pipeline (estimated when omitted).
        progress: the pipeline's callback; additionally called as
            ``progress("ablation", variants_done, variants_total)`` after each variant.
        pipeline_kwargs: shared keyword arguments of `Pix2VideoPipeline.__call__`
            (`num_inference_steps`, `guidance_scale`, `seed`, `anchor`, ...); a variant's
            overrides win over them. `depth` / `inverted_latents` may be passed to reuse
            precomputed ones.

    `seconds_per_frame` of a row = (that variant's editing + decoding time) / N
    + (the shared depth + inversion time) / N, i.e. what one standalone run of that variant
    would cost per frame. Evaluation time is not included.
    """
    names = select_variants(variants)
    frames = [np.asarray(f) for f in frames]
    settings = _check_run(pipe, frames, prompt, source_prompt, pipeline_kwargs)
    if scorer is None:
        scorer = ClipScorer(clip_model)
    scorer.text_embedding(prompt)  # prompts too long for CLIP or the UNet's text encoder
    pipe.encode_prompt(prompt)  # fail here, before the inversion, not after it

    steps = settings["num_inference_steps"]
    call_kwargs = dict(pipeline_kwargs, num_inference_steps=steps)
    tic = time.perf_counter()
    call_kwargs["depth"], call_kwargs["inverted_latents"] = _shared_inputs(
        pipe, frames, source_prompt, depth_maps, steps, pipeline_kwargs, progress
    )
    shared_seconds = time.perf_counter() - tic

    rows = []
    for i, name in enumerate(names):
        out = pipe(
            frames, prompt, source_prompt, progress=progress, **call_kwargs, **VARIANTS[name]
        )
        rows.append(_row(pipe, name, out, frames, prompt, scorer, shared_seconds, pipeline_kwargs))
        if progress:
            progress("ablation", i + 1, len(names))
    return rows


def _check_run(
    pipe: Pix2VideoPipeline,
    frames: list[np.ndarray],
    prompt: str,
    source_prompt: str,
    pipeline_kwargs: dict[str, Any],
) -> dict[str, Any]:
    """Validate everything before any model work; returns the pipeline defaults + kwargs."""
    if len(frames) < 2:
        raise InputError(
            f"The ablation needs at least 2 frames (its metrics compare consecutive frames); got {len(frames)}."
        )
    _check_pipeline_kwargs(pipe, pipeline_kwargs)
    settings = {**_call_defaults(pipe), **pipeline_kwargs}
    method = {f.name for f in dataclasses.fields(EditOptions)}
    given = set(inspect.signature(check_call_inputs).parameters) - {
        "pipe", "frames", "prompt", "source_prompt", "options"
    }  # fmt: skip
    pipe.check_inputs(
        frames,
        prompt,
        source_prompt,
        EditOptions(**{k: v for k, v in settings.items() if k in method}),
        **{k: v for k, v in settings.items() if k in given},
    )
    return settings


def _row(
    pipe: Pix2VideoPipeline,
    name: str,
    out: Pix2VideoOutput,
    frames: list[np.ndarray],
    prompt: str,
    scorer: ClipScorer,
    shared_seconds: float,
    pipeline_kwargs: dict[str, Any],
) -> AblationRow:
    """Evaluate one variant's output and charge it its own plus the shared time."""
    own_seconds = out.timings.get("editing", 0.0) + out.timings.get("decoding", 0.0)
    return AblationRow(
        name=name,
        settings=variant_settings(pipe, name, pipeline_kwargs),
        report=evaluate(out.frames, frames, prompt, scorer),
        seconds_per_frame=(own_seconds + shared_seconds) / len(frames),
        frames=out.frames,
    )


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------

TABLE_COLUMNS = ("CLIP-Text ↑", "CLIP-Image ↑", "PixelMSE ↓", "PixelMSE (masked) ↓", "s/frame")


def _fmt(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else "n/a"


def _row_values(row: AblationRow) -> list[float]:
    r = row.report
    return [r.clip_text, r.clip_image, r.pixel_mse, r.pixel_mse_masked, row.seconds_per_frame]


def ablation_table(rows: Sequence[AblationRow]) -> str:
    """Markdown table: one row per variant, columns CLIP-Text, CLIP-Image, PixelMSE,
    PixelMSE (masked) and seconds per frame (arrows mark the better direction)."""
    lines = [
        "| Variant | " + " | ".join(TABLE_COLUMNS) + " |",
        "|---|" + "---:|" * len(TABLE_COLUMNS),
    ]
    for row in rows:
        name = row.name.replace("|", "\\|")
        lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in _row_values(row)) + " |")
    return "\n".join(lines) + "\n"


def _json_settings(settings: dict) -> dict:
    """Settings with non-JSON values (dtypes, devices) written as strings."""
    return json.loads(json.dumps(settings, default=str))


def slugify(name: str) -> str:
    """Folder name for a variant: lower case, runs of other characters become one dash."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "variant"


def sheet_columns(num_frames: int, columns: int) -> list[int]:
    """`columns` evenly spaced frame indices, always including the first and the last."""
    if columns < 2:
        raise InputError(f"The contact sheet needs at least 2 columns; got {columns}.")
    if num_frames <= columns:
        return list(range(num_frames))
    return sorted({round(x) for x in np.linspace(0, num_frames - 1, columns)})


def _thumb_size(frame: np.ndarray, thumb_height: int | None) -> tuple[int, int]:
    h, w = frame.shape[:2]
    height = thumb_height or min(h, DEFAULT_THUMB_HEIGHT)
    return max(1, round(w * height / h)), height


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """Break `text` at spaces so that each line fits `width` pixels (a long word stays whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return "\n".join(lines)


def contact_sheet(
    rows: Sequence[AblationRow],
    source_frames: Sequence[np.ndarray],
    columns: int = 4,
    thumb_height: int | None = None,
) -> Image.Image:
    """One image comparing the variants: rows = [source] + variants, columns = frames.

    Size: width ``LABEL_WIDTH + k * (thumb_w + GAP)``, height
    ``HEADER_HEIGHT + (1 + len(rows)) * (thumb_h + GAP)`` with k = `sheet_columns(...)` count
    and thumbnails scaled to `thumb_height` (default: frame height, at most 256).
    """
    indices = sheet_columns(len(source_frames), columns)
    thumb_w, thumb_h = _thumb_size(np.asarray(rows[0].frames[0]), thumb_height)
    grid = [(SOURCE_LABEL, list(source_frames))] + [(r.name, r.frames) for r in rows]
    sheet = Image.new(
        "RGB",
        (LABEL_WIDTH + len(indices) * (thumb_w + GAP), HEADER_HEIGHT + len(grid) * (thumb_h + GAP)),
        "white",
    )
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for c, index in enumerate(indices):
        draw.text((LABEL_WIDTH + c * (thumb_w + GAP), 2), f"frame {index}", fill="black", font=font)
    for r, (label, frames) in enumerate(grid):
        top = HEADER_HEIGHT + r * (thumb_h + GAP)
        text = _wrap(draw, label, font, LABEL_WIDTH - 2 * GAP)
        draw.multiline_text((GAP, top + 2), text, fill="black", font=font)
        for c, index in enumerate(indices):
            thumb = Image.fromarray(np.asarray(frames[index], dtype=np.uint8)).convert("RGB")
            thumb = thumb.resize((thumb_w, thumb_h), Image.Resampling.LANCZOS)
            sheet.paste(thumb, (LABEL_WIDTH + c * (thumb_w + GAP), top))
    return sheet


def _check_rows(rows: Sequence[AblationRow], source_frames: Sequence[np.ndarray]) -> None:
    if not rows:
        raise InputError("There are no ablation results to save.")
    for row in rows:
        if len(row.frames) != len(source_frames):
            raise InputError(
                f"Variant {row.name!r} has {len(row.frames)} frames but the source has "
                f"{len(source_frames)}; pass the frames the ablation was run on."
            )


def _save_png(image: Image.Image, path: Path) -> Path:
    return write_output(path, lambda tmp: image.save(tmp, format="PNG"))


def _save_text(text: str, path: Path) -> Path:
    return write_output(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _markdown(rows: Sequence[AblationRow]) -> str:
    prompt = rows[0].report.prompt.replace("\n", " ")
    return (
        "# Pix2Video ablation\n\n"
        f"**Prompt:** {prompt} · **Frames:** {rows[0].report.num_frames} · "
        f"**CLIP:** `{rows[0].report.clip_model}`\n\n"
        + ablation_table(rows)
        + "\ns/frame includes the shared depth + inversion time divided by the frame count.\n"
    )


def save_ablation(
    rows: Sequence[AblationRow],
    out_dir: str | Path,
    source_frames: Sequence[np.ndarray],
    columns: int = 4,
    *,
    thumb_height: int | None = None,
    save_frames: bool = False,
) -> dict[str, Path]:
    """Write the ablation's table, JSON and contact sheet (and, optionally, every frame).

    Files: ``ablation.md`` (the table), ``ablation.json`` (a list of ``{name, settings,
    metrics, seconds_per_frame}``), ``contact_sheet.png`` (see `contact_sheet`) and, with
    `save_frames`, ``<slug>/000000.png ...`` per variant. Returns ``{"markdown", "json",
    "contact_sheet"}`` paths plus one folder per variant slug when frames are saved.
    """
    _check_rows(rows, source_frames)
    out_dir = Path(out_dir)
    paths = {
        "markdown": _save_text(_markdown(rows), out_dir / "ablation.md"),
        "json": _save_text(
            json.dumps([row.to_dict() for row in rows], indent=2) + "\n", out_dir / "ablation.json"
        ),
        "contact_sheet": _save_png(
            contact_sheet(rows, source_frames, columns, thumb_height), out_dir / "contact_sheet.png"
        ),
    }
    if save_frames:
        for row in rows:
            folder = out_dir / slugify(row.name)
            for i, frame in enumerate(row.frames):
                _save_png(
                    Image.fromarray(np.asarray(frame, dtype=np.uint8)), folder / f"{i:06d}.png"
                )
            paths[slugify(row.name)] = folder
    return paths


def load_ablation_json(path: str | Path) -> list[dict]:
    """Read ``ablation.json`` back; each entry's ``metrics`` becomes an `EvalReport`."""
    entries = json.loads(Path(path).read_text(encoding="utf-8"))
    return [dict(e, metrics=EvalReport.from_dict(e["metrics"])) for e in entries]


__all__ = [
    "VARIANTS",
    "AblationRow",
    "ablation_table",
    "contact_sheet",
    "load_ablation_json",
    "run_ablation",
    "save_ablation",
    "select_variants",
    "sheet_columns",
    "slugify",
]
