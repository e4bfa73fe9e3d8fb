"""Checks that fail in a second, not after an hour of computing: paths and the device.

`JobPaths.check` is the job's first stage: every path the settings name, checked for what
the edit will do with it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError, VideoError
from ..settings import AUTO_DTYPE, EditSettings

if TYPE_CHECKING:
    import torch

    from ..precision import DtypeChoice


@dataclass(frozen=True)
class JobPaths:
    """The paths of one edit, expanded and checked."""

    input: Path
    output: Path
    latents_dir: Path | None
    stats_path: Path | None
    depth_dir: Path | None
    masks_dir: Path | None

    @classmethod
    def check(cls, s: EditSettings) -> JobPaths:
        input_path = Path(s.input).expanduser()
        output = Path(s.output).expanduser()
        check_output_path(output, input_path)
        latents_dir = Path(s.save_latents).expanduser() if s.save_latents else None
        if latents_dir is not None:
            check_latents_dir(latents_dir)
        stats_path = Path(s.stats_json).expanduser() if s.stats_json else None
        if stats_path is not None:
            check_writable_folder(stats_path.parent, stats_path)
        depth_dir = Path(s.depth_dir).expanduser() if s.depth_dir else None
        if depth_dir is not None and not depth_dir.is_dir():
            raise InputError(f"The depth folder '{depth_dir}' does not exist.")
        masks_dir = Path(s.save_masks).expanduser() if s.save_masks else None
        if masks_dir is not None:
            check_output_path(masks_dir)
        return cls(input_path, output, latents_dir, stats_path, depth_dir, masks_dir)


def check_output_path(output: Path, input_path: Path | None = None) -> None:
    """Fail now, not after an hour of computing, when ``output`` cannot be written."""
    from ..media import VIDEO_EXTENSIONS, check_reusable_folder

    folder_output = output.is_dir() or output.suffix == ""
    if not folder_output and output.suffix.lower() not in VIDEO_EXTENSIONS:
        raise VideoError(
            f"Cannot write {output}: unknown output type '{output.suffix}'; use "
            f"{', '.join(VIDEO_EXTENSIONS)} or a folder name for PNG frames."
        )
    if folder_output and output.exists() and not output.is_dir():
        raise VideoError(f"Cannot write frames to {output}: a file of that name exists.")
    check_writable_folder(output.parent, output)
    if input_path is not None and output.exists() and input_path.exists():
        if output.resolve() == input_path.resolve():
            raise VideoError(f"The output {output} is the input; choose another output path.")
    if folder_output and output.is_dir():
        check_reusable_folder(output)


def check_latents_dir(path: Path) -> None:
    """``--save-latents`` must be new, or a folder an earlier ``--save-latents`` wrote."""
    check_writable_folder(path.parent, path)
    if path.exists():
        if not path.is_dir():
            raise InputError(f"Cannot save latents to {path}: a file of that name exists.")
        foreign = sorted(p.name for p in path.iterdir() if p.name not in ("inverted", "final"))
        if foreign:
            raise InputError(
                f"Cannot save latents to {path}: it already contains other files (e.g. "
                f"{foreign[0]}); choose a new or empty folder."
            )


def check_writable_folder(folder: Path, target: Path) -> None:
    folder = folder if str(folder) else Path(".")
    if not folder.exists():
        raise VideoError(f"Cannot write {target}: the folder {folder} does not exist.")
    if not folder.is_dir():
        raise VideoError(f"Cannot write {target}: {folder} is not a folder.")
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".pix2video-write-test-"):
            pass
    except OSError as exc:
        raise VideoError(
            f"Cannot write {target}: the folder {folder} is not writable ({exc.strerror or exc})."
        ) from exc


def resolve_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """(torch.device, torch.dtype) from the settings (`resolve_compute` without the reason)."""
    import torch

    resolved, choice = resolve_compute(device, dtype)
    return resolved, getattr(torch, choice.name)


def resolve_compute(device: str, dtype: str) -> tuple[torch.device, DtypeChoice]:
    """The device and the precision the settings ask for; `auto` picks per device (`precision`)."""
    import torch

    from ..precision import choose_dtype, cpu_flags, onednn_isa_limit

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"Unknown --device {device!r}; use auto, cpu, cuda or cuda:N.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device} was asked for but no CUDA GPU is available.")
    if resolved.type == "cuda" and resolved.index is not None:
        if resolved.index >= torch.cuda.device_count():
            raise InputError(
                f"--device {device}: there are only {torch.cuda.device_count()} CUDA GPUs."
            )
    flags = cpu_flags() if resolved.type == "cpu" and dtype == AUTO_DTYPE else ()
    return resolved, choose_dtype(dtype, resolved.type, flags, onednn_isa_limit())
