"""One worker of a clip split across workers: its frames' depth and inversion, then its runs
of the frame chain (`core.frame_chain`), in a process of its own.

The driver (`workers`) starts one per device (a local process or a Ray actor) with a
`WorkerTask`. The worker opens the clip and loads the model like any job, computes depth
(or control images) and inversion for its own frames only (cached per frame, as always),
joins the workers' `torch.distributed` process group and edits its positions, exchanging
features and x0s with the other workers. Everything it tells the driver goes through
`outbox` (anything with `put`: a multiprocessing queue, a Ray queue), as tuples, latents as
float32 numpy arrays:

    ("progress", rank, stage, done, total)   its own frames' progress
    ("warn", rank, text)
    ("checkpoint", rank, step, latents, x0_targets)   its rows after each finished step
    ("frame", rank, clip index, frame)        each of its edited frames, decoded, uint8
    ("done", rank, latents, inverted or None, stats)   its final rows (its positions' order)
    ("error", rank, sentence)                 something a user can act on, or the unexpected
    ("peer-failed", rank, sentence)           the exchange broke: another worker was lost

A worker that ends without "done" or "error" was lost (killed, out of memory, node gone);
the driver restarts the edit from the last checkpoint on the workers that remain.
The worker decodes its own frames (`worker_frames`): the driver loads no diffusion model.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ..errors import Pix2VideoError, describe_failure
from ..settings import EditSettings
from .context import JobContext
from .loading import PipelineCache
from .preparation import initial_result, prepare_edit
from .worker_frames import send_decoded

GROUP_TIMEOUT = timedelta(minutes=30)
"""How long a worker waits for the others (joining, a message): past a long first step."""


@dataclass
class WorkerTask:
    """What one worker is asked to do; picklable (it crosses to a spawned process or actor)."""

    settings: EditSettings  # a one-process job's: this worker's device, the source prompt known
    rank: int
    split: Any  # `core.frame_chain.ChainSplit`: which positions each rank edits
    init_method: str  # the process group's rendezvous, tcp://HOST:PORT
    dist_backend: str  # "gloo" or "nccl"
    resume: Any = None  # `EditCheckpoint` cut to this worker's rows, or None
    threads: int | None = None  # torch threads (CPU workers)
    send_inverted: bool = False  # return x_T too (--save-latents)


def run_worker(task: WorkerTask, outbox) -> None:
    """The worker's whole life; never raises (the driver hears of everything)."""
    import torch
    import torch.distributed as dist

    try:
        if task.threads:
            torch.set_num_threads(task.threads)
        dist.init_process_group(
            task.dist_backend,
            init_method=task.init_method,
            rank=task.rank,
            world_size=task.split.workers,
            timeout=GROUP_TIMEOUT,
        )
        final, inverted, stats = _edit_part(task, outbox)
        outbox.put(("done", task.rank, final, inverted, stats))
    except KeyboardInterrupt:  # Ctrl-C reaches every process of the terminal; the driver stops
        pass
    except Exception as exc:  # noqa: BLE001 - every failure is one sentence for the driver
        kind = "peer-failed" if _peer_failure(exc) else "error"
        outbox.put((kind, task.rank, describe_failure(exc, f"in worker {task.rank}")))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _peer_failure(exc: BaseException) -> bool:
    """An error of the exchange itself (a peer gone), not of this worker's own work."""
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, dist.DistError) or any(
        mark in text for mark in ("gloo/transport", "Connection reset", "Connection closed", "NCCL")
    )


def _edit_part(task: WorkerTask, outbox):
    """(final rows, x_T rows or None, stats) of the worker's run, in processing order."""
    from ..core.frame_chain import ChainPlace
    from .latents import depth_and_inversion, run_edit

    rank = task.rank
    s = task.settings.validate()
    ctx = JobContext(
        s,
        lambda stage, done, total: outbox.put(("progress", rank, stage, done, total)),
        threading.Event(),  # the driver stops a worker by ending its process
        lambda text: outbox.put(("warn", rank, text)),
        lambda text: None,
    )
    try:
        p = prepare_edit(ctx, PipelineCache())
        if p.source.num_frames != task.split.num_frames:
            raise Pix2VideoError(
                f"{s.input} has {p.source.num_frames} frames for worker {rank} but "
                f"{task.split.num_frames} for the driver; is it being written to, or not the "
                "same file on every node?"
            )
        options = s.edit_options()
        place = ChainPlace(task.split, rank)
        order = options.clip_order(task.split.num_frames)
        mine = [order[position] for position in place.positions]  # its frames' clip indices
        result = initial_result(ctx, p)
        depth, inverted, trajectories = depth_and_inversion(
            ctx, p.pipe, p.source, p.conditioning, p.keys, p.prompts, mine,
            p.inversion_batch, result,
        )  # fmt: skip
        row = {clip: r for r, clip in enumerate(mine)}  # the readers take rows of `mine`

        def on_step_end(checkpoint) -> None:
            x0 = {k: _array(v) for k, v in checkpoint.x0_targets.items()}
            outbox.put(("checkpoint", rank, checkpoint.step, _array(checkpoint.latents), x0))

        final, store, evaluations = run_edit(
            ctx,
            p.pipe,
            inverted,
            lambda frames: depth([row[i] for i in frames]),
            p.prompts,
            options,
            resume=task.resume,
            on_step_end=on_step_end,
            masks=p.masks.latent_masks(mine) if p.masks is not None else None,
            source_latents=(lambda frames, step: trajectories([row[i] for i in frames], step))
            if trajectories is not None
            else None,
            chain=place,
        )
        final = _array(final)
        decoded = send_decoded(p.pipe, final, mine, rank, outbox)  # the driver has no VAE
        stats = _stats(result, store, evaluations, decoded)
        return final, _array(inverted) if task.send_inverted else None, stats
    finally:
        ctx.scratch.close()


def _stats(result, store, evaluations: int, decoded: int) -> dict:
    """What the driver adds up from each worker (`workers.edit_on_workers`)."""
    counts = store.exchange.counts
    return {
        "depth_cached": result.depth_cached,
        "depth_computed": result.depth_computed,
        "inversion_cached": result.inversion_cached,
        "inversion_computed": result.inversion_computed,
        "frames_reused": result.frames_reused,
        "unet_evaluations_inversion": result.unet_evaluations_inversion,
        "unet_evaluations_editing": evaluations,
        "feature_store_peak_bytes": store.peak_nbytes,
        "frame_batch": store.chunk_size,
        "bytes_sent": counts.bytes_sent,
        "per_step_bytes_sent": counts.per_step_bytes_sent,
        "vae_decodes": decoded,
        "pid": os.getpid(),
    }


def _array(tensor):
    """A float32 numpy copy: it crosses to the driver by value (a torch tensor would cross as
    a shared-memory handle, which dies with this process)."""
    return tensor.detach().float().cpu().numpy()
