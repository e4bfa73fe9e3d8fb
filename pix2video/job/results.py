"""What an edit reports: progress stages, the result of a whole edit and of a preview."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

ProgressCallback = Callable[[str, int, int], None]
MessageCallback = Callable[[str], None]

STAGES: dict[str, str] = {
    "masks": "frames",
    "depth": "frames",
    "inversion": "frames",
    "editing": "frame-steps",
    "writing": "frames",
}
"""Progress stages in order, with the unit their counts are in."""

CANCELLED = "The edit was cancelled; finished work is cached: run it again to resume."
CANCELLED_NO_CACHE = "The edit was cancelled; nothing was kept (the cache is off)."


def describe_precision(dtype: str, device: str, reason: str) -> str:
    """The precision line of the summaries (CLI, web page): what ran, where, and why."""
    why = f" ({reason})" if reason else ""
    return f"Precision: {dtype} on {device}{why}."


@dataclass
class EditResult:
    """What an edit did: where the output went, what it cost, what came from the cache."""

    output: str
    frames: int
    frame_indices: list[int]
    size: tuple[int, int]  # (width, height) the model ran at
    output_size: tuple[int, int]  # (width, height) of the written frames
    fps: float  # the output's rate; its average where `uneven_timing` keeps the frames' times
    has_audio: bool
    source_prompt: str
    captioned: bool
    device: str
    dtype: str
    steps: int
    dtype_reason: str = ""  # why this precision: asked for, or what `auto` found
    depth_cached: int = 0
    depth_computed: int = 0
    inversion_cached: int = 0
    inversion_computed: int = 0
    frames_reused: int = 0  # frames identical to an earlier one: its depth and inversion, exactly
    editing: str = "computed"  # "computed", "resumed" (from a checkpoint) or "cached"
    resumed_from_step: int | None = None  # last finished step of the checkpoint resumed from
    checkpoints_saved: int = 0
    checkpoint_seconds: float = 0.0
    unet_evaluations_inversion: int = 0
    unet_evaluations_editing: int = 0
    feature_store_peak_bytes: int = 0
    frame_batch: int = 1  # frames per editing UNet call (--frame-batch, "auto" resolved)
    workers: int = 1  # processes that shared the frame chain (the last attempt's)
    worker_nodes: list[str] = field(default_factory=list)  # where each worker ran (Ray node id)
    worker_restarts: int = 0  # attempts restarted from a checkpoint after losing a worker
    bytes_exchanged: int = 0  # features and x0s sent between workers while editing
    worker_decodes: list[int] = field(default_factory=list)  # frames each worker VAE-decoded
    peak_frames_held: int = 0  # decoded frames alive at once (source, resized, output)
    peak_bytes_held: int = 0  # per-frame conditioning and trajectory bytes alive at once
    masked: bool = False  # a local edit
    uneven_timing: bool = False  # each frame kept its own time (variable rate, numbered gaps)
    mask_coverage: float = 1.0  # mean share of each frame's pixels the edit may change
    cache_enabled: bool = True
    latents_dir: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # per stage, and "total"

    @property
    def unet_evaluations(self) -> int:
        return self.unet_evaluations_inversion + self.unet_evaluations_editing

    def describe_precision(self) -> str:
        return describe_precision(self.dtype, self.device, self.dtype_reason)

    def describe_mask(self) -> str:
        """A local edit's line in the summaries (CLI, web page)."""
        return (
            f"Local edit: {100 * self.mask_coverage:.0f}% of the frame area edited on average; "
            "every other pixel is the source's."
        )

    def describe_rate(self) -> str:
        """The output's frame timing, for the summaries (CLI, web page)."""
        if self.uneven_timing:
            return f"each frame at its source time ({self.fps:.3g} fps on average)"
        return f"{self.fps:g} fps"

    def describe_reuse(self) -> str | None:
        """How many frames took an identical earlier frame's depth and inversion."""
        k = self.frames_reused
        if not k:
            return None
        return (
            f"Identical frames: {k} frame{'s' if k != 1 else ''} repeated an earlier one and "
            "reused its depth and inversion (exactly the same result)."
        )

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["unet_evaluations"] = self.unet_evaluations
        return data


@dataclass
class AnchorPreview:
    """The anchor frame edited alone: what the full edit's anchor frame will be."""

    source: np.ndarray  # the anchor frame at the processing size
    edited: np.ndarray
    frame_index: int  # in the input (source frame number, or position in an image folder)
    source_prompt: str
    captioned: bool
    unet_evaluations: int
    seconds: float
    precision: str = ""  # `describe_precision`'s line: the dtype it ran in, and why
