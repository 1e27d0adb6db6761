"""Sweeps at scale: a grid of runs on Dask, a resumable SQLite results store, Optuna search.

>>> from symopt.sweep import run_sweep                       # doctest: +SKIP
>>> run_sweep("sweep.toml", "sweep.db")                      # doctest: +SKIP
SweepReport(db=PosixPath('sweep.db'), total=8, skipped=0, done=8, failed=0, ...)

* :mod:`~symopt.sweep.config`: the TOML/JSON configuration and its validation;
* :mod:`~symopt.sweep.store`: the SQLite store (one transaction per run, resume, reports);
* :mod:`~symopt.sweep.engine`: Dask client/cluster handling and the worker tasks (one run,
  or with ``stack_size`` > 1 up to that many runs of one structure trained together as a
  seed stack, each still recorded as its own run);
* :mod:`~symopt.sweep.search`: Optuna (TPE, random) over the same workers.
"""

from __future__ import annotations

from .config import ConfigError, RunSpec, SearchSpec, SweepConfig, load_config
from .engine import SchedulerUnreachableError, SweepReport, dask_client, run_sweep, train_run
from .store import ResultStore, StoreError

__all__ = [
    "ConfigError",
    "ResultStore",
    "RunSpec",
    "SchedulerUnreachableError",
    "SearchSpec",
    "StoreError",
    "SweepConfig",
    "SweepReport",
    "dask_client",
    "load_config",
    "run_search",
    "run_sweep",
    "train_run",
]


def __getattr__(name: str):
    # Optuna is an optional dependency: import the search module only when asked for.
    if name == "run_search":
        from .search import run_search

        return run_search
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
