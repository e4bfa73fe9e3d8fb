"""The method's options of one edit: one frozen value, checked once, read by every layer.

`EditOptions` holds what the Pix2Video method itself takes (steps, classifier-free
guidance, which frames the attention reads, the guided latent update, processing order,
frames per UNet call, where injected features are kept), with the reference's defaults.
It is built once, from `EditSettings` (`settings.edit_options()`) or from the pipeline's
diffusers-style keyword arguments, checked when built, and passed down through
`Pix2VideoBase.edit` to the edit loop (`edit_loop.EditLoop`). Every decision derived from
it is made here and nowhere else: the guidance schedule, step- or frame-major order, the
frames per UNet call (and what `auto` is before a model is measured).

Importing this module does not import torch: the command line checks options before
loading anything.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ..checks import check_choice, check_integer, check_number
from ..errors import InputError, OptionError
from .guidance import latent_guidance_schedule, needs_frame_major

ATTEND_MODES: tuple[str, ...] = ("anchor+previous", "anchor", "previous", "anchor+random", "none")
"""Which edited frames the decoder self-attention reads: the paper's choice, then its ablations."""
ANCHORS: tuple[str, ...] = ("first", "last")
"""The anchor frame; `last` processes the clip from its end."""
SCHEDULES: tuple[str, ...] = ("auto", "step", "frame")
"""Processing order (same result): all frames step by step, or each frame to the end."""
FEATURE_STORE_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
MAX_STEPS = 1000  # the scheduler's training timesteps
MAX_GUIDANCE_SCALE = 100.0
CPU_FRAME_BATCH = 1
"""`frame_batch="auto"` on a CPU: what benchmarks/frame_batch.py measured fastest there (on a
GPU the pipeline measures what fits, `pipelines.frame_batch.measure_frame_batch`)."""
FUTURE_TARGET_NEEDS_FRAME_ORDER = (
    "Step-by-step processing cannot pull towards a later step's prediction; use schedule='frame'."
)


def parse_frame_batch(value: Any) -> int | str:
    """`frame_batch`: "auto" or a whole number >= 1 (config files and CSV cells give text).

    Frames that share one editing UNet call (step-by-step order; the result equals one at a
    time up to float rounding). "auto": on a GPU as many as fit its free memory, on a CPU
    `CPU_FRAME_BATCH`.
    """
    text = str(value).strip().lower() if isinstance(value, str) else value
    if text == "auto":
        return "auto"
    if isinstance(text, str) and text.isdigit():
        text = int(text)
    if isinstance(text, bool) or not isinstance(text, int) or text < 1:
        raise OptionError("frame_batch", f"must be 'auto' or a whole number >= 1; got {value!r}.")
    return text


def parse_inject_blocks(value: Any) -> tuple[int, ...] | None:
    """`inject_blocks`: None (the backbone's default set) or block indices >= 0, given as
    numbers or as text "10,11,12" (a config file, a CSV cell); sorted, each once."""
    if value is None:
        return None
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    try:
        blocks = [int(b) if isinstance(b, str) and b.strip().isdigit() else b for b in items]
    except TypeError:
        blocks = [value]
    if not blocks or any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in blocks):
        raise OptionError(
            "inject_blocks", f"must be block indices (whole numbers >= 0); got {value!r}."
        )
    return tuple(sorted(set(blocks)))


def anchor_order(num_frames: int, anchor: str) -> list[int]:
    """Clip indices in processing order: the anchor frame first (`last`: the clip reversed)."""
    return list(range(num_frames))[:: -1 if anchor == "last" else 1]


