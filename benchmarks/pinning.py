"""Hold every framework of a side-by-side benchmark to the same number of threads.

Environment variables set before the libraries load cover the BLAS libraries, OpenMP and
(with ``torch.set_num_threads``) torch, but not JAX: its CPU client sizes its thread pool
from the CPUs the process may run on, and ``--xla_cpu_multi_thread_eigen=false`` does not
stop it. Measured with JAX 0.12 on a 2-core machine: a jitted 512^3 float32 product ran on
1.8 cores with that flag, on 1.0 with the process's CPU affinity restricted to one core.
So the scripts restrict the affinity (:func:`pin_cores`) before JAX runs anything.
"""

from __future__ import annotations

import os


def thread_env(threads: int) -> dict[str, str]:
    """Environment variables holding BLAS, OpenMP and XLA's Eigen to ``threads`` threads
    (read when each library loads: set them before importing NumPy)."""
    return {
        "OPENBLAS_NUM_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "XLA_FLAGS": f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}",
    }


def pin_cores(threads: int) -> list[int]:
    """Restrict this process to the first ``threads`` CPUs it may run on; returns them.

    Call it before JAX's first computation (its thread pool is sized then). Where the
    platform has no affinity call, nothing is restricted and every allowed CPU is returned.
    """
    if not hasattr(os, "sched_setaffinity"):
        return list(range(os.cpu_count() or 1))
    cores = sorted(os.sched_getaffinity(0))[:max(1, threads)]
    os.sched_setaffinity(0, cores)
    return cores
