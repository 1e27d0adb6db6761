"""Tests of the training controls that live inside the one compiled train step:
gradient clipping, the max-norm constraint, weight-decay masks, param groups, gradient
accumulation, the non-finite guard, EMA, Lookahead, state round trips, and all of them
combined in a single compiled function that never recompiles when values change.

Every expected number comes from a NumPy reference written here from the equations
(clipping as Keras/optax state it, Lasagne's norm constraint, torch's Adam, the
Lookahead paper's Algorithm 1, the EMA recursion); nothing is compared with symopt
itself except for bit-exact resume checks.

Cold Numba compilation dominates the run time, so the module compiles six tiny
functions (scalars, vectors and 3x2 matrices), several of them shared by module-scoped
fixtures, mostly feeding gradients as inputs, and changes numbers with
set_hyperparameter / schedule.set / set_value instead of recompiling.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import symopt
from symopt import schedules as S
from symopt.masks import exclude_bias_and_norm

RTOL, ATOL = 1e-12, 1e-14


# --------------------------------------------------------------------------- helpers




def shared(value: Any, name: str) -> Any:
    return pytensor.shared(np.array(value, dtype=np.float64, copy=True), name=name)


def close(actual: Any, expected: Any, what: str = "") -> None:
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=what)


# NumPy references ------------------------------------------------------------


def ref_clip_value(g: np.ndarray, c: float) -> np.ndarray:
    out = g.copy()
    out[out > c] = c
    out[out < -c] = -c
    return out


def ref_clip_norm(g: np.ndarray, c: float) -> np.ndarray:
    norm = math.sqrt(float(np.sum(g**2)))
    return g if norm <= c else g * (c / norm)


def ref_clip_global_norm(gs: list[np.ndarray], c: float) -> list[np.ndarray]:
    norm = math.sqrt(sum(float(np.sum(g**2)) for g in gs))
    return gs if norm <= c else [g * (c / norm) for g in gs]


def ref_max_norm(W: np.ndarray, c: float) -> np.ndarray:
    """Lasagne's norm_constraint for a dense W: each column (a unit's incoming weights)."""
    out = W.copy()
    for j in range(W.shape[1]):
        norm = math.sqrt(float(np.sum(W[:, j] ** 2)))
        out[:, j] = W[:, j] * (min(norm, c) / (1e-7 + norm))
    return out


def ref_adam(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, t: int, lr: float,
             beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch.optim.Adam's step t (1-based); returns new (p, m, v)."""
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    return p - lr * m_hat / (np.sqrt(v_hat) + eps), m, v


def linear_batches(count: int, size: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Micro-batches (x, y) of equal size from y = 2 x - 1 + noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        x = rng.uniform(-2.0, 2.0, size=size)
        out.append((x, 2 * x - 1 + 0.3 * rng.normal(size=size)))
    return out


def linear_grads(a: float, b: float, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hand-derived gradient of mean((a x + b - y)^2): (mean(2 r x), mean(2 r))."""
    r = a * x + b - y
    return np.asarray(np.mean(2 * r * x)), np.asarray(np.mean(2 * r))


def cf_linear_warmup(s: float, peak: float, warmup_steps: float, start: float) -> float:
    return peak if s >= warmup_steps else start + (peak - start) * s / warmup_steps


W0 = np.array([[0.9, -0.4], [1.3, 0.2], [-0.7, 0.1]])  # column norms 1.73, 0.46
B0 = np.array([0.3, -0.2])
V0 = np.array([[2.0, -1.0], [1.5, 3.0], [0.5, -2.5]])  # column norms 2.55, 4.03


# --------------------------------------------------------------------------- clipping and max-norm

# Vectors: the clipping transforms do not care about rank, and 2-d kernels cost far more
# cold compilation. max_norm (2-d by definition) is checked numerically in the combined
# test below and structurally here.
P0 = np.array([0.9, -0.4, 1.3, 0.2])
Q0 = np.array([0.3, -0.2])
R0 = np.array([2.0, -1.0, 1.5])
GRADS = [
    np.array([0.3, -2.0, 1.2, 0.4]),  # norm 2.39
    np.array([0.2, -0.3]),  # norm 0.36
    np.array([-3.0, 0.5, 2.5]),  # norm 3.94
]
OFF = 1e6  # a threshold no gradient here reaches


@pytest.fixture(scope="module")
def clip_sgd() -> dict[str, Any]:
    """SGD (lr 0.5) with the three clipping transforms enabled; gradients are inputs."""
    params = (shared(P0, "p"), shared(Q0, "q"), shared(R0, "r"))
    grads = [pt.vector(f"g{i}", dtype="float64") for i in range(3)]
    opt = symopt.SGD(list(params), learning_rate=0.5, clip_value=OFF, clip_norm=OFF, clip_global_norm=OFF)
    step = pytensor.function(grads, [], updates=opt.updates(grads=grads))
    return {"params": params, "opt": opt, "step": step}


def run_clip_case(clip_sgd: dict[str, Any], grads: list[np.ndarray], **settings: float) -> list[np.ndarray]:
    """One step from (P0, Q0, R0) with the given thresholds (the others OFF)."""
    opt = clip_sgd["opt"]
    for name in ("clip_value", "clip_norm", "clip_global_norm"):
        opt.set_hyperparameter(name, settings.get(name, OFF))
        assert opt.get_hyperparameter(name) == settings.get(name, OFF)
    for var, value in zip(clip_sgd["params"], (P0, Q0, R0)):
        var.set_value(value.copy())
    clip_sgd["step"](*grads)
    return [var.get_value() for var in clip_sgd["params"]]


def ref_clip_step(grads: list[np.ndarray], **settings: float) -> list[np.ndarray]:
    """clip_value, then clip_norm per parameter, then clip_global_norm; then SGD, lr 0.5."""
    gs = [ref_clip_norm(ref_clip_value(g, settings.get("clip_value", OFF)), settings.get("clip_norm", OFF)) for g in grads]
    gs = ref_clip_global_norm(gs, settings.get("clip_global_norm", OFF))
    return [p - 0.5 * g for p, g in zip((P0, Q0, R0), gs)]


def test_clip_value_clips_elementwise(clip_sgd: dict[str, Any]) -> None:
    got = run_clip_case(clip_sgd, GRADS, clip_value=1.0)
    for name, g, w in zip("pqr", got, ref_clip_step(GRADS, clip_value=1.0)):
        close(g, w, name)
    assert got[0][1] == pytest.approx(-0.4 + 0.5 * 1.0, abs=1e-15)  # -2.0 was clipped to -1.0
    assert got[0][2] == pytest.approx(1.3 - 0.5 * 1.0, abs=1e-15)  # 1.2 was clipped to 1.0
    close(got[1], Q0 - 0.5 * GRADS[1], "q: all entries within the threshold")


def test_clip_norm_is_per_parameter(clip_sgd: dict[str, Any]) -> None:
    got = run_clip_case(clip_sgd, GRADS, clip_norm=1.0)
    for name, g, w in zip("pqr", got, ref_clip_step(GRADS, clip_norm=1.0)):
        close(g, w, name)
    close(got[1], Q0 - 0.5 * GRADS[1], "q's gradient (norm 0.36 < 1) is untouched")
    assert np.linalg.norm((R0 - got[2]) / 0.5) == pytest.approx(1.0, rel=1e-12)  # r's was rescaled to norm 1


def test_clip_global_norm_uses_the_norm_over_all_parameters(clip_sgd: dict[str, Any]) -> None:
    total = math.sqrt(sum(float(np.sum(g**2)) for g in GRADS))
    got = run_clip_case(clip_sgd, GRADS, clip_global_norm=2.0)
    for name, g, w in zip("pqr", got, ref_clip_step(GRADS, clip_global_norm=2.0)):
        close(g, w, name)
    close(got[1], Q0 - 0.5 * GRADS[1] * 2.0 / total, "q is scaled by the global factor although its own norm is small")
    # Keras/optax semantics: g * c / max(norm, c), so below the threshold nothing is scaled
    small = [g * 0.1 for g in GRADS]
    got = run_clip_case(clip_sgd, small, clip_global_norm=total * 0.1 + 1e-3)
    for name, g, p0, gr in zip("pqr", got, (P0, Q0, R0), small):
        close(g, p0 - 0.5 * gr, name)


def test_all_clipping_transforms_together_apply_in_order(clip_sgd: dict[str, Any], count_compilations: list[int]) -> None:
    settings = {"clip_value": 1.2, "clip_norm": 2.0, "clip_global_norm": 1.5}
    got = run_clip_case(clip_sgd, GRADS, **settings)
    for name, g, w in zip("pqr", got, ref_clip_step(GRADS, **settings)):
        close(g, w, name)
    # order matters: global-norm clipping first would give a different answer
    wrong = [ref_clip_norm(ref_clip_value(g, 1.2), 2.0) for g in ref_clip_global_norm(list(GRADS), 1.5)]
    assert not np.allclose(got[2], R0 - 0.5 * wrong[2], rtol=1e-6)
    assert count_compilations[0] == 0  # thresholds changed many times above, never recompiled


def test_max_norm_applies_to_the_masked_params_only() -> None:
    """Structural (no compilation): the new value of a parameter depends on the max_norm
    setting exactly when the mask selects it; default mask: ndim >= 2."""
    from pytensor.graph.traversal import ancestors

    W, V, b = shared(W0, "W"), shared(V0, "V"), shared(B0, "b")
    grads = [pt.matrix("gW", dtype="float64"), pt.matrix("gV", dtype="float64"), pt.vector("gb", dtype="float64")]
    for mask, constrained in (([W], {"W"}), (lambda p: p.name == "V", {"V"}), (None, {"W", "V"})):
        opt = symopt.SGD([W, V, b], max_norm=1.0, max_norm_mask=mask)
        updates = opt.updates(grads=grads)
        setting = opt.settings["max_norm"]
        uses = {p.name for p in (W, V, b) if setting in set(ancestors([updates[p]]))}
        assert uses == constrained, f"mask {mask!r}"


# --------------------------------------------------------------------------- weight-decay masks and param groups


def test_exclude_bias_and_norm_selects_parameters_with_two_or_more_dimensions() -> None:
    cases = {(): False, (3,): False, (3, 2): True, (2, 1, 3, 3): True}
    for shape, expected in cases.items():
        assert exclude_bias_and_norm(shared(np.zeros(shape), "x")) is expected, shape


def test_weight_decay_masks_coupled_and_decoupled_with_param_groups(count_compilations: list[int]) -> None:
    """SGD (coupled L2, a callable mask, two param groups) and AdamW (decoupled, a list
    mask) in one compiled function; group hyperparameters change between steps.
    (exclude_bias_and_norm on a matrix is in the combined test.)"""
    rng = np.random.default_rng(7)
    init = {"w1": rng.normal(size=3), "c1": rng.normal(size=2), "u1": rng.normal(size=3),
            "w2": rng.normal(size=3), "c2": rng.normal(size=2)}
    var = {k: shared(v, k) for k, v in init.items()}
    names = list(init)
    grads_in = {k: pt.vector(f"g{k}", dtype="float64") for k in names}
    sgd = symopt.SGD(
        [
            {"params": [var["w1"], var["c1"]], "learning_rate": 0.1},
            {"params": [var["u1"]], "learning_rate": 0.05, "weight_decay": 0.3},
        ],
        weight_decay=0.1,
        weight_decay_mask=lambda p: not p.name.startswith("c"),
    )
    adamw = symopt.AdamW([var["w2"], var["c2"]], learning_rate=0.1, weight_decay=0.2, weight_decay_mask=[var["w2"]])
    updates = sgd.updates(grads=[grads_in[k] for k in ("w1", "c1", "u1")])
    updates.update(adamw.updates(grads=[grads_in[k] for k in ("w2", "c2")]))
    step = pytensor.function([grads_in[k] for k in names], [], updates=updates)
    assert count_compilations[0] == 1

    # per-parameter values in force: [lr, weight decay (0 where masked out)]
    hyper = {"w1": [0.1, 0.1], "c1": [0.1, 0.0], "u1": [0.05, 0.3], "w2": [0.1, 0.2], "c2": [0.1, 0.0]}
    ref = {k: v.copy() for k, v in init.items()}
    m = {k: np.zeros_like(init[k]) for k in ("w2", "c2")}
    v = {k: np.zeros_like(init[k]) for k in ("w2", "c2")}
    unmasked = {"c1": init["c1"].copy(), "c2": init["c2"].copy()}  # what they would be if decayed
    unmasked_mv = (np.zeros(2), np.zeros(2))
    for t in range(1, 6):
        if t == 3:
            sgd.set_hyperparameter("learning_rate", 0.02, group=1)
            sgd.set_hyperparameter("weight_decay", 0.5, group=0)
            adamw.set_hyperparameter("weight_decay", 0.4)
            hyper["u1"][0], hyper["w1"][1], hyper["w2"][1] = 0.02, 0.5, 0.4
            assert sgd.get_hyperparameter("learning_rate", group=0) == 0.1
            assert sgd.get_hyperparameter("learning_rate", group=1) == 0.02
            assert sgd.get_hyperparameter("weight_decay", group=1) == 0.3
        g = {k: rng.normal(size=init[k].shape) for k in names}
        for k in ("w1", "c1", "u1"):  # coupled: g + wd p, then the SGD step
            lr, wd = hyper[k]
            ref[k] = ref[k] - lr * (g[k] + wd * ref[k])
        for k in ("w2", "c2"):  # decoupled: p (1 - lr wd), then the Adam step on g
            lr, wd = hyper[k]
            ref[k], m[k], v[k] = ref_adam(ref[k] * (1 - lr * wd), g[k], m[k], v[k], t, lr)
        unmasked["c1"] = unmasked["c1"] - 0.1 * (g["c1"] + (0.1 if t < 3 else 0.5) * unmasked["c1"])
        unmasked["c2"], *unmasked_mv = ref_adam(unmasked["c2"] * (1 - 0.1 * hyper["w2"][1]), g["c2"], *unmasked_mv, t, 0.1)
        step(*[g[k] for k in names])
        for k in names:
            close(var[k].get_value(), ref[k], f"{k} after step {t}")
    for k in ("c1", "c2"):
        assert np.abs(unmasked[k] - ref[k]).max() > 1e-3, f"weight decay too weak to tell whether {k} is masked"
    assert count_compilations[0] == 1


# --------------------------------------------------------------------------- accumulation, non-finite guard, EMA gating


@pytest.fixture(scope="module")
def accum_adam() -> dict[str, Any]:
    """ONE function for several tests: Adam with accumulate=3, skip_nonfinite=True and a
    linear warm-up learning rate, plus an EMA, on mean((a x + b - y)^2) + pen (pen does
    not change the gradient, so it makes the loss alone non-finite)."""
    a, b = shared(0.5, "a"), shared(-0.3, "b")
    x, y = pt.vector("x", dtype="float64"), pt.vector("y", dtype="float64")
    pen = pt.scalar("pen", dtype="float64")
    loss = ((a * x + b - y) ** 2).mean() + pen
    lr = S.linear_warmup(peak=0.1, warmup_steps=3, start=0.01)
    opt = symopt.Adam([a, b], learning_rate=lr, accumulate=3, skip_nonfinite=True)
    ema = symopt.EMA([a, b], decay=0.5)
    train = pytensor.function([x, y, pen], loss, updates=ema.updates(opt.updates(loss)))
    fresh = opt.state_dict()

    def reset() -> None:
        a.set_value(np.array(0.5))
        b.set_value(np.array(-0.3))
        opt.load_state_dict(fresh)  # also puts the schedule's parameters back
        ema.reset()

    return {"a": a, "b": b, "opt": opt, "lr": lr, "ema": ema, "train": train, "reset": reset}


class AccumulatingAdamReference:
    """Adam with accumulate=k and skip_nonfinite as issue 4 specifies them: a call whose
    loss or gradient is not finite is dropped entirely (counted as skipped); every k-th
    finite call applies ONE Adam step computed on the k micro-batches concatenated, with
    the learning rate of the warm-up at s = updates applied so far. The EMA moves on
    applied steps only."""

    def __init__(self, a: float, b: float, k: int, lr: dict[str, float], ema_decay: float, averages: tuple[float, float]):
        self.p = [np.asarray(a, dtype=float), np.asarray(b, dtype=float)]
        self.m = [np.array(0.0), np.array(0.0)]
        self.v = [np.array(0.0), np.array(0.0)]
        self.k, self.lr, self.decay = k, lr, ema_decay
        self.ema = [np.asarray(x, dtype=float) for x in averages]
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.applied = self.skipped = 0

    @property
    def accumulated(self) -> list[np.ndarray]:
        """Sum of the pending micro-batches' gradients (params do not move meanwhile)."""
        out = [np.array(0.0), np.array(0.0)]
        for x, y in self.pending:
            out = [o + g for o, g in zip(out, linear_grads(*self.p, x, y))]
        return out

    def __call__(self, x: np.ndarray, y: np.ndarray, pen: float) -> float:
        with np.errstate(invalid="ignore", over="ignore"):
            loss = float(np.mean((self.p[0] * x + self.p[1] - y) ** 2) + pen)
            grads = linear_grads(*self.p, x, y)
        if not (math.isfinite(loss) and all(np.isfinite(g) for g in grads)):
            self.skipped += 1
            return loss
        self.pending.append((x, y))
        if len(self.pending) == self.k:
            xs = np.concatenate([batch[0] for batch in self.pending])
            ys = np.concatenate([batch[1] for batch in self.pending])
            grads = linear_grads(*self.p, xs, ys)  # one step on the k-times-larger batch
            lr = cf_linear_warmup(self.applied, **self.lr)
            self.applied += 1
            for i in range(2):
                self.p[i], self.m[i], self.v[i] = ref_adam(self.p[i], grads[i], self.m[i], self.v[i], self.applied, lr)
                self.ema[i] = self.decay * self.ema[i] + (1 - self.decay) * self.p[i]
            self.pending = []
        return loss


LR_KW = {"peak": 0.1, "warmup_steps": 3, "start": 0.01}


def opt_state(fixture: dict[str, Any]) -> dict[str, np.ndarray]:
    opt = fixture["opt"]
    out = {"a": fixture["a"].get_value(), "b": fixture["b"].get_value(), "iterations": opt.iterations.get_value(),
           "micro_steps": opt.micro_steps.get_value()}
    for i, slots in enumerate(opt.state):
        out.update({f"{name}[{i}]": var.get_value() for name, var in slots.items()})
    return out


def check_against(fixture: dict[str, Any], ref: AccumulatingAdamReference, where: str) -> None:
    opt = fixture["opt"]
    close(fixture["a"].get_value(), ref.p[0], f"a {where}")
    close(fixture["b"].get_value(), ref.p[1], f"b {where}")
    for i in range(2):
        close(opt.state[i]["exp_avg"].get_value(), ref.m[i], f"exp_avg[{i}] {where}")
        close(opt.state[i]["exp_avg_sq"].get_value(), ref.v[i], f"exp_avg_sq[{i}] {where}")
        close(opt.state[i]["grad_accum"].get_value(), ref.accumulated[i], f"grad_accum[{i}] {where}")
    assert opt.iterations.get_value() == ref.applied, f"iterations {where}"
    assert opt.micro_steps.get_value() == len(ref.pending), f"micro_steps {where}"
    assert opt.skipped.get_value() == ref.skipped, f"skipped {where}"


def test_accumulate_equals_one_step_on_the_concatenated_batch(accum_adam: dict[str, Any]) -> None:
    accum_adam["reset"]()
    opt, train = accum_adam["opt"], accum_adam["train"]
    ref = AccumulatingAdamReference(0.5, -0.3, 3, LR_KW, 0.5, (0.5, -0.3))
    micro = linear_batches(12, size=4, seed=11)
    for call, (x, y) in enumerate(micro, start=1):
        loss = train(x, y, 0.0)
        assert float(loss) == pytest.approx(ref(x, y, 0.0), rel=1e-12)
        check_against(accum_adam, ref, f"after call {call}")
        assert opt.iterations.get_value() == call // 3  # the counter counts applied updates
        if call == 3:  # spelled out once: the first update is one Adam step on the 12 examples
            xs, ys = np.concatenate([m[0] for m in micro[:3]]), np.concatenate([m[1] for m in micro[:3]])
            ga, _ = linear_grads(0.5, -0.3, xs, ys)
            a1 = 0.5 - 0.01 * (0.1 * ga / (1 - 0.9)) / (np.sqrt(0.001 * ga**2 / (1 - 0.999)) + 1e-8)
            close(accum_adam["a"].get_value(), a1, "first applied step")
    assert opt.iterations.get_value() == 4
    assert opt.get_hyperparameter("learning_rate") == pytest.approx(0.1)  # warm-up over at s = 4


def test_skip_nonfinite_changes_nothing_and_later_steps_match_a_reference_without_them(
    accum_adam: dict[str, Any],
) -> None:
    accum_adam["reset"]()
    train = accum_adam["train"]
    ref = AccumulatingAdamReference(0.5, -0.3, 3, LR_KW, 0.5, (0.5, -0.3))
    good = linear_batches(9, size=5, seed=3)
    nan_x = good[0][0].copy()
    nan_x[2] = np.nan
    inf_x = good[1][0].copy()
    inf_x[0] = np.inf
    bad = {
        "NaN in the input": (nan_x, good[0][1], 0.0),
        "Inf in the loss only": (good[2][0], good[2][1], np.inf),
        "-Inf in the loss only": (good[3][0], good[3][1], -np.inf),
        "Inf in the input": (inf_x, good[1][1], 0.0),
    }
    # bad calls at the start of an accumulation, in its middle, twice in a row, before its last
    sequence: list[Any] = ["NaN in the input", 0, 1, "Inf in the loss only", 2, 3, "-Inf in the loss only",
                           "Inf in the input", 4, 5, "NaN in the input", 6, 7, 8]
    for call, item in enumerate(sequence):
        before = opt_state(accum_adam)
        if isinstance(item, str):
            x, y, pen = bad[item]
            loss = train(x, y, pen)
            assert not np.isfinite(loss), item
            ref(x, y, pen)
            after = opt_state(accum_adam)
            for key, value in before.items():
                assert np.array_equal(after[key], value), f"{key} changed on the '{item}' call {call}"
        else:
            x, y = good[item]
            loss = train(x, y, 0.0)
            assert float(loss) == pytest.approx(ref(x, y, 0.0), rel=1e-12)
        check_against(accum_adam, ref, f"after call {call} ({item})")
    assert (ref.applied, ref.skipped) == (3, 5)


def test_ema_moves_only_when_an_update_is_applied(accum_adam: dict[str, Any]) -> None:
    """a_t = d a_{t-1} + (1 - d) p_t over applied steps t: calls that only accumulate, and
    skipped calls, change neither the parameters nor (like all other state) the averages."""
    accum_adam["reset"]()
    ema, train = accum_adam["ema"], accum_adam["train"]
    ema.averages[0].set_value(np.array(2.0))  # away from the parameters, so any averaging shows
    ema.averages[1].set_value(np.array(1.0))
    ref = AccumulatingAdamReference(0.5, -0.3, 3, LR_KW, 0.5, (2.0, 1.0))
    batches = linear_batches(7, size=4, seed=8)
    nan_x = batches[0][0].copy()
    nan_x[0] = np.nan
    calls = [batches[0], batches[1], (nan_x, batches[1][1]), batches[2], batches[3], batches[4]]
    for call, (x, y) in enumerate(calls, start=1):
        train(x, y, 0.0)
        ref(x, y, 0.0)
        check_against(accum_adam, ref, f"after call {call}")  # the parameters are right ...
        for i in range(2):  # ... and the averages must have moved only on the applied step
            close(ema.averages[i].get_value(), ref.ema[i], f"EMA[{i}] after call {call} ({ref.applied} applied)")


def _trajectory(fixture: dict[str, Any], batches: list[tuple[np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
    out = []
    for x, y in batches:
        loss = fixture["train"](x, y, 0.0)
        out.append({"loss": np.array(loss), **opt_state(fixture)})
    return out


def _assert_state_equal(a: Any, b: Any, path: str = "state") -> None:
    """Recursive bit-exact comparison of two ``state_dict()`` results (values and dtypes)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            _assert_state_equal(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (ea, eb) in enumerate(zip(a, b)):
            _assert_state_equal(ea, eb, f"{path}[{i}]")
    elif isinstance(a, str):
        assert a == b, path
    else:
        assert np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(a, b), path


def test_state_dict_round_trip_is_bit_exact_mid_accumulation_with_a_schedule(
    accum_adam: dict[str, Any], tmp_path: Path
) -> None:
    accum_adam["reset"]()
    opt, lr, a, b = accum_adam["opt"], accum_adam["lr"], accum_adam["a"], accum_adam["b"]
    lr.set("peak", 0.2)  # a schedule parameter changed before saving must come back too
    batches = linear_batches(13, size=4, seed=5)
    _trajectory(accum_adam, batches[:4])  # one applied update and one micro-step pending
    assert (opt.iterations.get_value(), opt.micro_steps.get_value()) == (1, 1)
    saved = opt.state_dict()
    saved_params = (a.get_value(), b.get_value())
    opt.save(tmp_path / "opt.npz")
    assert all(np.all(acc != 0) for acc in saved["slots"]["grad_accum"])
    expected = _trajectory(accum_adam, batches[4:9])
    assert [row["iterations"] for row in expected] == [1, 2, 2, 2, 3]

    for how, restore in (("load_state_dict", lambda: opt.load_state_dict(saved)), ("load", lambda: opt.load(tmp_path / "opt.npz"))):
        _trajectory(accum_adam, batches[9:])  # disturb everything: slots, counters, accumulator
        lr.set("peak", 0.05)
        lr.set("warmup_steps", 7)
        a.set_value(saved_params[0].copy())
        b.set_value(saved_params[1].copy())
        restore()
        assert lr.values == {"peak": 0.2, "warmup_steps": 3.0, "start": 0.01}, how
        _assert_state_equal(opt.state_dict(), saved, how)
        again = _trajectory(accum_adam, batches[4:9])
        for i, (row_a, row_b) in enumerate(zip(expected, again)):
            for key in row_a:
                assert np.array_equal(row_a[key], row_b[key]), f"{how}: {key} of call {i} differs after the round trip"


def test_state_dict_round_trip_restores_piecewise_constant_values() -> None:
    """set_values changes a piecewise schedule as set changes the others; a checkpoint
    taken afterwards must restore those values, as it restores the other schedules'."""
    p = shared([1.0, 2.0], "p")
    pieces = S.piecewise_constant([3], [0.1, 0.01])
    cosine = S.cosine_decay(initial=0.5, total_steps=10)
    opt = symopt.Momentum([p], learning_rate=pieces, momentum=cosine)
    pieces.set_values([0.2, 0.02])
    cosine.set("initial", 0.8)
    saved = opt.state_dict()
    pieces.set_values([0.7, 0.07])
    cosine.set("initial", 0.3)
    opt.load_state_dict(saved)
    assert cosine.get("initial") == 0.8
    np.testing.assert_array_equal(pieces(np.array([0, 3])), [0.2, 0.02])


# --------------------------------------------------------------------------- EMA


def test_ema_follows_the_recursion_and_average_parameters_swaps_back(count_compilations: list[int]) -> None:
    p, q = shared([1.0, -2.0, 0.5], "p"), shared(3.0, "q")
    gp, gq = pt.vector("gp", dtype="float64"), pt.scalar("gq", dtype="float64")
    opt = symopt.SGD([p, q], learning_rate=0.3)
    ema = symopt.EMA([p, q], decay=0.9)
    step = pytensor.function([gp, gq], [], updates=ema.updates(opt.updates(grads=[gp, gq])))
    rng = np.random.default_rng(9)
    p_ref, q_ref = np.array([1.0, -2.0, 0.5]), np.array(3.0)
    a_p, a_q = p_ref.copy(), q_ref.copy()  # averages start at the initial values
    decay = 0.9
    for i in range(8):
        if i == 4:
            ema.set_decay(0.5)
            decay = 0.5
        g_p, g_q = rng.normal(size=3), rng.normal()
        p_ref, q_ref = p_ref - 0.3 * g_p, q_ref - 0.3 * g_q
        a_p = decay * a_p + (1 - decay) * p_ref  # averages the parameter after the step
        a_q = decay * a_q + (1 - decay) * q_ref
        step(g_p, g_q)
        close(p.get_value(), p_ref)
        close(ema.averages[0].get_value(), a_p, f"average of p after step {i + 1}")
        close(ema.averages[1].get_value(), a_q, f"average of q after step {i + 1}")
    assert count_compilations[0] == 1

    trained = (p.get_value(), q.get_value())
    with ema.average_parameters():
        close(p.get_value(), a_p)
        close(q.get_value(), a_q)
    assert np.array_equal(p.get_value(), trained[0]) and np.array_equal(q.get_value(), trained[1])
    with pytest.raises(RuntimeError, match="evaluation failed"):
        with ema.average_parameters():
            close(p.get_value(), a_p)
            raise RuntimeError("evaluation failed")
    assert np.array_equal(p.get_value(), trained[0]) and np.array_equal(q.get_value(), trained[1])
    close(ema.averages[0].get_value(), a_p, "averages untouched by the swaps")
    ema.reset()
    assert np.array_equal(ema.averages[0].get_value(), trained[0])


# --------------------------------------------------------------------------- Lookahead


def test_lookahead_around_sgd_and_adam_matches_the_papers_algorithm(count_compilations: list[int]) -> None:
    """Algorithm 1 of Zhang et al. (2019): k inner steps on the fast weights, then
    phi <- phi + alpha (theta - phi) and theta <- phi; the inner state carries on."""
    a = np.array([1.0, 3.0, 0.5])
    c = np.array([2.0, -1.0, 0.5])
    p0, q0 = np.array([0.0, 0.0, 3.0]), np.array([-1.0, 2.0, 0.0])
    p, q = shared(p0, "p"), shared(q0, "q")
    loss = (a * (p - c) ** 2).sum() + (a * (q - c) ** 2).sum()
    la_sgd = symopt.Lookahead(symopt.SGD([p], learning_rate=0.1), k=3, alpha=0.5)
    la_adam = symopt.Lookahead(symopt.Adam([q], learning_rate=0.2), k=2, alpha=0.8)
    updates = la_sgd.updates(loss)
    updates.update(la_adam.updates(loss))
    train = pytensor.function([], loss, updates=updates)

    fast_p, slow_p = p0.copy(), p0.copy()
    fast_q, slow_q, m, v = q0.copy(), q0.copy(), np.zeros(3), np.zeros(3)
    lr_sgd = 0.1
    for i in range(1, 14):  # 4 SGD periods and 6 Adam periods, plus a partial one
        if i == 7:
            la_sgd.set_hyperparameter("learning_rate", 0.05)  # goes to the inner rule
            lr_sgd = 0.05
        fast_p = fast_p - lr_sgd * 2 * a * (fast_p - c)
        if i % 3 == 0:
            slow_p = slow_p + 0.5 * (fast_p - slow_p)
            fast_p = slow_p.copy()
        fast_q, m, v = ref_adam(fast_q, 2 * a * (fast_q - c), m, v, i, 0.2)
        if i % 2 == 0:
            slow_q = slow_q + 0.8 * (fast_q - slow_q)
            fast_q = slow_q.copy()
        train()
        close(p.get_value(), fast_p, f"SGD fast weights after step {i}")
        close(la_sgd.slow[0].get_value(), slow_p, f"SGD slow weights after step {i}")
        close(q.get_value(), fast_q, f"Adam fast weights after step {i}")
        close(la_adam.slow[0].get_value(), slow_q, f"Adam slow weights after step {i}")
        close(la_adam.inner.state[0]["exp_avg"].get_value(), m, "Adam state is not reset at a sync")
        assert la_sgd.iterations.get_value() == la_adam.inner.iterations.get_value() == i
    assert la_sgd.get_hyperparameter("learning_rate") == 0.05
    assert la_sgd.params == [p]
    assert count_compilations[0] == 1


# --------------------------------------------------------------------------- everything at once


class CombinedReference:
    """NumPy model of the combined step: AdamW, groups {W: schedule lr, wd 0.1} and {b: lr
    0.05, wd 0.3 but masked}, clip value / norm / global norm, max-norm on W,
    accumulate=2, skip_nonfinite, Lookahead(k=2, alpha=0.5), EMA of W and b."""

    def __init__(self, W: np.ndarray, b: np.ndarray, settings: dict[str, float], sched: dict[str, float]):
        self.p = {"W": W.copy(), "b": b.copy()}
        self.m = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.v = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.acc = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.slow = {k: v.copy() for k, v in self.p.items()}
        self.ema = {k: v.copy() for k, v in self.p.items()}
        self.settings, self.sched = dict(settings), dict(sched)
        self.lr_b, self.ema_decay = 0.05, 0.9
        self.micro = self.iterations = self.skipped = self.la_counter = 0
        self.active = {"clip_value": 0, "clip_norm": 0, "clip_global_norm": 0, "max_norm": 0, "sync": 0}

    def __call__(self, x: np.ndarray, y: np.ndarray, pen: float) -> float:
        W, b = self.p["W"], self.p["b"]
        r = W * x + b - y
        with np.errstate(invalid="ignore"):
            loss = float(np.mean(r**2) + pen)
            grads = {"W": 2 * r * x / r.size, "b": np.sum(2 * r / r.size, axis=0)}
        finite = math.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads.values())
        if not finite:
            self.skipped += 1
            return loss
        for k in grads:
            self.acc[k] = self.acc[k] + grads[k]
        self.micro += 1
        if self.micro < 2:
            return loss
        mean = {k: self.acc[k] / 2 for k in self.acc}
        self.acc = {k: np.zeros_like(v) for k, v in self.acc.items()}
        self.micro = 0
        self._apply(mean)
        return loss

    def _apply(self, grads: dict[str, np.ndarray]) -> None:
        s = self.settings
        clipped = {}
        for k, g in grads.items():
            g1 = ref_clip_value(g, s["clip_value"])
            self.active["clip_value"] += int(not np.array_equal(g1, g))
            g2 = ref_clip_norm(g1, s["clip_norm"])
            self.active["clip_norm"] += int(g2 is not g1)
            clipped[k] = g2
        before = list(clipped.values())
        after = ref_clip_global_norm(before, s["clip_global_norm"])
        self.active["clip_global_norm"] += int(after is not before)
        clipped = dict(zip(clipped, after))

        step = self.iterations  # s: updates applied before this one
        t = step + 1
        lr_W = cf_warmup_cosine(step, **self.sched)
        W = self.p["W"] * (1 - lr_W * 0.1)  # decoupled decay, W only (b is masked out)
        W, self.m["W"], self.v["W"] = ref_adam(W, clipped["W"], self.m["W"], self.v["W"], t, lr_W)
        constrained = ref_max_norm(W, s["max_norm"])
        self.active["max_norm"] += int(np.any(np.linalg.norm(W, axis=0) > s["max_norm"]))
        b, self.m["b"], self.v["b"] = ref_adam(self.p["b"], clipped["b"], self.m["b"], self.v["b"], t, self.lr_b)
        self.p = {"W": constrained, "b": b}
        self.iterations += 1

        self.la_counter += 1
        if self.la_counter % 2 == 0:
            self.active["sync"] += 1
            for k in self.p:
                self.slow[k] = self.slow[k] + 0.5 * (self.p[k] - self.slow[k])
                self.p[k] = self.slow[k].copy()
        for k in self.p:
            self.ema[k] = self.ema_decay * self.ema[k] + (1 - self.ema_decay) * self.p[k]


def cf_warmup_cosine(s: float, peak: float, warmup_steps: float, total_steps: float, start: float, final: float) -> float:
    if s < warmup_steps:
        return start + (peak - start) * s / warmup_steps
    if s >= total_steps:
        return final
    return final + (peak - final) * math.cos(math.pi * (s - warmup_steps) / (total_steps - warmup_steps) / 2) ** 2


def test_all_controls_in_one_compiled_function_without_recompiling(count_compilations: list[int]) -> None:
    rng = np.random.default_rng(2024)
    W_init, b_init = rng.normal(size=(3, 2)), rng.normal(size=2)
    W, b = shared(W_init, "W"), shared(b_init, "b")
    x, y = pt.matrix("x", dtype="float64"), pt.matrix("y", dtype="float64")
    pen = pt.scalar("pen", dtype="float64")
    loss = ((W * x + b - y) ** 2).mean() + pen

    sched_kw = {"peak": 0.1, "warmup_steps": 2, "total_steps": 8, "start": 0.02, "final": 0.005}
    lr_W = S.warmup_cosine(**sched_kw)
    settings = {"clip_value": 0.5, "clip_norm": 0.6, "clip_global_norm": 0.7, "max_norm": 1.0}
    opt = symopt.AdamW(
        [{"params": [W], "learning_rate": lr_W}, {"params": [b], "learning_rate": 0.05, "weight_decay": 0.3}],
        weight_decay=0.1,
        weight_decay_mask=exclude_bias_and_norm,
        accumulate=2,
        skip_nonfinite=True,
        **settings,
    )  # max_norm_mask left at its default: parameters with ndim >= 2 (W, not b)
    la = symopt.Lookahead(opt, k=2, alpha=0.5)
    ema = symopt.EMA([W, b], decay=0.9)
    train = pytensor.function([x, y, pen], loss, updates=ema.updates(la.updates(loss)))
    maker = train.maker
    assert count_compilations[0] == 1

    ref = CombinedReference(W_init, b_init, settings, sched_kw)
    ema_mismatch = []
    for call in range(22):
        xv, yv = rng.normal(size=(3, 2)), rng.normal(size=(3, 2)) * 3
        pen_v = 0.0
        if call in (3, 12):
            xv[1, 0] = np.nan  # mid-accumulation and at its start
        if call == 8:
            pen_v = np.inf
        if call == 6:  # change every kind of value: a clip, a schedule, a group's lr, the EMA decay
            opt.set_hyperparameter("clip_value", 0.3)
            lr_W.set("peak", 0.2)
            opt.set_hyperparameter("learning_rate", 0.02, group=1)
            ema.set_decay(0.7)
            ref.settings["clip_value"], ref.sched["peak"], ref.lr_b, ref.ema_decay = 0.3, 0.2, 0.02, 0.7
        if call == 14:
            opt.set_hyperparameter("clip_norm", 0.25)
            opt.set_hyperparameter("clip_global_norm", 0.3)
            opt.set_hyperparameter("max_norm", 0.8)
            lr_W.set("total_steps", 12)
            ref.settings.update(clip_norm=0.25, clip_global_norm=0.3, max_norm=0.8)
            ref.sched["total_steps"] = 12
        want_loss = ref(xv, yv, pen_v)
        got_loss = train(xv, yv, pen_v)
        if math.isfinite(want_loss):
            assert float(got_loss) == pytest.approx(want_loss, rel=1e-12), f"loss of call {call}"
        else:
            assert not np.isfinite(got_loss)
        where = f"after call {call}"
        close(W.get_value(), ref.p["W"], f"W {where}")
        close(b.get_value(), ref.p["b"], f"b {where}")
        close(la.slow[0].get_value(), ref.slow["W"], f"slow W {where}")
        close(opt.state[0]["exp_avg_sq"].get_value(), ref.v["W"], f"exp_avg_sq of W {where}")
        close(opt.state[1]["grad_accum"].get_value(), ref.acc["b"], f"accumulator of b {where}")
        assert opt.iterations.get_value() == ref.iterations, where
        assert opt.micro_steps.get_value() == ref.micro, where
        assert opt.skipped.get_value() == ref.skipped, where
        assert la.counter.get_value() == ref.la_counter, where
        for k, var in zip("Wb", ema.averages):
            if not np.allclose(var.get_value(), ref.ema[k], rtol=RTOL, atol=ATOL):
                ema_mismatch.append(f"EMA of {k} {where}")

    assert ref.skipped == 3 and ref.iterations >= 8
    assert all(n > 0 for n in ref.active.values()), f"every control must act at least once: {ref.active}"
    assert count_compilations[0] == 1, "changing values recompiled the train function"
    assert train.maker is maker
    # last, so that the checks above are reported independently of it
    assert not ema_mismatch, f"EMA differs from the recursion over applied steps: {ema_mismatch[:3]} ..."


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def Wb() -> tuple[Any, Any]:
    return shared(W0, "W"), shared(B0, "b")


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2", None])
def test_accumulate_must_be_an_integer_of_at_least_one(Wb: tuple[Any, Any], value: Any) -> None:
    with pytest.raises(ValueError, match=re.escape(f"SGD: accumulate must be an integer >= 1, got {value!r}")):
        symopt.SGD(list(Wb), accumulate=value)


@pytest.mark.parametrize("name", ["clip_value", "clip_norm", "clip_global_norm", "max_norm"])
@pytest.mark.parametrize("value", [0, -0.5])
def test_clip_thresholds_must_be_positive(Wb: tuple[Any, Any], name: str, value: float) -> None:
    with pytest.raises(ValueError, match=re.escape(f"Adam: {name} must be > 0, got {float(value)}")):
        symopt.Adam(list(Wb), **{name: value})


def test_clip_thresholds_must_be_finite_numbers(Wb: tuple[Any, Any]) -> None:
    with pytest.raises(ValueError, match=re.escape("hyperparameter 'clip_norm' must be finite, got nan")):
        symopt.SGD(list(Wb), clip_norm=math.nan)
    with pytest.raises(ValueError, match=re.escape("hyperparameter 'clip_global_norm' must be finite, got inf")):
        symopt.SGD(list(Wb), clip_global_norm=math.inf)
    with pytest.raises(TypeError, match=re.escape("hyperparameter 'clip_value' must be a real number, got '1'")):
        symopt.SGD(list(Wb), clip_value="1")


def test_set_hyperparameter_validates_clip_thresholds_and_keeps_the_old_value(Wb: tuple[Any, Any]) -> None:
    opt = symopt.SGD(list(Wb), clip_norm=1.0)
    with pytest.raises(ValueError, match=re.escape("SGD: clip_norm must be > 0, got 0.0")):
        opt.set_hyperparameter("clip_norm", 0.0)
    assert opt.get_hyperparameter("clip_norm") == 1.0
    with pytest.raises(ValueError, match=re.escape("SGD: clip_value was not enabled at construction; pass clip_value=... to the constructor")):
        opt.set_hyperparameter("clip_value", 1.0)


def test_masks_must_name_parameters(Wb: tuple[Any, Any]) -> None:
    W, b = Wb
    other = shared([1.0], "other")
    with pytest.raises(ValueError, match=re.escape("AdamW: weight_decay_mask names 'other', which is not one of the parameters")):
        symopt.AdamW([W, b], weight_decay_mask=[W, other])
    with pytest.raises(ValueError, match=re.escape("SGD: max_norm_mask names 'other', which is not one of the parameters")):
        symopt.SGD([W, b], max_norm=1.0, max_norm_mask=[other])
    with pytest.raises(TypeError, match=re.escape("weight_decay_mask(parameter 'W' (index 0)) returned 1, expected True or False")):
        symopt.Adam([W, b], weight_decay_mask=lambda p: p.ndim - 1)
    with pytest.raises(TypeError, match=re.escape("weight_decay_mask must be a callable param -> bool or a list of parameters, got 'W'")):
        symopt.Adam([W, b], weight_decay_mask="W")


def test_max_norm_mask_errors(Wb: tuple[Any, Any]) -> None:
    W, b = Wb
    with pytest.raises(ValueError, match=re.escape("SGD: max_norm_mask given without max_norm")):
        symopt.SGD([W, b], max_norm_mask=[W])
    with pytest.raises(ValueError, match=re.escape("max_norm constrains weight columns; parameter 'b' (index 1) has 1 dimensions")):
        symopt.SGD([W, b], max_norm=1.0, max_norm_mask=[W, b])


def test_skip_nonfinite_must_be_a_bool(Wb: tuple[Any, Any]) -> None:
    with pytest.raises(TypeError, match=re.escape("SGD: skip_nonfinite must be True or False, got 'yes'")):
        symopt.SGD(list(Wb), skip_nonfinite="yes")


def test_schedule_with_unknown_parameter_given_as_a_hyperparameter(Wb: tuple[Any, Any]) -> None:
    with pytest.raises(TypeError, match=re.escape("CosineDecay: unknown schedule parameter(s) ['decay_steps']")):
        symopt.SGD(list(Wb), learning_rate=S.cosine_decay(initial=0.1, decay_steps=10))


def test_ema_and_lookahead_arguments(Wb: tuple[Any, Any]) -> None:
    W, b = Wb
    with pytest.raises(ValueError, match=re.escape("EMA: decay must lie in [0, 1), got 1.0")):
        symopt.EMA([W, b], decay=1.0)
    with pytest.raises(TypeError, match="EMA: params must be a non-empty list"):
        symopt.EMA([])
    ema = symopt.EMA([W, b], decay=0.99)
    with pytest.raises(ValueError, match=re.escape("EMA: decay must lie in [0, 1), got -0.1")):
        ema.set_decay(-0.1)
    assert ema.decay.get_value() == 0.99
    inner = symopt.SGD([W, b])
    with pytest.raises(ValueError, match=re.escape("Lookahead: k must be an integer >= 1, got 0")):
        symopt.Lookahead(inner, k=0)
    with pytest.raises(ValueError, match=re.escape("Lookahead: alpha must lie in (0, 1], got 1.5")):
        symopt.Lookahead(inner, alpha=1.5)
    with pytest.raises(ValueError, match=re.escape("Lookahead: alpha must lie in (0, 1], got 0.0")):
        symopt.Lookahead(inner, alpha=0.0)
    with pytest.raises(TypeError, match=re.escape("Lookahead: inner must be a symopt Optimizer, got list")):
        symopt.Lookahead([W, b])


@pytest.mark.parametrize("key, value, message", [("counter", -1, "counter must be"), ("alpha", 1.5, r"alpha must lie in \(0, 1\]")])
def test_lookahead_bad_state_raises_and_changes_nothing(key: str, value: float, message: str) -> None:
    W = pytensor.shared(np.array([1.0, 2.0]), name="W")
    la = symopt.Lookahead(symopt.Adam([W]), k=3, alpha=0.5)
    state = la.state_dict()
    state["inner"]["iterations"] = np.array(7, dtype=np.int64)  # would show if the inner state were applied
    state[key] = np.asarray(value)
    with pytest.raises(ValueError, match=message):
        la.load_state_dict(state)
    assert la.inner.iterations.get_value() == 0 and la.counter.get_value() == 0
    assert la.alpha.get_value() == 0.5
