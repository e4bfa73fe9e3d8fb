"""Memory tuning of the `pix2video` process (glibc's allocator), applied once at start."""

from __future__ import annotations

import os

MALLOC_ARENAS = 1


def use_one_malloc_arena() -> None:
    """Keep glibc from spreading a long clip's frame buffers over arenas it never gives back.

    One malloc arena: with a second thread running (a server's workers, formerly the progress
    display's refresher) glibc spread the main thread's frame-sized buffers over several
    arenas; a 200-frame edit then peaked at 859 MiB instead of 530 MiB (600 frames: 1263 MiB
    instead of 595 MiB), tiny model at 256 px. A fixed 16 MiB mmap threshold used to go with
    it; `benchmarks/allocator.py` showed it cost 2.3x the page faults and twice the system
    time (every large activation a fresh, zeroed mapping; both compute threads faulting under
    one lock) while the long-clip peak stayed flat without it, so glibc's dynamic threshold
    is left alone. Any of glibc's own ``MALLOC_*`` variables (or ``GLIBC_TUNABLES``) in the
    environment means the user chose: then nothing is changed. No-op outside glibc.
    """
    import ctypes
    import ctypes.util

    if "GLIBC_TUNABLES" in os.environ or any(k.startswith("MALLOC_") for k in os.environ):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-8, MALLOC_ARENAS)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass
