"""Tests of :mod:`symopt.schedules`: every schedule against a closed form written here,
the compiled (symbolic) value against the NumPy one, schedules driving hyperparameters
inside a compiled train step, changing them without recompiling, and bad parameters.

Conventions under test: a schedule's value is a function of ``s``, the number of updates
applied so far (0 on the first step, as optax counts); ``schedule(s)`` evaluates it in
NumPy, ``schedule.symbolic(s)`` in PyTensor.

The closed forms below are written independently of symopt's formulas (cosine
annealing, for instance, as ``cos^2``), straight from each schedule's documented
definition. Two functions are compiled in the whole module.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import symopt
from symopt import schedules as S

# --------------------------------------------------------------------------- closed forms


def anneal_cos(start: float, end: float, fraction: float) -> float:
    """Half-cosine from ``start`` (fraction 0) to ``end`` (fraction 1), as cos^2."""
    return end + (start - end) * math.cos(math.pi * fraction / 2) ** 2


def cf_constant(s: float, value: float) -> float:
    return value


def cf_step_decay(s: float, initial: float, step_size: float, factor: float = 0.1) -> float:
    value = initial
    for _ in range(int(s // step_size)):  # one multiplication per completed period
        value *= factor
    return value


def cf_exponential_decay(s: float, initial: float, decay_rate: float, decay_steps: float = 1.0) -> float:
    return initial * math.exp(s / decay_steps * math.log(decay_rate))


def cf_inverse_time(s: float, initial: float, decay_rate: float = 1.0, decay_steps: float = 1.0) -> float:
    return initial / (1.0 + decay_rate * s / decay_steps)


def cf_cosine_decay(s: float, initial: float, total_steps: float, final: float = 0.0) -> float:
    if s >= total_steps:
        return final
    return anneal_cos(initial, final, s / total_steps)


def cf_linear_warmup(s: float, peak: float, warmup_steps: float, start: float = 0.0) -> float:
    if s >= warmup_steps:
        return peak
    return start + (peak - start) * s / warmup_steps


def cf_warmup_cosine(
    s: float, peak: float, warmup_steps: float, total_steps: float, start: float = 0.0, final: float = 0.0
) -> float:
    if s < warmup_steps:
        return start + (peak - start) * s / warmup_steps
    if s >= total_steps:
        return final
    return anneal_cos(peak, final, (s - warmup_steps) / (total_steps - warmup_steps))


def cf_piecewise_constant(s: float, boundaries: list[float], values: list[float]) -> float:
    piece = 0
    while piece < len(boundaries) and s >= boundaries[piece]:
        piece += 1
    return values[piece]


def cf_one_cycle(
    s: float,
    max_value: float,
    total_steps: float,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> float:
    """Cosine one-cycle: max/div -> max at pct_start*T, then -> max/(div*final_div) at T."""
    low = max_value / div_factor
    end = low / final_div_factor
    peak_at = pct_start * total_steps
    if s < peak_at:
        return anneal_cos(low, max_value, s / peak_at)
    if s >= total_steps:
        return end
    return anneal_cos(max_value, end, (s - peak_at) / (total_steps - peak_at))


def cf_cosine_restarts(s: float, initial: float, period: int, period_mult: int = 1, minimum: float = 0.0) -> float:
    """torch's documented bookkeeping, step by step: T_cur counts up and wraps at T_i, which grows by T_mult."""
    t_cur, t_i = 0, period
    for _ in range(int(s)):
        t_cur += 1
        if t_cur >= t_i:
            t_cur -= t_i
            t_i *= period_mult
    return anneal_cos(initial, minimum, t_cur / t_i)


def cf_cyclic(
    s: float, low: float, high: float, step_size_up: int, step_size_down: int | None = None,
    mode: str = "triangular", gamma: float = 1.0,
) -> float:
    """Triangle wave written from its picture: up for `up` steps, down for `down`, amplitude per mode."""
    up = step_size_up
    down = up if step_size_down is None else step_size_down
    position, cycle = s % (up + down), s // (up + down)  # cycle is 0-based here
    rise = position / up if position <= up else (up + down - position) / down
    amplitude = {"triangular": 1.0, "triangular2": 0.5**cycle, "exp_range": gamma**s}[mode]
    return low + (high - low) * rise * amplitude


def cf_polynomial(s: float, initial: float, total_steps: int, power: float = 1.0, final: float = 0.0) -> float:
    """As optax writes it for an end value; with final=0 it is the product of torch's per-step factors."""
    if final == 0.0:
        value = initial
        for k in range(1, min(int(s), total_steps) + 1):
            value *= ((1 - k / total_steps) / (1 - (k - 1) / total_steps)) ** power
        return value
    fraction = 1 - min(s, total_steps) / total_steps
    return (initial - final) * fraction**power + final


def make_join(peak: float, warmup_steps: int, initial: float, period: int, period_mult: int, boundary: int) -> Any:
    return S.join(
        [S.linear_warmup(peak=peak, warmup_steps=warmup_steps), S.cosine_restarts(initial=initial, period=period, period_mult=period_mult)],
        [boundary],
    )


