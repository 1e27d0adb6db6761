"""Tests of the :class:`symopt.Optimizer` machinery: the updates dict, the step counter,
hyperparameters changed in compiled functions, dtypes, state (de)serialisation and
input validation.

Rule numerics live in ``test_rules.py``; here expected numbers come from NumPy written
from the equations (mostly plain SGD, whose step is easy to state by hand).

Cold Numba compilation dominates the run time, so every compiled function is tiny,
functions used by several tests are module-scoped fixtures, and most checks work on
the symbolic graph without compiling anything.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.graph.traversal import ancestors
from pytensor.tensor.shape import SpecifyShape

import symopt
from symopt.optimizer import Optimizer

# --------------------------------------------------------------------------- helpers

# W a vector and b a 0-d scalar: tiny, and distinct shapes so shape errors can name the culprit
W_SHAPE, B_SHAPE = (3,), ()


def shared(value: np.ndarray, name: str) -> Any:
    """A fresh shared variable holding a private copy of ``value``."""
    return pytensor.shared(np.array(value, copy=True), name=name)


def initial_params(seed: int = 0, dtype: str = "float64") -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=W_SHAPE).astype(dtype), np.asarray(rng.normal(size=B_SHAPE), dtype=dtype)


def batches(count: int, seed: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=W_SHAPE), rng.normal(size=W_SHAPE)) for _ in range(count)]


def toy_model(W: Any, b: Any) -> tuple[Any, Any, Any]:
    """(x, y, sum((x * W + b - y)^2)): the model every test shares.

    Vectors on purpose: a first matrix product or 2-d reduction costs ~7-10 s of cold
    Numba compilation, and nothing here needs one.
    """
    x = pt.vector("x", dtype="float64")
    y = pt.vector("y", dtype="float64")
    return x, y, ((x * W + b - y) ** 2).sum()


def numpy_grads(W: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hand-derived gradient of sum((x * W + b - y)^2) with r = x * W + b - y: 2 r x and sum(2 r)."""
    r = x * W + b - y
    return 2 * r * x, np.asarray(2 * r.sum())


