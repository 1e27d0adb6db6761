"""Keep freed memory for reuse in training worker processes (glibc's ``malloc``).

A train step allocates the same temporaries every call (batches, activations, gradients:
a few hundred KB each for the mnist-optimizers MLP, MBs when seeds are stacked). glibc
serves blocks above ``M_MMAP_THRESHOLD`` with fresh ``mmap`` pages and gives freed heap
tops back to the system above ``M_TRIM_THRESHOLD``; by default both adapt upwards and a
steady loop settles with no page faults. Dask's nanny starts every worker with
``MALLOC_TRIM_THRESHOLD_=65536`` (``distributed.nanny.pre-spawn-environ``, so that idle
workers return memory), and setting that variable also freezes the mmap threshold at
128 KB: every step then maps, faults in (zeroes) and unmaps its temporaries again.
Measured on the protocol's Adam step (2-core Intel Xeon, one thread,
``benchmarks/worker_malloc.py``): 1.53 ms a step with no page faults in a plain process,
2.30 ms with 258 minor faults a step under Dask's setting, 1.44 ms with it and
:func:`keep_freed_memory`; a 15-member stacked step faulted 3,558 pages a step.

:func:`keep_freed_memory` sets both thresholds with ``mallopt`` for the process it runs
in, which overrides the environment; the sweep engine calls it at the start of every task
that runs in a Dask worker. A training worker's memory is its data set, compiled steps
and one step's temporaries: steady, so keeping up to :data:`TRIM_THRESHOLD` of freed heap
costs little. Elsewhere (not Linux, or a C library without ``mallopt`` such as musl's
no-op) it does nothing. There is no library for this; ``ctypes`` reaches ``mallopt``.
"""

from __future__ import annotations

import ctypes
import functools
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

#: Blocks up to this size come from the heap (glibc's largest allowed value on 64-bit).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free memory at the heap's top kept before it is given back to the system.
TRIM_THRESHOLD = 256 * 1024 * 1024

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3


@functools.cache
def keep_freed_memory() -> bool:
    """Set this process's ``malloc`` to keep and reuse freed blocks (once per process).

    Returns whether both settings were accepted (``False`` where ``mallopt`` is missing
    or refuses, e.g. off Linux).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the mmap threshold first: glibc caps it, and a trim threshold below it would be odd
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
