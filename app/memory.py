"""glibc malloc settings for a long-running, many-threaded server: keep resident memory flat.

By default glibc raises its mmap threshold each time a large block is freed; from then on
blocks of that size come from the heaps and stay there. With up to 40 request threads
decoding images of every size, each thread with its own heap ("arena"), the process's RSS
kept growing: 254 -> 476 MiB over a 10-minute soak with the real model. A fixed threshold
returns every block over 1 MiB to the kernel when it is freed (uploads, camera-sized decode
buffers, batches), and two arenas stop each thread from holding a heap of its own
(docs/PERFORMANCE.md has the figures). The threshold sits above a request's image-sized
temporaries (a 224x224 RGB copy in float32 is 588 KiB): at 128 KiB each of them was mapped,
faulted in and unmapped anew, which cost the quality checks and the decode 0.6-1.0 ms per image.

Only glibc has `mallopt`; elsewhere (musl, macOS) nothing changes. A `MALLOC_*` variable
set in the environment wins: glibc has already read it, and we leave that setting alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers (malloc.h)
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 1024 * 1024
ARENA_MAX = 2


def tune_malloc() -> dict[str, int]:
    """Apply the settings this process has not been given by its environment; return what was set."""
    if not sys.platform.startswith("linux"):
        return {}
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return {}
    applied: dict[str, int] = {}
    for env, parameter, value in (
        ("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        ("MALLOC_ARENA_MAX", M_ARENA_MAX, ARENA_MAX),
    ):
        if env not in os.environ and mallopt(parameter, value) == 1:
            applied[env.strip("_").lower()] = value
    return applied
