"""Per-member ReduceLROnPlateau and early stopping on a seed stack.

The vector plateau is checked member by member against the scalar
``symopt.ReduceLROnPlateau`` (itself torch-exact) and against the Python fold of torch's
documented algorithm in ``tests/test_plateau.py``, for random metric sequences (NaN and
infinities included) in every setting of ``benchmarks/validate_schedules.py``; against torch
itself where it is installed. Early stopping is checked against a fold of its documented
counting, then in a compiled SeedTrainer run whose members stop at different epochs: each
member equals a separate Trainer run stopped at the same epoch, a stopped member's parameters
and optimiser state no longer change, and a checkpointed run resumes bit-identically.
The compiled part builds one SeedTrainer and one Trainer for the module (about 30 s), and a
slow test a vectorised stack with BatchNorm whose frozen member keeps its statistics.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytensor
import pytest
from pytensor.compile.sharedvalue import SharedVariable

import symopt
from symopt import nn
from symopt.checkpoint import run_training
from symopt.seeds import SeedStack, SeedTrainer
from symopt.train import Trainer

from .test_plateau import SETTINGS, _metrics, _optimizer, torch_plateau_lrs

MEMBERS = 5


def _stacked(rates: list[list[float]], rule: Any = symopt.SGD, **kw: Any) -> Any:
    """An optimiser over one stacked (members, 2) parameter per group, ``rates[g]`` per member."""
    groups = []
    for g, lrs in enumerate(rates):
        p = pytensor.shared(np.zeros((len(lrs), 2)), name=f"p{g}[seeds]")
        p.tag.seed_axis = True
        groups.append({"params": [p], "learning_rate": lrs})
    return rule(groups, **kw)


def _rates(opt: Any) -> np.ndarray:
    """(groups, members) current learning rates."""
    return np.array([opt.get_hyperparameter("learning_rate", group=g) for g in range(len(opt.param_groups))])


# --------------------------------------------------------------------------- the vector plateau
@pytest.mark.parametrize("setting", SETTINGS, ids=[str(i) for i in range(len(SETTINGS))])
def test_each_member_follows_the_scalar_plateau_on_its_own_metrics(setting: dict[str, Any]) -> None:
    """Member i's rates == scalar ReduceLROnPlateau on member i's metrics == torch's documented fold."""
    rng = np.random.default_rng(7 + len(str(setting)))
    reduced = 0
    for trial in range(6):
        start = rng.choice([0.1, 0.3, 0.5, 1.0], size=(2, MEMBERS)).tolist()
        metrics = np.array([_metrics(rng, 50) for _ in range(MEMBERS)])  # (members, epochs)
        opt = _stacked(start)
        plateau = symopt.MemberReduceLROnPlateau(opt, **setting)
        singles = [_optimizer([start[0][i], start[1][i]]) for i in range(MEMBERS)]
        scalars = [symopt.ReduceLROnPlateau(o, **setting) for o in singles]
        folds = [torch_plateau_lrs(list(metrics[i]), [start[0][i], start[1][i]], **setting) for i in range(MEMBERS)]
        for epoch in range(metrics.shape[1]):
            plateau.step(metrics[:, epoch])
            got = _rates(opt)
            for i in range(MEMBERS):
                scalars[i].step(metrics[i, epoch])
                want = [singles[i].get_hyperparameter("learning_rate", group=g) for g in range(2)]
                assert got[:, i].tolist() == want == folds[i][epoch], f"trial {trial}, epoch {epoch + 1}, member {i}"
                assert plateau.num_bad_epochs[i] == scalars[i].num_bad_epochs
                assert plateau.cooldown_counter[i] == scalars[i].cooldown_counter
                assert plateau.best[i] == scalars[i].best
        reduced += int(np.sum(got != np.array(start)))
    assert reduced > 0, "the sequences should reduce some member's rate"


