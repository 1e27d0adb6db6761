"""The rules of :mod:`symopt.rules_contrib` against the NumPy references in :mod:`tests.reference`.

``tests/test_rules.py`` runs them on its shared problem (a 3x4 matrix and a vector) where
they fit; here: parameter shapes that problem lacks (3-D and 0-d tensors, tall and wide
matrices), seed stacks (per-seed reductions equal separate runs), weight-decay masks,
float32, bad hyperparameters, and Schedule-Free's evaluation parameters. Every compiled
function is built once per module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import symopt

from .reference import REFERENCES

STEPS = 40
_rng = np.random.default_rng(20261203)


def relative_error(actual: np.ndarray, desired: np.ndarray) -> float:
    """max |a - r| / (|r| + 1e-3 max|r|): float64 round-off is ~1e-13 here; 1e-9 is the bound."""
    desired = np.asarray(desired, dtype=np.float64)
    atol = 1e-3 * float(np.max(np.abs(desired), initial=0.0)) or np.finfo(np.float64).tiny
    return float(np.max(np.abs(np.asarray(actual, np.float64) - desired) / (np.abs(desired) + atol), initial=0.0))


class Problem:
    """A fixed non-convex loss over parameters of given shapes, with a hand-derived gradient.

    ``loss = sum_k mean(tanh(p_k * A_k + B_k)**2)``: element-wise, so its gradient is
    ``2 A_k tanh(u) (1 - tanh(u)**2) / size`` in NumPy, independent of PyTensor's autodiff.
    """

    def __init__(self, shapes: list[tuple[int, ...]], seed: int = 0):
        rng = np.random.default_rng(seed)
        self.shapes = shapes
        self.A = [rng.uniform(0.5, 2.0, size=s) for s in shapes]
        self.B = [rng.normal(size=s) for s in shapes]
        self.start = [rng.normal(size=s) for s in shapes]

    def loss(self, params: list[Any], dtype: str) -> Any:
        return sum(pt.mean(pt.tanh(p * a.astype(dtype) + b.astype(dtype)) ** 2) for p, a, b in zip(params, self.A, self.B))

    def grads(self, values: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for p, a, b in zip(values, self.A, self.B):
            h = np.tanh(p * a + b)
            out.append((2.0 * a * h * (1.0 - h * h) / max(p.size, 1)).astype(p.dtype))
        return out


def compile_step(rule: str, problem: Problem, dtype: str = "float64", **kwargs: Any) -> tuple[Any, list[Any], Any]:
    params = [pytensor.shared(v.astype(dtype), name=f"p{i}") for i, v in enumerate(problem.start)]
    with pytensor.config.change_flags(floatX=dtype):
        loss = problem.loss(params, dtype)
    opt = symopt.get(rule)(params, **kwargs)
    return opt, params, pytensor.function([], [], updates=opt.updates(loss))


def run_against_reference(rule: str, problem: Problem, kwargs: dict[str, Any], steps: int = STEPS,
                          compiled: tuple[Any, list[Any], Any] | None = None) -> float:
    """Worst relative error of parameters and slots over ``steps`` steps (float64)."""
    opt, params, step = compiled or compile_step(rule, problem, **kwargs)
    reference = REFERENCES[rule]([v.copy() for v in problem.start], **kwargs)
    worst = 0.0
    for t in range(1, steps + 1):
        reference.step(problem.grads(reference.params))
        step()
        for i, p in enumerate(params):
            worst = max(worst, relative_error(p.get_value(), reference.params[i]))
            for slot, var in opt.state[i].items():
                assert var.get_value().shape == reference.state[i][slot].shape, f"{rule} {slot} shape"
                worst = max(worst, relative_error(var.get_value(), reference.state[i][slot]))
    moved = max(float(np.max(np.abs(p.get_value() - s))) for p, s in zip(params, problem.start))
    assert moved > 1e-3, f"{rule} barely moved ({moved:g}): the check would test nothing"
    return worst


# --------------------------------------------------------------------------- Adafactor
ADAFACTOR_SHAPES = [(2, 3, 4), (5, 2), ()]  # factored over the last two axes, tall matrix, scalar


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"learning_rate": 0.05, "beta2_decay": -0.6, "epsilon1": 1e-4, "epsilon2": 0.05, "d": 1.1, "weight_decay": 0.2}],
    ids=["defaults", "nondefault"],
)
def test_adafactor_matches_reference_on_3d_and_scalar(kwargs: dict[str, Any]) -> None:
    problem = Problem(ADAFACTOR_SHAPES)
    assert run_against_reference("adafactor", problem, kwargs) < 1e-9


def test_adafactor_slot_shapes() -> None:
    problem = Problem(ADAFACTOR_SHAPES)
    params = [pytensor.shared(v) for v in problem.start]
    opt = symopt.Adafactor(params)
    shapes = [{k: v.get_value().shape for k, v in s.items()} for s in opt.state]
    assert shapes == [
        {"row_var": (2, 3), "col_var": (2, 4), "variance": ()},
        {"row_var": (5,), "col_var": (2,), "variance": ()},
        {"row_var": (), "col_var": (), "variance": ()},
    ]


def test_adafactor_weight_decay_mask() -> None:
    """A masked parameter takes the step without decay (the reference run with weight_decay=0)."""
    problem = Problem([(4, 3), (3,)])
    params = [pytensor.shared(v.copy(), name=f"p{i}") for i, v in enumerate(problem.start)]
    opt = symopt.Adafactor(params, weight_decay=0.5, learning_rate=0.05, weight_decay_mask=[params[0]])
    step = pytensor.function([], [], updates=opt.updates(problem.loss(params, "float64")))
    decayed = REFERENCES["adafactor"]([problem.start[0].copy()], weight_decay=0.5, learning_rate=0.05)
    plain = REFERENCES["adafactor"]([problem.start[1].copy()], weight_decay=0.0, learning_rate=0.05)
    for _ in range(10):
        grads = problem.grads([decayed.params[0], plain.params[0]])
        decayed.step(grads[:1])
        plain.step(grads[1:])
        step()
    assert relative_error(params[0].get_value(), decayed.params[0]) < 1e-10
    assert relative_error(params[1].get_value(), plain.params[0]) < 1e-10


# --------------------------------------------------------------------------- Muon
MUON_SHAPES = [(3, 5), (6, 2)]  # wide, and tall (orthogonalised transposed)
MUON_NONDEFAULT = {"learning_rate": 0.02, "momentum": 0.8, "epsilon": 1e-3, "weight_decay": 0.05, "nesterov": False,
                   "ns_coefficients": (2.0, -1.5, 0.5), "ns_steps": 3, "adjust_lr_fn": "match_rms_adamw"}


@pytest.mark.parametrize(
    "kwargs", [{}, {"learning_rate": 0.02, "adjust_lr_fn": "original"}, MUON_NONDEFAULT], ids=["defaults", "lr", "nondefault"]
)
def test_muon_matches_reference(kwargs: dict[str, Any]) -> None:
    assert run_against_reference("muon", Problem(MUON_SHAPES), kwargs) < 1e-9


def test_muon_orthogonalises() -> None:
    """Enough Newton-Schulz steps with the cubic coefficients (1.5, -0.5, 0) give U V^T of the SVD."""
    rng = np.random.default_rng(3)
    g = rng.normal(size=(4, 7))
    W = pytensor.shared(np.zeros((4, 7)), name="W")
    opt = symopt.Muon([W], learning_rate=1.0, momentum=0.0, weight_decay=0.0, ns_coefficients=(1.5, -0.5, 0.0), ns_steps=60)
    pytensor.function([], [], updates=opt.updates(grads=[pt.constant(g)]))()
    u, _, vt = np.linalg.svd(g, full_matrices=False)
    np.testing.assert_allclose(-W.get_value(), u @ vt, atol=1e-8)


def test_muon_refuses_non_matrices_and_points_to_combine() -> None:
    W = pytensor.shared(np.ones((3, 4)), name="W")
    b = pytensor.shared(np.ones(4), name="b")
    with pytest.raises(ValueError, match=r"parameter 'b' \(index 1\) has shape \(4,\).*AdamW.*symopt\.combine"):
        symopt.Muon([W, b])
    stacked = pytensor.shared(np.ones((2, 4)), name="stacked_b")
    stacked.tag.seed_axis = True
    with pytest.raises(ValueError, match=r"'stacked_b'.*after its seed axis"):
        symopt.Muon([stacked])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ns_steps": 0}, "ns_steps must be an integer in"),
        ({"ns_steps": 2.5}, "ns_steps must be an integer in"),
        ({"ns_coefficients": (1.0, 2.0)}, "ns_coefficients must be three finite numbers"),
        ({"adjust_lr_fn": "rms"}, "adjust_lr_fn must be None, 'original' or 'match_rms_adamw'"),
        ({"momentum": 1.0}, "'momentum' must lie in"),
    ],
)
def test_muon_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    W = pytensor.shared(np.ones((3, 4)), name="W")
    with pytest.raises(ValueError, match=message):
        symopt.Muon([W], **kwargs)


def test_muon_converges_on_a_matrix_quadratic() -> None:
    """0.5 * sum(a * (W - C)**2): with a decaying rate Muon ends near C (start 4.1 away)."""
    rng = np.random.default_rng(5)
    a, centre = rng.uniform(0.5, 2.0, size=(4, 6)), rng.normal(size=(4, 6))
    W = pytensor.shared(np.zeros((4, 6)), name="W")
    opt = symopt.Muon([W], learning_rate=0.1, weight_decay=0.0)
    step = pytensor.function([], [], updates=opt.updates(0.5 * pt.sum(a * (W - centre) ** 2)))
    start = np.linalg.norm(centre)
    for rate in (0.1, 0.01, 0.001, 0.0001):
        opt.set_hyperparameter("learning_rate", rate)
        for _ in range(300):
            step()
    # Each step moves the singular values by ~lr; the last rate bounds the distance.
    assert np.linalg.norm(W.get_value() - centre) < 1e-3 < start


# --------------------------------------------------------------------------- Prodigy
PRODIGY_SHAPES = [(2, 3, 4), (5,), ()]  # the distance estimate sums over all of them


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"learning_rate": 0.7, "beta1": 0.8, "beta2": 0.99, "beta3": 0.95, "epsilon": 1e-4, "estim_lr0": 1e-3,
          "estim_lr_coef": 1.5, "weight_decay": 0.1, "safeguard_warmup": True}],
    ids=["defaults", "nondefault"],
)
def test_prodigy_matches_reference(kwargs: dict[str, Any]) -> None:
    assert run_against_reference("prodigy", Problem(PRODIGY_SHAPES), kwargs) < 1e-9


def test_prodigy_beta3_defaults_to_sqrt_beta2_at_construction() -> None:
    W = pytensor.shared(np.ones((2, 2)), name="W")
    b = pytensor.shared(np.ones(2), name="b")
    assert symopt.Prodigy([W]).get_hyperparameter("beta3") == pytest.approx(0.999**0.5, rel=1e-15)
    assert symopt.Prodigy([W], beta2=0.99).get_hyperparameter("beta3") == pytest.approx(0.99**0.5, rel=1e-15)
    assert symopt.Prodigy([W], beta2=0.99, beta3=0.5).get_hyperparameter("beta3") == 0.5
    grouped = symopt.Prodigy([{"params": [W]}, {"params": [b], "beta2": 0.9}], beta2=0.99)
    assert grouped.get_hyperparameter("beta3", group=0) == pytest.approx(0.99**0.5, rel=1e-15)
    assert grouped.get_hyperparameter("beta3", group=1) == pytest.approx(0.9**0.5, rel=1e-15)
    with pytest.raises(ValueError, match="beta2 follows a schedule; give beta3 explicitly"):
        symopt.Prodigy([W], beta2=symopt.schedules.LinearWarmup(peak=0.99, warmup_steps=10))


def test_prodigy_refuses_seed_stacks() -> None:
    stacked = pytensor.shared(np.ones((3, 2, 2)), name="S")
    stacked.tag.seed_axis = True
    assert symopt.Prodigy.stackable is False  # what bench-mnist and the stacked-grid tests read
    with pytest.raises(ValueError, match=r"^Prodigy refuses seed stacks \(stackable = False\): parameter 'S' \(index 0\) "
                                         r"has a seed axis, and its distance estimate d sums over all parameters"):
        symopt.Prodigy([stacked])


# --------------------------------------------------------------------------- Schedule-Free
SF_SHAPES = [(2, 3, 4), (5,), ()]
SF_CASES = [
    ("schedule_free_sgd", {"learning_rate": 0.3}),
    ("schedule_free_sgd", {"learning_rate": 0.5, "beta1": 0.7, "weight_lr_power": 1.0, "weight_decay": 0.1}),
    ("schedule_free_adamw", {"learning_rate": 0.05}),
    ("schedule_free_adamw", {"learning_rate": 0.05, "beta1": 0.8, "beta2": 0.99, "epsilon": 1e-3,
                             "weight_lr_power": 3.0, "weight_decay": 0.1}),
]


@pytest.fixture(scope="module")
def schedule_free() -> Iterator[Callable[[str], tuple[Any, list[Any], Any]]]:
    """One compiled step per Schedule-Free rule on SF_SHAPES; settings change through set_hyperparameter."""
    cache: dict[str, tuple[Any, list[Any], Any, dict[str, Any]]] = {}
    problem = Problem(SF_SHAPES)

    def get(rule: str, kwargs: dict[str, Any]) -> tuple[Any, list[Any], Any]:
        if rule not in cache:
            opt, params, step = compile_step(rule, problem)
            cache[rule] = (opt, params, step, opt.state_dict())
        opt, params, step, fresh = cache[rule]
        for var, value in zip(params, problem.start):
            var.set_value(value.copy())
        opt.load_state_dict(fresh)
        for name, value in kwargs.items():
            opt.set_hyperparameter(name, value)
        return opt, params, step

    yield get
    cache.clear()


@pytest.mark.parametrize(("rule", "kwargs"), SF_CASES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(SF_CASES)])
def test_schedule_free_matches_reference_with_eval_params(schedule_free: Any, rule: str, kwargs: dict[str, Any]) -> None:
    problem = Problem(SF_SHAPES)
    compiled = schedule_free(rule, kwargs)
    opt, params, _ = compiled
    assert run_against_reference(rule, problem, kwargs, compiled=compiled) < 1e-9
    reference = REFERENCES[rule]([v.copy() for v in problem.start], **kwargs)
    for _ in range(STEPS):
        reference.step(problem.grads(reference.params))
    for mine, theirs in zip(opt.eval_param_values(), reference.eval_params()):
        assert relative_error(mine, theirs) < 1e-9
    assert scalar_state_close(opt, reference)


def scalar_state_close(opt: Any, reference: Any) -> bool:
    saved = opt.state_dict()["scalars"][0]
    return all(float(saved[k]) == pytest.approx(v, rel=1e-12) for k, v in reference.scalar_state().items())


def test_eval_params_swaps_x_in_and_restores_y(schedule_free: Any) -> None:
    opt, params, step = schedule_free("schedule_free_sgd", {"learning_rate": 0.3})
    before = [p.get_value() for p in params]
    with opt.eval_params():  # before the first step x = y
        assert all(np.array_equal(p.get_value(), b) for p, b in zip(params, before))
    for _ in range(5):
        step()
    y = [p.get_value() for p in params]
    b1 = opt.get_hyperparameter("beta1")
    # x from its definition y = b1 x + (1 - b1) z, with z read from the state
    x = [(yi - (1 - b1) * opt.state[i]["z"].get_value()) / b1 for i, yi in enumerate(y)]
    assert not np.allclose(x[0], y[0])
    with opt.eval_params():
        for p, xi in zip(params, x):
            np.testing.assert_allclose(p.get_value(), xi, rtol=1e-14, atol=1e-14)
    for p, yi in zip(params, y):
        assert np.array_equal(p.get_value(), yi)
    with pytest.raises(RuntimeError, match="inside"), opt.eval_params():
        raise RuntimeError("inside")
    assert all(np.array_equal(p.get_value(), yi) for p, yi in zip(params, y))


def test_schedule_free_weights_use_the_next_steps_rate() -> None:
    """A linear warm-up: the averaging weight of step t uses the rate at t (optax's step_count),
    the z step the rate at t - 1; the reference runs the same two sequences by hand."""
    problem = Problem([(3, 2)])
    W = pytensor.shared(problem.start[0].copy(), name="W")
    opt = symopt.ScheduleFreeSGD([W], learning_rate=symopt.schedules.linear_warmup(peak=0.4, warmup_steps=5))
    step = pytensor.function([], [], updates=opt.updates(problem.loss([W], "float64")))
    y = z = problem.start[0].copy()
    max_lr = weight_sum = 0.0
    for t in range(1, 12):
        rate_z, rate_w = 0.4 * min((t - 1) / 5, 1.0), 0.4 * min(t / 5, 1.0)
        max_lr = max(max_lr, rate_w)
        weight_sum += max_lr**2
        ck = max_lr**2 / weight_sum
        g = problem.grads([y])[0]
        x_prev = (y - 0.1 * z) / 0.9
        z = z - rate_z * g
        x = (1 - ck) * x_prev + ck * z
        y = 0.9 * x + 0.1 * z
        step()
        assert relative_error(W.get_value(), y) < 1e-12, f"step {t}"


@pytest.mark.parametrize("rule", ["schedule_free_sgd", "schedule_free_adamw"])
def test_schedule_free_refuses_beta1_zero(rule: str) -> None:
    W = pytensor.shared(np.ones((2, 2)), name="W")
    with pytest.raises(ValueError, match="'beta1' must be > 0 for Schedule-Free"):
        symopt.get(rule)([W], beta1=0.0)
    opt = symopt.get(rule)([W])
    with pytest.raises(ValueError, match="'beta1' must be > 0 for Schedule-Free"):
        opt.set_hyperparameter("beta1", 0.0)
    assert opt.get_hyperparameter("beta1") == 0.9


# --------------------------------------------------------------------------- seed stacks
def stacked_matches_separate_runs(rule: str, shapes: list[tuple[int, ...]], seeds: int, **kwargs: Any) -> float:
    """Train ``seeds`` stacked copies (tag.seed_axis) and each copy alone in NumPy; worst error."""
    problems = [Problem(shapes, seed=s) for s in range(seeds)]
    start = [np.stack([pr.start[k] for pr in problems]) for k in range(len(shapes))]
    params = []
    for k, value in enumerate(start):
        var = pytensor.shared(value.copy(), name=f"s{k}")
        var.tag.seed_axis = True
        params.append(var)
    # Sum over seeds of each seed's own loss: the gradient of slice s is seed s's gradient.
    loss = 0
    for s, problem in enumerate(problems):
        loss = loss + problem.loss([p[s] for p in params], "float64")
    opt = symopt.get(rule)(params, **kwargs)
    step = pytensor.function([], [], updates=opt.updates(loss))
    references = [REFERENCES[rule]([v.copy() for v in pr.start], **kwargs) for pr in problems]
    worst = 0.0
    for _ in range(20):
        for pr, ref in zip(problems, references):
            ref.step(pr.grads(ref.params))
        step()
        for k, p in enumerate(params):
            for s, ref in enumerate(references):
                worst = max(worst, relative_error(p.get_value()[s], ref.params[k]))
    return worst


def test_adafactor_seed_stack_equals_separate_runs() -> None:
    assert stacked_matches_separate_runs("adafactor", [(3, 4), (4,)], seeds=3, learning_rate=0.05, weight_decay=0.1) < 1e-9


def test_schedule_free_adamw_seed_stack_equals_separate_runs() -> None:
    assert stacked_matches_separate_runs("schedule_free_adamw", [(3, 4), (4,)], seeds=2, learning_rate=0.05) < 1e-9


def test_muon_seed_stack_equals_separate_runs() -> None:
    assert stacked_matches_separate_runs("muon", [(3, 4), (5, 2)], seeds=3, learning_rate=0.02) < 1e-9


# --------------------------------------------------------------------------- dtypes and errors
FLOAT32_SHAPES = {"adafactor": [(3, 4), (4,)], "muon": [(3, 4), (5, 2)], "prodigy": [(3, 4), (4,)],
                  "schedule_free_adamw": [(3, 4), (4,)], "schedule_free_sgd": [(3, 4), (4,)]}


@pytest.mark.parametrize("rule", sorted(FLOAT32_SHAPES))
def test_float32_stays_float32_and_follows_the_reference(rule: str) -> None:
    problem = Problem(FLOAT32_SHAPES[rule])
    opt, params, step = compile_step(rule, problem, "float32")
    reference = REFERENCES[rule]([v.astype(np.float32) for v in problem.start])
    for _ in range(10):
        reference.step(problem.grads(reference.params))
        step()
    for i, p in enumerate(params):
        assert p.get_value().dtype == np.float32
        assert all(v.get_value().dtype == np.float32 for v in opt.state[i].values())
        # float32 round-off over 10 steps of size ~1e-2 on parameters of size ~1: 1e-5 relative.
        np.testing.assert_allclose(p.get_value(), reference.params[i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("rule", "kwargs", "message"),
    [
        ("adafactor", {"beta2_decay": 0.5}, "'beta2_decay' must lie in"),
        ("adafactor", {"d": 0.5}, "'d' must lie in"),
        ("adafactor", {"epsilon1": -1e-3}, "'epsilon1' must lie in"),
        ("adafactor", {"epsilon2": -1.0}, "'epsilon2' must lie in"),
        ("prodigy", {"estim_lr0": 0.0}, "'estim_lr0' must lie in"),
        ("prodigy", {"beta3": 1.0}, "'beta3' must lie in"),
        ("prodigy", {"estim_lr_coef": -1.0}, "'estim_lr_coef' must lie in"),
    ],
)
def test_bad_hyperparameters_are_refused(rule: str, kwargs: dict[str, Any], message: str) -> None:
    W = pytensor.shared(np.ones((2, 3)), name="W")
    with pytest.raises(ValueError, match=message):
        symopt.get(rule)([W], **kwargs)
    opt = symopt.get(rule)([W])
    name, value = next(iter(kwargs.items()))
    with pytest.raises(ValueError, match=message):
        opt.set_hyperparameter(name, value)


# --------------------------------------------------------------------------- state files
@pytest.mark.parametrize("rule", ["adafactor", "prodigy", "schedule_free_adamw"])
def test_save_and_load_resume_exactly(rule: str, tmp_path: Any) -> None:
    """Factored (0-d placeholder) slots and group scalars round-trip through opt.save/opt.load:
    a run interrupted after 5 steps and resumed ends where an uninterrupted one does."""
    problem = Problem([(3, 4), (4,)])
    opt, params, step = compile_step(rule, problem)
    for _ in range(5):
        step()
    opt.save(tmp_path / "state.npz")
    saved = [p.get_value() for p in params]
    for _ in range(3):
        step()
    expected = [p.get_value() for p in params]
    fresh, fresh_params, fresh_step = compile_step(rule, problem)
    for var, value in zip(fresh_params, saved):
        var.set_value(value)
    fresh.load(tmp_path / "state.npz")
    for _ in range(3):
        fresh_step()
    for p, e in zip(fresh_params, expected):
        np.testing.assert_array_equal(p.get_value(), e)


# --------------------------------------------------------------------------- with the rest of symopt
def test_muon_for_matrices_adamw_for_biases_through_combine() -> None:
    """The combination the refusal message points to: each member's numbers are its own
    rule's (the NumPy references), stepped together in one compiled function."""
    problem = Problem([(3, 4), (4,)])
    W, b = (pytensor.shared(v.copy(), name=n) for v, n in zip(problem.start, ("W", "b")))
    both = symopt.combine(symopt.Muon([W], learning_rate=0.02), symopt.AdamW([b], learning_rate=0.02))
    step = pytensor.function([], [], updates=both.updates(problem.loss([W, b], "float64")))
    muon = REFERENCES["muon"]([problem.start[0].copy()], learning_rate=0.02)
    adamw = REFERENCES["adamw"]([problem.start[1].copy()], learning_rate=0.02)
    for _ in range(10):
        grads = problem.grads([muon.params[0], adamw.params[0]])
        muon.step(grads[:1])
        adamw.step(grads[1:])
        step()
    assert relative_error(W.get_value(), muon.params[0]) < 1e-9
    assert relative_error(b.get_value(), adamw.params[0]) < 1e-9


@pytest.mark.parametrize("rule", ["adafactor", "prodigy", "schedule_free_adamw"])
def test_rules_with_their_own_decay_refuse_decoupled_weight_decay(rule: str) -> None:
    W = pytensor.shared(np.ones((2, 2)), name="W")
    with pytest.raises(ValueError, match="applies weight decay in its own step"):
        symopt.get(rule)([W], decoupled_weight_decay=True)
