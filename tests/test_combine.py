"""symopt.combine: several optimisers over disjoint parameters in one compiled step,
against the same optimisers run on their own and against a NumPy re-implementation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import symopt

N, D, K = 16, 3, 2
STEPS = 5
LR_M, MU, LR_A = 0.05, 0.9, 0.01


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, D)), rng.normal(size=(N, K)), rng.normal(size=(D, K)), rng.normal(size=K)


def _problem():
    """Least squares ``0.5 * mean((x W + b - y)^2)`` in float64: W for Momentum, b for Adam."""
    x, y, W0, b0 = _data()
    W = pytensor.shared(W0.copy(), name="W")
    b = pytensor.shared(b0.copy(), name="b")
    loss = 0.5 * pt.mean((pt.dot(x, W) + b - y) ** 2)
    return W, b, loss


def _members(W, b, **extra):
    return symopt.Momentum([W], learning_rate=LR_M, momentum=MU, **extra), symopt.Adam([b], learning_rate=LR_A, **extra)


def _numpy_reference(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Momentum on W and Adam on b from their papers' equations, closed-form gradients."""
    x, y, W, b = _data()
    vel, m, v = np.zeros_like(W), np.zeros_like(b), np.zeros_like(b)
    for t in range(1, steps + 1):
        r = x @ W + b - y
        gW, gb = x.T @ r / r.size, r.sum(axis=0) / r.size
        vel = MU * vel + gW  # Polyak heavy ball, torch's dampening 0
        W = W - LR_M * vel
        m = 0.9 * m + 0.1 * gb  # Kingma & Ba, Algorithm 1
        v = 0.999 * v + 0.001 * gb**2
        b = b - LR_A / (1 - 0.9**t) * m / (np.sqrt(v) / np.sqrt(1 - 0.999**t) + 1e-8)
    return W, b


@pytest.fixture(scope="module")
def runs():
    """(combined W, b, Combined) and (separate W, b) after STEPS steps."""
    W, b, loss = _problem()
    opt = symopt.combine(matrices=_members(W, b)[0], biases=_members(W, b)[1])
    step = symopt.function([], loss, updates=opt.updates(loss))
    for _ in range(STEPS):
        step()
    W2, b2, loss2 = _problem()
    a, c = _members(W2, b2)
    updates = a.updates(loss2)
    updates.update(c.updates(loss2))
    separate = symopt.function([], loss2, updates=updates)
    for _ in range(STEPS):
        separate()
    return (W, b, opt, step), (W2.get_value(), b2.get_value())


