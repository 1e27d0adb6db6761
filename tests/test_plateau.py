"""symopt.ReduceLROnPlateau against a NumPy/Python re-implementation of torch's documented
algorithm, for random metric sequences with plateaus, NaN and infinities, in every mode;
per param group; on other hyperparameters; state; errors; and inside fit with a
checkpointed, resumed run. Stepping compiles nothing; the fit tests compile three trainers."""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytensor
import pytest

import symopt
from symopt import nn
from symopt import schedules as S
from symopt.train import Trainer

# --------------------------------------------------------------------------- the reference


def torch_plateau_lrs(
    metrics: list[float], lrs: list[float], *, factor: float = 0.1, patience: int = 10, threshold: float = 1e-4,
    threshold_mode: str = "rel", mode: str = "min", cooldown: int = 0, min_lr: Any = 0.0, eps: float = 1e-8,
) -> list[list[float]]:
    """The learning rates after each metric, following torch's documentation of
    ReduceLROnPlateau: "reduce once the number of epochs with no improvement exceeds
    patience", improvement "dynamic_threshold = best * (1 - threshold)" (rel, min),
    "best - threshold" (abs, min), "best * (1 + threshold)" / "best + threshold" for max;
    "cooldown: epochs to wait before resuming normal operation"; "if the difference between
    new and old lr is smaller than eps, the update is ignored". Written as a fold."""
    floors = list(min_lr) if isinstance(min_lr, (list, tuple)) else [min_lr] * len(lrs)
    sign = 1.0 if mode == "min" else -1.0
    best, bad, cool, lrs, out = sign * math.inf, 0, 0, list(lrs), []
    for m in metrics:
        if mode == "min":
            bar = best * (1 - threshold) if threshold_mode == "rel" else best - threshold
            improved = m < bar
        else:
            bar = best * (1 + threshold) if threshold_mode == "rel" else best + threshold
            improved = m > bar
        best, bad = (m, 0) if improved else (best, bad + 1)
        if cool:
            cool, bad = cool - 1, 0
        if bad > patience:
            lrs = [lr if lr - max(lr * factor, f) <= eps else max(lr * factor, f) for lr, f in zip(lrs, floors)]
            cool, bad = cooldown, 0
        out.append(list(lrs))
    return out


def _optimizer(lrs: list[float], rule: Any = symopt.SGD, **kw: Any) -> Any:
    groups = [{"params": [pytensor.shared(np.zeros(2), name=f"p{i}")], "learning_rate": lr} for i, lr in enumerate(lrs)]
    return rule(groups, **kw)


# The torch cross-check's random metric sequences (noisy descent with flat stretches, repeats,
# NaN, +-inf, negative values) and settings (both modes and threshold modes, cooldown,
# per-group min_lr, large eps); that script needs torch only when it runs.
_spec = importlib.util.spec_from_file_location(
    "validate_schedules", Path(__file__).resolve().parents[1] / "benchmarks" / "validate_schedules.py")
assert _spec is not None and _spec.loader is not None
_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench)
SETTINGS: list[dict[str, Any]] = _bench.PLATEAU_SETTINGS
_metrics = _bench.metric_sequence


@pytest.mark.parametrize("setting", SETTINGS, ids=[str(i) for i in range(len(SETTINGS))])
def test_learning_rates_equal_torchs_documented_algorithm_for_random_metrics(setting: dict[str, Any]) -> None:
    rng = np.random.default_rng(len(str(setting)))
    for trial in range(20):
        metrics = _metrics(rng, 60)
        lrs = [0.1, 0.5]
        opt = _optimizer(lrs)
        plateau = symopt.ReduceLROnPlateau(opt, **setting)
        expected = torch_plateau_lrs(metrics, lrs, **setting)
        for epoch, (metric, want) in enumerate(zip(metrics, expected)):
            plateau.step(metric)
            got = [opt.get_hyperparameter("learning_rate", group=g) for g in range(2)]
            assert got == want, f"trial {trial}, epoch {epoch + 1}: {got} != {want} (metric {metric})"
        assert plateau.last_epoch == len(metrics)
    assert len({tuple(r) for r in expected}) > 1, "the sequence should reduce at least once"