def cf_join(s: float, peak: float, warmup_steps: int, initial: float, period: int, period_mult: int, boundary: int) -> float:
    if s < boundary:
        return cf_linear_warmup(s, peak, warmup_steps)
    return cf_cosine_restarts(s - boundary, initial, period, period_mult)


#: the join case's schedule.set keys -> its closed form's keywords
JOIN_KEYS = {"0.peak": "peak", "0.warmup_steps": "warmup_steps", "1.initial": "initial", "1.period": "period",
             "1.period_mult": "period_mult"}


# (id, factory, closed form, its keyword arguments, steps to check incl. the boundaries)
CASES: list[tuple[str, Callable[..., Any], Callable[..., float], dict[str, Any], list[int]]] = [
    ("constant", S.constant, cf_constant, {"value": 0.3}, [0, 1, 7, 1000]),
    (
        "step_decay",
        S.step_decay,
        cf_step_decay,
        {"initial": 0.5, "factor": 0.5, "step_size": 3},
        [0, 1, 2, 3, 4, 5, 6, 9, 10],
    ),
    ("step_decay_default_factor", S.step_decay, cf_step_decay, {"initial": 2.0, "step_size": 2}, [0, 1, 2, 3, 4, 7]),
    (
        "exponential_decay",
        S.exponential_decay,
        cf_exponential_decay,
        {"initial": 0.2, "decay_rate": 0.5, "decay_steps": 4},
        [0, 1, 3, 4, 5, 8, 13],
    ),
    ("exponential_decay_per_step", S.exponential_decay, cf_exponential_decay, {"initial": 1.0, "decay_rate": 0.9}, [0, 1, 2, 10]),
    (
        "inverse_time",
        S.inverse_time,
        cf_inverse_time,
        {"initial": 1.0, "decay_rate": 0.5, "decay_steps": 2},
        [0, 1, 2, 3, 4, 10, 100],
    ),
    ("inverse_time_defaults", S.inverse_time, cf_inverse_time, {"initial": 0.5}, [0, 1, 2, 9]),
    (
        "cosine_decay",
        S.cosine_decay,
        cf_cosine_decay,
        {"initial": 1.0, "total_steps": 10, "final": 0.1},
        [0, 1, 5, 9, 10, 11, 50],
    ),
    ("cosine_decay_to_zero", S.cosine_decay, cf_cosine_decay, {"initial": 0.4, "total_steps": 4}, [0, 1, 2, 3, 4, 5]),
    (
        "linear_warmup",
        S.linear_warmup,
        cf_linear_warmup,
        {"peak": 1.0, "warmup_steps": 4, "start": 0.1},
        [0, 1, 3, 4, 5, 100],
    ),
    ("linear_warmup_from_zero", S.linear_warmup, cf_linear_warmup, {"peak": 0.5, "warmup_steps": 5}, [0, 2, 4, 5, 6]),
    (
        "warmup_cosine",
        S.warmup_cosine,
        cf_warmup_cosine,
        {"peak": 1.0, "warmup_steps": 3, "total_steps": 10, "start": 0.05, "final": 0.02},
        [0, 1, 2, 3, 4, 6, 9, 10, 11, 40],
    ),
    (
        "warmup_cosine_defaults",
        S.warmup_cosine,
        cf_warmup_cosine,
        {"peak": 0.3, "warmup_steps": 2, "total_steps": 6},
        [0, 1, 2, 3, 5, 6, 7],
    ),
    (
        "piecewise_constant",
        S.piecewise_constant,
        cf_piecewise_constant,
        {"boundaries": [2, 5], "values": [1.0, 0.5, 0.1]},
        [0, 1, 2, 3, 4, 5, 6, 100],
    ),
    (
        "one_cycle",
        S.one_cycle,
        cf_one_cycle,
        {"max_value": 1.0, "total_steps": 10, "pct_start": 0.3, "div_factor": 10, "final_div_factor": 100},
        [0, 1, 2, 3, 4, 6, 9, 10, 11, 30],
    ),
    ("one_cycle_defaults", S.one_cycle, cf_one_cycle, {"max_value": 0.1, "total_steps": 20}, [0, 3, 6, 7, 13, 19, 20, 25]),
    (
        "cosine_restarts",
        S.cosine_restarts,
        cf_cosine_restarts,
        {"initial": 1.0, "period": 3, "period_mult": 2, "minimum": 0.1},
        [0, 1, 2, 3, 4, 8, 9, 10, 20, 21, 22, 44, 45, 46],
    ),
    ("cosine_restarts_fixed_period", S.cosine_restarts, cf_cosine_restarts, {"initial": 0.5, "period": 4}, [0, 1, 3, 4, 5, 8, 13]),
    (
        "cosine_restarts_mult3",
        S.cosine_restarts,
        cf_cosine_restarts,
        {"initial": 2.0, "period": 5, "period_mult": 3, "minimum": 0.5},
        [0, 4, 5, 6, 19, 20, 21, 64, 65, 66, 200, 201, 202],
    ),
    ("cyclic", S.cyclic, cf_cyclic, {"low": 0.1, "high": 1.0, "step_size_up": 3}, [0, 1, 2, 3, 4, 5, 6, 7, 12, 13]),
    (
        "cyclic_triangular2",
        S.cyclic,
        cf_cyclic,
        {"low": 0.1, "high": 1.0, "step_size_up": 2, "step_size_down": 4, "mode": "triangular2"},
        [0, 1, 2, 3, 5, 6, 7, 8, 12, 14, 18, 19],
    ),
    (
        "cyclic_exp_range",
        S.cyclic,
        cf_cyclic,
        {"low": 0.2, "high": 1.0, "step_size_up": 4, "step_size_down": 2, "mode": "exp_range", "gamma": 0.9},
        [0, 1, 3, 4, 5, 6, 7, 10, 11, 25],
    ),
    (
        "polynomial",
        S.polynomial,
        cf_polynomial,
        {"initial": 1.0, "total_steps": 8, "power": 2.0, "final": 0.1},
        [0, 1, 4, 7, 8, 9, 30],
    ),
    ("polynomial_to_zero", S.polynomial, cf_polynomial, {"initial": 0.5, "total_steps": 6, "power": 0.5}, [0, 1, 2, 5, 6, 7]),
    (
        "join",
        make_join,
        cf_join,
        {"peak": 1.0, "warmup_steps": 3, "initial": 0.8, "period": 4, "period_mult": 2, "boundary": 5},
        [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 16, 17, 18],
    ),
]
CASE_IDS = [case[0] for case in CASES]


