"""The option groups several commands share (`model_options`, `run_options`, ...).

One definition per option, so ``edit``, ``ui``, ``ablate``, ``eval`` and ``batch`` spell,
default and document it the same way; defaults and bounds come from `settings`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from ..models import DEFAULT_CLIP_MODEL, DEFAULT_DEPTH_MODEL, DEFAULT_DIT_DEPTH_MODEL
from ..settings import (
    CONTROL_KINDS,
    DTYPES,
    MAX_CANNY_THRESHOLD,
    MAX_MASK_GROWTH,
    EditSettings,
)
from .config_file import apply_config
from .errors import set_debug

DEFAULTS = EditSettings.defaults()
SD15_CONFIG = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # as in `checkpoints` (no torch here)


def _compose(*decorators: Callable) -> Callable:
    def apply(f: Callable) -> Callable:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


def model_options(f: Callable) -> Callable:
    """--model, --device, --dtype: which diffusion model runs where."""
    return _compose(
        click.option(
            "--model",
            default=DEFAULTS["model"],
            help="Checkpoint: SD2-depth (hub id, used offline when cached, or folder; 'tiny' = "
            "the bundled random-weight model for smoke runs), or an SD 1.5- or SDXL-architecture "
            "model (hub id, folder, or one .safetensors/.ckpt file) with --controlnet.",
        ),
        click.option(
            "--device",
            default=DEFAULTS["device"],
            help="Torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:N.",
        ),
        click.option(
            "--dtype",
            type=click.Choice(DTYPES),
            default=DEFAULTS["dtype"],
            help="Model precision. auto: float16 on a GPU, bfloat16 on a CPU that computes it "
            "natively (AVX512_BF16/AMX; ~2x faster, half the memory), float32 elsewhere; "
            "float16 only on a GPU. Scheduler and latents stay float32.",
        ),
    )(f)


def backbone_options(f: Callable) -> Callable:
    """--controlnet, --control, --control-scale, --lora, ...: bring your own model (`checkpoints`)."""
    return _compose(
        click.option(
            "--controlnet",
            multiple=True,
            show_default="none",
            help="ControlNet (hub id or folder) for an SD 1.5 or SDXL --model; repeat for several (their "
            "residuals add up).",
        ),
        click.option(
            "--control",
            multiple=True,
            show_default="none",
            help=f"What each --controlnet sees, in their order: {' or '.join(CONTROL_KINDS)} "
            "(computed per frame), or a folder/video of control frames (one per selected frame).",
        ),
        click.option(
            "--control-scale",
            type=float,
            multiple=True,
            show_default="1.0 each",
            help="Conditioning scale of each --controlnet, in their order.",
        ),
        click.option(
            "--canny-low",
            type=click.IntRange(0, MAX_CANNY_THRESHOLD),
            default=DEFAULTS["canny_low"],
            help="Lower Canny threshold of --control canny.",
        ),
        click.option(
            "--canny-high",
            type=click.IntRange(0, MAX_CANNY_THRESHOLD),
            default=DEFAULTS["canny_high"],
            help="Upper Canny threshold of --control canny.",
        ),
        click.option(
            "--depth-model",
            default=None,
            show_default=f"{DEFAULT_DEPTH_MODEL} for --control depth, SD3/FLUX: "
            f"{DEFAULT_DIT_DEPTH_MODEL}; SD2-depth: its own",
            help="Depth estimator (transformers, hub id or folder), e.g. "
            "depth-anything/Depth-Anything-V2-Large-hf; also replaces SD2-depth's own.",
        ),
        click.option(
            "--lora",
            multiple=True,
            show_default="none",
            help="LoRA as PATH_OR_ID[:SCALE] (a .safetensors file, folder or hub id; scale 1.0 "
            "by default); repeatable. Fused into the weights.",
        ),
        click.option(
            "--model-config",
            default=None,
            show_default=f"{SD15_CONFIG} from the local cache",
            help="Diffusers configs (folder or hub id) of a single-file --model's architecture.",
        ),
    )(f)


def run_options(f: Callable) -> Callable:
    """--cache-dir, --no-cache, --config, --quiet, --debug: how a command runs."""
    return _compose(
        click.option(
            "--cache-dir",
            type=click.Path(file_okay=False),
            default=DEFAULTS["cache_dir"],
            envvar="PIX2VIDEO_CACHE_DIR",
            show_envvar=True,
            help="Where depth, inversions, editing checkpoints and final latents are cached "
            "(keyed by content hashes; safe to delete).",
        ),
        click.option(
            "--no-cache",
            is_flag=True,
            help="Neither read nor write the cache (no resume after an interruption).",
        ),
        click.option(
            "--config",
            type=click.Path(dir_okay=False),
            is_eager=True,
            show_default="none",
            expose_value=False,
            callback=apply_config,
            help="YAML or TOML file of option values (keys: option names, with - or _); "
            "options on the command line override it.",
        ),
        click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary."),
        click.option(
            "--debug",
            is_flag=True,
            callback=set_debug,
            help="Full tracebacks, and the libraries' own logs and warnings.",
        ),
    )(f)


def selection_options(f: Callable) -> Callable:
    """--start, --end, --stride, --max-frames: which frames of a clip are used."""
    return _compose(
        click.option(
            "--start",
            default=None,
            show_default="first frame",
            help="First frame: frame number (12), seconds (2.5, 2.5s) or clock time (1:02.5).",
        ),
        click.option(
            "--end",
            default=None,
            show_default="end of the clip",
            help="End (exclusive), same notation as --start.",
        ),
        click.option(
            "--stride",
            type=click.IntRange(min=1),
            default=DEFAULTS["stride"],
            help="Take every N-th frame.",
        ),
        click.option(
            "--max-frames",
            type=click.IntRange(min=1),
            default=None,
            show_default="no limit",
            help="Use at most this many frames (after --stride).",
        ),
    )(f)


def mask_options(f: Callable) -> Callable:
    """--mask, --mask-prompt and how masks are made: local edits (`pix2video.pipelines.masks`)."""
    return _compose(
        click.option(
            "--mask",
            type=click.Path(),
            default=None,
            show_default="none: edit the whole frame",
            help="Local edit: edit only where the mask is white, keep every other pixel. A "
            "folder of images or a video with one mask per selected frame, or one image for "
            "all frames; resized to the frames.",
        ),
        click.option(
            "--mask-prompt",
            default=None,
            show_default="none",
            help="Local edit: segment this text in every frame ('the swan') with --mask-model "
            "and edit only there.",
        ),
        click.option(
            "--mask-model",
            default=DEFAULTS["mask_model"],
            help="CLIPSeg segmentation model for --mask-prompt (hub id, used offline when "
            "cached, or folder).",
        ),
        click.option(
            "--mask-threshold",
            type=click.FloatRange(0, 1),
            default=DEFAULTS["mask_threshold"],
            help="Segmentation probability at or above which a pixel is in the --mask-prompt mask.",
        ),
        click.option(
            "--mask-dilate",
            type=click.IntRange(0, MAX_MASK_GROWTH),
            default=DEFAULTS["mask_dilate"],
            help="Grow the mask by this many pixels.",
        ),
        click.option(
            "--mask-feather",
            type=click.IntRange(0, MAX_MASK_GROWTH),
            default=DEFAULTS["mask_feather"],
            help="Fade the edit into the source over this many pixels beyond the grown mask; "
            "pixels farther away are the source's exactly.",
        ),
        click.option(
            "--save-masks",
            type=click.Path(),
            default=None,
            show_default="off",
            help="Write the masks used (grown and feathered; grey = partly edited) as PNGs, "
            "named like --depth-dir files.",
        ),
    )(f)


def size_option(f: Callable) -> Callable:
    """--size: processing resolution."""
    return click.option(
        "--size",
        default=DEFAULTS["size"],
        help="Processing size: one number = the long side (aspect ratio kept, 1280x720 at 512 "
        "gives 512x288), or WxH, or auto (long side 1024 for SDXL models, 512 for others). "
        "Both sides must be multiples of 8, the VAE's latent grid (rounded for a single number).",
    )(f)


def clip_model_option(f: Callable) -> Callable:
    return click.option(
        "--clip-model",
        default=DEFAULT_CLIP_MODEL,
        help="CLIP checkpoint for CLIP-Text/CLIP-Image (hub id or folder). ViT-L/14 is what "
        "recent video-editing papers report, so numbers compare with theirs.",
    )(f)


def report_file_option(flag: str, dest: str, what: str) -> Callable:
    """An optional output file of `eval` (off unless given)."""
    return click.option(
        flag,
        dest,
        type=click.Path(dir_okay=False),
        default=None,
        show_default="off",
        help=f"Write {what}.",
    )


def read_frames(path: str, start, end, stride: int, max_frames: int | None):
    """The frames `selection_options` picked from a clip (the whole selection, in memory)."""
    from .. import media as video

    return video.read_clip(Path(path).expanduser(), start, end, stride, max_frames)
