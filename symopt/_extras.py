"""Optional dependencies: import one where it is used, or fail with one line naming the extra.

symopt's core (rules, optimiser, schedules, ``symopt.function``) needs PyTensor and NumPy
only. The training layer and the applications import what they need here, at the moment
they need it, so that ``import symopt`` never loads tqdm, matplotlib, Dask or Optuna::

    train        tqdm (progress bars), pooch (MNIST download), filelock, threadpoolctl
    plot         matplotlib (figures of the experiments, sweeps and demo)
    sweep        Dask distributed and Optuna (``symopt sweep`` / ``symopt search``), with train and plot
    experiments  Optuna (the hyperparameter-search experiment), with train and plot

A missing one raises :class:`MissingExtraError` (a ``ModuleNotFoundError``) whose message
says what needed it and the ``pip install 'symopt[EXTRA]'`` that brings it.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

__all__ = ["EXTRAS", "MissingExtraError", "require", "tqdm"]

#: top-level module -> (the name people know it by, the extra that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "tqdm": ("tqdm", "train"),
    "pooch": ("pooch", "train"),
    "filelock": ("filelock", "train"),
    "threadpoolctl": ("threadpoolctl", "train"),
    "matplotlib": ("matplotlib", "plot"),
    "PIL": ("Pillow", "plot"),
    "dask": ("Dask", "sweep"),
    "distributed": ("Dask distributed", "sweep"),
    "optuna": ("Optuna", "sweep"),
}


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def install_hint(extra: str) -> str:
    """``pip install 'symopt[EXTRA]'``."""
    return f"pip install 'symopt[{extra}]'"


def require(module: str, what: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` (e.g. ``"tqdm.auto"``) for ``what``, or raise :class:`MissingExtraError`.

    Parameters
    ----------
    module
        The module to import; its top-level package is looked up in :data:`EXTRAS`.
    what
        What needs it, as the start of the message (``"symopt sweep"``).
    extra
        The extra to name; default the one :data:`EXTRAS` lists for the package.

    Returns
    -------
    ModuleType
        The imported module.
    """
    top = module.split(".", 1)[0]
    label, default_extra = EXTRAS.get(top, (top, "train"))
    try:
        __import__(module)  # not importlib: a test that blocks builtins.__import__ must see it
    except ImportError as exc:
        raise MissingExtraError(
            f"{what} needs {label}, which is not installed ({exc}); install it with: "
            f"{install_hint(extra or default_extra)}",
            name=top,
        ) from None
    return sys.modules[module]


def tqdm(*args: Any, **kwargs: Any) -> Any:
    """``tqdm.auto.tqdm(*args, **kwargs)``: a progress bar (the ``train`` extra)."""
    return require("tqdm.auto", "a progress bar (progress=True)").tqdm(*args, **kwargs)
