"""The allocator settings `gymbox train` starts with: freed tensors leave the process's RSS."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gymbox.agents.memory import _libc

# 100 blocks of 1.5 MiB (a layer's activations, say) are allocated, written and freed, all but
# the last. An 8 MiB block freed first raises glibc's dynamic mmap threshold above 1.5 MiB, as a
# training step's logits do, so without the fixed threshold the blocks come from the heap, and
# the one still in use at its top keeps all of it resident.
PROGRAM = """
import ctypes, ctypes.util, sys
from gymbox.agents.memory import rss_bytes, tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
MiB = 1 << 20
big = libc.malloc(8 * MiB); ctypes.memset(big, 1, 8 * MiB); libc.free(big)
before = rss_bytes()
blocks = [libc.malloc(3 * MiB // 2) for _ in range(100)]
for b in blocks:
    ctypes.memset(b, 1, 3 * MiB // 2)
for b in blocks[:-1]:
    libc.free(b)
print((rss_bytes() - before) / MiB)
"""


def retained_mib(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True,
                         check=True)
    return float(out.stdout)


@pytest.mark.skipif(_libc() is None, reason="the allocator settings are glibc's")
def test_freed_blocks_return_to_the_system_with_the_fixed_mmap_threshold():
    assert retained_mib("default") > 100  # glibc's default keeps ~150 MiB of freed blocks
    assert retained_mib("tuned") < 10  # gymbox train's settings: only the block in use