def test_landmarks_a_reader_can_check() -> None:
    """patience=2: the fourth epoch without improvement (bad count 3 > 2) halves the rate; NaN is bad."""
    opt = _optimizer([1.0])
    plateau = symopt.ReduceLROnPlateau(opt, factor=0.5, patience=2)
    seen = []
    for metric in [1.0, 1.0, math.nan, 1.0, 0.5, 0.49999, 0.4, math.nan, math.nan, math.nan]:
        plateau.step(metric)
        seen.append(opt.get_hyperparameter("learning_rate"))
    assert seen == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25]
    assert plateau.best == 0.4 and plateau.num_bad_epochs == 0 and plateau.get_last_lr() == [0.25]


def test_any_hyperparameter_through_a_lookahead_and_numpy_metrics() -> None:
    opt = symopt.Lookahead(_optimizer([0.1, 0.2], rule=symopt.Momentum, momentum=0.9))
    plateau = symopt.ReduceLROnPlateau(opt, factor=0.5, patience=0, min_lr=[0.5, 0.0], hyperparameter="momentum")
    plateau.step(np.float32(2.0))
    plateau.step(np.array([3.0]))  # one number in an array, as a seed trainer's row holds it
    inner = opt.inner
    assert [inner.get_hyperparameter("momentum", group=g) for g in range(2)] == [0.5, 0.45]
    assert [inner.get_hyperparameter("learning_rate", group=g) for g in range(2)] == [0.1, 0.2]


def test_state_round_trip_and_refusals() -> None:
    opt = _optimizer([0.1])
    plateau = symopt.ReduceLROnPlateau(opt, factor=0.5, patience=1, cooldown=3)
    for metric in [1.0, 2.0, 2.0, 2.0]:
        plateau.step(metric)
    state = plateau.state_dict()
    assert (state["best"], state["num_bad_epochs"], state["cooldown_counter"], state["last_epoch"]) == (1.0, 0, 2, 4)

    other = symopt.ReduceLROnPlateau(_optimizer([0.1]), factor=0.5, patience=1, cooldown=3)
    other.load_state_dict(state)
    assert other.state_dict() == state
    fresh = symopt.ReduceLROnPlateau(_optimizer([0.1]), factor=0.5, patience=1, cooldown=3)
    assert fresh.state_dict()["best"] == math.inf
    fresh.load_state_dict({**state, "best": "inf"})  # as a JSON header writes it
    assert fresh.best == math.inf

    different = symopt.ReduceLROnPlateau(_optimizer([0.1]), factor=0.3, patience=1, cooldown=3)
    with pytest.raises(ValueError, match=re.escape("ReduceLROnPlateau: saved with factor=0.5, this one has factor=0.3")):
        different.load_state_dict(state)
    for bad, message in (({**state, "num_bad_epochs": -1}, "saved num_bad_epochs -1 is not an integer >= 0"),
                         ({**state, "best": "nan"}, "saved best 'nan' is not a number"),
                         ({"best": 1.0}, "a saved state holds")):
        with pytest.raises(ValueError, match=re.escape(message)):
            fresh.load_state_dict(bad)
    assert different.best == math.inf and different.num_bad_epochs == 0
    assert fresh.state_dict() == {**state, "best": math.inf}  # the refused loads changed nothing


BAD: list[tuple[str, Callable[[Any], Any], type[Exception], str]] = [
    ("not an optimiser", lambda opt: symopt.ReduceLROnPlateau("adam"), TypeError,
     "ReduceLROnPlateau: optimizer must be a symopt optimiser, got str"),
    ("factor 1", lambda opt: symopt.ReduceLROnPlateau(opt, factor=1.0), ValueError, "factor must lie in [0, 1), got 1.0"),
    ("factor < 0", lambda opt: symopt.ReduceLROnPlateau(opt, factor=-0.5), ValueError, "factor must lie in [0, 1)"),
    ("factor nan", lambda opt: symopt.ReduceLROnPlateau(opt, factor=math.nan), ValueError, "factor must be finite"),
    ("patience float", lambda opt: symopt.ReduceLROnPlateau(opt, patience=2.5), ValueError,
     "patience must be an integer >= 0, got 2.5"),
    ("cooldown < 0", lambda opt: symopt.ReduceLROnPlateau(opt, cooldown=-1), ValueError, "cooldown must be an integer >= 0"),
    ("threshold < 0", lambda opt: symopt.ReduceLROnPlateau(opt, threshold=-1e-4), ValueError, "threshold must be >= 0"),
    ("threshold_mode", lambda opt: symopt.ReduceLROnPlateau(opt, threshold_mode="relative"), ValueError,
     "threshold_mode must be one of ['rel', 'abs'], got 'relative'"),
    ("mode", lambda opt: symopt.ReduceLROnPlateau(opt, mode="minimum"), ValueError, "mode must be one of ['min', 'max']"),
    ("min_lr count", lambda opt: symopt.ReduceLROnPlateau(opt, min_lr=[0.0, 0.0, 0.0]), ValueError,
     "min_lr has 3 values for 2 param groups"),
    ("min_lr < 0", lambda opt: symopt.ReduceLROnPlateau(opt, min_lr=-1.0), ValueError, "min_lr must be >= 0"),
    ("min_lr text", lambda opt: symopt.ReduceLROnPlateau(opt, min_lr=[0.0, "0"]), TypeError, "min_lr[1] must be a real number"),
    ("eps < 0", lambda opt: symopt.ReduceLROnPlateau(opt, eps=-1.0), ValueError, "eps must be >= 0"),
    ("unknown hyperparameter", lambda opt: symopt.ReduceLROnPlateau(opt, hyperparameter="lr"), ValueError,
     "ReduceLROnPlateau: SGD has no numeric hyperparameter 'lr'; it has ['learning_rate', 'weight_decay']"),
]