def test_combined_equals_separate_optimizers(runs):
    (W, b, opt, _), (W_sep, b_sep) = runs
    # The same element-wise updates from the same gradients: equal up to the fused
    # kernels' evaluation order.
    np.testing.assert_allclose(W.get_value(), W_sep, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(b.get_value(), b_sep, rtol=1e-12, atol=1e-14)
    assert int(opt.iterations.get_value()) == STEPS
    assert all(int(m.iterations.get_value()) == STEPS for m in opt.members.values())


def test_combined_equals_numpy_reference(runs):
    (W, b, _, _), _ = runs
    W_ref, b_ref = _numpy_reference(STEPS)
    np.testing.assert_allclose(W.get_value(), W_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b.get_value(), b_ref, rtol=1e-10, atol=1e-12)


def test_one_gradient_computation():
    """The loss is differentiated once: the members receive gradients, never the loss."""
    W, b, loss = _problem()
    seen = []

    class Spy(symopt.Momentum):
        def updates(self, loss=None, *, grads=None, allow_unused=False):
            seen.append((loss, grads))
            return super().updates(loss, grads=grads, allow_unused=allow_unused)

    opt = symopt.combine(Spy([W], learning_rate=0.1), Spy([b], learning_rate=0.1))
    opt.updates(loss)
    assert [(l is None, g is not None and len(g)) for l, g in seen] == [(True, 1), (True, 1)]


def test_save_load_resumes_bit_exactly(tmp_path: Path):
    """Stop after 2 steps, save, disturb, load, run 3 more: the uninterrupted run's values."""
    W, b, loss = _problem()
    opt = symopt.combine(*_members(W, b))
    step = symopt.function([], loss, updates=opt.updates(loss))
    for _ in range(STEPS):
        step()
    expected = [W.get_value(), b.get_value()]

    W, b, loss = _problem()
    opt = symopt.combine(*_members(W, b))
    step = symopt.function([], loss, updates=opt.updates(loss))
    for _ in range(2):
        step()
    opt.save(tmp_path / "opt.npz")
    params = [W.get_value(), b.get_value()]
    for _ in range(2):
        step()  # moves on past the save
    opt.load(tmp_path / "opt.npz")
    W.set_value(params[0])
    b.set_value(params[1])
    assert int(opt.iterations.get_value()) == 2
    for _ in range(STEPS - 2):
        step()
    assert np.array_equal(W.get_value(), expected[0]) and np.array_equal(b.get_value(), expected[1])


def test_state_dict_round_trip_resets_a_run():
    W, b, loss = _problem()
    opt = symopt.combine(*_members(W, b))
    initial = opt.state_dict()
    step = symopt.function([], loss, updates=opt.updates(loss))
    step()
    opt.load_state_dict(initial)
    assert int(opt.iterations.get_value()) == 0
    for member in opt.members.values():
        assert all(not np.any(v.get_value()) for slots in member.state for v in slots.values())


def test_load_refuses_other_files_and_changes_nothing(tmp_path: Path):
    W, b, _ = _problem()
    opt = symopt.combine(*_members(W, b))
    other = symopt.combine(symopt.Momentum([W]), symopt.SGD([b]))  # parameters may be reused across optimisers
    other.save(tmp_path / "other.npz")
    before = opt.state_dict()
    with pytest.raises(ValueError, match="other.npz"):
        opt.load(tmp_path / "other.npz")
    symopt.Adam([b]).save(tmp_path / "plain.npz")
    with pytest.raises(ValueError, match="plain.npz"):
        opt.load(tmp_path / "plain.npz")
    named = symopt.combine(a=_members(W, b)[0], c=_members(W, b)[1])
    named.save(tmp_path / "named.npz")
    with pytest.raises(ValueError, match="members"):
        opt.load(tmp_path / "named.npz")
    after = opt.state_dict()
    assert int(after["members"]["0"]["iterations"]) == int(before["members"]["0"]["iterations"])


def test_load_state_dict_is_all_or_nothing():
    """A state the second member refuses leaves the first member unchanged too."""
    W, b, loss = _problem()
    opt = symopt.combine(*_members(W, b))
    state = opt.state_dict()
    state["members"]["0"]["hyperparameters"][0]["learning_rate"] = np.float64(0.5)
    state["members"]["1"]["slots"]["exp_avg"] = [np.zeros(K + 1)]
    with pytest.raises(ValueError, match="exp_avg"):
        opt.load_state_dict(state)
    assert opt.get_hyperparameter("learning_rate", member=0) == LR_M


def test_set_hyperparameter_by_member_and_everywhere():
    W, b, _ = _problem()
    opt = symopt.combine(matrices=_members(W, b)[0], biases=_members(W, b)[1])
    opt.set_hyperparameter("learning_rate", 0.2, member="biases")
    assert opt.get_hyperparameter("learning_rate", member="biases") == 0.2
    assert opt.get_hyperparameter("learning_rate", member=0) == LR_M
    opt.set_hyperparameter("learning_rate", 0.3)
    assert [opt.get_hyperparameter("learning_rate", member=m) for m in ("matrices", "biases")] == [0.3, 0.3]
    opt.set_hyperparameter("beta1", 0.8)  # only Adam has it
    assert opt.get_hyperparameter("beta1", member="biases") == 0.8
    with pytest.raises(ValueError, match="no member has a hyperparameter 'gamma'"):
        opt.set_hyperparameter("gamma", 0.1)
    with pytest.raises(ValueError, match="no member 'weights'"):
        opt.set_hyperparameter("learning_rate", 0.1, member="weights")
    with pytest.raises(ValueError, match="learning_rate"):
        opt.set_hyperparameter("learning_rate", -1.0)
    assert [opt.get_hyperparameter("learning_rate", member=m) for m in ("matrices", "biases")] == [0.3, 0.3]


def test_overlapping_parameters_refused():
    W, b, _ = _problem()
    with pytest.raises(ValueError, match="parameter 'W' belongs to members '0' and '1'"):
        symopt.combine(symopt.SGD([W, b]), symopt.Adam([W]))


def test_members_that_cannot_step_together_refused():
    W, b, _ = _problem()
    with pytest.raises(ValueError, match="skip_nonfinite"):
        symopt.combine(symopt.SGD([W], skip_nonfinite=True), symopt.Adam([b]))
    with pytest.raises(ValueError, match="accumulate"):
        symopt.combine(symopt.SGD([W], accumulate=2), symopt.Adam([b]))
    with pytest.raises(ValueError, match="at least one"):
        symopt.combine()
    with pytest.raises(TypeError, match="has no 'params'"):
        symopt.combine(W)
    with pytest.raises(TypeError, match="no optimiser to step"):
        symopt.combine(symopt.EMA([W]))


def test_unused_parameter():
    W, b, _ = _problem()
    unused = pytensor.shared(np.ones(2), name="unused")
    loss = pt.sum(W**2) + pt.sum(b**2)
    opt = symopt.combine(symopt.SGD([W, b]), symopt.SGD([unused]))
    with pytest.raises(ValueError, match="unused"):
        opt.updates(loss)
    updates = opt.updates(loss, allow_unused=True)
    assert unused not in updates and W in updates and b in updates


def test_lookahead_member_and_trainer():
    """A Lookahead member, and the Trainer training a Combined model optimiser."""
    model = symopt.nn.MLP([4, 5, 3], seed=0, dtype="float64")
    weights = [p for p in model.params if p.ndim == 2]
    biases = [p for p in model.params if p.ndim == 1]
    opt = symopt.combine(weights=symopt.Lookahead(symopt.SGD(weights, learning_rate=0.1), k=2),
                         biases=symopt.Adam(biases, learning_rate=0.01))
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(32, 4)), rng.integers(0, 3, 32)
    trainer = symopt.Trainer(model, opt, x, y, x, y, batch_size=8)
    history = trainer.fit(2, seed=0, progress=False)
    assert len(history) == 2 and int(opt.iterations.get_value()) == 8
    assert int(opt.members["weights"].counter.get_value()) == 8


def test_lookahead_member_saves_and_loads(tmp_path: Path):
    """A wrapper member's state (slow weights, counter) travels in the same file."""
    W, b, loss = _problem()
    opt = symopt.combine(symopt.Lookahead(symopt.Momentum([W], learning_rate=LR_M), k=3), symopt.Adam([b]))
    step = symopt.function([], loss, updates=opt.updates(loss))
    for _ in range(4):
        step()
    opt.save(tmp_path / "la.npz")
    saved = [opt.member(0).slow[0].get_value(), int(opt.member(0).counter.get_value())]
    step()
    opt.load(tmp_path / "la.npz")
    assert np.array_equal(opt.member(0).slow[0].get_value(), saved[0])
    assert int(opt.member(0).counter.get_value()) == saved[1] == 4 and int(opt.iterations.get_value()) == 4