def make(case_id: str) -> Any:
    _, factory, _, kwargs, _ = CASES[CASE_IDS.index(case_id)]
    return factory(**kwargs)




# --------------------------------------------------------------------------- NumPy values


@pytest.mark.parametrize(("case_id", "factory", "closed_form", "kwargs", "steps"), CASES, ids=CASE_IDS)
def test_call_matches_closed_form(
    case_id: str, factory: Callable[..., Any], closed_form: Callable[..., float], kwargs: dict[str, Any], steps: list[int]
) -> None:
    schedule = factory(**kwargs)
    expected = [closed_form(s, **kwargs) for s in steps]
    got = [np.asarray(schedule(s)).item() for s in steps]
    np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-15, err_msg=case_id)
    # vectorised over an array of steps, including numpy integer steps
    np.testing.assert_allclose(schedule(np.array(steps, dtype=np.int64)), expected, rtol=1e-13, atol=1e-15)
    assert len(set(expected)) > 1 or case_id == "constant", "steps should exercise more than one value"


def test_closed_forms_hit_the_documented_landmarks() -> None:
    """Spot values a reader can check by eye, so the closed forms above are not wrong twice."""
    assert S.warmup_cosine(peak=1.0, warmup_steps=4, total_steps=8)(4).item() == pytest.approx(1.0, abs=1e-15)
    assert S.warmup_cosine(peak=1.0, warmup_steps=4, total_steps=8)(6).item() == pytest.approx(0.5, abs=1e-15)
    assert S.cosine_decay(initial=2.0, total_steps=10)(5).item() == pytest.approx(1.0, abs=1e-15)
    assert S.one_cycle(max_value=1.0, total_steps=10, div_factor=4)(0).item() == pytest.approx(0.25, abs=1e-15)
    assert S.one_cycle(max_value=1.0, total_steps=10, pct_start=0.4)(4).item() == pytest.approx(1.0, abs=1e-15)
    assert S.one_cycle(max_value=1.0, total_steps=10, div_factor=4, final_div_factor=5)(10).item() == pytest.approx(0.05)
    assert S.step_decay(initial=1.0, factor=0.5, step_size=3)(np.array([2, 3, 6])).tolist() == [1.0, 0.5, 0.25]
    assert S.inverse_time(initial=1.0)(np.array([0, 1, 3])).tolist() == [1.0, 0.5, 0.25]
    assert S.exponential_decay(initial=1.0, decay_rate=0.25, decay_steps=2)(1).item() == pytest.approx(0.5, abs=1e-15)
    # SGDR: half-way through the second cycle (steps 4..11 of period 4, doubled) is the mid value
    assert S.cosine_restarts(initial=1.0, period=4, period_mult=2, minimum=0.2)(np.array([0, 2, 4, 8, 12])).tolist() == \
        pytest.approx([1.0, 0.6, 1.0, 0.6, 1.0], abs=1e-15)
    assert S.cyclic(0.0, 1.0, 2, step_size_down=4)(np.array([0, 1, 2, 4, 6, 7, 8])).tolist() == \
        pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0, 0.5, 1.0], abs=1e-15)
    assert S.cyclic(0.0, 1.0, 2, mode="triangular2")(np.array([2, 6, 10])).tolist() == pytest.approx([1.0, 0.5, 0.25])
    assert S.polynomial(initial=1.0, total_steps=4, power=2.0)(np.array([0, 2, 4, 9])).tolist() == [1.0, 0.25, 0.0, 0.0]
    assert S.join([S.constant(value=3.0), S.polynomial(initial=1.0, total_steps=2)], [5])(np.array([4, 5, 6, 7])).tolist() == \
        [3.0, 1.0, 0.5, 0.0]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_scalar_step_gives_a_scalar_and_arrays_keep_their_shape(case_id: str) -> None:
    schedule = make(case_id)
    assert np.shape(schedule(3)) == (), f"{case_id}(3) has shape {np.shape(schedule(3))}"
    assert np.shape(schedule(np.int64(3))) == ()
    assert np.shape(schedule(np.arange(5))) == (5,)
    assert np.shape(schedule(np.zeros((2, 3)))) == (2, 3)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_negative_step_is_rejected(case_id: str) -> None:
    schedule = make(case_id)
    with pytest.raises(ValueError, match="step must be >= 0"):
        schedule(-1)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_get_hyperparameter_reports_the_schedule_value_at_the_step_counter(case_id: str) -> None:
    """No compilation: the optimiser's current value is the schedule at its counter."""
    _, _, closed_form, kwargs, _ = CASES[CASE_IDS.index(case_id)]
    p = pytensor.shared(np.zeros(3), name="p")
    opt = symopt.SGD([p], learning_rate=make(case_id))
    for count in (0, 4):
        opt.iterations.set_value(np.int64(count))
        value = opt.get_hyperparameter("learning_rate")
        assert isinstance(value, float)
        assert value == pytest.approx(closed_form(count, **kwargs), rel=1e-13, abs=1e-15)
        assert opt.hyperparameters["learning_rate"] == pytest.approx(value, rel=0, abs=0)


