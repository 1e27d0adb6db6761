"""symopt.hyperparameter and the class-level rule queries: declarations, validate, slots_for,
the bounds table derived from the declarations, and old-style rules next to new-style ones."""

from __future__ import annotations

import math
import re

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import symopt
from symopt import Hyperparameter

# The table as it was written by hand before the declarations existed.
HAND_WRITTEN_BOUNDS = {
    "learning_rate": (0.0, math.inf, True, False),
    "momentum": (0.0, 1.0, True, False),
    "rho": (0.0, 1.0, True, False),
    "beta1": (0.0, 1.0, True, False),
    "beta2": (0.0, 1.0, True, False),
    "epsilon": (0.0, math.inf, True, False),
    "weight_decay": (0.0, math.inf, True, False),
    "momentum_decay": (0.0, math.inf, True, False),
    "beta1_decay": (0.0, 1.0, False, True),
}


def test_bounds_table_is_derived_from_the_declarations() -> None:
    # The classic rules' names keep the ranges of the old hand-written table; names added by later
    # rules come from their own declarations.
    assert {k: symopt.HYPERPARAMETER_BOUNDS[k] for k in HAND_WRITTEN_BOUNDS} == HAND_WRITTEN_BOUNDS
    declared_anywhere = {name: h.bounds(name) for cls in map(symopt.get, symopt.registry.rules())
                         for name, h in cls.declarations().items() if not h.is_option}
    for name, bounds in symopt.HYPERPARAMETER_BOUNDS.items():
        assert declared_anywhere.get(name) == bounds, name
    declared = symopt.Adam.declarations()
    assert declared["beta1_decay"].bounds("beta1_decay") == (0.0, 1.0, False, True)
    assert declared["amsgrad"].is_option and declared["amsgrad"].default is False
    assert symopt.AdamW.declarations()["weight_decay"].default == 0.01
    assert symopt.Adam.hyperparameters == {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8,
                                           "beta1_decay": 1.0, "amsgrad": False, "epsilon_hat": False,
                                           "weight_decay": 0.0}


@pytest.mark.parametrize(
    "config",
    [dict(beta1=1.0), dict(learning_rate=-1.0), dict(epsilon=math.nan), dict(beta1_decay=0.0), dict(amsgrad=1),
     dict(lr=0.1), dict(learning_rte=0.1), dict(clip_norm=0.0), dict(accumulate=0), dict(skip_nonfinite="no")],
)
def test_validate_raises_what_construction_raises(config: dict) -> None:
    W = pytensor.shared(np.zeros(3), name="W")
    with pytest.raises((TypeError, ValueError)) as constructed:
        symopt.Adam([W], **config)
    with pytest.raises(type(constructed.value), match=re.escape(str(constructed.value))):
        symopt.Adam.validate(**config)


def test_validate_fills_defaults() -> None:
    assert symopt.RMSprop.validate(rho=0.5, clip_value=2) == {
        "learning_rate": 1e-3, "rho": 0.5, "epsilon": 1e-8, "momentum": 0.0, "centered": False,
        "epsilon_inside_sqrt": False, "weight_decay": 0.0, "clip_value": 2.0}
    with pytest.raises(TypeError, match=re.escape("unknown hyperparameter 'lr' (did you mean 'learning_rate'?)")):
        symopt.SGD.validate(lr=0.1)


