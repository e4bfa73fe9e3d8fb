"""The Ray backend of `pix2video batch`: the same jobs, spread over the workers of a Ray cluster.

Ray starts locally (all of this machine's CPUs and GPUs) or joins a running cluster
(``--ray-address``). Workers are long-lived actors, each a `JobRunner`: it loads the model
once and takes job after job. A worker holds one GPU where the cluster has GPUs (8 GPUs: 8
edits at once), otherwise ``cpus_per_worker`` CPUs (Ray then gives its torch as many
threads), so each job runs on the resources its worker reserved. Jobs go to whichever worker
is free; a worker that dies (out of memory, a crash) fails its job, is replaced, and the
batch goes on. A worker whose node is lost (`ray_cluster` says how soon that is noticed)
fails nothing: its job runs again on a worker that remains, and the outputs already written
stay. Each record says which node ran it. Ray is imported only here, and only when this
backend runs.

Inputs, outputs and the cache are paths: every node must see them at the same place (a
shared filesystem), and pix2video must be installed on every node.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..errors import Pix2VideoError, describe_failure
from ..ray_cluster import (
    WorkerShape,
    connect,
    import_ray,
    node_verdict,
    this_node,
    worker_shape,
)
from .runner import Evaluation, JobRunner, PendingJob

DEFAULT_CPUS_PER_WORKER = 4
"""CPUs of a CPU-only worker (fewer on nodes that have fewer)."""


class RayBackend:
    """Runs jobs on Ray workers; see the module docstring.

    `address`: a cluster to join (None: the running one this process is connected to, else
    a new local instance); `cpus_per_worker`: CPUs per worker on CPU-only clusters (None:
    `DEFAULT_CPUS_PER_WORKER`, at most a node's CPUs) and per GPU worker when given;
    `workers`: at most this many workers (None: as many as the cluster holds).
    """

    def __init__(
        self,
        address: str | None = None,
        cpus_per_worker: float | None = None,
        workers: int | None = None,
    ) -> None:
        import_ray()  # now, not after the JOBS file was read and OUT_DIR made
        self.address = address
        self.cpus_per_worker = cpus_per_worker
        self.workers = workers

    def run(
        self, pending: list[PendingJob], evaluation: Evaluation | None, debug: bool, events
    ) -> Iterator[tuple[PendingJob, dict[str, Any]]]:
        ray = import_ray()
        started = self._connect(ray, debug)
        actors: list[Any] = []
        try:
            count, shape = self._worker_shape(len(pending))
            each = f"1 GPU, {shape.cpus:g} CPU" if shape.gpus else f"{shape.cpus:g} CPU"
            events.info(f"Ray: {count} worker{'s' if count != 1 else ''}, each {each}.")
            remote = ray.remote(NodeJobRunner).options(**shape.actor_options)
            actors = [remote.remote(evaluation, debug) for _ in range(count)]
            nodes = ray.get([actor.node.remote() for actor in actors])
            idle = list(range(count))  # worker slots; a dead worker's slot gets a new actor
            read: list[set[str]] = [set() for _ in range(count)]  # inputs each slot has read
            queue = list(pending)
            running: dict[Any, tuple[int, PendingJob]] = {}
            while queue or running:
                if not idle and not running:  # every node that held a worker was lost
                    for item in queue:
                        yield item, {"status": "failed", "error": NO_NODES_LEFT}
                    break
                while idle and queue:
                    slot = idle.pop()
                    busy = {str(item.job.settings.input) for _, item in running.values()}
                    item = queue.pop(_next_job(queue, read[slot], busy))
                    read[slot].add(str(item.job.settings.input))
                    events.job_started(item.job)
                    running[actors[slot].run.remote(item)] = (slot, item)
                (ready,), _ = ray.wait(list(running), num_returns=1)
                slot, item = running.pop(ready)
                try:
                    outcome = {**ray.get(ready), "node": nodes[slot]}
                except ray.exceptions.RayActorError as exc:
                    ray.kill(actors[slot])
                    read[slot] = set()
                    if not node_verdict(nodes[slot]):  # its node is gone: the slot too
                        events.info(f"A Ray node was lost; {_name(item)} runs again.")
                        queue.insert(0, item)
                        continue
                    outcome = {"status": "failed", "error": _worker_died(exc)}
                    actors[slot] = remote.remote(evaluation, debug)
                    nodes[slot] = ray.get(actors[slot].node.remote())
                except ray.exceptions.RayError as exc:
                    cause = getattr(exc, "cause", None) or exc
                    outcome = {"status": "failed", "error": describe_failure(cause)}
                idle.append(slot)
                yield item, outcome
        finally:
            for actor in actors:
                ray.kill(actor)
            if started:
                ray.shutdown()

    def _connect(self, ray, debug: bool) -> bool:
        """Join `address`, or start a local instance; True when this call started Ray."""
        return connect(self.address, debug)

    def _worker_shape(self, jobs: int) -> tuple[int, WorkerShape]:
        """How many workers fit the cluster (and the jobs), and what each one reserves."""

        def default(nodes: list[dict]) -> float:  # at most the largest node's CPUs
            largest = max((r.get("CPU", 0) for r in nodes), default=0)
            return min(DEFAULT_CPUS_PER_WORKER, largest) or 1

        shape = worker_shape(self.cpus_per_worker, default)
        if shape.fits == 0:
            raise Pix2VideoError(
                f"No node of the Ray cluster has {shape.cpus:g} CPUs for a worker; lower "
                "--cpus-per-worker."
            )
        return min(shape.fits, self.workers or shape.fits, jobs), shape


class NodeJobRunner(JobRunner):
    """A `JobRunner` that can say which Ray node it runs on."""

    def node(self) -> str:
        return this_node()


NO_NODES_LEFT = "Every Ray node that held a worker was lost before this job could run."


def _name(item: PendingJob) -> str:
    return f"line {item.job.line} ({item.job.name})"


def _next_job(queue: list[PendingJob], read: set[str], busy: set[str]) -> int:
    """Where in `queue` the next job for a free worker is.

    First one on an input this worker has read (its depth and inversion are in the cache,
    when the cache is the node's), then one on an input no other worker is on (two workers
    would compute the same depth and inversion at once), then the first.
    """
    inputs = [str(item.job.settings.input) for item in queue]
    for wanted in (lambda i: i in read, lambda i: i not in busy):
        for index, name in enumerate(inputs):
            if wanted(name):
                return index
    return 0


def _worker_died(exc: BaseException) -> str:
    """One sentence for a worker lost mid-job (Ray's memory monitor, a crash, a lost node)."""
    text = " ".join(str(exc).split())
    if "memory" in text.lower():
        return "The Ray worker running this job ran out of memory and was killed."
    first = text.split(". ")[0][:200].rstrip(".")
    return f"The Ray worker running this job died ({first})."
