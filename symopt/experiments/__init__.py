"""Reproductions of the seed experiments, run as ``symopt experiment NAME [--quick]``.

Each experiment is a module of this package with

* ``DESCRIPTION``: one line;
* ``run(results_dir: Path, quick: bool, seed: int) -> Path``: trains, writes the raw
  results (every seed separately, JSON or SQLite) and returns their path;
* ``plot(results: Path, figures_dir: Path) -> list[Path]``: PNG figures from the
  raw results alone, so figures can be redrawn without training again;
* ``summarize(results: Path) -> str``: the result stated in numbers.

``--quick`` is a seconds-long version for the test suite; without it the experiment
runs the seed's full protocol.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

__all__ = ["EXPERIMENTS", "get_experiment", "run_experiment"]

# name -> module in this package (imported on demand: some need optional packages)
EXPERIMENTS: dict[str, str] = {
    "trajectories": "trajectories",
    "gradcheck": "gradcheck",
    "mnist-optimizers": "mnist_optimizers",
    "mnist-iterations": "mnist_iterations",
    "weight-init": "weight_init",
    "batchnorm": "batchnorm",
    "overfitting": "overfitting",
    "hyperparameter-search": "hyperparameter_search",
}


def get_experiment(name: str) -> ModuleType:
    """The module implementing experiment ``name``."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    try:
        return importlib.import_module(f"{__name__}.{EXPERIMENTS[name]}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(__name__):
            raise ValueError(f"experiment {name!r} is not implemented yet") from None
        raise


def run_experiment(
    name: str,
    *,
    quick: bool = False,
    seed: int = 0,
    results_dir: Path = Path("experiments/results"),
    figures_dir: Path = Path("experiments/figures"),
    plot_only: bool = False,
) -> tuple[Path, list[Path], str]:
    """Run (unless ``plot_only``), plot and summarise one experiment."""
    module = get_experiment(name)
    results_dir, figures_dir = Path(results_dir), Path(figures_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    if plot_only:
        results = module.results_path(results_dir, quick)
        if not results.exists():
            raise FileNotFoundError(f"no results for {name!r} at {results}; run it first without --plot-only")
    else:
        results = module.run(results_dir, quick=quick, seed=seed)
    figures = module.plot(results, figures_dir)
    return results, figures, module.summarize(results)
