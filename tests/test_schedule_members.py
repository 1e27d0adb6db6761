"""Schedules with per-member parameters (a vector over the members of a seed stack).

Member ``i`` of a schedule built with vectors must equal the scalar schedule built with
member ``i``'s numbers: its NumPy values, its compiled (symbolic) value, and a compiled
stacked training run against the separate single-model runs that follow the scalar
schedules (the single runs and the scalar schedules are the reference: the scalar
schedules are checked against closed forms in ``tests/test_schedules.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import symopt
from symopt import schedules as S

from .test_grid import STEPS, _data, _initial, _loss, _snapshot, _stacked_params

MEMBERS = 3

# (factory, keyword arguments): lists are per-member vectors (MEMBERS values).
CASES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "constant": (S.constant, {"value": [1.0, 2.0, 3.0]}),
    "step_decay": (S.step_decay, {"initial": [1.0, 2.0, 3.0], "factor": [0.5, 0.1, 0.9], "step_size": 4}),
    "exponential_decay": (S.exponential_decay, {"initial": 1.0, "decay_rate": [0.5, 0.9, 0.99],
                                                "decay_steps": [2, 3, 4]}),
    "inverse_time": (S.inverse_time, {"initial": [1.0, 2.0, 3.0], "decay_rate": 0.5}),
    "cosine_decay": (S.cosine_decay, {"initial": [1e-3, 3e-3, 1e-2], "total_steps": [10, 20, 15],
                                      "final": [0.0, 1e-4, 0.0]}),
    "linear_warmup": (S.linear_warmup, {"peak": [1.0, 2.0, 3.0], "warmup_steps": [2, 5, 7]}),
    "warmup_cosine": (S.warmup_cosine, {"peak": [1.0, 2.0, 3.0], "warmup_steps": [2, 3, 4],
                                        "total_steps": [10, 12, 20], "start": 0.1}),
    "one_cycle": (S.one_cycle, {"max_value": [1.0, 2.0, 3.0], "total_steps": 20, "pct_start": [0.2, 0.3, 0.5]}),
    "cosine_restarts": (S.cosine_restarts, {"initial": [1.0, 2.0, 3.0], "period": [3, 4, 5],
                                            "period_mult": [1, 2, 3], "minimum": 0.01}),
    "cyclic_exp_range": (S.cyclic, {"low": [0.1, 0.2, 0.3], "high": 1.0, "step_size_up": [2, 3, 4],
                                    "mode": "exp_range", "gamma": [0.9, 0.95, 0.99]}),
    "cyclic_triangular2": (S.cyclic, {"low": 0.1, "high": [1.0, 2.0, 0.5], "step_size_up": 3,
                                      "step_size_down": [2, 5, 3], "mode": "triangular2"}),
    "polynomial": (S.polynomial, {"initial": [1.0, 2.0, 3.0], "total_steps": [10, 15, 20], "power": [1.0, 2.0, 0.5]}),
}
STEPS_CHECKED = np.arange(0, 30)


def _member(kwargs: dict[str, Any], i: int) -> dict[str, Any]:
    return {k: v[i] if isinstance(v, list) else v for k, v in kwargs.items()}


def _join(i: int | None) -> S.Join:
    """A join of a per-member part and a shared part (member ``i``'s scalar join, or the vector one)."""
    peaks, totals = [1.0, 2.0, 3.0], [5, 8, 11]
    pick = (lambda v: v) if i is None else (lambda v: v[i])
    return S.join([S.linear_warmup(peak=pick(peaks), warmup_steps=3), S.cosine_decay(initial=2.0, total_steps=10),
                   S.polynomial(initial=1.0, total_steps=pick(totals))], boundaries=[3, 9])


def _pairs() -> dict[str, tuple[Any, list[Any]]]:
    """case -> (the per-member schedule, the scalar schedules of its members)."""
    out: dict[str, tuple[Any, list[Any]]] = {}
    for name, (factory, kwargs) in CASES.items():
        out[name] = (factory(**kwargs), [factory(**_member(kwargs, i)) for i in range(MEMBERS)])
    out["join"] = (_join(None), [_join(i) for i in range(MEMBERS)])
    return out


@pytest.mark.parametrize("case", [*CASES, "join"])
def test_member_equals_the_scalar_schedule_in_numpy(case):
    vector, scalars = _pairs()[case]
    assert vector.n_members == MEMBERS and all(s.n_members is None for s in scalars)
    got = vector(STEPS_CHECKED)
    assert got.shape == (len(STEPS_CHECKED), MEMBERS) and got.dtype == np.float64
    for i, scalar in enumerate(scalars):
        np.testing.assert_allclose(got[:, i], scalar(STEPS_CHECKED), rtol=1e-13, atol=1e-15, err_msg=f"member {i}")
        assert vector(7)[i] == pytest.approx(float(scalar(7)), rel=1e-13, abs=1e-15)
    assert vector(7).shape == (MEMBERS,) and vector(np.zeros((2, 4))).shape == (2, 4, MEMBERS)


@pytest.fixture(scope="module")
def compiled():
    """ONE compiled function: every per-member case at a symbolic int64 step."""
    pairs = _pairs()
    step = pt.lscalar("step")
    evaluate = pytensor.function([step], [vector.symbolic(step) for vector, _ in pairs.values()])
    return evaluate, pairs


def test_compiled_member_equals_the_scalar_schedule(compiled):
    evaluate, pairs = compiled
    for s in STEPS_CHECKED:
        for (case, (vector, scalars)), value in zip(pairs.items(), evaluate(s)):
            assert value.shape == (MEMBERS,) and value.dtype == np.float64, case
            want = [float(scalar(s)) for scalar in scalars]
            np.testing.assert_allclose(value, want, rtol=1e-12, atol=1e-15, err_msg=f"{case} at step {s}")


def test_set_a_member_vector_without_recompiling(compiled):
    evaluate, pairs = compiled
    vector, _ = pairs["cosine_decay"]
    index = list(pairs).index("cosine_decay")
    vector.set("initial", [5.0, 6.0, 7.0])
    np.testing.assert_allclose(evaluate(4)[index], [S.cosine_decay(initial=v, total_steps=t, final=f)(4)
                                                     for v, t, f in zip([5.0, 6.0, 7.0], [10, 20, 15], [0, 1e-4, 0])],
                               rtol=1e-12)
    vector.set("initial", 2.0)  # one number: every member
    np.testing.assert_array_equal(vector.get("initial"), [2.0, 2.0, 2.0])
    assert isinstance(vector.get("total_steps"), np.ndarray) and isinstance(vector.get("final"), np.ndarray)
    # a vector that fails a member's check leaves the old value
    with pytest.raises(ValueError, match="'total_steps' must be > 0"):
        vector.set("total_steps", [10, -1, 3])
    np.testing.assert_array_equal(vector.get("total_steps"), [10, 20, 15])


# ---------------------------------------------------------------- a stacked run
def _lr(i: int | None) -> S.Join:
    peaks, totals = [1e-2, 3e-2, 5e-3], [3, 4, 5]
    pick = (lambda v: v) if i is None else (lambda v: v[i])
    return S.join([S.linear_warmup(peak=pick(peaks), warmup_steps=2, start=1e-3),
                   S.cosine_decay(initial=2e-2, total_steps=pick(totals))], boundaries=[2])


def _beta1(i: int | None) -> S.Polynomial:
    initial = [0.9, 0.8, 0.6]
    return S.polynomial(initial=initial if i is None else initial[i], total_steps=STEPS, final=0.5)


def test_stacked_run_follows_each_members_schedule():
    """Adam on a 3-member stack whose learning rate and beta1 follow per-member schedules:
    member i equals the single-model run following member i's scalar schedules
    (parameters, slots and step count, float64 round-off)."""
    params = _stacked_params()
    x, y = pt.tensor3("x"), pt.tensor3("y")
    opt = symopt.Adam(params, learning_rate=_lr(None), beta1=_beta1(None))
    losses = _loss(*params, x, y)
    step = pytensor.function([x, y], losses, updates=opt.updates(losses))
    xs, ys = _data()
    used = []
    for t in range(STEPS):
        used.append(opt.get_hyperparameter("learning_rate"))
        step(xs[t], ys[t])
    for t, value in enumerate(used):
        np.testing.assert_allclose(value, [float(_lr(i)(t)) for i in range(MEMBERS)], rtol=1e-13)

    for i in range(MEMBERS):
        single = [pytensor.shared(v[i].copy(), name=n) for v, n in zip(_initial(), ["W", "b"])]
        xi, yi = pt.matrix("x"), pt.matrix("y")
        single_opt = symopt.Adam(single, learning_rate=_lr(i), beta1=_beta1(i))
        loss = _loss(*single, xi, yi)
        single_step = pytensor.function([xi, yi], loss, updates=single_opt.updates(loss))
        for t in range(STEPS):
            single_step(xs[t, i], ys[t, i])
        got, want = _snapshot(opt, i), _snapshot(single_opt)
        assert set(got) == set(want)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-10, atol=1e-13, err_msg=f"member {i}: {key}")
    moved = [params[0].get_value()[i] - _initial()[0][i] for i in range(MEMBERS)]
    assert not np.allclose(moved[0], moved[1])


