"""One clip edited by several workers (`--workers N`, `--devices`, `--backend ray`): the driver.

The driver is the job: it has checked the input, resolved the source prompt and the cache
keys (`EditJob.prepare`), and it writes the output. Here it splits the clip's positions
into runs of consecutive positions dealt to the workers in turn (`core.frame_chain.
ChainSplit.dealt`, one UNet call long), starts the workers (`worker`: a local process per
device, or a Ray actor per GPU or per `--cpus-per-worker` CPUs), and
supervises them: it adds up their progress, puts their step checkpoints together and saves
them to its cache as a one-process edit does (the same key: a split edit resumes a
one-process one and the other way round), and collects their final latents and their
frames, which each worker decodes itself (`worker_frames`): the driver loads no diffusion
model (`prepare_edit(load_model=False)`), so no device holds two copies.

A worker lost mid-edit (killed, out of memory, its node gone) ends the attempt: the driver
stops the others and starts again from the last step every worker finished, on the workers
that remain (one fewer). The result equals an uninterrupted run: the chain is exact however
it is split. A worker's error (bad input, a missing model) stops everything with its
sentence; Ctrl-C or `cancel` stops every worker and leaves the cache resumable.
"""

from __future__ import annotations

import os
import queue
import socket
import time
from typing import TYPE_CHECKING

from ..errors import EditCancelled, Pix2VideoError
from ..ray_cluster import connect, driver_queue, import_ray, this_node, worker_shape
from .context import JobContext
from .latents import checkpointer, latent_shape, resume_point
from .results import EditResult
from .worker import WorkerTask, run_worker
from .worker_frames import DecodedFrames

if TYPE_CHECKING:
    import torch

    from .preparation import PreparedEdit

POLL_SECONDS = 0.2
STOP_SECONDS = 10.0  # a worker that ignores SIGTERM this long is killed


class WorkerLost(Exception):
    """A worker ended without a result or an error: the attempt must restart."""

    def __init__(self, rank: int, detail: str) -> None:
        super().__init__(f"worker {rank} {detail}")
        self.rank = rank


def edit_on_workers(
    ctx: JobContext, p: PreparedEdit, result: EditResult
) -> tuple[torch.Tensor, torch.Tensor | None, DecodedFrames]:
    """(final latents, x_T or None, decoded frames) of every frame, clip order, edited and
    decoded by the workers.

    x_T comes back only for --save-latents. Saves the final latents to the cache.
    """
    import numpy as np
    import torch

    s = ctx.settings
    n = p.source.num_frames
    options = s.edit_options()
    resume = resume_point(ctx, p.keys.edit, options, n, latent_shape(p.source))
    if resume is not None:
        result.editing, result.resumed_from_step = "resumed", resume.step
    settings = s.replace(
        workers=1,
        devices=(),
        backend="local",
        ray_address=None,
        cpus_per_worker=None,
        source_prompt=p.prompts.source_prompt,
        dtype=p.dtype,  # `auto` resolved here: every worker computes what the cache keys say
        stats_json=None,
        save_latents=None,
        save_masks=None,
    )
    pool = RayWorkers(s) if s.backend == "ray" else LocalWorkers(s, p.device)
    save = checkpointer(ctx, p.keys.edit, result) if ctx.cache.enabled else None
    frames = DecodedFrames(ctx)
    try:
        while True:
            attempt = Attempt(ctx, pool, settings, n, resume, save, frames)
            try:
                rows, inverted, stats = attempt.run()
                break
            except WorkerLost as lost:
                resume = attempt.last_checkpoint or resume
                pool.drop(lost.rank)
                if pool.size == 0:
                    raise Pix2VideoError(f"Every worker was lost (last: {lost}).") from None
                result.worker_restarts += 1
                where = f"after step {resume.step + 1}" if resume is not None else "from the start"
                remain = f"{pool.size} worker" + (
                    " that remains" if pool.size == 1 else "s that remain"
                )
                ctx.warn(f"{str(lost).capitalize()}; editing again {where} on the {remain}.")
    finally:
        pool.close()
    order = np.argsort(options.clip_order(n))  # processing order -> clip order
    final = torch.from_numpy(rows[order])
    _add_up(result, stats, pool.nodes)
    if ctx.save("final", p.keys.edit, final):
        ctx.cache.remove("checkpoint", p.keys.edit)
    if inverted is None:
        return final, None, frames
    return final, torch.from_numpy(inverted[order]), frames


