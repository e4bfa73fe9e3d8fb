"""On-disk cache of the slow, reusable parts of an edit, keyed by content hashes.

An edit is depth -> DDIM inversion -> editing. The first two depend only on the input and
the source prompt, so a new edit prompt for the same clip reuses them; editing is saved as
a checkpoint after every denoising step, so a killed run resumes where it stopped. Every
entry's key is the sha256 of everything the entry depends on (`make_key`), so a changed
input, model or setting is simply a different entry, never a stale hit.

Layout (``<root>`` = ``--cache-dir``)::

    <root>/v1/caption/<key>.pt      source prompt captioned from the anchor frame (str)
    <root>/v1/depth/<key>.npy       one frame's conditioning: SD2's normalised depth,
                                    (1, h, w) float32; ControlNets' control images,
                                    (3k, H, W) uint8
    <root>/v1/inversion/<key>.pt    inverted noise x_T of one frame, (1, 4, h, w) float32
    <root>/v1/trajectory/<key>.npy  a local edit's source latents of one frame, per step,
                                    (steps, 4, h, w) float32 (same key as its inversion)
    <root>/v1/mask/<key>.pt         a mask segmented from text, (H, W) bool
    <root>/v1/checkpoint/<key>.pt   latest editing checkpoint of a clip (`EditCheckpoint`)
    <root>/v1/final/<key>.pt        final latents of a finished edit, (N, 4, h, w) float32

The `.npy` entries are per-frame arrays a pass reads back a part at a time
(`frame_store.FrameArrays`); their file name is their key. Each `.pt` file is a
`torch.save` of ``{"key": key, "value": ...}`` written under a temporary
name in the same folder and renamed into place (`os.replace`), so a kill never leaves a
half-written entry; an entry that cannot be read (or holds another key) is a miss. Safe to
delete at any time (``rm -rf <root>``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import TMP_MARK, atomic_path
from ..models import resolve_model_path

CACHE_VERSION = "v1"
KINDS = ("caption", "depth", "inversion", "trajectory", "mask", "checkpoint", "final")
_STALE_TMP_SECONDS = 3600.0
_CONFIG_SUFFIXES = (".json", ".txt", ".yaml", ".yml", ".model")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".onnx")


# --------------------------------------------------------------------------- hashing


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_file(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_array(array: np.ndarray | torch.Tensor) -> str:
    """sha256 of an array's dtype, shape and bytes (frames, depth maps, tensors)."""
    if torch.is_tensor(array):
        array = array.detach().cpu().contiguous().numpy()
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def make_key(kind: str, **parts: Any) -> str:
    """sha256 of the canonical JSON of ``kind`` and everything the entry depends on."""
    material = {"cache": CACHE_VERSION, "kind": kind, **parts}
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
    return hash_bytes(text.encode())


def model_fingerprint(name: str) -> dict[str, Any]:
    """What identifies a model's weights without hashing gigabytes.

    A local folder (or the bundled ``tiny``): its resolved path, the contents of its config
    files (``model_index.json``, ``*/config.json``, scheduler and tokenizer files) and the
    size and modification time of its weight files, so retraining or replacing the weights
    in place changes the key. A hub id: the id and, when it is in the local Hugging Face
    cache, the snapshot (commit) that would be loaded. A file (a single-file checkpoint, a
    LoRA): its resolved path, size and modification time.
    """
    path = Path(resolve_model_path(name)).expanduser()
    if path.is_file():  # a single-file checkpoint or a LoRA: its size and modification time
        stat = path.stat()
        return {"model": str(path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime_ns}
    if path.is_dir():
        path = path.resolve()
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            rel = file.relative_to(path).as_posix()
            if rel.startswith(".") or "/." in rel:
                continue
            suffix = file.suffix.lower()
            if suffix in _CONFIG_SUFFIXES:
                digest.update(f"{rel}\0{hash_file(file)}\0".encode())
            elif suffix in _WEIGHT_SUFFIXES:
                stat = file.stat()
                digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        return {"model": str(path), "files": digest.hexdigest()}
    snapshot = None
    with contextlib.suppress(Exception):  # no hub library, malformed id, nothing cached
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "model_index.json")
        if isinstance(found, str):
            snapshot = Path(found).parent.name
    if snapshot is None:
        with contextlib.suppress(Exception):
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(name, "config.json")
            if isinstance(found, str):
                snapshot = Path(found).parent.name
    return {"model": name, "snapshot": snapshot}


# --------------------------------------------------------------------------- atomic files