def test_members_left_out_keep_their_state() -> None:
    """``active``: a member left out from epoch k on keeps its rate and counters (as one stopped)."""
    rng = np.random.default_rng(3)
    metrics = np.array([_metrics(rng, 40) for _ in range(MEMBERS)])
    leave = [40, 3, 10, 25, 0]  # member i takes part in epochs < leave[i]
    opt = _stacked([[0.5] * MEMBERS])
    plateau = symopt.MemberReduceLROnPlateau(opt, factor=0.5, patience=1)
    for epoch in range(40):
        plateau.step(metrics[:, epoch], active=[epoch < k for k in leave])
    for i, k in enumerate(leave):
        want = torch_plateau_lrs(list(metrics[i, :k]), [0.5], factor=0.5, patience=1)
        assert _rates(opt)[0, i] == (want[-1][0] if k else 0.5)
    assert plateau.last_epoch == 40


@pytest.mark.parametrize("mode", ["min", "max"])
def test_against_torch(mode: str) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    metrics = np.array([_metrics(rng, 40) for _ in range(3)])
    setting = {"factor": 0.5, "patience": 1, "cooldown": 1, "mode": mode, "threshold": 0.01, "min_lr": 0.01}
    opt = _stacked([[0.3, 0.2, 0.1]])
    plateau = symopt.MemberReduceLROnPlateau(opt, **setting)
    references = []
    for lr in (0.3, 0.2, 0.1):
        sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
        references.append((sgd, torch.optim.lr_scheduler.ReduceLROnPlateau(sgd, **setting)))
    for epoch in range(40):
        plateau.step(metrics[:, epoch])
        for i, (_, scheduler) in enumerate(references):
            scheduler.step(float(metrics[i, epoch]))
        assert _rates(opt)[0].tolist() == [sgd.param_groups[0]["lr"] for sgd, _ in references], f"epoch {epoch + 1}"


def test_non_finite_metrics_follow_torchs_policy() -> None:
    """NaN is never an improvement (a bad epoch of that member only); -inf is one, once."""
    opt = _stacked([[1.0, 1.0, 1.0]])
    plateau = symopt.MemberReduceLROnPlateau(opt, factor=0.5, patience=1)
    seen = []
    for row in ([1.0, 1.0, 1.0], [math.nan, 0.5, -math.inf], [math.nan, 0.4, 0.0], [math.nan, 0.3, -math.inf]):
        plateau.step(row)
        seen.append(_rates(opt)[0].tolist())
    assert seen == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.5, 1.0, 1.0], [0.5, 1.0, 0.5]]
    assert plateau.best.tolist() == [1.0, 0.3, -math.inf]


def test_state_round_trip_and_refusals() -> None:
    opt = _stacked([[0.1, 0.2]])
    plateau = symopt.MemberReduceLROnPlateau(opt, factor=0.5, patience=0, cooldown=2)
    for row in ([1.0, 2.0], [2.0, 1.0], [2.0, 0.5]):
        plateau.step(row)
    state = plateau.state_dict()
    assert state["best"] == [1.0, 0.5] and state["num_bad_epochs"] == [0, 0] and state["cooldown_counter"] == [1, 0]
    other = symopt.MemberReduceLROnPlateau(_stacked([[0.1, 0.2]]), factor=0.5, patience=0, cooldown=2)
    other.load_state_dict({**state, "best": ["inf", 0.5]})  # as a checkpoint header writes it
    assert other.best.tolist() == [math.inf, 0.5]
    other.load_state_dict(state)
    assert other.state_dict() == state
    wider = symopt.MemberReduceLROnPlateau(_stacked([[0.1, 0.2, 0.3]]), factor=0.5, patience=0, cooldown=2)
    with pytest.raises(ValueError, match=re.escape("saved with members=2, this one has members=3")):
        wider.load_state_dict(state)
    for bad, message in (({**state, "best": [1.0]}, "saved best [1.0] is not a list of 2 values"),
                         ({**state, "best": [1.0, "nan"]}, "holds 'nan', not a number"),
                         ({**state, "cooldown_counter": [0, -1]}, "holds -1, not an integer >= 0")):
        with pytest.raises(ValueError, match=re.escape(message)):
            other.load_state_dict(bad)
    assert other.state_dict() == state  # the refused loads changed nothing


