"""`pix2video edit`: parse the options into `EditSettings`, run `edit_clip`, print a summary."""

from __future__ import annotations

from typing import Any

import click

from ..core.options import ANCHORS, ATTEND_MODES, MAX_STEPS
from ..job import EditResult, edit_clip
from ..quiet import quiet_libraries
from ..settings import FEATURE_STORE_DTYPES, OFFLOAD_MODES, WORKER_BACKENDS, EditSettings
from .errors import INTERRUPTED_NO_CACHE, STATE
from .options import (
    backbone_options,
    mask_options,
    model_options,
    run_options,
    selection_options,
    size_option,
)
from .progress import Reporter

DEFAULTS = EditSettings.defaults()


def format_summary(result: EditResult) -> list[str]:
    """The closing lines of `pix2video edit`."""
    n = result.frames
    total = result.seconds.get("total", 0.0)
    w, h = result.size
    lines = [
        f"Edited {n} frame{'s' if n != 1 else ''} at {w}x{h} in {total:.1f} s "
        f"({total / n:.2f} s per frame; {result.unet_evaluations / n:g} UNet evaluations per "
        f"frame: inversion {result.unet_evaluations_inversion / n:g}, editing "
        f"{result.unet_evaluations_editing / n:g}).",
    ]
    if result.dtype_reason:
        lines.append(result.describe_precision())
    if result.captioned:
        lines.append(f'Source prompt (BLIP caption): "{result.source_prompt}"')
    if result.masked:
        lines.append(result.describe_mask())
    if result.cache_enabled:
        if result.editing == "cached":
            editing = "cached (final latents)"
        elif result.editing == "resumed":
            editing = f"resumed after step {result.resumed_from_step + 1} of {result.steps}"
        else:
            editing = "computed"
        inversion = (
            f"inversion: {result.inversion_cached} cached, {result.inversion_computed} computed"
            if result.editing != "cached" or result.latents_dir
            else "inversion: not needed"
        )
        lines.append(
            f"Cache: depth: {result.depth_cached} cached, {result.depth_computed} computed; "
            f"{inversion}; editing: {editing}."
        )
    else:
        lines.append("Cache: off (--no-cache).")
    if result.frames_reused:
        lines.append(result.describe_reuse())
    ow, oh = result.output_size
    audio = ", with audio" if result.has_audio else ""
    if result.workers > 1 or result.worker_restarts:
        restarts = result.worker_restarts
        lines.append(
            f"Workers: {result.workers}{_on_nodes(result.worker_nodes)}, "
            f"{result.bytes_exchanged / 2**20:.1f} MiB exchanged"
            + (f", restarted {restarts} time{'s' if restarts != 1 else ''}" if restarts else "")
            + "."
        )
    lines.append(f"Wrote {result.output} ({n} frames, {ow}x{oh}, {result.describe_rate()}{audio}).")
    if result.latents_dir:
        lines.append(f"Saved latents to {result.latents_dir}/inverted and /final.")
    return lines


