"""`pix2video ui`: serve the web page (pix2video.ui) until Ctrl-C or SIGTERM."""

from __future__ import annotations

import click

from ..quiet import quiet_libraries
from ..ui import DEFAULT_HOST, DEFAULT_MAX_FRAMES, DEFAULT_MAX_UPLOAD_MB, DEFAULT_PORT
from .options import DEFAULTS, backbone_options, model_options, run_options
from .progress import Reporter


@click.command(context_settings={"show_default": True})
@model_options
@backbone_options
@click.option(
    "--host",
    default=DEFAULT_HOST,
    help="Address to listen on. Only this machine can reach the default; 0.0.0.0 opens the "
    "page (and its edits) to your network.",
)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, help="Port to listen on."
)
@click.option(
    "--share",
    is_flag=True,
    help="Also open a public Gradio share link (a tunnel through gradio.live): anyone with "
    "the link can upload videos and run edits on this machine.",
)
@click.option(
    "--max-upload-mb",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_UPLOAD_MB,
    help="Largest upload accepted, in MB.",
)
@click.option(
    "--max-frames",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_FRAMES,
    help="Most frames one edit may process (after the stride); the page's Max frames "
    "starts at this value.",
)
@click.option(
    "--captioner",
    default=DEFAULTS["captioner"],
    help="BLIP captioning model (hub id or folder) that suggests the source prompt; auto: "
    "Salesforce/blip-image-captioning-base, or the bundled tiny-blip with --model tiny.",
)
@click.option(
    "--mask-model",
    default=DEFAULTS["mask_model"],
    help="CLIPSeg model (hub id or folder) that segments the page's 'Edit only' text.",
)
@run_options
def ui(quiet: bool, debug: bool, **kwargs) -> None:
    """Serve a web page to edit videos: upload, prompt, preview the anchor frame, edit.

    Edits run one at a time (others wait in a queue with their position shown) on the
    model loaded once; depth and inversions are cached, so a new prompt for the same clip
    skips inversion. Uploads and results live in a temporary folder that is removed when
    the server stops (Ctrl-C or SIGTERM). Scripts can call the endpoints /preview and
    /edit with gradio_client (parameters named like the options of `pix2video edit`).

    Example: pix2video ui --model tiny --port 7860
    """
    from ..ui import ServerOptions, serve

    options = ServerOptions(**kwargs, quiet=quiet, debug=debug)
    reporter = Reporter(quiet=False, debug=debug)  # the URL is printed even with --quiet
    with quiet_libraries(debug):
        serve(options, echo=reporter.info)
