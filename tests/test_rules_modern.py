"""The rules of :mod:`symopt.rules_modern` against the NumPy references of :mod:`tests.reference`.

Each compiled function takes the gradients as inputs (``opt.updates(grads=...)``), so
symopt and the reference see bit-identical gradients, computed in NumPy from a fixed
non-convex field ``g(p) = sin(3p) + (p - c) / 2``; what remains to compare is the
rules' arithmetic. float64 differences are a few ulps per step, hence rtol 1e-9 over
40 steps (the project's bound is 1e-7). Also here: per-seed trust ratios of LAMB and
LARS for parameters stacked along a seed axis, their masks, Rprop's first-step
learning rate, and the validation of every new hyperparameter. The shared suite in
``tests/test_rules.py`` runs the same rules on its tanh network in float64 and float32
(trajectories, convergence, no float64 in float32 graphs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import symopt

from .reference import REFERENCES, TrustRatioRule

STEPS = 40
SHAPES = [(3, 4), (4,)]
_rng = np.random.default_rng(7)
INITIAL = [_rng.normal(size=s) for s in SHAPES]
CENTRE = [_rng.normal(size=s) for s in SHAPES]

MODERN = ["rprop", "asgd", "adabelief", "adopt", "ademamix", "lamb", "lars"]
# A setting per rule where every hyperparameter differs from its default and matters
# within 40 steps (ASGD's averaging starts at step 7, Rprop's bounds bind).
SETTINGS: dict[str, dict[str, Any]] = {
    "rprop": {"learning_rate": 0.05, "eta_minus": 0.4, "eta_plus": 1.3, "step_size_min": 0.01, "step_size_max": 0.2,
              "weight_decay": 0.05},
    "asgd": {"learning_rate": 0.2, "lambd": 0.1, "alpha": 0.5, "t0": 5.0, "weight_decay": 0.05},
    "adabelief": {"learning_rate": 0.05, "beta1": 0.8, "beta2": 0.95, "epsilon": 1e-4, "epsilon_root": 1e-6,
                  "nesterov": True, "weight_decay": 0.05},
    "adopt": {"learning_rate": 0.05, "beta1": 0.8, "beta2": 0.95, "epsilon": 1e-3, "nesterov": True,
              "weight_decay": 0.05},
    "ademamix": {"learning_rate": 0.05, "beta1": 0.8, "beta2": 0.95, "beta3": 0.98, "alpha": 3.0, "epsilon": 1e-4,
                 "epsilon_root": 1e-6, "weight_decay": 0.05},
    "lamb": {"learning_rate": 0.05, "beta1": 0.8, "beta2": 0.95, "epsilon": 1e-4, "epsilon_root": 1e-6,
             "weight_decay": 0.05},
    "lars": {"learning_rate": 3.0, "trust_coefficient": 0.02, "epsilon": 1e-3, "momentum": 0.7, "nesterov": True,
             "weight_decay": 0.05},
}
OPTIONS = ("nesterov", "clipping")  # structural: fixed at construction


def field_gradient(p: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The gradient field both sides are fed, in ``p``'s dtype."""
    return (np.sin(3.0 * p) + 0.5 * (p - centre.astype(p.dtype))).astype(p.dtype)


class Stepper:
    """A compiled step ``grads -> updates`` of one optimiser over fresh shared parameters."""

    def __init__(self, rule: str, initial: list[np.ndarray], *, stacked: bool = False, **kwargs: Any) -> None:
        self.params = [pytensor.shared(v.copy(), name=f"p{i}") for i, v in enumerate(initial)]
        if stacked:
            for p in self.params:
                p.tag.seed_axis = True
        masks = {k: [self.params[i] for i in kwargs.pop(k)] for k in ("weight_decay_mask", "trust_ratio_mask")
                 if k in kwargs}
        self.opt = symopt.get(rule)(self.params, **kwargs, **masks)
        grads = [pt.tensor(f"g{i}", dtype=v.dtype, shape=v.shape) for i, v in enumerate(initial)]
        self.step = pytensor.function(grads, [], updates=self.opt.updates(grads=grads))
        self.fresh = self.opt.state_dict()
        self.initial = initial

    def reset(self) -> None:
        for p, v in zip(self.params, self.initial):
            p.set_value(v.copy())
        self.opt.load_state_dict(self.fresh)


@pytest.fixture(scope="module")
def steppers() -> Iterator[Callable[..., Stepper]]:
    """``get(rule, key, **kwargs)``: a compiled Stepper, compiled once per key for the module."""
    cache: dict[Any, Stepper] = {}

    def get(rule: str, key: str = "default", **kwargs: Any) -> Stepper:
        if (rule, key) not in cache:
            cache[(rule, key)] = Stepper(rule, **kwargs)
        return cache[(rule, key)]

    yield get
    cache.clear()


