"""What the experiments share: :mod:`symopt.report`'s results files, machine description and
figures, and seeded MNIST subsets."""

from __future__ import annotations

from typing import Any

from ..report import cpu_model, figure, machine_info, read_json, save_png, write_json

__all__ = ["write_json", "read_json", "machine_info", "cpu_model", "figure", "save_png", "mnist_subset"]


def mnist_subset(n_train: int, n_test: int | None, seed: int) -> Any:
    """A seeded random subset of real MNIST (``n_test=None`` keeps the full test set)."""
    from ..data import load_mnist, subset

    return subset(load_mnist(), n_train, seed, n_test=n_test)
