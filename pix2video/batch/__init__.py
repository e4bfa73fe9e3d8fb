"""Many edits in one command: a JOBS file in, videos plus ``results.jsonl`` and ``summary.md`` out.

    from pix2video.batch import read_batch, run_batch, RayBackend
    outcome = run_batch(read_batch("jobs.csv", "out/"), RayBackend())

- `jobs`: the JOBS file (CSV, JSONL, YAML) -> validated `BatchJob`s, with line numbers.
- `runner`: the driver (identity, skip, record), `JobRunner` (one worker), `LocalBackend`.
- `ray_backend`: `RayBackend`, the same jobs on a Ray cluster (Ray imported only there).
- `report`: ``results.jsonl`` and ``summary.md``.

Importing this package does not import torch or Ray.
"""

from .jobs import Batch, BatchJob, read_batch
from .ray_backend import RayBackend
from .runner import (
    BatchEvents,
    BatchOutcome,
    Evaluation,
    JobRunner,
    LocalBackend,
    job_key,
    run_batch,
)

__all__ = [
    "Batch",
    "BatchEvents",
    "BatchJob",
    "BatchOutcome",
    "Evaluation",
    "JobRunner",
    "LocalBackend",
    "RayBackend",
    "job_key",
    "read_batch",
    "run_batch",
]