@click.command(context_settings={"show_default": True})
@click.argument("input", type=click.Path())
@click.option("-p", "--prompt", required=True, help="Edit prompt: describes the result.")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(),
    help="Output: .mp4/.mov/.mkv (H.264), .webm (VP9), .gif, or a folder name for PNG frames; "
    "written atomically (never a partial file).",
)
@click.option(
    "--source-prompt",
    default=None,
    show_default="caption of the anchor frame",
    help="Describes the input; used for inversion. Omitted: the anchor frame is captioned "
    "with --captioner and the caption is printed.",
)
@click.option(
    "--negative-prompt",
    default=DEFAULTS["negative_prompt"],
    help="Unconditional prompt for guidance.",
)
@model_options
@backbone_options
@size_option
@click.option(
    "--keep-source-size",
    is_flag=True,
    help="Resize the result back to the source resolution.",
)
@selection_options
@click.option(
    "--depth-dir",
    type=click.Path(),
    default=None,
    show_default="the model's depth estimator",
    help="Precomputed depth: one .npy per frame named like the frame (image folder: the "
    "image's stem, e.g. 000012.npy; video: the source frame index with 6 digits).",
)
@mask_options
@click.option(
    "--steps",
    type=click.IntRange(min=1, max=MAX_STEPS),
    default=DEFAULTS["steps"],
    help="DDIM steps (inversion and editing).",
)
@click.option(
    "--guidance-scale",
    type=float,
    default=DEFAULTS["guidance_scale"],
    help="Classifier-free guidance.",
)
@click.option(
    "--seed",
    type=int,
    default=DEFAULTS["seed"],
    help="Only --attend anchor+random draws random numbers; the edit is otherwise deterministic.",
)
@click.option(
    "--attend",
    type=click.Choice(ATTEND_MODES),
    default=DEFAULTS["attend"],
    help="Frames whose features the decoder self-attention reads (the paper: "
    "anchor+previous; others are its ablations; none = independent per-frame edits).",
)
@click.option(
    "--anchor",
    type=click.Choice(ANCHORS),
    default=DEFAULTS["anchor"],
    help="Anchor frame; last processes the clip from its end.",
)
@click.option(
    "--latent-guidance-weight",
    type=click.FloatRange(min=0),
    default=DEFAULTS["latent_guidance_weight"],
    help="Weight of the guided latent update towards the previous frame (0 turns it off).",
)
@click.option(
    "--latent-guidance-steps",
    type=click.IntRange(min=0),
    default=None,
    show_default="steps//2+1",
    help="How many initial steps get the guided latent update.",
)
@click.option(
    "--latent-guidance-target",
    default=DEFAULTS["latent_guidance_target"],
    help="The previous frame's predicted clean latent at the same step ('same-step') or "
    "at step index K ('step:K'; needs frame-by-frame processing, so no mid-edit checkpoints).",
)
@click.option(
    "--inject-blocks",
    default=None,
    show_default="the later half of the joint blocks",
    help="SD3: the joint blocks whose attention reads the anchor and previous frames, e.g. "
    "'12,13,14' (UNet models inject in the decoder's self-attention).",
)
@click.option(
    "--feature-store-dtype",
    type=click.Choice(FEATURE_STORE_DTYPES),
    default=DEFAULTS["feature_store_dtype"],
    help="Precision of the stored features injected into later frames; float16 halves that "
    "memory (slight numeric change).",
)
@click.option(
    "--offload-features",
    is_flag=True,
    help="Keep the stored features in CPU memory while the model runs on a GPU (less GPU "
    "memory, some transfer time; same result).",
)
@click.option(
    "--offload",
    type=click.Choice(OFFLOAD_MODES),
    default=None,
    show_default="none: the whole model on the device",
    help="FLUX/SD3 on a GPU too small for them: keep the weights in CPU memory and move each "
    "model (model) or each layer (sequential: least memory, slowest) to the GPU as it runs.",
)
@click.option(
    "--vae-tiling",
    is_flag=True,
    help="Encode/decode large frames tile by tile (less memory at high resolution; tiles "
    "are blended, so pixels differ slightly).",
)
@click.option(
    "--inversion-batch",
    type=click.IntRange(min=1),
    default=None,
    show_default="8 on a GPU, 1 on a CPU",
    help="Frames per UNet call during inversion (frames invert independently; results "
    "differ from one at a time only by rounding).",
)
@click.option(
    "--frame-batch",
    default=DEFAULTS["frame_batch"],
    metavar="N|auto",
    help="Frames per UNet call while editing, step by step (each frame's attention reads the "
    "frame before it in the same call; results differ from one at a time only by rounding). "
    "auto: on a GPU as many as fit its free memory, on a CPU 1 (measured fastest).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=DEFAULTS["workers"],
    help="Split the clip's frames across this many worker processes (or Ray actors), which "
    "take short runs of consecutive frames in turn; the result is the same as one process's.",
)
@click.option(
    "--devices",
    default=None,
    metavar="DEV,DEV,...",
    show_default="--workers processes on --device",
    help="One local worker per device, e.g. cuda:0,cuda:1,cuda:2,cuda:3 (instead of --workers).",
)
@click.option(
    "--backend",
    type=click.Choice(WORKER_BACKENDS),
    default=DEFAULTS["backend"],
    help="Where the workers run: processes on this machine, or Ray actors (one per GPU, or "
    "per --cpus-per-worker CPUs) on a local Ray or --ray-address.",
)
@click.option(
    "--ray-address",
    default=None,
    show_default="start a local Ray",
    help="A running Ray cluster to join (HOST:PORT, or auto), with --backend ray.",
)
@click.option(
    "--cpus-per-worker",
    type=float,
    default=None,
    show_default="the CPUs divided among the workers; 1 beside a GPU",
    help="CPUs each Ray worker reserves (and torch threads it uses), with --backend ray.",
)
@click.option(
    "--compile",
    is_flag=True,
    help="torch.compile the UNet: slow first step, faster after (worth it on a GPU for long "
    "clips).",
)
@click.option(
    "--checkpoint-interval",
    type=click.FloatRange(min=0),
    default=DEFAULTS["checkpoint_interval"],
    help="Seconds between editing checkpoints (written at the end of a step; 0 = every "
    "step). A killed run resumes from the last one.",
)
@click.option(
    "--save-latents",
    type=click.Path(),
    default=None,
    show_default="off",
    help="Also write DIR/inverted/NNNNNN.npy (x_T) and DIR/final/NNNNNN.npy (last latent "
    "before decoding), float32 (1, 4, H/8, W/8); NNNNNN = the frame's index in the input.",
)
@click.option(
    "--side-by-side",
    is_flag=True,
    help="Write source | edit next to each other.",
)
@click.option(
    "--captioner",
    default=DEFAULTS["captioner"],
    help="BLIP captioning model (hub id or folder) for the source prompt; auto: "
    "Salesforce/blip-image-captioning-base, or the bundled tiny-blip with --model tiny.",
)
@click.option(
    "--stats-json",
    type=click.Path(dir_okay=False),
    default=None,
    show_default="off",
    help="Write what the run did (frames, timings, UNet evaluations, cache hits) as JSON.",
)
@run_options
def edit(quiet: bool, debug: bool, **kwargs: Any) -> None:
    """Edit the video (or image folder) INPUT so that it shows PROMPT.

    Each frame is DDIM-inverted with the source prompt and its depth, then regenerated with
    the edit prompt; decoder self-attention reads the anchor and previous edited frames and
    a guided latent update keeps consecutive frames close (Pix2Video, ICCV 2023). Depth,
    inversions and editing checkpoints are cached: an interrupted run resumes, and a new
    prompt for the same clip skips inversion.

    Example: pix2video edit clip.mp4 -p "a swarovski crystal swan" -o edited.mp4
    """
    settings = EditSettings(**kwargs)  # --devices "a,b" is split by EditSettings
    if settings.no_cache:
        STATE.interrupted_message = INTERRUPTED_NO_CACHE
    reporter = Reporter(quiet=quiet, debug=debug)
    with quiet_libraries(debug), reporter.live(), reporter.downloads():
        result = edit_clip(
            settings,
            progress=reporter.update,
            warn=reporter.warn,
            info=reporter.info,
            library_logs=debug,
        )
    for line in format_summary(result):
        reporter.info(line)


def _on_nodes(nodes: list[str]) -> str:
    """The summary's " on N nodes", when the workers ran on more than one node (Ray)."""
    count = len(set(nodes))
    return f" on {count} nodes" if count > 1 else ""
