"""The JOBS file of `pix2video batch`: rows of edits, read and validated before anything runs.

One job per row (CSV), line (JSONL) or list item (YAML): ``input`` and ``prompt`` are
required; ``source_prompt`` (empty: caption the anchor frame), ``output`` (a name under
OUT_DIR) and ``method`` (a label the summary groups by) are optional; every other column is
an option of `pix2video edit` under its long name in snake_case (``steps``, ``size``,
``attend``, ``latent_guidance_weight``, ...), so new edit options are columns at once. A
YAML file may instead be ``{defaults: {...}, jobs: [...]}``.

Values come in layers, later ones winning: `EditSettings` defaults, the command line, the
YAML ``defaults``, the row. Relative paths in the file are relative to the file's folder
(the command line's to the working directory); output paths (``output``, ``stats_json``,
``save_latents`` and any ``save_*``) are relative to OUT_DIR and must stay inside it. Every row is turned into
validated `EditSettings` here, so a bad row is one sentence naming the file and line and
nothing has run yet. Only the file system is left to the run: a missing or unreadable input
is that job's failure, not the file's.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..settings import SEQUENCE_FIELDS, WORKER_FIELDS, EditSettings, parse_lora

JOB_COLUMNS: tuple[str, ...] = ("input", "prompt", "source_prompt", "output", "method")
"""The columns that are not plain edit options (``method`` is not an edit option at all)."""
RESERVED_NAMES = frozenset({"results.jsonl", "summary.md"})
DEFAULT_SUFFIX = ".mp4"
FORMATS = {".csv": "CSV", ".jsonl": "JSONL", ".ndjson": "JSONL", ".yaml": "YAML", ".yml": "YAML"}

_HINTS = typing.get_type_hints(EditSettings)
_FIELDS = EditSettings.field_names()
_DEFAULTS = EditSettings.defaults()
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


@dataclass(frozen=True)
class BatchJob:
    """One row of the JOBS file, resolved: what to edit and where the result goes."""

    line: int  # where the row starts in the JOBS file (1-based), for messages
    settings: EditSettings  # validated, absolute paths, output under OUT_DIR
    name: str  # the output's path relative to OUT_DIR
    method: str = ""  # the row's label ("" when none)
    options: dict[str, Any] = field(default_factory=dict)  # edit options not at their default


@dataclass(frozen=True)
class Batch:
    """A validated JOBS file: its jobs and the folder they write into."""

    jobs_file: Path
    out_dir: Path
    jobs: list[BatchJob]


def is_path_option(name: str) -> bool:
    """Options typed as paths in `EditSettings` (inputs, outputs, folders)."""
    return any(arg is os.PathLike for arg in typing.get_args(_HINTS[name]))


def is_output_option(name: str) -> bool:
    """Options naming something the job writes (``output``, ``stats_json``, every ``save_*``):
    relative to OUT_DIR and inside it, one per job (never a default for all)."""
    return name in ("output", "stats_json") or name.startswith("save_")


def is_input_path_option(name: str) -> bool:
    """Path options the job reads (``input``, ``depth_dir``, a mask, ...): they count by content."""
    return is_path_option(name) and not is_output_option(name) and name != "cache_dir"


def read_batch(
    jobs_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    defaults: Mapping[str, Any] | None = None,
    defaults_base: str | os.PathLike | None = None,
) -> Batch:
    """Read and validate every row; raise `InputError` naming the file and line on the first bad one.

    `defaults` are edit options (e.g. those given on the command line) under the row's and
    the YAML defaults' values; their relative paths are relative to `defaults_base` (the
    working directory when None).
    """
    path = Path(jobs_file).expanduser()
    out = Path(out_dir).expanduser().absolute()
    base = path.absolute().parent
    rows, file_defaults, defaults_line = _read_rows(path)
    layered: dict[str, Any] = {}
    if defaults:
        cli_base = Path(defaults_base or Path.cwd()).absolute()
        layered.update(
            _options(defaults, f"{path}: the command line", cli_base, out, csv_cells=False)
        )
    if file_defaults:
        where = f"{path}, line {defaults_line} (defaults)"
        for key in ("input", "output"):
            if key in {_name(k) for k in file_defaults}:
                raise InputError(f"{where}: '{key}' cannot be a default; give it per job.")
        layered.update(_options(file_defaults, where, base, out, csv_cells=False))
    if not rows:
        raise InputError(f"{path} has no jobs.")
    jobs: list[BatchJob] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        where = f"{path}, line {line}"
        job = _job(row, line, where, layered, base, out, csv_cells=path.suffix.lower() == ".csv")
        key = os.path.normcase(job.name)
        if key in seen:
            raise InputError(
                f"{where}: the output '{job.name}' is also line {seen[key]}'s; give each job its "
                "own 'output' (rows that differ only in options get distinct default names)."
            )
        seen[key] = line
        jobs.append(job)
    return Batch(jobs_file=path.absolute(), out_dir=out, jobs=jobs)


# --------------------------------------------------------------------------- rows to jobs


def _name(key: Any) -> str:
    return str(key).strip().lstrip("-").replace("-", "_")


def _options(
    values: Mapping[str, Any], where: str, base: Path, out: Path, csv_cells: bool
) -> dict[str, Any]:
    """Option values by field name: known names only, cells typed, paths resolved."""
    result: dict[str, Any] = {}
    for key, value in values.items():
        name = _name(key)
        if name == "method":
            result[name] = "" if value is None else str(value).strip()
            continue
        if name not in _FIELDS:
            raise InputError(
                f"{where}: unknown column '{key}'; use {', '.join(JOB_COLUMNS)} or an option "
                "of 'pix2video edit' in snake_case (e.g. steps, max_frames)."
            )
        if csv_cells and isinstance(value, str) and not value.strip():
            continue  # an empty cell is no value: the default (for source_prompt: caption)
        if csv_cells:
            value = _typed(name, value, where)
        if value is not None and is_path_option(name) and name != "output":
            value = _resolve(name, value, base, out, where)
        elif value is not None and name in MODEL_OPTIONS:
            value = _resolve_models(name, value, base)
        result[name] = value
    return result


MODEL_OPTIONS = ("model", "model_config", "controlnet", "control", "lora", "depth_model")
"""Options that name a hub id, a keyword or a path: a relative path is taken from the JOBS
file's folder when something exists there, otherwise the value is kept as it is."""


