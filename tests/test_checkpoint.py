"""Checkpoint and resume (symopt.checkpoint): a run interrupted by a real SIGINT, or
crashed after a periodic checkpoint, and resumed ends bit-identical to the uninterrupted
run; checkpoints of other runs and damaged files are refused with nothing changed."""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytensor
import pytest

import symopt
from symopt import nn
from symopt.cli import main
from symopt.seeds import SeedStack, SeedTrainer
from symopt.train import Trainer
from tests.test_train import SIDE, _make_dataset

EPOCHS = 4
BATCH = 32  # 240 training samples: 7 steps per epoch
SEED = 5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> symopt.data.Dataset:
    return symopt.data.load_idx_dataset(_make_dataset(tmp_path_factory.mktemp("bars")))


def _trainer(dataset: symopt.data.Dataset, optimizer: Any = symopt.Adam, lr: float = 1e-2, hidden: int = 16,
             dropout: float = 0.25, batch_size: int = BATCH, x_train: np.ndarray | None = None) -> Trainer:
    """Adam with dropout and batch norm: every kind of state a run has."""
    model = nn.MLP([SIDE * SIDE, hidden, hidden, 3], batchnorm=True, dropout=dropout, seed=3)
    opt = optimizer(model.params, learning_rate=lr)
    x = dataset.x_train if x_train is None else x_train
    return Trainer(model, opt, x, dataset.y_train, dataset.x_test, dataset.y_test, batch_size=batch_size)


def _state(variables: list[Any]) -> list[Any]:
    """Values (arrays, and generator states) of shared variables, as independent copies."""
    out = []
    for var in variables:
        value = var.get_value(borrow=True)
        out.append(copy.deepcopy(value.bit_generator.state) if isinstance(value, np.random.Generator) else value.copy())
    return out


def _run_state(trainer: Any) -> list[Any]:
    """Everything a Trainer's future depends on, found independently of symopt.checkpoint:
    the model's params and buffers and the optimiser's step, slots and scalars."""
    model = trainer.model if hasattr(trainer, "model") else trainer.stack
    opt = trainer.optimizer
    slots = [var for per_param in opt.state for var in per_param.values()]
    scalars = [var for group in opt.param_groups for var in group.scalars.values()]
    buffers = model.buffers
    return _state([*model.params, *buffers, opt.iterations, *slots, *scalars])


