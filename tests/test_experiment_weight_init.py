"""The weight-init experiment (--quick) on real MNIST: histograms against a NumPy forward pass,
loss curves, figures from the results file alone."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import symopt  # noqa: F401  (before numpy-heavy work: one BLAS thread)
from symopt.experiments import run_experiment
from symopt.experiments import weight_init as wi
from symopt.experiments._common import read_json

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick(real_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], str]:
    out = tmp_path_factory.mktemp("weight_init")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SYMOPT_DATA", str(real_mnist_dir))
        return run_experiment("weight-init", quick=True, results_dir=out, figures_dir=out)


def _numpy_forward(x: np.ndarray, weights: list[np.ndarray], activation: str) -> list[np.ndarray]:
    acts = []
    for w in weights:
        a = x @ w
        x = 1.0 / (1.0 + np.exp(-a)) if activation == "sigmoid" else np.maximum(a, 0.0)
        acts.append(x)
    return acts


def test_histograms_match_numpy_forward_pass(quick: tuple[Path, list[Path], str]) -> None:
    results, _, _ = quick
    res = read_json(results)
    seed = res["config"]["seeds"][0]
    cases = res["histograms"][str(seed)]
    assert [(c["activation"], c["init"]) for c in cases] == [(a, l) for a, l, _ in wi.HIST_CASES]
    x = wi.histogram_inputs(seed)
    assert x.shape == (1000, 100)
    for k, case in enumerate(cases):
        weights = wi.histogram_weights(seed, k)
        # the initialisers' scales: std 1 / 0.01, Xavier sqrt(1/100), He sqrt(2/100)
        expected_std = {"std 1": 1.0, "std 0.01": 0.01, "Xavier": 0.1, "He": math.sqrt(0.02)}[case["init"]]
        assert np.std(np.stack(weights)) == pytest.approx(expected_std, rel=0.02)
        acts = _numpy_forward(x, weights, case["activation"])
        assert len(case["layers"]) == 5
        for layer, a in zip(case["layers"], acts):
            counts, _ = np.histogram(a, bins=30, range=(0.0, 1.0))
            np.testing.assert_array_equal(layer["counts"], counts)
            assert layer["std"] == pytest.approx(a.std(), rel=1e-9)
            assert layer["frac_zero"] == pytest.approx(np.mean(a == 0.0))


def test_histograms_show_the_seed_effects(quick: tuple[Path, list[Path], str]) -> None:
    res = read_json(quick[0])
    cases = {(c["activation"], c["init"]): c["layers"] for c in res["histograms"]["0"]}
    # sigmoid with std 1 saturates: most values within 0.02 of 0 or 1
    assert all(l["frac_below_0.02"] + l["frac_above_0.98"] > 0.4 for l in cases[("sigmoid", "std 1")])
    # sigmoid with std 0.01 collapses around 0.5
    assert all(abs(l["mean"] - 0.5) < 0.01 and l["std"] < 0.03 for l in cases[("sigmoid", "std 0.01")])
    # ReLU: std 0.01 vanishes layer by layer, He keeps the spread
    small = [l["std"] for l in cases[("relu", "std 0.01")]]
    he = [l["std"] for l in cases[("relu", "He")]]
    assert small[-1] < 1e-4 * small[0]
    assert he[-1] > 0.7 * he[0]


def test_loss_curves(quick: tuple[Path, list[Path], str]) -> None:
    res = read_json(quick[0])
    iterations = res["config"]["iterations"]
    runs = {r["init"]: r for r in res["runs"]}
    assert sorted(runs) == ["He", "Xavier", "std 0.01"]
    for r in runs.values():
        assert len(r["train_loss"]) == iterations and np.all(np.isfinite(r["train_loss"]))
        assert 0.0 <= r["test_accuracy"] <= 1.0
    # tiny weights give near-zero logits: the loss stays at the uniform-prediction value ln 10
    assert np.mean(runs["std 0.01"]["train_loss"]) == pytest.approx(math.log(10), abs=0.01)
    # He starts learning within the quick run, std 0.01 does not
    assert np.mean(runs["He"]["train_loss"][-10:]) < math.log(10) - 0.05


def test_figures_and_plot_only(quick: tuple[Path, list[Path], str], tmp_path: Path) -> None:
    results, figures, summary = quick
    assert len(figures) == 2
    for path in figures:
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000
    redrawn = wi.plot(results, tmp_path)
    assert [p.name for p in redrawn] == [p.name for p in figures]
    assert "He" in summary and "std 0.01" in summary
