"""The Pix2Video edit loop, written once over a model predictor (k-diffusion style).

Every backbone only prepares its conditioning and hands `EditLoop` a callable
``predict(x, frames, t) -> eps`` (a flow model's velocity, with a `FlowMatchSchedule`) and
the `Schedule` its scheduler walks; everything that makes the method is here:

- frames are processed in *anchor order*: position 0 is the **anchor frame** (the clip's
  first, or its last with `anchor="last"`), and position i's decoder self-attention reads
  the stored features of the anchor and of position i-1 at the same step
  (`attention.FeatureStore`; the backbone's `attention.Injection` says which layers: a
  UNet's decoder self-attention, SD3's joint attention in `joint_attention.py`);
- after each sampling step (`Schedule.sample_step`), the guided latent update pulls frame i
  towards frame i-1's predicted x0 (`guidance.py`), during the first half of the steps;
- a local edit keeps, outside its mask, each frame's own source latent (`MaskBlend`);
- step-major order saves a consistent state after every step (`EditCheckpoint`) that a
  resumed edit continues from with the same result.

Frame i at step s depends only on frames < i at step s (and on its own earlier steps), so
the frames can be advanced step by step ("step-major") instead of frame by frame: the
result is the same and the feature store then holds a single step's features. Frame-major
order is used when a later step's prediction is the guidance target (`step:K`). Step by
step, consecutive frames can also share one UNet call (`frame_batch`, a chunk of N frames):
inside the call each decoder self-attention row reads the row above it, and frame i's
guided update uses frame i-1's x0 of the same call; the result equals one frame at a time
up to float reassociation. All these decisions come from `options.EditOptions`.

One process edits the whole clip (`frame_chain.WholeClip`, which exchanges nothing), or
one worker edits its runs of a clip split across workers (`frame_chain.ChainPlace`),
exchanging features and x0s with the others: the loop is the same.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..errors import InputError
from .attention import FeatureStore, Injection, reference_plan
from .frame_chain import ChainPlace, WholeClip, chunks_of
from .guidance import UNSPLITTABLE, guided_latent_update
from .inversion import ProgressCallback, Schedule
from .options import EditOptions

FramePredictor = Callable[[torch.Tensor, list[int], float], torch.Tensor]
"""eps = predict(x, frames, t): guided noise of the (n, 4, h, w) latents `x` of the clip's
frames `frames` (one row each, in processing order) at t, in one model call."""

FrameConditioning = Callable[[list[int]], torch.Tensor]
"""conditioning(frames) -> (n, ...): the conditioning rows of the frames (clip indices), e.g.
read from disk per call (`job.conditioning`); a backbone's `edit` turns a tensor into one."""

SourceLatents = Callable[[list[int], int], torch.Tensor]
"""source_latents(frames, step) -> (n, 4, h, w): a local edit's source latents of the frames
(clip indices) at the noise level editing step `step` lands on. A provider rather than an
(N, steps, 4, h, w) tensor, so a job can read them from disk a step at a time
(`job.frame_store`) instead of holding every frame's trajectory for the whole clip."""


def trajectory_rows(trajectories: torch.Tensor) -> SourceLatents:
    """The `SourceLatents` of an in-memory (N, steps, 4, h, w) tensor (`source_trajectory`)."""
    return lambda frames, step: trajectories[frames, step]


@dataclass
class EditCheckpoint:
    """State of a step-major edit after every frame has finished step `step`."""

    step: int
    latents: torch.Tensor  # (N, 4, h, w), processing order
    x0_targets: dict[tuple[int, int], torch.Tensor]  # predictions later guided steps still need

    def cut(self, positions: list[int]) -> EditCheckpoint:
        """The rows of one worker of a split chain (`frame_chain`), and the x0s it reads."""
        wanted = set(positions)
        x0s = {k: v for k, v in self.x0_targets.items() if k[0] in wanted or k[0] + 1 in wanted}
        return EditCheckpoint(self.step, self.latents[positions], x0s)


