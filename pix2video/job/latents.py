"""The latents of a job: depth and DDIM inversion of every frame, then the edit.

Both are cached per frame (inversion) or per clip (edit, with step checkpoints a killed job
resumes from); only latents are kept in memory, never the frames. The conditioning and a
local edit's trajectories, which the edit needs for every frame, wait on disk
(`frame_store`) and are read back a step and a few frames at a time.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

from ..errors import InputError
from ..settings import parse_frame_batch
from .conditioning import Conditioning, ConditioningRows
from .context import JobContext
from .frame_store import BytesTracker, FrameArrays
from .keys import StageKeys
from .masks import LocalEditMasks
from .prompts import Prompts
from .results import EditResult
from .source import SourceClip

if TYPE_CHECKING:
    import torch


class FrameRows:
    """Per-frame results of a pass (depth, x_T...) written into one tensor allocated up front.

    Why not a dict of small tensors: kept for the whole pass while the models allocate and
    free frame-sized buffers, they pinned heap pages glibc could then not reuse or return;
    150 frames of depth and inversion grew the process by 230 MiB (tiny model, 256 px).
    """

    def __init__(self, positions: list[int], shape: tuple[int, ...]) -> None:
        import torch

        self._row = {position: row for row, position in enumerate(positions)}
        self._filled: set[int] = set()
        self.tensor = torch.empty((len(positions), *shape))

    def __contains__(self, position: int) -> bool:
        return position in self._filled

    def __len__(self) -> int:
        return len(self._filled)

    def __setitem__(self, position: int, value) -> None:
        self.tensor[self._row[position]] = value.reshape(self.tensor.shape[1:])
        self._filled.add(position)

    def __getitem__(self, position: int):
        """(1, *shape): a view of the frame's row."""
        return self.tensor[self._row[position]][None]


class TrajectoryRows:
    """The edit's `editing.SourceLatents`: a step's source latents of a few frames, from disk."""

    def __init__(self, arrays: FrameArrays, keys: list[str], tracker: BytesTracker) -> None:
        self.arrays, self.keys, self.tracker = arrays, keys, tracker

    def __call__(self, frames: list[int], step: int):
        import torch

        rows = self.arrays.read([self.keys[i] for i in frames], row=step)
        return self.tracker.track(torch.from_numpy(rows))


