"""Every registered update rule against the NumPy references in :mod:`tests.reference`.

Three kinds of check, all on real compiled PyTensor functions:

* trajectories: >= 20 steps on a small non-convex loss (a tanh network on a fixed
  batch; a matrix and a vector as parameters), compared with the
  reference at every step: parameters, every state slot, optimiser-wide scalars;
* convergence to the minimum of a convex quadratic;
* dtypes: float32 parameters and state stay float32 and the compiled float32 graph
  holds no float64 array.

Compilation dominates the run time, so exactly one function is compiled per (rule,
dtype, structural option) and cached for the module. Its loss is
``net_weight * tanh_net + quad_weight * quadratic`` with both weights shared
scalars: the trajectory tests set ``(1, 0)``, the convergence tests ``(0, 1)``
(multiplying a finite gradient by 0.0 adds exactly nothing). Numeric hyperparameters
change through ``set_hyperparameter`` and ``load_state_dict`` restores the fresh
state, so no setting recompiles.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.compile.sharedvalue import SharedVariable

import symopt

from .reference import REFERENCES, ReferenceRule

#: Every per-parameter rule of the registry; lbfgs (kind "full-batch, needs loss") is tested
#: against torch's L-BFGS in tests/test_lbfgs.py, not by this per-parameter harness.
RULES = sorted(symopt.registry.rules())
DTYPES = ("float64", "float32")
STEPS = 25

# Elementwise criterion: |actual - ref| <= rtol * (|ref| + floor * max|ref|) for each
# compared array (parameter, state slot). The floor exists because rounding errors
# are absolute, of the order of the array's scale: a first moment passing through
# zero, or a gradient component that is a cancelling sum of 16 larger terms, has a
# tiny value but an error of a few ulps of its array's largest element.
#
# float64: rtol 1e-7, floor 1e-3 (so atol = 1e-10 * scale). Both sides evaluate the
# same equations in a different order and the model gradient (PyTensor autodiff vs
# the hand-written NumPy one) differs by a few ulps, so the trajectories separate by
# ~1e-13 relative after 25 steps; 1e-7 is the bound the project asks for.
#
# float32: unit roundoff is u = 6e-8. The gradient of W is a sum of 16 products that
# cancel, so it differs by ~10u of its scale from step 1, and running averages carry
# those differences forward through 25 steps: a coherent worst case ~25 * 10u = 1.5e-5
# of the scale, a random walk ~sqrt(25) * 10u = 3e-6. Observed: <= 7e-7 measured
# against each array's scale, <= 5e-6 with the floor at 0.1 of it. rtol 2e-5 with a
# floor of 0.1 (atol = 2e-6 * scale) keeps 4x headroom while any change to an
# equation (a coefficient off by 1e-3 relative or more) still fails.
TOLERANCE = {"float64": (1e-7, 1e-3), "float32": (2e-5, 0.1)}  # dtype -> (rtol, floor)
# Rules of symopt/rules_modern.py whose float32 state amplifies that gradient mismatch
# (observed 0.8e-5 to 1.4e-5, so 2e-5 would leave no headroom): AdaBelief's belief
# s_t averages (g - m_t)^2, a difference of nearly equal numbers on this smooth
# trajectory (relative error ~u |g| / |g - m|), and with eps = 1e-16 nothing damps it in
# m / sqrt(s); Rprop's slot ``prev`` is the raw gradient, whose near-zero components
# carry the ~10u-of-scale mismatch unaveraged; ADOPT divides each gradient by the root
# of one earlier squared gradient (v_1 = g_1^2), so tiny components pass their relative
# error 1:1; AdEMAMix adds alpha = 5 times a slow average of the gradients. 1e-4 keeps
# 7x headroom and still fails a coefficient off by 1e-3.
FLOAT32_RTOL = {"adabelief": 1e-4, "rprop": 1e-4, "adopt": 1e-4, "ademamix": 1e-4}


# --------------------------------------------------------------------------- model
# A one-hidden-layer tanh regression net on a fixed batch, non-convex in (W, v). Two
# parameters (a matrix and a vector) only: every extra one adds ~1 s of Numba
# compilation to each of the ~36 compiled functions.
_data_rng = np.random.default_rng(20240611)
X = _data_rng.normal(size=(16, 3))
Y = np.sin(X @ np.array([1.0, -2.0, 0.5])) + 0.1 * _data_rng.normal(size=16)
SHAPES = {"W": (3, 4), "v": (4,)}
INITIAL = {name: 0.5 * _data_rng.normal(size=shape) for name, shape in SHAPES.items()}
# Convex quadratic 0.5 * sum(a * (p - centre)**2) over the same parameters.
QUAD_A = {name: _data_rng.uniform(0.5, 2.0, size=shape) for name, shape in SHAPES.items()}
QUAD_CENTRE = {name: _data_rng.normal(size=shape) for name, shape in SHAPES.items()}


def numpy_gradients(params: list[np.ndarray], net_weight: float, quad_weight: float) -> list[np.ndarray]:
    """Hand-derived gradient of the test loss, in the parameters' dtype.

    Parameters
    ----------
    params
        ``[W, v]`` as NumPy arrays of one dtype.
    net_weight, quad_weight
        The weights of the network loss and of the quadratic.

    Returns
    -------
    list of numpy.ndarray
        ``[dW, dv]`` in the parameters' dtype.
    """
    W, v = params
    dtype = W.dtype
    x, y = X.astype(dtype), Y.astype(dtype)
    h = np.tanh(x @ W)
    residual = h @ v - y
    d_pred = (2.0 / len(y)) * residual  # d mean(residual**2) / d prediction
    d_pre = np.outer(d_pred, v) * (1.0 - np.square(h))  # back through tanh
    net = [x.T @ d_pre, h.T @ d_pred]
    grads = []
    for name, p, g in zip(SHAPES, params, net):
        quad = QUAD_A[name].astype(dtype) * (p - QUAD_CENTRE[name].astype(dtype))
        grads.append(np.asarray(net_weight * g + quad_weight * quad, dtype=dtype))
    return grads


def initial_params(dtype: str) -> list[np.ndarray]:
    """Starting values ``[W, v]`` in ``dtype``."""
    return [INITIAL[name].astype(dtype) for name in SHAPES]


# --------------------------------------------------------------------------- compiled trainers
Build = tuple[tuple[str, Any], ...]  # constructor keywords that change the graph, sorted


@dataclasses.dataclass
class Trainer:
    """One compiled step function of one (rule, dtype, build), reusable across settings."""

    rule: str
    dtype: str
    opt: symopt.Optimizer
    params: list[SharedVariable]
    net_weight: SharedVariable
    quad_weight: SharedVariable
    updates: OrderedDict
    step: Any  # the compiled pytensor Function: no inputs, no outputs, one step of updates
    fresh_state: dict[str, Any]

    def reset(self, numeric: Mapping[str, float], *, net: float = 1.0, quad: float = 0.0) -> None:
        """Initial parameters and state, the build's hyperparameters, then ``numeric`` on top."""
        for var, value in zip(self.params, initial_params(self.dtype)):
            var.set_value(value)
        self.opt.load_state_dict(self.fresh_state)  # also restores the hyperparameters
        for name, value in numeric.items():
            self.opt.set_hyperparameter(name, value)
        self.net_weight.set_value(np.asarray(net, dtype=self.dtype))
        self.quad_weight.set_value(np.asarray(quad, dtype=self.dtype))

    def values(self) -> list[np.ndarray]:
        return [p.get_value() for p in self.params]