class MaskBlend:
    """A local edit (blended latent diffusion): after every step, the latent outside the
    mask is the frame's own source latent at the same noise level.

    `masks` (n, 1, h, w) bool, True = edit, one row per row of the loop's latents (processing
    order); `source_latents` gives the source rows of a call's frames (clip indices) at once.
    """

    def __init__(self, masks: torch.Tensor, source_latents: SourceLatents | torch.Tensor) -> None:
        self.masks = masks
        self.source_latents = (
            trajectory_rows(source_latents) if torch.is_tensor(source_latents) else source_latents
        )

    def __call__(
        self, latents: torch.Tensor, rows: list[int], frames: list[int], step: int
    ) -> torch.Tensor:
        sources = self.source_latents(frames, step).to(latents.device)
        return torch.where(self.masks[rows].to(latents.device), latents, sources)


class EditEverywhere:
    """The blend of an edit without a mask: every latent is the edit's."""

    masks = None

    def __call__(
        self, latents: torch.Tensor, rows: list[int], frames: list[int], step: int
    ) -> torch.Tensor:
        return latents


class EditLoop:
    """Denoise frames from their inverted noise, anchor first (module doc).

    `predict(x, frames, t)` gets the frames' clip indices, so a backbone looks up their
    conditioning itself. `place` is the whole clip of `num_frames` (rows in clip order; the
    default) or one worker's `ChainPlace` (rows = its positions' rows, in processing
    order), and so are the rows of a local edit's `masks` (n, 1, h, w), True = edit, whose
    `source_latents` take clip indices (`MaskBlend`). `options` must have its frame batch
    measured (`EditOptions.with_frame_batch`). `injection` is where the cross-frame
    attention goes (`attention.Injection`; unused with attend "none"). In step-major order
    every completed step is a consistent state: `on_step_end` receives it (never in
    frame-major order, where no step boundary is).
    """

    def __init__(
        self,
        predict: FramePredictor,
        schedule: Schedule,
        injection: Injection,
        options: EditOptions,
        num_frames: int,
        place: ChainPlace | WholeClip | None = None,
        masks: torch.Tensor | None = None,
        source_latents: SourceLatents | torch.Tensor | None = None,
        progress: ProgressCallback | None = None,
        on_step_end: Callable[[EditCheckpoint], None] | None = None,
    ) -> None:
        self.predict, self.schedule, self.options = predict, schedule, options
        self.injection = injection
        self.place = place if place is not None else WholeClip(num_frames)
        self.progress = progress or (lambda stage, done, total: None)
        n = self.place.num_frames
        self.clip_order = options.clip_order(n)
        if (masks is None) != (source_latents is None):
            raise ValueError("A local edit needs both masks and source latents.")
        self.blend = (
            MaskBlend(self.place.rows_in_processing_order(masks, self.clip_order), source_latents)
            if masks is not None
            else EditEverywhere()
        )
        self.step_major = options.step_major(n)
        self.on_step_end = on_step_end if self.step_major else None
        if not self.step_major and isinstance(self.place, ChainPlace):
            raise InputError(UNSPLITTABLE)
        self.mine = self.place.positions
        self.row_of = {position: row for row, position in enumerate(self.mine)}
        self.latents: dict[int, torch.Tensor] = {}
        self.x0s: dict[tuple[int, int], torch.Tensor] = {}  # (position, step) -> predicted x0

    def run(
        self, inverted_latents: torch.Tensor, resume: EditCheckpoint | None = None
    ) -> tuple[torch.Tensor, FeatureStore]:
        """(final latents, the feature store): rows as given (`place`), and the store for
        its byte counts and chunk size. `resume` continues a step-major edit from a
        checkpoint with the same result as an uninterrupted run."""
        if resume is not None and not self.step_major:
            raise InputError("Resuming needs step-by-step processing (schedule 'step').")
        device = inverted_latents.device
        store, exchange = self._feature_store(device)
        rows = self.place.rows_in_processing_order(inverted_latents, self.clip_order)
        if resume is not None:
            rows = resume.latents.to(device)
            self.x0s = {k: v.to(device) for k, v in resume.x0_targets.items()}
        self.latents = {p: x[None] for p, x in zip(self.mine, rows, strict=True)}
        first_step = resume.step + 1 if resume is not None else 0
        order = [
            (p, s)
            for p, s in self.options.processing_order(self.place.num_frames)
            if p in self.row_of and s >= first_step
        ]
        self.total = len(self.mine) * self.options.num_inference_steps
        self.done = self.total - len(order)
        attending = self.options.attend != "none"
        with self.injection.installed(store) if attending else nullcontext():
            for positions, step in chunked_calls(order, self.chunks):
                self._call(positions, step, store, exchange)
        exchange.close()
        final = torch.cat([self.latents[p] for p in self.mine])
        return self.place.rows_as_given(final, self.clip_order), store

    def _feature_store(self, device: torch.device):
        """The store of injected features and the exchange it fills (nothing, alone)."""
        o = self.options
        plan = reference_plan(self.place.num_frames, o.attend, o.seed)
        frame_batch = self.place.agree_on_chunk_size(
            o.frames_per_call(self.place.num_frames), device
        )
        layers = self.injection.layers() if o.attend != "none" else []
        exchange = self.place.exchange(plan, layers, frame_batch, set(o.x0_last_use))
        self.chunks = [chunk for run in self.place.runs for chunk in chunks_of(run, frame_batch)]
        dtype = getattr(torch, o.feature_store_dtype) if o.feature_store_dtype else None
        store = FeatureStore(
            plan,
            dtype=dtype,
            device=o.feature_store_device,
            chunk_size=frame_batch,
            chunks=self.chunks,
            exchange=exchange,
        )
        return store, exchange

    def _call(self, positions: range, step: int, store: FeatureStore, exchange) -> None:
        """One model call of a chunk of consecutive positions at `step`, and its sampling step."""
        t = self.schedule.timesteps[step]
        if positions.start == self.mine[0]:
            exchange.begin_step(step)
        x = (
            self.latents[positions.start]
            if len(positions) == 1
            else torch.cat([self.latents[p] for p in positions])
        )
        frames = [self.clip_order[p] for p in positions]
        with store.chunk_step(positions, step):
            eps = self.predict(x, frames, t)
        stepped, predicted = self.schedule.sample_step(x, eps, step)
        guided = [  # in order: row i reads row i-1's x0 of this call
            self._guide(position, step, stepped[row : row + 1], predicted[row : row + 1], exchange)
            for row, position in enumerate(positions)
        ]
        latents = self.blend(
            guided[0] if len(guided) == 1 else torch.cat(guided),
            [self.row_of[p] for p in positions],
            frames,
            step,
        )
        for row, position in enumerate(positions):
            self.latents[position] = latents[row : row + 1]
        self.done += len(positions)
        self.progress("editing", self.done, self.total)
        if positions[-1] == self.mine[-1]:
            self._end_step(step, exchange)

    def _guide(
        self, position: int, step: int, latent: torch.Tensor, x0: torch.Tensor, exchange
    ) -> torch.Tensor:
        """The guided latent update towards the previous position's x0 (on a guided step),
        and keeping this x0 for the next position (or sending it to that position's worker)."""
        o = self.options
        target_of, last_use = o.guidance_targets, o.x0_last_use
        if position > 0 and step in target_of:
            key = (position - 1, target_of[step])
            if key not in self.x0s:  # another worker's run ends there
                self.x0s[key] = exchange.receive(key[0], x0.shape, x0.dtype, x0.device)
            latent = guided_latent_update(latent, x0, self.x0s[key], o.latent_guidance_weight)
            if last_use[key[1]] == step:
                del self.x0s[key]
        if step in last_use:
            if position + 1 in self.row_of:
                self.x0s[(position, step)] = x0
            else:
                exchange.send_x0(position, x0)
        return latent

    def _end_step(self, step: int, exchange) -> None:
        """Every position here has finished `step`: a consistent state (step-major)."""
        exchange.end_step()
        if self.on_step_end is not None:
            # no host copy here (the cache copies what it saves): no GPU sync per step
            rows = torch.cat([self.latents[p] for p in self.mine])
            self.on_step_end(EditCheckpoint(step, rows, dict(self.x0s)))


def chunked_calls(order: list[tuple[int, int]], chunks: list[range]) -> list[tuple[range, int]]:
    """(positions, step) of each model call: `order`'s pairs grouped into `chunks`.

    Consecutive pairs share a call when they are consecutive positions at the same step in
    the same chunk (`frame_chain.chunks_of` of the clip, or of a worker's runs in a split
    chain). Frame-major order stays one frame per call.
    """
    chunk_of = {p: chunk.start for chunk in chunks for p in chunk}
    calls: list[tuple[range, int]] = []
    for position, step in order:
        if (
            calls
            and calls[-1][1] == step
            and calls[-1][0].stop == position
            and calls[-1][0].start >= chunk_of[position]
        ):
            calls[-1] = (range(calls[-1][0].start, position + 1), step)
        else:
            calls.append((range(position, position + 1), step))
    return calls
