"""One edit of one clip, as the README tells it: read -> condition -> invert -> edit -> write.

Each stage is a function of its own module that takes what the previous ones returned:
`checks` (paths), `source` (the input pass), `conditioning` (depth or control images),
`loading` and `prompts` (the model and the encoded prompts), `masks` (a local edit's),
`keys` (cache keys), `latents` (inversion and editing), `output` (decoding and writing).
`JobContext` carries what every stage may use (settings, callbacks, cache, clocks).
`preparation` runs everything before the per-frame stages; split across workers, depth,
inversion and editing run in `chain_driver` instead.
"""

from __future__ import annotations

import json
import threading
import time

from ..atomic import atomic_write_text
from ..settings import EditSettings
from .checks import resolve_device
from .context import JobContext
from .latents import depth_and_inversion, edit_latents, latent_shape
from .loading import PipelineCache
from .output import latent_decoder, save_latents, write_output
from .preparation import PreparedEdit, initial_result, prepare_edit, with_model
from .prompts import (
    caption_anchor,
)
from .results import (
    AnchorPreview,
    EditResult,
    MessageCallback,
    ProgressCallback,
    describe_precision,
)
from .source import read_source


class EditJob:
    """One edit of one clip: `run` (the whole selection) or `preview` (the anchor frame)."""

    def __init__(
        self,
        settings: EditSettings,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        pipelines: PipelineCache | None = None,
        warn: MessageCallback | None = None,
        info: MessageCallback | None = None,
        library_logs: bool = False,
    ) -> None:
        """`library_logs` leaves diffusers'/transformers' own logs and progress bars on."""
        self.settings = settings.validate()
        self.ctx = JobContext(
            self.settings,
            progress or (lambda stage, done, total: None),
            cancel or threading.Event(),
            warn or (lambda message: None),
            info or (lambda message: None),
        )
        self.pipelines = pipelines or PipelineCache()
        self.library_logs = library_logs
        self._started = time.perf_counter()

    def prepare(self, anchor_only: bool = False, load_model: bool = True) -> PreparedEdit:
        """Everything before the per-frame work (`preparation.prepare_edit`)."""
        return prepare_edit(self.ctx, self.pipelines, self.library_logs, anchor_only, load_model)

    def preview(self) -> AnchorPreview:
        """Depth, inversion and editing of the anchor frame alone, decoded."""
        try:
            return self._preview()
        finally:
            self.ctx.scratch.close()  # the per-frame files of a job without cache, on Ctrl-C too

    def run(self) -> EditResult:
        """The whole selection, written to the output path."""
        try:
            return self._run()
        finally:
            self.ctx.scratch.close()  # the per-frame files of a job without cache, on Ctrl-C too

    def _preview(self) -> AnchorPreview:
        tic = time.perf_counter()
        ctx = self.ctx
        p = self.prepare(anchor_only=True)
        a, pipe, shape = p.source.anchor_position, p.pipe, latent_shape(p.source)
        evaluations = pipe.unet_evaluations
        final = ctx.load("final", p.keys.preview, (1, *shape))
        if final is None:
            depth, inverted, trajectories = depth_and_inversion(
                ctx, pipe, p.source, p.conditioning, p.keys, p.prompts, [a], p.inversion_batch
            )
            final = edit_latents(
                ctx, pipe, depth, inverted, p.keys.preview, p.prompts, p.masks, shape,
                trajectories=trajectories, positions=[a],
            )  # fmt: skip
        edited = pipe.decode_latents(final)[0]
        if p.masks is not None:
            from ..pipelines.masks import composite

            edited = composite(p.source.anchor_frame, edited, p.masks.alpha_at(a))
        return AnchorPreview(
            source=p.source.anchor_frame,
            edited=edited,
            frame_index=p.source.anchor_index,
            source_prompt=p.prompts.source_prompt,
            captioned=p.prompts.captioned,
            unet_evaluations=pipe.unet_evaluations - evaluations,
            seconds=time.perf_counter() - tic,
            precision=describe_precision(p.dtype, p.device, p.dtype_reason),
        )

    def _run(self) -> EditResult:
        ctx, s = self.ctx, self.settings
        split = s.split_across_workers
        if split:
            from .chain_driver import check_workers

            check_workers(s)  # in seconds, before any model is loaded
        p = self.prepare(load_model=not split)  # split: the workers load it, and decode
        result = self.result_of(p)
        n, shape = p.source.num_frames, latent_shape(p.source)
        final = ctx.load("final", p.keys.edit, (n, *shape))
        inverted, decode = None, None
        tic = time.perf_counter()
        if final is None and split:
            from .chain_driver import edit_on_workers  # depth, inversion, editing, decoding, split

            final, inverted, frames = edit_on_workers(ctx, p, result)
            decode = frames.read
        else:
            p = with_model(ctx, p, self.pipelines, self.library_logs)  # split: edit cached
            if final is None or p.paths.latents_dir is not None:
                depth, inverted, trajectories = depth_and_inversion(
                    ctx, p.pipe, p.source, p.conditioning, p.keys, p.prompts, list(range(n)),
                    p.inversion_batch, result,
                )  # fmt: skip
                tic = time.perf_counter()
            if final is None:
                final = edit_latents(
                    ctx, p.pipe, depth, inverted, p.keys.edit, p.prompts, p.masks, shape,
                    result, trajectories,
                )  # fmt: skip
            else:
                result.editing = "cached"
            decode = latent_decoder(p.pipe, final)
        ctx.seconds["editing"] = time.perf_counter() - tic

        tic = time.perf_counter()
        if p.paths.latents_dir is not None:
            save_latents(p.paths.latents_dir, p.source.reader.indices, inverted, final)
        write_output(ctx, decode, p.source, p.paths.output, p.masks, result)
        ctx.seconds["writing"] = time.perf_counter() - tic
        ctx.seconds["total"] = time.perf_counter() - self._started
        result.peak_frames_held = ctx.frames_held.peak
        result.peak_bytes_held = ctx.bytes_held.peak
        if p.paths.stats_path is not None:
            atomic_write_text(json.dumps(result.to_json(), indent=2) + "\n", p.paths.stats_path)
        return result

    def result_of(self, p: PreparedEdit) -> EditResult:
        return initial_result(self.ctx, p)