# --------------------------------------------------------------------------- symbolic values


# one case per schedule kind (the same kind with other numbers compiles to the same graph)
SYMBOLIC_IDS = [
    "constant", "step_decay", "exponential_decay", "inverse_time", "cosine_decay", "linear_warmup", "warmup_cosine",
    "piecewise_constant", "one_cycle", "cosine_restarts", "cosine_restarts_mult3", "cyclic_triangular2",
    "cyclic_exp_range", "polynomial", "join",
]


@pytest.fixture(scope="module")
def all_schedules() -> tuple[Any, Any, dict[str, Any]]:
    """ONE compiled function: every schedule case at a symbolic int64 step."""
    schedules = {case_id: make(case_id) for case_id in SYMBOLIC_IDS}
    step = pt.lscalar("step")
    evaluate = pytensor.function([step], [schedules[c].symbolic(step) for c in SYMBOLIC_IDS])
    return evaluate, step, schedules


def test_symbolic_equals_call_over_a_range_of_steps(all_schedules: tuple[Any, Any, dict[str, Any]]) -> None:
    evaluate, _, schedules = all_schedules
    for s in range(0, 26):
        got = evaluate(s)
        for case_id, value in zip(SYMBOLIC_IDS, got):
            assert value.shape == () and value.dtype == np.float64, case_id
            _, _, closed_form, kwargs, _ = CASES[CASE_IDS.index(case_id)]
            want = np.asarray(schedules[case_id](s)).item()
            assert value == pytest.approx(want, rel=1e-12, abs=1e-15), f"{case_id} at step {s}"
            assert value == pytest.approx(closed_form(s, **kwargs), rel=1e-12, abs=1e-15), f"{case_id} at step {s}"