def _add_up(result: EditResult, stats: list[dict], nodes: list[str]) -> None:
    """The result's counts: the workers' `worker._stats`, summed (peaks: the largest)."""
    result.workers = len(stats)
    result.worker_nodes = list(nodes)
    for name in ("depth_cached", "depth_computed", "inversion_cached", "inversion_computed",
                 "frames_reused", "unet_evaluations_inversion", "unet_evaluations_editing"):  # fmt: skip
        setattr(result, name, sum(part[name] for part in stats))
    result.feature_store_peak_bytes = max(part["feature_store_peak_bytes"] for part in stats)
    result.frame_batch = stats[0]["frame_batch"]
    result.bytes_exchanged = sum(part["bytes_sent"] for part in stats)
    result.worker_decodes = [part["vae_decodes"] for part in stats]


class Attempt:
    """One run of every worker, from the start or from a checkpoint, to the end or a loss."""

    def __init__(self, ctx, pool, settings, num_frames: int, resume, save, frames) -> None:
        from ..core.frame_chain import ChainSplit

        self.ctx, self.pool, self.settings, self.resume, self.save, self.frames = (
            ctx, pool, settings, resume, save, frames,
        )  # fmt: skip
        self.n = num_frames
        self.split = ChainSplit.dealt(num_frames, pool.size, run_length(settings, pool.device))
        self.last_checkpoint = None
        self._pending: dict[int, dict[int, tuple]] = {}  # step -> rank -> (latents, x0s)
        self._progress: dict[str, dict[int, int]] = {}
        self._done: dict[int, tuple] = {}
        self._peer_failures: dict[int, str] = {}  # ranks whose exchange broke: a peer died

    def run(self) -> tuple:
        """(final latents, x_T or None: numpy, processing order; every worker's stats)."""
        s, split = self.settings, self.split
        devices, address, threads = self.pool.start(split.workers)
        tasks = [
            WorkerTask(
                settings=s.replace(device=devices[rank]),
                rank=rank,
                split=split,
                init_method=address,
                dist_backend="nccl" if devices[rank].startswith("cuda") else "gloo",
                resume=self.resume.cut(split.positions(rank)) if self.resume else None,
                threads=threads,
                send_inverted=self.ctx.settings.save_latents is not None,
            )
            for rank in range(split.workers)
        ]
        self.pool.run(tasks)
        try:
            while len(self._done) < split.workers:
                if self.ctx.cancel.is_set():
                    raise EditCancelled(self.ctx.cancelled_message)
                message = self.pool.get(POLL_SECONDS)
                if message is not None:
                    self._handle(message)
                    continue
                self._check_ended()
        finally:
            if len(self._done) < split.workers:
                self.pool.stop()
        parts = [self._done[rank] for rank in range(split.workers)]
        return (
            self._join([p[0] for p in parts]),
            self._join([p[1] for p in parts]),
            [p[2] for p in parts],
        )

    def _join(self, rows: list):
        """The workers' rows (each in its positions' order) as the clip, in processing order."""
        import numpy as np

        if rows[0] is None:
            return None
        return np.concatenate(rows)[np.argsort(self.split.gathered_order())]

    def _check_ended(self) -> None:
        """Raise `WorkerLost` for a worker that ended without a word (after reading its last)."""
        ended = self.pool.ended()
        if not any(r not in self._done and r not in self._peer_failures for r in ended):
            return
        self._drain()
        for rank in ended:
            if rank not in self._done and rank not in self._peer_failures:
                raise WorkerLost(rank, "was lost")
        if self._peer_failures and len(ended) == self.split.workers:
            # every worker saw the exchange break, none was lost: a network failure
            raise Pix2VideoError(next(iter(self._peer_failures.values())))

    def _drain(self) -> None:
        """Read what is still queued (a worker's last words arrive before its end is seen)."""
        while (message := self.pool.get(POLL_SECONDS)) is not None:
            self._handle(message)

    def _handle(self, message: tuple) -> None:
        kind, rank, *rest = message
        if kind == "progress":
            stage, done, _total = rest
            self._progress.setdefault(stage, {})[rank] = done
            total = self.n * self.settings.steps if stage == "editing" else self.n
            if stage in ("depth", "inversion", "editing", "masks"):
                self.ctx.progress(stage, sum(self._progress[stage].values()), total)
        elif kind == "warn":
            self.ctx.warn(rest[0])
        elif kind == "checkpoint":
            self._checkpoint(rank, *rest)
        elif kind == "frame":
            self.frames.put(*rest)
        elif kind == "done":
            self._done[rank] = tuple(rest)
        elif kind == "error":
            raise Pix2VideoError(rest[0])
        elif kind == "peer-failed":
            self._peer_failures[rank] = rest[0]

    def _checkpoint(self, rank: int, step: int, latents, x0_targets) -> None:
        """Keep a worker's rows of `step`; once every worker's are in, that is a checkpoint."""
        import torch

        from ..core.edit_loop import EditCheckpoint

        parts = self._pending.setdefault(step, {})
        parts[rank] = (latents, x0_targets)
        if len(parts) < self.split.workers:
            return
        x0s: dict = {}
        for part in parts.values():
            x0s.update({k: torch.from_numpy(v) for k, v in part[1].items()})
        rows = torch.from_numpy(self._join([parts[r][0] for r in range(self.split.workers)]))
        self.last_checkpoint = EditCheckpoint(step, rows, x0s)
        for old in [k for k in self._pending if k <= step]:
            del self._pending[old]
        if self.save is not None:
            self.save(self.last_checkpoint)