def _assert_identical(a: list[Any], b: list[Any]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if isinstance(x, dict):
            assert x == y
        else:
            assert x.dtype == y.dtype and x.shape == y.shape
            assert np.array_equal(x, y), "values differ"  # bit-identical (no NaN here)


def _numbers(history: list[Any]) -> list[tuple[Any, ...]]:
    """A history without the seconds field."""
    return [(r.epoch, r.train_loss, r.test_loss, r.test_accuracy, r.skipped) for r in history]


class Steps:
    """Wraps a compiled train step: after the ``at``-th call sends a real SIGINT to this
    process (``action="sigint"``) or raises (``"crash"``); ``copies`` maps a call number
    to a path the checkpoint file is copied to when that call starts."""

    def __init__(self, fn: Any, at: int | None = None, action: str = "sigint",
                 checkpoint: Path | None = None, copies: dict[int, Path] | None = None):
        self.fn, self.at, self.action, self.calls = fn, at, action, 0
        self.checkpoint, self.copies = checkpoint, copies or {}
        self.maker = fn.maker

    def __call__(self, i: Any) -> Any:
        self.calls += 1
        if self.calls in self.copies:
            shutil.copy(self.checkpoint, self.copies[self.calls])
        if self.action == "crash" and self.calls == self.at:
            raise RuntimeError("simulated crash")
        out = self.fn(i)
        if self.action == "sigint" and self.calls == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return out


def _unwrapped(trainer: Any) -> Any:
    trainer.train_step = getattr(trainer.train_step, "fn", trainer.train_step)
    return trainer


# ---------------------------------------------------------------------- Trainer, in process
@pytest.fixture(scope="module")
def reference(dataset: symopt.data.Dataset) -> tuple[list[Any], list[Any]]:
    """The uninterrupted run (no checkpoint): history and final state."""
    trainer = _trainer(dataset)
    history = trainer.fit(EPOCHS, SEED, progress=False)
    return history, _run_state(trainer)


@pytest.fixture(scope="module")
def interrupted(dataset: symopt.data.Dataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A run with checkpoint_every=5 that gets SIGINT during epoch 3 (after its 3rd step);
    copies of the checkpoint as it was mid-epoch 1 (step 5) and after epoch 2 are kept."""
    folder = tmp_path_factory.mktemp("ckpt")
    path = folder / "run.ckpt"
    trainer = _trainer(dataset)
    spe = trainer.steps_per_epoch
    assert spe == 7
    # call 1 is the warm-up; call k + 1 is step k of the run
    copies = {5 + 2: folder / "step5.ckpt", 2 * spe + 2: folder / "epoch2.ckpt"}
    trainer.train_step = Steps(trainer.train_step, at=2 * spe + 3 + 1, checkpoint=path, copies=copies)
    with pytest.raises(symopt.TrainingInterrupted) as stop:
        trainer.fit(EPOCHS, SEED, progress=False, checkpoint=path, checkpoint_every=5)
    return {"trainer": trainer, "path": path, "stop": stop.value, **{p.stem: p for p in copies.values()}}


def test_sigint_finishes_the_step_and_writes_the_checkpoint(interrupted: dict[str, Any], reference: Any) -> None:
    stop = interrupted["stop"]
    assert (stop.epoch, stop.step, stop.checkpoint) == (2, 3, interrupted["path"])
    assert isinstance(stop, KeyboardInterrupt)
    assert _numbers(stop.history) == _numbers(reference[0])[:2]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


@pytest.mark.parametrize("source", ["path", "step5", "epoch2"])
def test_resumed_run_is_bit_identical(
    source: str, interrupted: dict[str, Any], reference: Any, dataset: symopt.data.Dataset, tmp_path: Path
) -> None:
    # "path": the SIGINT checkpoint (mid-epoch 3) into a fresh trainer; "step5": a periodic
    # checkpoint (mid-epoch 1) into the interrupted trainer, whose memory is ahead of it;
    # "epoch2": an end-of-epoch checkpoint.
    trainer = _trainer(dataset) if source == "path" else _unwrapped(interrupted["trainer"])
    path = tmp_path / "run.ckpt"  # resuming writes on: keep the module's files as they are
    shutil.copy(interrupted[source], path)
    history = trainer.fit(EPOCHS, SEED, progress=False, checkpoint=path, resume=True)
    assert _numbers(history) == _numbers(reference[0])
    _assert_identical(_run_state(trainer), reference[1])


def test_crash_after_a_periodic_checkpoint_resumes_identically(
    interrupted: dict[str, Any], reference: Any, tmp_path: Path
) -> None:
    # From the step-5 checkpoint, with checkpoint_every=5, the run crashes during step 12:
    # the file on disk is then the one written after step 10, mid-epoch 2.
    path = tmp_path / "run.ckpt"
    shutil.copy(interrupted["step5"], path)
    trainer = _unwrapped(interrupted["trainer"])
    trainer.train_step = Steps(trainer.train_step, at=1 + (12 - 5), action="crash")
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(EPOCHS, SEED, progress=False, checkpoint=path, checkpoint_every=5, resume=True)
    position = symopt.checkpoint.read_header(path)["position"]
    assert (position["epoch"], position["step"]) == (1, 3)
    history = _unwrapped(trainer).fit(EPOCHS, SEED, progress=False, checkpoint=path, resume=True)
    assert _numbers(history) == _numbers(reference[0])
    _assert_identical(_run_state(trainer), reference[1])
    assert symopt.checkpoint.read_header(path)["position"]["epoch"] == EPOCHS


class LookaheadWithEMA:
    """Lookahead around Adam, with an EMA of the parameters, as one Trainer optimiser."""

    def __init__(self, params: list[Any]):
        self.lookahead = symopt.Lookahead(symopt.Adam(params, learning_rate=1e-2), k=3)
        self.ema = symopt.EMA(params, decay=0.9)
        self.params = params

    def updates(self, loss: Any) -> Any:
        return self.ema.updates(self.lookahead.updates(loss))

    def state(self) -> list[Any]:
        inner = self.lookahead.inner
        slots = [var for per_param in inner.state for var in per_param.values()]
        return _state([*self.params, *self.ema.averages, *self.lookahead.slow, self.lookahead.counter,
                       inner.iterations, *slots])


def test_ema_and_lookahead_state_is_restored(dataset: symopt.data.Dataset, tmp_path: Path) -> None:
    def make() -> Trainer:
        model = nn.MLP([SIDE * SIDE, 8, 3], seed=4)
        return Trainer(model, LookaheadWithEMA(model.params), dataset.x_train, dataset.y_train, dataset.x_test,
                       dataset.y_test, batch_size=BATCH)

    # the memory is at step 10, the file at step 8 (mid-epoch 2, Lookahead counter 8 % 3 != 0)
    _crash_resume_is_uninterrupted(make, lambda trainer: trainer.optimizer.state(), 11, tmp_path / "run.ckpt")


def _crash_resume_is_uninterrupted(make: Callable[[], Trainer], state: Callable[[Trainer], list[Any]], crash: int,
                                   path: Path) -> None:
    """A 2-epoch run crashed during step ``crash`` (checkpoints every 4 steps) and resumed
    ends with the uninterrupted run's history and ``state``."""
    reference = make()
    expected = reference.fit(2, SEED, progress=False)
    trainer = make()
    trainer.train_step = Steps(trainer.train_step, at=1 + crash, action="crash")
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(2, SEED, progress=False, checkpoint=path, checkpoint_every=4)
    history = _unwrapped(trainer).fit(2, SEED, progress=False, checkpoint=path, resume=True)
    assert _numbers(history) == _numbers(expected)
    _assert_identical(state(trainer), state(reference))


def test_combined_optimizer_state_is_restored(dataset: symopt.data.Dataset, tmp_path: Path) -> None:
    """symopt.combine (Momentum on the weight matrices, Adam on the rest): a run crashed
    mid-epoch and resumed from its checkpoint ends bit-identical to the uninterrupted run."""
    def make() -> Trainer:
        model = nn.MLP([SIDE * SIDE, 8, 3], batchnorm=True, dropout=0.25, seed=4)
        matrices = [p for p in model.params if p.ndim == 2]
        rest = [p for p in model.params if p.ndim != 2]
        opt = symopt.combine(matrices=symopt.Momentum(matrices, learning_rate=0.05),
                             rest=symopt.Adam(rest, learning_rate=1e-2))
        return Trainer(model, opt, dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test,
                       batch_size=BATCH)

    def state(trainer: Trainer) -> list[Any]:
        members = trainer.optimizer.members.values()
        slots = [var for opt in members for per_param in opt.state for var in per_param.values()]
        return _state([*trainer.model.params, *trainer.model.buffers, *(opt.iterations for opt in members), *slots])

    _crash_resume_is_uninterrupted(make, state, 10, tmp_path / "run.ckpt")  # the file at step 8


def test_skipped_steps_survive_a_resume(dataset: symopt.data.Dataset, tmp_path: Path) -> None:
    """skip_nonfinite: the epoch's mean over finite losses and its count of skipped steps
    continue across a mid-epoch resume."""
    poisoned = [0, 5, 17, 100]
    x = dataset.x_train.copy()
    x[poisoned] = np.inf  # every batch holding one of these rows has a NaN loss and is skipped

    def make() -> Trainer:
        model = nn.MLP([SIDE * SIDE, 8, 3], seed=4)
        opt = symopt.Adam(model.params, learning_rate=1e-2, skip_nonfinite=True)
        return Trainer(model, opt, x, dataset.y_train, dataset.x_test, dataset.y_test, batch_size=BATCH)

    reference = make()
    expected = reference.fit(2, SEED, progress=False)
    rng, spe = np.random.default_rng(SEED), reference.steps_per_epoch
    counts = [int(np.isin(rng.permutation(len(x))[: spe * BATCH].reshape(spe, BATCH), poisoned).any(axis=1).sum())
              for _ in range(2)]
    assert [r.skipped for r in expected] == counts and 0 < counts[1] < spe
    assert all(np.isfinite(r.train_loss) for r in expected)

    trainer, path = make(), tmp_path / "run.ckpt"
    trainer.train_step = Steps(trainer.train_step, at=1 + spe + 6, action="crash")  # during step 6 of epoch 2
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(2, SEED, progress=False, checkpoint=path, checkpoint_every=spe + 4)  # file at step 4 of epoch 2
    history = _unwrapped(trainer).fit(2, SEED, progress=False, checkpoint=path, resume=True)
    assert _numbers(history) == _numbers(expected)
    assert int(trainer.optimizer.skipped.get_value()) == sum(counts)


# ---------------------------------------------------------------------- refusals
MISMATCHES = {
    "optimizer": (dict(optimizer=symopt.SGD, lr=0.1), r"optimizer\.type is 'Adam' there, 'SGD' here"),
    "width": (dict(hidden=8), r"model\.layers\[0\]\.n_out is 16 there, 8 here"),
    "dropout": (dict(dropout=0.5), r"model\.layers\[3\]\.p is 0\.25 there, 0\.5 here"),
    "batch-size": (dict(batch_size=16), r"batch_size is 32 there, 16 here"),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_checkpoint_of_another_run_is_refused_before_anything_changes(
    case: str, interrupted: dict[str, Any], dataset: symopt.data.Dataset
) -> None:
    kwargs, message = MISMATCHES[case]
    trainer = _trainer(dataset, **kwargs)
    path = interrupted["path"]
    file_before, state_before = path.read_bytes(), _run_state(trainer)
    with pytest.raises(ValueError, match=f"is from a different run: {message}"):
        trainer.fit(EPOCHS, SEED, progress=False, checkpoint=path, resume=True)
    assert path.read_bytes() == file_before
    _assert_identical(_run_state(trainer), state_before)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("data", r"data is '[0-9a-f]+' there, '[0-9a-f]+' here"),
        ("learning-rate", r"Adam\.learning_rate started at 0\.01 there, 0\.02 here"),
        ("seed", r"data_seeds\[0\] is 5 there, 6 here"),
    ],
)
def test_checkpoint_of_other_data_settings_or_seed_is_refused(
    change: str, message: str, interrupted: dict[str, Any]
) -> None:
    trainer = _unwrapped(interrupted["trainer"])
    x, seed = trainer.x_train.get_value(), SEED
    if change == "data":
        changed = x.copy()
        changed[0, 0] += np.float32(1 / 255)
        trainer.x_train.set_value(changed)
    elif change == "learning-rate":
        trainer.optimizer.set_hyperparameter("learning_rate", 0.02)
    else:
        seed += 1
    before = _run_state(trainer)
    try:
        with pytest.raises(ValueError, match=f"is from a different run: {message}"):
            trainer.fit(EPOCHS, seed, progress=False, checkpoint=interrupted["path"], resume=True)
        _assert_identical(_run_state(trainer), before)
    finally:
        trainer.x_train.set_value(x)
        trainer.optimizer.set_hyperparameter("learning_rate", 1e-2)


def _rewrite(path: Path, dest: Path, change: Callable[[dict[str, np.ndarray]], None]) -> None:
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    change(arrays)
    with open(dest, "wb") as f:  # a file object: np.savez would append .npz to the name
        np.savez(f, **arrays)


def _header_edit(edit: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, np.ndarray]], None]:
    def change(arrays: dict[str, np.ndarray]) -> None:
        header = json.loads(str(arrays["header"]))
        edit(header)
        arrays["header"] = np.array(json.dumps(header))
    return change


