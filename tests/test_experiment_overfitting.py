"""The overfitting experiment (--quick) on real MNIST: train >= test accuracy without
regularisation, weight decay shrinks the weights, epoch 0 against a NumPy forward pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import symopt  # noqa: F401
from symopt.data import load_mnist, subset
from symopt.experiments import overfitting as of
from symopt.experiments import run_experiment
from symopt.experiments._common import read_json

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick(real_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], str]:
    out = tmp_path_factory.mktemp("overfitting")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SYMOPT_DATA", str(real_mnist_dir))
        return run_experiment("overfitting", quick=True, results_dir=out, figures_dir=out)


def _runs(res: dict) -> dict:
    return {r["setting"]: r for r in res["runs"]}


def test_structure(quick: tuple[Path, list[Path], str]) -> None:
    res = read_json(quick[0])
    cfg = res["config"]
    runs = _runs(res)
    assert sorted(runs) == sorted(of.SETTINGS) and len(res["runs"]) == 3 * len(cfg["seeds"])
    for r in runs.values():
        for key in ("train_accuracy", "test_accuracy", "weight_sq_norm"):
            assert len(r[key]) == cfg["epochs"] + 1
        assert len(r["train_loss"]) == cfg["epochs"]


def test_no_regularisation_overfits(quick: tuple[Path, list[Path], str]) -> None:
    r = _runs(read_json(quick[0]))["none"]
    assert r["train_accuracy"][-1] >= r["test_accuracy"][-1]
    assert r["train_accuracy"][-1] > r["train_accuracy"][0] + 0.2  # it learns


def test_weight_decay_shrinks_the_weights(quick: tuple[Path, list[Path], str]) -> None:
    runs = _runs(read_json(quick[0]))
    none, wd = runs["none"]["weight_sq_norm"], runs["weight_decay"]["weight_sq_norm"]
    assert none[0] == pytest.approx(wd[0])  # same initial weights
    assert wd[-1] < none[-1]
    assert wd[-1] < wd[0]


def test_epoch_zero_matches_numpy_forward(quick: tuple[Path, list[Path], str], real_mnist_dir: Path) -> None:
    """All settings start from the same He weights; their accuracy equals a NumPy forward pass."""
    res = read_json(quick[0])
    cfg = res["config"]
    seed = cfg["seeds"][0]
    data = subset(load_mnist(real_mnist_dir), cfg["n_train"], seed, n_test=cfg["n_test"])
    rng = np.random.default_rng([seed, 0])
    sizes = cfg["sizes"]
    weights = [
        (rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32).astype(np.float64)
        for a, b in zip(sizes[:-1], sizes[1:])
    ]

    def accuracy(x: np.ndarray, y: np.ndarray) -> float:
        h = x.astype(np.float64)
        for w in weights[:-1]:
            h = np.maximum(h @ w, 0.0)
        return float(np.mean(np.argmax(h @ weights[-1], axis=1) == y))

    for r in res["runs"]:
        assert r["train_accuracy"][0] == pytest.approx(accuracy(data.x_train, data.y_train), abs=1e-9 + 1 / cfg["n_train"])
        assert r["test_accuracy"][0] == pytest.approx(accuracy(data.x_test, data.y_test), abs=2 / len(data.y_test))


def test_figures_and_plot_only(quick: tuple[Path, list[Path], str], tmp_path: Path) -> None:
    results, figures, summary = quick
    assert len(figures) == 1 and figures[0].read_bytes()[:8] == PNG
    assert of.plot(results, tmp_path)[0].read_bytes()[:8] == PNG
    assert "gap" in summary
