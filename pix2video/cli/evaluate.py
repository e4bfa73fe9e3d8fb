"""`pix2video eval`: the paper's metrics (CLIP-Text, CLIP-Image, PixelMSE) of an edited clip."""

from __future__ import annotations

import click

from ..job import resolve_device
from ..pipelines.masks import read_regions
from ..quiet import quiet_libraries
from .errors import set_debug
from .options import clip_model_option, read_frames, report_file_option, selection_options
from .progress import Reporter


@click.command(name="eval", context_settings={"show_default": True})
@click.argument("edited", type=click.Path())
@click.option(
    "--source",
    required=True,
    type=click.Path(),
    help="The input video or frame folder the edit was made from.",
)
@click.option("-p", "--prompt", required=True, help="The edit prompt (for CLIP-Text).")
@selection_options
@clip_model_option
@click.option(
    "--mask",
    type=click.Path(),
    default=None,
    show_default="none",
    help="Also score inside and outside a mask per edited frame (folder of images, video, or "
    "one image; nonzero = the edited region), e.g. the masks `edit --save-masks` wrote.",
)
@click.option("--device", default="auto", help="Torch device for CLIP: auto, cpu, cuda, cuda:N.")
@report_file_option("--json", "json_path", "the metrics and per-frame values as JSON")
@report_file_option("--markdown", "markdown_path", "the metrics table as Markdown")
@report_file_option("--plot", "plot_path", "a PNG plot of the per-frame values")
@click.option("-q", "--quiet", is_flag=True, help="Do not print the table.")
@click.option("--debug", is_flag=True, callback=set_debug, help="Full tracebacks and library logs.")
def evaluate_command(
    edited,
    source,
    prompt,
    start,
    end,
    stride,
    max_frames,
    clip_model,
    mask,
    device,
    json_path,
    markdown_path,
    plot_path,
    quiet,
    debug,
) -> None:
    """Measure an edit as the paper does: CLIP-Text, CLIP-Image and flow-warped PixelMSE.

    EDITED and SOURCE are videos or frame folders with the same number of frames (select the
    range you edited with --start/--end/--stride/--max-frames: they apply to SOURCE).
    CLIP-Text: mean cosine similarity of each edited frame with the prompt (edit fidelity).
    CLIP-Image: mean cosine similarity of consecutive edited frames (temporal coherence).
    PixelMSE: optical flow of the SOURCE warps edited frame t onto t+1; mean squared error
    against edited frame t+1, pixels in [0, 1] (lower = less flicker). The masked PixelMSE
    only counts pixels whose forward and backward flows agree (occlusions excluded).
    With --mask, each score is also given inside and outside the mask, with the mean squared
    difference to the source (0 outside = the background is untouched).
    """
    import transformers  # noqa: F401 - imported first so that its loading bars can be silenced

    from ..evaluation.metrics import evaluate

    reporter = Reporter(quiet=quiet, debug=debug)
    with quiet_libraries(debug), reporter.live(), reporter.downloads():
        edited_clip = read_frames(edited, None, None, 1, None)
        source_clip = read_frames(source, start, end, stride, max_frames)
        regions = read_regions(mask, edited_clip.frames) if mask else None
        device_, _ = resolve_device(device, "float32")
        report = evaluate(
            edited_clip.frames,
            source_clip.frames,
            prompt,
            clip_model=clip_model,
            device=str(device_),
            regions=regions,
        )
    if json_path:
        report.save_json(json_path)
    if markdown_path:
        report.save_markdown(markdown_path)
    if plot_path:
        report.plot(plot_path)
    if not quiet:
        click.echo(report.to_markdown())
