"""How many frames share one model call: measured on a GPU, what was fastest on a CPU.

Editing step by step, consecutive frames can share one UNet call (`EditOptions.frame_batch`);
inversion batches frames too (`default_inversion_batch`). Here: the batch rows of such a
call (`model_rows`) and what `auto` picks.
"""

from __future__ import annotations

import torch

from ..core.attention import DecoderSelfAttention, FeatureStore, Injection, reference_plan
from ..core.edit_loop import FrameConditioning
from ..core.frame_chain import ChainPlace
from ..core.options import CPU_FRAME_BATCH, EditOptions

GPU_MEMORY_MARGIN = 0.1
"""Share of the GPU's memory `frame_batch="auto"` leaves free (allocator slack, decoding)."""


def measure_frame_batch(
    pipe,
    inverted_latents: torch.Tensor,
    conditioning: FrameConditioning,
    text: torch.Tensor,
    attend: str = "anchor+previous",
    injection: Injection | None = None,
) -> int:
    """Frames per editing UNet call for `frame_batch="auto"`, capped by the clip.

    On a CPU, what `benchmarks/frame_batch.py` measured fastest (`CPU_FRAME_BATCH`).
    On a GPU, the most frames that fit the free memory with a margin: one editing call
    of 2 and one of 4 frames (with the cross-frame attention, at the clip's size and
    text rows) of `pipe` (a `Pix2VideoBase`) measure the memory a frame adds; neither is
    counted as an evaluation. `injection`: where the cross-frame attention goes (default:
    the UNet decoder's self-attention).
    """
    num_frames = inverted_latents.shape[0]
    if pipe.device.type != "cuda" or num_frames == 1:
        return min(CPU_FRAME_BATCH, num_frames)
    device = pipe.device
    t = pipe.scheduler.config.num_train_timesteps - 1
    peaks = []
    for n in (2, 4):
        index = [min(i, num_frames - 1) for i in range(n)]
        store = FeatureStore(reference_plan(n, attend), chunk_size=n)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        latent, rows, texts = model_rows(
            inverted_latents[index].to(device), conditioning(index).to(device), text
        )
        installed = (injection or DecoderSelfAttention(pipe.unet)).installed(store)
        with installed, store.chunk_step(range(n), 0):
            pipe.model_output(latent, rows, t, texts, max(len(latent), len(texts)))
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - before)
        del store, latent, rows, texts
    per_frame = max((peaks[1] - peaks[0]) / 2, 1)
    fixed = max(peaks[0] - 2 * per_frame, 0)
    free, total = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return frames_that_fit(free - fixed, per_frame, total, num_frames)


def edit_frame_batch(
    pipe,
    options: EditOptions,
    inverted_latents: torch.Tensor,
    conditioning: FrameConditioning,
    text: torch.Tensor,
    chain: ChainPlace | None,
) -> int:
    """`measure_frame_batch` of an edit's rows (a worker's positions, in a split chain) with
    `pipe`'s injection; 1 in frame-major order, which edits one frame per call."""
    num_frames = chain.num_frames if chain is not None else inverted_latents.shape[0]
    if not options.step_major(num_frames):
        return 1
    by_row = conditioning  # conditioning by row of `inverted_latents`
    if chain is not None:  # rows are the worker's positions, `conditioning` takes clip indices
        clip, mine = options.clip_order(num_frames), chain.positions
        by_row = lambda index: conditioning([clip[mine[i]] for i in index])  # noqa: E731
    injection = pipe.injection(options)
    return measure_frame_batch(pipe, inverted_latents, by_row, text, options.attend, injection)


def model_rows(
    latent: torch.Tensor, conditioning: torch.Tensor, text: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(latents, conditioning, text) batch rows of one model call over n frames.

    One frame, or one text row: as given (a backbone expands them to the batch). n frames
    with guidance ([uncond, cond] text rows): branch-major, [uncond of frames 0..n-1, cond
    of frames 0..n-1], so the output splits into the two branches with `chunk(2)` and the
    attention processors find frame j of each branch at rows j and n + j (`split_rows`).
    """
    rows, frames = text.shape[0], latent.shape[0]
    if frames == 1 or rows == 1:
        return latent, conditioning, text
    repeat = (rows, *[1] * (conditioning.ndim - 1))
    return (
        latent.repeat(rows, 1, 1, 1),
        conditioning.repeat(repeat),
        text.repeat_interleave(frames, dim=0),
    )


def frames_that_fit(
    free_bytes: float, per_frame_bytes: float, total_bytes: float, frames: int
) -> int:
    """How many frames one editing call may take: `free_bytes` less a margin, per frame, capped by the clip."""
    budget = free_bytes - GPU_MEMORY_MARGIN * total_bytes
    return max(1, min(frames, int(budget // per_frame_bytes)))


def default_inversion_batch(device: str | torch.device) -> int:
    """Frames per inversion model call when the user does not choose: what measured fastest.

    On a GPU a batch fills the device (8 frames). On our 2-core CPUs a batch of frames is no
    faster than one frame at a time for the tiny model (benchmarks/README.md), so 1.
    """
    return 8 if torch.device(device).type == "cuda" else 1
