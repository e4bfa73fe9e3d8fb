"""What the local hub cache holds (`pix2video doctor`, `pix2video download`), without the network.

Beside `hub`, which decides whether the hub can be reached and downloads: this only reads
the cache folder through `huggingface_hub.scan_cache_dir`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CachedModel:
    """A repository in the local hub cache."""

    model: str
    size: int  # bytes on disk
    files: int
    folder: Path


def cached_models() -> list[CachedModel]:
    """Every model repository in the local hub cache (no network)."""
    from huggingface_hub import scan_cache_dir

    try:
        info = scan_cache_dir()
    except Exception:  # noqa: BLE001 - no cache folder yet
        return []
    return sorted(
        (
            CachedModel(r.repo_id, r.size_on_disk, r.nb_files, Path(r.repo_path))
            for r in info.repos
            if r.repo_type == "model"
        ),
        key=lambda m: m.model,
    )


def cached_model(model: str) -> CachedModel | None:
    return next((m for m in cached_models() if m.model == model), None)


def format_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
