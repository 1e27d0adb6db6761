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


def _ema_overwriting(p):
    return symopt.EMA(symopt.SGD([p], learning_rate=0.1), decay=0.8, overwrite_frequency=2)


@pytest.mark.parametrize("wrap", [_ema_of_sgd, _lookahead_of_momentum, _ema_of_lookahead, _ema_overwriting])
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


# ---------------------------------------------------------------- EMA overwrite_frequency (Keras 3)
def _keras_ema_overwrite(grads: list[np.ndarray], start: np.ndarray, lr: float, decay: float, n: int,
                         applied: list[bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Keras 3 ``use_ema=True, ema_overwrite_frequency=n`` around SGD, in NumPy: after the
    gradient step the average moves, then every n-th applied step the variable takes it."""
    p, avg, t = start.copy(), start.copy(), 0
    for i, g in enumerate(grads):
        if applied is not None and not applied[i]:
            continue
        t += 1
        p = p - lr * g
        avg = decay * avg + (1 - decay) * p
        if t % n == 0:
            p = avg.copy()
    return p, avg


@pytest.mark.parametrize("n", [1, 2, 3])
def test_ema_overwrite_frequency_against_numpy(n: int) -> None:
    p, ema, step = _setup(lambda p: symopt.EMA(symopt.SGD([p], learning_rate=0.1), decay=0.8, overwrite_frequency=n))
    start = p.get_value()
    for g in _grads():
        step(g)
    want_p, want_avg = _keras_ema_overwrite(_grads(), start, 0.1, 0.8, n)
    np.testing.assert_allclose(p.get_value(), want_p, rtol=1e-13)
    np.testing.assert_allclose(ema.averages[0].get_value(), want_avg, rtol=1e-13)
    assert int(ema.counter.get_value()) == STEPS


def test_ema_overwrite_counts_applied_steps_only() -> None:
    """accumulate=2 and a skipped non-finite call: only applied steps count towards n."""
    p = pytensor.shared(np.array([1.0, -2.0, 0.5]), name="p")
    ema = symopt.EMA(symopt.SGD([p], learning_rate=0.1, accumulate=2, skip_nonfinite=True), decay=0.6,
                     overwrite_frequency=2)
    g = pt.vector("g", dtype="float64")
    step = pytensor.function([g], [], updates=ema.updates(grads=[g]))
    calls = [*_grads(), *_grads()]
    calls[3] = np.array([np.nan, 0.0, 0.0])  # the second pair's second call: skipped, the pair completes later
    counted = [c for c in calls if np.all(np.isfinite(c))]
    means = [(counted[i] + counted[i + 1]) / 2 for i in range(0, len(counted) - 1, 2)]
    for c in calls:
        step(c)
    want_p, want_avg = _keras_ema_overwrite(means, np.array([1.0, -2.0, 0.5]), 0.1, 0.6, 2)
    np.testing.assert_allclose(p.get_value(), want_p, rtol=1e-13)
    np.testing.assert_allclose(ema.averages[0].get_value(), want_avg, rtol=1e-13)
    assert int(ema.counter.get_value()) == len(means) == int(ema.iterations.get_value())


def test_ema_overwrite_old_form_and_float32() -> None:
    """EMA(params, overwrite_frequency=) over an optimiser's updates; float32 stays float32."""
    start = np.array([1.0, -2.0, 0.5], dtype="float32")
    q = pytensor.shared(start.copy(), name="q")
    ema = symopt.EMA(params=[q], decay=0.5, overwrite_frequency=3)
    g = pt.vector("g", dtype="float32")
    updates = ema.updates(symopt.SGD([q], learning_rate=0.1).updates(grads=[g]))
    assert updates[q].dtype == "float32" and updates[ema.averages[0]].dtype == "float32"
    step = pytensor.function([g], [], updates=updates)
    grads = [x.astype("float32") for x in _grads()]
    for i, x in enumerate(grads, start=1):
        step(x)
        if i % 3 == 0:  # just overwritten: the parameter is its average, bit for bit
            np.testing.assert_array_equal(q.get_value(), ema.averages[0].get_value())
    want_p, want_avg = _keras_ema_overwrite([x.astype("float64") for x in grads], start.astype("float64"), 0.1, 0.5, 3)
    assert q.get_value().dtype == np.float32 and ema.averages[0].get_value().dtype == np.float32
    np.testing.assert_allclose(q.get_value(), want_p, rtol=1e-6)  # float32 rounding of ~20 operations
    np.testing.assert_allclose(ema.averages[0].get_value(), want_avg, rtol=1e-6)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_ema_overwrite_frequency_must_be_a_positive_integer(bad: Any) -> None:
    p = pytensor.shared(np.zeros(3), name="p")
    with pytest.raises(ValueError, match=r"EMA: overwrite_frequency must be None or an integer >= 1, got"):
        symopt.EMA(symopt.SGD([p]), overwrite_frequency=bad)


def test_ema_overwrite_state_must_match(tmp_path: Path) -> None:
    p, ema, step = _setup(_ema_overwriting)
    step(_grads()[0])
    state = ema.state_dict()
    assert int(state["counter"]) == 1 and int(state["overwrite_frequency"]) == 2
    _, plain, _ = _setup(_ema_of_sgd)
    before = plain.averages[0].get_value()
    with pytest.raises(ValueError, match=r"EMA: state has overwrite_frequency=2, this EMA has overwrite_frequency=None"):
        plain.load_state_dict(state)
    np.testing.assert_array_equal(plain.averages[0].get_value(), before)  # nothing half-applied
    _, other, _ = _setup(lambda p: symopt.EMA(symopt.SGD([p], learning_rate=0.1), decay=0.8, overwrite_frequency=3))
    with pytest.raises(ValueError, match=r"state has overwrite_frequency=2, this EMA has overwrite_frequency=3"):
        other.load_state_dict(state)
    _, again, _ = _setup(_ema_overwriting)
    with pytest.raises(ValueError, match=r"state has overwrite_frequency=None, this EMA has overwrite_frequency=2"):
        again.load_state_dict(plain.state_dict())
    bad = {**state, "counter": np.array(-1)}
    with pytest.raises(ValueError, match="EMA: state counter must be a non-negative integer"):
        again.load_state_dict(bad)
    assert int(again.counter.get_value()) == 0
