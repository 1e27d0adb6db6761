"""symopt's ``JAX`` mode (``symopt._jax``): same numbers as the default backend, donated state.

Skipped without jax (``pip install -e '.[bench]'``). Each rule's train step is compiled
once per module for each backend (module-scoped fixtures), on a small float32 MLP.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import symopt
from symopt import function

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason="jax not installed (pip install -e '.[bench]')"
)

STEPS = 6
RULES = ["sgd", "momentum", "adam", "adamw", "nadam", "lion"]


def _train(rule: str, mode: Any, steps: int = STEPS) -> dict[str, Any]:
    """``steps`` steps of ``rule`` on a float32 MLP 6-5-4-3; parameters, state and losses as NumPy."""
    rng = np.random.default_rng(0)
    x_data = rng.normal(size=(8 * steps, 6)).astype("float32")
    y_data = rng.integers(0, 3, 8 * steps).astype("int64")
    model = symopt.nn.MLP([6, 5, 4, 3], activation="relu", init="he", seed=0, dtype="float32")
    opt = symopt.get(rule)(model.params)
    x, y = pt.matrix("x", dtype="float32"), pt.vector("y", dtype="int64")
    # JAX traces the class count of cross_entropy's one-hot only when it is static.
    loss = symopt.nn.cross_entropy(pt.specify_shape(model.output(x, train=True), (None, 3)), y)
    step = function([x, y], loss, updates=opt.updates(loss), mode=mode)
    losses = [np.asarray(step(x_data[i : i + 8], y_data[i : i + 8])) for i in range(0, 8 * steps, 8)]
    state = [np.asarray(s.get_value()) for slots in opt.state for s in slots.values()]
    return {"params": [np.asarray(p.get_value()) for p in model.params], "state": state, "losses": losses,
            "step": step}


@pytest.fixture(scope="module", params=RULES)
def runs(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any], dict[str, Any]]:
    return request.param, _train(request.param, None), _train(request.param, "JAX")


def test_jax_mode_gives_the_default_modes_numbers(runs: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    """Every parameter, optimiser slot and loss after 6 steps equals the default backend's (float32)."""
    rule, ref, got = runs
    np.testing.assert_allclose(np.array(got["losses"]), np.array(ref["losses"]), rtol=1e-5)
    assert len(got["params"]) == 6 and len(got["state"]) == len(ref["state"])
    for a, b in zip(got["params"] + got["state"], ref["params"] + ref["state"], strict=True):
        assert a.dtype == b.dtype == np.float32
        # Lion moves each weight by +-lr * sign: a sign that flips on float32 round-off
        # near zero moves it by 2 lr (1e-4) instead of 0; elsewhere float32 round-off.
        atol = 2.5e-4 if rule == "lion" else 1e-6
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol)


def test_jax_mode_donates_the_updated_state(runs: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    """The updated shared variables (parameters, slots, step count) are donated; the batch is not."""
    _, _, got = runs
    step = got["step"]
    inputs = step.maker.fgraph.inputs
    updated = set(step.maker.fgraph.update_mapping.values())
    donated = set(step.vm.jit_fn.donated)
    assert donated == {i for i in updated if isinstance(inputs[i], pytensor.compile.SharedVariable)}
    assert len(donated) >= 6 and not donated & {0, 1}  # every parameter at least; never x, y


def test_jax_mode_without_donation_gives_the_same_numbers() -> None:
    """Donation changes where XLA writes, not what: Adam with and without it agree."""
    from symopt._jax import DeviceSharedJAXLinker

    DeviceSharedJAXLinker.donate_updated = False
    try:
        plain = _train("adam", "JAX")
    finally:
        DeviceSharedJAXLinker.donate_updated = True
    assert plain["step"].vm.jit_fn.donated == ()
    donated = _train("adam", "JAX")
    for a, b in zip(donated["params"] + donated["state"], plain["params"] + plain["state"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_donation_keeps_returned_values_and_user_arrays() -> None:
    """Outputs already returned, NumPy arrays given to set_value and values shared by two
    updated variables survive later calls (donated buffers are XLA's to overwrite)."""
    w = pytensor.shared(np.ones(3, dtype="float32"), name="w")
    double = function([], w * 2, updates={w: w * 2}, mode="JAX")
    first, second = double(), double()
    np.testing.assert_array_equal(np.asarray(first), [2, 2, 2])
    np.testing.assert_array_equal(np.asarray(second), [4, 4, 4])

    v = pytensor.shared(np.zeros(3, dtype="float32"), name="v")
    old_value = function([], v, updates={v: v + 1}, mode="JAX")  # returns the value before the update
    assert [float(np.asarray(old_value())[0]) for _ in range(3)] == [0.0, 1.0, 2.0]

    mine = np.full(3, 5.0, dtype="float32")
    v.set_value(mine, borrow=True)  # NumPy memory: copied to the device, never written by XLA
    old_value()
    old_value()
    np.testing.assert_array_equal(mine, [5, 5, 5])
    np.testing.assert_array_equal(np.asarray(v.get_value()), [7, 7, 7])

    a = pytensor.shared(np.ones(3, dtype="float32"), name="a")
    b = pytensor.shared(np.ones(3, dtype="float32"), name="b")
    both = function([], [], updates={a: a + 1, b: b + 10}, mode="JAX")
    both()
    b.set_value(a.get_value(borrow=True, return_internal_type=True), borrow=True)  # one array, two variables
    both()
    np.testing.assert_array_equal(np.asarray(a.get_value()), [3, 3, 3])
    np.testing.assert_array_equal(np.asarray(b.get_value()), [12, 12, 12])
