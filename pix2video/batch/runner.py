"""Running a batch: skip what is done, run the rest on a backend, record each job as it ends.

`run_batch` is the driver. It takes OUT_DIR's lock, computes every job's identity (a hash of
its input files' contents and of its settings, see `job_key`), skips the jobs whose output
exists and whose identity matches the earlier record, and hands the others to a backend:
`LocalBackend` runs them here one after another, `RayBackend` (`ray_backend.py`) on a Ray
cluster. A backend runs each job with a `JobRunner`, which keeps the model loaded between
jobs and turns any failure into one sentence, so a bad job is recorded and the others go on.

Nothing is lost to a kill: outputs are written atomically by the edit job, every finished job
is appended to ``results.jsonl`` at once, and an interrupted job resumes from the edit
cache's checkpoints when the same command runs again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from .. import __version__
from ..atomic import TMP_MARK
from ..errors import InputError, describe_failure
from ..models import DEFAULT_CLIP_MODEL
from .jobs import Batch, BatchJob, is_input_path_option, is_output_option
from .report import (
    METRICS,
    RESULTS_NAME,
    STATUSES,
    SUMMARY_NAME,
    append_result,
    read_results,
    rewrite_results,
    write_summary,
)

NOT_IN_IDENTITY = frozenset({"output", "cache_dir", "no_cache", "checkpoint_interval"})
"""Settings that do not change the output (where it goes, the cache, checkpoint timing)."""
LOCK_NAME = ".pix2video-batch.lock"


@dataclass(frozen=True)
class Evaluation:
    """`--eval`: the `eval` command's metrics after each job, with its CLIP model."""

    clip_model: str = DEFAULT_CLIP_MODEL


@dataclass(frozen=True)
class PendingJob:
    """A job to run and its identity (recorded, and compared on the next run)."""

    job: BatchJob
    key: str


class BatchEvents:
    """What a front end hears from a running batch; every method is a no-op here."""

    def started(self, total: int, skipped: int, pending: int) -> None:
        """Before the first job runs (`skipped` jobs are already done)."""

    def finished(self, record: dict[str, Any], counts: dict[str, int]) -> None:
        """A job ended (`counts`: statuses so far, skipped ones included)."""

    def job_started(self, job: BatchJob) -> None:
        """A job goes to a worker (locally: it starts now)."""

    def progress(self, stage: str, done: int, total: int) -> None:
        """The running job's stages (local backend only), as `edit_clip` reports them."""

    def info(self, message: str) -> None:
        """A note about the run (workers started, ...)."""


class Backend(Protocol):
    """Runs pending jobs, yielding each one's outcome (`JobRunner.run`) as soon as it ends."""

    def run(
        self, pending: list[PendingJob], evaluation: Evaluation | None, debug: bool, events
    ) -> Iterator[tuple[PendingJob, dict[str, Any]]]: ...


@dataclass
class BatchOutcome:
    """What a run did: one record per job, in the order they ended (skipped ones first)."""

    records: list[dict[str, Any]]
    total: int
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def unet_evaluations(self) -> int:
        """UNet evaluations this run made (skipped jobs' records repeat earlier runs')."""
        return sum(r.get("unet_evaluations") or 0 for r in self.records if r["status"] == "ok")

    @property
    def exit_code(self) -> int:
        return 1 if self.counts.get("failed") else 0


# --------------------------------------------------------------------------- one job


