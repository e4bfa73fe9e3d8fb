"""The output of a job: decode the final latents, composite a local edit, encode with audio."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic import atomic_path
from ..errors import InputError
from .context import JobContext
from .masks import LocalEditMasks
from .results import EditResult
from .source import SourceClip

if TYPE_CHECKING:
    import numpy as np


def latent_decoder(pipe, final) -> Callable[[int], np.ndarray]:
    """The edited frame at a position, decoded from the final latents by `pipe`'s VAE."""
    return lambda i: pipe.decode_latents(final[i : i + 1])[0]


def write_output(
    ctx: JobContext,
    decode: Callable[[int], np.ndarray],
    source: SourceClip,
    output: Path,
    masks: LocalEditMasks | None,
    result: EditResult,
) -> None:
    """Encode one frame at a time, as `decode` gives it (`latent_decoder`, or the frames
    workers decoded); a side-by-side output decodes the source again."""
    from ..media import VIDEO_EXTENSIONS, probe, write_video

    reader = source.reader
    ctx.progress("writing", 0, source.num_frames)
    frames = output_frames(ctx, decode, source, masks, result)
    container = VIDEO_EXTENSIONS.get(output.suffix.lower())
    with_audio = reader.has_audio and not output.is_dir() and bool(container and container[2])
    write_video(
        output,
        frames,
        fps=reader.fps,
        audio_from=reader.source_path if with_audio else None,
        audio_start=reader.start_time,
        audio_end=reader.end_time,
        times=reader.frame_times,
    )
    result.has_audio = with_audio and probe(output)["has_audio"]
    result.uneven_timing = reader.frame_times is not None and not output.is_dir()


def output_frames(
    ctx: JobContext,
    decode: Callable[[int], np.ndarray],
    source: SourceClip,
    masks: LocalEditMasks | None,
    result: EditResult,
) -> Iterator[np.ndarray]:
    """The output frames, one at a time, in clip order: decoded, resized back, composited,
    side by side."""
    from ..media import resize_frames, side_by_side
    from ..pipelines.masks import composite

    s, n, held = ctx.settings, source.num_frames, ctx.frames_held
    sources = source.frames(ctx) if s.side_by_side or s.masked else None
    for i in range(n):
        ctx.check_cancelled()
        frame = held.track(decode(i))
        if s.keep_source_size:
            frame = held.track(resize_frames([frame], source.reader.source_size)[0])
        if sources is not None:
            _, original, small = next(sources)
            if s.masked:  # outside the mask, the source pixels exactly
                under = original if s.keep_source_size else small
                frame = held.track(composite(under, frame, masks.alpha_at(i)))
            if s.side_by_side:
                frame = held.track(side_by_side([original], [frame])[0])
            del original, small
        if i == 0:
            result.output_size = (frame.shape[1], frame.shape[0])
        ctx.progress("writing", i + 1, n)
        yield frame
        del frame


def save_latents(folder: Path, indices: list[int], inverted, final) -> None:
    """``folder/inverted/NNNNNN.npy`` (x_T) and ``folder/final/NNNNNN.npy``, atomically.

    NNNNNN is the frame's index in the input (source frame number of a video, position in
    the sorted folder of an image sequence); each array is float32 (1, 4, H/8, W/8).
    """
    import numpy as np

    try:
        with atomic_path(folder, directory=True) as tmp:
            for sub, latents in (("inverted", inverted), ("final", final)):
                (tmp / sub).mkdir()
                for index, latent in zip(indices, latents, strict=True):
                    array = latent[None].detach().cpu().float().numpy().astype(np.float32)
                    np.save(tmp / sub / f"{index:06d}.npy", array)
    except OSError as exc:
        raise InputError(f"Cannot save latents to {folder} ({exc.strerror or exc}).") from exc