def build_kwargs(rule: str) -> dict[str, Any]:
    """The structural options of the rule's setting (the numbers are set afterwards)."""
    return {k: v for k, v in SETTINGS[rule].items() if k in OPTIONS}


def assert_close(actual: np.ndarray, desired: np.ndarray, what: str, rtol: float = 1e-9) -> None:
    """|a - r| <= rtol (|r| + floor max|r|): rounding errors are absolute, of the order of the
    array's scale, so tiny elements are judged against a floor (float32: 0.1 of the scale,
    as in tests/test_rules.py, since one ulp of the scale is already 6e-8 of it)."""
    assert actual.dtype == desired.dtype, f"{what}: dtype {actual.dtype} != {desired.dtype}"
    floor = 0.1 if desired.dtype == np.float32 else 1e-3
    scale = float(np.max(np.abs(desired), initial=0.0))
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * floor * scale, err_msg=what)


def run_against(stepper: Stepper, reference: Any, centre: list[np.ndarray], steps: int = STEPS,
                rtol: float = 1e-9, per_seed: list[Any] | None = None) -> None:
    """Step both for ``steps`` steps on the same gradients, comparing parameters and slots each step."""
    start = [p.get_value() for p in stepper.params]
    for t in range(1, steps + 1):
        grads = [field_gradient(p.get_value(), c) for p, c in zip(stepper.params, centre)]
        stepper.step(*grads)
        if per_seed is None:
            reference.step(grads)
            expected_params, expected_state = reference.params, reference.state
        else:  # one unstacked reference run per seed, restacked
            for s, ref in enumerate(per_seed):
                ref.step([g[s] for g in grads])
            expected_params = [np.stack([ref.params[i] for ref in per_seed]) for i in range(len(grads))]
            expected_state = [{k: np.stack([ref.state[i][k] for ref in per_seed]) for k in per_seed[0].state[i]}
                              for i in range(len(grads))]
        for i, p in enumerate(stepper.params):
            assert_close(p.get_value(), expected_params[i], f"step {t}: parameter {i}", rtol)
            assert set(stepper.opt.state[i]) == set(expected_state[i]), "slots differ from the reference's"
            for slot, var in stepper.opt.state[i].items():
                assert_close(var.get_value(), expected_state[i][slot], f"step {t}: {slot} of parameter {i}", rtol)
    moved = max(float(np.max(np.abs(p.get_value() - s))) for p, s in zip(stepper.params, start))
    assert moved > 1e-3, f"the run moved only {moved:g}: the comparison would test little"


# ----------------------------------------------------------------------------- references
def test_modern_rules_are_registered_and_exported() -> None:
    for name in MODERN:
        cls = symopt.get(name)
        assert cls.__module__ == "symopt.rules_modern"
        assert getattr(symopt, cls.__name__) is cls
        assert cls.reference.startswith(("torch.optim.", "optax."))
        assert cls.hyperparameters == REFERENCES[name].defaults  # the documented defaults


@pytest.mark.parametrize("setting", ["defaults", "nondefault"])
@pytest.mark.parametrize("rule", MODERN)
def test_matches_numpy_reference(steppers: Callable[..., Stepper], rule: str, setting: str) -> None:
    """40 float64 steps on identical gradients: parameters and every slot, step by step."""
    options = build_kwargs(rule) if setting == "nondefault" else {}
    stepper = steppers(rule, f"options={sorted(options.items())}", initial=INITIAL, **options)
    stepper.reset()
    numbers = SETTINGS[rule] if setting == "nondefault" else {}
    for name, value in numbers.items():
        if name not in OPTIONS:
            stepper.opt.set_hyperparameter(name, value)
    run_against(stepper, REFERENCES[rule](INITIAL, **numbers), CENTRE)


def test_rprop_learning_rate_only_sets_the_first_step_sizes(steppers: Callable[..., Stepper]) -> None:
    """torch initialises Rprop's step sizes to lr once; a later learning rate changes nothing."""
    stepper = steppers("rprop", "options=[]", initial=INITIAL)
    stepper.reset()
    stepper.opt.set_hyperparameter("learning_rate", 0.03)
    reference = REFERENCES["rprop"](INITIAL, learning_rate=0.03)
    run_against(stepper, reference, CENTRE, steps=1)
    stepper.opt.set_hyperparameter("learning_rate", 5.0)  # ignored from now on
    run_against(stepper, reference, CENTRE, steps=20)