def test_bad_input_gives_one_clear_error() -> None:
    opt = _stacked([[0.1, 0.2, 0.3]])
    plateau = symopt.MemberReduceLROnPlateau(opt, patience=0)
    plateau.step([1.0, 1.0, 1.0])
    before = plateau.state_dict()
    for metrics, error, message in (
            ([1.0, 2.0], ValueError, "MemberReduceLROnPlateau.step: expected 3 metric(s), one per stack member, got shape (2,)"),
            (np.ones((3, 1)), ValueError, "got shape (3, 1)"),
            (0.5, ValueError, "got shape ()"),
            ("low", TypeError, "the metrics must be numbers, one per stack member, got 'low'"),
            ([True, False, True], TypeError, "the metrics must be numbers"),
            ([1.0, None, 2.0], TypeError, "the metrics must be numbers")):
        with pytest.raises(error, match=re.escape(message)):
            plateau.step(metrics)
    with pytest.raises(ValueError, match=re.escape("active must be 3 booleans (one per stack member)")):
        plateau.step([2.0, 2.0, 2.0], active=[True, False])
    assert plateau.state_dict() == before and _rates(opt)[0].tolist() == [0.1, 0.2, 0.3]

    with pytest.raises(ValueError, match=re.escape("MemberReduceLROnPlateau: the optimiser's parameters are not stacked")):
        symopt.MemberReduceLROnPlateau(_optimizer([0.1]))
    p = pytensor.shared(np.zeros((2, 2)), name="w[seeds]")
    p.tag.seed_axis = True
    with pytest.raises(ValueError, match=re.escape(
            "MemberReduceLROnPlateau: learning_rate of param group 0 is one value for all 2 members; give it per "
            "member at construction (learning_rate=[value] * 2)")):
        symopt.MemberReduceLROnPlateau(symopt.SGD([p], learning_rate=0.1))
    with pytest.raises(ValueError, match=re.escape("with symopt.MemberReduceLROnPlateau")):
        symopt.ReduceLROnPlateau(_stacked([[0.1, 0.2]]))


# --------------------------------------------------------------------------- early stopping, by hand
def stop_epoch(metrics: list[float], patience: int, min_delta: float = 0.0, mode: str = "min") -> int:
    """The documented counting, as a fold: an evaluation improves when it beats the best so
    far by more than min_delta (NaN never does); the run stops at the evaluation that makes
    ``patience`` evaluations in a row without improvement. 0: it never stops."""
    best, wait = (math.inf if mode == "min" else -math.inf), 0
    for epoch, m in enumerate(metrics, start=1):
        improved = m < best - min_delta if mode == "min" else m > best + min_delta
        if improved:
            best, wait = m, 0
        else:
            wait += 1
            if wait >= patience:
                return epoch
    return 0


@pytest.mark.parametrize(("patience", "min_delta", "mode"), [(1, 0.0, "min"), (3, 0.0, "min"), (2, 0.01, "min"),
                                                              (4, 0.02, "max")])
def test_each_member_stops_as_its_own_run(patience: int, min_delta: float, mode: str) -> None:
    rng = np.random.default_rng(patience)
    for trial in range(10):
        metrics = np.array([_metrics(rng, 40) for _ in range(MEMBERS)])
        stopping = symopt.EarlyStopping(patience=patience, min_delta=min_delta, mode=mode)
        for epoch in range(40):
            stopping.step(metrics[:, epoch])
        want = [stop_epoch(list(row), patience, min_delta, mode) for row in metrics]
        assert stopping.stopped_epoch.tolist() == want, f"trial {trial}"
        single = symopt.EarlyStopping(patience=patience, min_delta=min_delta, mode=mode)
        for m in metrics[0]:
            single.step(m)  # one run: a number per evaluation
        assert single.stopped_epoch.tolist() == want[:1] and single.all_stopped == (want[0] > 0)


