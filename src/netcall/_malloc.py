"""glibc malloc settings for large messages, applied once, the first time a process receives
or sends a large frame (64 KiB or more after the head: ``netcall._frames.VIEW_MIN``).

Why: every large frame (a payload, an out-of-band buffer) is a fresh allocation: ZeroMQ's
message, then the ``bytes`` handed to the user. Above glibc's mmap threshold each one is mapped,
faulted in page by page, zeroed and unmapped again; in the profile of a 1 MiB echo that page
churn was the largest cost after the kernel's TCP copies. With the threshold and the trim
threshold raised, freed blocks are reused instead. Measured (benchmarks/cpu.py's echo, both ends
in one process, 400 calls of 1 MiB, 4 interleaved runs): 0.96-1.06 CPU-seconds without, 0.30-0.40
with these settings.

The cost: a process keeps up to :data:`TRIM_THRESHOLD` of freed memory mapped for reuse instead
of returning it to the kernel at once. Nothing is changed when the environment already sets
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES`` (the user chose),
when ``NETCALL_MALLOC_TUNING=0``, or when the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune"]

#: Blocks below this come from the heap and are reused (glibc's upper bound on 64-bit).
MMAP_THRESHOLD = 32 << 20
#: Freed memory at the top of the heap is returned to the kernel beyond this.
TRIM_THRESHOLD = 128 << 20

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_state: list[bool] = []  # [applied] once tried


def tune() -> bool:
    """Apply the settings once per process (see the module docstring); whether they are in
    effect. Never raises."""
    if _state:
        return _state[0]
    applied = False
    try:
        if (
            sys.platform.startswith("linux")
            and os.environ.get("NETCALL_MALLOC_TUNING", "1") != "0"
            and not any(name in os.environ for name in _USER_SETTINGS)
        ):
            libc = ctypes.CDLL(None)
            if hasattr(libc, "gnu_get_libc_version"):  # glibc, not musl
                mallopt = libc.mallopt
                mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                )
    except Exception:  # no ctypes, no libc symbols: leave malloc alone
        applied = False
    _state.append(applied)
    return applied