class JobRunner:
    """Runs jobs one after another with the model (and CLIP) kept loaded between them.

    The local backend has one; under Ray, each worker (actor) is one. `run` never raises for
    a job's failure: it returns the outcome with the failure as one sentence.
    """

    def __init__(
        self, evaluation: Evaluation | None = None, debug: bool = False, pipelines=None
    ) -> None:
        from ..job import PipelineCache

        self.evaluation = evaluation
        self.debug = debug
        self.pipelines = pipelines if pipelines is not None else PipelineCache()
        self._scorers: dict[tuple[str, str], Any] = {}

    def run(self, pending: PendingJob, progress=None) -> dict[str, Any]:
        """The outcome part of a job's record (status, error, caption, cost, metrics)."""
        from ..job import edit_clip
        from ..quiet import quiet_libraries

        settings = pending.job.settings
        warnings_seen: list[str] = []
        outcome: dict[str, Any] = {"worker": f"{socket.gethostname()}:{os.getpid()}"}
        masks_dir = None
        if self.evaluation is not None and settings.masked and settings.save_masks is None:
            # the masks used are needed to score inside and outside them
            masks_dir = Path(tempfile.mkdtemp(prefix=".pix2video-masks-"))
            settings = settings.replace(save_masks=masks_dir / "masks")
        try:
            with quiet_libraries(self.debug):
                result = edit_clip(
                    settings,
                    progress=progress,
                    pipelines=self.pipelines,
                    warn=warnings_seen.append,
                    library_logs=self.debug,
                )
                outcome.update(
                    status="ok",
                    error=None,
                    source_prompt=result.source_prompt,
                    captioned=result.captioned,
                    frames=result.frames,
                    seconds=result.seconds,
                    unet_evaluations=result.unet_evaluations,
                    editing=result.editing,
                    resumed_from_step=result.resumed_from_step,
                    device=result.device,
                )
                if self.evaluation is not None:
                    tic = time.perf_counter()
                    outcome["metrics"] = self._metrics(settings, result)
                    result.seconds["eval"] = time.perf_counter() - tic
        except Exception as exc:  # noqa: BLE001 - any failure is this job's, the batch goes on
            outcome.update(status="failed", error=describe_failure(exc))
            if self.debug:
                outcome["traceback"] = traceback.format_exc()
        finally:
            if masks_dir is not None:
                shutil.rmtree(masks_dir, ignore_errors=True)
        outcome["warnings"] = warnings_seen
        return outcome

    def _metrics(self, settings, result) -> dict[str, Any]:
        """CLIP-Text, CLIP-Image and PixelMSE of the written output against its source."""
        from ..evaluation.clip_score import ClipScorer
        from ..evaluation.metrics import evaluate
        from ..media import read_clip

        model = self.evaluation.clip_model
        scorer = self._scorers.get((model, result.device))
        if scorer is None:
            scorer = self._scorers[(model, result.device)] = ClipScorer(model, result.device)
        edited = read_clip(result.output).frames
        source = read_clip(
            settings.input, settings.start, settings.end, settings.stride, settings.max_frames
        ).frames
        regions = None
        if settings.masked:
            from ..pipelines.masks import read_regions

            regions = read_regions(settings.save_masks, edited)
        report = evaluate(edited, source, settings.prompt, scorer=scorer, regions=regions).to_dict()
        keys = [key for key, _ in METRICS] + ["valid_fraction", "clip_model", "flow_method"]
        metrics = {key: report[key] for key in keys}
        if regions is not None:
            metrics["regions"] = report["regions"]  # inside / outside the mask
        return metrics


class LocalBackend:
    """Jobs one after another in this process (no Ray needed), stages reported as they go."""

    def __init__(self, pipelines=None) -> None:
        self.pipelines = pipelines  # a loaded model to reuse (tests, a long-lived process)

    def run(
        self, pending: list[PendingJob], evaluation: Evaluation | None, debug: bool, events
    ) -> Iterator[tuple[PendingJob, dict[str, Any]]]:
        runner = JobRunner(evaluation, debug, self.pipelines)
        for item in pending:
            events.job_started(item.job)
            yield item, runner.run(item, progress=events.progress)


# --------------------------------------------------------------------------- identity