#: (rule, dtype) -> relative tolerance of the optimiser-wide scalars (default 1e-12: float64
#: scalars such as NAdam's product). Prodigy's are sums over float32 arrays in float32 models:
#: float32 round-off, ~1e-7 per step, carried through 25 steps.
SCALAR_RTOL: dict[tuple[str, str], float] = {("prodigy", "float32"): 2e-5}

#: Rules this module's problem does not fit (it has a vector), with the reason and where they are tested.
UNFIT: dict[str, str] = {
    "muon": "Muon orthogonalises matrices only and this problem has a vector v; "
            "tests/test_rules_contrib.py checks it against its reference",
}


def compile_trainer(rule: str, dtype: str, build: Build) -> Trainer:
    """Build the shared variables, the loss and the optimiser, and compile one step."""
    if rule in UNFIT:
        pytest.skip(UNFIT[rule])
    params = [pytensor.shared(value, name=name) for name, value in zip(SHAPES, initial_params(dtype))]
    W, v = params
    net_weight = pytensor.shared(np.asarray(1.0, dtype=dtype), name="net_weight")
    quad_weight = pytensor.shared(np.asarray(0.0, dtype=dtype), name="quad_weight")
    # The model is built in its own dtype so that any float64 left in the compiled
    # float32 graph can only come from the optimiser.
    with pytensor.config.change_flags(floatX=dtype):
        h = pt.tanh(pt.constant(X.astype(dtype)) @ W)
        net = pt.mean(pt.square(h @ v - pt.constant(Y.astype(dtype))))
        quad = sum(
            pt.sum(pt.constant(QUAD_A[n].astype(dtype)) * pt.square(p - pt.constant(QUAD_CENTRE[n].astype(dtype))))
            for n, p in zip(SHAPES, params)
        )
        loss = net_weight * net + quad_weight * (0.5 * quad)
    assert loss.dtype == dtype
    opt = symopt.get(rule)(params, **dict(build))
    updates = opt.updates(loss)
    # No outputs: returning the loss would add its reduction to every compiled function,
    # which costs seconds of Numba compilation each and checks nothing the parameters don't.
    step = pytensor.function([], [], updates=updates)
    return Trainer(rule, dtype, opt, params, net_weight, quad_weight, updates, step, opt.state_dict())


