"""The functional convention (symopt.updates): one Lasagne/PyMC-style function per registered
rule, checked against the NumPy references of tests/reference.py; partials; gradients given
as a list; the errors. One compiled function for every rule together."""

from __future__ import annotations

import functools
import inspect
import re
from collections import OrderedDict
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import symopt
from symopt import updates as U
from tests.reference import REFERENCES

A = np.array([1.0, 2.0, 0.5])
C = np.array([1.0, -1.0, 2.0])
START = np.array([0.3, 0.4, -0.2])
STEPS = 4
#: a non-default setting per rule, so the hyperparameters demonstrably reach the class
SETTINGS: dict[str, dict[str, float]] = {name: {"learning_rate": 0.05} for name in REFERENCES}
SETTINGS["lion"] = {"learning_rate": 0.01, "beta1": 0.8}
SETTINGS["adadelta"] = {"learning_rate": 0.5, "rho": 0.9}
#: rules that optimise matrices only get a 2x3 matrix (rows START and -START)
MATRIX_ONLY = {"muon"}


def start(name: str) -> np.ndarray:
    return np.stack([START, -START]) if name in MATRIX_ONLY else START.copy()


#: The references of SAM and Sophia model tests/test_rules.py's network, not this quadratic.
FIRST_ORDER = [name for name in REFERENCES if not symopt.OPTIMIZERS[name].needs_loss]


def quadratic(p: Any) -> Any:
    return (A * (p - C) ** 2).sum()


@pytest.fixture(scope="module")
def every_rule() -> dict[str, Any]:
    """ONE compiled function: each built-in rule's function on its own parameter. Half the
    rules get the loss, half a list of gradients (Lasagne's get_or_compute_grads)."""
    params, updates = {}, OrderedDict()
    for i, name in enumerate(FIRST_ORDER):
        p = pytensor.shared(start(name), name=f"p_{name}")
        params[name] = p
        function = getattr(U, name)
        given = quadratic(p) if i % 2 else [2 * A * (p - C)]
        updates.update(function(given, [p], **SETTINGS[name]))
    step = pytensor.function([], [], updates=updates)
    return {"params": params, "step": step}


def test_every_registered_rule_has_its_function_matching_the_numpy_reference(every_rule: dict[str, Any]) -> None:
    assert set(REFERENCES) <= set(U.__all__)
    references = {name: REFERENCES[name]([start(name)], **SETTINGS[name]) for name in FIRST_ORDER}
    for _ in range(STEPS):
        every_rule["step"]()
        for name, reference in references.items():
            reference.step([2 * A * (reference.params[0] - C)])
            np.testing.assert_allclose(every_rule["params"][name].get_value(), reference.params[0],
                                       rtol=1e-12, atol=1e-14, err_msg=name)


def test_functions_are_named_with_the_rules_signature_and_doc() -> None:
    for name in symopt.registry.rules():  # lbfgs, the full-batch kind: test_lbfgs_function_*
        cls = symopt.OPTIMIZERS[name]
        function = getattr(U, name)
        assert function.__name__ == name and function.__module__ == "symopt.updates"
        parameters = inspect.signature(function).parameters
        names = list(parameters)
        assert names[:2] == ["loss_or_grads", "params"]
        assert names[2: 2 + len(cls.hyperparameters)] == list(cls.hyperparameters)
        assert {k: parameters[k].default for k in cls.hyperparameters} == cls.hyperparameters
        assert parameters["clip_global_norm"].kind is inspect.Parameter.KEYWORD_ONLY
        assert cls.__name__ in function.__doc__ and "partial" in function.__doc__
    assert U.nesterov_momentum._symopt_rule is symopt.Nesterov


def test_without_loss_and_params_a_partial_as_pymc_builds_them() -> None:
    p = pytensor.shared(START.copy(), name="p")
    made = U.sgd(learning_rate=0.25)
    assert isinstance(made, functools.partial) and made.keywords == {"learning_rate": 0.25}
    out = made([2 * A * (p - C)], [p])  # PyMC calls obj_optimizer(grads, params)
    assert isinstance(out, OrderedDict) and list(out)[0] is p
    new = pytensor.function([], out[p])()
    np.testing.assert_allclose(new, START - 0.25 * 2 * A * (START - C), rtol=1e-14)
    # positional hyperparameters, in the rule's order (Lasagne's sgd(loss, params, learning_rate))
    new = pytensor.function([], U.sgd(quadratic(p), [p], 0.5)[p])()
    np.testing.assert_allclose(new, START - 0.5 * 2 * A * (START - C), rtol=1e-14)


def test_float32_parameters_stay_float32() -> None:
    p = pytensor.shared(START.astype("float32"), name="p32")
    out = U.adam(quadratic(p), [p], learning_rate=0.1)
    assert all(new.dtype == var.dtype for var, new in out.items())
    assert out[p].dtype == "float32"


def test_a_rule_registered_later_gets_a_function() -> None:
    @symopt.register("signsgd_for_updates_test")
    class SignSGD(symopt.Optimizer):
        """p <- p - lr * sign(g)"""

        hyperparameters = {"learning_rate": 0.01}
        slots: dict[str, float] = {}

        def update_param(self, param, grad, state):
            return param - self.learning_rate * pt.sign(grad), {}

    try:
        function = U.signsgd_for_updates_test
        assert "signsgd_for_updates_test" in dir(U)
        assert list(inspect.signature(function).parameters)[:4] == ["loss_or_grads", "params", "learning_rate", "weight_decay"]
        p = pytensor.shared(START.copy(), name="p")
        new = pytensor.function([], function(quadratic(p), [p], learning_rate=0.1)[p])()
        np.testing.assert_allclose(new, START - 0.1 * np.sign(2 * A * (START - C)), rtol=1e-14)
    finally:
        del symopt.OPTIMIZERS["signsgd_for_updates_test"]
    with pytest.raises(AttributeError, match="no attribute 'signsgd_for_updates_test'; registered rules: sgd"):
        U.signsgd_for_updates_test


def test_errors_name_the_problem() -> None:
    p = pytensor.shared(START.copy(), name="p")
    with pytest.raises(TypeError, match=re.escape(
            "symopt.updates.adam: got an unexpected keyword argument 'lr' (did you mean 'learning_rate'?); "
            "it takes loss_or_grads, params, learning_rate")):
        U.adam(lr=0.1)
    with pytest.raises(ValueError, match=re.escape(
            "symopt.updates.adam: params is missing; give both loss_or_grads and params, or neither to get a partial")):
        U.adam(quadratic(p), learning_rate=0.1)
    with pytest.raises(ValueError, match=re.escape("symopt.updates.sgd: loss_or_grads is missing")):
        U.sgd(params=[p])
    with pytest.raises(ValueError, match="got 2 gradients for 1 parameters"):
        U.sgd([2 * A * (p - C), 2 * A * (p - C)], [p])
    with pytest.raises(ValueError, match="learning_rate"):
        U.adam(quadratic(p), [p], learning_rate=-1.0)  # the class's own check
    with pytest.raises(TypeError, match=re.escape("symopt.updates.sgd: too many positional arguments")):
        U.sgd(quadratic(p), [p], 0.1, 0.0, 7)
    with pytest.raises(ValueError, match="params must all be shared variables"):
        U.get_or_compute_grads(quadratic(p), [p * 2])
    assert U.get_or_compute_grads((1, 2), [p, p]) == [1, 2]
