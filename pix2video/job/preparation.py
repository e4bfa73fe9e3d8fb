"""The preparation of an edit: everything before the per-frame stages.

Checks the paths, reads the clip (one pass), makes its conditioning, loads the model, encodes
the prompts (captioning the anchor frame if needed), prepares a local edit's masks and the
cache keys, and hands all of it on as a `PreparedEdit`. The job (`edit_job`) runs it once; so
does each worker of a clip split across workers (`chain_worker`), for its own model and frames.
The driver of those workers prepares without the model (`load_model=False`): the workers
load it on their devices, and a second copy on a worker's GPU may not fit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from .checks import JobPaths, resolve_compute
from .conditioning import Conditioning, control_kinds, make_conditioning
from .context import JobContext
from .keys import StageKeys, make_keys
from .latents import LATENT_SCALE
from .loading import PipelineCache, check_pipeline_inputs, load_pipe
from .masks import LocalEditMasks, prepare_masks
from .prompts import (
    Prompts,
    check_captioner,
    encode_edit_prompts,
    encode_source_prompt,
    source_text,
)
from .results import EditResult
from .source import SourceClip, read_source


@dataclass
class PreparedEdit:
    """What the preparation hands the per-frame stages."""

    paths: JobPaths
    source: SourceClip
    conditioning: Conditioning
    pipe: object  # pipelines.backbone.Pix2VideoBase; None on a driver of workers
    prompts: Prompts
    masks: LocalEditMasks | None
    keys: StageKeys
    inversion_batch: int
    device: str
    dtype: str
    dtype_reason: str  # why this precision (`precision.DtypeChoice`)


def _inputs(ctx: JobContext, anchor_only: bool):
    """(paths, source clip, mask files or None, conditioning): the cheap checks and reading
    the input, before torch is imported."""
    s = ctx.settings
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
    return paths, source, mask_files, make_conditioning(s, kinds, paths.depth_dir, source)


def prepare_edit(
    ctx: JobContext,
    pipelines: PipelineCache,
    library_logs: bool = False,
    anchor_only: bool = False,
    load_model: bool = True,
) -> PreparedEdit:
    """Everything before the per-frame work: checks, input, model, prompts, masks, keys.

    The cheap checks come first, so bad input fails before torch is imported. Without
    `load_model` (a driver of workers) `pipe` and the encoded prompts are None, and the
    captioner and segmenter run on the CPU unless --device names another.
    """
    s = ctx.settings
    paths, source, mask_files, conditioning = _inputs(ctx, anchor_only)
    device, precision = resolve_compute(s.device, s.dtype)  # imports torch: after cheap checks
    import torch

    dtype = getattr(torch, precision.name)
    # the captioner and segmenter: a driver of workers keeps them off the workers' GPUs
    helpers = device if load_model or s.device != "auto" else torch.device("cpu")
    if not (s.source_prompt or "").strip():  # a missing captioner fails before any loading
        check_captioner(source.anchor_source_frame, s.captioner, ctx.cache, s.model)
    from ..pipelines.frame_batch import default_inversion_batch

    inversion_batch = s.inversion_batch or default_inversion_batch(device)
    ctx.check_cancelled()

    pipe, edit_embeddings = None, (None, None)
    if load_model:
        pipe, edit_embeddings = _load_model(ctx, pipelines, device, dtype, library_logs, source)
    tic = time.perf_counter()
    text, captioned = source_text(ctx, source, helpers)
    prompts = Prompts(*edit_embeddings, None, text, captioned)
    if pipe is not None:
        prompts = encode_source_prompt(pipe, text, captioned, edit_embeddings)
    ctx.seconds["caption"] = time.perf_counter() - tic

    positions = [source.anchor_position] if anchor_only else None
    scale = pipe.vae_scale_factor if pipe is not None else LATENT_SCALE
    masks = prepare_masks(ctx, source, mask_files, scale, helpers, positions, paths.masks_dir)
    dtype_name = precision.name
    compute = {"device": device.type, "dtype": dtype_name, "vae_tiling": s.vae_tiling}
    keys = make_keys(
        s,
        source,
        prompts.source_prompt,
        compute,
        conditioning.sources(helpers),
        masks,
        all_frames=not anchor_only,
    )
    return PreparedEdit(
        paths, source, conditioning, pipe, prompts, masks, keys, inversion_batch,
        str(device), dtype_name, precision.reason,
    )  # fmt: skip


def with_model(
    ctx: JobContext, p: PreparedEdit, pipelines: PipelineCache, library_logs: bool = False
) -> PreparedEdit:
    """`p` with the model loaded and the prompts encoded: a driver of workers that finds the
    edit cached decodes it itself (no worker runs, so its copy is the only one)."""
    if p.pipe is not None:
        return p
    import torch

    device, dtype = torch.device(p.device), getattr(torch, p.dtype)  # as the keys say
    pipe, edit_embeddings = _load_model(ctx, pipelines, device, dtype, library_logs, p.source)
    prompts = encode_source_prompt(
        pipe, p.prompts.source_prompt, p.prompts.captioned, edit_embeddings
    )
    return replace(p, pipe=pipe, prompts=prompts)


def _load_model(ctx: JobContext, pipelines, device, dtype, library_logs: bool, source):
    """(pipeline, (edit, negative) embeddings), the pipeline's checks passed."""
    tic = time.perf_counter()
    pipe = load_pipe(ctx.settings, pipelines, device, dtype, library_logs)
    check_pipeline_inputs(pipe, ctx.settings, source.anchor_frame)
    edit_embeddings = encode_edit_prompts(pipe, ctx)
    ctx.seconds["loading"] = time.perf_counter() - tic
    return pipe, edit_embeddings


def initial_result(ctx: JobContext, p: PreparedEdit) -> EditResult:
    """The result as it stands before the per-frame work (filled in as it goes)."""
    s, source, reader = ctx.settings, p.source, p.source.reader
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
        dtype_reason=p.dtype_reason,
        steps=s.steps,
        cache_enabled=ctx.cache.enabled,
        latents_dir=str(p.paths.latents_dir) if p.paths.latents_dir else None,
        seconds=ctx.seconds,
        masked=s.masked,
        mask_coverage=p.masks.coverage if p.masks is not None else 1.0,
    )
