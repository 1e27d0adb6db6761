"""symopt.train and the ``symopt train`` CLI, on small generated IDX data sets."""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import symopt
from symopt import nn
from symopt.cli import main
from symopt.train import Trainer

SIDE = 6  # 6x6 images keep every compiled graph tiny


def _write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    """IDX writer written from the format's description (independent of symopt.data)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)


def _make_dataset(directory: Path, n_train: int = 240, n_test: int = 60, seed: int = 0) -> Path:
    """Three classes: a bright horizontal bar at the top, middle or bottom, plus noise."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)

    def images(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 3, size=n)
        x = rng.integers(0, 90, size=(n, SIDE, SIDE))
        for i, label in enumerate(labels):
            x[i, 2 * label : 2 * label + 2, :] = 255
        return x, labels

    x_train, y_train = images(n_train)
    x_test, y_test = images(n_test)
    _write_idx(directory / "train-images-idx3-ubyte", x_train)
    _write_idx(directory / "train-labels-idx1-ubyte", y_train)
    _write_idx(directory / "t10k-images-idx3-ubyte", x_test, gz=True)
    _write_idx(directory / "t10k-labels-idx1-ubyte", y_test, gz=True)
    return directory


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_dataset(tmp_path_factory.mktemp("bars"))


@pytest.fixture(scope="module")
def dataset(dataset_dir: Path) -> symopt.data.Dataset:
    return symopt.data.load_idx_dataset(dataset_dir)


def _trainer(dataset: symopt.data.Dataset, seed: int, **model_kw: object) -> Trainer:
    model = nn.MLP([SIDE * SIDE, 16, 3], seed=seed, **model_kw)
    optimizer = symopt.Adam(model.params, learning_rate=1e-2)
    return Trainer(model, optimizer, dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, batch_size=32)


def test_fit_learns_and_is_reproducible(dataset: symopt.data.Dataset) -> None:
    first = _trainer(dataset, seed=3).fit(epochs=4, seed=7, progress=False)
    again = _trainer(dataset, seed=3).fit(epochs=4, seed=7, progress=False)
    strip = lambda history: [(r.epoch, r.train_loss, r.test_loss, r.test_accuracy) for r in history]  # noqa: E731
    assert strip(first) == strip(again)  # same seeds: bit-identical history
    other = _trainer(dataset, seed=3).fit(epochs=4, seed=8, progress=False)
    assert strip(other) != strip(first)  # the data order really depends on the seed
    # The bars are trivially separable: far above the 1/3 of chance, and the loss falls.
    assert first[-1].test_accuracy >= 0.9
    assert first[-1].train_loss < first[0].train_loss
    assert all(r.seconds > 0 for r in first)


def test_epoch_visits_each_sample_once_and_drops_the_partial_batch(dataset: symopt.data.Dataset) -> None:
    trainer = _trainer(dataset, seed=0)
    assert trainer.steps_per_epoch == len(dataset.x_train) // 32
    trainer.run_epoch(np.random.default_rng(0))
    order = trainer.order.get_value()
    assert sorted(order.tolist()) == list(range(len(dataset.x_train)))
    assert trainer.optimizer.iterations.get_value() == trainer.steps_per_epoch