def test_early_stopping_freezes_through_the_optimisers_gate() -> None:
    p = pytensor.shared(np.zeros((3, 2)), name="w[seeds]")
    p.tag.seed_axis = True
    opt = symopt.Adam([p], learning_rate=[0.1] * 3, stoppable=True)
    stopping = symopt.EarlyStopping(patience=1, optimizer=opt)
    stopping.step([1.0, 1.0, 1.0])
    assert stopping.step([0.5, 1.0, 1.5]).tolist() == [False, True, True]
    assert opt.member_active.get_value().tolist() == [1, 0, 0] and stopping.stopped_epoch.tolist() == [0, 2, 2]
    before = stopping.state_dict()
    with pytest.raises(ValueError, match=re.escape("EarlyStopping.step: expected 3 metric(s), one per stack member")):
        stopping.step([1.0, 2.0])
    assert stopping.state_dict() == before
    stopping.step([0.6, math.nan, math.nan])  # stopped members' metrics are ignored
    assert stopping.stopped_epoch.tolist() == [3, 2, 2] and opt.member_active.get_value().tolist() == [0, 0, 0]

    for build, message in (
            (lambda: symopt.EarlyStopping(patience=0), "EarlyStopping: patience must be an integer >= 1, got 0"),
            (lambda: symopt.EarlyStopping(min_delta=-0.1), "EarlyStopping: min_delta must be >= 0"),
            (lambda: symopt.EarlyStopping(mode="lowest"), "EarlyStopping: mode must be one of ['min', 'max']"),
            (lambda: symopt.EarlyStopping(optimizer=symopt.Adam([p], learning_rate=[0.1] * 3)),
             "EarlyStopping: freezing a member of a seed stack needs an optimiser built with stoppable=True")):
        with pytest.raises(ValueError, match=re.escape(message)):
            build()
    with pytest.raises(ValueError, match=re.escape("Adam: stoppable=True freezes members of a seed stack; the "
                                                   "parameters are not stacked")):
        symopt.Adam([pytensor.shared(np.zeros(2))], stoppable=True)


def test_fit_refuses_what_it_cannot_step() -> None:
    common: dict[str, Any] = dict(model=None, epochs=1, run_epoch=None, evaluate=None, progress=False,
                                  seconds_divisor=1, on_epoch=None, to_history=None)
    plain = _stacked([[0.1, 0.2, 0.3]])
    with pytest.raises(ValueError, match=re.escape("needs an optimiser built with stoppable=True")):
        run_training(None, data_seeds=[0, 1, 2], optimizer=plain, early_stopping=symopt.EarlyStopping(), **common)
    with pytest.raises(ValueError, match=re.escape("this trainer runs 3 seeds: use symopt.MemberReduceLROnPlateau")):
        run_training(None, data_seeds=[0, 1, 2], optimizer=plain,
                     plateau=symopt.ReduceLROnPlateau(_optimizer([0.1])), **common)
    with pytest.raises(ValueError, match=re.escape("the MemberReduceLROnPlateau is for 3 members, this trainer runs 2")):
        run_training(None, data_seeds=[0, 1], optimizer=plain, plateau=symopt.MemberReduceLROnPlateau(plain), **common)
    with pytest.raises(TypeError, match="early_stopping must be a symopt.EarlyStopping, got int"):
        run_training(None, data_seeds=[0], optimizer=plain, early_stopping=3, **common)


# --------------------------------------------------------------------------- inside fit
SIDE, N_TRAIN, N_TEST, BATCH, EPOCHS = 5, 96, 48, 16, 8
SEEDS = [1, 2, 3]
RATES = [0.1, 0.03, 0.01]
PLATEAU = {"factor": 0.5, "patience": 0, "threshold": 0.02, "cooldown": 1}
STOP = {"patience": 2, "min_delta": 0.001}
# With these (measured): seed 1 stops at epoch 3, the others train all 8 epochs; the plateau halves
# seed 1's rate; every stop and plateau decision clears its threshold by more than 1% of the
# loss, far above the float32 round-off between the stacked and the separate runs.


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, ...]:
    """Two classes told apart by which half of a 5x5 image is slightly brighter, in noise, with
    10% of the labels flipped: the test loss levels off and rises within a few epochs."""
    rng = np.random.default_rng(0)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, size=n)
        x = rng.random((n, SIDE, SIDE)) * 0.5
        for i, label in enumerate(y):
            x[i, :, label * 3: label * 3 + 2] += 0.15
        y = np.where(rng.random(n) < 0.1, 1 - y, y)
        return x.reshape(n, -1).astype("float32"), y.astype("int64")

    return (*make(N_TRAIN), *make(N_TEST))


