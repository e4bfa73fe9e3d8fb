"""What a batch leaves in OUT_DIR besides the videos: ``results.jsonl`` and ``summary.md``.

``results.jsonl`` has one JSON line per job, appended (flushed and fsynced) the moment the
job ends, so killing the driver loses no finished job; a torn last line is ignored when the
file is read back. A new run rewrites it, atomically, with the jobs it skips, then appends.
``summary.md`` is rewritten atomically after every job: a table of the jobs and, when jobs
have metrics or method labels, one row per method with the mean ± standard deviation of each
metric and the seconds per frame, the layout of the paper's comparison table.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_path, atomic_write_text

RESULTS_NAME = "results.jsonl"
SUMMARY_NAME = "summary.md"
STATUSES = ("ok", "skipped", "failed")
METRICS: tuple[tuple[str, str], ...] = (
    ("clip_text", "CLIP-Text ↑"),
    ("clip_image", "CLIP-Image ↑"),
    ("pixel_mse", "PixelMSE ↓"),
    ("pixel_mse_masked", "PixelMSE (masked) ↓"),
)
"""Metric keys of a record's ``metrics`` and their column titles (arrows: better direction)."""


def read_results(path: Path) -> list[dict[str, Any]]:
    """The records of an earlier run (lines that do not parse, e.g. a torn last one, skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, default=str) + "\n"


def rewrite_results(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace the file atomically (durably: fsynced before the rename) with `records`."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.writelines(_line(r) for r in records)
        handle.flush()
        os.fsync(handle.fileno())


def append_result(path: Path, record: dict[str, Any]) -> None:
    """One line, on disk when this returns (a kill right after loses nothing)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(_line(record))
        handle.flush()
        os.fsync(handle.fileno())


# --------------------------------------------------------------------------- summary.md


def seconds_per_frame(record: dict[str, Any]) -> float:
    """The method's own time per frame: editing and writing (decoding, encoding).

    Depth and inversion are left out, as in `pix2video ablate`: jobs on the same clip share
    them through the cache, so whichever job ran first would look slower; model loading is
    paid once per worker, not per job.
    """
    seconds, frames = record.get("seconds") or {}, record.get("frames") or 0
    if not frames or "editing" not in seconds:
        return math.nan
    return (seconds["editing"] + seconds.get("writing", 0.0)) / frames


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def _mean_std(values: Sequence[float]) -> str:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return "n/a"
    if len(finite) == 1:
        return _fmt(finite[0])
    std = statistics.stdev(finite)
    return f"{_fmt(statistics.fmean(finite))} ± {std:.2g}"  # 2 digits: the spread's precision


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _metric(record: dict[str, Any], key: str) -> float:
    value = (record.get("metrics") or {}).get(key)
    return math.nan if value is None else float(value)


def summary_markdown(records: Sequence[dict[str, Any]], jobs_file: str, total: int) -> str:
    """The jobs table, preceded by the per-method table when there is something to compare."""
    records = sorted(records, key=lambda r: r.get("line", 0))
    counts = {s: sum(r.get("status") == s for r in records) for s in STATUSES}
    waiting = total - len(records)
    parts = [f"{counts[s]} {s}" for s in STATUSES] + ([f"{waiting} not run"] if waiting else [])
    lines = [f"# Batch `{_cell(jobs_file)}`", "", f"{total} jobs: {', '.join(parts)}.", ""]
    done = [r for r in records if r.get("status") in ("ok", "skipped")]
    with_metrics = any(r.get("metrics") for r in done)
    if with_metrics or any(r.get("method") for r in done):
        lines += _method_table(done, with_metrics) + [""]
    lines += _jobs_table(records, with_metrics)
    return "\n".join(lines) + "\n"


def _method_table(done: Sequence[dict[str, Any]], with_metrics: bool) -> list[str]:
    """One row per method (first-seen order): mean ± std over its jobs; the paper's table."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in done:
        groups.setdefault(record.get("method") or "-", []).append(record)
    metrics = METRICS if with_metrics else ()
    titles = ["Method", "Jobs", *(title for _, title in metrics), "s/frame"]
    lines = [
        "## By method (mean ± standard deviation over jobs)",
        "",
        "| " + " | ".join(titles) + " |",
        "|---|" + "---:|" * (len(titles) - 1),
    ]
    for method, rows in groups.items():
        cells = [_cell(method), str(len(rows))]
        cells += [_mean_std([_metric(r, key) for r in rows]) for key, _ in metrics]
        cells.append(_mean_std([seconds_per_frame(r) for r in rows]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _jobs_table(records: Sequence[dict[str, Any]], with_metrics: bool) -> list[str]:
    metrics = METRICS if with_metrics else ()
    titles = ["Line", "Status", "Method", "Input", "Prompt", "Output", "Frames"]
    titles += [title for _, title in metrics] + ["s/frame", "UNet evals", "Error"]
    lines = ["## Jobs", "", "| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for r in records:
        cells = [
            str(r.get("line", "")),
            str(r.get("status", "")),
            _cell(r.get("method") or ""),
            _cell(Path(str(r.get("input", ""))).name),
            _cell(r.get("prompt", "")),
            _cell(r.get("output", "")),
            str(r.get("frames") or ""),
        ]
        cells += [_fmt(_metric(r, key)) if r.get("metrics") else "" for key, _ in metrics]
        cells += [
            _fmt(seconds_per_frame(r)) if r.get("frames") else "",
            str(r.get("unet_evaluations", "")) if r.get("status") != "failed" else "",
            _cell(r.get("error") or ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_summary(
    path: Path, records: Sequence[dict[str, Any]], jobs_file: str, total: int
) -> None:
    atomic_write_text(summary_markdown(records, jobs_file, total), path)
