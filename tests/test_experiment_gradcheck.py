"""The `gradcheck` experiment (quick version) on real MNIST, against a NumPy backprop reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from symopt.experiments import get_experiment, run_experiment


@pytest.fixture(scope="module")
def quick(tmp_path_factory, real_mnist_dir):
    out = tmp_path_factory.mktemp("gradcheck")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SYMOPT_DATA", str(real_mnist_dir))
        results, figures, summary = run_experiment("gradcheck", quick=True, results_dir=out, figures_dir=out)
    return {"results": results, "figures": figures, "summary": summary, "data": json.loads(results.read_text())}


def test_structure_and_float64_agreement(quick):
    data = quick["data"]
    assert data["quick"] is True and data["batch"] == 3
    (run,) = data["runs"]
    assert (run["activation"], run["dtype"], run["seed"]) == ("relu", "float64", 0)
    assert len(run["batch_indices"]) == 3 and all(0 <= i < 60000 for i in run["batch_indices"])
    # weights N(0, 0.01^2): the softmax is almost uniform, so the loss is close to ln 10
    assert run["loss"] == pytest.approx(math.log(10), abs=0.05)
    sizes = {"W1": 784 * 50, "b1": 50, "W2": 500, "b2": 10}
    assert set(run["params"]) == set(sizes)
    for name, entry in run["params"].items():
        assert entry["size"] == sizes[name]
        assert entry["n_checked"] == min(sizes[name], data["n_samples"])
        # backprop agrees with central differences in float64, by both metrics and both loops
        assert entry["max_rel_error"] < 1e-4
        assert entry["max_rel_error_loop"] < 1e-4
        assert entry["norm_rel_error"] < 1e-6
        assert entry["mean_abs_diff"] < 1e-8
        assert entry["max_abs_diff"] >= entry["mean_abs_diff"]
    assert run["params"]["b2"]["n_nonzero_grad"] == 10  # every logit's bias gets a gradient
    t = run["timing"]
    assert t["n_params"] == 784 * 50 + 50 + 500 + 10
    assert t["numerical_full_s_estimate"] > t["backprop_s"]


def test_check_grad_samples_the_documented_indices():
    from symopt.experiments.gradcheck import sample_indices

    rng = np.random.default_rng(3)
    expected_first = rng.choice(39200, 7, replace=False)
    got = sample_indices([39200, 50, 500, 10], 7, seed=3)
    np.testing.assert_array_equal(got[0], expected_first)
    np.testing.assert_array_equal(got[1], rng.choice(50, 7, replace=False))
    assert [len(i) for i in got] == [7, 7, 7, 7]
    assert list(sample_indices([5], 7, seed=3)[0]) == [0, 1, 2, 3, 4]


def test_pytensor_gradient_matches_numpy_backprop(real_mnist_dir):
    """The graph the experiment checks, against hand-written NumPy backprop and NumPy central differences."""
    import pytensor
    import pytensor.tensor as pt

    from symopt.data import load_mnist
    from symopt.experiments.gradcheck import INIT_STD, SIZES
    from symopt.nn import MLP, cross_entropy

    data = load_mnist(real_mnist_dir)
    idx = np.sort(np.random.default_rng(0).choice(60000, 3, replace=False))
    X, Y = data.x_train[idx].astype("float64"), data.y_train[idx]
    model = MLP(list(SIZES), activation="relu", init=INIT_STD, seed=0, dtype="float64")
    W1, b1, W2, b2 = (p.get_value() for p in model.params)
    x, y = pt.matrix("x", dtype="float64"), pt.vector("y", dtype="int64")
    loss = cross_entropy(model.output(x, train=False), y)
    got = pytensor.function([x, y], pytensor.grad(loss, model.params))(X, Y)

    def forward(W1, b1, W2, b2):
        pre = X @ W1 + b1
        h = np.maximum(pre, 0)
        z = h @ W2 + b2
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -logp[np.arange(3), Y].mean(), pre, h, np.exp(logp)

    L, pre, h, prob = forward(W1, b1, W2, b2)
    dz = prob.copy()
    dz[np.arange(3), Y] -= 1
    dz /= 3
    dh = (dz @ W2.T) * (pre > 0)
    expected = [X.T @ dh, dh.sum(0), h.T @ dz, dz.sum(0)]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-15)
    # NumPy central differences on the largest W1 gradients agree with backprop to ~1e-7
    flat = np.argsort(-np.abs(expected[0]).ravel())[:5]
    for i in flat:
        Wp, Wm = W1.copy().ravel(), W1.copy().ravel()
        Wp[i] += 1e-6
        Wm[i] -= 1e-6
        num = (forward(Wp.reshape(W1.shape), b1, W2, b2)[0] - forward(Wm.reshape(W1.shape), b1, W2, b2)[0]) / 2e-6
        assert num == pytest.approx(expected[0].ravel()[i], rel=1e-5)


def test_figure_and_summary_from_results_alone(quick, tmp_path):
    import matplotlib.image as mpimg

    module = get_experiment("gradcheck")
    (figure,) = quick["figures"]
    (redrawn,) = module.plot(quick["results"], tmp_path)
    for path in (figure, redrawn):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert mpimg.imread(path).shape[0] > 200
    summary = module.summarize(quick["results"])
    assert summary == quick["summary"]
    for word in ("W1", "b1", "W2", "b2", "float64", "backprop"):
        assert word in summary
