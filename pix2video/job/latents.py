"""The latents of a job: depth and DDIM inversion of every frame, then the edit.

Both are cached per frame (inversion) or per clip (edit, with step checkpoints a killed job
resumes from); only latents are kept in memory, never the frames. The conditioning and a
local edit's trajectories, which the edit needs for every frame, wait on disk
(`frame_store`) and are read back a step and a few frames at a time.
"""

from __future__ import annotations

import time
from collections import Counter

from ..errors import InputError
from .conditioning import Conditioning, ConditioningRows
from .context import JobContext
from .frame_store import BytesTracker, FrameArrays
from .keys import StageKeys
from .masks import LocalEditMasks
from .prompts import Prompts
from .results import EditResult
from .source import SourceClip


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
    """The edit's `edit_loop.SourceLatents`: a step's source latents of a few frames, from disk."""

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
    run = InversionPass(ctx, pipe, source, conditioning, keys, prompts, positions)
    run.compute(inversion_batch)
    if result is not None:
        run.report(result)
    return run.readers()


class InversionPass:
    """One `depth_and_inversion` pass: what the cache has, then one decoding pass for the
    rest; counts what was served, computed and reused, for progress and the result."""

    def __init__(
        self,
        ctx: JobContext,
        pipe,
        source: SourceClip,
        conditioning: Conditioning,
        keys: StageKeys,
        prompts: Prompts,
        positions: list[int],
    ) -> None:
        self.ctx, self.pipe, self.source, self.conditioning = ctx, pipe, source, conditioning
        self.keys, self.prompts, self.positions = keys, prompts, positions
        self.depth, self.inverted, self.trajectories = _cached_rows(
            ctx, pipe, source, conditioning, keys, positions
        )
        self.first_of = _first_positions(keys, positions)
        self.shared_by = Counter(self.first_of.values())  # positions each computed frame serves
        self.cached = {
            "depth": sum(keys.depth[i] in self.depth for i in positions),
            "inversion": len(self.inverted),
        }
        self.served = dict(self.cached)  # positions with their rows
        self.computed = {"depth": 0, "inversion": 0}
        self.seconds = {"depth": 0.0, "inversion": 0.0}
        self.evaluations = pipe.unet_evaluations
        self.batch: list = []  # (position, VAE latent) waiting to invert

    def compute(self, inversion_batch: int) -> None:
        """Decode the frames missing a row (the first of identical ones), condition and invert
        them, `inversion_batch` per inversion call; identical frames then share rows."""
        ctx, keys = self.ctx, self.keys
        todo = [
            i for i in self.positions
            if self.first_of[i] == i and (keys.depth[i] not in self.depth or i not in self.inverted)
        ]  # fmt: skip
        ctx.progress("depth", self.served["depth"], len(self.positions))
        ctx.progress("inversion", self.served["inversion"], len(self.positions))
        decoded = 0
        for i, _frame, small in self.source.frames(ctx, todo) if todo else ():
            ctx.check_cancelled()
            decoded += 1
            if keys.depth[i] not in self.depth:
                self._condition(i, small)
            if i not in self.inverted:
                self._encode(i, small)
                if len(self.batch) == inversion_batch:
                    self._invert_batch()
            del small
        if self.batch:
            self._invert_batch()
        if decoded < len(todo):
            raise InputError(  # the file changed or lost frames since it was first read
                f"{ctx.settings.input} gave fewer frames on a second reading than on the first; "
                "is it being written to?"
            )
        for i in self.positions:
            if i not in self.inverted:  # an identical frame's inversion, exactly
                self.inverted[i] = self.inverted[self.first_of[i]]
        ctx.seconds.update(self.seconds)

    def _condition(self, i: int, small) -> None:
        """Frame `i`'s depth (or control images), stored on disk at once."""
        tic = time.perf_counter()
        row = self.conditioning.frame(self.pipe, i, small)
        self.depth.put(self.keys.depth[i], self.ctx.bytes_held.track(row))
        self.computed["depth"] += 1
        self.served["depth"] += self.shared_by[i]
        self.seconds["depth"] += time.perf_counter() - tic
        self.ctx.progress("depth", self.served["depth"], len(self.positions))

    def _encode(self, i: int, small) -> None:
        tic = time.perf_counter()
        with self.ctx.cancellable(self.pipe):
            self.batch.append((i, self.pipe.encode_frames([small])))
        self.seconds["inversion"] += time.perf_counter() - tic

    def _invert_batch(self) -> None:
        """Invert the waiting frames in one call; each x_T (and trajectory) is stored at once."""
        import torch

        ctx, keys, s, batch = self.ctx, self.keys, self.ctx.settings, self.batch
        tic = time.perf_counter()
        rows = self.conditioning.to_model(self.depth.read([keys.depth[i] for i, _ in batch]))
        with ctx.cancellable(self.pipe):
            values = self.pipe.invert(
                torch.cat([latent for _, latent in batch]),
                ctx.bytes_held.track(rows),
                self.prompts.source,
                s.steps,
                batch_size=len(batch),
                trajectory=s.masked,
            )
        if s.masked:
            values, paths = values
            for (i, _), path in zip(batch, ctx.bytes_held.track(paths.float().cpu()), strict=True):
                self.trajectories.put(keys.inversion[i], path.numpy())
        for (i, _), value in zip(batch, values.float().cpu(), strict=True):
            self.inverted[i] = value[None]
            ctx.save("inversion", keys.inversion[i], value[None])
        self.computed["inversion"] += len(batch)
        self.served["inversion"] += sum(self.shared_by[i] for i, _ in batch)
        batch.clear()
        self.seconds["inversion"] += time.perf_counter() - tic
        ctx.progress("inversion", self.served["inversion"], len(self.positions))

    def report(self, result: EditResult) -> None:
        result.frames_reused = sum(self.first_of[i] != i for i in self.positions)
        result.depth_cached, result.depth_computed = self.cached["depth"], self.computed["depth"]
        result.inversion_cached = self.cached["inversion"]
        result.inversion_computed = self.computed["inversion"]
        result.unet_evaluations_inversion = self.pipe.unet_evaluations - self.evaluations

    def readers(self):
        """(conditioning reader, x_T tensor, trajectory reader or None): `depth_and_inversion`."""
        keys, held = self.keys, self.ctx.bytes_held
        rows = ConditioningRows(
            self.conditioning, self.depth, [keys.depth[i] for i in self.positions], held
        )
        paths = None
        if self.ctx.settings.masked:
            inversion_keys = [keys.inversion[i] for i in self.positions]
            paths = TrajectoryRows(self.trajectories, inversion_keys, held)
        return rows, self.inverted.tensor, paths