def depth_and_inversion(
    ctx: JobContext,
    pipe,
    source: SourceClip,
    conditioning: Conditioning,
    keys: StageKeys,
    prompts: Prompts,
    positions: list[int],
    inversion_batch: int,
    result: EditResult | None = None,
):
    """(conditioning, x_T (n,4,h,w), trajectories) of the frames at `positions`.

    Cached per frame. One decoding pass, and none when everything is cached. Depth (or the
    control images) is made one frame at a time and stored on disk at once; frames missing
    from the inversion cache are inverted `inversion_batch` at a time, each stored as soon
    as its batch is done (a killed run keeps them). A local edit also needs each frame's
    inversion trajectory (steps, 4, h, w), stored on disk beside it; otherwise that is
    None. The conditioning and the trajectories are returned as readers of those files
    (`ConditioningRows`, `TrajectoryRows`): only x_T stays in memory.

    Frames with the same inversion key (identical decoded content and conditioning: a black
    lead-in, a frozen stretch, a repeated frame) are decoded, conditioned and inverted once,
    at the first of them; the others take its rows, so they are exactly equal.
    """
    import torch

    s = ctx.settings
    depth, inverted, trajectories = _cached_rows(ctx, pipe, source, conditioning, keys, positions)
    first_of = _first_positions(keys, positions)
    shared_by = Counter(first_of.values())  # positions each computed frame serves
    depth_hits = sum(keys.depth[i] in depth for i in positions)
    inversion_hits = len(inverted)
    served = {"depth": depth_hits, "inversion": inversion_hits}  # positions with their rows
    todo = [
        i for i in positions
        if first_of[i] == i and (keys.depth[i] not in depth or i not in inverted)
    ]  # fmt: skip
    timer = {"depth": 0.0, "inversion": 0.0}
    computed = {"depth": 0, "inversion": 0}
    evaluations = pipe.unet_evaluations
    ctx.progress("depth", depth_hits, len(positions))
    ctx.progress("inversion", inversion_hits, len(positions))
    batch: list[tuple[int, torch.Tensor]] = []  # (position, VAE latent) waiting to invert

    def invert_batch() -> None:
        tic = time.perf_counter()
        rows = conditioning.to_model(depth.read([keys.depth[i] for i, _ in batch]))
        with ctx.cancellable(pipe):
            values = pipe.invert(
                torch.cat([latent for _, latent in batch]),
                ctx.bytes_held.track(rows),
                prompts.source,
                s.steps,
                batch_size=len(batch),
                trajectory=s.masked,
            )
        if s.masked:
            values, paths = values
            for (i, _), path in zip(batch, ctx.bytes_held.track(paths.float().cpu()), strict=True):
                trajectories.put(keys.inversion[i], path.numpy())
        for (i, _), value in zip(batch, values.float().cpu(), strict=True):
            inverted[i] = value[None]
            ctx.save("inversion", keys.inversion[i], value[None])
        computed["inversion"] += len(batch)
        served["inversion"] += sum(shared_by[i] for i, _ in batch)
        batch.clear()
        timer["inversion"] += time.perf_counter() - tic
        ctx.progress("inversion", served["inversion"], len(positions))

    decoded = 0
    for i, _frame, small in source.frames(ctx, todo) if todo else ():
        ctx.check_cancelled()
        decoded += 1
        if keys.depth[i] not in depth:
            tic = time.perf_counter()
            depth.put(keys.depth[i], ctx.bytes_held.track(conditioning.frame(pipe, i, small)))
            computed["depth"] += 1
            served["depth"] += shared_by[i]
            timer["depth"] += time.perf_counter() - tic
            ctx.progress("depth", served["depth"], len(positions))
        if i not in inverted:
            tic = time.perf_counter()
            with ctx.cancellable(pipe):
                batch.append((i, pipe.encode_frames([small])))
            timer["inversion"] += time.perf_counter() - tic
            if len(batch) == inversion_batch:
                invert_batch()
        del small
    if batch:
        invert_batch()
    if decoded < len(todo):
        raise InputError(  # the file changed or lost frames since it was first read
            f"{s.input} gave fewer frames on a second reading than on the first; is it being "
            "written to?"
        )
    for i in positions:
        if i not in inverted:  # an identical frame's inversion, exactly
            inverted[i] = inverted[first_of[i]]
    ctx.seconds.update(timer)
    if result is not None:
        result.frames_reused = sum(first_of[i] != i for i in positions)
        result.depth_cached, result.depth_computed = depth_hits, computed["depth"]
        result.inversion_cached, result.inversion_computed = inversion_hits, computed["inversion"]
        result.unet_evaluations_inversion = pipe.unet_evaluations - evaluations
    rows = ConditioningRows(conditioning, depth, [keys.depth[i] for i in positions], ctx.bytes_held)
    paths = None
    if s.masked:
        paths = TrajectoryRows(trajectories, [keys.inversion[i] for i in positions], ctx.bytes_held)
    return rows, inverted.tensor, paths


def _first_positions(keys: StageKeys, positions: list[int]) -> dict[int, int]:
    """Per position, the first of `positions` with the same inversion key (itself if none)."""
    first: dict[str, int] = {}
    return {i: first.setdefault(keys.inversion[i], i) for i in positions}


LATENT_SCALE = 8
"""Pixels per latent along a side (every supported VAE's); known without loading the model."""


