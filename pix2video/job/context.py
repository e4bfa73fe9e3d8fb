"""What every stage of a job may use: the settings, the callbacks, the cache and the clocks.

Services, not results: what one stage hands the next is its return value.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from ..errors import EditCancelled
from ..settings import EditSettings
from .results import CANCELLED, CANCELLED_NO_CACHE, MessageCallback, ProgressCallback

T = TypeVar("T")


class FrameTracker:
    """Counts decoded frames alive at once, through weak references.

    Every frame the job decodes, resizes or composes is tracked; `peak` is the most that
    were alive together, the bound that lets a clip of any length fit in the same memory.
    Counted when a frame is added (the only moment the peak can grow), with plain weak
    references: no finalizer callbacks, which could swallow a Ctrl-C arriving inside them.
    """

    def __init__(self) -> None:
        self._alive: list[weakref.ref] = []
        self.peak = 0

    def track(self, frame: T) -> T:
        self._alive = [ref for ref in self._alive if ref() is not None]
        self._alive.append(weakref.ref(frame))
        self.peak = max(self.peak, len(self._alive))
        return frame


@dataclass
class JobContext:
    """The settings and services of one job (progress, cancellation, messages, cache)."""

    settings: EditSettings
    progress: ProgressCallback
    cancel: threading.Event
    warn: MessageCallback
    info: MessageCallback
    seconds: dict[str, float] = field(default_factory=dict)  # per stage
    frames_held: FrameTracker = field(default_factory=FrameTracker)
    warned: set[str] = field(default_factory=set)
    _cache: object = None

    @property
    def cache(self):
        """The on-disk cache (imported lazily: it needs torch, bad input should fail first)."""
        if self._cache is None:
            from .cache import Cache

            s = self.settings
            self._cache = Cache(None if s.no_cache else s.cache_dir)
        return self._cache

    @property
    def cancelled_message(self) -> str:
        return CANCELLED_NO_CACHE if self.settings.no_cache else CANCELLED

    def check_cancelled(self) -> None:
        if self.cancel.is_set():
            raise EditCancelled(self.cancelled_message)

    @contextlib.contextmanager
    def cancellable(self, pipe) -> Iterator[None]:
        """Within the block, the pipeline raises `EditCancelled` once `cancel` is set."""
        pipe.cancel_event = self.cancel
        try:
            yield
        except EditCancelled as exc:
            raise EditCancelled(self.cancelled_message) from exc
        finally:
            pipe.cancel_event = None

    def load(self, kind: str, key: str, shape: tuple[int, ...]):
        """A cached tensor of the expected shape, or None."""
        import torch

        value = self.cache.load(kind, key)
        if not torch.is_tensor(value) or tuple(value.shape) != tuple(shape):
            return None
        return value.float()

    def save(self, kind: str, key: str, value) -> bool:
        return save_to_cache(self.cache, kind, key, value, self.warn)


def save_to_cache(cache, kind: str, key: str, value, warn: MessageCallback) -> bool:
    """Store in the cache; the first failure is reported once and caching stops."""
    if not cache.enabled:
        return False
    had_error = cache.write_error is not None
    if kind == "checkpoint":
        saved = cache.save_checkpoint(key, value)
    else:
        saved = cache.save(kind, key, value)
    if not saved and not had_error and cache.write_error is not None:
        warn(f"the cache cannot be written, going on without it: {cache.write_error}.")
    return saved
