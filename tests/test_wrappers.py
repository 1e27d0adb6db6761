"""EMA and Lookahead wrap an optimiser and offer its protocol (params, iterations, updates(loss),
build, state_dict/load_state_dict, save/load). Numbers against NumPy recursions of the papers'
definitions; resumption against an uninterrupted run, bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import symopt

STEPS = 6


def _grads() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.normal(size=(3,)) for _ in range(STEPS)]


def _setup(wrap: Any) -> tuple[Any, Any, Any]:
    p = pytensor.shared(np.array([1.0, -2.0, 0.5]), name="p")
    wrapper = wrap(p)
    g = pt.vector("g", dtype="float64")
    step = pytensor.function([g], [], updates=wrapper.updates(grads=[g]))
    return p, wrapper, step


def _ema_of_sgd(p):
    return symopt.EMA(symopt.SGD([p], learning_rate=0.1), decay=0.8)


def _lookahead_of_momentum(p):
    return symopt.Lookahead(symopt.Momentum([p], learning_rate=0.1, momentum=0.5), k=2, alpha=0.5)


def _ema_of_lookahead(p):
    return symopt.EMA(symopt.Lookahead(symopt.Adam([p], learning_rate=0.05, accumulate=2), k=2), decay=0.7)


def test_ema_wraps_an_optimizer() -> None:
    p, ema, step = _setup(_ema_of_sgd)
    assert ema.params == [p] and ema.iterations is ema.inner.iterations
    ref, avg = p.get_value(), p.get_value()
    for g in _grads():
        step(g)
        ref = ref - 0.1 * g
        avg = 0.8 * avg + 0.2 * ref  # a_t = d a_{t-1} + (1 - d) p_t
    np.testing.assert_allclose(p.get_value(), ref, rtol=1e-13)
    np.testing.assert_allclose(ema.averages[0].get_value(), avg, rtol=1e-13)
    assert int(ema.iterations.get_value()) == STEPS


def test_ema_new_and_old_forms_give_the_same_numbers() -> None:
    _, new, step_new = _setup(_ema_of_sgd)
    q = pytensor.shared(np.array([1.0, -2.0, 0.5]), name="p")
    old = symopt.EMA([q], decay=0.8)
    g = pt.vector("g", dtype="float64")
    step_old = pytensor.function([g], [], updates=old.updates(symopt.SGD([q], learning_rate=0.1).updates(grads=[g])))
    for batch in _grads():
        step_new(batch)
        step_old(batch)
    np.testing.assert_array_equal(new.averages[0].get_value(), old.averages[0].get_value())
    assert set(old.state_dict()) == {"averages", "decay"}  # the old form has no inner optimiser


def test_build_returns_the_applied_flag() -> None:
    p = pytensor.shared(np.zeros(3), name="p")
    wrapper = _ema_of_lookahead(p)
    updates, applied = wrapper.build(grads=[pt.vector("g", dtype="float64")])
    assert applied is not None and updates.applied is applied  # accumulate=2: not every call applies
    _, always = symopt.EMA(symopt.SGD([p])).build(grads=[pt.vector("g", dtype="float64")])
    assert always is None


@pytest.mark.parametrize("wrap", [_ema_of_sgd, _lookahead_of_momentum, _ema_of_lookahead])
@pytest.mark.parametrize("via", ["state_dict", "file"])
def test_resume_is_bit_identical(wrap: Any, via: str, tmp_path: Path) -> None:
    """3 steps, save, fresh objects, load, 3 steps == 6 uninterrupted steps."""
    grads = _grads()
    p, wrapper, step = _setup(wrap)
    for g in grads:
        step(g)
    expected = (p.get_value(), wrapper.state_dict())

    p, wrapper, step = _setup(wrap)
    for g in grads[:3]:
        step(g)
    saved, values, path = wrapper.state_dict(), p.get_value(), tmp_path / "state.npz"
    wrapper.save(path)
    p, wrapper, step = _setup(wrap)  # a new process: fresh state everywhere
    step(grads[0])  # state that the restore must overwrite
    p.set_value(values)  # the parameters are the model's to restore
    if via == "file":
        wrapper.load(path)
    else:
        wrapper.load_state_dict(saved)
    for g in grads[3:]:
        step(g)
    np.testing.assert_array_equal(p.get_value(), expected[0])
    _assert_same(wrapper.state_dict(), expected[1])


def _assert_same(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_load_refuses_another_wrappers_file(tmp_path: Path) -> None:
    _, lookahead, _ = _setup(_lookahead_of_momentum)
    path = tmp_path / "lookahead.npz"
    lookahead.save(path)
    _, ema, _ = _setup(_ema_of_sgd)
    with pytest.raises(ValueError, match=r"EMA: .*lookahead\.npz' does not hold EMA state \(it holds 'Lookahead'\)"):
        ema.load(path)
    with pytest.raises(FileNotFoundError, match="EMA: no optimiser state file"):
        ema.load(tmp_path / "missing.npz")
    bad = lookahead.state_dict()
    bad["counter"] = np.array(-1)
    before = lookahead.slow[0].get_value()
    with pytest.raises(ValueError, match="counter must be a non-negative integer"):
        lookahead.load_state_dict(bad)
    np.testing.assert_array_equal(lookahead.slow[0].get_value(), before)


def test_wrappers_forward_hyperparameters() -> None:
    p = pytensor.shared(np.zeros(3), name="p")
    wrapper = symopt.EMA(symopt.Lookahead(symopt.Adam([p], clip_norm=1.0)))
    wrapper.set_hyperparameter("learning_rate", 0.5)
    assert wrapper.get_hyperparameter("learning_rate") == 0.5 and wrapper.settings.keys() == {"clip_norm"}
    with pytest.raises(TypeError, match="EMA: params must be a non-empty list"):
        symopt.EMA([])


def test_trainer_takes_wrapped_optimizers() -> None:
    """Trainer(model, EMA(Lookahead(Adam))) == the same composition written the older way, bit for bit."""
    from symopt import nn

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 6)).astype("float32"), rng.integers(0, 3, 64)

    class OldForm:
        def __init__(self, params: list[Any]):
            self.lookahead = symopt.Lookahead(symopt.Adam(params, learning_rate=1e-2, skip_nonfinite=True), k=3)
            self.ema, self.params = symopt.EMA(params, decay=0.9), params

        def updates(self, loss: Any) -> Any:
            return self.ema.updates(self.lookahead.updates(loss))

    def run(make: Any) -> tuple[list[Any], list[np.ndarray]]:
        model = nn.MLP([6, 5, 3], seed=1)
        trainer = symopt.Trainer(model, make(model.params), x, y, x[:16], y[:16], batch_size=16)
        history = trainer.fit(2, 0, progress=False)
        return [(r.train_loss, r.test_loss, r.skipped) for r in history], [p.get_value() for p in model.params]

    new = run(lambda ps: symopt.EMA(symopt.Lookahead(symopt.Adam(ps, learning_rate=1e-2, skip_nonfinite=True), k=3), decay=0.9))
    old = run(OldForm)
    assert new[0] == old[0]
    for a, b in zip(new[1], old[1]):
        np.testing.assert_array_equal(a, b)
