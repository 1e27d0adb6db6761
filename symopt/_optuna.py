"""Optuna as the two searches use it (``symopt search`` and the hyperparameter-search experiment).

One place for what both do alike: importing Optuna (or saying which extra installs it),
the SQLite storage URL, the sampler by name with a resume-aware seed, and the trials
that completed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._extras import require

__all__ = ["SAMPLERS", "import_optuna", "storage_url", "make_sampler", "completed_trials"]

#: Sampler names a search accepts: Optuna's TPESampler and RandomSampler.
SAMPLERS = ("tpe", "random")
# Mixed with the number of stored trials, so that a resumed search does not replay its first draws.
_RESUME_STRIDE = 100_003


def import_optuna(what: str, extra: str) -> Any:
    """Optuna with its logging at WARNING, or :class:`~symopt._extras.MissingExtraError` naming ``extra``."""
    optuna = require("optuna", what, extra)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def storage_url(path: str | os.PathLike[str]) -> str:
    """SQLAlchemy's URL of the SQLite file ``path``."""
    return f"sqlite:///{Path(path)}"


def make_sampler(optuna: Any, name: str, seed: int, stored_trials: int) -> Any:
    """``TPESampler`` or ``RandomSampler`` seeded with ``seed`` and the number of trials already stored."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {SAMPLERS}")
    cls = optuna.samplers.RandomSampler if name == "random" else optuna.samplers.TPESampler
    return cls(seed=int(seed) * _RESUME_STRIDE + int(stored_trials))


def completed_trials(optuna: Any, study: Any) -> list[Any]:
    """The study's COMPLETE trials, in trial order."""
    state = optuna.trial.TrialState.COMPLETE
    return [t for t in study.get_trials(deepcopy=False) if t.state == state]