@dataclass(frozen=True)
class EditOptions:
    """The method's settings of one edit (module doc); invalid values raise `OptionError`.

    Field names are the pipeline's keyword arguments (`Pix2VideoBase.__call__` documents
    each); `frame_batch` may be "auto" until a pipeline measures it (`with_frame_batch`).
    `feature_store_dtype` is a dtype name ("float16"...) or None to keep the features as
    the model computes them; a `torch.dtype` is taken too. `inject_blocks` chooses a
    transformer backbone's injected blocks (SD3: `joint_attention.py`); None is its default.
    """

    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    attend: str = "anchor+previous"
    anchor: str = "first"
    latent_guidance_weight: float = 100.0
    latent_guidance_steps: int | None = None  # None: steps // 2 + 1 (26 of 50)
    latent_guidance_target: str = "same-step"
    seed: int = 0
    schedule: str = "auto"
    frame_batch: int | str = 1
    feature_store_dtype: str | None = None
    feature_store_device: str | None = None
    inject_blocks: tuple[int, ...] | None = None  # None: the backbone's default set

    def __post_init__(self) -> None:
        check_integer("num_inference_steps", self.num_inference_steps, 1, MAX_STEPS)
        check_number("guidance_scale", self.guidance_scale, 0.0, MAX_GUIDANCE_SCALE)
        check_choice("attend", self.attend, ATTEND_MODES)
        check_choice("anchor", self.anchor, ANCHORS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_number("latent_guidance_weight", self.latent_guidance_weight, 0.0)
        if self.latent_guidance_steps is not None:
            check_integer("latent_guidance_steps", self.latent_guidance_steps, 0)
        check_integer("seed", self.seed, -(2**63), 2**63 - 1)
        object.__setattr__(self, "frame_batch", parse_frame_batch(self.frame_batch))
        object.__setattr__(self, "inject_blocks", parse_inject_blocks(self.inject_blocks))
        dtype = self.feature_store_dtype
        if dtype is not None:  # a torch.dtype's name, without importing torch
            object.__setattr__(self, "feature_store_dtype", str(dtype).removeprefix("torch."))
            check_choice("feature_store_dtype", self.feature_store_dtype, FEATURE_STORE_DTYPES)
        if self.feature_store_device is not None:
            object.__setattr__(self, "feature_store_device", str(self.feature_store_device))
        self.guidance_targets  # noqa: B018 - checks the target (a malformed one even when off)
        if self.schedule == "step" and self.frame_major:
            raise InputError(FUTURE_TARGET_NEEDS_FRAME_ORDER)

    def replace(self, **changes: Any) -> EditOptions:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ the guided update
    @cached_property
    def guidance_targets(self) -> dict[int, int]:
        """{guided step: the step of the previous frame's x0 it is pulled towards}; {} when off."""
        return latent_guidance_schedule(
            self.num_inference_steps,
            self.latent_guidance_weight,
            self.latent_guidance_steps,
            self.latent_guidance_target,
        )

    @cached_property
    def x0_last_use(self) -> dict[int, int]:
        """{a step whose x0 a guided step reads: the last step reading it} (when to free it)."""
        targets = self.guidance_targets
        return {k: max(s for s, k2 in targets.items() if k2 == k) for k in set(targets.values())}

    # ------------------------------------------------------------------ processing order
    @cached_property
    def frame_major(self) -> bool:
        """Frames one after another to the end: a guidance target at a later step needs it
        (frame i cannot start before frame i-1 has finished); `schedule="frame"` asks it."""
        return self.schedule == "frame" or needs_frame_major(self.guidance_targets)

    @property
    def splittable(self) -> bool:
        """Whether workers can share the clip's frame chain (they go step by step)."""
        return not needs_frame_major(self.guidance_targets)

    def step_major(self, num_frames: int) -> bool:
        """Every frame advances one step before any takes the next (one frame: either way)."""
        return num_frames == 1 or not self.frame_major

    def processing_order(self, num_frames: int) -> list[tuple[int, int]]:
        """(position, step) pairs in execution order (positions in anchor order)."""
        steps = range(self.num_inference_steps)
        if self.frame_major:
            return [(p, s) for p in range(num_frames) for s in steps]
        return [(p, s) for s in steps for p in range(num_frames)]

    def clip_order(self, num_frames: int) -> list[int]:
        """Clip indices in processing order (`anchor_order`)."""
        return anchor_order(num_frames, self.anchor)

    # ------------------------------------------------------------------ frames per call
    def unused_frame_batch(self, num_frames: int, name: str = "frame_batch") -> str | None:
        """The warning for a frame batch > 1 that frame-major order cannot use, or None
        (`name`: the option as the caller knows it)."""
        if self.step_major(num_frames) or self.frame_batch in ("auto", 1):
            return None
        return (
            f"{name} {self.frame_batch} is not used: a guidance target at a later step "
            f"({self.latent_guidance_target}) edits the frames one at a time."
        )

    def known_frame_batch(self, device_type: str) -> int | None:
        """Frames per editing call known before any model runs: the number given, or auto's
        on a CPU; None for auto on a GPU (the pipeline measures what fits)."""
        if self.frame_batch != "auto":
            return self.frame_batch
        return None if device_type == "cuda" else CPU_FRAME_BATCH

    def with_frame_batch(self, frame_batch: int) -> EditOptions:
        return self.replace(frame_batch=frame_batch)

    def frames_per_call(self, num_frames: int) -> int:
        """Frames that share one editing UNet call: the frame batch, capped by the clip; one
        in frame-major order (frame i needs frame i-1's later steps first)."""
        if self.frame_batch == "auto":
            raise ValueError("frame_batch 'auto' must be measured first (with_frame_batch)")
        if not self.step_major(num_frames):
            return 1
        return max(1, min(self.frame_batch, num_frames))
