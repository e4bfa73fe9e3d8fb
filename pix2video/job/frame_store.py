"""Per-frame data a later pass needs for the whole clip, kept on disk rather than in memory.

A local edit blends every step with the frame's inversion trajectory (steps x 4 x h x w
float32: 3.2 MiB a frame at 512x512 and 50 steps); a ControlNet edit reads every frame's
control images at every step. Kept in memory, both grow the process with the clip. Here each
frame's array is one `.npy` file, in the cache when it is on (a later edit reuses it, like
an inversion) and otherwise in the job's scratch folder (`Scratch`, removed at the end, on
Ctrl-C too); a pass reads back only the part it needs (a step's row, for a chunk of frames)
with plain reads into a fresh buffer. Not memory-mapped: a mapping's touched pages count in
the process's resident memory until it is closed.

`BytesTracker` counts the bytes of per-frame data alive at once, as `FrameTracker` counts
decoded frames: the number that shows a long clip holds no more than a short one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from ..atomic import atomic_path

T = TypeVar("T")
_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


class BytesTracker:
    """Bytes of per-frame arrays alive at once (conditioning rows, trajectory rows).

    Counted through weak references when an array is added (the only moment the peak can
    grow); numpy arrays and torch tensors both take weak references.
    """

    def __init__(self) -> None:
        self._alive: list[tuple[weakref.ref, int]] = []
        self.peak = 0

    def track(self, array: T) -> T:
        self._alive = [(ref, n) for ref, n in self._alive if ref() is not None]
        self._alive.append((weakref.ref(array), int(array.nbytes)))
        self.peak = max(self.peak, sum(n for _, n in self._alive))
        return array


class Scratch:
    """The job's temporary folder, made on first use and removed by `close` (in a `finally`)."""

    def __init__(self) -> None:
        self._path: Path | None = None

    @property
    def path(self) -> Path:
        if self._path is None:
            self._path = Path(tempfile.mkdtemp(prefix="pix2video-scratch-"))
        return self._path

    def close(self) -> None:
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None


class FrameArrays:
    """One kind of per-frame array on disk (a `.npy` per frame, named by its cache key).

    `put` stores a frame's array in the cache's folder of `kind` (atomically) or, when the
    cache is off or cannot be written, in the scratch folder; `read` gives a row (or the
    whole array) of several frames as one new (n, ...) array.
    """

    def __init__(
        self,
        kind: str,
        shape: tuple[int, ...],
        dtype,
        cache,
        scratch: Scratch,
        warn: Callable[[str], None],
    ) -> None:
        self.kind, self.shape, self.dtype = kind, tuple(shape), np.dtype(dtype)
        self.cache, self.scratch, self.warn = cache, scratch, warn
        self._files: dict[str, tuple[Path, int]] = {}  # key -> (file, offset of the data)

    def __contains__(self, key: str) -> bool:
        """Whether the frame's array is stored (looked up in the cache on first ask)."""
        if key not in self._files and self.cache.enabled:
            path = self.cache.array_path(self.kind, key)
            offset = self._data_offset(path)
            if offset is not None:
                self._files[key] = (path, offset)
        return key in self._files

    def put(self, key: str, array) -> None:
        array = np.ascontiguousarray(np.asarray(array, dtype=self.dtype).reshape(self.shape))
        had_error = self.cache.write_error is not None
        path = self.cache.save_array(self.kind, key, array) if self.cache.enabled else None
        if path is None and not had_error and self.cache.write_error is not None:
            self.warn(
                f"the cache cannot be written, going on without it: {self.cache.write_error}."
            )
        if path is None:  # no cache, or it cannot be written: the job's own folder
            folder = self.scratch.path / self.kind
            folder.mkdir(exist_ok=True)
            path = folder / f"{key}.npy"
            with atomic_path(path) as tmp:
                np.save(tmp, array)
        self._files[key] = (path, self._data_offset(path))

    def read(self, keys: list[str], row: int | None = None) -> np.ndarray:
        """(n, *shape[1:]) the row `row` of each frame's array, or (n, *shape) the whole."""
        shape = self.shape if row is None else self.shape[1:]
        out = np.empty((len(keys), *shape), self.dtype)
        size = out[0].nbytes if len(keys) else 0
        for j, key in enumerate(keys):
            path, offset = self._files[key]
            with open(path, "rb", buffering=0) as handle:
                handle.seek(offset + (row or 0) * size)
                view = memoryview(out[j]).cast("B")
                if handle.readinto(view) != size:
                    raise OSError(f"{path} is shorter than its header says")
        return out

    def _data_offset(self, path: Path) -> int | None:
        """Where the data starts, if `path` is a `.npy` of this kind's shape and dtype."""
        with contextlib.suppress(OSError, ValueError):
            with open(path, "rb") as handle:
                read_header = _HEADER_READERS.get(np.lib.format.read_magic(handle))
                if read_header is None:
                    return None
                shape, fortran, dtype = read_header(handle)
                size = os.fstat(handle.fileno()).st_size
                offset = handle.tell()
            expected = int(np.prod(self.shape)) * self.dtype.itemsize
            if shape == self.shape and not fortran and dtype == self.dtype:
                if size - offset == expected:
                    return offset
        return None
