"""`pix2video ablate`: the paper's variants on one clip, a table and a contact sheet."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..core.options import MAX_STEPS
from ..errors import InputError
from ..job import check_writable_folder, resolve_device
from ..quiet import quiet_libraries, silence_libraries
from .errors import set_debug
from .options import (
    DEFAULTS,
    clip_model_option,
    model_options,
    read_frames,
    selection_options,
    size_option,
)
from .progress import Reporter

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..media.reader import Clip


@click.command(context_settings={"show_default": True})
@click.argument("input", type=click.Path())
@click.option("-p", "--prompt", required=True, help="Edit prompt: describes the result.")
@click.option(
    "--source-prompt",
    default=None,
    show_default="caption of the first frame",
    help="Describes the input (used for inversion).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for ablation.md, ablation.json and contact_sheet.png.",
)
@click.option(
    "--variants",
    default=None,
    show_default="all",
    help="Comma-separated subset of the variants (see the list above).",
)
@model_options
@size_option
@selection_options
@click.option(
    "--steps", type=click.IntRange(1, MAX_STEPS), default=DEFAULTS["steps"], help="DDIM steps."
)
@click.option(
    "--guidance-scale",
    type=float,
    default=DEFAULTS["guidance_scale"],
    help="Classifier-free guidance.",
)
@click.option(
    "--seed", type=int, default=DEFAULTS["seed"], help="Seed (used by the anchor+random variant)."
)
@clip_model_option
@click.option(
    "--captioner", default=DEFAULTS["captioner"], help="Captioning model (hub id or folder)."
)
@click.option(
    "--columns", type=click.IntRange(min=2), default=4, help="Frames per row in the contact sheet."
)
@click.option("--save-frames", is_flag=True, help="Also write every variant's frames as PNG.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or table.")
@click.option("--debug", is_flag=True, callback=set_debug, help="Full tracebacks and library logs.")
def ablate(input, prompt, source_prompt, output, variants, model, device, dtype, size, start, end,
           stride, max_frames, steps, guidance_scale, seed, clip_model, captioner, columns,
           save_frames, quiet, debug) -> None:  # fmt: skip
    """Run the paper's ablations on one clip with the same seed and settings, and compare them.

    Variants: per-frame editing without injection or latent update (SDEdit-like), anchor
    only, previous only, anchor + a random earlier frame, anchor + previous without the
    latent update, and the full method. Depth and inversion are computed once and shared.
    Writes a table (rows = variants, columns = CLIP-Text, CLIP-Image, PixelMSE, masked
    PixelMSE, seconds per frame) and a contact sheet (rows = variants, columns = frames).
    """
    from ..evaluation.ablation import ablation_table, run_ablation, save_ablation, select_variants

    chosen = select_variants([v.strip() for v in variants.split(",")] if variants else None)
    out_dir = Path(output).expanduser()
    check_writable_folder(out_dir.parent if not out_dir.exists() else out_dir, out_dir)
    reporter = Reporter(quiet=quiet, debug=debug)
    with quiet_libraries(debug):
        clip = read_frames(input, start, end, stride, max_frames)
        frames = _processing_frames(clip, size)
        device_, dtype_ = resolve_device(device, dtype)
        pipe, scorer = _load_models(model, clip_model, device_, dtype_, debug)
        if source_prompt is None:
            source_prompt = _caption_first_frame(clip, captioner, model, device_, reporter)
        with reporter.live():
            rows = run_ablation(
                pipe,
                frames,
                prompt,
                source_prompt,
                variants=chosen,
                scorer=scorer,
                progress=reporter.update,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                seed=seed,
            )
        paths = save_ablation(rows, out_dir, frames, columns=columns, save_frames=save_frames)
    if not quiet:
        click.echo(ablation_table(rows))
        click.echo(f"Wrote {paths['markdown']}, {paths['json']} and {paths['contact_sheet']}.")


def _processing_frames(clip: Clip, size: str | int) -> list[np.ndarray]:
    """The clip's frames at the processing size (`--size`), as every variant takes them."""
    from .. import media as video
    from ..settings import processing_size

    width, height = video.fit_size(*clip.source_size, processing_size(size))
    return video.resize_frames(clip.frames, (width, height))


def _load_models(
    model: str, clip_model: str, device: torch.device, dtype: torch.dtype, debug: bool
):
    """(diffusion pipeline, CLIP scorer), loaded once and shared by every variant."""
    from ..evaluation.clip_score import ClipScorer
    from ..pipelines.checkpoints import load_pipeline

    if not debug:
        silence_libraries()
    pipe = load_pipeline(model, device, dtype)
    scorer = ClipScorer(clip_model, device=str(device))
    return pipe, scorer


def _caption_first_frame(
    clip: Clip, captioner: str, model: str, device: torch.device, reporter: Reporter
) -> str:
    """The source prompt when none is given: a caption of the first frame, said to the user.

    An empty caption is an input error, since inversion needs a prompt that describes the clip.
    """
    from ..models import resolve_captioner
    from ..pipelines.caption import caption_frame

    captioner = resolve_captioner(captioner, model)
    source_prompt = caption_frame(clip.frames[0], captioner, str(device))
    if not source_prompt:
        raise InputError(
            f"The captioner '{captioner}' gave an empty caption; pass --source-prompt."
        )
    reporter.info(f"Source prompt (caption of the first frame): {source_prompt!r}")
    return source_prompt