# ----------------------------------------------------------------------------- trust ratios
S = 3  # seeds
STACKED = [np.stack([_rng.normal(size=s) for _ in range(S)]) for s in SHAPES]
STACKED_CENTRE = [np.stack([_rng.normal(size=s) for _ in range(S)]) for s in SHAPES]
TRUST = {
    "lamb": {"learning_rate": 0.05, "weight_decay": 0.1},
    "lars": {"learning_rate": 5.0, "weight_decay": 0.1, "momentum": 0.5},
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("rule", ["lamb", "lars"])
def test_trust_ratio_is_per_seed_on_stacked_parameters(steppers: Callable[..., Stepper], rule: str, dtype: str) -> None:
    """A parameter tagged with a seed axis steps as S separate runs (norms per seed)."""
    initial = [v.astype(dtype) for v in STACKED]
    stepper = steppers(rule, f"stacked-{dtype}", initial=initial, stacked=True, **TRUST[rule])
    stepper.reset()
    per_seed = [REFERENCES[rule]([v[s] for v in initial], **TRUST[rule]) for s in range(S)]
    # float32: the sides round the norms' sums and LAMB's m / sqrt(v) (ill-conditioned where
    # a gradient component is near 0) differently; observed <= 5.3e-6 (LAMB) over 40 steps.
    run_against(stepper, None, STACKED_CENTRE, rtol=1e-9 if dtype == "float64" else 5e-5, per_seed=per_seed)
    for p in stepper.params:
        assert p.get_value().dtype == dtype
        for var in stepper.opt.state[stepper.params.index(p)].values():
            assert var.get_value().dtype == dtype


@pytest.mark.parametrize("rule", ["lamb", "lars"])
def test_untagged_stack_is_one_tensor(steppers: Callable[..., Stepper], rule: str) -> None:
    """Without the seed-axis tag the same array is one tensor with one norm: the seeds couple,
    and the per-seed reference does not match (the check above can tell the difference)."""
    stepper = steppers(rule, "untagged", initial=STACKED, **TRUST[rule])
    stepper.reset()
    whole = REFERENCES[rule](STACKED, **TRUST[rule])
    run_against(stepper, whole, STACKED_CENTRE, steps=10)
    per_seed = [REFERENCES[rule]([v[s] for v in STACKED], **TRUST[rule]) for s in range(S)]
    for _ in range(10):
        for s, ref in enumerate(per_seed):
            ref.step([field_gradient(v, c[s]) for v, c in zip(ref.params, STACKED_CENTRE)])
    separate = np.stack([ref.params[0] for ref in per_seed])
    assert np.max(np.abs(stepper.params[0].get_value() - separate)) > 1e-4 * np.max(np.abs(separate))


def test_reference_seed_axis_matches_separate_runs() -> None:
    """The reference's own seed_axis option agrees with separate runs (so either can be the oracle)."""
    assert {cls.__name__ for cls in TrustRatioRule.__subclasses__()} >= {"LAMB", "LARS"}
    for rule in ("lamb", "lars"):
        stacked = REFERENCES[rule](STACKED, seed_axis=True, **TRUST[rule])
        separate = [REFERENCES[rule]([v[s] for v in STACKED], **TRUST[rule]) for s in range(S)]
        for _ in range(5):
            stacked.step([field_gradient(v, c) for v, c in zip(stacked.params, STACKED_CENTRE)])
            for s, ref in enumerate(separate):
                ref.step([field_gradient(v, c[s]) for v, c in zip(ref.params, STACKED_CENTRE)])
        for i in range(len(SHAPES)):
            np.testing.assert_allclose(stacked.params[i], np.stack([r.params[i] for r in separate]), rtol=1e-12)


@pytest.mark.parametrize("rule", ["lamb", "lars"])
def test_masks(steppers: Callable[..., Stepper], rule: str) -> None:
    """weight_decay_mask (both) and LARS's trust_ratio_mask leave the vector out, as optax's masks."""
    kwargs: dict[str, Any] = {**TRUST[rule], "weight_decay_mask": [0]}
    masks = {"decay_mask": [True, False]}
    if rule == "lars":
        kwargs["trust_ratio_mask"] = [0]
        masks["trust_mask"] = [True, False]
    stepper = steppers(rule, "masks", initial=INITIAL, **kwargs)
    stepper.reset()
    numbers = TRUST[rule]
    run_against(stepper, REFERENCES[rule](INITIAL, **masks, **numbers), CENTRE)


# ----------------------------------------------------------------------------- validation
W = pytensor.shared(np.zeros((2, 2)), name="W")
OTHER = pytensor.shared(np.zeros(2), name="other")

BAD: list[tuple[str, dict[str, Any], str]] = [
    ("rprop", {"eta_minus": 1.0}, "'eta_minus' must lie in (0, 1)"),
    ("rprop", {"eta_minus": 0.0}, "'eta_minus' must lie in (0, 1)"),
    ("rprop", {"eta_plus": 1.0}, "'eta_plus' must lie in (1, inf)"),
    ("rprop", {"step_size_min": -1e-6}, "'step_size_min' must lie in [0, inf)"),
    ("rprop", {"step_size_max": 0.0}, "'step_size_max' must lie in (0, inf)"),
    ("rprop", {"step_size_min": 1.0, "step_size_max": 0.5}, "'step_size_min' (1.0) must not exceed 'step_size_max'"),
    ("asgd", {"lambd": -0.1}, "'lambd' must lie in [0, inf)"),
    ("asgd", {"alpha": -1.0}, "'alpha' must lie in [0, inf)"),
    ("asgd", {"t0": -1.0}, "'t0' must lie in [0, inf)"),
    ("adabelief", {"beta2": 1.0}, "'beta2' must lie in [0, 1)"),
    ("adabelief", {"epsilon_root": -1e-16}, "'epsilon_root' must lie in [0, inf)"),
    ("adopt", {"epsilon": 0.0}, "'epsilon' must be > 0"),
    ("adopt", {"beta1": 1.5}, "'beta1' must lie in [0, 1)"),
    ("ademamix", {"beta3": 1.0}, "'beta3' must lie in [0, 1)"),
    ("ademamix", {"alpha": -5.0}, "'alpha' must lie in [0, inf)"),
    ("lamb", {"epsilon": -1.0}, "'epsilon' must lie in [0, inf)"),
    ("lars", {"trust_coefficient": 0.0}, "'trust_coefficient' must lie in (0, inf)"),
    ("lars", {"momentum": 1.0}, "'momentum' must lie in [0, 1)"),
    ("adagrad", {"lr_decay": -0.1}, "'lr_decay' must lie in [0, inf)"),
    ("adagrad", {"initial_accumulator_value": -1.0}, "'initial_accumulator_value' must lie in [0, inf)"),
]


@pytest.mark.parametrize(("rule", "kwargs", "message"), BAD, ids=[f"{r}-{'-'.join(k)}" for r, k, _ in BAD])
def test_out_of_range_hyperparameter_is_one_clear_error(rule: str, kwargs: dict[str, Any], message: str) -> None:
    cls = symopt.get(rule)
    with pytest.raises(ValueError, match=f"^{cls.__name__}.*" + _escape(message)):
        cls([W], **kwargs)
    if len(kwargs) == 1:  # and through set_hyperparameter, leaving the value unchanged
        opt = cls([W])
        before = opt.hyperparameters
        ((name, value),) = kwargs.items()
        with pytest.raises(ValueError, match=_escape(message.split(" (")[0])):
            opt.set_hyperparameter(name, value)
        assert opt.hyperparameters == before


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_rprop_bounds_checked_per_group_and_on_load() -> None:
    opt = symopt.Rprop([{"params": [W]}, {"params": [OTHER], "step_size_max": 1e-3}])
    with pytest.raises(ValueError, match=r"param group 1.*'step_size_min' \(0.01\) must not exceed"):
        opt.set_hyperparameter("step_size_min", 0.01)
    assert opt.get_hyperparameter("step_size_min", group=0) == 1e-6  # nothing half-applied
    opt.set_hyperparameter("step_size_min", 0.01, group=0)  # fine where the maximum is 50
    state = opt.state_dict()
    state["hyperparameters"][1]["step_size_min"] = np.float64(0.5)
    with pytest.raises(ValueError, match="param group 1"):
        opt.load_state_dict(state)
    assert opt.get_hyperparameter("step_size_min", group=1) == 1e-6
    with pytest.raises(ValueError, match=r"param group 1.*must not exceed"):
        symopt.Rprop([{"params": [W]}, {"params": [OTHER], "step_size_min": 2.0, "step_size_max": 1.0}])


def test_lars_trust_ratio_mask_names_foreign_parameters() -> None:
    with pytest.raises(ValueError, match="LARS: trust_ratio_mask names 'other'"):
        symopt.LARS([W], trust_ratio_mask=[OTHER])
    with pytest.raises(TypeError, match="LARS got an unknown hyperparameter 'trust_mask'"):
        symopt.LARS([W], trust_mask=[W])