def test_set_changes_the_compiled_function_without_recompiling(
    all_schedules: tuple[Any, Any, dict[str, Any]], count_compilations: list[int]
) -> None:
    evaluate, _, schedules = all_schedules
    maker = evaluate.maker
    new_params: dict[str, dict[str, Any]] = {
        "constant": {"value": -0.7},
        "step_decay": {"factor": 0.8, "step_size": 2},
        "exponential_decay": {"decay_rate": 0.9, "initial": 0.6},
        "inverse_time": {"decay_steps": 5},
        "cosine_decay": {"total_steps": 20, "final": 0.3},
        "linear_warmup": {"warmup_steps": 8},
        "warmup_cosine": {"warmup_steps": 5, "peak": 2.0, "total_steps": 12},
        "one_cycle": {"pct_start": 0.5, "total_steps": 16, "div_factor": 5.0, "final_div_factor": 10.0},
        "cosine_restarts": {"period_mult": 1, "period": 5, "minimum": 0.2},  # the m == 1 branch of the same graph
        "cosine_restarts_mult3": {"period": 2, "period_mult": 2},
        "cyclic_triangular2": {"low": 0.3, "step_size_up": 3},
        "cyclic_exp_range": {"gamma": 0.7, "step_size_down": 5},
        "polynomial": {"power": 1.0, "total_steps": 12},
        "join": {"1.initial": 2.0, "1.period": 3},
    }
    before = [evaluate(s) for s in range(20)]
    saved = {c: dict(schedules[c].values) for c in new_params}
    saved_pieces = schedules["piecewise_constant"].piece_values.get_value()
    try:
        for case_id, changes in new_params.items():
            for key, value in changes.items():
                schedules[case_id].set(key, value)
                assert schedules[case_id].get(key) == value
        schedules["piecewise_constant"].set_values([3.0, 2.0, 1.0])

        for s in range(20):
            got = dict(zip(SYMBOLIC_IDS, evaluate(s)))
            for case_id, value in got.items():
                _, _, closed_form, kwargs, _ = CASES[CASE_IDS.index(case_id)]
                kwargs = {**kwargs, **{JOIN_KEYS.get(k, k): v for k, v in new_params.get(case_id, {}).items()}}
                if case_id == "piecewise_constant":
                    kwargs["values"] = [3.0, 2.0, 1.0]
                assert value == pytest.approx(closed_form(s, **kwargs), rel=1e-12, abs=1e-15), f"{case_id} at {s}"
        after = [evaluate(s) for s in range(20)]
        changed = {c for i, c in enumerate(SYMBOLIC_IDS) if any(after[s][i] != before[s][i] for s in range(20))}
        assert changed == set(SYMBOLIC_IDS), set(SYMBOLIC_IDS) - changed
        assert count_compilations[0] == 0, "schedule.set triggered a compilation"
        assert evaluate.maker is maker
    finally:  # the fixture is module-scoped: put the original parameters back
        for case_id, values in saved.items():
            for key, value in values.items():
                schedules[case_id].set(key, value)
        schedules["piecewise_constant"].set_values(saved_pieces)


# --------------------------------------------------------------------------- in a train step


def test_schedules_drive_sgd_and_momentum_inside_one_compiled_step(count_compilations: list[int]) -> None:
    """lr of SGD, and lr and momentum of heavy ball, follow schedules at s = 0, 1, 2, ...

    Loss: sum(a (w - c)^2) + sum(a (v - c)^2); gradient 2 a (p - c). Halfway, every
    schedule's parameters change via set/set_values; the same compiled function follows.
    """
    rng = np.random.default_rng(42)
    a = np.array([1.0, 2.0, 0.5])
    c = np.array([1.0, -1.0, 2.0])
    w0, v0 = rng.normal(size=3), rng.normal(size=3)
    w = pytensor.shared(w0.copy(), name="w")
    v = pytensor.shared(v0.copy(), name="v")
    loss = (a * (w - c) ** 2).sum() + (a * (v - c) ** 2).sum()

    sgd_lr = S.warmup_cosine(peak=0.2, warmup_steps=3, total_steps=8, start=0.02, final=0.01)
    hb_lr = S.piecewise_constant([2, 5], [0.1, 0.05, 0.02])
    hb_mu = S.step_decay(initial=0.9, factor=0.5, step_size=3)
    sgd = symopt.SGD([w], learning_rate=sgd_lr)
    heavy_ball = symopt.Momentum([v], learning_rate=hb_lr, momentum=hb_mu)
    updates = sgd.updates(loss)
    updates.update(heavy_ball.updates(loss))
    train = pytensor.function([], loss, updates=updates)
    maker = train.maker

    sgd_kw = {"peak": 0.2, "warmup_steps": 3, "total_steps": 8, "start": 0.02, "final": 0.01}
    hb_pieces = [0.1, 0.05, 0.02]
    mu_kw = {"initial": 0.9, "factor": 0.5, "step_size": 3}
    w_ref, v_ref, buf = w0.copy(), v0.copy(), np.zeros(3)
    lrs_used = []
    for s in range(14):
        if s == 6:
            sgd_lr.set("peak", 0.4)
            sgd_lr.set("total_steps", 12)
            hb_lr.set_values([0.3, 0.2, 0.04])
            hb_mu.set("factor", 0.8)
            sgd_kw.update(peak=0.4, total_steps=12)
            hb_pieces = [0.3, 0.2, 0.04]
            mu_kw["factor"] = 0.8
        lr_w = cf_warmup_cosine(s, **sgd_kw)
        lr_v = cf_piecewise_constant(s, [2, 5], hb_pieces)
        mu = cf_step_decay(s, **mu_kw)
        lrs_used.append(lr_w)
        w_ref = w_ref - lr_w * 2 * a * (w_ref - c)
        buf = mu * buf + 2 * a * (v_ref - c)
        v_ref = v_ref - lr_v * buf

        train()
        np.testing.assert_allclose(w.get_value(), w_ref, rtol=1e-12, atol=1e-14, err_msg=f"SGD after step s={s}")
        np.testing.assert_allclose(v.get_value(), v_ref, rtol=1e-12, atol=1e-14, err_msg=f"momentum after step s={s}")
        np.testing.assert_allclose(heavy_ball.state[0]["velocity"].get_value(), buf, rtol=1e-12, atol=1e-14)
        assert sgd.iterations.get_value() == heavy_ball.iterations.get_value() == s + 1

    assert len(set(np.round(lrs_used, 12))) >= 10  # the schedule really varied the step size
    assert count_compilations[0] == 1, f"{count_compilations[0]} compilations, expected exactly one"
    assert train.maker is maker