def _resolve_models(name: str, value: Any, base: Path) -> Any:
    def resolve(text: str) -> str:
        scale = ""
        if name == "lora":
            text, scale = parse_lora_text(text)
        path = Path(text).expanduser()
        if not path.is_absolute() and (base / path).exists():
            text = str(base / path)
        return text + scale

    if isinstance(value, (list, tuple)):
        return type(value)(resolve(str(v)) for v in value)
    return resolve(str(value))


def parse_lora_text(text: str) -> tuple[str, str]:
    """(path or id, ":SCALE" or "") of a --lora value, the scale kept as written."""
    text = text.strip()
    path, _ = parse_lora(text)
    return path, text[len(path) :]


def _typed(name: str, text: str, where: str) -> Any:
    """A CSV cell as the option's type (a bare number stays text where text is allowed)."""
    hint = _HINTS[name]
    if name in SEQUENCE_FIELDS:  # several values in one cell: "a; b"
        items = [item.strip() for item in text.split(";") if item.strip()]
        (kind, _) = typing.get_args(hint)
        try:
            return tuple(kind(item) for item in items)
        except ValueError:
            raise InputError(
                f"{where}: {name} must be numbers separated by ';'; got {text!r}."
            ) from None
    kinds = set(typing.get_args(hint)) if isinstance(hint, types.UnionType) else {hint}
    if str in kinds:
        return text
    clean = text.strip()
    if bool in kinds:
        if clean.lower() in _TRUE | _FALSE:
            return clean.lower() in _TRUE
        raise InputError(f"{where}: {name} must be true or false; got {text!r}.")
    for kind, what in ((int, "a whole number"), (float, "a number")):
        if kind in kinds:
            try:
                return kind(clean)
            except ValueError:
                if kind is int and float in kinds:
                    continue
                raise InputError(f"{where}: {name} must be {what}; got {text!r}.") from None
    return text


def _resolve(name: str, value: Any, base: Path, out: Path, where: str) -> str:
    """An input path against the JOBS file's folder, an output path inside OUT_DIR."""
    path = Path(str(value)).expanduser()
    if not is_output_option(name):
        return str(path if path.is_absolute() else base / path)
    full = Path(os.path.normpath(out / path))
    if path.is_absolute() or full == out or out not in full.parents:
        raise InputError(f"{where}: {name} must be a path inside OUT_DIR; got {str(value)!r}.")
    if full.relative_to(out).as_posix() in RESERVED_NAMES:
        raise InputError(f"{where}: {name} cannot be '{value}', the batch's own file.")
    return str(full)


def _job(
    row: Mapping[str, Any],
    line: int,
    where: str,
    layered: Mapping[str, Any],
    base: Path,
    out: Path,
    csv_cells: bool,
) -> BatchJob:
    if not isinstance(row, Mapping):
        raise InputError(f"{where}: a job must be a mapping of column: value.")
    values = {**layered, **_options(row, where, base, out, csv_cells)}
    for required in ("input", "prompt"):
        if values.get(required) in (None, ""):
            raise InputError(f"{where}: the job has no '{required}'.")
    split = sorted(str(k).replace("_", "-") for k in values if k in WORKER_FIELDS)
    if split:
        raise InputError(
            f"{where}: a job cannot set '{split[0]}': the batch spreads its jobs over the "
            "workers; split one long clip with 'pix2video edit --workers N' instead."
        )
    method = values.pop("method", "")
    given_output = values.pop("output", None)
    if given_output is not None and str(given_output).strip():
        output = Path(_resolve("output", given_output, base, out, where))
    else:
        output = out / _default_name(values, method)
    try:
        settings = EditSettings.from_mapping({**values, "output": str(output)}, where=where)
        settings.validate()
    except InputError as exc:
        message = str(exc)
        raise InputError(message if message.startswith(where) else f"{where}: {message}") from None
    except TypeError as exc:  # a value of a type no option takes (a YAML list, ...)
        raise InputError(f"{where}: {exc}.") from None
    _check_output_type(output, where)
    options = {
        k: _plain(getattr(settings, k))
        for k in _FIELDS
        if k not in JOB_COLUMNS and getattr(settings, k) != _DEFAULTS.get(k)
    }
    return BatchJob(line, settings, output.relative_to(out).as_posix(), method, options)