def test_slots_for() -> None:
    assert symopt.Adam.slots_for() == {"exp_avg": 0.0, "exp_avg_sq": 0.0}
    assert set(symopt.Adam.slots_for(amsgrad=True)) == {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert set(symopt.RMSprop.slots_for(centered=True, momentum=0.9)) == {"square_avg", "grad_avg", "momentum_buffer"}
    assert symopt.SGD.slots_for() == {}
    W = pytensor.shared(np.zeros(3), name="W")
    assert set(symopt.AMSGrad([W]).state[0]) == set(symopt.AMSGrad.slots_for(amsgrad=True))


def test_declaration_checks() -> None:
    with pytest.raises(ValueError, match=re.escape("'beta' must lie in [0, 1)")):
        class Bad(symopt.Optimizer):
            hyperparameters = {"beta": Hyperparameter(1.5, low=0.0, high=1.0)}
    d = Hyperparameter(2.0, low=1.0, low_inclusive=False)
    assert d.check("X", "k", 1.5) == 1.5
    with pytest.raises(ValueError, match=re.escape("X: hyperparameter 'k' must lie in (1, inf)")):
        d.check("X", "k", 1.0)


class OldMomentum(symopt.Optimizer):
    """Heavy ball written the old way: self.<hyperparameter>, self.t, float64_scalars."""

    hyperparameters = {"learning_rate": 0.01, "momentum": 0.9}
    slots = {"velocity": 0.0}

    def update_param(self, param, grad, state):
        with self.float64_scalars() as cast:
            lr = cast(self.learning_rate * self.t / self.t)  # exercises t and the float64 block
        velocity = self.momentum * state["velocity"] + grad
        return param - lr * velocity, {"velocity": velocity}


class NewMomentum(symopt.Optimizer):
    hyperparameters = {"learning_rate": Hyperparameter(0.01, low=0.0), "momentum": Hyperparameter(0.9, 0.0, 1.0)}
    slots = {"velocity": 0.0}

    def update_param(self, param, grad, state, h):
        with h.float64() as f:
            lr = f.cast(f.learning_rate * f.t / f.t)
        velocity = h.momentum * state["velocity"] + grad
        return param - lr * velocity, {"velocity": velocity}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_old_and_new_style_rules_agree(dtype: str) -> None:
    """Same math both ways: the same numbers, and the NumPy heavy ball to rounding."""
    rng = np.random.default_rng(3)
    init = rng.normal(size=(4,)).astype(dtype)
    grads = [rng.normal(size=(4,)).astype(dtype) for _ in range(4)]
    results = []
    for rule in (OldMomentum, NewMomentum, symopt.Momentum):
        p = pytensor.shared(init.copy(), name="p")
        g = pt.vector("g", dtype=dtype)
        opt = rule([p], learning_rate=0.1, momentum=0.5, weight_decay=0.01)
        step = pytensor.function([g], [], updates=opt.updates(grads=[g]))
        for batch in grads:
            step(batch)
        assert p.get_value().dtype == dtype
        results.append(p.get_value())
    np.testing.assert_array_equal(results[0], results[1])
    ref, v = init.astype(np.float64), np.zeros(4)
    for batch in grads:
        v = 0.5 * v + batch + 0.01 * ref
        ref = ref - 0.1 * v
    tol = 1e-5 if dtype == "float32" else 1e-12
    for got in results:
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
    # bare numbers under a known name take the shared range
    with pytest.raises(ValueError, match=re.escape("OldMomentum: hyperparameter 'momentum' must lie in [0, 1)")):
        OldMomentum([pytensor.shared(init)], momentum=1.0)


def test_old_style_subclass_may_call_a_new_style_rule() -> None:
    """An old-style rule extending a built-in through super().update_param(param, grad, state)."""

    class Halved(symopt.Momentum):
        def update_param(self, param, grad, state):
            new, slots = super().update_param(param, grad, state)
            return param + 0.5 * (new - param), slots

    p = pytensor.shared(np.array([1.0, -1.0]), name="p")
    g = pt.vector("g", dtype="float64")
    step = pytensor.function([g], [], updates=Halved([p], learning_rate=0.1, momentum=0.5).updates(grads=[g]))
    ref, v = np.array([1.0, -1.0]), np.zeros(2)
    for batch in ([1.0, 2.0], [-3.0, 0.5]):
        step(np.array(batch))
        v = 0.5 * v + np.array(batch)
        ref = ref - 0.5 * 0.1 * v
    np.testing.assert_allclose(p.get_value(), ref, rtol=1e-14)