def test_a_schedule_valued_hyperparameter_cannot_be_set_directly() -> None:
    p = pytensor.shared(np.zeros(3), name="p")
    lr = S.cosine_decay(initial=0.1, total_steps=10)
    opt = symopt.Adam([{"params": [p], "learning_rate": lr}])
    with pytest.raises(ValueError, match=re.escape("learning_rate follows a schedule; change it with schedule.set(...)")):
        opt.set_hyperparameter("learning_rate", 0.5)
    assert lr.get("initial") == 0.1
    opt.set_hyperparameter("beta1", 0.8)  # a plain hyperparameter of the same optimiser still can
    assert opt.get_hyperparameter("beta1") == 0.8


# --------------------------------------------------------------------------- bad parameters

BAD: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    (
        "unknown name",
        lambda: S.warmup_cosine(peak=1.0, warmup_steps=2, total_steps=5, final_value=0.0),
        TypeError,
        "WarmupCosine: unknown schedule parameter(s) ['final_value']",
    ),
    ("torch-style name", lambda: S.step_decay(initial=1.0, step_size=2, gamma=0.5), TypeError, "unknown schedule parameter(s) ['gamma']"),
    ("missing required", lambda: S.cosine_decay(initial=1.0), TypeError, "CosineDecay: missing required parameter(s) ['total_steps']"),
    ("missing several", lambda: S.one_cycle(), TypeError, "missing required parameter(s) ['max_value', 'total_steps']"),
    ("nan", lambda: S.constant(value=float("nan")), ValueError, "parameter 'value' must be finite"),
    ("inf", lambda: S.exponential_decay(initial=math.inf, decay_rate=0.5), ValueError, "parameter 'initial' must be finite"),
    ("not a number", lambda: S.constant(value="0.1"), TypeError, "parameter 'value' must be a real number"),
    ("bool", lambda: S.linear_warmup(peak=True, warmup_steps=3), TypeError, "parameter 'peak' must be a real number"),
    ("zero steps", lambda: S.step_decay(initial=1.0, step_size=0), ValueError, "'step_size' must be > 0"),
    ("negative step_size", lambda: S.step_decay(initial=1.0, step_size=-2), ValueError, "'step_size' must be > 0"),
    ("negative total", lambda: S.cosine_decay(initial=1.0, total_steps=-5), ValueError, "'total_steps' must be > 0"),
    (
        "warmup == total",
        lambda: S.warmup_cosine(peak=1.0, warmup_steps=5, total_steps=5),
        ValueError,
        "'total_steps' must exceed 'warmup_steps'",
    ),
    (
        "warmup > total",
        lambda: S.warmup_cosine(peak=1.0, warmup_steps=9, total_steps=5),
        ValueError,
        "'total_steps' must exceed 'warmup_steps'",
    ),
    ("pct_start 0", lambda: S.one_cycle(max_value=1.0, total_steps=10, pct_start=0.0), ValueError, "'pct_start' must be in (0, 1)"),
    ("pct_start 1", lambda: S.one_cycle(max_value=1.0, total_steps=10, pct_start=1.0), ValueError, "'pct_start' must be in (0, 1)"),
    ("pct_start > 1", lambda: S.one_cycle(max_value=1.0, total_steps=10, pct_start=1.5), ValueError, "'pct_start' must be in (0, 1)"),
    ("pct_start < 0", lambda: S.one_cycle(max_value=1.0, total_steps=10, pct_start=-0.1), ValueError, "'pct_start' must be in (0, 1)"),
    ("div_factor 0", lambda: S.one_cycle(max_value=1.0, total_steps=10, div_factor=0), ValueError, "'div_factor' must be > 0"),
    ("decay_rate 0", lambda: S.exponential_decay(initial=1.0, decay_rate=0.0), ValueError, "'decay_rate' must be > 0"),
    ("negative 1/t rate", lambda: S.inverse_time(initial=1.0, decay_rate=-1.0), ValueError, "'decay_rate' must be >= 0"),
    (
        "boundaries decreasing",
        lambda: S.piecewise_constant([5, 2], [1.0, 0.5, 0.1]),
        ValueError,
        "boundaries must be >= 0 and increasing, got [5.0, 2.0]",
    ),
    (
        "boundaries repeated",
        lambda: S.piecewise_constant([2, 2], [1.0, 0.5, 0.1]),
        ValueError,
        "boundaries must be >= 0 and increasing",
    ),
    ("negative boundary", lambda: S.piecewise_constant([-1], [1.0, 0.5]), ValueError, "boundaries must be >= 0 and increasing"),
    (
        "too few values",
        lambda: S.piecewise_constant([2, 5], [1.0, 0.5]),
        ValueError,
        "needs one more value than boundaries, got 2 values for 2 boundaries",
    ),
    (
        "too many values",
        lambda: S.piecewise_constant([2], [1.0, 0.5, 0.1]),
        ValueError,
        "needs one more value than boundaries, got 3 values for 1 boundaries",
    ),
    ("non-finite value", lambda: S.piecewise_constant([2], [1.0, math.nan]), ValueError, "boundaries and values must be finite"),
    ("infinite boundary", lambda: S.piecewise_constant([2, math.inf], [1.0, 0.5, 0.1]), ValueError, "must be finite"),
    ("period 0", lambda: S.cosine_restarts(initial=1.0, period=0), ValueError, "CosineRestarts: 'period' must be an integer >= 1, got 0"),
    ("period fractional", lambda: S.cosine_restarts(initial=1.0, period=2.5), ValueError, "'period' must be an integer >= 1, got 2.5"),
    (
        "period_mult fractional",
        lambda: S.cosine_restarts(initial=1.0, period=3, period_mult=1.5),
        ValueError,
        "'period_mult' must be an integer >= 1, got 1.5",
    ),
    ("period_mult 0", lambda: S.cosine_restarts(initial=1.0, period=3, period_mult=0), ValueError, "'period_mult' must be an integer >= 1"),
    ("torch name T_0", lambda: S.cosine_restarts(initial=1.0, T_0=3), TypeError, "unknown schedule parameter(s) ['T_0']"),
    ("cyclic mode", lambda: S.cyclic(0.1, 1.0, 4, mode="triangle"), ValueError,
     "Cyclic: mode must be one of ['triangular', 'triangular2', 'exp_range'], got 'triangle'"),
    ("cyclic gamma without exp_range", lambda: S.cyclic(0.1, 1.0, 4, gamma=0.9), ValueError,
     "Cyclic: gamma applies to mode='exp_range' only, not mode='triangular'"),
    ("cyclic step up 0", lambda: S.cyclic(0.1, 1.0, 0), ValueError, "Cyclic: 'step_size_up' must be > 0, got 0"),
    ("cyclic step down < 0", lambda: S.cyclic(0.1, 1.0, 3, step_size_down=-1), ValueError, "'step_size_down' must be > 0, got -1"),
    ("cyclic gamma 0", lambda: S.cyclic(0.1, 1.0, 3, mode="exp_range", gamma=0.0), ValueError, "Cyclic: 'gamma' must be > 0"),
    ("cyclic nan high", lambda: S.cyclic(0.1, math.nan, 3), ValueError, "parameter 'high' must be finite"),
    ("polynomial power 0", lambda: S.polynomial(initial=1.0, total_steps=5, power=0), ValueError, "Polynomial: 'power' must be > 0, got 0"),
    ("polynomial total 0", lambda: S.polynomial(initial=1.0, total_steps=0), ValueError, "'total_steps' must be > 0"),
    ("join empty", lambda: S.join([], []), TypeError, "Join: schedules must be a non-empty list of schedules"),
    ("join not a schedule", lambda: S.join([S.constant(value=1.0), 0.5], [3]), TypeError, "Join: schedules[1] is a float, not a symopt schedule"),
    ("join boundary count", lambda: S.join([S.constant(value=1.0), S.constant(value=0.5)], [3, 5]), ValueError,
     "Join: needs one boundary fewer than schedules, got 2 boundaries for 2 schedules"),
    ("join boundaries decreasing", lambda: S.join([S.constant(value=1.0)] * 3, [5, 3]), ValueError,
     "Join: boundaries must be >= 0 and increasing, got [5.0, 3.0]"),
    ("join boundary nan", lambda: S.join([S.constant(value=1.0)] * 2, [math.nan]), ValueError,
     "parameter 'boundaries[0]' must be finite"),
    ("join boundaries a number", lambda: S.join([S.constant(value=1.0)] * 2, 3), TypeError, "Join: boundaries must be a list of steps"),
]