def _first_positions(keys: StageKeys, positions: list[int]) -> dict[int, int]:
    """Per position, the first of `positions` with the same inversion key (itself if none)."""
    first: dict[str, int] = {}
    return {i: first.setdefault(keys.inversion[i], i) for i in positions}


LATENT_SCALE = 8
"""Pixels per latent along a side (every supported VAE's); known without loading the model."""


def latent_shape(source: SourceClip) -> tuple[int, int, int]:
    return (source.latent_channels, source.height // LATENT_SCALE, source.width // LATENT_SCALE)


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

    s = ctx.settings
    options = s.edit_options()
    num_frames = inverted.shape[0]
    notice = options.unused_frame_batch(num_frames, "--frame-batch")
    if notice:
        ctx.warn(notice)
        options = options.with_frame_batch(1)
    resume = resume_point(ctx, key, options, num_frames, shape)
    if resume is not None and result is not None:
        result.editing = "resumed"
        result.resumed_from_step = resume.step
    total = num_frames * s.steps
    ctx.progress("editing", 0 if resume is None else (resume.step + 1) * num_frames, total)
    on_step_end = None
    if options.step_major(num_frames) and ctx.cache.enabled:
        on_step_end = checkpointer(ctx, key, result)
    final, store, evaluations = run_edit(
        ctx,
        pipe,
        inverted,
        depth,
        prompts,
        options,
        resume=resume,
        on_step_end=on_step_end,
        masks=masks.latent_masks(positions or list(range(num_frames)))
        if masks is not None
        else None,
        source_latents=trajectories,
    )
    if result is not None:
        result.unet_evaluations_editing = evaluations
        result.feature_store_peak_bytes = store.peak_nbytes
        result.frame_batch = store.chunk_size
    final = final.float().cpu()
    if ctx.save("final", key, final):
        ctx.cache.remove("checkpoint", key)
    return final


def run_edit(ctx: JobContext, pipe, inverted, conditioning, prompts: Prompts, options, **loop):
    """(final latents, feature store, UNet evaluations) of `pipe.edit` in a job: seeded,
    cancellable, reporting progress; `loop` are `edit`'s other keywords (resume, masks...)."""
    import torch

    evaluations = pipe.unet_evaluations
    torch.manual_seed(options.seed)
    with ctx.cancellable(pipe):
        final, store = pipe.edit(
            inverted.to(pipe.device),
            conditioning,
            prompts.edit,
            prompts.negative,
            options,
            progress=ctx.progress,
            **loop,
        )
    return final, store, pipe.unet_evaluations - evaluations


def resume_point(ctx: JobContext, key: str, options, num_frames: int, shape: tuple[int, ...]):
    """The step checkpoint to resume from, or None: step-major edits save and resume from
    checkpoints (`options` is the job's `EditOptions`)."""
    if not options.step_major(num_frames) or not ctx.cache.enabled:
        return None
    resume = ctx.cache.load_checkpoint(key, num_frames, options.num_inference_steps)
    if resume is not None and tuple(resume.latents.shape[1:]) != tuple(shape):
        return None
    return resume


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