def latent_shape(source: SourceClip) -> tuple[int, int, int]:
    return (4, source.height // LATENT_SCALE, source.width // LATENT_SCALE)


def _cached_rows(
    ctx: JobContext,
    pipe,
    source: SourceClip,
    conditioning: Conditioning,
    keys: StageKeys,
    positions,
):
    """(conditioning, trajectories) `FrameArrays` and x_T `FrameRows` of what the cache has.

    A local edit's frame whose trajectory is not cached is inverted again, for it.
    """
    import numpy as np

    masked = ctx.settings.masked
    shape = latent_shape(source)
    depth = FrameArrays(
        "depth",
        conditioning.row_shape(pipe, source.height, source.width),
        conditioning.dtype,
        ctx.cache,
        ctx.scratch,
        ctx.warn,
    )
    trajectory_shape = (ctx.settings.steps, *shape)
    trajectories = FrameArrays(
        "trajectory", trajectory_shape, np.float32, ctx.cache, ctx.scratch, ctx.warn
    )
    inverted = FrameRows(positions, shape)
    for i in positions:
        if masked and keys.inversion[i] not in trajectories:
            continue  # inverted again, for its trajectory
        cached = ctx.load("inversion", keys.inversion[i], (1, *shape))
        if cached is not None:
            inverted[i] = cached
    return depth, inverted, trajectories


def edit_latents(
    ctx: JobContext,
    pipe,
    depth,
    inverted,
    key: str,
    prompts: Prompts,
    masks: LocalEditMasks | None,
    shape: tuple[int, ...],
    result: EditResult | None = None,
    trajectories=None,
    positions: list[int] | None = None,
):
    """Final latents (clip order) of the frames at `positions` (all when None).

    `depth` and `trajectories` are `depth_and_inversion`'s readers. Resumes from a step
    checkpoint; a local edit passes the frames' `trajectories`.
    """
    import torch

    s = ctx.settings
    num_frames = inverted.shape[0]
    step_major, resume = resume_point(ctx, key, num_frames, shape)
    frame_batch = parse_frame_batch(s.frame_batch) if step_major else 1
    if not step_major and parse_frame_batch(s.frame_batch) not in ("auto", 1):
        ctx.warn(
            f"--frame-batch {s.frame_batch} is not used: a guidance target at a later step "
            f"({s.latent_guidance_target}) edits the frames one at a time."
        )
    if resume is not None and result is not None:
        result.editing = "resumed"
        result.resumed_from_step = resume.step
    total = num_frames * s.steps
    ctx.progress("editing", 0 if resume is None else (resume.step + 1) * num_frames, total)
    on_step_end = None
    if step_major and ctx.cache.enabled:
        on_step_end = checkpointer(ctx, key, result)
    evaluations = pipe.unet_evaluations
    torch.manual_seed(s.seed)
    with ctx.cancellable(pipe):
        final, store = pipe.edit(
            inverted.to(pipe.device),
            depth,
            prompts.edit,
            prompts.negative,
            **edit_options(s, pipe),
            progress=ctx.progress,
            resume=resume,
            on_step_end=on_step_end,
            masks=masks.latent_masks(positions or list(range(num_frames)))
            if masks is not None
            else None,
            source_latents=trajectories,
            frame_batch=frame_batch,
        )
    if result is not None:
        result.unet_evaluations_editing = pipe.unet_evaluations - evaluations
        result.feature_store_peak_bytes = store.peak_nbytes
        result.frame_batch = store.chunk_size
    final = final.float().cpu()
    if ctx.save("final", key, final):
        ctx.cache.remove("checkpoint", key)
    return final


def edit_options(s, pipe) -> dict:
    """The keyword arguments of `pipe.edit` that come from the settings alone."""
    return {
        "num_inference_steps": s.steps,
        "guidance_scale": s.guidance_scale,
        "attend": s.attend,
        "anchor": s.anchor,
        "latent_guidance_weight": s.latent_guidance_weight,
        "latent_guidance_steps": s.latent_guidance_steps,
        "latent_guidance_target": s.latent_guidance_target,
        "seed": s.seed,
        "feature_store_dtype": _feature_store_dtype(s.feature_store_dtype, pipe),
        "feature_store_device": "cpu" if s.offload_features else None,
    }


def resume_point(ctx: JobContext, key: str, num_frames: int, shape: tuple[int, ...]):
    """(step_major, checkpoint or None): step-major edits save and resume from checkpoints."""
    from ..core.guidance import latent_guidance_schedule, needs_frame_major

    s = ctx.settings
    target_of = latent_guidance_schedule(
        s.steps, s.latent_guidance_weight, s.latent_guidance_steps, s.latent_guidance_target
    )
    step_major = num_frames == 1 or not needs_frame_major(target_of)
    resume = None
    if step_major and ctx.cache.enabled:
        resume = ctx.cache.load_checkpoint(key, num_frames, s.steps)
        if resume is not None and tuple(resume.latents.shape[1:]) != tuple(shape):
            resume = None
    return step_major, resume


def checkpointer(ctx: JobContext, key: str, result: EditResult | None):
    """The edit's `on_step_end`: at most one checkpoint per `checkpoint_interval`."""
    s = ctx.settings
    last_saved = time.monotonic()

    def on_step_end(checkpoint) -> None:
        nonlocal last_saved
        if checkpoint.step == s.steps - 1:
            return  # the final latents are saved next
        if time.monotonic() - last_saved < s.checkpoint_interval:
            return
        t0 = time.perf_counter()
        if ctx.save("checkpoint", key, checkpoint) and result is not None:
            result.checkpoints_saved += 1
        last_saved = time.monotonic()
        if result is not None:
            result.checkpoint_seconds += time.perf_counter() - t0

    return on_step_end


def _feature_store_dtype(name: str, pipe):
    """float16 halves the injected features' memory; float32 keeps them as computed."""
    import torch

    if name == "float16" and pipe.unet.dtype != torch.float16:
        return torch.float16
    return None