@pytest.mark.parametrize(("what", "build", "error", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_parameters_raise_clear_errors(what: str, build: Callable[[], Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        build()


def test_set_rejects_bad_values_and_keeps_the_old_one() -> None:
    schedule = S.warmup_cosine(peak=1.0, warmup_steps=2, total_steps=6)
    with pytest.raises(ValueError, match=re.escape("'total_steps' must exceed 'warmup_steps'")):
        schedule.set("warmup_steps", 6)
    assert schedule.get("warmup_steps") == 2.0
    with pytest.raises(ValueError, match=re.escape("'total_steps' must exceed 'warmup_steps'")):
        schedule.set("total_steps", 1)
    assert schedule.get("total_steps") == 6.0
    with pytest.raises(ValueError, match="must be finite"):
        schedule.set("peak", math.inf)
    with pytest.raises(ValueError, match=re.escape("'warmup_steps' must be > 0")):
        schedule.set("warmup_steps", 0)
    with pytest.raises(KeyError, match=re.escape("WarmupCosine has no parameter 'end'")):
        schedule.set("end", 0.1)
    with pytest.raises(KeyError, match="has no parameter 'lr'"):
        schedule.get("lr")
    assert schedule.values == {"peak": 1.0, "warmup_steps": 2.0, "total_steps": 6.0, "start": 0.0, "final": 0.0}
    assert schedule(3).item() == pytest.approx(cf_warmup_cosine(3, peak=1.0, warmup_steps=2, total_steps=6))

    cycle = S.one_cycle(max_value=1.0, total_steps=10)
    with pytest.raises(ValueError, match=re.escape("'pct_start' must be in (0, 1)")):
        cycle.set("pct_start", 1.0)
    assert cycle.get("pct_start") == 0.3

    pieces = S.piecewise_constant([2], [1.0, 0.5])
    with pytest.raises(ValueError, match="expected 2 finite values"):
        pieces.set_values([1.0, 0.5, 0.1])
    with pytest.raises(ValueError, match="expected 2 finite values"):
        pieces.set_values([1.0, math.nan])
    np.testing.assert_array_equal(pieces(np.array([0, 2])), [1.0, 0.5])


# --------------------------------------------------------------------------- the new schedules' particulars


def test_cosine_restarts_restarts_exactly_at_every_cycle_start_far_out(all_schedules: tuple[Any, Any, dict[str, Any]]) -> None:
    """The cycle holding s comes from a logarithm; at the first step of cycle i (up to s ~ 2e6)
    the value is exactly `initial` and one step before it is the previous cycle's last value,
    in NumPy and in the compiled graph."""
    evaluate, _, schedules = all_schedules
    schedule, index = schedules["cosine_restarts_mult3"], SYMBOLIC_IDS.index("cosine_restarts_mult3")
    period, mult, initial, minimum = 5, 3, 2.0, 0.5
    for cycle in range(1, 13):
        start = period * (mult**cycle - 1) // (mult - 1)
        last = period * mult ** (cycle - 1)  # the length of the cycle that ends at start - 1
        before = anneal_cos(initial, minimum, (last - 1) / last)
        for s, want in ((start, initial), (start - 1, before)):
            assert schedule(s).item() == pytest.approx(want, rel=1e-12), f"NumPy, cycle {cycle}, step {s}"
            assert evaluate(s)[index] == pytest.approx(want, rel=1e-12), f"graph, cycle {cycle}, step {s}"


def test_join_parts_are_reached_by_index_and_refuse_unknown_keys() -> None:
    warm, decay = S.linear_warmup(peak=1.0, warmup_steps=2), S.polynomial(initial=1.0, total_steps=4)
    joined = S.join([warm, decay], [2])
    joined.set("1.initial", 0.5)
    assert decay.get("initial") == 0.5 and joined.get("1.initial") == 0.5
    assert joined(np.array([0, 1, 2, 4, 6])).tolist() == pytest.approx([0.0, 0.5, 0.5, 0.25, 0.0])
    for key in ("initial", "2.initial", "x.initial"):
        with pytest.raises(KeyError, match=re.escape(f"Join has no parameter {key!r}; its parameters are 'k.name' with k < 2")):
            joined.get(key)
    with pytest.raises(ValueError, match=re.escape("Polynomial: 'power' must be > 0")):
        joined.set("1.power", -1.0)
    assert decay.get("power") == 1.0


def test_new_schedules_round_trip_through_optimizer_state_files(tmp_path: Any) -> None:
    """Join (nested parts, '.'-keyed) and Cyclic save and load with the optimiser; a Join with
    other boundaries is refused before anything changes."""
    def build(boundary: float) -> tuple[Any, Any, Any]:
        lr = S.join([S.cyclic(0.1, 1.0, 3, mode="triangular2"), S.cosine_restarts(initial=0.4, period=2, period_mult=2)], [boundary])
        mu = S.polynomial(initial=0.9, total_steps=10, power=2.0, final=0.5)
        p = pytensor.shared(np.zeros(2), name="p")
        return symopt.Momentum([p], learning_rate=lr, momentum=mu), lr, mu

    opt, lr, mu = build(6)
    lr.set("0.high", 2.0)
    lr.set("1.minimum", 0.05)
    mu.set("final", 0.6)
    opt.iterations.set_value(np.int64(7))
    opt.save(tmp_path / "state.npz")

    again, lr2, mu2 = build(6)
    again.load(tmp_path / "state.npz")
    assert lr2.values == lr.values and mu2.values == mu.values
    assert lr2.schedules[0].mode == "triangular2"
    assert again.get_hyperparameter("learning_rate") == pytest.approx(cf_cosine_restarts(1, 0.4, 2, 2, 0.05), rel=1e-12)

    other, lr3, _ = build(5)
    before = lr3.values
    with pytest.raises(ValueError, match=re.escape("Join: saved boundaries [6.0] differ from [5.0]")):
        other.load(tmp_path / "state.npz")
    assert lr3.values == before and int(other.iterations.get_value()) == 0
