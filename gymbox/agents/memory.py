"""Keeping a training process's resident memory flat across steps.

A training step allocates and frees hundreds of megabytes of tensors (logits over a 49k
vocabulary, activations, gradients) from several threads (the event loop's worker threads,
torch's intra-op pool). glibc gives each thread that mallocs its own arena and returns freed
memory to the system only from the top of an arena, so the process's RSS grows with every step
although the live tensors do not: fragmentation, not a leak (``MALLOC_ARENA_MAX=2`` roughly
halved the growth). Within a step, glibc's *dynamic* mmap threshold does the same: once a large
block (an mmap of its own) is freed, glibc raises the threshold to that block's size (up to
32 MiB), so later tensors of up to that size come from the arenas' heaps, where what is freed
stays resident until a trim. Two calls keep it flat:

* :func:`tune_malloc` at start-up caps the arenas (``mallopt(M_ARENA_MAX)``), before the
  threads that would create them exist, and fixes the mmap threshold
  (``mallopt(M_MMAP_THRESHOLD)``, which also turns the dynamic raise off): every tensor over it
  is mapped on its own and unmapped when freed, so the peak follows the live tensors;
* :func:`release_memory` after each phase and step runs the garbage collector and
  ``malloc_trim(0)``, which returns the free pages inside every arena to the system.

Both are no-ops where the C library is not glibc.

Example:
    >>> release_memory() >= 0
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource

M_ARENA_MAX = -8
"""glibc's mallopt parameter number for the arena cap."""

M_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter number for the size from which a block gets its own mmap."""

MMAP_THRESHOLD_BYTES = 1 << 20
"""Blocks from 1 MiB up are mapped on their own: a training step's big tensors (activations,
logits, gradients) are all larger; the many small allocations stay in the arenas."""


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def tune_malloc(arenas: int = 2, mmap_threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Cap glibc's malloc arenas at ``arenas`` and fix its mmap threshold at
    ``mmap_threshold`` bytes (see the module docstring); True when both were done."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, arenas) == 1
                and libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1)


def release_memory() -> int:
    """Collect garbage and hand free heap pages back to the system; returns the RSS in bytes
    after it (0 when it cannot be read)."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
    return rss_bytes()


def rss_bytes() -> int:
    """The process's resident set size now, in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
