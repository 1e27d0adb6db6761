"""BLAS threads while symopt trains or times a step.

A train step's matrix products are small (batch 128); OpenBLAS's worker threads spinning
against each other on few cores made them 9x slower on a 2-core machine (16 ms vs
1.75 ms for 128x784 @ 784x100). ``OPENBLAS_NUM_THREADS`` (which ``import symopt`` sets to
1 when unset) only reaches a BLAS library loaded *after* it is set: NumPy's own OpenBLAS,
loaded by ``import numpy``, keeps the thread count it started with when NumPy came
first. :func:`limit_blas_threads` sets the count of every BLAS library the process has
loaded (NumPy's, SciPy's and the ``scipy-openblas32`` that the C backends link) with
threadpoolctl, for the time a training loop or a benchmark runs, and restores it after.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

__all__ = ["BLAS_THREADS_ENV", "blas_threads", "blas_info", "limit_blas_threads"]

#: The variable that says how many BLAS threads symopt uses (``import symopt`` defaults it to 1).
BLAS_THREADS_ENV = "OPENBLAS_NUM_THREADS"


def blas_threads() -> int | None:
    """The thread count symopt limits BLAS to: ``$OPENBLAS_NUM_THREADS`` (1 unless you set it).

    ``None`` (no limit) when the variable is unset or not a positive integer.
    """
    text = os.environ.get(BLAS_THREADS_ENV, "").strip()
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value >= 1 else None


def blas_info() -> list[dict[str, Any]]:
    """Every BLAS library loaded in this process: ``prefix``, ``version``, ``num_threads``, ``filepath``.

    threadpoolctl's ``threadpool_info()`` (empty without threadpoolctl, from the ``train`` extra).
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("internal_api", "prefix", "version", "num_threads", "threading_layer", "filepath")
    return [{k: lib.get(k) for k in keys} for lib in threadpool_info() if lib.get("user_api") == "blas"]


@contextlib.contextmanager
def limit_blas_threads(threads: int | None = None) -> Iterator[None]:
    """Hold every loaded BLAS library at ``threads`` threads (default :func:`blas_threads`).

    Usable as a decorator. Without threadpoolctl (the ``train`` extra) this does nothing
    and the environment default is the only limit: a speed setting is not worth an
    error.
    """
    threads = blas_threads() if threads is None else threads
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threads is None or threadpool_limits is None:
        yield
        return
    with threadpool_limits(limits=int(threads), user_api="blas"):
        yield