def assert_state_equal(a: Mapping[str, Any], b: Mapping[str, Any], path: str = "state") -> None:
    """Recursive bit-exact comparison of two ``state_dict()`` results (values and dtypes)."""
    assert isinstance(b, Mapping) and set(a) == set(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
    for key in a:
        va, vb = a[key], b[key]
        where = f"{path}[{key!r}]"
        if isinstance(va, Mapping):
            assert_state_equal(va, vb, where)
        elif isinstance(va, list):
            assert len(va) == len(vb), where
            for i, (ea, eb) in enumerate(zip(va, vb)):
                if isinstance(ea, Mapping):
                    assert_state_equal(ea, eb, f"{where}[{i}]")
                else:
                    assert np.asarray(ea).dtype == np.asarray(eb).dtype, f"{where}[{i}]"
                    assert np.array_equal(ea, eb), f"{where}[{i}]"
        elif isinstance(va, str):
            assert va == vb, where
        else:
            assert np.asarray(va).dtype == np.asarray(vb).dtype, where
            assert np.array_equal(va, vb), where


def all_state_vars(opt: Optimizer) -> list[Any]:
    """Every state shared variable: per-parameter slots and optimiser-wide scalars."""
    out = [var for slots in opt.state for var in slots.values()]
    out += [var for group in opt.param_groups for var in group.scalars.values()]
    return out


class MinusStep(Optimizer):
    """p <- p - t: after k steps p has moved by 1 + 2 + ... + k, exposing ``self.t``."""

    hyperparameters: dict[str, Any] = {}

    def update_param(self, param, grad, state):
        return param - self.t, {}


# --------------------------------------------------------------------------- updates()


@pytest.mark.parametrize(
    ("rule", "options", "slots", "scalars"),
    [
        (symopt.Adam, {"amsgrad": True}, {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}, set()),
        (symopt.NAdam, {}, {"exp_avg", "exp_avg_sq"}, {"mu_product"}),
        (symopt.RMSprop, {"centered": True, "momentum": 0.9}, {"square_avg", "grad_avg", "momentum_buffer"}, set()),
    ],
)
def test_updates_order_is_params_then_state_then_counter(
    rule: type[Optimizer], options: dict[str, Any], slots: set[str], scalars: set[str]
) -> None:
    W0, b0 = initial_params()
    W, b = shared(W0, "W"), shared(b0, "b")
    _, _, loss = toy_model(W, b)
    opt = rule([W, b], **options)
    assert [set(s) for s in opt.state] == [slots, slots]
    assert set(opt.param_groups[0].scalars) == scalars
    updates = opt.updates(loss)

    assert isinstance(updates, OrderedDict)
    keys = list(updates)
    assert keys[:2] == [W, b]
    assert keys[-1] is opt.iterations
    state = all_state_vars(opt)
    assert len(state) == len(set(state)) == len(keys) - 3
    assert set(keys[2:-1]) == set(state)
    # every new value must fit its variable exactly, or pytensor.function would reject it
    for var, value in updates.items():
        assert (value.dtype, value.ndim) == (var.dtype, var.ndim), var.name


def test_updates_with_param_groups_cover_every_param_once() -> None:
    W0, b0 = initial_params()
    W, b = shared(W0, "W"), shared(b0, "b")
    _, _, loss = toy_model(W, b)
    opt = symopt.NAdam([{"params": [W]}, {"params": [b], "beta1": 0.8}])
    keys = list(opt.updates(loss))
    assert keys[:2] == [W, b] and keys[-1] is opt.iterations
    assert set(keys[2:-1]) == set(all_state_vars(opt))
    assert len(opt.param_groups) == 2


def test_counter_increments_and_t_is_one_based() -> None:
    p = shared(np.zeros(2), "p")
    opt = MinusStep([p])
    step = pytensor.function([], [], updates=opt.updates(p.sum()))
    assert opt.iterations.get_value() == 0

    moves = []
    for expected_count in (1, 2, 3):
        before = p.get_value()
        step()
        moves.append(float((before - p.get_value())[0]))
        assert opt.iterations.get_value() == expected_count
    assert moves == [1.0, 2.0, 3.0]  # t seen inside the step is 1, 2, 3
    np.testing.assert_array_equal(p.get_value(), [-6.0, -6.0])

    # t is read from the counter at run time, so restoring a counter resumes the numbering
    opt.iterations.set_value(np.int64(10))
    before = p.get_value()
    step()
    np.testing.assert_array_equal(before - p.get_value(), [11.0, 11.0])
    assert opt.iterations.get_value() == 11


def test_grads_path_matches_loss_path_and_hand_computed_sgd() -> None:
    W0, b0 = initial_params()
    W, b = shared(W0, "W"), shared(b0, "b")
    x, y, loss = toy_model(W, b)
    gW = pt.vector("gW", dtype="float64")
    gb = pt.scalar("gb", dtype="float64")
    opt = symopt.SGD([W, b], learning_rate=0.1)
    from_loss = opt.updates(loss)
    from_grads = opt.updates(grads=[gW, gb])
    assert list(from_loss) == list(from_grads)
    # evaluate both sets of new values side by side without applying them
    evaluate = pytensor.function([x, y, gW, gb], list(from_loss.values()) + list(from_grads.values()))

    xv, yv = batches(1)[0]
    gWv, gbv = numpy_grads(W0, b0, xv, yv)
    W_loss, b_loss, it_loss, W_grads, b_grads, it_grads = evaluate(xv, yv, gWv, gbv)
    np.testing.assert_allclose(W_loss, W0 - 0.1 * gWv, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(b_loss, b0 - 0.1 * gbv, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(W_grads, W0 - 0.1 * gWv, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(b_grads, b0 - 0.1 * gbv, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(W_loss, W_grads, rtol=1e-12, atol=1e-14)
    assert it_loss == it_grads == 1
    np.testing.assert_array_equal(W.get_value(), W0)  # nothing was applied


# --------------------------------------------------------------------------- hyperparameters




def test_set_hyperparameter_changes_compiled_function_without_recompiling(count_compilations: list[int]) -> None:
    W0, b0 = initial_params()
    W, b = shared(W0, "W"), shared(b0, "b")
    x, y, loss = toy_model(W, b)
    opt = symopt.SGD([{"params": [W]}, {"params": [b], "learning_rate": 0.5}], learning_rate=0.1)
    assert opt.get_hyperparameter("learning_rate", group=0) == 0.1
    assert opt.get_hyperparameter("learning_rate", group=1) == 0.5

    train = pytensor.function([x, y], loss, updates=opt.updates(loss))
    compiled = count_compilations[0]
    assert compiled >= 1  # the counter does see a compilation
    maker = train.maker

    Wv, bv = W0.copy(), b0.copy()
    # (learning rate of W's group, of b's group) in force at each step, and how it was set
    schedule: list[tuple[float, float, Callable[[], None]]] = [
        (0.1, 0.5, lambda: None),
        (0.01, 0.01, lambda: opt.set_hyperparameter("learning_rate", 0.01)),
        (0.01, 0.2, lambda: opt.set_hyperparameter("learning_rate", 0.2, group=1)),
    ]
    for (lr_W, lr_b, change), (xv, yv) in zip(schedule, batches(3)):
        change()
        assert opt.get_hyperparameter("learning_rate", group=0) == lr_W
        assert opt.get_hyperparameter("learning_rate", group=1) == lr_b
        gW, gb = numpy_grads(Wv, bv, xv, yv)
        Wv, bv = Wv - lr_W * gW, bv - lr_b * gb
        train(xv, yv)
        np.testing.assert_allclose(W.get_value(), Wv, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(b.get_value(), bv, rtol=1e-12, atol=1e-14)

    assert count_compilations[0] == compiled, "set_hyperparameter triggered a recompilation"
    assert train.maker is maker
    assert opt.hyperparameters["learning_rate"] == 0.01  # group 0's current value


def test_hyperparameters_class_defaults_vs_instance_values_and_repr() -> None:
    defaults = symopt.Adam.hyperparameters
    assert defaults == {
        "learning_rate": 1e-3,
        "beta1": 0.9,
        "beta2": 0.999,
        "epsilon": 1e-8,
        "beta1_decay": 1.0,
        "amsgrad": False,
        "epsilon_hat": False,
        "weight_decay": 0.0,
    }
    assert symopt.AdamW.hyperparameters["weight_decay"] == 0.01

    W = shared(np.zeros(2), "W")
    opt = symopt.Adam([W], learning_rate=0.05, amsgrad=True)
    opt.set_hyperparameter("beta2", 0.99)
    current = opt.hyperparameters
    assert current == {**defaults, "learning_rate": 0.05, "beta2": 0.99, "amsgrad": True}
    assert symopt.Adam.hyperparameters == defaults  # the instance did not touch the class
    current["learning_rate"] = 123.0  # a copy: editing it changes nothing
    assert opt.get_hyperparameter("learning_rate") == 0.05
    assert opt.get_hyperparameter("amsgrad") is True

    text = repr(opt)
    assert text.startswith("Adam(")
    for fragment in ("learning_rate=0.05", "beta2=0.99", "amsgrad=True", "epsilon=1e-08"):
        assert fragment in text


def test_set_hyperparameter_rejects_bad_values_and_keeps_the_old_one() -> None:
    W = shared(np.zeros(2), "W")
    opt = symopt.SGD([W], learning_rate=0.1)
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="learning_rate"):
            opt.set_hyperparameter("learning_rate", bad)
    with pytest.raises(TypeError, match="learning_rate"):
        opt.set_hyperparameter("learning_rate", "0.1")
    with pytest.raises(IndexError, match="no param group 3"):
        opt.set_hyperparameter("learning_rate", 0.2, group=3)
    assert opt.get_hyperparameter("learning_rate") == 0.1


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("floatX", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(symopt.registry.rules()))  # LBFGS's dtypes: tests/test_lbfgs.py
def test_tensor_arithmetic_stays_in_the_parameter_dtype(name: str, floatX: str) -> None:
    """Python-float hyperparameters and literals must not upcast float32 (or downcast float64) maths."""
    rule = symopt.get(name)
    options = {"momentum": 0.9, "centered": True} if rule is symopt.RMSprop else {}
    with pytensor.config.change_flags(floatX=floatX):
        for dtype, wrong in (("float32", "float64"), ("float64", "float32")):
            W = shared(np.ones((3, 2), dtype=dtype), "W")
            g = pt.matrix("g", dtype=dtype)
            opt = rule([W], **options)
            # Rules that differentiate the loss again (SAM, Sophia) get a loss whose gradient is 2 g W.
            updates = opt.updates(pt.sum(g * pt.square(W))) if rule.needs_loss else opt.updates(grads=[g])
            for var, value in updates.items():
                assert value.dtype == var.dtype, var.name
            assert W.get_value().dtype == dtype
            computed = [v for v in ancestors(list(updates.values()), blockers=[g, W]) if v.owner is not None]
            # tensor-sized intermediates always in the parameter's dtype
            assert not [v for v in computed if v.ndim > 0 and v.dtype == wrong], (dtype, floatX)
            if dtype == "float64":
                # per-step scalar coefficients are float64 by design (float64_scalars), so only a
                # float64 graph can demand that nothing at all is in the other dtype
                assert not [v for v in computed if v.dtype == wrong], (dtype, floatX)


@pytest.fixture(scope="module")
def float32_adam() -> tuple[Any, Optimizer, Any]:
    """Adam on a float32 parameter fed float64 gradients of unknown static shape through grads=."""
    W = shared(np.array([1.0, -0.5, 2.0], dtype="float32"), "W32")
    g = pt.vector("g", dtype="float64")
    opt = symopt.Adam([W], learning_rate=0.1)
    updates = opt.updates(grads=[g])
    assert updates[W].dtype == "float32"
    # the gradient is cast on the way in: the only float64 tensors in the step are g and its shape check
    wide = [v for v in ancestors(list(updates.values()), blockers=[g, W]) if v.ndim > 0 and v.dtype == "float64"]
    assert g in wide and all(v is g or isinstance(v.owner.op, SpecifyShape) for v in wide), wide
    return W, opt, pytensor.function([g], [], updates=updates)


def test_float64_grad_is_cast_for_float32_param(float32_adam: tuple[Any, Optimizer, Any]) -> None:
    W, opt, step = float32_adam
    p = W.get_value().astype(np.float64)
    m = np.zeros(3)
    v = np.zeros(3)
    for t, grad in enumerate(([0.5, -1.0, 2.0], [0.25, 0.5, -3.0]), start=1):
        step(np.array(grad, dtype=np.float64))
        # Kingma & Ba's Algorithm 1 in float64 on the float32-rounded gradient
        g = np.asarray(grad, dtype=np.float32).astype(np.float64)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        m_hat, v_hat = m / (1 - 0.9**t), v / (1 - 0.999**t)
        p = p - 0.1 * m_hat / (np.sqrt(v_hat) + 1e-8)
        assert W.get_value().dtype == np.float32
        assert all(var.get_value().dtype == np.float32 for var in opt.state[0].values())
        # float32 arithmetic against a float64 reference: ~20 ulp (2.3e-6) seen, 1e-5 allowed
        np.testing.assert_allclose(W.get_value(), p, rtol=1e-5)


def test_grad_with_wrong_runtime_shape_raises_when_called(float32_adam: tuple[Any, Optimizer, Any]) -> None:
    W, opt, step = float32_adam
    before = W.get_value()
    state_before = opt.state_dict()
    with pytest.raises(AssertionError, match="shape 4, expected 3"):
        step(np.ones(4))
    np.testing.assert_array_equal(W.get_value(), before)
    assert_state_equal(opt.state_dict(), state_before)


# --------------------------------------------------------------------------- state

STATEFUL_RULES = [
    pytest.param(symopt.Adam, {"amsgrad": True, "learning_rate": 0.05}, id="adam-amsgrad"),
    pytest.param(symopt.NAdam, {"learning_rate": 0.05}, id="nadam"),
    pytest.param(symopt.RMSprop, {"centered": True, "momentum": 0.9, "learning_rate": 0.01}, id="rmsprop-centered-momentum"),
]


@pytest.mark.parametrize(("rule", "options"), STATEFUL_RULES)
def test_resume_is_bit_identical_to_never_stopping(rule: type[Optimizer], options: dict[str, Any], tmp_path: Path) -> None:
    n_before, n_after = 3, 4
    data = batches(n_before + n_after, seed=7)

    def build(W0: np.ndarray, b0: np.ndarray, **overrides: Any) -> tuple[Any, Any, Optimizer, Any]:
        W, b = shared(W0, "W"), shared(b0, "b")
        x, y, loss = toy_model(W, b)
        opt = rule([W, b], **{**options, **overrides})
        return W, b, opt, pytensor.function([x, y], loss, updates=opt.updates(loss))

    def resume(state_loader: Callable[[], None]) -> None:
        W2.set_value(saved_params[0].copy())
        b2.set_value(saved_params[1].copy())
        state_loader()
        for xv, yv in data[n_before:]:
            train2(xv, yv)

    W, b, opt, train = build(*initial_params())
    for xv, yv in data[:n_before]:
        train(xv, yv)
    saved_params = (W.get_value(), b.get_value())
    saved_state = opt.state_dict()
    opt.save(tmp_path / "opt.npz")
    for xv, yv in data[n_before:]:
        train(xv, yv)
    final_state = opt.state_dict()

    # fresh variables, optimiser (built with another learning rate) and compiled function
    W2, b2, opt2, train2 = build(*saved_params, learning_rate=0.123)
    opt2.load(tmp_path / "opt.npz")
    assert opt2.get_hyperparameter("learning_rate") == options["learning_rate"]  # restored too
    assert opt2.iterations.get_value() == n_before
    resume(lambda: None)
    assert np.array_equal(W2.get_value(), W.get_value())
    assert np.array_equal(b2.get_value(), b.get_value())
    assert_state_equal(opt2.state_dict(), final_state)

    # control: resuming with a blank optimiser state ends elsewhere, so the checks have teeth
    blank = rule([shared(W.get_value(), "W"), shared(b.get_value(), "b")], **options).state_dict()
    resume(lambda: opt2.load_state_dict(blank))
    assert not np.array_equal(W2.get_value(), W.get_value())

    # the in-memory route, loaded over a used state: identical again
    resume(lambda: opt2.load_state_dict(saved_state))
    assert np.array_equal(W2.get_value(), W.get_value())
    assert np.array_equal(b2.get_value(), b.get_value())
    assert_state_equal(opt2.state_dict(), final_state)


def test_state_dict_is_a_copy_and_load_copies() -> None:
    W = shared(np.zeros(3), "W")
    opt = symopt.Momentum([W])
    opt.state[0]["velocity"].set_value(np.array([1.0, 2.0, 3.0]))
    state = opt.state_dict()
    state["slots"]["velocity"][0][:] = -9.0
    np.testing.assert_array_equal(opt.state[0]["velocity"].get_value(), [1.0, 2.0, 3.0])

    other = symopt.Momentum([shared(np.zeros(3), "W")])
    state = opt.state_dict()
    other.load_state_dict(state)
    state["slots"]["velocity"][0][:] = -9.0
    np.testing.assert_array_equal(other.state[0]["velocity"].get_value(), [1.0, 2.0, 3.0])


def _trained_adam(W_shape: tuple[int, ...] = W_SHAPE, dtype: str = "float64", **options: Any) -> Optimizer:
    """An Adam whose state is non-trivial (no compilation: state set directly)."""
    rng = np.random.default_rng(3)
    params = [shared(rng.normal(size=W_shape).astype(dtype), "W"), shared(np.asarray(rng.normal(size=B_SHAPE), dtype=dtype), "b")]
    opt = symopt.Adam(params, **{"amsgrad": True, **options})
    for slots in opt.state:
        for var in slots.values():
            var.set_value(np.asarray(np.abs(rng.normal(size=var.get_value().shape)), dtype=dtype))
    opt.iterations.set_value(np.int64(7))
    opt.set_hyperparameter("learning_rate", 0.02)
    return opt


def _write_truncated(path: Path) -> None:
    _trained_adam().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _write_bitflipped(path: Path) -> None:
    _trained_adam().save(path)
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        assert not members[0].flag_bits & 0x08  # no data descriptor after member 0's data
    data = bytearray(path.read_bytes())
    data[members[1].header_offset - 1] ^= 0xFF  # last byte of member 0's data: its CRC no longer matches
    path.write_bytes(bytes(data))


BAD_FILES: list[Any] = [
    pytest.param(lambda p: None, FileNotFoundError, "no optimiser state file", id="missing"),
    pytest.param(lambda p: p.write_bytes(bytes(range(256)) * 4), ValueError, "not a readable", id="garbage"),
    pytest.param(lambda p: p.write_bytes(b""), ValueError, "not a readable", id="empty"),
    pytest.param(_write_truncated, ValueError, "not a readable", id="truncated"),
    pytest.param(_write_bitflipped, ValueError, "not a readable", id="bitflipped"),
    pytest.param(lambda p: np.savez(p, weights=np.ones(3)), ValueError, "not an optimiser state file", id="foreign-npz"),
    pytest.param(
        lambda p: symopt.SGD([shared(np.zeros(W_SHAPE), "W"), shared(np.zeros(B_SHAPE), "b")]).save(p),
        ValueError, "saved from 'SGD'", id="other-optimizer",
    ),
    pytest.param(lambda p: _trained_adam(amsgrad=False).save(p), ValueError, "options", id="other-options"),
    pytest.param(
        lambda p: _trained_adam(W_shape=(2,)).save(p),
        ValueError, r"slot '\w+' of parameter 'W' \(index 0\) is float64\[2\], expected float64\[3\]",
        id="wrong-shape",
    ),
    pytest.param(lambda p: _trained_adam(dtype="float32").save(p), ValueError, "float32", id="wrong-dtype"),
    pytest.param(
        lambda p: symopt.Adam([shared(np.zeros(W_SHAPE), "W")], amsgrad=True).save(p),
        ValueError, "1 entries for 2 parameters", id="fewer-params",
    ),
]


@pytest.mark.parametrize(("write", "error", "message"), BAD_FILES)
def test_loading_a_bad_file_raises_and_changes_nothing(
    write: Callable[[Path], None], error: type[Exception], message: str, tmp_path: Path
) -> None:
    path = tmp_path / "state.npz"
    write(path)
    opt = _trained_adam()
    params_before = [p.get_value() for p in opt.params]
    # the victim's learning rate differs from every file's, so a partial restore would show
    opt.set_hyperparameter("learning_rate", 0.0375)
    state_before = opt.state_dict()

    with pytest.raises(error, match=message):
        opt.load(path)

    assert_state_equal(opt.state_dict(), state_before)
    for param, before in zip(opt.params, params_before):
        np.testing.assert_array_equal(param.get_value(), before)


def _bad_states() -> list[Any]:
    def edit(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], dict[str, Any]]:
        def apply(state: dict[str, Any]) -> dict[str, Any]:
            change(state)
            return state
        return apply

    return [
        pytest.param(lambda s: [s], TypeError, "must be a dict", id="not-a-dict"),
        pytest.param(edit(lambda s: s.pop("slots")), ValueError, "missing", id="missing-key"),
        pytest.param(edit(lambda s: s.update(iterations=np.array(-1))), ValueError, "non-negative", id="negative-step"),
        pytest.param(edit(lambda s: s.update(iterations=np.array(2.5))), ValueError, "integer", id="float-step"),
        pytest.param(
            edit(lambda s: s["hyperparameters"][0].update(learning_rate=np.array(np.nan))),
            ValueError, "learning_rate", id="nan-learning-rate",
        ),
        pytest.param(
            edit(lambda s: s["hyperparameters"][0].update(learning_rate=np.array([0.1, 0.2]))),
            ValueError, "learning_rate", id="vector-learning-rate",
        ),
        pytest.param(
            edit(lambda s: s["scalars"][0].update(mu_product=np.ones(3))),
            ValueError, "mu_product", id="vector-scalar-slot",
        ),
        pytest.param(edit(lambda s: s["hyperparameters"].append({})), ValueError, "param groups", id="extra-group"),
    ]


@pytest.mark.parametrize(("corrupt", "error", "message"), _bad_states())
def test_load_state_dict_validates_everything_before_changing_anything(
    corrupt: Callable[[dict[str, Any]], Any], error: type[Exception], message: str
) -> None:
    # NAdam: has per-parameter slots, an optimiser-wide scalar slot and hyperparameters
    source = symopt.NAdam([shared(np.zeros(3), "W")], learning_rate=0.5)
    source.param_groups[0].scalars["mu_product"].set_value(np.float64(0.25))
    source.iterations.set_value(np.int64(4))
    bad = corrupt(source.state_dict())

    target = symopt.NAdam([shared(np.zeros(3), "W")], learning_rate=0.1)
    target.state[0]["exp_avg"].set_value(np.array([1.0, 2.0, 3.0]))
    before = target.state_dict()
    with pytest.raises(error, match=message):
        target.load_state_dict(bad)
    assert_state_equal(target.state_dict(), before)


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opt = _trained_adam()
    path = tmp_path / "opt.npz"
    opt.save(path)
    good_bytes = path.read_bytes()
    state_saved = opt.state_dict()

    def failing_savez(file: Any, **arrays: Any) -> None:
        file.write(b"PK\x03\x04 half a zip")  # a partial write, then the disk "fills up"
        raise OSError("No space left on device")

    opt.set_hyperparameter("learning_rate", 0.5)
    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="No space left"):
        opt.save(path)
    with pytest.raises(OSError, match="No space left"):
        opt.save(tmp_path / "new.npz")
    monkeypatch.undo()

    assert path.read_bytes() == good_bytes  # the previous file is intact
    assert sorted(os.listdir(tmp_path)) == ["opt.npz"]  # no temporary or partial file left behind
    fresh = _trained_adam()
    fresh.set_hyperparameter("learning_rate", 0.9)
    fresh.load(path)
    assert_state_equal(fresh.state_dict(), state_saved)


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def Wb() -> tuple[Any, Any]:
    W0, b0 = initial_params()
    return shared(W0, "W"), shared(b0, "b")


def test_param_must_be_a_shared_variable(Wb: tuple[Any, Any]) -> None:
    W, _ = Wb
    with pytest.raises(TypeError, match=r"parameter 'v' \(index 1\) must be a pytensor.shared"):
        symopt.SGD([W, pt.vector("v")])
    with pytest.raises(TypeError, match=r"parameter at index 0 must be a pytensor.shared .*ndarray"):
        symopt.SGD([np.zeros(3)])
    with pytest.raises(TypeError, match="list of shared variables"):
        symopt.SGD(W)


def test_duplicated_param(Wb: tuple[Any, Any]) -> None:
    W, b = Wb
    with pytest.raises(ValueError, match=r"parameter 'W' \(index 2\) is listed twice \(first at index 0\)"):
        symopt.Adam([W, b, W])
    with pytest.raises(ValueError, match="listed twice"):
        symopt.Adam([{"params": [W, b]}, {"params": [b]}])


def test_int_shared_variable() -> None:
    with pytest.raises(TypeError, match=r"parameter 'n' \(index 0\) has dtype int64"):
        symopt.SGD([pytensor.shared(np.arange(3, dtype=np.int64), name="n")])


def test_empty_params() -> None:
    with pytest.raises(ValueError, match="no parameters"):
        symopt.Adam([])
    with pytest.raises(ValueError, match="no parameters"):
        symopt.Adam([{"params": []}])


def test_loss_must_be_a_float_scalar(Wb: tuple[Any, Any]) -> None:
    W, b = Wb
    opt = symopt.SGD([W, b])
    with pytest.raises(ValueError, match="must be a scalar, got a 1-d tensor"):
        opt.updates((W + b) ** 2)
    with pytest.raises(TypeError, match="float scalar, got dtype int64"):
        opt.updates(pt.cast((W * b).sum(), "int64"))


def test_param_the_loss_does_not_use(Wb: tuple[Any, Any]) -> None:
    W, b = Wb
    unused = shared(np.array([1.0, 2.0]), "unused")
    x, y, loss = toy_model(W, b)
    # Adam as in the resume test, so the compiled graph is shared (the unused param adds nothing to it)
    opt = symopt.Adam([W, unused, b], amsgrad=True, learning_rate=0.05)
    with pytest.raises(ValueError, match=r"the loss does not depend on parameter 'unused' \(index 1\)"):
        opt.updates(loss)
    loss_without_b = ((x * W - y) ** 2).sum()
    with pytest.raises(ValueError, match=r"parameter 'unused' \(index 1\), parameter 'b' \(index 2\)"):
        opt.updates(loss_without_b)

    updates = opt.updates(loss, allow_unused=True)
    assert unused not in updates and not set(opt.state[1].values()) & set(updates)
    rng = np.random.default_rng(5)
    unused_state = {name: np.abs(rng.normal(size=2)) for name in opt.state[1]}
    for name, value in unused_state.items():
        opt.state[1][name].set_value(value.copy())  # must survive the step as is
    train = pytensor.function([x, y], loss, updates=updates)
    xv, yv = batches(1)[0]
    W0, b0 = W.get_value(), b.get_value()
    train(xv, yv)

    # Adam's first step from zero state: m_hat = g, v_hat = g^2, so p - lr * g / (|g| + eps)
    for param, start, grad in zip((W, b), (W0, b0), numpy_grads(W0, b0, xv, yv)):
        np.testing.assert_allclose(param.get_value(), start - 0.05 * grad / (np.abs(grad) + 1e-8), rtol=1e-10)
    np.testing.assert_array_equal(unused.get_value(), [1.0, 2.0])
    for name, value in unused_state.items():
        np.testing.assert_array_equal(opt.state[1][name].get_value(), value)
    assert opt.iterations.get_value() == 1


def test_unknown_hyperparameter_keyword_suggests_the_right_one(Wb: tuple[Any, Any]) -> None:
    with pytest.raises(TypeError, match=r"unknown hyperparameter 'lr' \(did you mean 'learning_rate'\?\)"):
        symopt.Adam(list(Wb), lr=0.1)
    with pytest.raises(TypeError, match=r"unknown hyperparameter 'beta_1' \(did you mean 'beta1'\?\)"):
        symopt.Adam(list(Wb), beta_1=0.8)
    with pytest.raises(TypeError, match=r"'momentum'.*accepts: learning_rate, weight_decay"):
        symopt.SGD(list(Wb), momentum=0.9)
    with pytest.raises(TypeError, match=r"unknown hyperparameter 'lr'"):
        symopt.SGD([{"params": list(Wb), "lr": 0.1}])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"learning_rate": -0.1}, r"'learning_rate' must lie in \[0, inf\), got -0.1"),
        ({"learning_rate": math.nan}, "'learning_rate' must be finite, got nan"),
        ({"learning_rate": math.inf}, "'learning_rate' must be finite, got inf"),
        ({"beta1": 1.0}, r"'beta1' must lie in \[0, 1\), got 1.0"),
        ({"beta2": -0.5}, r"'beta2' must lie in \[0, 1\)"),
        ({"epsilon": -1e-8}, "'epsilon'"),
    ],
)
def test_out_of_range_hyperparameters(Wb: tuple[Any, Any], options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        symopt.Adam(list(Wb), **options)


def test_out_of_range_hyperparameter_in_a_param_group(Wb: tuple[Any, Any]) -> None:
    W, b = Wb
    with pytest.raises(ValueError, match=r"param group 1.*'learning_rate' must lie in"):
        symopt.SGD([{"params": [W]}, {"params": [b], "learning_rate": -1.0}])


def test_wrong_type_values(Wb: tuple[Any, Any]) -> None:
    with pytest.raises(TypeError, match="option 'amsgrad' must be True or False, got 'yes'"):
        symopt.Adam(list(Wb), amsgrad="yes")
    with pytest.raises(TypeError, match="'learning_rate' must be a real number"):
        symopt.Adam(list(Wb), learning_rate="0.1")
    with pytest.raises(TypeError, match="'learning_rate' must be a real number"):
        symopt.Adam(list(Wb), learning_rate=True)


def test_bad_grads(Wb: tuple[Any, Any]) -> None:
    W, b = Wb
    opt = symopt.SGD([W, b])
    with pytest.raises(ValueError, match="got 1 gradients for 2 parameters"):
        opt.updates(grads=[pt.vector("gW", dtype="float64")])
    with pytest.raises(ValueError, match=r"gradient for parameter 'W' \(index 0\) has shape \(2,\), the parameter has shape \(3,\)"):
        opt.updates(grads=[np.zeros(2), np.zeros(())])
    with pytest.raises(ValueError, match=r"gradient for parameter 'W' \(index 0\) has shape \(4,\)"):
        opt.updates(grads=[pt.vector("gW", dtype="float64", shape=(4,)), pt.scalar("gb", dtype="float64")])
    with pytest.raises(ValueError, match=r"gradient for parameter 'b' \(index 1\) has 1 dimensions, the parameter has shape \(\)"):
        opt.updates(grads=[np.zeros(W_SHAPE), np.zeros(1)])
    with pytest.raises(TypeError, match=r"gradient for parameter 'W' \(index 0\) has dtype int64"):
        opt.updates(grads=[np.zeros(W_SHAPE, dtype=np.int64), np.zeros(())])


def test_exactly_one_of_loss_or_grads(Wb: tuple[Any, Any]) -> None:
    W, b = Wb
    opt = symopt.SGD([W, b])
    loss = (W.sum() + b.sum()) ** 2
    with pytest.raises(TypeError, match="exactly one of loss or grads"):
        opt.updates(loss, grads=[np.zeros(W_SHAPE), np.zeros(B_SHAPE)])
    with pytest.raises(TypeError, match="exactly one of loss or grads"):
        opt.updates()


def test_bad_hyperparameter_names_for_set_and_get(Wb: tuple[Any, Any]) -> None:
    opt = symopt.Adam(list(Wb))
    with pytest.raises(TypeError, match=r"unknown hyperparameter 'lr' \(did you mean 'learning_rate'\?\)"):
        opt.set_hyperparameter("lr", 0.1)
    with pytest.raises(TypeError, match="unknown hyperparameter 'momentum'"):
        opt.get_hyperparameter("momentum")
    with pytest.raises(ValueError, match="'amsgrad' is a structural option"):
        opt.set_hyperparameter("amsgrad", True)
    assert opt.get_hyperparameter("amsgrad") is False


def test_param_group_errors(Wb: tuple[Any, Any]) -> None:
    W, b = Wb
    with pytest.raises(ValueError, match="param group 1 has no 'params' entry"):
        symopt.SGD([{"params": [W]}, {"learning_rate": 0.5}])
    with pytest.raises(ValueError, match="option 'amsgrad' changes the graph"):
        symopt.Adam([{"params": [W], "amsgrad": True}])
    with pytest.raises(TypeError, match="mixes shared variables and param-group dicts"):
        symopt.SGD([W, {"params": [b]}])


def test_rmsprop_without_momentum_buffer_cannot_gain_momentum(Wb: tuple[Any, Any]) -> None:
    opt = symopt.RMSprop(list(Wb), momentum=0.0)
    with pytest.raises(ValueError, match="built with momentum=0"):
        opt.set_hyperparameter("momentum", 0.9)
    assert opt.get_hyperparameter("momentum") == 0.0
    assert all("momentum_buffer" not in slots for slots in opt.state)


def test_rmsprop_momentum_can_be_switched_off_and_on_again(Wb: tuple[Any, Any]) -> None:
    """Built with a buffer, momentum is an ordinary hyperparameter: 0.9 -> 0 -> 0.5 and the buffer is kept."""
    opt = symopt.RMSprop(list(Wb), momentum=0.9)
    opt.set_hyperparameter("momentum", 0.0)
    assert "momentum_buffer" in opt.state_dict()["slots"]  # the state to resume from still has it
    opt.set_hyperparameter("momentum", 0.5)
    assert opt.get_hyperparameter("momentum") == 0.5
