"""One edit of one clip, as the README tells it: read -> condition -> invert -> edit -> write.

Each stage is a function of its own module that takes what the previous ones returned:
`checks` (paths), `source` (the input pass), `conditioning` (depth or control images),
`loading` and `prompts` (the model and the encoded prompts), `masks` (a local edit's),
`keys` (cache keys), `latents` (inversion and editing), `output` (decoding and writing).
`JobContext` carries what every stage may use (settings, callbacks, cache, clocks).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

from ..atomic import atomic_write_text
from ..settings import EditSettings
from .checks import JobPaths, resolve_device
from .conditioning import Conditioning, control_kinds, make_conditioning
from .context import JobContext
from .keys import StageKeys, make_keys
from .latents import depth_and_inversion, edit_latents, latent_shape
from .loading import PipelineCache, check_pipeline_inputs, load_pipe
from .masks import LocalEditMasks, prepare_masks
from .output import save_latents, write_output
from .prompts import (
    Prompts,
    caption_anchor,
    check_captioner,
    encode_edit_prompts,
    source_prompt,
)
from .results import AnchorPreview, EditResult, MessageCallback, ProgressCallback
from .source import SourceClip, read_source


@dataclass
class PreparedEdit:
    """What the preparation hands the per-frame stages."""

    paths: JobPaths
    source: SourceClip
    conditioning: Conditioning
    pipe: object  # pipelines.backbone.Pix2VideoBase
    prompts: Prompts
    masks: LocalEditMasks | None
    keys: StageKeys
    inversion_batch: int
    device: str
    dtype: str


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

    def prepare(self, anchor_only: bool = False) -> PreparedEdit:
        """Everything before the per-frame work: checks, input, model, prompts, masks, keys.

        The cheap checks come first, so bad input fails before torch is imported.
        """
        ctx, s = self.ctx, self.settings
        paths = JobPaths.check(s)
        mask_files = None
        if s.mask is not None:
            from ..pipelines.masks import MaskFiles

            mask_files = MaskFiles(s.mask)
        kinds = control_kinds(s)
        source = read_source(ctx, anchor_only=anchor_only)
        if mask_files is not None:
            mask_files.check_count(source.num_frames)  # a folder's count fails here, early
        for kind in kinds:
            kind.check_count(source.num_frames)
        conditioning = make_conditioning(s, kinds, paths.depth_dir, source)
        device, dtype = resolve_device(s.device, s.dtype)  # imports torch: after the cheap checks
        if not (s.source_prompt or "").strip():  # a missing captioner fails before any loading
            check_captioner(source.anchor_source_frame, s.captioner, ctx.cache, s.model)
        from ..pipelines.backbone import default_inversion_batch

        inversion_batch = s.inversion_batch or default_inversion_batch(device)
        ctx.check_cancelled()

        tic = time.perf_counter()
        pipe = load_pipe(s, self.pipelines, device, dtype, self.library_logs)
        check_pipeline_inputs(pipe, s, source.anchor_frame)
        edit_embeddings = encode_edit_prompts(pipe, ctx)
        ctx.seconds["loading"] = time.perf_counter() - tic
        prompts = source_prompt(pipe, ctx, source, device, edit_embeddings)

        positions = [source.anchor_position] if anchor_only else None
        masks = prepare_masks(
            ctx, source, mask_files, pipe.vae_scale_factor, device, positions, paths.masks_dir
        )
        dtype_name = str(dtype).removeprefix("torch.")
        compute = {"device": device.type, "dtype": dtype_name, "vae_tiling": s.vae_tiling}
        keys = make_keys(
            s,
            source,
            prompts.source_prompt,
            compute,
            conditioning.sources(device),
            masks,
            all_frames=not anchor_only,
        )
        return PreparedEdit(
            paths, source, conditioning, pipe, prompts, masks, keys, inversion_batch,
            str(device), dtype_name,
        )  # fmt: skip

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
        )

    def _run(self) -> EditResult:
        ctx, s = self.ctx, self.settings
        if s.split_across_workers:
            from .workers import check_workers

            check_workers(s)  # in seconds, before any model is loaded
        p = self.prepare()
        result = self.result_of(p)
        n, shape = p.source.num_frames, latent_shape(p.source)
        final = ctx.load("final", p.keys.edit, (n, *shape))
        inverted = None
        tic = time.perf_counter()
        if final is None and s.split_across_workers:
            from .workers import edit_on_workers  # depth, inversion and editing, split

            final, inverted = edit_on_workers(ctx, p, result)
        else:
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
        ctx.seconds["editing"] = time.perf_counter() - tic

        tic = time.perf_counter()
        if p.paths.latents_dir is not None:
            save_latents(p.paths.latents_dir, p.source.reader.indices, inverted, final)
        write_output(ctx, p.pipe, p.source, final, p.paths.output, p.masks, result)
        ctx.seconds["writing"] = time.perf_counter() - tic
        ctx.seconds["total"] = time.perf_counter() - self._started
        result.peak_frames_held = ctx.frames_held.peak
        result.peak_bytes_held = ctx.bytes_held.peak
        if p.paths.stats_path is not None:
            atomic_write_text(json.dumps(result.to_json(), indent=2) + "\n", p.paths.stats_path)
        return result

    def result_of(self, p: PreparedEdit) -> EditResult:
        """The result as it stands before the per-frame work (filled in as it goes)."""
        s, source, reader = self.settings, p.source, p.source.reader
        return EditResult(
            output=str(p.paths.output),
            frames=source.num_frames,
            frame_indices=list(reader.indices),
            size=(source.width, source.height),
            output_size=(source.width, source.height),
            fps=reader.fps,
            has_audio=False,
            source_prompt=p.prompts.source_prompt,
            captioned=p.prompts.captioned,
            device=p.device,
            dtype=p.dtype,
            steps=s.steps,
            cache_enabled=self.ctx.cache.enabled,
            latents_dir=str(p.paths.latents_dir) if p.paths.latents_dir else None,
            seconds=self.ctx.seconds,
            masked=s.masked,
            mask_coverage=p.masks.coverage if p.masks is not None else 1.0,
        )


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
