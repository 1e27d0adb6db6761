"""The batchnorm experiment (--quick) on real MNIST: curves for every scale, the epoch-0
accuracy against a NumPy forward pass, figures from the results file alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import symopt  # noqa: F401
from symopt.data import load_mnist, subset
from symopt.experiments import batchnorm as bn
from symopt.experiments import run_experiment
from symopt.experiments._common import read_json

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick(real_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], str]:
    out = tmp_path_factory.mktemp("batchnorm")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SYMOPT_DATA", str(real_mnist_dir))
        return run_experiment("batchnorm", quick=True, results_dir=out, figures_dir=out)


def test_curves_for_every_scale(quick: tuple[Path, list[Path], str]) -> None:
    res = read_json(quick[0])
    cfg = res["config"]
    assert len(res["runs"]) == len(cfg["scales"]) * len(cfg["seeds"])
    assert sorted(r["scale_index"] for r in res["runs"]) == list(range(len(cfg["scales"])))
    for r in res["runs"]:
        assert r["scale"] == cfg["scales"][r["scale_index"]]
        for net in ("bn", "no_bn"):
            acc = np.asarray(r[net]["train_accuracy"])
            assert acc.shape == (cfg["epochs"] + 1,)
            assert np.all((acc >= 0) & (acc <= 1))


def test_epoch_zero_matches_numpy_forward(quick: tuple[Path, list[Path], str], real_mnist_dir: Path) -> None:
    """Before training, the compiled evaluation equals a NumPy forward pass with the reset weights
    (BN in evaluation mode at its reset state: running mean 0, variance 1, gamma 1, beta 0)."""
    res = read_json(quick[0])
    cfg = res["config"]
    seed = cfg["seeds"][0]
    data = subset(load_mnist(real_mnist_dir), cfg["n_train"], seed, n_test=1)
    x = data.x_train.astype(np.float64)
    sizes = cfg["sizes"]
    for r in res["runs"]:
        if r["scale"] < 0.01:  # logits below float32 resolution make argmax ties arbitrary
            continue
        rng = np.random.default_rng([seed, 0])
        weights = [rng.standard_normal((a, b)) * r["scale"] for a, b in zip(sizes[:-1], sizes[1:])]
        for net in ("bn", "no_bn"):
            h = x
            for w in weights[:-1]:
                h = h @ w
                if net == "bn":
                    h = h / np.sqrt(1.0 + 1e-5)
                h = np.maximum(h, 0.0)
            expected = np.mean(np.argmax(h @ weights[-1], axis=1) == data.y_train)
            assert r[net]["train_accuracy"][0] == pytest.approx(expected, abs=2.0 / cfg["n_train"])


def test_bn_trains_at_a_small_scale(quick: tuple[Path, list[Path], str]) -> None:
    """At std 0.0464 the plain net's activations vanish; BN's do not, so its loss falls."""
    res = read_json(quick[0])
    r = next(r for r in res["runs"] if abs(r["scale"] - 0.0464) < 1e-3)
    bn_loss, plain_loss = r["bn"]["train_loss"], r["no_bn"]["train_loss"]
    assert bn_loss[-1] < bn_loss[0] - 0.05
    assert abs(plain_loss[-1] - plain_loss[0]) < 0.05


def test_figures_and_plot_only(quick: tuple[Path, list[Path], str], tmp_path: Path) -> None:
    results, figures, summary = quick
    assert len(figures) == 1 and figures[0].read_bytes()[:8] == PNG
    redrawn = bn.plot(results, tmp_path)
    assert redrawn[0].read_bytes()[:8] == PNG
    assert "of 4 weight scales" in summary