def _default_name(values: Mapping[str, Any], method: str) -> str:
    """``<input stem>-<8 hex>.mp4``: distinct for rows that differ in anything but the cache."""
    material = {k: _plain(v) for k, v in values.items() if k not in ("cache_dir", "no_cache")}
    digest = hashlib.sha256(
        json.dumps([material, method], sort_keys=True, default=str).encode()
    ).hexdigest()
    stem = Path(str(values["input"])).name.split(".")[0] or "clip"
    return f"{stem}-{digest[:8]}{DEFAULT_SUFFIX}"


def _check_output_type(output: Path, where: str) -> None:
    """Known video suffix, or none (a folder of PNG frames); the rest is checked by the job."""
    from ..media import VIDEO_EXTENSIONS

    if output.suffix and output.suffix.lower() not in VIDEO_EXTENSIONS:
        raise InputError(
            f"{where}: unknown output type '{output.suffix}'; use "
            f"{', '.join(VIDEO_EXTENSIONS)} or a name without suffix for PNG frames."
        )


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, os.PathLike) else value


# --------------------------------------------------------------------------- file formats


def _read_rows(path: Path) -> tuple[list[tuple[int, dict]], dict, int]:
    """(rows with their line numbers, the YAML defaults, the defaults' line)."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"The jobs file {path} must be .csv, .jsonl or .yaml.")
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets start CSV with a BOM
    except FileNotFoundError:
        raise InputError(f"The jobs file {path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise InputError(f"Cannot read the jobs file {path} ({reason}).") from None
    if kind == "CSV":
        return _csv_rows(path, text), {}, 0
    if kind == "JSONL":
        return _jsonl_rows(path, text), {}, 0
    return _yaml_rows(path, text)


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    reader = csv.reader(text.splitlines(keepends=True))
    try:
        header = next(reader, None)
        if header is None:
            return []
        names = [h.strip() for h in header]
        if any(not n for n in names):
            raise InputError(f"{path}, line 1: a column has no name.")
        for name in names:
            _options({name: ""}, f"{path}, line 1", Path(), Path(), csv_cells=True)
        rows = []
        last = reader.line_num
        for cells in reader:
            line, last = last + 1, reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if len(cells) > len(names):
                raise InputError(
                    f"{path}, line {line}: {len(cells)} cells for {len(names)} columns."
                )
            rows.append((line, dict(zip(names, cells, strict=False))))
    except csv.Error as exc:
        raise InputError(f"{path}, line {reader.line_num}: not valid CSV ({exc}).") from None
    return rows


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}, line {number}: not valid JSON ({exc.msg}).") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}, line {number}: a job must be a JSON object.")
        rows.append((number, row))
    return rows


def _yaml_rows(path: Path, text: str) -> tuple[list[tuple[int, dict]], dict, int]:
    """A list of jobs, or ``{defaults: {...}, jobs: [...]}``, with each item's line."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
        reason = getattr(exc, "problem", None) or "cannot be parsed"
        raise InputError(f"{where}: not valid YAML ({reason}).") from None
    finally:
        loader.dispose()
    if data is None:
        return [], {}, 0
    defaults, defaults_line, items = {}, 0, node
    if isinstance(data, dict):
        unknown = sorted(str(k) for k in data if k not in ("defaults", "jobs"))
        if unknown:
            raise InputError(
                f"{path}: unknown top-level key '{unknown[0]}'; a YAML jobs file is a list of "
                "jobs or has 'defaults' and 'jobs'."
            )
        values = {k.value: v for k, v in node.value}
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise InputError(f"{path}: 'defaults' must map options to values.")
        defaults_line = values["defaults"].start_mark.line + 1 if "defaults" in values else 0
        data, items = data.get("jobs"), values.get("jobs")
        if data is None:
            return [], defaults, defaults_line
    if not isinstance(data, list):
        raise InputError(f"{path}: 'jobs' must be a list of jobs.")
    return (
        [(n.start_mark.line + 1, row) for n, row in zip(items.value, data, strict=True)],
        (defaults),
        defaults_line,
    )


def settings_values(settings: EditSettings) -> dict[str, Any]:
    """Every setting by name, paths as text (JSON-ready)."""
    return {k: _plain(v) for k, v in dataclasses.asdict(settings).items()}