def atomic_torch_save(obj: Any, path: Path) -> None:
    """`torch.save` to a temporary file next to ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# --------------------------------------------------------------------------- the cache


class Cache:
    """Content-addressed store of tensors and small values; ``root=None`` disables it.

    `load` returns None on a miss, including for an entry that cannot be read; `save`
    never leaves a partial entry. When the folder cannot be written (full disk, no
    permission) the first failure disables saving and is reported by `save` returning
    False; the edit itself goes on.
    """

    def __init__(self, root: str | os.PathLike | None) -> None:
        self.root = Path(root).expanduser() / CACHE_VERSION if root is not None else None
        self.write_error: str | None = None
        if self.root is not None:
            self._sweep_stale_temporaries()

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def path(self, kind: str, key: str) -> Path:
        if self.root is None:
            raise RuntimeError("the cache is disabled")
        if kind not in KINDS:
            raise ValueError(f"unknown cache kind {kind!r}")
        return self.root / kind / f"{key}.pt"

    def array_path(self, kind: str, key: str) -> Path:
        """The `.npy` entry of a per-frame array (`frame_store.FrameArrays`)."""
        return self.path(kind, key).with_suffix(".npy")

    def save_array(self, kind: str, key: str, array: np.ndarray) -> Path | None:
        """Store a per-frame array atomically; None (and the cache stops writing) if it cannot."""
        if self.root is None or self.write_error is not None:
            return None
        path = self.array_path(kind, key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                np.save(tmp, array)
        except OSError as exc:
            self.write_error = f"{exc.strerror or exc} ({exc.filename or self.root})"
            return None
        return path

    def contains(self, kind: str, key: str) -> bool:
        return self.root is not None and self.path(kind, key).is_file()

    def load(self, kind: str, key: str) -> Any | None:
        """The value stored under ``key``, or None (disabled, missing, unreadable)."""
        if self.root is None:
            return None
        path = self.path(kind, key)
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged entry is a miss, and is removed
            path.unlink(missing_ok=True)
            return None
        if not isinstance(entry, dict) or entry.get("key") != key or "value" not in entry:
            return None
        return entry["value"]

    def save(self, kind: str, key: str, value: Any) -> bool:
        """Store ``value`` atomically; False (and the cache stops writing) if it cannot."""
        if self.root is None or self.write_error is not None:
            return False
        try:
            atomic_torch_save({"key": key, "value": _detached(value)}, self.path(kind, key))
        except OSError as exc:
            self.write_error = f"{exc.strerror or exc} ({exc.filename or self.root})"
            return False
        return True

    def remove(self, kind: str, key: str) -> None:
        if self.root is not None:
            self.path(kind, key).unlink(missing_ok=True)

    # ------------------------------------------------------------------ edit checkpoints
    def load_checkpoint(self, key: str, num_frames: int, num_steps: int):
        """The latest `EditCheckpoint` of the edit ``key``, or None (missing or inconsistent)."""
        from ..core.edit_loop import EditCheckpoint

        value = self.load("checkpoint", key)
        try:
            step = int(value["step"])
            latents = value["latents"]
            targets = {(int(p), int(s)): t for p, s, t in value["x0_targets"]}
        except (TypeError, KeyError, ValueError):
            return None
        if not torch.is_tensor(latents) or latents.shape[0] != num_frames:
            return None
        if not 0 <= step < num_steps:
            return None
        return EditCheckpoint(step=step, latents=latents, x0_targets=targets)

    def save_checkpoint(self, key: str, checkpoint) -> bool:
        value = {
            "step": int(checkpoint.step),
            "latents": checkpoint.latents,
            "x0_targets": [(p, s, t) for (p, s), t in checkpoint.x0_targets.items()],
        }
        return self.save("checkpoint", key, value)

    # ------------------------------------------------------------------ housekeeping
    def _sweep_stale_temporaries(self) -> None:
        """Remove temporaries left by killed runs (older than an hour: not a live writer's)."""
        now = time.time()
        for folder in _existing_dirs(self.root / kind for kind in KINDS):
            for tmp in folder.glob(f".*{TMP_MARK}*"):
                with contextlib.suppress(OSError):
                    if now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                        tmp.unlink()


def _existing_dirs(paths: Iterable[Path]) -> Iterable[Path]:
    return (p for p in paths if p.is_dir())


def _detached(value: Any) -> Any:
    """CPU, contiguous copies of tensors (a saved view would drag its whole storage along)."""
    if torch.is_tensor(value):
        return value.detach().to("cpu").contiguous().clone()
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    return value