def _model(seed: int) -> nn.Layer:
    return nn.MLP([SIDE * SIDE, 8, 2], seed=seed, dtype="float32")


def _variables(trainer: Trainer) -> dict[str, SharedVariable]:
    """Every shared variable the compiled functions read, but the data, as ``"index:name"``."""
    skip = {id(v) for v in (trainer.x_train, trainer.y_train, trainer.x_test, trainer.y_test)}
    found: dict[int, SharedVariable] = {}
    for fn in (trainer.train_step, trainer.eval_step):
        for inp in fn.maker.inputs:
            if isinstance(inp.variable, SharedVariable) and id(inp.variable) not in skip:
                found.setdefault(id(inp.variable), inp.variable)
    return {f"{i}:{var.name}": var for i, var in enumerate(found.values())}


def _state(trainer: Trainer) -> dict[str, np.ndarray]:
    return {key: np.array(var.get_value(), copy=True) for key, var in _variables(trainer).items()}


class Stacked:
    """One SeedTrainer over the three seeds, Adam per-member rates, stoppable; ``reset`` puts
    every variable back as it was built."""

    def __init__(self, data: tuple[np.ndarray, ...]):
        self.stack = SeedStack(_model, SEEDS)
        self.opt = symopt.Adam(self.stack.params, learning_rate=RATES, stoppable=True)
        self.trainer = SeedTrainer(self.stack, self.opt, *data, batch_size=BATCH)
        self.vars = _variables(self.trainer)
        self.initial = _state(self.trainer)

    def reset(self) -> None:
        for name, value in self.initial.items():
            self.vars[name].set_value(value.copy())

    def fit(self, epochs: int, **kw: Any) -> tuple[Any, Any, Any, list[dict[str, np.ndarray]]]:
        plateau = symopt.MemberReduceLROnPlateau(self.opt, **PLATEAU)
        stopping = symopt.EarlyStopping(**STOP)
        snapshots: list[dict[str, np.ndarray]] = []
        histories = self.trainer.fit(epochs, progress=False, plateau=plateau, early_stopping=stopping,
                                     callback=lambda epoch, records: snapshots.append(_state(self.trainer)), **kw)
        return histories, plateau, stopping, snapshots