@pytest.mark.parametrize(("what", "build", "error", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_arguments_raise_one_clear_error(what: str, build: Callable[[Any], Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        build(_optimizer([0.1, 0.2]))


def test_a_scheduled_hyperparameter_cannot_be_reduced() -> None:
    lr = S.cosine_restarts(initial=0.1, period=10)
    p, q = pytensor.shared(np.zeros(2), name="p"), pytensor.shared(np.zeros(2), name="q")
    opt = symopt.Adam([{"params": [p]}, {"params": [q], "learning_rate": lr}], learning_rate=0.01)
    with pytest.raises(ValueError, match=re.escape(
            "ReduceLROnPlateau: learning_rate of param group 1 follows a schedule (CosineRestarts(initial=0.1, period=10, "
            "period_mult=1, minimum=0)); a plateau cannot reduce a scheduled value")):
        symopt.ReduceLROnPlateau(opt)
    symopt.ReduceLROnPlateau(opt, hyperparameter="beta1")  # another hyperparameter of the same optimiser can


def test_step_refuses_what_is_not_one_number() -> None:
    plateau = symopt.ReduceLROnPlateau(_optimizer([0.1]))
    with pytest.raises(ValueError, match=re.escape("the metric must be one number, got shape (2,)")):
        plateau.step(np.array([1.0, 2.0]))
    with pytest.raises(TypeError, match="the metric must be a number, got 'low'"):
        plateau.step("low")
    with pytest.raises(TypeError, match="the metric must be a number, got True"):
        plateau.step(True)
    assert plateau.last_epoch == 0


# --------------------------------------------------------------------------- on symopt.combine
W_LRS, B_LR = [0.1, 0.02], 0.5


def _members(wrap: Callable[[Any], Any] = lambda opt: opt) -> tuple[Any, Any]:
    """A weights member with two param groups (Adam, optionally wrapped) and a bias member (SGD)."""
    w = wrap(_optimizer(W_LRS, rule=symopt.Adam))
    b = symopt.SGD([pytensor.shared(np.zeros(3), name="b")], learning_rate=B_LR)
    return w, b


@pytest.mark.parametrize("setting", SETTINGS, ids=[str(i) for i in range(len(SETTINGS))])
def test_on_a_combine_each_member_follows_its_own_plateau(setting: dict[str, Any]) -> None:
    """One plateau on combine(w=..., b=...) reduces every member's groups exactly as the scalar
    class does on each member alone (and as torch's documented algorithm does), epoch by epoch."""
    rng = np.random.default_rng(7 + len(str(setting)))
    floors = setting.get("min_lr", 0.0)
    w_floor, b_floor = (list(floors), [floors[0]]) if isinstance(floors, list) else (floors, floors)
    combined_floor = [*w_floor, *b_floor] if isinstance(floors, list) else floors
    for trial in range(5):
        metrics = _metrics(rng, 60)
        w, b = _members()
        plateau = symopt.ReduceLROnPlateau(symopt.combine(w=w, b=b), **{**setting, "min_lr": combined_floor})
        ref_w, ref_b = _members()  # separate optimisers, a plateau each: the reference
        alone = [symopt.ReduceLROnPlateau(ref_w, **{**setting, "min_lr": w_floor}),
                 symopt.ReduceLROnPlateau(ref_b, **{**setting, "min_lr": b_floor})]
        expected = torch_plateau_lrs(metrics, [*W_LRS, B_LR], **{**setting, "min_lr": combined_floor})
        for epoch, metric in enumerate(metrics):
            plateau.step(metric)
            for single in alone:
                single.step(metric)
            got = [w.get_hyperparameter("learning_rate", group=g) for g in range(2)] + [b.get_hyperparameter("learning_rate")]
            want = alone[0].get_last_lr() + alone[1].get_last_lr()
            assert got == want == expected[epoch] == plateau.get_last_lr(), f"trial {trial}, epoch {epoch + 1}"
    assert len({tuple(r) for r in expected}) > 1, "the sequence should reduce at least once"


def test_on_a_combine_a_chosen_member_through_its_wrapper() -> None:
    """member= reduces that member only (by name or position); a Lookahead member's inner rule is reduced."""
    metrics = [1.0, 1.0, 1.0, 0.5, 0.6, 0.7, 0.8]
    for member in ("w", 0):
        w, b = _members(symopt.Lookahead)
        plateau = symopt.ReduceLROnPlateau(symopt.combine(w=w, b=b), factor=0.5, patience=1, member=member)
        alone = symopt.ReduceLROnPlateau(_members(symopt.Lookahead)[0], factor=0.5, patience=1)
        for metric in metrics:
            plateau.step(metric)
            alone.step(metric)
        assert plateau.get_last_lr() == alone.get_last_lr() == [0.025, 0.005]
        assert b.get_hyperparameter("learning_rate") == B_LR  # the other member is left alone
        assert plateau.member == "w" and plateau.state_dict()["settings"]["member"] == "w"
    w, b = _members()
    plateau = symopt.ReduceLROnPlateau(symopt.combine(w=w, b=b), factor=0.5, patience=0, member="b")
    plateau.step(1.0)
    plateau.step(2.0)
    assert plateau.get_last_lr() == [0.25] and w.get_hyperparameter("learning_rate", group=1) == W_LRS[1]
    # "amsgrad"-free SGD has no beta1: only the Adam member is reduced
    w, b = _members()
    beta = symopt.ReduceLROnPlateau(symopt.combine(w=w, b=b), factor=0.5, patience=0, hyperparameter="beta1")
    assert len(beta.get_last_lr()) == 2 and "member" not in beta.state_dict()["settings"]


def test_on_a_combine_bad_arguments_raise_one_clear_error() -> None:
    w, b = _members()
    combined = symopt.combine(w=w, b=b)
    for kwargs, error, message in [
        ({"member": "c"}, ValueError, "combine: no member 'c' (members: ['w', 'b'])"),
        ({"hyperparameter": "rho"}, ValueError, "no member of the combine (w, b) has a numeric hyperparameter 'rho'"),
        ({"member": "b", "hyperparameter": "beta1"}, ValueError,
         "ReduceLROnPlateau: SGD (member 'b') has no numeric hyperparameter 'beta1'"),
        ({"min_lr": [0.0, 0.0]}, ValueError, "min_lr has 2 values for 3 param groups"),
    ]:
        with pytest.raises(error, match=re.escape(message)):
            symopt.ReduceLROnPlateau(combined, **kwargs)
    with pytest.raises(ValueError, match=re.escape("member='w' applies to a symopt.combine(...) only, not to Adam")):
        symopt.ReduceLROnPlateau(w, member="w")
    scheduled = symopt.SGD([pytensor.shared(np.zeros(2), name="s")], learning_rate=S.cosine_restarts(initial=0.1, period=10))
    with pytest.raises(ValueError, match=re.escape("learning_rate (member 's') of param group 0 follows a schedule")):
        symopt.ReduceLROnPlateau(symopt.combine(w=w, s=scheduled))
    assert w.get_hyperparameter("learning_rate") == W_LRS[0]  # nothing changed


# --------------------------------------------------------------------------- inside fit

SIDE, N_TRAIN, N_TEST, BATCH, EPOCHS = 5, 96, 48, 16, 5


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, ...]:
    """Two classes told apart by which half of a 5x5 image is bright, plus noise."""
    rng = np.random.default_rng(0)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, size=n)
        x = rng.random((n, SIDE, SIDE)) * 0.5
        for i, label in enumerate(y):
            x[i, :, label * 3: label * 3 + 2] += 0.5
        return x.reshape(n, -1).astype("float32"), y.astype("int64")

    return (*make(N_TRAIN), *make(N_TEST))


def _trainer(data: tuple[np.ndarray, ...]) -> tuple[Trainer, symopt.ReduceLROnPlateau]:
    model = nn.MLP([SIDE * SIDE, 8, 2], seed=1)
    opt = symopt.Momentum(model.params, learning_rate=0.5, momentum=0.9)
    # threshold 5%: most epochs are not an improvement, so the rate changes during the run
    plateau = symopt.ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=0.05, cooldown=1)
    return Trainer(model, opt, *data, batch_size=BATCH), plateau


def _fit_with_plateau(data: tuple[np.ndarray, ...]) -> tuple[Trainer, symopt.ReduceLROnPlateau, list[Any], list[float]]:
    trainer, plateau = _trainer(data)
    rates: list[float] = []
    history = trainer.fit(EPOCHS, seed=3, progress=False, plateau=plateau,
                          callback=lambda r: rates.append(trainer.optimizer.get_hyperparameter("learning_rate")))
    return trainer, plateau, history, rates


def test_fit_steps_the_plateau_with_each_epochs_test_loss(data: tuple[np.ndarray, ...]) -> None:
    trainer, plateau, history, rates = _fit_with_plateau(data)
    test_losses = [record.test_loss for record in history]
    expected = torch_plateau_lrs(test_losses, [0.5], factor=0.5, patience=0, threshold=0.05, cooldown=1)
    # the callback sees the rate the epoch trained with; the plateau then sets the next one
    assert rates == [0.5] + [e[0] for e in expected[:-1]]
    assert trainer.optimizer.get_hyperparameter("learning_rate") == expected[-1][0]
    assert len({e[0] for e in expected}) > 1, "the run should have reduced the rate"
    assert plateau.last_epoch == EPOCHS


@pytest.mark.slow
def test_a_checkpointed_run_resumes_its_plateau_bit_identically(data: tuple[np.ndarray, ...], tmp_path: Path) -> None:
    trainer, plateau, history, _ = _fit_with_plateau(data)
    # stopped after 2 epochs (checkpointed), resumed to EPOCHS with a fresh trainer and plateau
    path = tmp_path / "run.ckpt"
    first, first_plateau = _trainer(data)
    first.fit(2, seed=3, progress=False, plateau=first_plateau, checkpoint=path)
    resumed, resumed_plateau = _trainer(data)
    with pytest.raises(ValueError, match=re.escape("is from a different run: it has a ReduceLROnPlateau, this run none")):
        resumed.fit(EPOCHS, seed=3, progress=False, checkpoint=path, resume=True)
    other = symopt.ReduceLROnPlateau(resumed.optimizer, factor=0.5, patience=1, threshold=0.05, cooldown=1)
    with pytest.raises(ValueError, match=re.escape("ReduceLROnPlateau: saved with patience=0, this one has patience=1")):
        resumed.fit(EPOCHS, seed=3, progress=False, checkpoint=path, resume=True, plateau=other)
    assert resumed.optimizer.get_hyperparameter("learning_rate") == 0.5 and other.last_epoch == 0
    again = resumed.fit(EPOCHS, seed=3, progress=False, checkpoint=path, resume=True, plateau=resumed_plateau)
    assert [r.as_dict() | {"seconds": 0} for r in again] == [r.as_dict() | {"seconds": 0} for r in history]
    assert resumed_plateau.state_dict() == plateau.state_dict()
    assert resumed.optimizer.get_hyperparameter("learning_rate") == trainer.optimizer.get_hyperparameter("learning_rate")
    for a, b in zip(resumed.model.params, trainer.model.params):
        np.testing.assert_array_equal(a.get_value(), b.get_value())  # the same computation: bit-identical


def test_a_plateau_needs_one_run(data: tuple[np.ndarray, ...]) -> None:
    from symopt.checkpoint import run_training

    plateau = symopt.ReduceLROnPlateau(_optimizer([0.1]))
    common = dict(model=None, optimizer=None, epochs=1, run_epoch=None, evaluate=None, progress=False,
                  seconds_divisor=1, on_epoch=None, to_history=None)
    with pytest.raises(ValueError, match=re.escape("ReduceLROnPlateau steps one run's learning rate; this trainer runs 3 seeds")):
        run_training(None, data_seeds=[0, 1, 2], plateau=plateau, **common)
    with pytest.raises(TypeError, match="plateau must be a symopt.ReduceLROnPlateau, got float"):
        run_training(None, data_seeds=[0], plateau=0.5, **common)
    with pytest.raises(ValueError, match="plateau: the ReduceLROnPlateau was built on another optimiser than this run's"):
        run_training(None, data_seeds=[0], plateau=plateau, **{**common, "optimizer": _optimizer([0.1])})
