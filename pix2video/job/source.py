"""The input pass: open the selection, decode it once for sizes, frame hashes and the anchor.

Frames are decoded and resized one at a time and not kept (a clip of any length takes the
same memory); later stages make their own passes with `SourceClip.frames`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .context import JobContext


@dataclass
class SourceClip:
    """The selected frames as the job sees them: a reader, the processing size, the hashes."""

    reader: Any  # media.ClipReader
    path: Path
    width: int
    height: int
    frame_hashes: list[str]
    anchor_position: int  # in the selection
    anchor_index: int  # in the input
    anchor_source_frame: Any  # the anchor frame as decoded
    anchor_frame: Any  # ... and at the processing size
    latent_channels: int = 4  # the model's (16 for SD3), known without loading it

    @property
    def num_frames(self) -> int:
        return len(self.frame_hashes)

    def frames(
        self, ctx: JobContext, positions: list[int] | None = None
    ) -> Iterator[tuple[int, Any, Any]]:
        """One decoding pass: (position, source frame, frame at the processing size)."""
        return decode_pass(ctx, self.reader, self.path, (self.width, self.height), positions)

    def frame_names(self) -> list[str]:
        return frame_names(self.reader, self.num_frames)


def size_setting(s) -> int | tuple[int, int]:
    """--size; "auto" is 1024 for an SDXL-family, SD3 or FLUX model and 512 for the others."""
    from ..settings import AUTO_SIZE, processing_size

    large = False
    if s.size == AUTO_SIZE:
        from ..pipelines.checkpoints import (
            is_flux_checkpoint,
            is_sd3_checkpoint,
            is_sdxl_checkpoint,
        )

        large = any(f(s.model) for f in (is_sdxl_checkpoint, is_sd3_checkpoint, is_flux_checkpoint))
    return processing_size(s.size, large)


def read_source(ctx: JobContext, anchor_only: bool = False) -> SourceClip:
    """Open the selection and make one pass over it: sizes, frame hashes, the anchor frame.

    With `anchor_only` and the first frame as anchor, the pass stops after that frame.
    """
    from ..media import fit_size
    from ..models import fetch_missing
    from ..pipelines.checkpoints import model_geometry

    s = ctx.settings
    tic = time.perf_counter()
    path = Path(s.input).expanduser()
    reader = open_reader(ctx, path)  # fails on a bad input before torch is imported
    fetch_missing(s.model, "diffusion model")  # first use: its configs set the frame geometry

    from .cache import hash_array

    channels, multiple = model_geometry(s.model)
    width, height = fit_size(*reader.source_size, size_setting(s), multiple)
    frame_hashes: list[str] = []
    anchor = None
    for position, frame, small in decode_pass(ctx, reader, path, (width, height)):
        frame_hashes.append(hash_array(small))
        if position == 0 or s.anchor == "last":
            anchor = frame, small
        if anchor_only and s.anchor == "first":
            break
    anchor_position = 0 if s.anchor == "first" else len(frame_hashes) - 1
    ctx.seconds["reading"] = time.perf_counter() - tic
    return SourceClip(
        reader=reader,
        path=path,
        width=width,
        height=height,
        frame_hashes=frame_hashes,
        anchor_position=anchor_position,
        anchor_index=reader.start_index + anchor_position * reader.stride,
        anchor_source_frame=anchor[0],
        anchor_frame=anchor[1],
        latent_channels=channels,
    )


def open_reader(ctx: JobContext, path: Path):
    from ..media import open_clip

    s = ctx.settings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader = open_clip(path, s.start, s.end, s.stride, s.max_frames)
    forward_warnings(ctx, caught, path)
    return reader


def forward_warnings(ctx: JobContext, caught, path: Path) -> None:
    """The reader's warnings about this input, each once, to the job's `warn`."""
    for warning in caught:
        message = str(warning.message)
        if issubclass(warning.category, UserWarning) and str(path) in message:
            if message not in ctx.warned:
                ctx.warned.add(message)
                ctx.warn(message)


def decode_pass(
    ctx: JobContext,
    reader,
    path: Path,
    size: tuple[int, int],
    positions: list[int] | None = None,
) -> Iterator[tuple[int, Any, Any]]:
    """One decoding pass: (position, source frame, frame at the processing size).

    Only `positions` are resized and yielded (all when None); the pass stops after the
    last of them. Every frame is counted in `frames_held` while it is alive.
    """
    from ..media import resize_frames

    wanted = None if positions is None else set(positions)
    last = None if positions is None else max(positions, default=-1)
    iterator = iter(reader)
    position = 0
    try:
        while last is None or position <= last:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                item = next(iterator, None)
            forward_warnings(ctx, caught, path)
            if item is None:
                return
            frame = ctx.frames_held.track(item[1])
            del item
            if wanted is None or position in wanted:
                small = resize_frames([frame], size)[0]
                yield position, frame, ctx.frames_held.track(small)
                del small
            del frame
            position += 1
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()  # a pass stopped early releases its decoder now


def frame_names(reader, num_frames: int) -> list[str]:
    """Per selected frame, the name its depth map carries: image stem, or the source index."""
    indices = [reader.start_index + i * reader.stride for i in range(num_frames)]
    if reader.source_path.is_dir():
        from ..media import list_image_files

        files = list_image_files(reader.source_path)
        return [files[i].name for i in indices]
    return [f"{i:06d}" for i in indices]
