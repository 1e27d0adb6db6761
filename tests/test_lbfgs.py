"""symopt.LBFGS against torch.optim.LBFGS trajectories recorded in ``tests/lbfgs_torch.json``
(written by ``tests/lbfgs_torch_fixture.py``; these tests do not need torch), and against
known minima."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import symopt

FIXTURE = json.loads((Path(__file__).resolve().parent / "lbfgs_torch.json").read_text())
CASES = FIXTURE["cases"]
# float64 iterates of two implementations of the same algorithm: rounding differs only
# in the order of dot-product sums (BLAS vs NumPy), far below this.
RTOL = 1e-6


def _problem(case: dict) -> tuple[dict[str, pytensor.compile.SharedVariable], object]:
    """The case's loss written in PyTensor (the fixture script writes it in torch)."""
    params = {k: pytensor.shared(np.asarray(v, dtype=np.float64), name=k) for k, v in case["init"].items()}
    if case["problem"] == "rosenbrock":
        w = params["w"]
        loss = 100 * (w[1] - w[0] ** 2) ** 2 + (1 - w[0]) ** 2
    else:
        data = FIXTURE["logistic_data"]
        X, y = np.asarray(data["X"]), np.asarray(data["y"])
        z = pt.dot(X, params["w"]) + params["b"]
        loss = (pt.softplus(z) - y * z).mean() + 0.5 * 0.01 * (params["w"] ** 2).sum()
    return params, loss


@pytest.fixture(scope="module", params=sorted(CASES))
def compiled(request):
    case = CASES[request.param]
    params, loss = _problem(case)
    opt = symopt.LBFGS(list(params.values()), **case["kwargs"])
    step = pytensor.function([], loss, updates=opt.updates(loss))
    return request.param, case, params, opt, step


def _replay(case, params, opt, step):
    got = {"loss": [], "params": {k: [] for k in params}, "n_iter": [], "func_evals": []}
    for _ in range(case["steps"]):
        got["loss"].append(float(step()))
        for k, p in params.items():
            got["params"][k].append(p.get_value())
        got["n_iter"].append(opt.n_iter)
        got["func_evals"].append(opt.func_evals)
    return got


def test_matches_torch_step_for_step(compiled):
    name, case, params, opt, step = compiled
    want = case["torch"]
    got = _replay(case, params, opt, step)
    for k in params:
        np.testing.assert_allclose(np.array(got["params"][k]), np.array(want["params"][k]), rtol=RTOL, atol=1e-12,
                                   err_msg=f"{name}: parameter {k}")
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=RTOL, atol=1e-12, err_msg=f"{name}: loss")
    # The same iterations and evaluations: the same branches of the line search were taken.
    assert got["n_iter"] == want["n_iter"]
    assert got["func_evals"] == want["func_evals"]
    assert opt.iterations.get_value() == case["steps"]


def test_state_round_trip_resumes_exactly(compiled, tmp_path):
    """Save after a few steps, continue; reload and continue again: the same numbers."""
    name, case, params, opt, step = compiled
    initial = {k: np.asarray(v, dtype=np.float64) for k, v in case["init"].items()}
    for k, p in params.items():
        p.set_value(initial[k])
    fresh = symopt.LBFGS(list(params.values()), **case["kwargs"]).state_dict()
    opt.load_state_dict(fresh)
    for _ in range(3):
        step()
    opt.save(tmp_path / "lbfgs.npz")
    saved = {k: p.get_value() for k, p in params.items()}
    first = [float(step()) for _ in range(3)]
    after = {k: p.get_value() for k, p in params.items()}
    opt.load(tmp_path / "lbfgs.npz")
    for k, p in params.items():
        p.set_value(saved[k])
    assert [float(step()) for _ in range(3)] == first
    for k, p in params.items():
        np.testing.assert_array_equal(p.get_value(), after[k])
    want = case["torch"]["params"]
    for k in params:  # and these are torch's 6th iterates
        if len(want[k]) < 6:
            continue
        np.testing.assert_allclose(after[k], np.array(want[k][5]), rtol=RTOL, atol=1e-12)


@pytest.mark.parametrize("dtype, tol, tolerances", [
    ("float64", 1e-7, {"tolerance_grad": 1e-12, "tolerance_change": 1e-15}),
    ("float32", 1e-3, {}),
])
def test_convex_quadratic_reaches_its_minimum(dtype, tol, tolerances):
    """f(x, c) = 1/2 x'Ax - b'x + 1/2 (c - 2)^2 with A SPD: minimum at A^{-1} b and c = 2."""
    rng = np.random.default_rng(3)
    Q = rng.normal(size=(6, 6))
    A = Q @ Q.T + 0.5 * np.eye(6)
    b = rng.normal(size=6)
    x = pytensor.shared(np.zeros(6, dtype), name="x")
    c = pytensor.shared(np.zeros((1, 1), dtype), name="c")
    loss = 0.5 * pt.dot(x, pt.dot(A.astype(dtype), x)) - pt.dot(b.astype(dtype), x) + 0.5 * ((c - 2) ** 2).sum()
    opt = symopt.LBFGS([x, c], line_search="strong_wolfe", history_size=5, **tolerances)
    step = pytensor.function([], loss, updates=opt.updates(loss))
    for _ in range(5):
        step()
    assert x.get_value().dtype == dtype and c.get_value().dtype == dtype
    np.testing.assert_allclose(x.get_value(), np.linalg.solve(A, b), rtol=tol, atol=tol)
    np.testing.assert_allclose(c.get_value(), [[2.0]], rtol=tol)