GPU_RUN_LENGTH = 8
"""Frames per run with --frame-batch auto on GPUs: one UNet call per run where 8 fit."""


def run_length(settings, device: str) -> int:
    """Frames per run dealt to a worker (`ChainSplit.dealt`): the frame batch, so that a run
    is one UNet call and the next worker waits for one call only; `auto` on a GPU is measured
    on each worker, after the split, so here it is `GPU_RUN_LENGTH`."""
    known = settings.edit_options().known_frame_batch(device.split(":")[0])
    return known if known is not None else GPU_RUN_LENGTH


def check_workers(settings) -> None:
    """What can fail before any model is loaded: a Ray address nobody answers at, a GPU that
    is not there."""
    if settings.backend == "ray":
        from ..ray_cluster import probe

        probe(settings.ray_address)
        return
    gpus = [name for name in settings.devices if name.startswith("cuda")]
    if gpus:
        import torch

        count = torch.cuda.device_count()
        for name in gpus:
            if (int(name.split(":")[1]) if ":" in name else 0) >= count:
                raise Pix2VideoError(
                    f"--devices names {name}, but this machine has {count} CUDA GPU"
                    f"{'s' if count != 1 else ''}."
                )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LocalWorkers:
    """One spawned process per device on this machine (`--devices`, or `--workers N` on the
    job's device); CPU workers share the machine's cores."""

    def __init__(self, settings, device: str) -> None:
        if settings.devices:
            self.devices = list(settings.devices)
        elif device.startswith("cuda"):
            import torch

            count = max(1, torch.cuda.device_count())
            self.devices = [f"cuda:{i % count}" for i in range(settings.workers)]
        else:
            self.devices = [device] * settings.workers
        self._processes: list = []
        self._outbox = None
        self.nodes: list[str] = []  # where each rank of the last attempt ran
        # CPU workers share the cores; the ones left after a loss keep their share (and so
        # their float rounding: a restarted edit equals an uninterrupted one bit for bit)
        self.threads = None
        if self.devices[0] == "cpu":
            self.threads = max(1, (os.cpu_count() or 1) // len(self.devices))

    @property
    def size(self) -> int:
        return len(self.devices)

    @property
    def device(self) -> str:
        return self.devices[0]

    def start(self, count: int) -> tuple[list[str], str, int | None]:
        """(device per worker, rendezvous address, torch threads per CPU worker)."""
        self.nodes = [socket.gethostname()] * count
        return self.devices[:count], f"tcp://127.0.0.1:{free_port()}", self.threads

    def run(self, tasks: list[WorkerTask]) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        self._outbox = context.Queue()
        self._processes = [
            context.Process(target=run_worker, args=(task, self._outbox), daemon=True)
            for task in tasks
        ]
        for process in self._processes:
            process.start()

    def get(self, timeout: float):
        try:
            return self._outbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def ended(self) -> list[int]:
        return [rank for rank, p in enumerate(self._processes) if p.exitcode is not None]

    def drop(self, rank: int) -> None:
        """A lost worker's device is not used again."""
        del self.devices[rank]

    def stop(self) -> None:
        for process in self._processes:
            if process.exitcode is None:
                process.terminate()
        deadline = time.monotonic() + STOP_SECONDS
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                process.kill()
                process.join()
        self._processes = []

    def close(self) -> None:
        self.stop()
        if self._outbox is not None:
            self._outbox.close()
            self._outbox.cancel_join_thread()


class ChainWorkerActor:
    """A Ray actor running one `worker.run_worker` (kept apart so Ray can restart none)."""

    def address(self) -> str:
        """A rendezvous on this actor's node, for the process group (rank 0 hosts it)."""
        import ray

        host = ray.util.get_node_ip_address()
        return f"tcp://{host}:{free_port('')}"

    def node(self) -> str:
        return this_node()

    def run(self, task: WorkerTask, outbox) -> None:
        run_worker(task, outbox)


class RayWorkers:
    """Ray actors, one per GPU where the cluster has GPUs, else `--cpus-per-worker` CPUs each.

    The driver joins `--ray-address` (or starts a local Ray); inputs, outputs and the cache
    must be at the same paths on every node, and pix2video installed there.
    """

    def __init__(self, settings) -> None:
        self.ray = import_ray()
        self.started = connect(settings.ray_address)
        self.settings = settings
        self.size = settings.workers
        self.resources, self.device = self._shape(settings)
        self._actors: list = []
        self._runs: dict = {}
        self._outbox = None
        self.nodes: list[str] = []  # the Ray node id of each rank of the last attempt

    def _shape(self, settings) -> tuple[dict[str, float], str]:
        """What one worker reserves, and its device; one sentence if the cluster is too small."""

        def share(nodes: list[dict]) -> float:  # the cluster's CPUs shared by the workers
            return max(sum(r.get("CPU", 0) for r in nodes) // settings.workers, 1.0)

        shape = worker_shape(settings.cpus_per_worker, share, use_gpus=settings.device != "cpu")
        if shape.fits < settings.workers:
            raise Pix2VideoError(
                f"The Ray cluster has room for {shape.fits} worker(s) of one {shape.unit}, not "
                f"{settings.workers}; lower --workers"
                + (" or --cpus-per-worker." if not shape.gpus else ".")
            )
        return shape.actor_options, "cuda" if shape.gpus else "cpu"

    def start(self, count: int) -> tuple[list[str], str, int | None]:
        ray = self.ray
        remote = ray.remote(ChainWorkerActor).options(max_restarts=0, **self.resources)
        self._actors = [remote.remote() for _ in range(count)]
        self.nodes = ray.get([actor.node.remote() for actor in self._actors])
        address = ray.get(self._actors[0].address.remote())
        threads = None if self.device == "cuda" else max(1, int(self.resources["num_cpus"]))
        return [self.device] * count, address, threads

    def run(self, tasks: list[WorkerTask]) -> None:
        self._outbox = driver_queue()
        self._runs = {
            actor.run.remote(task, self._outbox): task.rank
            for actor, task in zip(self._actors, tasks, strict=True)
        }

    def get(self, timeout: float):
        from ray.util.queue import Empty

        try:
            return self._outbox.get(timeout=timeout)
        except Empty:
            return None

    def ended(self) -> list[int]:
        ready, _ = self.ray.wait(list(self._runs), num_returns=len(self._runs), timeout=0)
        return [self._runs[ref] for ref in ready]

    def drop(self, rank: int) -> None:
        self.size -= 1

    def stop(self) -> None:
        for actor in self._actors:
            self.ray.kill(actor)
        self._actors, self._runs = [], {}

    def close(self) -> None:
        self.stop()
        if self._outbox is not None:
            self._outbox.shutdown()
        if self.started:
            self.ray.shutdown()
