"""`pix2video download`: fetch the models a set of options needs into the hub cache, ahead of time."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..errors import InputError, ModelNotAvailableError
from ..quiet import quiet_libraries
from .errors import STATE, set_debug
from .progress import Reporter

if TYPE_CHECKING:
    from ..hub import ModelDownload


@click.command(context_settings={"show_default": True})
@click.argument("names", nargs=-1)
@click.option("--model", default=None, show_default="none", help="Diffusion model (hub id).")
@click.option(
    "--controlnet", multiple=True, show_default="none", help="ControlNet (hub id); repeatable."
)
@click.option(
    "--captioner",
    default=None,
    show_default="none",
    help="Captioning model (hub id; auto: the one `edit` uses with --model).",
)
@click.option("--mask-model", default=None, show_default="none", help="CLIPSeg model (hub id).")
@click.option(
    "--control",
    multiple=True,
    show_default="none",
    help="What conditions the model, as in `edit`; depth: the depth model it reads (Depth "
    "Anything V2 for SD3/FLUX, DPT otherwise) unless --depth-model names one.",
)
@click.option("--depth-model", default=None, show_default="none", help="Depth model (hub id).")
@click.option(
    "--clip-model", default=None, show_default="none", help="CLIP model of `eval` (hub id)."
)
@click.option(
    "--all",
    "defaults",
    is_flag=True,
    help="Every default model (diffusion, captioner, CLIPSeg, depth, CLIP) not named above.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars; errors only.")
@click.option(
    "--debug",
    is_flag=True,
    callback=set_debug,
    help="Full tracebacks, and the libraries' own logs.",
)
def download(names, model, controlnet, captioner, mask_model, control, depth_model, clip_model,
             defaults, quiet, debug) -> None:  # fmt: skip
    """Download models into the hub cache, with progress; say what is already there.

    Names the same models as the options of `pix2video edit` (and NAMES, any hub ids);
    --all fetches every default. Files already in the cache are kept, an interrupted
    download resumes where it stopped, and every file is checked against the hub's size and
    hash. Without a network it lists what the cache holds. Bundled models (tiny, tiny-blip)
    and local folders need nothing.

    \b
    Examples:
      pix2video download --all
      pix2video download --model stabilityai/stable-diffusion-2-depth --captioner auto
      pix2video download --model black-forest-labs/FLUX.1-Depth-dev --control depth
    """
    from ..hub import can_download, offline_reason
    from ..models import SD3_FLUX_MODELS, models_for

    wanted = models_for(
        model, tuple(controlnet), captioner, mask_model, depth_model, clip_model, names,
        defaults, tuple(control),
    )  # fmt: skip
    if not wanted:
        raise InputError(
            "Name what to download: hub ids, --model, --controlnet, --captioner, --mask-model, "
            "--depth-model, --clip-model, or --all for every default."
        )
    STATE.interrupted_message = "Interrupted; run the same command again to resume the download."
    reporter = Reporter(quiet=quiet, debug=debug)
    online = can_download()
    missing = []
    with quiet_libraries(debug):
        for what, name in wanted:
            if not _get_model(name, what, online, reporter):
                missing.append(name)
    if missing:
        gated = [name for name in missing if name in SD3_FLUX_MODELS]
        licences = (
            f"; {', '.join(gated)} {'is' if len(gated) == 1 else 'are'} gated: accept "
            f"{'its licence' if len(gated) == 1 else 'each licence'} on the hub page and log "
            "in (`hf auth login`) first"
        )
        raise ModelNotAvailableError(
            f"Cannot download {', '.join(missing)}: {offline_reason()}; run `pix2video "
            "download` where there is internet and copy the hub cache (HF_HOME) here"
            f"{licences if gated else ''}."
        )


def _get_model(name: str, what: str, online: bool, reporter: Reporter) -> bool:
    """Download one model (or say why it needs nothing); False: missing and offline.

    The caller gathers the missing ones into one error at the end, so that an offline
    run still lists every model the cache does hold.
    """
    from ..hub import download_model, is_hub_id
    from ..hub_cache import cached_model, format_size
    from ..models import BUNDLED_MODELS

    if name in BUNDLED_MODELS:
        reporter.info(f"{name}: bundled with pix2video ({what}), nothing to download.")
        return True
    if not is_hub_id(name):
        reporter.info(f"{name}: a local path ({what}), nothing to download.")
        return True
    if not online:
        cached = cached_model(name)
        if cached is None:
            return False
        reporter.info(
            f"{name}: in the cache ({format_size(cached.size)}, {cached.files} files; "
            "not checked, the hub cannot be reached)."
        )
        return True
    with reporter.live():
        fetched = download_model(name, progress=reporter.download, verify=True)
    reporter.info(_download_sentence(name, fetched))
    return True


def _download_sentence(name: str, fetched: ModelDownload) -> str:
    """What a download did: all cached already, partly fetched, or fetched whole."""
    from ..hub_cache import format_size

    size = format_size(fetched.total_bytes)
    files = f"{len(fetched.files)} files checked"
    if fetched.downloaded_bytes == 0 and fetched.present_bytes == fetched.total_bytes:
        return f"{name}: already in the cache ({size}, {files})."
    if fetched.present_bytes:
        return (
            f"{name}: downloaded {format_size(fetched.downloaded_bytes)}, "
            f"{format_size(fetched.present_bytes)} were already there ({size}, {files})."
        )
    return f"{name}: downloaded {size} ({files})."
