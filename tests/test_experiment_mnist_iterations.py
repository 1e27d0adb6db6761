"""The mnist-iterations experiment: quick run checked against a NumPy forward/backward pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from symopt.experiments import _common
from symopt.experiments import mnist_iterations as mi
from symopt.experiments import run_experiment
from symopt.nn import MLP


@pytest.fixture(scope="module")
def quick(real_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SYMOPT_DATA", str(real_mnist_dir))
    out = tmp_path_factory.mktemp("mnist_iterations")
    try:
        results, figures, summary = run_experiment("mnist-iterations", quick=True, results_dir=out, figures_dir=out)
        data = _common.mnist_subset(mi.QUICK["n_train"], mi.QUICK["n_test"], seed=0)
        yield results, figures, summary, data
    finally:
        mp.undo()


def _numpy_loss_and_grads(params: list[np.ndarray], x: np.ndarray, y: np.ndarray):
    """Cross-entropy of a ReLU MLP and its gradients by hand-written backpropagation (float64)."""
    weights = [np.asarray(p, dtype=np.float64) for p in params]
    acts, pre = [x.astype(np.float64)], []
    h = acts[0]
    layers = len(weights) // 2
    for k in range(layers):
        z = h @ weights[2 * k] + weights[2 * k + 1]
        pre.append(z)
        h = np.maximum(z, 0) if k < layers - 1 else z
        acts.append(h)
    logits = acts[-1]
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(y)
    loss = -logp[np.arange(n), y].mean()
    d = np.exp(logp)
    d[np.arange(n), y] -= 1
    d /= n
    grads: list[np.ndarray] = [None] * len(weights)  # type: ignore[list-item]
    for k in reversed(range(layers)):
        grads[2 * k] = acts[k].T @ d
        grads[2 * k + 1] = d.sum(axis=0)
        if k:
            d = (d @ weights[2 * k].T) * (pre[k - 1] > 0)
    return loss, grads


def test_quick_matches_numpy_reference(quick):
    results, figures, summary, data = quick
    doc = json.loads(results.read_text())
    assert set(doc["runs"]) == {"sgd/0", "adam/0"}
    assert doc["hyperparameters"]["sgd"]["learning_rate"] == 0.01
    assert doc["hyperparameters"]["adam"]["epsilon"] == 1e-7
    n_iter = mi.QUICK["iterations"]
    batch = np.random.default_rng(0).integers(0, mi.QUICK["n_train"], size=(n_iter, mi.BATCH_SIZE))[0]
    params = [p.get_value() for p in MLP(mi.SIZES, seed=0).params]
    x, y = data.x_train[batch], data.y_train[batch]
    loss0, grads = _numpy_loss_and_grads(params, x, y)
    for name in ("sgd", "adam"):
        run = doc["runs"][f"{name}/0"]
        assert len(run["loss_after"]) == n_iter and np.isfinite(run["loss_after"]).all()
        assert run["initial_loss"] == pytest.approx(loss0, rel=1e-5)
    # one SGD step (lr 0.01) in NumPy, then the loss on the same batch: the seeds' recorded value
    stepped = [p - 0.01 * g for p, g in zip(params, grads)]
    loss1, _ = _numpy_loss_and_grads(stepped, x, y)
    assert doc["runs"]["sgd/0"]["loss_after"][0] == pytest.approx(loss1, rel=1e-5, abs=1e-6)
    # one Adam step moves every weight by about lr * sign(g) (m_hat / sqrt(v_hat) = sign(g) at t = 1)
    stepped = [p - 1e-3 * np.sign(g) * (np.abs(g) / (np.abs(g) + 1e-7)) for p, g in zip(params, grads)]
    loss1, _ = _numpy_loss_and_grads(stepped, x, y)
    assert doc["runs"]["adam/0"]["loss_after"][0] == pytest.approx(loss1, rel=1e-4)
    # training helps, and Adam beats SGD within 60 iterations (as in the seeds)
    table = {r["optimizer"]: r for r in mi.table(results)}
    assert table["adam"]["final_loss_mean"] < table["sgd"]["final_loss_mean"] < loss0
    assert "Adam" in summary and "SGD" in summary


def test_figures_from_results_alone(quick, tmp_path):
    results, figures, *_ = quick
    assert len(figures) == 1 and figures[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = mi.plot(results, tmp_path)
    assert again[0].exists() and again[0].stat().st_size > 10_000


def test_smooth():
    values = np.random.default_rng(0).normal(size=50)
    out = mi.smooth(values)
    assert out.shape == values.shape
    np.testing.assert_allclose(mi.smooth(np.full(30, 2.5)), 2.5)
    w = np.kaiser(11, 2.0)
    np.testing.assert_allclose(out[20], (values[15:26] * w).sum() / w.sum())
    # reflected ends: the first value is a weighted mean of values[0..5] with values[1..5] counted twice
    expected = (w[5] * values[0] + sum(w[5 + k] * 2 * values[k] for k in range(1, 6))) / w.sum()
    np.testing.assert_allclose(out[0], expected)