@pytest.fixture(scope="module")
def stacked(data: tuple[np.ndarray, ...], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    run = Stacked(data)
    histories, plateau, stopping, snapshots = run.fit(EPOCHS)
    return {"run": run, "histories": histories, "plateau": plateau, "stopping": stopping, "snapshots": snapshots,
            "final": _state(run.trainer), "tmp": tmp_path_factory.mktemp("member_plateau")}


class Single:
    """One Trainer for every seed alone, Adam with the seed's scalar rate; ``reset(s)`` starts seed s's run."""

    def __init__(self, data: tuple[np.ndarray, ...]):
        self.model = _model(SEEDS[0])
        self.opt = symopt.Adam(self.model.params, learning_rate=RATES[0])
        self.initial = self.opt.state_dict()
        self.trainer = Trainer(self.model, self.opt, *data, batch_size=BATCH)

    def reset(self, s: int) -> None:
        for var, fresh in zip(self.model.params, _model(SEEDS[s]).params):
            var.set_value(fresh.get_value())
        self.opt.load_state_dict(self.initial)
        self.opt.set_hyperparameter("learning_rate", RATES[s])

    def fit(self, s: int, epochs: int, **kw: Any) -> tuple[list[Any], Any]:
        stopping = symopt.EarlyStopping(**STOP)
        history = self.trainer.fit(epochs, SEEDS[s], progress=False, early_stopping=stopping,
                                   plateau=symopt.ReduceLROnPlateau(self.opt, **PLATEAU), **kw)
        return history, stopping


@pytest.fixture(scope="module")
def single(data: tuple[np.ndarray, ...]) -> Single:
    return Single(data)


@pytest.fixture(scope="module")
def separate(single: Single) -> list[dict[str, Any]]:
    """Each seed alone, with the scalar plateau and the same early stopping."""
    runs = []
    for s in range(len(SEEDS)):
        single.reset(s)
        history, stopping = single.fit(s, EPOCHS)
        runs.append({"history": history, "stopped": int(stopping.stopped_epoch[0]),
                     "params": [p.get_value().copy() for p in single.model.params],
                     "slots": {k: [a.copy() for a in v] for k, v in single.opt.state_dict()["slots"].items()},
                     "rate": single.opt.get_hyperparameter("learning_rate")})
    return runs


def test_the_members_stop_at_different_epochs(stacked: dict[str, Any], separate: list[dict[str, Any]]) -> None:
    stopped = stacked["stopping"].stopped_epoch.tolist()
    assert stopped == [run["stopped"] for run in separate]
    # one member stops while another trains on for at least two more epochs
    first = min(e for e in stopped if e)
    assert max(e or EPOCHS for e in stopped) >= first + 2, stopped
    assert stacked["run"].opt.member_active.get_value().tolist() == [int(e == 0) for e in stopped]
    for s, run in enumerate(separate):
        assert len(run["history"]) == (run["stopped"] or EPOCHS)  # a stopped single run ends


def test_each_member_equals_its_separate_run_stopped_at_the_same_epoch(
        stacked: dict[str, Any], separate: list[dict[str, Any]]) -> None:
    run = stacked["run"]
    state = run.opt.state_dict()
    rates = run.opt.get_hyperparameter("learning_rate")
    for s, single in enumerate(separate):
        mine = stacked["histories"][s][: len(single["history"])]
        np.testing.assert_allclose([r.test_loss for r in mine], [r.test_loss for r in single["history"]], rtol=1e-5)
        np.testing.assert_allclose([r.train_loss for r in mine], [r.train_loss for r in single["history"]], rtol=1e-5)
        for got, want in zip(run.stack.values(s), single["params"]):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6, err_msg=f"seed {SEEDS[s]}")
        for slot, arrays in single["slots"].items():
            for got, want in zip(state["slots"][slot], arrays):
                np.testing.assert_allclose(got[s], want, rtol=2e-5, atol=2e-6, err_msg=f"seed {SEEDS[s]} {slot}")
        assert rates[s] == single["rate"], f"seed {SEEDS[s]}: the plateau reduced differently"
        steps = (single["stopped"] or EPOCHS) * (N_TRAIN // BATCH)
        assert run.opt.member_steps.get_value()[s] == steps
    assert any(r != q for r, q in zip(rates, RATES)), "the plateau should have reduced a rate"


def test_a_stopped_member_no_longer_changes(stacked: dict[str, Any]) -> None:
    snapshots, final = stacked["snapshots"], stacked["final"]
    checked = 0
    for s, epoch in enumerate(stacked["stopping"].stopped_epoch.tolist()):
        if not epoch or epoch >= len(snapshots):
            continue
        # snapshots[e - 1]: after epoch e's training, before its plateau and stopping steps. The
        # epoch it stopped at is the last it trained; from the next one on its plateau is still too.
        for name, value in final.items():
            if value.ndim == 0 or value.shape[0] != len(SEEDS) or name.endswith(("member_active", ":order")):
                continue
            if "learning_rate" not in name:
                np.testing.assert_array_equal(value[s], snapshots[epoch - 1][name][s], err_msg=f"{name} seed {s}")
            np.testing.assert_array_equal(value[s], snapshots[epoch][name][s], err_msg=f"{name} seed {s}")
            checked += 1
        # its history rows after the stop are those of the frozen model
        assert len({r.test_loss for r in stacked["histories"][s][epoch - 1:]}) == 1
    assert checked >= 6  # parameters, Adam's two slots per parameter, the rate, the step count


def test_a_checkpointed_run_resumes_bit_identically(stacked: dict[str, Any]) -> None:
    run: Stacked = stacked["run"]
    path = Path(stacked["tmp"]) / "run.ckpt"
    first = min(e for e in stacked["stopping"].stopped_epoch.tolist() if e) + 1  # after a member stopped
    run.reset()
    run.fit(first, checkpoint=path)
    run.reset()
    with pytest.raises(ValueError, match=re.escape("it has an EarlyStopping, this run none")):
        run.trainer.fit(EPOCHS, progress=False, checkpoint=path, resume=True,
                        plateau=symopt.MemberReduceLROnPlateau(run.opt, **PLATEAU))
    histories, plateau, stopping, _ = run.fit(EPOCHS, checkpoint=path, resume=True)
    strip = [[r.as_dict() | {"seconds": 0} for r in h] for h in histories]
    assert strip == [[r.as_dict() | {"seconds": 0} for r in h] for h in stacked["histories"]]
    assert plateau.state_dict() == stacked["plateau"].state_dict()
    assert stopping.state_dict() == stacked["stopping"].state_dict()
    final = _state(run.trainer)
    assert set(final) == set(stacked["final"])
    for name, value in stacked["final"].items():
        np.testing.assert_array_equal(final[name], value, err_msg=name)  # the same computation: bit-identical


def test_resuming_a_stopped_single_run_trains_no_further(single: Single, separate: list[dict[str, Any]],
                                                         tmp_path: Path) -> None:
    s = next(i for i, run in enumerate(separate) if run["stopped"])
    path = tmp_path / "single.ckpt"
    single.reset(s)
    history, stopping = single.fit(s, EPOCHS, checkpoint=path)
    assert len(history) == separate[s]["stopped"] == int(stopping.stopped_epoch[0])
    single.reset(s)
    again, resumed = single.fit(s, EPOCHS, checkpoint=path, resume=True)
    assert [r.as_dict() for r in again] == [r.as_dict() for r in history]
    assert resumed.state_dict() == stopping.state_dict() and resumed.all_stopped
    for got, want in zip(single.model.params, separate[s]["params"]):
        np.testing.assert_array_equal(got.get_value(), want)


@pytest.mark.slow  # its own compile of a vectorised stack: 99 s on a loaded 2-core machine
def test_a_frozen_member_of_a_vectorised_stack_keeps_its_buffers(data: tuple[np.ndarray, ...]) -> None:
    """stoppable=True on a vectorised stack (BatchNorm running statistics per member): a member
    frozen through ``opt.member_active`` keeps its parameters, optimiser state and statistics."""
    def make(seed: int) -> nn.Layer:
        return nn.Sequential([nn.Dense(SIDE * SIDE, 6, seed=seed), nn.BatchNorm(6, name="bn"), nn.ReLU(),
                              nn.Dense(6, 2, seed=seed + 10)])

    stack = SeedStack(make, SEEDS)
    assert stack.vectorized
    opt = symopt.Adam(stack.params, learning_rate=RATES, stoppable=True)
    trainer = SeedTrainer(stack, opt, *data, batch_size=BATCH)
    trainer.run_epoch([np.random.default_rng(s) for s in SEEDS])
    before = _state(trainer)
    opt.member_active.set_value(np.array([1, 0, 1]))
    trainer.run_epoch([np.random.default_rng(s) for s in SEEDS])
    after = _state(trainer)
    per_member = [k for k, v in after.items() if v.ndim and v.shape[0] == len(SEEDS)
                  and not k.endswith((":order", "member_active"))]
    assert any("bn" in k for k in per_member) and len(per_member) >= 12, per_member
    for key in per_member:
        np.testing.assert_array_equal(after[key][1], before[key][1], err_msg=key)
    moved = [k for k in per_member if not np.array_equal(after[k][0], before[k][0])]
    assert any("bn" in k for k in moved) and any("Adam.m" in k or ".m" in k for k in moved), moved
    assert opt.member_steps.get_value().tolist() == [12, 6, 12]