def test_schedule_state_round_trip():
    params = _stacked_params()
    opt = symopt.Adam(params, learning_rate=S.cosine_decay(initial=[1e-3, 2e-3, 3e-3], total_steps=10))
    state = opt.state_dict()
    opt.param_groups[0].values["learning_rate"].set("initial", [4e-3, 5e-3, 6e-3])
    opt.load_state_dict(state)
    np.testing.assert_array_equal(opt.param_groups[0].values["learning_rate"].get("initial"), [1e-3, 2e-3, 3e-3])
    bad = opt.state_dict()
    bad["schedules"][0]["learning_rate"]["initial"] = np.array([1e-3, 2e-3])
    with pytest.raises(ValueError, match="'initial' must be 3 per-member values"):
        opt.load_state_dict(bad)


def test_bad_member_schedules():
    with pytest.raises(ValueError, match=r"one value per stack member.*lengths \{'initial': 2, 'total_steps': 3\}"):
        S.cosine_decay(initial=[1.0, 2.0], total_steps=[1, 2, 3])
    with pytest.raises(ValueError, match="non-empty list of numbers"):
        S.cosine_decay(initial=[], total_steps=10)
    with pytest.raises(ValueError, match="non-empty list of numbers"):
        S.cosine_decay(initial=np.ones((2, 2)), total_steps=10)
    with pytest.raises(TypeError, match="must be a real number"):
        S.cosine_decay(initial=[1.0, "a"], total_steps=10)
    with pytest.raises(ValueError, match="'warmup_steps' must be > 0"):
        S.linear_warmup(peak=1.0, warmup_steps=[1, 0])
    with pytest.raises(ValueError, match="'total_steps' must exceed 'warmup_steps'"):
        S.warmup_cosine(peak=1.0, warmup_steps=[2, 5], total_steps=[10, 5])
    with pytest.raises(ValueError, match="Join: the per-member parts must have one length"):
        S.join([S.constant(value=[1.0, 2.0]), S.constant(value=[1.0, 2.0, 3.0])], [2])
    shared = S.cosine_decay(initial=1.0, total_steps=10)
    with pytest.raises(ValueError, match="built as one number for all stack members"):
        shared.set("initial", [1.0, 2.0])
    members = S.cosine_decay(initial=[1.0, 2.0], total_steps=10)
    with pytest.raises(ValueError, match="'initial' has 2 per-member values, got 3"):
        members.set("initial", [1.0, 2.0, 3.0])
    # the optimiser: one value per member of its stack, and stacked parameters
    with pytest.raises(ValueError, match=r"'learning_rate' has 2 values but the stack has 3 members"):
        symopt.Adam(_stacked_params(), learning_rate=members)
    single = [pytensor.shared(np.zeros(3), name="w")]
    with pytest.raises(ValueError, match="not stacked over a seed axis"):
        symopt.Adam(single, learning_rate=members)
