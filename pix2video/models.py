"""Resolving model names to loaded models, offline-first, with one clear error.

`name` may be a local folder, a Hugging Face hub id, or `tiny` (the random-weight
SD2-depth copy bundled with the package, for smoke runs and tests). A hub id is looked up
in the local cache first, so nothing touches the network when the model is already there
or when `HF_HUB_OFFLINE=1`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .errors import ModelNotAvailableError

T = TypeVar("T")

ASSETS = Path(__file__).parent / "assets"
BUNDLED_MODELS = {"tiny": ASSETS / "tiny-sd2-depth", "tiny-sd2-depth": ASSETS / "tiny-sd2-depth"}
DEFAULT_MODEL = "stabilityai/stable-diffusion-2-depth"
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"  # why this one: see `metrics`
DEFAULT_MASK_MODEL = "CIDAS/clipseg-rd64-refined"  # text -> mask for local edits (`masks`)
DEFAULT_DEPTH_MODEL = "Intel/dpt-hybrid-midas"  # --control depth (Depth Anything V2 also works)
DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"  # the source prompt (`caption`)


def resolve_model_path(name: str) -> str:
    """Map `tiny` to the bundled folder; return other names unchanged."""
    bundled = BUNDLED_MODELS.get(name)
    return str(bundled) if bundled is not None else str(name)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def load_pretrained(
    loader: Callable[..., T], name: str, what: str, fallback_hint: str = "", **kwargs
) -> T:
    """Call `loader(name_or_path, **kwargs)` (a `from_pretrained`), turning failures into one sentence.

    Order: local folder; hub id from the local cache only; then (unless offline) a download.
    """
    path = resolve_model_path(name)
    if Path(path).exists():
        if not Path(path).is_dir():
            raise ModelNotAvailableError(
                f"The {what} '{name}' is a file; pass a model folder or a hub id."
            )
        try:
            return loader(path, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any loader failure becomes one sentence
            raise ModelNotAvailableError(
                f"The folder '{name}' does not hold a loadable {what} ({type(exc).__name__}: {exc})."
            ) from exc
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise ModelNotAvailableError(f"The {what} folder '{name}' does not exist.")
    try:
        return loader(path, local_files_only=True, **kwargs)
    except Exception as exc:  # noqa: BLE001
        cached_error = exc
    if not _offline():
        try:
            return loader(path, **kwargs)
        except Exception as exc:  # noqa: BLE001
            cached_error = exc
    raise ModelNotAvailableError(
        f"The {what} '{name}' is not available offline and could not be downloaded "
        f"({type(cached_error).__name__}); download it once with "
        f"`huggingface-cli download {name}` on a machine with internet, or pass a local "
        f"folder{fallback_hint}."
    ) from cached_error
