"""The Pix2Video edit loop, written once over a noise predictor (k-diffusion style).

Every backbone (SD2-depth, SD 1.5 + ControlNet, ...) only prepares its conditioning and
hands this module a callable ``predict(x, frame, t) -> eps``; everything that makes the
method is here and nowhere else:

- `invert_frames`: DDIM inversion of every frame (optionally keeping each frame's
  trajectory, which a local edit blends with);
- `edit_frames`: the loop over (frame position, step) with the feature store and the
  injection processors (`attention.py`), the guided latent update (`guidance.py`),
  step-major or frame-major order, step checkpoints and resume (`EditCheckpoint`), and
  the mask blending of local edits.

Frame i at step s depends only on frames < i at step s (and on its own earlier steps), so
the frames can be advanced step by step ("step-major") instead of frame by frame: the
result is the same and the feature store then holds a single step's features. Frame-major
order is used when a later step's prediction is the guidance target (`step:K`).

Step by step, consecutive frames can also share one UNet call (`frame_batch`, a chunk of
N frames, 2N latents with guidance): inside the call each decoder self-attention row reads
the row above it (`attention.py`), and after it frame i's guided update uses frame i-1's
predicted x0 from the same call. The result equals one frame at a time up to float
reassociation; the chunks of a step run in order, the anchor's first.

Nothing here knows a backbone: the UNet is only needed to install the injection
processors on its decoder self-attention layers, which every diffusers
`UNet2DConditionModel` has under the same names.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from .attention import (
    FeatureStore,
    cross_frame_attention,
    decoder_self_attention_layers,
    reference_plan,
)
from .frame_chain import ChainExchange, ChainPlace, chunks_of
from .guidance import (
    UNSPLITTABLE,
    guided_latent_update,
    latent_guidance_schedule,
    needs_frame_major,
)
from .inversion import ddim_invert, ddim_sample_step

ProgressCallback = Callable[[str, int, int], None]
"""progress(stage, done, total), stage "inversion" (frames) or "editing" (frame-steps)."""

FramePredictor = Callable[[torch.Tensor, list[int], int], torch.Tensor]
"""eps = predict(x, frames, t): guided noise of the (n, 4, h, w) latents `x` of the clip's
frames `frames` (one row each, in processing order) at t, in one model call."""

BatchPredictor = Callable[[torch.Tensor, slice, int], torch.Tensor]
"""eps = predict(x, frames, t): unguided noise of the frames `frames` (a slice of the clip)."""

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


@dataclass(frozen=True)
class DDIMSchedule:
    """What a DDIM walk needs from a scheduler: its timesteps and cumulative alphas."""

    timesteps: list[int]  # descending, e.g. 980, 960, ..., 0
    step_ratio: int
    alphas_cumprod: torch.Tensor
    final_alpha_cumprod: torch.Tensor

    @classmethod
    def from_scheduler(cls, scheduler, num_steps: int, device: torch.device) -> DDIMSchedule:
        scheduler.set_timesteps(num_steps)
        return cls(
            timesteps=[int(t) for t in scheduler.timesteps],
            step_ratio=scheduler.config.num_train_timesteps // num_steps,
            alphas_cumprod=scheduler.alphas_cumprod.to(device),
            final_alpha_cumprod=scheduler.final_alpha_cumprod.to(device),
        )


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


def invert_frames(
    predict: BatchPredictor,
    latents: torch.Tensor,
    schedule: DDIMSchedule,
    batch_size: int = 1,
    trajectory: bool = False,
    progress: ProgressCallback | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """DDIM-invert every frame's clean latent, `batch_size` frames per prediction.

    Returns x_T (N, 4, h, w); with `trajectory`, also (N, steps, 4, h, w): at index s, the
    latent at the noise level that editing step s lands on (`source_trajectory`).
    """
    inverted, trajectories = [], []
    for start in range(0, len(latents), batch_size):
        chunk = slice(start, start + batch_size)

        def predict_chunk(x: torch.Tensor, t: int, chunk: slice = chunk) -> torch.Tensor:
            return predict(x, chunk, t)

        x = latents[chunk]
        levels = [x]  # the clean latent, then each inversion step's result

        def record(i: int, t: int, latent: torch.Tensor, levels: list = levels) -> None:
            levels.append(latent)

        inverted.append(
            ddim_invert(
                predict_chunk,
                x,
                schedule.timesteps,
                schedule.alphas_cumprod,
                schedule.final_alpha_cumprod,
                record if trajectory else None,
            )
        )
        if trajectory:
            trajectories.append(source_trajectory(levels))
        if progress:
            progress("inversion", min(start + batch_size, len(latents)), len(latents))
    if trajectory:
        return torch.cat(inverted), torch.cat(trajectories)
    return torch.cat(inverted)


def edit_frames(
    predict: FramePredictor,
    inverted_latents: torch.Tensor,
    schedule: DDIMSchedule,
    unet: torch.nn.Module,
    attend: str = "anchor+previous",
    anchor: str = "first",
    latent_guidance_weight: float = 100.0,
    latent_guidance_steps: int | None = None,
    latent_guidance_target: str = "same-step",
    seed: int = 0,
    order: str = "auto",
    feature_store_dtype: torch.dtype | None = None,
    feature_store_device: str | torch.device | None = None,
    progress: ProgressCallback | None = None,
    resume: EditCheckpoint | None = None,
    on_step_end: Callable[[EditCheckpoint], None] | None = None,
    masks: torch.Tensor | None = None,
    source_latents: SourceLatents | torch.Tensor | None = None,
    frame_batch: int = 1,
    chain: ChainPlace | None = None,
) -> tuple[torch.Tensor, FeatureStore]:
    """Denoise frames (given in clip order) from their inverted noise, anchor first.

    `predict(x, frames, t)` is called with the frames' indices in the clip, so a backbone
    looks up their conditioning itself. The frames are processed in *anchor
    order*: position 0 is the anchor frame (the clip's first frame, or its last with
    `anchor="last"`), position i attends to earlier positions. `order` is the processing
    order (`auto`, `step`, `frame`: see `processing_order`). In step-major order every
    completed step is a consistent state (`EditCheckpoint`, latents in anchor order):
    `on_step_end` receives it (it is not called in frame-major order), and `resume`
    continues from it with the same result as an uninterrupted run.
    A local edit passes `masks` (N, 1, h, w) bool at latent resolution (True = edit) and
    `source_latents` (`SourceLatents`, or the (N, steps, 4, h, w) tensor of
    `invert_frames(trajectory=True)`): after every step, the latent outside the mask is the
    frame's own source latent at the same noise level (blended latent diffusion), read
    for a call's chunk of frames at once. Returns the final latents (N, 4, h, w) in clip
    order and the feature store (for its byte counts).
    `frame_batch` frames share each UNet call in step-major order (`chunked_calls`); the
    result equals one at a time up to float reassociation. Frame-major order runs one
    frame per call whatever it says (frame i needs frame i-1's later steps first).

    `chain` makes this one worker of a clip split across workers (`frame_chain`): it edits
    the positions `chain.positions` only (its runs), exchanging features and x0s with the
    other workers; then `inverted_latents`, `masks`, `resume`'s latents, the checkpoints and
    the result hold those positions' rows, in processing order. `predict` and
    `source_latents` still get clip indices.
    """
    num_steps = len(schedule.timesteps)
    num_frames = chain.split.num_frames if chain is not None else inverted_latents.shape[0]
    device = inverted_latents.device
    clip_index = anchor_order(num_frames, anchor)
    mine = chain.positions if chain is not None else list(range(num_frames))
    runs = chain.runs if chain is not None else [range(num_frames)]
    row_of = {position: row for row, position in enumerate(mine)}
    if chain is None:  # rows in processing order
        inverted_latents = inverted_latents[clip_index]
        masks = masks[clip_index] if masks is not None else None
    if (masks is None) != (source_latents is None):
        raise ValueError("A local edit needs both masks and source latents.")
    if torch.is_tensor(source_latents):
        source_latents = trajectory_rows(source_latents)

    target_of = latent_guidance_schedule(
        num_steps, latent_guidance_weight, latent_guidance_steps, latent_guidance_target
    )
    last_use = {
        k: max(s for s, k2 in target_of.items() if k2 == k) for k in set(target_of.values())
    }
    steps = processing_order(num_frames, num_steps, order, target_of)
    step_major = num_frames == 1 or steps[1][1] == steps[0][1]
    if resume is not None and not step_major:
        raise InputError("Resuming needs step-by-step processing (schedule 'step').")
    if chain is not None and not step_major:
        raise InputError(UNSPLITTABLE)
    if not step_major:
        on_step_end = None  # frame by frame, no step boundary is a consistent state
        if frame_batch > 1:
            warnings.warn(
                f"frame_batch {frame_batch} is not used: a guidance target at a later step "
                "edits the frames one at a time.",
                stacklevel=2,
            )
        frame_batch = 1
    frame_batch = max(1, min(frame_batch, num_frames))

    plan = reference_plan(num_frames, attend, seed)
    exchange = None
    if chain is not None:
        frame_batch = chain.agree_on_chunk_size(frame_batch, device)
        layers = decoder_self_attention_layers(unet) if attend != "none" else []
        exchange = ChainExchange(chain, plan, layers, frame_batch, set(last_use))
    chunks = [chunk for run in runs for chunk in chunks_of(run, frame_batch)]
    store = FeatureStore(
        plan,
        dtype=feature_store_dtype,
        device=feature_store_device,
        chunk_size=frame_batch,
        chunks=chunks,
        exchange=exchange,
    )
    latents = {p: x[None] for p, x in zip(mine, inverted_latents, strict=True)}
    x0_targets: dict[tuple[int, int], torch.Tensor] = {}
    steps = [(p, s) for p, s in steps if p in row_of]
    if resume is not None:
        latents = {p: x[None].to(device) for p, x in zip(mine, resume.latents, strict=True)}
        x0_targets = {k: v.to(device) for k, v in resume.x0_targets.items()}
        steps = [(p, s) for p, s in steps if s > resume.step]
    done = len(mine) * num_steps - len(steps)
    injection = cross_frame_attention(unet, store) if attend != "none" else nullcontext()
    alphas, final_alpha = schedule.alphas_cumprod, schedule.final_alpha_cumprod
    with injection:
        for positions, step in chunked_calls(steps, chunks):
            t = schedule.timesteps[step]
            if exchange is not None and positions.start == mine[0]:
                exchange.begin_step(step)
            x = (
                latents[positions.start]
                if len(positions) == 1
                else torch.cat([latents[p] for p in positions])
            )
            with store.chunk_step(positions, step):
                eps = predict(x, [clip_index[p] for p in positions], t)
            stepped, predicted = ddim_sample_step(
                x, eps, t, schedule.step_ratio, alphas, final_alpha
            )
            if masks is not None:  # the chunk's source latents at this step's noise level
                sources = source_latents([clip_index[p] for p in positions], step)
            for row, position in enumerate(positions):  # in order: i reads i-1's x0 of this call
                latent, x0 = stepped[row : row + 1], predicted[row : row + 1]
                if position > 0 and step in target_of:
                    key = (position - 1, target_of[step])
                    if key not in x0_targets:  # another worker's run ends there
                        x0_targets[key] = exchange.receive(key[0], x0.shape, x0.dtype, x0.device)
                    latent = guided_latent_update(
                        latent, x0, x0_targets[key], latent_guidance_weight
                    )
                    if last_use[key[1]] == step:
                        del x0_targets[key]
                if masks is not None:  # outside the mask, the source at this noise level
                    source = sources[row : row + 1].to(latent.device)
                    latent = torch.where(
                        masks[row_of[position]][None].to(latent.device), latent, source
                    )
                if position + 1 in row_of and step in last_use:
                    x0_targets[(position, step)] = x0
                elif exchange is not None and step in last_use:
                    exchange.send_x0(position, x0)
                latents[position] = latent
            done += len(positions)
            if progress:
                progress("editing", done, len(mine) * num_steps)
            if positions[-1] == mine[-1]:
                if exchange is not None:
                    exchange.end_step()
                if on_step_end is not None:
                    # no host copy here (the cache copies what it saves): no GPU sync per step
                    rows = torch.cat([latents[p] for p in mine])
                    on_step_end(EditCheckpoint(step, rows, dict(x0_targets)))
    if exchange is not None:
        exchange.close()
    final = torch.cat([latents[p] for p in mine])
    return (final if chain is not None else final[np.argsort(clip_index)]), store


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


def source_trajectory(levels: Sequence[torch.Tensor]) -> torch.Tensor:
    """(N, steps, 4, h, w) from an inversion's latents, ordered as editing visits noise levels.

    `levels` = [clean latent, after inversion step 0, ..., after the last step (x_T)], each
    (N, 4, h, w). Editing step s starts at the level inversion reached after its step
    steps-1-s and lands on the one before it: index s holds `levels[steps - 1 - s]` (the
    last step lands on the clean latent).
    """
    steps = len(levels) - 1
    return torch.stack([levels[steps - 1 - s] for s in range(steps)], dim=1)


def anchor_order(num_frames: int, anchor: str) -> list[int]:
    """Clip indices in processing order: the anchor frame first (`last`: the clip reversed)."""
    return list(range(num_frames))[:: -1 if anchor == "last" else 1]


def processing_order(
    num_frames: int, num_steps: int, schedule: str, target_of: dict[int, int]
) -> list[tuple[int, int]]:
    """(position, step) pairs in execution order; step-major unless a guidance target lies ahead."""
    needs_future_step = needs_frame_major(target_of)
    if schedule == "auto":
        schedule = "frame" if needs_future_step else "step"
    if schedule == "step" and needs_future_step:
        raise InputError(
            "Step-by-step processing cannot pull towards a later step's prediction; use schedule='frame'."
        )
    if schedule == "step":
        return [(p, s) for s in range(num_steps) for p in range(num_frames)]
    if schedule == "frame":
        return [(p, s) for p in range(num_frames) for s in range(num_steps)]
    raise InputError(f"schedule must be 'auto', 'frame' or 'step'; got {schedule!r}.")
