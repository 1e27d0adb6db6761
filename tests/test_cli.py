"""Failing early and recording everything: output paths, divergence, run records, bad input, umask.

Small generated IDX data sets (6x6 images, 3 classes) keep every compiled graph tiny.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import platform
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import symopt
from symopt import nn
from symopt._io import atomic_writer, check_writable, dump_json
from symopt.cli import _hyperparameter, estimate_training_bytes, main
from symopt.data import IDXFormatError, count_classes, load_idx_dataset
from symopt.experiments._common import write_json
from symopt.train import NonFiniteLossError, Trainer

from .test_train import SIDE, _make_dataset, _write_idx

STEPS = 240 // 32  # steps per epoch of the CLI runs below (240 samples, batch 32)


def _strict_json(path: Path) -> object:
    """Parse as standard JSON: NaN / Infinity are not JSON and fail here."""
    def reject(name: str) -> None:
        raise ValueError(f"{path} holds the non-JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=reject)


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_dataset(tmp_path_factory.mktemp("bars"))


@pytest.fixture
def blocker(tmp_path: Path) -> Path:
    """A regular file: any path below it cannot be created, even by root."""
    path = tmp_path / "blocker"
    path.write_text("not a directory")
    return path


def _train(dataset_dir: Path, *argv: str) -> int:
    return main(["train", "--epochs", "2", "--batch-size", "32", "--hidden", "8", "--data-dir", str(dataset_dir),
                 "--no-progress", *argv])


def _one_error_line(err: str) -> str:
    assert err.startswith("symopt: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------ output paths first
def test_unwritable_out_fails_before_the_data_is_read(blocker: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The data directory does not exist either: the --out error must come first.
    status = main(["train", "--data-dir", "/nonexistent/symopt-data", "--out", str(blocker / "sub" / "x.json")])
    captured = capsys.readouterr()
    assert status == 2 and "epoch" not in captured.out
    err = _one_error_line(captured.err)
    assert "--out" in err and str(blocker) in err and "not a directory" in err


def test_out_that_is_a_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data-dir", "/nonexistent/symopt-data", "--out", str(tmp_path)]) == 2
    assert "--out" in _one_error_line(capsys.readouterr().err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="--out"):
            check_writable(folder / "new" / "x.json", "--out")
    finally:
        folder.chmod(0o700)


def test_check_writable_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "run.json"
    assert check_writable(target, "--out") == target
    assert check_writable(tmp_path / "figs", "--figures-dir", directory=True) == tmp_path / "figs"
    assert list(tmp_path.iterdir()) == []  # the probe file is gone, no folder was made
    with pytest.raises(IsADirectoryError, match="--out"):
        check_writable(tmp_path, "--out")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError, match=r"--db .*a-file/sub/s.db: .*a-file is not a directory"):
        check_writable(blocker / "sub" / "s.db", "--db")
    with pytest.raises(NotADirectoryError, match=r"--figures-dir .*a-file is not a directory"):
        check_writable(blocker, "--figures-dir", directory=True)
    assert list(tmp_path.iterdir()) == [blocker]


@pytest.mark.parametrize("argv", [
    ["experiment", "trajectories", "--quick", "--results-dir", "{blocker}/results"],
    ["experiment", "trajectories", "--quick", "--figures-dir", "{blocker}/figures"],
    ["bench-mnist", "--optimizers", "sgd", "--seeds", "1", "--results", "{blocker}/r.json"],
    ["bench-mnist", "--optimizers", "sgd", "--seeds", "1", "--figures-dir", "{blocker}/figures"],
])
def test_experiment_and_bench_output_paths_are_checked_first(
    argv: list[str], blocker: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.format(blocker=blocker) for a in argv]
    flag = next(a for a in argv if a.startswith("--") and "{" not in a and str(blocker) in argv[argv.index(a) + 1])
    # The other outputs go to a writable place, so only the blocked one can fail.
    defaults = {"experiment": ["--results-dir", str(tmp_path / "r"), "--figures-dir", str(tmp_path / "f")],
                "bench-mnist": ["--results", str(tmp_path / "r.json"), "--figures-dir", str(tmp_path / "f")]}
    extra = [a for pair in zip(defaults[argv[0]][::2], defaults[argv[0]][1::2]) if pair[0] not in argv for a in pair]
    status = main([*argv, *extra])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    assert flag in _one_error_line(captured.err)
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.json").exists()


# ------------------------------------------------------------------------------ divergence
def test_trainer_raises_naming_epoch_and_step(dataset_dir: Path) -> None:
    data = load_idx_dataset(dataset_dir)
    model = nn.MLP([SIDE * SIDE, 8, 3], seed=0)
    opt = symopt.SGD(model.params, learning_rate=1e30)
    trainer = Trainer(model, opt, data.x_train, data.y_train, data.x_test, data.y_test, batch_size=32)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(3, seed=0, progress=False)
    err = info.value
    assert err.epoch == 1 and 1 <= err.step <= STEPS and not math.isfinite(err.loss)
    # the optimiser's own step counter stopped at the reported step (the run stopped there)
    assert int(opt.iterations.get_value()) == err.step
    assert f"epoch 1, step {err.step}" in str(err)
    # opting out records the non-finite losses instead, as sweeps do
    model = nn.MLP([SIDE * SIDE, 8, 3], seed=0)
    opt = symopt.SGD(model.params, learning_rate=1e30)
    trainer = Trainer(model, opt, data.x_train, data.y_train, data.x_test, data.y_test, batch_size=32,
                      on_nonfinite="continue")
    history = trainer.fit(1, seed=0, progress=False)
    assert not math.isfinite(history[0].train_loss) and history[0].skipped == 0


def test_skipping_optimizer_counts_skipped_steps(dataset_dir: Path) -> None:
    data = load_idx_dataset(dataset_dir)
    model = nn.MLP([SIDE * SIDE, 8, 3], seed=0)
    opt = symopt.SGD(model.params, learning_rate=1e30, skip_nonfinite=True)
    trainer = Trainer(model, opt, data.x_train, data.y_train, data.x_test, data.y_test, batch_size=32)
    history = trainer.fit(2, seed=0, progress=False)
    assert [r.skipped for r in history] == [history[0].skipped, STEPS]
    assert 1 <= history[0].skipped <= STEPS
    assert sum(r.skipped for r in history) == int(opt.skipped.get_value())
    # the applied steps are the unskipped ones
    assert int(opt.iterations.get_value()) == 2 * STEPS - sum(r.skipped for r in history)


def test_cli_divergence_is_one_line_and_exit_1(dataset_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run.json"
    status = _train(dataset_dir, "--optimizer", "sgd", "--lr", "1e30", "--out", str(out))
    captured = capsys.readouterr()
    assert status == 1
    err = _one_error_line(captured.err)
    assert "diverged" in err and "epoch 1, step " in err
    assert "epoch   1" not in captured.out  # no epoch line with nan was printed as if fine
    record = _strict_json(out)
    assert record["history"] == [] and record["diverged"]["epoch"] == 1
    assert f"step {record['diverged']['step']}" in err


def test_cli_skip_nonfinite_reports_skipped_steps(dataset_dir: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run.json"
    status = _train(dataset_dir, "--optimizer", "sgd", "--lr", "1e30", "--skip-nonfinite", "--out", str(out))
    printed = capsys.readouterr().out
    assert status == 0
    assert printed.count(" step(s)") == 2 and f"skipped {STEPS} step(s)" in printed
    record = _strict_json(out)  # NaN losses are written as null
    assert record["config"]["settings"]["skip_nonfinite"] is True
    assert record["history"][1]["skipped"] == STEPS and record["history"][1]["train_loss"] is None


def test_json_written_by_symopt_is_always_valid(tmp_path: Path) -> None:
    payload = {"a": [1.0, float("nan"), np.float32("inf")], "b": np.array([-np.inf, 2.5]), "c": np.int64(3)}
    path = write_json(tmp_path / "r.json", payload)
    assert _strict_json(path) == {"a": [1.0, None, None], "b": [None, 2.5], "c": 3}
    with atomic_writer(tmp_path / "s.json", "w") as f:
        dump_json({"x": float("-inf")}, f)
    assert _strict_json(tmp_path / "s.json") == {"x": None}


# ------------------------------------------------------------------------------ run record
def test_record_holds_every_setting_backend_and_versions(dataset_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run.json"
    status = _train(dataset_dir, "--optimizer", "adam", "--hp", "clip_global_norm=0.01", "--hp", "accumulate=2",
                    "--hp", "amsgrad=true", "--out", str(out))
    printed = capsys.readouterr().out
    assert status == 0
    config = _strict_json(out)["config"]
    # every hyperparameter of the rule, defaults resolved, plus the option given
    declared = dict(symopt.Adam.hyperparameters)
    assert set(config["hyperparameters"]) == set(declared)
    assert config["hyperparameters"] == {**declared, "amsgrad": True}
    assert config["settings"] == {"clip_value": None, "clip_norm": None, "clip_global_norm": 0.01,
                                  "max_norm": None, "accumulate": 2, "skip_nonfinite": False}
    assert config["hp"] == {"clip_global_norm": 0.01, "accumulate": 2, "amsgrad": True}
    assert config["backend"] == (os.environ.get("SYMOPT_MODE") or "NUMBA").upper()
    versions = config["versions"]
    assert versions["pytensor"] == importlib.metadata.version("pytensor")
    assert versions["numpy"] == importlib.metadata.version("numpy")
    assert versions["symopt"] == importlib.metadata.version("symopt")
    assert versions["python"] == platform.python_version()
    assert config["classes"] == 3 and config["layers"] == [SIDE * SIDE, 8, 3]
    assert "--hp" in config["argv"]
    # the printed header says the same
    header = printed.split("epoch ")[0]
    for text in ("'clip_global_norm': 0.01", "'accumulate': 2", f"pytensor {versions['pytensor']}",
                 f"numpy {versions['numpy']}", f"backend {config['backend']}"):
        assert text in header, (text, header)


def test_hyperparameter_values_parse_as_int_float_bool() -> None:
    assert _hyperparameter("accumulate=4") == ("accumulate", 4) and isinstance(_hyperparameter("accumulate=4")[1], int)
    assert _hyperparameter("beta1=0.8") == ("beta1", 0.8)
    assert _hyperparameter("learning_rate=1e-3") == ("learning_rate", 1e-3)
    assert _hyperparameter("amsgrad=True") == ("amsgrad", True)


# ------------------------------------------------------------------------------ bad input
def test_negative_seed_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--seed", "-1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--seed" in err and "non-negative integer" in err and "Traceback" not in err


def test_huge_model_is_refused_before_allocation(dataset_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["train", "--hidden", "100000000000", "--data-dir", str(dataset_dir), "--no-progress"])
    err = _one_error_line(capsys.readouterr().err)
    assert status == 2 and "--hidden 100000000000" in err and "GiB" in err


def test_parameter_estimate_counts_the_models_parameters() -> None:
    layers = [SIDE * SIDE, 7, 5, 3]
    model = nn.MLP(layers, seed=0)
    n_params, nbytes = estimate_training_bytes(layers, "float32", slots=2, batch_size=32)
    assert n_params == sum(p.get_value().size for p in model.params)
    assert nbytes >= n_params * 4 * (1 + 2)  # parameters and two state slots at least


def _labelled_set(directory: Path, y_train: np.ndarray, y_test: np.ndarray) -> Path:
    directory.mkdir()
    rng = np.random.default_rng(0)
    _write_idx(directory / "train-images-idx3-ubyte", rng.integers(0, 255, (len(y_train), SIDE, SIDE)))
    _write_idx(directory / "train-labels-idx1-ubyte", y_train)
    _write_idx(directory / "t10k-images-idx3-ubyte", rng.integers(0, 255, (len(y_test), SIDE, SIDE)))
    _write_idx(directory / "t10k-labels-idx1-ubyte", y_test)
    return directory


def test_empty_training_set_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = _labelled_set(tmp_path / "empty", np.zeros(0, dtype=np.uint8), np.arange(3))
    assert main(["train", "--data-dir", str(directory), "--no-progress"]) == 2
    err = _one_error_line(capsys.readouterr().err)
    assert "train-images-idx3-ubyte" in err and "no images" in err


def test_stray_label_is_caught_and_classes_can_be_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    y_train = np.tile(np.arange(10), 6)
    y_train[17] = 250
    directory = _labelled_set(tmp_path / "stray", y_train, np.arange(10))
    assert main(["train", "--data-dir", str(directory), "--no-progress"]) == 2
    err = _one_error_line(capsys.readouterr().err)
    assert "train-labels-idx1-ubyte" in err and "label 250 at index 17" in err and "--classes" in err
    with pytest.raises(IDXFormatError, match=r"train-labels-idx1-ubyte: label 250 at index 17 .* 10 classes"):
        load_idx_dataset(directory, classes=10)
    assert count_classes(y_train, np.arange(10), 251) == 251  # stated: accepted


def test_test_labels_beyond_training_labels_name_the_file(tmp_path: Path) -> None:
    directory = _labelled_set(tmp_path / "beyond", np.tile(np.arange(3), 10), np.array([0, 1, 5]))
    with pytest.raises(IDXFormatError, match=r"t10k-labels-idx1-ubyte: label 5 at index 2"):
        load_idx_dataset(directory)
    with pytest.raises(IDXFormatError, match=r"t10k-labels-idx1-ubyte: label 5 .* 4 classes"):
        load_idx_dataset(directory, classes=4)
    assert len(load_idx_dataset(directory, classes=6).y_test) == 3


def test_label_gaps_are_fine() -> None:
    assert count_classes(np.array([0, 2, 2, 0]), np.array([2])) == 3
    with pytest.raises(ValueError, match="negative label -1 at index 1"):
        count_classes(np.array([0, -1]), np.array([0]))


# ------------------------------------------------------------------------------ file modes
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_follow_the_umask(mask: int, mode: int, tmp_path: Path) -> None:
    with _umask(mask):
        with atomic_writer(tmp_path / "r.bin") as f:
            f.write(b"x")
        write_json(tmp_path / "r.json", {"a": 1})
        opt = symopt.SGD([nn.Dense(2, 2, seed=0).params[0]])
        opt.save(tmp_path / "state.npz")
    for name in ("r.bin", "r.json", "state.npz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_overwrite_keeps_the_files_mode(tmp_path: Path) -> None:
    dest = tmp_path / "private.json"
    dest.write_text("{}")
    dest.chmod(0o600)
    with _umask(0o022):
        write_json(dest, {"a": 1})
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600 and json.loads(dest.read_text()) == {"a": 1}


def test_cli_out_follows_the_umask(dataset_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    with _umask(0o077):
        assert _train(dataset_dir, "--epochs", "1", "--out", str(out)) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_optimizers_lists_every_rule_with_its_reference(capsys: pytest.CaptureFixture[str]) -> None:
    """`symopt optimizers`: one line per registered rule naming the implementation its numbers match."""

    @symopt.register("clisign")
    class CliSGD(symopt.Optimizer):
        """p <- p - lr * g, a plug-in without a declared reference."""

        hyperparameters = {"learning_rate": 0.01}

        def update_param(self, param, grad, state):
            return param - self.learning_rate * grad, {}

    try:
        assert main(["optimizers"]) == 0
        lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    finally:
        del symopt.OPTIMIZERS["clisign"]
    assert set(lines) == set(symopt.OPTIMIZERS) | {"clisign"}
    expected = {
        "sgd": "torch.optim.SGD", "adagrad": "torch.optim.Adagrad", "adamw": "torch.optim.AdamW",
        "rprop": "torch.optim.Rprop", "asgd": "torch.optim.ASGD", "adabelief": "optax.adabelief",
        "adopt": "optax.contrib.adopt", "ademamix": "optax.contrib.ademamix", "lamb": "optax.lamb",
        "lars": "optax.lars",
    }
    for name, reference in expected.items():
        assert f" {reference} " in lines[name], lines[name]
    for name in symopt.OPTIMIZERS:
        if symopt.OPTIMIZERS[name].__module__.startswith("symopt."):
            assert "no reference declared" not in lines[name], f"built-in {name} declares no reference"
    assert "(no reference declared; tests.test_cli)" in lines["clisign"]
    # lbfgs: registered with its reference and, not being a per-parameter rule, its kind
    assert " LBFGS " in lines["lbfgs"]
    assert " torch.optim.LBFGS(line_search_fn='strong_wolfe') [full-batch, needs loss] " in lines["lbfgs"]
    assert "max_iter=20" in lines["lbfgs"] and "history_size=100" in lines["lbfgs"]
    assert "initial_accumulator_value=0.0" in lines["adagrad"] and "lr_decay=0.0" in lines["adagrad"]


def test_train_refuses_lbfgs_before_reading_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`symopt train --optimizer lbfgs`: one error naming the kind; no data is read (the directory does not exist)."""
    status = main(["train", "--optimizer", "lbfgs", "--data-dir", str(tmp_path / "absent"), "--epochs", "1"])
    assert status == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "symopt train: 'lbfgs' (symopt.LBFGS) is not a per-parameter rule (its kind: full-batch, needs loss)" in line
    assert "absent" not in line