def test_evaluate_matches_numpy(dataset: symopt.data.Dataset) -> None:
    trainer = _trainer(dataset, seed=1)
    loss, accuracy = trainer.evaluate()
    # NumPy forward pass of the same MLP (Dense, ReLU, Dense) from its parameter values.
    w1, b1, w2, b2 = (p.get_value() for p in trainer.model.params)
    logits = np.maximum(dataset.x_test @ w1 + b1, 0) @ w2 + b2
    logits = logits.astype(np.float64)
    log_probs = logits - logits.max(1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
    np.testing.assert_allclose(loss, -log_probs[np.arange(len(logits)), dataset.y_test].mean(), rtol=1e-5)
    assert accuracy == pytest.approx(np.mean(logits.argmax(1) == dataset.y_test))


def test_warm_up_changes_nothing(dataset: symopt.data.Dataset) -> None:
    trainer = _trainer(dataset, seed=2, batchnorm=True, dropout=0.2)
    def snapshot() -> list[np.ndarray]:
        return [v.get_value(borrow=False) for v in trainer.model.params + trainer.model.buffers]

    before = snapshot()
    trainer.warm_up()
    after = snapshot()
    # The dropout layers' step counters are among the buffers, and the train step advances them.
    updated = {id(inp.variable) for inp in trainer.train_step.maker.inputs if inp.update is not None}
    assert any(v.name.endswith(".counter") and id(v) in updated for v in trainer.model.buffers)
    for a, b in zip(before, after):
        assert np.array_equal(a, b)
    assert trainer.optimizer.iterations.get_value() == 0


def test_batchnorm_statistics_are_updated_inside_the_train_step(dataset: symopt.data.Dataset) -> None:
    trainer = _trainer(dataset, seed=4, batchnorm=True)
    bn = next(layer for layer in trainer.model.layers if isinstance(layer, nn.BatchNorm))
    start = [b.get_value().copy() for b in bn.buffers]
    trainer.run_epoch(np.random.default_rng(0))
    assert not any(np.array_equal(s, b.get_value()) for s, b in zip(start, bn.buffers))


def test_a_skipped_step_leaves_batchnorm_statistics_alone(dataset: symopt.data.Dataset) -> None:
    model = nn.MLP([SIDE * SIDE, 16, 3], seed=4, batchnorm=True)
    optimizer = symopt.Adam(model.params, learning_rate=1e-2, skip_nonfinite=True)
    x = dataset.x_train.copy()
    x[:32] = np.inf  # the first batch of the initial order: a NaN forward pass
    trainer = Trainer(model, optimizer, x, dataset.y_train, dataset.x_test, dataset.y_test, batch_size=32)
    bn = next(layer for layer in model.layers if isinstance(layer, nn.BatchNorm))

    def state() -> list[np.ndarray]:
        return [v.get_value().copy() for v in (*model.params, *bn.buffers)]

    before = state()
    assert not np.isfinite(trainer.train_step(0))
    assert all(np.array_equal(a, b) for a, b in zip(before, state()))
    assert int(optimizer.skipped.get_value()) == 1
    assert np.isfinite(trainer.train_step(1))
    assert not any(np.array_equal(a, b) for a, b in zip(before[-len(bn.buffers):], state()[-len(bn.buffers):]))
    assert all(np.isfinite(b.get_value()).all() for b in bn.buffers)


def test_trainer_takes_any_optimizer_like(dataset: symopt.data.Dataset) -> None:
    """A Lookahead (not an Optimizer) trains through the Trainer as its updates do in a
    hand-compiled step fed the same batches (rows of the generator's permutation)."""
    import pytensor.tensor as pt

    def make() -> tuple[nn.MLP, symopt.Lookahead]:
        model = nn.MLP([SIDE * SIDE, 8, 3], seed=5)
        return model, symopt.Lookahead(symopt.Momentum(model.params, learning_rate=0.05), k=2)

    model, opt = make()
    trainer = Trainer(model, opt, dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, batch_size=32)
    trainer.run_epoch(np.random.default_rng(3))

    reference, ref_opt = make()
    x, y = pt.matrix("x", dtype=reference.params[0].dtype), pt.vector("y", dtype="int64")
    loss = nn.cross_entropy(reference.output(x, train=True), y)
    step = symopt.function([x, y], loss, updates=ref_opt.updates(loss))
    order = np.random.default_rng(3).permutation(len(dataset.x_train))
    x_train = dataset.x_train.astype(reference.params[0].dtype)
    for i in range(trainer.steps_per_epoch):
        rows = order[i * 32 : (i + 1) * 32]
        step(x_train[rows], dataset.y_train[rows].astype(np.int64))
    assert int(ref_opt.counter.get_value()) == int(opt.counter.get_value()) == trainer.steps_per_epoch
    for got, want in zip(model.params, reference.params):
        np.testing.assert_allclose(got.get_value(), want.get_value(), rtol=1e-6, atol=1e-7)


def test_trainer_moves_an_ema_after_each_step(dataset: symopt.data.Dataset) -> None:
    """Trainer(ema=): the averages follow a_t = d a_{t-1} + (1 - d) p_t (Polyak & Juditsky)
    over the parameters after each step, recorded from a run without the EMA."""
    def make(ema: bool) -> tuple[Trainer, Any]:
        model = nn.MLP([SIDE * SIDE, 8, 3], seed=6)
        average = symopt.EMA(model.params, decay=0.8) if ema else None
        opt = symopt.Adam(model.params, learning_rate=1e-2)
        return Trainer(model, opt, dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, batch_size=32,
                       ema=average), average

    plain, _ = make(False)
    averages = [p.get_value().astype(np.float64) for p in plain.model.params]
    plain.order.set_value(np.random.default_rng(0).permutation(len(dataset.x_train)))
    for i in range(3):
        plain.train_step(i)
        averages = [0.8 * a + 0.2 * p.get_value() for a, p in zip(averages, plain.model.params)]
    trainer, ema = make(True)
    trainer.order.set_value(np.random.default_rng(0).permutation(len(dataset.x_train)))
    for i in range(3):
        trainer.train_step(i)
    for got, want, p, q in zip(ema.averages, averages, trainer.model.params, plain.model.params):
        assert np.array_equal(p.get_value(), q.get_value())  # the EMA does not touch the training
        np.testing.assert_allclose(got.get_value(), want, rtol=1e-5, atol=1e-6)


def test_trainer_rejects_bad_arguments(dataset: symopt.data.Dataset) -> None:
    model = nn.MLP([SIDE * SIDE, 4, 3], seed=0)
    opt = symopt.SGD(model.params)
    args = (model, opt, dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        Trainer(*args, batch_size=0)
    with pytest.raises(ValueError, match="exceeds the 240 training samples"):
        Trainer(*args, batch_size=1000)
    with pytest.raises(ValueError, match="differ in length"):
        Trainer(model, opt, dataset.x_train, dataset.y_train[:-1], dataset.x_test, dataset.y_test)
    stranger = nn.MLP([SIDE * SIDE, 4, 3], seed=1)
    with pytest.raises(ValueError, match="not the model's"):
        Trainer(stranger, opt, *args[2:])


# ---------------------------------------------------------------------------------- CLI
def test_cli_train_end_to_end(dataset_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run.json"
    status = main([
        "train", "--optimizer", "Momentum", "--lr", "0.05", "--hp", "momentum=0.8", "--epochs", "3",
        "--batch-size", "32", "--hidden", "16", "--init", "xavier", "--seed", "1", "--data-dir", str(dataset_dir),
        "--weight-decay", "1e-4", "--no-progress", "--out", str(out),
    ])
    printed = capsys.readouterr().out
    assert status == 0
    assert printed.count("epoch ") == 3
    result = json.loads(out.read_text())
    assert result["config"]["optimizer"] == "momentum"
    assert result["config"]["hyperparameters"]["momentum"] == 0.8
    assert result["config"]["hyperparameters"]["weight_decay"] == 1e-4
    assert [r["epoch"] for r in result["history"]] == [1, 2, 3]
    assert set(result["history"][0]) == {"epoch", "train_loss", "test_loss", "test_accuracy", "seconds", "skipped"}
    assert result["history"][-1]["test_accuracy"] > 0.6


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--optimizer", "adm"], r"unknown optimizer 'adm'\. Did you mean 'adam'\?"),
        (["--lr", "-1"], r"'learning_rate' must lie in \[0, inf\), got -1"),
        (["--hp", "beta3=0.5"], r"unknown hyperparameter 'beta3'"),
        (["--hp", "amsgrad=2"], r"option 'amsgrad' must be True or False"),
        (["--dropout", "1.5"], r"--dropout must be in \[0, 1\)"),
        (["--data-dir", "/nonexistent/symopt-data"], r"/nonexistent/symopt-data"),
    ],
)
def test_cli_bad_input_is_one_clear_line(
    argv: list[str], message: str, dataset_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if "--data-dir" not in argv:
        argv = [*argv, "--data-dir", str(dataset_dir)]
    status = main(["train", "--epochs", "1", "--hidden", "4", "--no-progress", *argv])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("symopt: error: ")
    assert "Traceback" not in err
    assert err.count("\n") == 1
    import re

    assert re.search(message, err), err


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--hidden", "10,x"], ["--hp", "novalue"], ["--batch-size", "-3"]])
def test_cli_bad_flags_are_argparse_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *argv])
    assert exit_info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_cli_corrupt_data_file_is_named(dataset_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in dataset_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    labels = broken / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-10])  # truncated
    assert main(["train", "--epochs", "1", "--data-dir", str(broken), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "train-labels-idx1-ubyte" in err and "Traceback" not in err


def test_console_script_runs_as_a_process(dataset_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "symopt.cli", "train", "--optimizer", "sgd", "--lr", "0.1", "--epochs", "1",
         "--batch-size", "32", "--hidden", "16", "--data-dir", str(dataset_dir), "--no-progress", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["config"]["optimizer"] == "sgd"
    bad = subprocess.run(
        [sys.executable, "-m", "symopt.cli", "train", "--optimizer", "nope", "--data-dir", str(dataset_dir)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert bad.returncode == 2 and "unknown optimizer 'nope'" in bad.stderr and "Traceback" not in bad.stderr