def content_hash(path: Path) -> str:
    """sha256 of a file's bytes, or of a folder's file names and bytes (an image sequence)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(f"{file.relative_to(path).as_posix()}\0".encode())
        with open(file, "rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def job_key(job: BatchJob, hashes: dict[str, str] | None = None) -> str:
    """The job's identity: its input files' contents and every setting that shapes the output.

    Input paths count by content (a moved clip is the same job, a re-encoded one is not); a
    missing or unreadable input counts as such, and its job then fails with the edit's own
    sentence. `hashes` caches file hashes across jobs (many rows share a clip).
    """
    hashes = {} if hashes is None else hashes
    material: dict[str, Any] = {"pix2video": __version__}
    for name in type(job.settings).field_names():
        if name in NOT_IN_IDENTITY:
            continue
        value = getattr(job.settings, name)
        if value is not None and is_input_path_option(name):
            text = str(value)
            if text not in hashes:
                try:
                    hashes[text] = content_hash(Path(text))
                except OSError as exc:
                    hashes[text] = f"unreadable: {exc.strerror or exc}"
            value = hashes[text] if Path(text).exists() else "missing"
        material[name] = str(value) if isinstance(value, os.PathLike) else value
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- the driver


def run_batch(
    batch: Batch,
    backend: Backend | None = None,
    events: BatchEvents | None = None,
    evaluation: Evaluation | None = None,
    debug: bool = False,
) -> BatchOutcome:
    """Run every job of `batch` that is not done yet; see the module docstring.

    Done means: an earlier record of this run's OUT_DIR has the job's output name and
    identity, and the output exists (with `evaluation`, the record also has metrics from the
    same CLIP model; otherwise the job runs again, from the cache, to get them).
    """
    backend = backend or LocalBackend()
    events = events or BatchEvents()
    tic = time.perf_counter()
    out = batch.out_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"Cannot create the output folder {out} ({exc.strerror or exc}).") from exc
    results, summary = out / RESULTS_NAME, out / SUMMARY_NAME
    total, jobs_file = len(batch.jobs), str(batch.jobs_file)
    with _locked(out):
        try:
            _remove_stale_temporaries(out)
            records, pending = _skipped_and_pending(batch, results, evaluation)
            rewrite_results(results, records)
            write_summary(summary, records, jobs_file, total)
            events.started(total, len(records), len(pending))
            if pending:
                outcomes = backend.run(pending, evaluation, debug, events)
                _record_outcomes(outcomes, records, batch, events)
        except BaseException:
            # a Ctrl-C can land inside an atomic write (summary.md, an output) before its
            # own cleanup runs; the workers have stopped, so what is left is stale
            _remove_stale_temporaries(out)
            raise
    return BatchOutcome(records, total, time.perf_counter() - tic, _counts(records))


def _skipped_and_pending(
    batch: Batch, results: Path, evaluation: Evaluation | None
) -> tuple[list[dict[str, Any]], list[PendingJob]]:
    """(skipped records, jobs to run): a job is skipped when an earlier record says it is done.

    The jobs to run get their output folders here, before any of them starts.
    """
    done = {
        (r.get("output"), r.get("key")): r
        for r in read_results(results)
        if r.get("status") in ("ok", "skipped")
    }
    hashes: dict[str, str] = {}
    records: list[dict[str, Any]] = []
    pending: list[PendingJob] = []
    for job in batch.jobs:
        key = job_key(job, hashes)
        earlier = done.get((job.name, key))
        if _still_good(earlier, batch.out_dir / job.name, evaluation):
            records.append({**earlier, **_identity(job, key), "status": "skipped"})
        else:
            pending.append(PendingJob(job, key))
            _make_folders(job)
    return records, pending


def _record_outcomes(
    outcomes: Iterator[tuple[PendingJob, dict[str, Any]]],
    records: list[dict[str, Any]],
    batch: Batch,
    events: BatchEvents,
) -> None:
    """Record each job as the backend finishes it: a results line, the summary, an event.

    Appends to `records` as it goes (the caller's list), so that an interruption still
    leaves every finished job recorded and counted.
    """
    out = batch.out_dir
    results, summary = out / RESULTS_NAME, out / SUMMARY_NAME
    total, jobs_file = len(batch.jobs), str(batch.jobs_file)
    with contextlib.closing(outcomes):  # a backend's workers stop with the driver
        for item, outcome in outcomes:
            record = {**_identity(item.job, item.key), **outcome, "finished": _now()}
            record = _ordered(record)
            append_result(results, record)
            records.append(record)
            write_summary(summary, records, jobs_file, total)
            events.finished(record, _counts(records))


def _still_good(
    earlier: dict[str, Any] | None, output: Path, evaluation: Evaluation | None
) -> bool:
    """An earlier record of the same job whose output is there (with metrics, when asked)."""
    if earlier is None or not output.exists():
        return False
    if evaluation is None:
        return True
    return (earlier.get("metrics") or {}).get("clip_model") == evaluation.clip_model


def _make_folders(job: BatchJob) -> None:
    """The folders of a job's outputs inside OUT_DIR (``output: clips/a.mp4``)."""
    for name in filter(is_output_option, type(job.settings).field_names()):
        path = getattr(job.settings, name)
        if path is not None:
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError:
                pass  # the job fails with the edit's own sentence about it


def _identity(job: BatchJob, key: str) -> dict[str, Any]:
    s = job.settings
    return {
        "line": job.line,
        "method": job.method,
        "input": str(s.input),
        "prompt": s.prompt,
        "output": job.name,
        "options": job.options,
        "key": key,
    }


_ORDER = (
    "line", "status", "error", "method", "input", "prompt", "source_prompt", "captioned",
    "output", "frames", "seconds", "unet_evaluations", "editing", "resumed_from_step", "metrics",
    "options", "key", "device", "worker", "node", "warnings", "finished",
)  # fmt: skip


def _ordered(record: dict[str, Any]) -> dict[str, Any]:
    """Readable key order: what happened first, identity and provenance last."""
    first = {k: record[k] for k in _ORDER if k in record}
    return {**first, **{k: v for k, v in record.items() if k not in first}}


def _counts(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    return counts


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One driver per OUT_DIR: a second one would record the same jobs twice."""
    import fcntl

    with open(out / LOCK_NAME, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(
                f"Another pix2video batch is writing to {out}; wait for it or choose another -o."
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale_temporaries(out: Path) -> None:
    """Hidden temporaries a killed run left (the lock says no writer is left to finish them)."""
    for path in sorted(out.rglob(f".*{TMP_MARK}*"), reverse=True):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