def edit_clip(
    settings: EditSettings,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    pipelines: PipelineCache | None = None,
    warn: MessageCallback | None = None,
    info: MessageCallback | None = None,
    library_logs: bool = False,
) -> EditResult:
    """Edit one clip as `pix2video edit` does; raises `Pix2VideoError` on anything a user can fix."""
    return EditJob(settings, progress, cancel, pipelines, warn, info, library_logs).run()


def preview_anchor(
    settings: EditSettings,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    pipelines: PipelineCache | None = None,
    warn: MessageCallback | None = None,
    info: MessageCallback | None = None,
    library_logs: bool = False,
) -> AnchorPreview:
    """Invert and edit only the anchor frame (the full edit's anchor frame; see the package doc)."""
    return EditJob(settings, progress, cancel, pipelines, warn, info, library_logs).preview()


def suggest_source_prompt(settings: EditSettings, pipelines: PipelineCache | None = None) -> str:
    """The captioner's description of the anchor frame (cached), e.g. to pre-fill a form.

    Only the reading options, `anchor`, `captioner`, `device` and the cache matter; the
    edit prompt may still be empty.
    """
    job = EditJob(
        settings.replace(source_prompt=None, prompt=settings.prompt.strip() or "(none yet)"),
        pipelines=pipelines,
    )
    source = read_source(job.ctx, anchor_only=True)
    device, _ = resolve_device(settings.device, settings.dtype)
    ctx = job.ctx
    return caption_anchor(
        source.anchor_source_frame,
        settings.captioner,
        str(device),
        ctx.cache,
        ctx.warn,
        settings.model,
    )
