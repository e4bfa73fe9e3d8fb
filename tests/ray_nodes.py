"""Multi-node Ray clusters on one machine, for the tests: every node its own raylet and object
store, one CPU each, all on 127.0.0.1 (nothing leaves the loopback interface).

Two ways, as the issue asks: Ray's own `ray.cluster_utils.Cluster` (nodes started and removed
from the test process, so a test can lose one mid-edit), and `ray start --head` plus
`ray start --address` in processes of their own, as users start a cluster.

Both keep to themselves: a temporary Ray folder of their own (`ray start --temp-dir` writes
its address file there), and the machine-wide ``/tmp/ray/ray_current_cluster`` file that the
cluster utility writes and removes (a plain ``ray.init()`` elsewhere on the machine would
follow it into this cluster) put back as it was.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

LOOPBACK = "127.0.0.1"
HEALTH_CHECK = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}
"""A lost node is declared dead after 3 missed checks 1 s apart (Ray's defaults: 5, 3 s apart,
10 s each): the tests wait seconds, not half a minute, for the verdict."""
NOTICE_BOUND_S = (
    HEALTH_CHECK["health_check_failure_threshold"]
    * (HEALTH_CHECK["health_check_period_ms"] + HEALTH_CHECK["health_check_timeout_ms"])
    / 1000
)
"""The longest Ray may take to declare a node dead with `HEALTH_CHECK` (6 s)."""
ADDRESS_FILE = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"

# `ray start` rewrites 127.0.0.1 to this machine's network address (it assumes a cluster
# spans machines); this runs Ray's own `ray start` with the address kept as given.
RAY_START = (
    "import sys; from ray._private import services; "
    "services.resolve_ip_for_localhost = str; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"
)


@contextlib.contextmanager
def address_file_kept() -> Iterator[None]:
    """Put ``/tmp/ray/ray_current_cluster`` back as it was (or remove it) afterwards."""
    before = ADDRESS_FILE.read_bytes() if ADDRESS_FILE.exists() else None
    try:
        yield
    finally:
        if before is None:
            ADDRESS_FILE.unlink(missing_ok=True)
        else:
            ADDRESS_FILE.write_bytes(before)


@contextlib.contextmanager
def utility_cluster(nodes: int = 2) -> Iterator[object]:
    """`ray.cluster_utils.Cluster` with `nodes` nodes of one CPU (the first is the head)."""
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="p2v-ray-")
    with address_file_kept():
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "node_ip_address": LOOPBACK,
                "include_dashboard": False,
                "temp_dir": temp,
                "_system_config": HEALTH_CHECK,
            },
        )
    try:
        for _ in range(nodes - 1):
            add_node(cluster)
        yield cluster
    finally:
        with address_file_kept():  # its shutdown removes the file, whoever's it is by then
            cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def add_node(cluster) -> object:
    """One more node of one CPU on the loopback."""
    node = cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK)
    cluster.wait_for_nodes()
    return node


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def ray_start_cluster(nodes: int = 2) -> Iterator[tuple[str, dict[str, str]]]:
    """`ray start --head` and `ray start --address` (one process each, `--block`: ending
    the process ends its node), with token authentication as `ray start` now defaults to (a
    token of this cluster's own, not the user's ``~/.ray/auth_token``); yields the head's
    address and the environment a driver needs, once every node has joined."""
    temp = Path(tempfile.mkdtemp(prefix="p2v-ray-"))
    port = free_port()
    address = f"{LOOPBACK}:{port}"
    common = ["--num-cpus", "1", "--node-ip-address", LOOPBACK, "--block", "--disable-usage-stats"]
    head = ["start", "--head", "--port", str(port), "--temp-dir", str(temp), "--include-dashboard"]
    head += ["false", *common]
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    started = RayStarts(temp, auth)
    try:
        started.start(head)
        started.wait_for_port(port)
        for _ in range(nodes - 1):
            started.start(["start", "--address", address, *common])
        started.wait_for_nodes(address, nodes)
        yield address, auth
    finally:
        started.stop()
        shutil.rmtree(temp, ignore_errors=True)


class RayStarts:
    """The `ray start --block` processes of one cluster, each with its log."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder, self.env = folder, {**os.environ, **env}
        self.processes: list[subprocess.Popen] = []

    def start(self, args: list[str]) -> None:
        with open(self.folder / f"ray-start-{len(self.processes)}.log", "w") as log:
            command = [sys.executable, "-c", RAY_START, *args]
            self.processes.append(
                subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env)
            )

    def check(self) -> None:
        for rank, process in enumerate(self.processes):
            if process.poll() is not None:
                log = (self.folder / f"ray-start-{rank}.log").read_text()[-2000:]
                raise AssertionError(f"ray start ({rank}) ended:\n{log}")

    def wait_for_port(self, port: int, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.check()
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 1):
                return
            time.sleep(0.2)
        raise AssertionError(f"ray start --head did not listen on {port}")

    def wait_for_nodes(self, address: str, count: int, seconds: float = 120) -> None:
        """Until the cluster at `address` has `count` nodes alive (asked from a subprocess:
        the test process itself never joins a cluster)."""
        ask = "import sys, pix2video.ray_cluster as rc; rc.connect(sys.argv[1]); "
        ask += "print(len(rc.alive_nodes()))"
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.check()
            run = subprocess.run(
                [sys.executable, "-c", ask, address],
                capture_output=True,
                text=True,
                timeout=120,
                env=self.env,
            )
            if run.returncode == 0 and run.stdout.strip() == str(count):
                return
            time.sleep(1)
        raise AssertionError(f"the cluster at {address} did not reach {count} nodes")

    def stop(self) -> None:
        """SIGTERM each (a `--block` process stops its node's processes), workers first."""
        for process in reversed(self.processes):
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
