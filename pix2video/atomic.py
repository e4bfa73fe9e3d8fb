"""Atomic outputs: write under a temporary name next to the target, rename when complete.

A run that fails or is killed part-way must never leave a half-written video, frame folder,
latent folder or cache entry at the final path. Everything is first written to a hidden
temporary (same folder, so the rename is atomic on one filesystem) and `os.replace`d only
on success; on any failure the temporary is removed and the previous target, if any, is kept.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_MARK = ".partial-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary file (or folder) path that replaces `path` when the block succeeds.

    The temporary keeps `path`'s suffix (muxers choose the format by extension) and gets the
    permissions a plain `open` would give (mkstemp/mkdtemp make private ones).
    """
    path = Path(path)
    prefix = f".{path.stem}{TMP_MARK}"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    else:
        handle, name = tempfile.mkstemp(prefix=prefix, suffix=path.suffix, dir=path.parent)
        os.close(handle)
        tmp = Path(name)
    try:
        yield tmp
        tmp.chmod((0o777 if directory else 0o666) & ~_umask())
        if directory:
            _replace_folder(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        if directory:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _replace_folder(tmp: Path, path: Path) -> None:
    """Move the finished folder `tmp` to `path`, swapping out an existing folder there."""
    if not path.exists():
        os.replace(tmp, path)
        return
    backup = path.with_name(f".{path.name}.old-{os.getpid()}")
    os.replace(path, backup)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(backup, path)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_output(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Create `path` (and its folders) atomically with `write(tmp_path)`; one-sentence error.

    For report files (tables, JSON, plots, contact sheets) a user asked for by name.
    """
    from .errors import Pix2VideoError

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            write(tmp)
    except OSError as exc:
        raise Pix2VideoError(f"Cannot write '{path}' ({exc.strerror or exc}).") from exc
    return path
