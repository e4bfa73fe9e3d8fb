"""Ray across several nodes (`tests/ray_nodes.py`: every node its own raylet and object
store, one CPU each, all on 127.0.0.1): one clip on 2 workers placed on different nodes, a
node lost mid-edit, a batch that loses a node, and a cluster started with `ray start`.

The one-process baselines run with one torch thread, as each one-CPU worker does (see
`test_multi_worker.py`): equal bit for bit. Commands run in subprocesses, as users run them;
the test process holds the cluster and never joins it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ray_nodes import NOTICE_BOUND_S, add_node, ray_start_cluster, utility_cluster
from support import COCKATOO, frame_gap, png_frames
from test_batch import env, results
from test_multi_worker import (  # noqa: F401 - mask_file and one_process: fixtures shared
    FRAMES,
    TOLERANCE,
    cli_args,
    final_latents,
    mask_file,
    one_process,
    one_thread_edit,
    settings,
)

pytestmark = [pytest.mark.integration]
LOST_STEPS = 10  # long enough to lose a node after the first step


@pytest.fixture(scope="module")
def cluster():
    """Two nodes of one CPU (Ray's cluster utility); a test that removes one adds it back."""
    pytest.importorskip("ray")
    with utility_cluster(2) as c:
        yield c


def node_ids(cluster) -> set[str]:
    return {cluster.head_node.node_id, *(n.node_id for n in cluster.worker_nodes)}


class Command:
    """A `pix2video` command in a subprocess, its stderr lines read as they come (timed)."""

    def __init__(self, args: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pix2video", *map(str, args)],
            env={**env(cwd), **(extra_env or {})},
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append((time.monotonic(), line))

    def wait(self, timeout: float = 400) -> tuple[int, str, str]:
        out = self.process.stdout.read()
        self.process.wait(timeout)
        self._reader.join(30)
        return self.process.returncode, out, "".join(line for _, line in self.lines)

    def first(self, text: str) -> float | None:
        return next((t for t, line in self.lines if text in line), None)


def lose_a_node(cluster, command: Command, cache: Path) -> tuple[object, float]:
    """Once the command has saved an editing checkpoint, kill the second node's raylet (no
    goodbye to the cluster): (the lost node, when). The caller adds a node back after the
    command, for the tests after it."""
    deadline = time.monotonic() + 300
    while not any(f.is_file() for f in cache.glob("**/checkpoint/*.pt")):
        assert command.process.poll() is None, command.wait()
        assert time.monotonic() < deadline, "no editing checkpoint appeared"
        time.sleep(0.05)
    lost = next(iter(cluster.worker_nodes))
    removed = time.monotonic()
    cluster.remove_node(lost, allow_graceful=False)
    return lost, removed


def edit_args(folder: Path, mask: Path, address: str, steps: int) -> list[str]:
    s = settings(folder, mask, steps=steps)
    args = [*cli_args(s), "--backend", "ray", "--workers", "2", "--ray-address", address]
    return [*args, "--stats-json", folder / "stats.json"]


def test_two_workers_on_two_nodes_equal_one_process(
    cluster, tmp_path, mask_file, one_process, report_measurement
):
    baseline, expected = one_process
    steps = baseline.steps
    code, out, err = Command(
        edit_args(tmp_path, mask_file, cluster.address, steps), tmp_path
    ).wait()
    assert code == 0, err[-3000:]
    assert "Workers: 2 on 2 nodes," in out
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert sorted(stats["worker_nodes"]) == sorted(node_ids(cluster))
    gap = float(np.abs(final_latents(tmp_path) - expected).max())
    report_measurement("2 workers on 2 Ray nodes vs one process: max gap", f"{gap:.2e}")
    assert gap <= TOLERANCE
    # both workers are on different nodes: every byte of the exchange crossed between them
    per_step = stats["bytes_exchanged"] / steps
    report_measurement("bytes crossing nodes per step (7 frames, 64x64, tiny)", f"{per_step:.0f}")
    assert stats["bytes_exchanged"] > 0
    # each node's worker decoded its own frames; they crossed to the driver's node whole
    assert min(stats["worker_decodes"]) > 0 and sum(stats["worker_decodes"]) == FRAMES
    frames = frame_gap(png_frames(tmp_path / "out"), png_frames(baseline.output))
    report_measurement("2 workers on 2 Ray nodes vs one process: frames' max gap", frames)
    assert frames <= 1  # as in test_multi_worker: PNG, within one grey level


def test_a_lost_node_mid_edit_finishes_on_the_node_that_remains(
    cluster, tmp_path, mask_file, report_measurement
):
    """The second node's raylet dies (no goodbye) after a step every worker finished: the
    edit warns once, goes on from that step on the head's worker, and equals an
    uninterrupted run."""
    one_thread_edit(settings(tmp_path / "baseline", mask_file, steps=LOST_STEPS))
    folder = tmp_path / "split"
    command = Command(edit_args(folder, mask_file, cluster.address, LOST_STEPS), tmp_path)
    lost, removed = lose_a_node(cluster, command, folder / "cache")
    try:
        code, out, err = command.wait()
    finally:
        add_node(cluster)
    assert code == 0, err[-3000:]
    assert err.count("was lost; editing again after step") == 1, err[-3000:]
    assert "Workers: 1, " in out and "restarted 1 time" in out, out
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["worker_restarts"] == 1 and lost.node_id not in stats["worker_nodes"]
    gap = float(np.abs(final_latents(folder) - final_latents(tmp_path / "baseline")).max())
    report_measurement("lost node: gap to the uninterrupted run", f"{gap:.2e}")
    assert gap <= TOLERANCE
    noticed = command.first("was lost") - removed
    report_measurement(
        "lost node: seconds from the raylet's death to the warning",
        f"{noticed:.1f} (Ray's verdict bound here {NOTICE_BOUND_S:g} s)",
    )


BATCH = """input,prompt,source_prompt,output
clip.mp4,a cockatoo made of blue crystal,a white cockatoo,blue
clip.mp4,a golden cockatoo,a white cockatoo,golden
"""
BATCH_FAST = [
    "--model", "tiny", "--size", "64", "--max-frames", "3", "--steps", "8",
    "--checkpoint-interval", "0",
]  # fmt: skip


def test_a_batch_loses_a_node_and_reruns_its_job(cluster, tmp_path, report_measurement):
    """Two jobs start at once, one per node; the second node dies while both run. The lost
    node's job runs again on the head's worker; both outputs equal single edits, each
    record names the node that ran it, and nothing is failed or written twice."""
    (tmp_path / "clip.mp4").write_bytes(COCKATOO.read_bytes())
    (tmp_path / "jobs.csv").write_text(BATCH)
    (tmp_path / "single").mkdir()
    for name, prompt in (
        ("blue", "a cockatoo made of blue crystal"),
        ("golden", "a golden cockatoo"),
    ):
        single = subprocess.run(
            [sys.executable, "-m", "pix2video", "edit", "clip.mp4", "-p", prompt,
             "--source-prompt", "a white cockatoo", *BATCH_FAST, "-o", f"single/{name}",
             "--cache-dir", "single-cache", "-q"],
            env=env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert single.returncode == 0, single.stderr
    out = tmp_path / "out"
    command = Command(
        ["batch", "jobs.csv", *BATCH_FAST, "-o", out, "--cache-dir", "cache", "--backend",
         "ray", "--ray-address", cluster.address, "--cpus-per-worker", "1"],
        tmp_path,
    )  # fmt: skip
    lost, removed = lose_a_node(cluster, command, tmp_path / "cache")  # both jobs are editing
    try:
        code, _, err = command.wait()
    finally:
        add_node(cluster)
    assert code == 0, err[-3000:]
    records = results(out)
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
    assert {k: r["status"] for k, r in records.items()} == {"blue": "ok", "golden": "ok"}
    for name, record in records.items():
        assert record["node"] in node_ids(cluster) | {lost.node_id}
        frames, expected = png_frames(out / name), png_frames(tmp_path / "single" / name)
        assert len(frames) == len(expected) == 3
        assert all(np.array_equal(a, b) for a, b in zip(frames, expected, strict=True)), name
    reruns = err.count("A Ray node was lost;")
    assert reruns <= 1  # 0 when the lost node's job had just finished
    report_measurement("batch, lost node: jobs run again", str(reruns))
    if reruns:
        assert lost.node_id not in {r["node"] for r in records.values()}
        noticed = command.first("A Ray node was lost") - removed
        report_measurement("batch, lost node: seconds to notice", f"{noticed:.1f}")


def test_a_cluster_started_with_ray_start(tmp_path, mask_file, one_process, report_measurement):
    """`ray start --head`, `ray start --address` (each its own process), then `--ray-address`."""
    pytest.importorskip("ray")
    baseline, expected = one_process
    with ray_start_cluster(2) as (address, auth):
        code, out, err = Command(
            edit_args(tmp_path, mask_file, address, baseline.steps), tmp_path, auth
        ).wait()
    assert code == 0, err[-3000:]
    assert "Workers: 2 on 2 nodes," in out
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert len(set(stats["worker_nodes"])) == 2
    gap = float(np.abs(final_latents(tmp_path) - expected).max())
    report_measurement("2 workers on a `ray start` cluster vs one process: max gap", f"{gap:.2e}")
    assert gap <= TOLERANCE
    assert FRAMES == len(list((tmp_path / "latents" / "final").glob("*.npy")))
