"""`pix2video batch`: read a JOBS file, run its edits locally or on Ray, print one line per job.

The options of `pix2video edit` are accepted here as defaults for every job (rows and the
YAML ``defaults`` override them); they are the edit command's own option objects, so both
commands always take the same options with the same checks and help.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from ..batch import Evaluation, LocalBackend, RayBackend, read_batch, run_batch
from ..batch.jobs import is_output_option
from ..batch.report import RESULTS_NAME, SUMMARY_NAME
from ..batch.runner import BatchEvents, BatchOutcome
from ..quiet import quiet_libraries
from ..settings import WORKER_FIELDS, EditSettings
from .edit import edit as edit_command
from .errors import STATE
from .options import clip_model_option, run_options
from .progress import Reporter

_DEFAULTABLE = frozenset(
    name
    for name in EditSettings.field_names()
    if name not in ("input", "prompt")
    and not is_output_option(name)  # per job only
    and name not in WORKER_FIELDS  # the batch's own --workers spread jobs, not one clip
)


def edit_option_defaults(f):
    """Every `pix2video edit` option that can be a default for all jobs, in its order."""
    taken = {p.name for p in getattr(f, "__click_params__", [])}
    params = [
        copy.copy(p) for p in edit_command.params if p.name in _DEFAULTABLE and p.name not in taken
    ]
    f.__click_params__ = [*getattr(f, "__click_params__", []), *reversed(params)]
    return f


class _Events(BatchEvents):
    """Progress for people: a bar of jobs (and the running job's stages), a line per job."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.total = 0

    def started(self, total: int, skipped: int, pending: int) -> None:
        self.total = total
        if skipped:
            self.reporter.line(
                f"Skipping {skipped} of {total} jobs: their outputs exist for the same input "
                "and settings."
            )
        self.reporter.update("jobs", skipped, total, unit="jobs")

    def job_started(self, job) -> None:
        self.reporter.close(*Reporter.UNITS.keys() - {"jobs"})

    def progress(self, stage: str, done: int, total: int) -> None:
        self.reporter.update(stage, done, total)

    def info(self, message: str) -> None:
        self.reporter.line(message)

    def finished(self, record: dict[str, Any], counts: dict[str, int]) -> None:
        failed = counts.get("failed", 0)
        done = sum(counts.values())
        unit = f"jobs, {failed} failed" if failed else "jobs"
        self.reporter.update("jobs", done, self.total, unit=unit)
        self.reporter.line(job_line(record))
        for warning in record.get("warnings") or []:
            self.reporter.warn(f"line {record['line']}: {warning}")


def job_line(record: dict[str, Any]) -> str:
    """`ok     line 3  name  (2 frames, 4.1 s, 12 UNet evaluations)` or the failure sentence."""
    head = f"{record['status']:<6} line {record['line']:<4} {record['output']}"
    if record["status"] == "failed":
        return f"{head}: {record['error']}"
    seconds = (record.get("seconds") or {}).get("total", 0.0)
    text = f"{head}  ({record['frames']} frames, {seconds:.1f} s, {record['unet_evaluations']} UNet evaluations"
    if record.get("captioned"):
        text += f'; caption: "{record["source_prompt"]}"'
    return text + ")"


@click.command(context_settings={"show_default": True})
@click.argument("jobs", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help=f"Folder for the outputs, {RESULTS_NAME} (a line per job) and {SUMMARY_NAME}.",
)
@click.option(
    "--backend",
    type=click.Choice(["local", "ray"]),
    default="local",
    help="local: one job after another in this process. ray: the jobs spread over a Ray "
    "cluster's workers (pip install 'pix2video[ray]').",
)
@click.option(
    "--ray-address",
    default=None,
    show_default="start a local Ray instance",
    help="Ray cluster to join (e.g. auto, or HOST:6379); inputs, outputs and the cache must "
    "be paths every node can read and write.",
)
@click.option(
    "--cpus-per-worker",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    show_default="4 (at most a node's CPUs) without GPUs, 1 with",
    help="CPUs a Ray worker reserves; on CPU-only clusters this sets how many jobs run at "
    "once (one worker per GPU otherwise).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    show_default="as many as the cluster holds",
    help="At most this many Ray workers.",
)
@click.option(
    "--eval",
    "evaluate",
    is_flag=True,
    help="After each job, CLIP-Text, CLIP-Image and PixelMSE against its source (as "
    "'pix2video eval'); summary.md then compares the methods.",
)
@clip_model_option
@edit_option_defaults
@run_options
@click.pass_context
def batch(
    ctx: click.Context,
    jobs: str,
    out_dir: str,
    backend: str,
    ray_address: str | None,
    cpus_per_worker: float | None,
    workers: int | None,
    evaluate: bool,
    clip_model: str,
    quiet: bool,
    debug: bool,
    **edit_values: Any,
) -> int:
    """Run the edits listed in JOBS (CSV, JSONL or YAML; one job per row) into OUT_DIR.

    Columns: input and prompt (required), source_prompt (empty: caption the anchor frame),
    output (a name under OUT_DIR; default: input name + hash, .mp4), method (a label the
    summary groups by), and any 'pix2video edit' option in snake_case (steps, size, attend,
    latent_guidance_weight, ...). A YAML file may be {defaults: {...}, jobs: [...]}. Values:
    row, then YAML defaults, then the options below, then the edit defaults. Relative paths
    are relative to JOBS. Every row is checked before anything runs.

    Each output is written atomically; results.jsonl gets a line per job as it ends (status
    ok, failed or skipped, the error, seconds, UNet evaluations, caption, metrics) and
    summary.md a table. A failing job is recorded and the others go on (exit code 1). Run
    the same command again to skip finished jobs and resume interrupted ones.

    Example: pix2video batch study.yaml -o results/ --backend ray --eval
    """
    _check_ray_options(ctx, backend)
    plan = read_batch(jobs, out_dir, _given_defaults(ctx, edit_values))
    results = plan.out_dir / RESULTS_NAME
    STATE.interrupted_message = (
        f"Interrupted; finished jobs are recorded in {results}: re-run the same command to go on."
    )
    runner = (
        RayBackend(ray_address, cpus_per_worker, workers) if backend == "ray" else LocalBackend()
    )
    reporter = Reporter(quiet=quiet, debug=debug)
    evaluation = Evaluation(clip_model) if evaluate else None
    with quiet_libraries(debug), reporter.live(), reporter.downloads():
        outcome = run_batch(plan, runner, _Events(reporter), evaluation, debug)
    _report_outcome(outcome, plan.out_dir, reporter, quiet)
    return outcome.exit_code


def _check_ray_options(ctx: click.Context, backend: str) -> None:
    """The Ray-only options are a usage error with the local backend (not silently ignored)."""
    if backend == "local":
        for name in ("ray_address", "cpus_per_worker", "workers"):
            if ctx.params[name] is not None:
                flag = "--" + name.replace("_", "-")
                raise click.UsageError(f"{flag} needs --backend ray", ctx=ctx)


def _given_defaults(ctx: click.Context, edit_values: dict[str, Any]) -> dict[str, Any]:
    """The edit options given explicitly (command line or config file): defaults for every job.

    Options left at their defaults stay out; the edit defaults fill them in last, after the
    rows and the YAML ``defaults``, as for any option nobody set.
    """
    return {
        name: value
        for name, value in edit_values.items()
        if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT
    }


def _report_outcome(outcome: BatchOutcome, out_dir: Path, reporter: Reporter, quiet: bool) -> None:
    """The closing lines: the counts, the files written, and with --quiet the failures on stderr."""
    counts = outcome.counts
    results = out_dir / RESULTS_NAME
    reporter.info(
        f"{outcome.total} jobs: {counts['ok']} ok, {counts['skipped']} skipped, "
        f"{counts['failed']} failed in {outcome.seconds:.1f} s "
        f"({outcome.unet_evaluations} UNet evaluations this run)."
    )
    reporter.info(f"Wrote {results} and {out_dir / SUMMARY_NAME}.")
    if counts["failed"] and quiet:
        click.echo(
            f"Error: {counts['failed']} of {outcome.total} jobs failed; see {results}.", err=True
        )


__all__ = ["batch", "edit_option_defaults", "job_line"]
