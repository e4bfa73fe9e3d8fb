"""`pix2video ablate`: the paper's variants on one clip, a table and a contact sheet."""

from __future__ import annotations

from pathlib import Path

import click

from ..core.options import MAX_STEPS
from ..errors import InputError
from ..job import check_writable_folder, resolve_device
from .common import (
    DEFAULTS,
    Reporter,
    _set_debug,
    clip_model_option,
    model_options,
    quiet_libraries,
    read_frames,
    selection_options,
    silence_libraries,
    size_option,
)


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
@click.option(
    "--debug", is_flag=True, callback=_set_debug, help="Full tracebacks and library logs."
)
def ablate(
    input,
    prompt,
    source_prompt,
    output,
    variants,
    model,
    device,
    dtype,
    size,
    start,
    end,
    stride,
    max_frames,
    steps,
    guidance_scale,
    seed,
    clip_model,
    captioner,
    columns,
    save_frames,
    quiet,
    debug,
) -> None:
    """Run the paper's ablations on one clip with the same seed and settings, and compare them.

    Variants: per-frame editing without injection or latent update (SDEdit-like), anchor
    only, previous only, anchor + a random earlier frame, anchor + previous without the
    latent update, and the full method. Depth and inversion are computed once and shared.
    Writes a table (rows = variants, columns = CLIP-Text, CLIP-Image, PixelMSE, masked
    PixelMSE, seconds per frame) and a contact sheet (rows = variants, columns = frames).
    """
    from .. import media as video
    from ..evaluation.ablation import run_ablation, save_ablation, select_variants
    from ..settings import processing_size

    chosen = select_variants([v.strip() for v in variants.split(",")] if variants else None)
    out_dir = Path(output).expanduser()
    check_writable_folder(out_dir.parent if not out_dir.exists() else out_dir, out_dir)
    reporter = Reporter(quiet=quiet, debug=debug)
    with quiet_libraries(debug):
        clip = read_frames(input, start, end, stride, max_frames)
        width, height = video.fit_size(*clip.source_size, processing_size(size))
        frames = video.resize_frames(clip.frames, (width, height))
        device_, dtype_ = resolve_device(device, dtype)
        from ..evaluation.metrics import ClipScorer
        from ..pipelines.checkpoints import load_pipeline

        if not debug:
            silence_libraries()
        pipe = load_pipeline(model, device_, dtype_)
        scorer = ClipScorer(clip_model, device=str(device_))
        if source_prompt is None:
            from ..models import resolve_captioner
            from ..pipelines.caption import caption_frame

            captioner = resolve_captioner(captioner, model)
            source_prompt = caption_frame(clip.frames[0], captioner, str(device_))
            if not source_prompt:
                raise InputError(
                    f"The captioner '{captioner}' gave an empty caption; pass --source-prompt."
                )
            reporter.info(f"Source prompt (caption of the first frame): {source_prompt!r}")
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
        from ..evaluation.ablation import ablation_table

        click.echo(ablation_table(rows))
        click.echo(f"Wrote {paths['markdown']}, {paths['json']} and {paths['contact_sheet']}.")