def test_step_at_a_stationary_point_changes_nothing_but_the_count():
    """torch returns at once when max|g| <= tolerance_grad: one evaluation, no iteration."""
    w = pytensor.shared(np.array([1.0, 1.0]), name="w")
    loss = 100 * (w[1] - w[0] ** 2) ** 2 + (1 - w[0]) ** 2  # Rosenbrock's minimum: g = 0
    opt = symopt.LBFGS([w], line_search="strong_wolfe", max_iter=2)
    step = pytensor.function([], loss, updates=opt.updates(loss))
    assert float(step()) == 0.0 and float(step()) == 0.0
    np.testing.assert_array_equal(w.get_value(), [1.0, 1.0])
    assert (opt.n_iter, opt.func_evals, int(opt.iterations.get_value())) == (0, 2, 2)
    np.testing.assert_array_equal(opt.state_dict()["state"]["old_dirs"], 0.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_iter": 0}, "max_iter"),
        ({"max_iter": 2.5}, "max_iter"),
        ({"max_eval": 0}, "max_eval"),
        ({"history_size": 0}, "history_size"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"tolerance_grad": float("nan")}, "tolerance_grad"),
        ({"line_search": "backtracking"}, "line_search"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    w = pytensor.shared(np.zeros(2))
    with pytest.raises(ValueError, match=match):
        symopt.LBFGS([w], **kwargs)


def test_bad_params():
    with pytest.raises(ValueError, match="int64"):
        symopt.LBFGS([pytensor.shared(np.zeros(2, "int64"), name="n")])
    with pytest.raises(ValueError, match="one dtype"):
        symopt.LBFGS([pytensor.shared(np.zeros(2)), pytensor.shared(np.zeros(2, "float32"))])
    with pytest.raises(ValueError, match="non-empty"):
        symopt.LBFGS([])
    w = pytensor.shared(np.zeros(2))
    with pytest.raises(ValueError, match="twice"):
        symopt.LBFGS([w, w])
    with pytest.raises(ValueError, match="needs the loss"):
        symopt.LBFGS([w]).updates(None)


def test_load_refuses_another_history_size(tmp_path):
    w = pytensor.shared(np.zeros(2))
    symopt.LBFGS([w], history_size=3).save(tmp_path / "s.npz")
    other = symopt.LBFGS([w], history_size=4)
    before = other.state_dict()
    with pytest.raises(ValueError, match="old_dirs"):
        other.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(other.state_dict()["state"]["old_dirs"], before["state"]["old_dirs"])


# ---------------------------------------------------------------- the registry's full-batch kind
def test_registered_under_lbfgs_as_the_full_batch_kind():
    """symopt.get("lbfgs") is LBFGS, of kind "full-batch, needs loss": outside rules(), refused by get_rule."""
    from symopt.registry import FULL_BATCH, RULE, display_name, kind, rules

    assert symopt.get("LBFGS") is symopt.LBFGS and symopt.OPTIMIZERS["lbfgs"] is symopt.LBFGS
    assert kind("lbfgs") == FULL_BATCH and kind("adam") == RULE and display_name("lbfgs") == "LBFGS"
    assert "lbfgs" not in rules() and "adam" in rules() and set(rules()) | {"lbfgs"} == set(symopt.OPTIMIZERS)
    assert symopt.LBFGS.hyperparameters == {"learning_rate": 1.0, "max_iter": 20, "max_eval": None, "tolerance_grad": 1e-7,
                                            "tolerance_change": 1e-9, "history_size": 100, "line_search": None}
    assert symopt.LBFGS.reference == "torch.optim.LBFGS(line_search_fn='strong_wolfe')"
    with pytest.raises(symopt.NotARuleError, match=r"^here: 'lbfgs' \(symopt.LBFGS\) is not a per-parameter rule "
                                                   r"\(its kind: full-batch, needs loss\)"):
        symopt.get_rule("lbfgs", "here")
    assert symopt.get_rule("adam") is symopt.Adam
    with pytest.raises(symopt.UnknownOptimizerError):
        symopt.get_rule("lbfgss")
    # SAM's descent step needs a rule
    with pytest.raises(ValueError, match="SAM's base: 'lbfgs' .* is not a per-parameter rule"):
        symopt.SAM([pytensor.shared(np.zeros(2))], base="lbfgs")


def test_functional_form_matches_torch():
    """symopt.updates.lbfgs(loss, params, ...) and its partial replay torch's strong-Wolfe trajectory."""
    from symopt import updates as U

    case = CASES["rosenbrock_wolfe"]
    params, loss = _problem(case)
    made = U.lbfgs(**case["kwargs"])  # PyMC's form: no loss and params -> a partial
    step = pytensor.function([], loss, updates=made(loss, list(params.values())))
    got = [float(step()) for _ in range(case["steps"])]
    np.testing.assert_allclose(got, case["torch"]["loss"], rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(params["w"].get_value(), case["torch"]["params"]["w"][-1], rtol=RTOL, atol=1e-12)
    names = list(inspect.signature(U.lbfgs).parameters)
    assert names == ["loss_or_grads", "params", "learning_rate", "max_iter", "max_eval", "tolerance_grad",
                     "tolerance_change", "history_size", "line_search", "allow_unused"]
    assert "LBFGS" in U.lbfgs.__doc__ and "not a list of gradients" in U.lbfgs.__doc__


def test_functional_form_refuses_gradients():
    from symopt import updates as U

    w = pytensor.shared(np.zeros(2), name="w")
    with pytest.raises(TypeError, match="symopt.updates.lbfgs: LBFGS needs the loss itself .* not a list of gradients"):
        U.lbfgs([2 * w], [w])
    with pytest.raises(TypeError, match="symopt.updates.lbfgs: .*unexpected keyword argument 'clip_norm'"):
        U.lbfgs((w**2).sum(), [w], clip_norm=1.0)
