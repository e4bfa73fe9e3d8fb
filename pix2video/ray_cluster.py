"""Joining or starting Ray, for every part that runs on it (`batch --backend ray`, one clip's
workers in `job.workers`), and what both need to know about the cluster's nodes: how many
workers of what shape fit (`worker_shape`), where a worker runs, whether its node is still
alive, a message queue that no other node's loss can take away. Ray is imported only when
one of them runs.

A lost node (its raylet dead, the machine gone) is noticed by Ray's GCS health check: a node
that misses `health_check_failure_threshold` checks, `health_check_period_ms` apart (Ray's
defaults: 5 checks, 3 s apart, each waiting up to 10 s), is declared dead, and every actor on
it with it; `NODE_VERDICT_SECONDS` bounds how long the batch waits for that verdict. A worker
process killed on a living node is noticed at once (its connection closes).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from .errors import Pix2VideoError

RAY_MISSING = "The ray backend needs Ray: pip install 'pix2video[ray]'."
PROBE_SECONDS = 3.0
"""How long an address may take to accept a connection (Ray itself retries for minutes)."""
NODE_VERDICT_SECONDS = 90.0
"""How long to wait for Ray to declare an unreachable node dead or alive: past its default
health check's worst case (5 missed checks 3 s apart, each waiting up to 10 s: about a
minute)."""


def import_ray():
    """The `ray` module, or one sentence telling how to install it."""
    try:
        import ray
    except ImportError:
        raise Pix2VideoError(RAY_MISSING) from None
    return ray


def connect(address: str | None, debug: bool = False) -> bool:
    """Join `address`, or start a local instance; True when this call started Ray.

    A program (or test) that connected itself keeps its connection. An address that cannot
    be reached is one sentence, not Ray's traceback.
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    probe(address)
    if address is not None and _host(address) in LOOPBACK:
        _keep_loopback()
    import logging

    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=debug,
            logging_level=logging.INFO if debug else logging.ERROR,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"at {address}" if address else "locally"
        first = (str(exc).strip().splitlines() or [""])[0].rstrip(".")
        hint = ""
        if address and not os.environ.get("RAY_AUTH_MODE"):
            hint = "; a cluster with token authentication also needs RAY_AUTH_MODE=token"
        raise Pix2VideoError(f"Cannot start or reach Ray {where} ({first}){hint}.") from exc
    return True


def probe(address: str | None) -> None:
    """One sentence, in seconds, if nothing listens at a cluster's HOST:PORT (or ray://HOST:PORT).

    None, auto and local (a new or this machine's running Ray) are not probed.
    """
    if address in (None, "auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise Pix2VideoError(f"The Ray address {address!r} is not HOST:PORT (or auto).")
    try:
        with socket.create_connection((_host(address), int(port)), timeout=PROBE_SECONDS):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise Pix2VideoError(
            f"Cannot reach Ray at {address} ({reason.lower().rstrip('.')}); is the cluster "
            "running (ray start --head) and the address its head's?"
        ) from None


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _host(address: str) -> str:
    return address.removeprefix("ray://").rpartition(":")[0].strip("[]")


def _keep_loopback() -> None:
    """Keep a loopback address as it is. Ray rewrites 127.0.0.1 to this machine's network
    address (right for a cluster that spans machines), but a cluster started on the loopback
    (`ray start --head --node-ip-address 127.0.0.1`) listens there only, and `probe` has just
    reached it there: Ray would retry the rewritten address for minutes. Ray's switch for
    single-machine clusters keeps the address; it is read at import, so it is set here."""
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


@dataclass(frozen=True)
class WorkerShape:
    """What one worker reserves on the cluster (one GPU and some CPUs, or CPUs only), and how
    many such workers the alive nodes have room for."""

    gpus: bool
    cpus: float
    fits: int

    @property
    def actor_options(self) -> dict[str, float]:
        """`ray.remote(...).options(...)` of such a worker."""
        return {"num_cpus": float(self.cpus), "num_gpus": 1.0 if self.gpus else 0.0}

    @property
    def unit(self) -> str:
        return "GPU" if self.gpus else f"{self.cpus:g} CPUs"


def worker_shape(
    cpus_per_worker: float | None,
    default_cpus: Callable[[list[dict]], float],
    use_gpus: bool = True,
) -> WorkerShape:
    """One GPU each (and `cpus_per_worker`, default 1 CPU) where the cluster has GPUs and
    `use_gpus`; else `cpus_per_worker` CPUs, default `default_cpus(nodes' resources)`."""
    nodes = [n["Resources"] for n in import_ray().nodes() if n.get("Alive")]
    if use_gpus and any(r.get("GPU", 0) >= 1 for r in nodes):
        cpus = cpus_per_worker or 1.0
        fits = sum(min(int(r.get("GPU", 0)), int(r.get("CPU", 0) // cpus)) for r in nodes)
        return WorkerShape(True, float(cpus), fits)
    cpus = cpus_per_worker or default_cpus(nodes)
    return WorkerShape(False, float(cpus), sum(int(r.get("CPU", 0) // cpus) for r in nodes))


def this_node() -> str:
    """The Ray node id of the calling process (a driver or an actor)."""
    return import_ray().get_runtime_context().get_node_id()


def alive_nodes() -> set[str]:
    """The ids of the nodes Ray holds alive now."""
    return {n["NodeID"] for n in import_ray().nodes() if n.get("Alive")}


def node_verdict(node: str, seconds: float = NODE_VERDICT_SECONDS) -> bool:
    """Whether `node` is alive, once Ray has decided: False as soon as it is declared dead;
    True when it stays alive `seconds` (then an actor lost there crashed on its own)."""
    import time

    deadline = time.monotonic() + seconds
    while node in alive_nodes():
        if time.monotonic() > deadline:
            return True
        time.sleep(0.5)
    return False


def driver_queue():
    """A `ray.util.queue.Queue` whose actor lives on the driver's node, reserving nothing: the
    workers' messages survive the loss of any node but the driver's (a queue placed on the
    lost node ended the edit with Ray's ActorUnavailableError)."""
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(this_node(), soft=False)
    return Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
