"""glibc malloc tuning: let big tensors reuse freed heap memory instead of fresh pages.

glibc serves allocations above its mmap threshold (at most 32 MiB by its own heuristic) with a fresh
`mmap` and unmaps them on free, so every batch's activations (a ViT-B/16 MLP output at batch 16 is tens
of MB) fault in page by page again, a sizeable share of each vision-encoder pass. Raising the mmap and
trim thresholds keeps freed blocks in the heap for the next batch. Memory freed after a peak is kept by the
process for reuse instead of being handed back, and some of it fragments, so the worker's peak is somewhat
higher. Both effects are measured in docs/performance.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(threshold_bytes: int) -> bool:
    """Serve allocations below `threshold_bytes` from the heap and keep freed memory; True if applied.

    A no-op (False) for 0 or where the C library is not glibc."""
    if threshold_bytes <= 0:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("not glibc: malloc thresholds left as they are")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    value = min(threshold_bytes, 2**31 - 1)
    applied = bool(mallopt(_M_MMAP_THRESHOLD, value)) and bool(mallopt(_M_TRIM_THRESHOLD, value))
    if not applied:
        log.warning("glibc refused malloc thresholds of %d bytes; left as they are", value)
    return applied