def _huge_member(name: str) -> Callable[[Path, Path], None]:
    """A member whose .npy header declares 10**10 float64 elements (80 GB) over 16 bytes of data."""
    def write(path: Path, dest: Path) -> None:
        if path != dest:
            shutil.copy(path, dest)
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (10**10,)})
        with zipfile.ZipFile(dest) as zin:
            members = {info.filename: zin.read(info.filename) for info in zin.infolist()}
        members[f"{name}.npy"] = buf.getvalue() + bytes(16)
        with zipfile.ZipFile(dest, "w") as zout:
            for member, data in members.items():
                zout.writestr(member, data)
    return write


DAMAGED = {
    "truncated": (lambda p, d: d.write_bytes(p.read_bytes()[:-100]), r"not a readable checkpoint"),
    "foreign-npz": (lambda p, d: np.savez(open(d, "wb"), weights=np.ones(3)), r"not a checkpoint \(it has no 'header'\)"),
    "optimizer-state": (lambda p, d: symopt.SGD([pytensor.shared(np.zeros(2))]).save(d), r"no 'header'"),
    "huge-parameter": (_huge_member("var/2"), r"'var/2' has shape \[10000000000\], expected"),
    "huge-history": (_huge_member("history"), r"'history' has shape \[10000000000\]"),
    "epochs-beyond": (lambda p, d: _rewrite(p, d, _header_edit(lambda h: h["position"].update(epoch=10**12))),
                      r"trained 1000000000000 epochs, more than the 4 asked for"),
    "bad-generator": (lambda p, d: _rewrite(p, d, _header_edit(lambda h: h["data_rngs"][0]["state"].update(inc="x"))),
                      r"data-order generator: invalid PCG64 state"),
    "future-version": (lambda p, d: _rewrite(p, d, _header_edit(lambda h: h.update(version=99))), r"format version 99"),
    "slot-dtype": (lambda p, d: _rewrite(p, d, lambda a: a.update({"var/16": a["var/16"].astype(np.float64)})),
                   r"'var/16' is float64, expected float32"),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_checkpoint_is_refused_before_anything_changes(
    case: str, interrupted: dict[str, Any], tmp_path: Path
) -> None:
    write, message = DAMAGED[case]
    bad = tmp_path / "bad.ckpt"
    write(interrupted["path"], bad)
    trainer = _unwrapped(interrupted["trainer"])
    before = _run_state(trainer)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=message):
            trainer.fit(EPOCHS, SEED, progress=False, checkpoint=bad, resume=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20  # nothing the size of a declared 80 GB array was attempted
    _assert_identical(_run_state(trainer), before)


def test_resume_arguments_are_checked(interrupted: dict[str, Any], tmp_path: Path) -> None:
    trainer = _unwrapped(interrupted["trainer"])
    with pytest.raises(ValueError, match="resume=True needs checkpoint=PATH"):
        trainer.fit(EPOCHS, SEED, progress=False, resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint .*absent.ckpt"):
        trainer.fit(EPOCHS, SEED, progress=False, checkpoint=tmp_path / "absent.ckpt", resume=True)
    with pytest.raises(ValueError, match="checkpoint_every must be a positive integer"):
        trainer.fit(EPOCHS, SEED, progress=False, checkpoint=tmp_path / "c.ckpt", checkpoint_every=0)


# ---------------------------------------------------------------------- optimiser state files
def test_optimizer_load_bounds_the_group_count_before_allocating(tmp_path: Path) -> None:
    """A 4.5 KB state file claiming 10**10 param groups: ValueError, not MemoryError."""
    params = [pytensor.shared(np.zeros((3, 2)), name="W"), pytensor.shared(np.zeros(2), name="b")]
    opt = symopt.Adam(params)
    path = tmp_path / "state.npz"
    opt.save(path)
    _rewrite(path, path, lambda a: a.update(groups=np.array(10**10)))
    assert path.stat().st_size < 8000
    before = opt.state_dict()
    with pytest.raises(ValueError, match="holds 10000000000 param groups, this optimiser has 1"):
        opt.load(path)
    assert before["iterations"] == opt.state_dict()["iterations"]


def test_optimizer_load_refuses_a_huge_declared_array_before_allocating(tmp_path: Path) -> None:
    opt = symopt.Adam([pytensor.shared(np.zeros((3, 2)), name="W")])
    path = tmp_path / "state.npz"
    opt.save(path)
    _huge_member("slot/exp_avg/0")(path, path)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"'slot/exp_avg/0' declares 10000000000 elements, more than the 6"):
            opt.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20


# ---------------------------------------------------------------------- SeedTrainer
def _seed_trainer(dataset: symopt.data.Dataset) -> SeedTrainer:
    stack = SeedStack(lambda s: nn.MLP([SIDE * SIDE, 12, 3], dropout=0.25, seed=s), [3, 11])
    opt = symopt.Adam(stack.params, learning_rate=1e-2)
    return SeedTrainer(stack, opt, dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, batch_size=BATCH)


def test_seed_trainer_interrupted_and_resumed_is_bit_identical(dataset: symopt.data.Dataset, tmp_path: Path) -> None:
    reference = _seed_trainer(dataset)
    expected = reference.fit(3, progress=False)
    path = tmp_path / "seeds.ckpt"
    first = _seed_trainer(dataset)
    first.train_step = Steps(first.train_step, at=1 + 7 + 4)  # SIGINT after step 4 of epoch 2
    with pytest.raises(symopt.TrainingInterrupted) as stop:
        first.fit(3, progress=False, checkpoint=path)
    assert (stop.value.epoch, stop.value.step) == (1, 4)
    assert [_numbers(h) for h in stop.value.history] == [_numbers(h)[:1] for h in expected]
    again = _seed_trainer(dataset)
    histories = again.fit(3, progress=False, checkpoint=path, resume=True)
    assert [_numbers(h) for h in histories] == [_numbers(h) for h in expected]
    _assert_identical(_run_state(again), _run_state(reference))
    # The dropout keys and step counters (the stack's buffers) resumed where the reference ended.
    for got, want in zip(again.stack.buffers, reference.stack.buffers, strict=True):
        np.testing.assert_array_equal(got.get_value(), want.get_value())
    assert all(c.get_value() == 3 * again.steps_per_epoch for c in again.stack.buffers[1::2])
    with pytest.raises(ValueError, match=r"data_seeds\[1\] is 11 there, 12 here"):
        _seed_trainer_fit_other_seeds(again, path)


def _seed_trainer_fit_other_seeds(trainer: SeedTrainer, path: Path) -> None:
    trainer.fit(3, data_seeds=[3, 12], progress=False, checkpoint=path, resume=True)


# ---------------------------------------------------------------------- symopt train
CLI_ARGS = ["--epochs", "20", "--batch-size", "16", "--hidden", "16,16", "--batchnorm", "--dropout", "0.2",
            "--seed", "3", "--no-progress"]


def _var_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files if k.startswith("var/")}


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted `symopt train`, then a real process stopped by SIGINT after its
    second epoch, then resumed in another process: three processes."""
    folder = tmp_path_factory.mktemp("cli")
    data = _make_dataset(folder / "bars", n_train=480, n_test=60)
    args = [*CLI_ARGS, "--data-dir", str(data)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "symopt.cli", "train", *args]
    # A process that compiles a step afresh rounds differently (~1e-8 relative) from one that
    # loads it from PyTensor's compile cache (Numba's fast-math flags let LLVM optimise across
    # the ops it compiles together; README, "Checkpoint and resume"), and this test process
    # may hold freshly compiled pieces from earlier tests. So a warm-up process fills the
    # cache, and the reference is a fresh process too: all compared runs load from the cache.
    assert args[:2] == ["--epochs", "20"]
    subprocess.run([*command[:-len(args)], "--epochs", "1", *args[2:]],
                   capture_output=True, text=True, env=env, timeout=600, check=True)
    subprocess.run([*command, "--checkpoint", str(folder / "ref.ckpt"), "--out", str(folder / "ref.json")],
                   capture_output=True, text=True, env=env, timeout=600, check=True)
    proc = subprocess.Popen([*command, "--checkpoint", str(folder / "run.ckpt"), "--out", str(folder / "stop.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("epoch   2 "):
            time.sleep(0.05)  # most likely lands mid-epoch 3 (the epoch-end path is tested in process)
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=600)
    stopped = {"rc": proc.returncode, "stdout": "".join(lines) + out, "stderr": err,
               "json": json.loads((folder / "stop.json").read_text()),
               "header": symopt.checkpoint.read_header(folder / "run.ckpt")}
    resumed = subprocess.run([*command, "--resume", str(folder / "run.ckpt"), "--out", str(folder / "res.json")],
                             capture_output=True, text=True, env=env, timeout=600)
    return {"folder": folder, "args": args, "stopped": stopped, "resumed": resumed}


def test_cli_sigint_writes_checkpoint_and_history_and_exits_130(cli_runs: dict[str, Any]) -> None:
    stopped = cli_runs["stopped"]
    assert stopped["rc"] == 130, stopped["stderr"]
    assert "Traceback" not in stopped["stderr"]
    position = stopped["header"]["position"]
    done = stopped["json"]["history"]
    assert len(done) == position["epoch"] >= 2
    assert stopped["json"]["interrupted"] == {"epoch": position["epoch"], "step": position["step"],
                                              "checkpoint": str(cli_runs["folder"] / "run.ckpt")}
    assert f"--resume {cli_runs['folder'] / 'run.ckpt'}" in stopped["stderr"]


def test_cli_resumed_run_is_bit_identical(cli_runs: dict[str, Any]) -> None:
    resumed, folder = cli_runs["resumed"], cli_runs["folder"]
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout

    def numbers(path: Path) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads(path.read_text())["history"]]

    assert numbers(folder / "res.json") == numbers(folder / "ref.json")
    assert len(numbers(folder / "ref.json")) == 20
    final, expected = _var_arrays(folder / "run.ckpt"), _var_arrays(folder / "ref.ckpt")
    assert final.keys() == expected.keys() and len(final) > 10
    for key in expected:
        assert final[key].dtype == expected[key].dtype and np.array_equal(final[key], expected[key]), key


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lr", "0.01"], r"--resume: checkpoint .* is from a different run: config\.hyperparameters\.learning_rate "
                           r"is 0\.001 there, 0\.01 here"),
        (["--hidden", "8"], r"config\.hidden\[0\] is 16 there, 8 here"),
        (["--epochs", "5"], r"has trained 20 epochs, more than --epochs 5"),
    ],
)
def test_cli_resume_with_other_settings_is_one_line(
    extra: list[str], message: str, cli_runs: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    path = cli_runs["folder"] / "run.ckpt"
    before = path.read_bytes()
    status = main(["train", *cli_runs["args"], *extra, "--resume", str(path)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("symopt: error: ") and err.count("\n") == 1 and "Traceback" not in err
    import re

    assert re.search(message, err), err
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--checkpoint-every", "3"], r"--checkpoint-every needs --checkpoint PATH"),
        (["--resume", "/nonexistent/run.ckpt"], r"--resume /nonexistent/run.ckpt: no such checkpoint file"),
    ],
)
def test_cli_checkpoint_flags_are_checked_before_loading(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["train", "--data-dir", "/nonexistent/data", "--no-progress", *argv])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    import re

    assert re.search(message, err), err