@pytest.fixture(scope="module")
def trainers() -> Iterator[Callable[[str, str, Build], Trainer]]:
    """``get(rule, dtype, build)``: the compiled trainer, compiled on first request."""
    cache: dict[tuple[str, str, Build], Trainer] = {}

    def get(rule: str, dtype: str, build: Build) -> Trainer:
        key = (rule, dtype, build)
        if key not in cache:
            cache[key] = compile_trainer(rule, dtype, build)
        return cache[key]

    yield get
    cache.clear()


def reference_for(rule: str) -> type[ReferenceRule]:
    """The reference class of ``rule``; fails for a built-in rule without one."""
    if rule in REFERENCES:
        return REFERENCES[rule]
    cls = symopt.OPTIMIZERS[rule]
    if cls.__module__.startswith("symopt."):
        pytest.fail(f"built-in rule {rule!r} has no reference in tests/reference.py REFERENCES; add one")
    pytest.skip(f"plug-in rule {rule!r} ({cls.__module__}) has no reference")


# --------------------------------------------------------------------------- settings
# A non-default setting per rule, always with weight_decay > 0. epsilon is raised far
# above its default so that where it enters the denominator is visible at rtol 1e-7.
NONDEFAULT: dict[str, dict[str, float]] = {
    "sgd": {"learning_rate": 0.05, "weight_decay": 0.1},
    "momentum": {"learning_rate": 0.02, "momentum": 0.5, "weight_decay": 0.1},
    "nesterov": {"learning_rate": 0.02, "momentum": 0.5, "weight_decay": 0.1},
    "adagrad": {"learning_rate": 0.05, "epsilon": 1e-2, "weight_decay": 0.1},
    "rmsprop": {"learning_rate": 3e-3, "rho": 0.8, "epsilon": 1e-2, "weight_decay": 0.1},
    "adadelta": {"learning_rate": 0.5, "rho": 0.8, "epsilon": 1e-3, "weight_decay": 0.1},
    "adam": {"learning_rate": 3e-3, "beta1": 0.8, "beta2": 0.99, "epsilon": 1e-2, "weight_decay": 0.1},
    "adamw": {"learning_rate": 3e-3, "beta1": 0.8, "beta2": 0.99, "epsilon": 1e-2, "weight_decay": 0.2},
    "amsgrad": {"learning_rate": 3e-3, "beta1": 0.8, "beta2": 0.99, "epsilon": 1e-2, "weight_decay": 0.1},
    "adamax": {"learning_rate": 5e-3, "beta1": 0.8, "beta2": 0.99, "epsilon": 1e-2, "weight_decay": 0.1},
    "nadam": {
        "learning_rate": 5e-3,
        "beta1": 0.8,
        "beta2": 0.99,
        "epsilon": 1e-2,
        "momentum_decay": 0.05,
        "weight_decay": 0.1,
    },
    # RAdam switches to the rectified branch at step 6 here as with the default beta2.
    "radam": {"learning_rate": 3e-3, "beta1": 0.8, "beta2": 0.95, "epsilon": 1e-2, "weight_decay": 0.1},
    "lion": {"learning_rate": 3e-3, "beta1": 0.8, "beta2": 0.95, "weight_decay": 0.1},
    # Rules of symopt/rules_contrib.py. epsilon1 = 1e-3 so that its clamp binds for tiny
    # factored variances; d = 1.5 so that the update clipping binds in the first steps only.
    "adafactor": {
        "learning_rate": 0.05, "beta2_decay": -0.5, "epsilon1": 1e-3, "epsilon2": 0.1, "d": 1.5, "weight_decay": 0.1,
    },
    # beta3 given: set_hyperparameter("beta2") on a built optimiser leaves beta3 (optax fixes
    # its default sqrt(beta2) at construction too). estim_lr0 = 1e-3: d grows within 25 steps.
    "prodigy": {
        "learning_rate": 0.5, "beta1": 0.8, "beta2": 0.99, "beta3": 0.9, "epsilon": 1e-3, "estim_lr0": 1e-3,
        "estim_lr_coef": 2.0, "weight_decay": 0.1,
    },
    "schedule_free_sgd": {"learning_rate": 0.2, "beta1": 0.8, "weight_lr_power": 1.0, "weight_decay": 0.1},
    "schedule_free_adamw": {
        "learning_rate": 0.02, "beta1": 0.8, "beta2": 0.99, "epsilon": 1e-2, "weight_lr_power": 3.0, "weight_decay": 0.1,
    },
    # Rules of symopt/rules_modern.py. Rprop's bounds bind (0.05 within 25 steps of growth
    # by 1.5); ASGD's t0 = 5 starts the averaging at step 7.
    "rprop": {
        "learning_rate": 0.02, "eta_minus": 0.3, "eta_plus": 1.5, "step_size_min": 1e-3, "step_size_max": 0.05,
        "weight_decay": 0.1,
    },
    "asgd": {"learning_rate": 0.1, "lambd": 0.05, "alpha": 0.6, "t0": 5.0, "weight_decay": 0.1},
    "adabelief": {
        "learning_rate": 3e-3, "beta1": 0.8, "beta2": 0.99, "epsilon": 1e-3, "epsilon_root": 1e-4, "weight_decay": 0.1,
    },
    "adopt": {"learning_rate": 3e-3, "beta1": 0.8, "beta2": 0.99, "epsilon": 1e-2, "weight_decay": 0.1},
    "ademamix": {
        "learning_rate": 3e-3, "beta1": 0.8, "beta2": 0.99, "beta3": 0.95, "alpha": 2.0, "epsilon": 1e-3,
        "epsilon_root": 1e-4, "weight_decay": 0.1,
    },
    "lamb": {
        "learning_rate": 0.01, "beta1": 0.8, "beta2": 0.99, "epsilon": 1e-3, "epsilon_root": 1e-4, "weight_decay": 0.1,
    },
    "lars": {"learning_rate": 0.5, "trust_coefficient": 0.01, "epsilon": 1e-3, "momentum": 0.5, "weight_decay": 0.1},
    "sam": {"learning_rate": 0.2, "rho": 0.1, "weight_decay": 0.1},
    "sophia": {"learning_rate": 0.02, "beta1": 0.9, "beta2": 0.8, "gamma": 1.0, "clip_threshold": 0.5,
               "epsilon": 1e-4, "weight_decay": 0.1},
}
# More numeric settings on the default build: options that are plain numbers.
EXTRA_NUMERIC: dict[str, list[tuple[str, dict[str, float]]]] = {
    # beta1_t = 0.9 * 0.9**(t-1) falls to 0.08 by step 25 while 1 - beta1**t keeps beta1.
    "adam": [("beta1_decay", {"beta1_decay": 0.9, "epsilon": 1e-3})],
    "adamw": [("beta1_decay", {"beta1_decay": 0.9, "weight_decay": 0.1})],
    "amsgrad": [("beta1_decay", {"beta1_decay": 0.9})],
    # torch.optim.Adagrad's options.
    "adagrad": [("torch_options", {"initial_accumulator_value": 0.1, "lr_decay": 0.05, "weight_decay": 0.1})],
}
# Constructor numbers that change the graph: RMSprop keeps a momentum buffer only
# when built with momentum > 0.
STRUCTURAL_NUMBERS: dict[str, dict[str, Any]] = {
    "rmsprop": {"momentum": 0.9},
    # Prodigy's safeguarded d grows more slowly: from the default 1e-6 it barely moves in 25 steps.
    "prodigy": {"estim_lr0": 1e-4},
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One hyperparameter setting: ``build`` picks the compiled function, ``numeric`` is set on it."""

    label: str
    build: Build
    numeric: tuple[tuple[str, float], ...] = ()

    def hyperparameters(self) -> dict[str, Any]:
        return {**dict(self.build), **dict(self.numeric)}


def builds_of(rule: str) -> list[Build]:
    """The default build and, if the rule has structural options, one with all of them switched.

    Every boolean option is flipped from its default and the STRUCTURAL_NUMBERS are
    applied together in a single build: each option's code path then runs in both
    states against the reference, for two compiled functions per rule and dtype
    instead of one per option (compilation is most of this module's run time).
    """
    defaults = symopt.OPTIMIZERS[rule].hyperparameters
    flipped = {name: not value for name, value in defaults.items() if isinstance(value, bool)}
    flipped.update(STRUCTURAL_NUMBERS.get(rule, {}))
    return [(), tuple(sorted(flipped.items()))] if flipped else [()]


def cases_of(rule: str) -> list[Case]:
    """Defaults, the non-default setting, the extras, and each structural build."""
    nondefault = tuple(NONDEFAULT.get(rule, {"weight_decay": 0.1}).items())
    cases = [Case("defaults", ()), Case("nondefault", (), nondefault)]
    cases += [Case(label, (), tuple(values.items())) for label, values in EXTRA_NUMERIC.get(rule, [])]
    for build in builds_of(rule)[1:]:
        label = ",".join(f"{k}={v}" for k, v in build)
        cases += [Case(label, build), Case(f"{label}+nondefault", build, nondefault)]
    return cases


TRAJECTORY_CASES = [
    pytest.param(rule, dtype, case, id=f"{rule}-{dtype}-{case.label}")
    for rule in RULES
    for dtype in DTYPES
    for case in cases_of(rule)
]

# --------------------------------------------------------------------------- comparison
#: Largest relative error seen per (rule, dtype), printed at the end of the module (-s).
MAX_ERROR: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="module", autouse=True)
def error_table() -> Iterator[None]:
    yield
    if MAX_ERROR:
        print("\nmax relative error vs reference (rule, dtype):")
        for (rule, dtype), err in sorted(MAX_ERROR.items()):
            print(f"  {rule:10s} {dtype}  {err:.2e}")


def relative_error(actual: np.ndarray, desired: np.ndarray, floor: float) -> float:
    """max |a - r| / (|r| + floor * max|r|): elementwise relative error, floored at the array's scale."""
    desired = np.asarray(desired, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    atol = floor * float(np.max(np.abs(desired), initial=0.0)) or np.finfo(np.float64).tiny
    return float(np.max(np.abs(actual - desired) / (np.abs(desired) + atol), initial=0.0))


def check_close(actual: np.ndarray, desired: np.ndarray, key: tuple[str, str], what: str) -> None:
    """Assert ``actual`` matches ``desired`` (shape, dtype, values) and record the error under ``key``."""
    rtol, floor = TOLERANCE[key[1]]
    if key[1] == "float32":
        rtol = FLOAT32_RTOL.get(key[0], rtol)
    assert actual.shape == desired.shape, f"{what}: shape {actual.shape} != reference {desired.shape}"
    assert actual.dtype == desired.dtype, f"{what}: dtype {actual.dtype} != reference {desired.dtype}"
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values {actual}"
    err = relative_error(actual, desired, floor)
    MAX_ERROR[key] = max(MAX_ERROR.get(key, 0.0), err)
    if err > rtol:
        atol = rtol * floor * np.max(np.abs(desired))
        np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol, err_msg=what)
        pytest.fail(f"{what}: relative error {err:.3g} > {rtol:g}")  # in case allclose rounds it in


# --------------------------------------------------------------------------- tests
def test_every_builtin_rule_has_a_reference() -> None:
    builtin = {name for name in RULES if symopt.OPTIMIZERS[name].__module__.startswith("symopt.")}
    assert len(builtin) >= 13
    assert builtin - set(REFERENCES) == set(), "built-in rules without a NumPy reference"
    assert set(REFERENCES) - set(symopt.OPTIMIZERS) == set(), "references for rules that are not registered"


@pytest.mark.parametrize("rule", RULES)
def test_defaults_match_reference(rule: str) -> None:
    """The documented defaults (papers / torch) are the ones the rule uses."""
    reference = reference_for(rule)
    assert symopt.OPTIMIZERS[rule].hyperparameters == reference.defaults


@pytest.mark.parametrize(("rule", "dtype", "case"), TRAJECTORY_CASES)
def test_trajectory_matches_reference(
    trainers: Callable[[str, str, Build], Trainer], rule: str, dtype: str, case: Case
) -> None:
    reference = reference_for(rule)(initial_params(dtype), **case.hyperparameters())
    trainer = trainers(rule, dtype, case.build)
    trainer.reset(dict(case.numeric))
    opt, key = trainer.opt, (rule, dtype)
    assert set(opt.state[0]) == set(reference.slot_names()), "state slots differ from the reference's"
    start = initial_params(dtype)
    for t in range(1, STEPS + 1):
        grads = numpy_gradients(reference.params, 1.0, 0.0)
        reference.step(grads)
        trainer.step()
        assert int(opt.iterations.get_value()) == t
        for i, name in enumerate(SHAPES):
            value = trainer.params[i].get_value()
            check_close(value, reference.params[i], key, f"step {t}: parameter {name}")
            if dtype == "float64":
                # The displacement from the start isolates the rule's steps from the
                # parameter's magnitude: a 1e-5 error in a 1e-3 step shows here. Not in
                # float32, where one ulp of a parameter of size 0.5 is already 1e-4 of
                # such a step, so this is no tighter than the parameter check.
                check_close(
                    value - start[i], reference.params[i] - start[i], key, f"step {t}: displacement of {name}"
                )
            for slot, var in opt.state[i].items():
                check_close(var.get_value(), reference.state[i][slot], key, f"step {t}: {name}.{slot}")
        saved = opt.state_dict()["scalars"][0]
        expected = reference.scalar_state()
        assert set(saved) == set(expected)
        for name, value in expected.items():
            assert saved[name] == pytest.approx(value, rel=SCALAR_RTOL.get(key, 1e-12)), f"step {t}: scalar {name}"
    # A setting under which the reference itself barely moves would test nothing.
    moved = max(float(np.max(np.abs(p - p0))) for p, p0 in zip(reference.params, start))
    assert moved > 1e-4, f"the reference moved only {moved:g}: pick a setting that trains"
    if rule == "radam":
        assert reference.rectified[0] is False and reference.rectified[-1] is True, "both RAdam branches"


Phases = list[tuple[dict[str, float], int]]  # (hyperparameters set at the phase start, steps)


def decaying(learning_rate: float, steps: int, phases: int = 3, **others: float) -> Phases:
    """``phases`` phases of ``steps`` steps, the learning rate divided by 10 at each."""
    return [({"learning_rate": learning_rate / 10**k, **others}, steps) for k in range(phases)]


# Per rule: hyperparameter phases and the bound on the final Euclidean distance to the
# minimiser c (the start is 3.75 away; the observed distances are ~100x below the
# bounds). Rules that normalise the gradient (RMSprop, the Adam family, Lion) take
# steps of size ~lr however small the gradient is, so with a constant rate they only
# reach an O(lr) neighbourhood of c: they get the usual step decay instead. Lion moves
# every coordinate by exactly lr per step, so its bound follows its last rate, 1e-5.
CONVERGENCE: dict[str, tuple[Phases, float]] = {
    "sgd": ([({"learning_rate": 0.5}, 100)], 1e-10),
    "momentum": ([({"learning_rate": 0.1, "momentum": 0.9}, 400)], 1e-7),
    "nesterov": ([({"learning_rate": 0.1, "momentum": 0.9}, 300)], 1e-8),
    "adagrad": ([({"learning_rate": 0.5}, 300)], 1e-10),
    "rmsprop": (decaying(0.01, 400), 1e-8),
    "adadelta": ([({}, 1000)], 1e-8),  # the paper's defaults, no learning rate to tune
    "adam": (decaying(0.05, 400), 1e-9),
    "adamw": (decaying(0.05, 400, weight_decay=0.0), 1e-9),  # decay would move the minimum
    "amsgrad": (decaying(0.05, 400), 1e-8),
    "adamax": (decaying(0.1, 400), 1e-8),
    "nadam": (decaying(0.05, 400), 1e-9),
    "radam": (decaying(0.1, 400), 1e-6),
    "lion": (decaying(0.01, 500, phases=4), 1e-4),
    # Rules of symopt/rules_contrib.py.
    "adafactor": (decaying(0.1, 400), 1e-8),
    "prodigy": (decaying(1.0, 400), 1e-8),  # learning_rate is a multiplier of the estimated d
    # Schedule-Free replaces the decay by averaging whose weights grow with the largest rate
    # so far (power 2): a rising rate (the warm-up it is meant for) lets the average forget
    # the start; with a constant rate it is a uniform average, O(1/t) from the minimum.
    "schedule_free_sgd": ([({"learning_rate": 0.05}, 100), ({"learning_rate": 0.2}, 100),
                           ({"learning_rate": 0.6}, 400)], 1e-5),
    # AdamW's normalised steps keep z jumping by ~lr near the minimum, where float32 runs
    # become erratic (distances 1e-4 to 1e-2); epsilon 0.1 and beta2 0.9 make the final
    # steps gradient-sized (SGD with rate lr / epsilon), as its averaging assumes.
    "schedule_free_adamw": ([({"learning_rate": 0.02, "epsilon": 0.1, "beta2": 0.9}, 200),
                             ({"learning_rate": 0.05}, 200), ({"learning_rate": 0.08}, 600)], 1e-7),
    # Rules of symopt/rules_modern.py.
    "rprop": ([({"step_size_min": 1e-12}, 300)], 1e-9),
    "asgd": ([({"learning_rate": 0.5, "lambd": 0.0}, 100)], 1e-10),  # lambd > 0 shrinks towards 0
    "adabelief": (decaying(0.05, 400), 1e-12),
    # ADOPT divides by the second moment of earlier gradients, which with beta2 = 0.9999
    # keeps the start's large ones for thousands of steps: a shorter memory converges.
    "adopt": (decaying(0.05, 400, beta2=0.99), 1e-12),
    "ademamix": (decaying(0.05, 400, phases=4, beta3=0.99, alpha=1.0), 1e-5),
    # LAMB and LARS step lr * |p| (times the trust coefficient) whatever the gradient:
    # like Lion, they reach an O(lr) neighbourhood, so their rates fall further.
    "lamb": (decaying(0.05, 300, phases=6), 1e-4),
    "lars": (decaying(10.0, 300, phases=6, momentum=0.5), 1e-5),
    # SAM's ascent has length rho however close p is to c: rho falls with the phases (observed 4e-6).
    "sam": ([({"learning_rate": 0.5, "rho": 0.05}, 100), ({"rho": 5e-4}, 100), ({"rho": 5e-6}, 100)], 1e-4),
    # gamma=1: unclipped steps near c are Newton-like; decay off, it moves the minimum (observed 4e-6).
    "sophia": ([({"learning_rate": 0.05, "gamma": 1.0, "weight_decay": 0.0}, 400), ({"learning_rate": 0.005}, 400)],
               1e-4),
}
# float32 resolves a coordinate of size ~1 to ~6e-8, and the adaptive rules keep
# jittering by a few ulps: their distance floor is ~1e-6 over 16 coordinates.
FLOAT32_DISTANCE_FLOOR = 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", RULES)
def test_converges_to_quadratic_minimum(trainers: Callable[[str, str, Build], Trainer], rule: str, dtype: str) -> None:
    """On 0.5 * sum(a * (p - c)**2), a in [0.5, 2], each rule ends close to c."""
    reference_for(rule)
    if rule in UNFIT:
        pytest.skip(UNFIT[rule])
    if rule not in CONVERGENCE:
        pytest.fail(f"add convergence settings for {rule!r} to CONVERGENCE")
    phases, bound = CONVERGENCE[rule]
    if dtype == "float32":
        bound = max(bound, FLOAT32_DISTANCE_FLOOR)
    trainer = trainers(rule, dtype, ())
    trainer.reset({}, net=0.0, quad=1.0)
    centre = [QUAD_CENTRE[name] for name in SHAPES]

    def distance() -> float:
        return math.sqrt(sum(float(np.sum((p.astype(np.float64) - c) ** 2)) for p, c in zip(trainer.values(), centre)))

    start = distance()
    assert start > 3.0
    for hyperparameters, steps in phases:
        for name, value in hyperparameters.items():
            trainer.opt.set_hyperparameter(name, value)
        for _ in range(steps):
            trainer.step()
    final = distance()
    assert final < bound, f"{rule} ({dtype}) ended {final:.3g} from the minimum (start {start:.3g}, bound {bound:g})"


def test_radam_float32_rectification(trainers: Callable[[str, str, Build], Trainer]) -> None:
    """float32 RAdam's rectified steps match the reference (whose rho_t is float64)."""
    setting = {"learning_rate": 0.1, "beta2": 0.9999}  # a large rate: steps >> one ulp of p
    trainer = trainers("radam", "float32", ())
    trainer.reset(setting)
    reference = REFERENCES["radam"](initial_params("float32"), **setting)
    for t in range(1, 9):
        before, reference_before = trainer.values(), [p.copy() for p in reference.params]
        reference.step(numpy_gradients(reference.params, 1.0, 0.0))
        trainer.step()
        for i, name in enumerate(SHAPES):
            taken = trainer.params[i].get_value() - before[i]
            expected = reference.params[i] - reference_before[i]
            # 1% is ~100x the float32 noise of these ~1e-3 steps on parameters of size ~0.5.
            np.testing.assert_allclose(
                taken, expected, rtol=1e-2, atol=1e-3 * np.max(np.abs(expected)), err_msg=f"step {t}: {name}"
            )
    assert reference.rectified[-1], "the run must reach the rectified branch"


def is_float64_array(var: Any) -> bool:
    """A float64 tensor of ndim >= 1 (float64 scalars are fine: hyperparameters are float64).

    A statically one-element tensor is a scalar too: PyTensor's scalarisation of fused
    reductions (rules that reduce over tensors, e.g. Adafactor) leaves ``ExpandDims`` of a
    float64 hyperparameter to shape ``(1,)`` followed at once by ``Squeeze``.
    """
    shape = getattr(var.type, "shape", ())
    if shape and all(s == 1 for s in shape):
        return False
    return getattr(var.type, "dtype", None) == "float64" and getattr(var.type, "ndim", 0) >= 1


@pytest.mark.parametrize("rule", RULES)
def test_float32_keeps_float32(trainers: Callable[[str, str, Build], Trainer], rule: str) -> None:
    """float32 parameters and state stay float32, and no float64 array is computed."""
    reference_for(rule)  # a built-in without a reference fails here too
    for build in builds_of(rule):
        trainer = trainers(rule, "float32", build)
        where = f"{rule} {dict(build)}"
        for var, update in trainer.updates.items():
            assert update.type.dtype == var.type.dtype, f"{where}: update of {var.name} is {update.type.dtype}"
        upcasts = []
        for node in trainer.step.maker.fgraph.toposort():
            upcasts += [f"{node.op} -> {out.type}" for out in node.outputs if is_float64_array(out)]
            # Fusion can hide an upcast inside an elementwise kernel whose inputs and
            # output are float32 (a float64 scalar broadcast and cast per element).
            inner = getattr(getattr(node.op, "scalar_op", None), "fgraph", None)
            if inner is not None and any(out.type.ndim >= 1 for out in node.outputs):
                if any(getattr(var.type, "dtype", None) == "float64" for var in inner.variables):
                    upcasts.append(f"{node.op} computes in float64 per element")
        assert not upcasts, f"{where}: float64 arrays in the float32 graph: {upcasts}"
        trainer.reset({})  # Python-float hyperparameters, as a user passes them
        for _ in range(3):
            trainer.step()
        for i, p in enumerate(trainer.params):
            assert p.get_value().dtype == np.float32, f"{where}: parameter {p.name}"
            for slot, var in trainer.opt.state[i].items():
                assert var.get_value().dtype == np.float32, f"{where}: {p.name}.{slot}"
        # Optimiser-wide scalars (NAdam's product) are float64 by contract, but scalars.
        for group in trainer.opt.param_groups:
            for name, var in group.scalars.items():
                assert var.get_value().ndim == 0, f"{where}: scalar slot {name}"


# --------------------------------------------------------------------------- epsilon_hat
@pytest.mark.parametrize("rule", ["adam", "adamw", "amsgrad"])
def test_epsilon_hat_is_the_default_form_with_a_rescaled_epsilon(
    trainers: Callable[[str, str, Build], Trainer], rule: str
) -> None:
    """Kingma & Ba, section 2: epsilon_hat = epsilon * sqrt(1 - beta2**t).

    The default build with epsilon set to eps_hat / sqrt(1 - beta2**t) before each step
    follows the epsilon_hat build to float64 rounding; with a constant epsilon it does not.
    """
    setting = {"learning_rate": 3e-3, "beta2": 0.99, "epsilon": 1e-2}
    hat = trainers(rule, "float64", (("epsilon_hat", True),))
    plain = trainers(rule, "float64", ())
    constant = REFERENCES[rule](initial_params("float64"), **setting)  # the default placement
    hat.reset(setting)
    plain.reset(setting)
    for t in range(1, 11):
        plain.opt.set_hyperparameter("epsilon", setting["epsilon"] / math.sqrt(1 - setting["beta2"] ** t))
        hat.step()
        plain.step()
        constant.step(numpy_gradients(constant.params, 1.0, 0.0))
        for a, b in zip(hat.values(), plain.values()):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=f"{rule} step {t}")
    # 1e-2 against sqrt(v) ~ 1e-1: the placement changes the trajectory far beyond rounding.
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(hat.values(), constant.params)) > 1e-4


def test_epsilon_hat_must_be_a_boolean() -> None:
    W = pytensor.shared(np.zeros(2), name="W")
    with pytest.raises(TypeError, match="Adam: option 'epsilon_hat' must be True or False, got 1"):
        symopt.Adam([W], epsilon_hat=1)
    assert symopt.AdamW.validate(epsilon_hat=True)["epsilon_hat"] is True
    assert "epsilon_hat" not in symopt.NAdam.hyperparameters and "epsilon_hat" not in symopt.Adamax.hyperparameters
