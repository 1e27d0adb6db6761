"""Sweeps and searches with ReduceLROnPlateau and early stopping (``[plateau]``, ``[early_stopping]``).

The references: each member of a stacked task against its own unstacked run (a
single-model ``Trainer`` with :class:`symopt.ReduceLROnPlateau` and
:class:`symopt.EarlyStopping`), to float32 round-off of the batched matmuls; and both
against the plateau algorithm of ``torch.optim.lr_scheduler.ReduceLROnPlateau`` and the
Keras early-stopping count (written out in test_plateau.py and test_member_plateau.py),
run on the metric sequence the run recorded. The grid (Adam at two learning rates x two seeds, ten short epochs) is chosen so
that one member's rate is reduced down to ``min_lr`` and another member stops early while
its stack-mates train on.

Everything trains in this process: one stacked and one unstacked compilation, cached by
the engine and reused by the search at the end, whose Dask worker is a thread of this
process.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import numpy as np
import pytest

import symopt
from symopt.sweep import ConfigError, ResultStore, StoreError, load_config, run_sweep
from symopt.sweep.config import RunSpec
from symopt.sweep.engine import plan_stacks, train_run, train_stack

from .test_member_plateau import stop_epoch  # Keras's counting, written out there
from .test_plateau import torch_plateau_lrs  # torch's documented algorithm, written out there

EPOCHS, N_TRAIN, N_TEST, BATCH = 10, 256, 200, 64
MODEL = {"sizes": [784, 16, 10], "dropout": 0.1}
RATES = [3e-3, 3e-2]
PLATEAU = {"factor": 0.5, "patience": 0, "threshold": 0.05, "cooldown": 1, "min_lr": 0.004}
STOPPING = {"patience": 2, "metric": "test_accuracy"}  # mode "max" follows from the metric
# float32 round-off of batched vs single matmuls over 40 steps (conditioning of a small MLP).
RTOL, ATOL = 1e-5, 1e-6


def _raw(data_dir: Path, **change) -> dict:
    return {"epochs": EPOCHS, "seeds": 2, "batch_size": BATCH, "model": MODEL,
            "data": {"n_train": N_TRAIN, "n_test": N_TEST, "dir": str(data_dir)},
            "optimizers": {"adam": {"learning_rate": RATES}}, "plateau": PLATEAU, "early_stopping": STOPPING,
            "stack_size": 4, **change}


@pytest.fixture(scope="module")
def trained(real_mnist_dir):
    """(specs, stacked results, unstacked results), member by member."""
    cfg = load_config(_raw(real_mnist_dir))
    specs = cfg.runs()
    tasks, refused = plan_stacks(specs, cfg.stack_size)
    assert refused == {} and [len(t) for t in tasks] == [4]
    stacked = train_stack({"members": [s.as_task() for s in tasks[0]]})
    single = [train_run(s.as_task()) for s in tasks[0]]
    return tasks[0], stacked, single


def _column(result: dict, name: str) -> list[float]:
    return [row[name] for row in result["history"]]


# ---------------------------------------------------------------------------- stacked = unstacked = reference
def test_stacked_members_record_their_unstacked_runs(trained) -> None:
    specs, stacked, single = trained
    for spec, mine, ref in zip(specs, stacked, single):
        label = f"lr {spec.hyperparameters['learning_rate']} seed {spec.seed}"
        assert mine["key"] == ref["key"] == spec.key
        assert mine["stopped_epoch"] == ref["stopped_epoch"], label
        assert [r["epoch"] for r in mine["history"]] == [r["epoch"] for r in ref["history"]], label
        for metric in ("train_loss", "test_loss", "test_accuracy"):
            np.testing.assert_allclose(_column(mine, metric), _column(ref, metric), rtol=RTOL, atol=ATOL,
                                       err_msg=f"{label}: {metric}")
        np.testing.assert_allclose(_column(mine, "learning_rate"), _column(ref, "learning_rate"), rtol=1e-6,
                                   err_msg=f"{label}: learning rates")
        np.testing.assert_allclose(mine["final_learning_rate"], ref["final_learning_rate"], rtol=1e-6)
    # The grid exercises what it should: a member stopped early while others trained every epoch,
    # and rates were reduced, one down to min_lr.
    stops = [r["stopped_epoch"] for r in single]
    assert any(0 < s < EPOCHS for s in stops) and 0 in stops
    finals = [r["final_learning_rate"] for r in single]
    assert any(f < s.hyperparameters["learning_rate"] for f, s in zip(finals, specs))
    assert any(f == pytest.approx(PLATEAU["min_lr"]) for f in finals)


def test_rates_and_stops_follow_the_torch_and_keras_rules(trained) -> None:
    specs, stacked, single = trained
    plateau = load_config(_raw(Path("."))).protocol["plateau"]
    for spec, results in zip(specs, zip(stacked, single)):
        for result in results:
            lr0 = spec.hyperparameters["learning_rate"]
            # Every recorded epoch stepped the plateau; the run's own test losses give its rates.
            after = [lrs[0] for lrs in torch_plateau_lrs(
                _column(result, "test_loss"), [lr0], factor=PLATEAU["factor"], patience=PLATEAU["patience"],
                threshold=PLATEAU["threshold"], threshold_mode=plateau["threshold_mode"], mode=plateau["mode"],
                cooldown=PLATEAU["cooldown"], min_lr=PLATEAU["min_lr"])]
            # An epoch trains with the rate left by the previous epoch's step.
            np.testing.assert_allclose(_column(result, "learning_rate"), [lr0, *after[:-1]], rtol=1e-6)
            np.testing.assert_allclose(result["final_learning_rate"], after[-1], rtol=1e-6)
            # Its accuracies give the stop epoch, and the history ends there.
            stop = stop_epoch(_column(result, "test_accuracy"), STOPPING["patience"], 0.0, "max")
            assert result["stopped_epoch"] == stop
            assert len(result["history"]) == (stop or EPOCHS)


def test_store_records_and_reports_the_stop_and_the_rates(trained, tmp_path) -> None:
    specs, stacked, _ = trained
    db = tmp_path / "plateau.db"
    with ResultStore(db, specs[0].protocol) as store:
        for spec, result in zip(specs, stacked):
            assert store.record(spec, result=result)
        runs = {r["run_key"]: r for r in store.runs()}
        doc = store.document()
        summary = store.summary()
    for spec, result in zip(specs, stacked):
        run = runs[spec.key]
        assert run["stopped_epoch"] == result["stopped_epoch"]
        assert run["final_learning_rate"] == result["final_learning_rate"]
        assert run["learning_rate"] == _column(result, "learning_rate")
        assert run["final_test_accuracy"] == result["history"][-1]["test_accuracy"]  # at the stop epoch
        label = f"adam learning_rate={spec.hyperparameters['learning_rate']:g}"
        entry = doc["runs"][f"{label}/{spec.seed}"]
        assert entry["stopped_epoch"] == result["stopped_epoch"]
        assert entry["learning_rate"] == _column(result, "learning_rate")
    assert "| run | stopped early | stop epochs (0: none) | final learning rate |" in summary
    stops = {s.hyperparameters["learning_rate"]: [] for s in specs}
    for spec, result in zip(specs, stacked):
        stops[spec.hyperparameters["learning_rate"]].append(result["stopped_epoch"])
    for rate, epochs in stops.items():
        early = sum(e > 0 for e in epochs)
        assert f"| adam learning_rate={rate:g} | {early} of 2 | {', '.join(map(str, epochs))} |" in summary

    # A schema-1 database (no such columns) reads as it is and is upgraded when a sweep opens it.
    old = tmp_path / "old.db"
    with ResultStore(old, specs[0].protocol) as store:
        store.record(specs[0], result=stacked[0])
    with sqlite3.connect(old) as conn:
        for table, column in (("runs", "stopped_epoch"), ("runs", "final_learning_rate"), ("epochs", "learning_rate")):
            conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    with ResultStore(old) as store:
        (run,) = store.runs()
        assert run["stopped_epoch"] is None and run["learning_rate"] == [None] * len(run["epoch"])
    with ResultStore(old, specs[0].protocol) as store:
        store.record(specs[1], result=stacked[1])
        got = {r["run_key"]: r for r in store.runs()}
    assert got[specs[0].key]["stopped_epoch"] is None
    assert got[specs[1].key]["stopped_epoch"] == stacked[1]["stopped_epoch"]
    with sqlite3.connect(old) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("2",)


# ---------------------------------------------------------------------------- protocol and config
def test_a_combined_rule_with_early_stopping_runs_one_run_per_task(tmp_path) -> None:
    """Muon on the MLP is combined with AdamW for the biases, and combine refuses members that
    freeze stack members on their own: such runs are planned one per task (and train as
    single models), not stacked into a task that would fail on the worker."""
    cfg = load_config(_raw(tmp_path, optimizers={"muon": {}, "adam": {}}))
    tasks, refused = plan_stacks(cfg.runs(), cfg.stack_size)
    assert set(refused) == {"muon"} and "stoppable" in refused["muon"]
    assert sorted((t[0].optimizer, len(t)) for t in tasks) == [("adam", 2), ("muon", 1), ("muon", 1)]


def test_other_settings_are_another_protocol(real_mnist_dir, tmp_path) -> None:
    cfg = load_config(_raw(real_mnist_dir))
    plain = load_config({k: v for k, v in _raw(real_mnist_dir).items() if k not in ("plateau", "early_stopping")})
    assert "plateau" not in plain.protocol  # configs without the tables keep their protocol and run keys
    assert {s.key for s in cfg.runs()}.isdisjoint(s.key for s in plain.runs())
    db = tmp_path / "sweep.db"
    with ResultStore(db, cfg.protocol):
        pass
    before = db.read_bytes()
    changed = _raw(real_mnist_dir, plateau={**PLATEAU, "factor": 0.25})
    with pytest.raises(StoreError, match=r"different protocol \(plateau: database has .*'factor': 0.5"):
        run_sweep(changed, db, scheduler="tcp://127.0.0.1:1", progress=False)
    with pytest.raises(StoreError, match=r"different protocol \(early_stopping: "):
        run_sweep(_raw(real_mnist_dir, early_stopping={"patience": 3}), db, scheduler="tcp://127.0.0.1:1",
                  progress=False)
    assert db.read_bytes() == before


@pytest.mark.parametrize("change, field", [
    ({"plateau": {"factor": 1.0}}, "plateau.factor"),
    ({"plateau": {"factor": "0.5"}}, "plateau.factor"),
    ({"plateau": {"patience": -1}}, "plateau.patience"),
    ({"plateau": {"patience": 1.5}}, "plateau.patience"),
    ({"plateau": {"threshold": -0.1}}, "plateau.threshold"),
    ({"plateau": {"threshold_mode": "relative"}}, "plateau.threshold_mode"),
    ({"plateau": {"mode": "down"}}, "plateau.mode"),
    ({"plateau": {"cooldown": True}}, "plateau.cooldown"),
    ({"plateau": {"min_lr": float("nan")}}, "plateau.min_lr"),
    ({"plateau": {"metric": "val_loss"}}, "plateau.metric"),
    ({"plateau": {"metric": "test_accuracy", "mode": "min"}}, "plateau.mode"),
    ({"plateau": {"lr": 0.1}}, "plateau.lr"),
    ({"plateau": 0.5}, "plateau"),
    ({"early_stopping": {"patience": 0}}, "early_stopping.patience"),
    ({"early_stopping": {"min_delta": -1}}, "early_stopping.min_delta"),
    ({"early_stopping": {"mode": "max"}}, "early_stopping.mode"),
    ({"early_stopping": {"metric": "accuracy"}}, "early_stopping.metric"),
    ({"early_stopping": {"restore_best": True}}, "early_stopping.restore_best"),
])
def test_bad_values_name_the_field(change, field) -> None:
    raw = {"epochs": 1, "data": {"n_train": 256}, "optimizers": ["sgd"], **change}
    with pytest.raises(ConfigError, match=rf"^config \(dict\): {field}: "):
        load_config(raw)


def test_cli_names_the_bad_field_in_one_line(tmp_path, capsys) -> None:
    from symopt.cli import main

    config = tmp_path / "sweep.toml"
    config.write_text('epochs = 1\n[data]\nn_train = 256\n[optimizers.sgd]\n[early_stopping]\npatience = 0\n')
    for command in ("sweep", "search"):
        assert main([command, str(config)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("symopt: error: ") and "\n" not in err, err
        assert "early_stopping.patience: must be an integer >= 1, got 0" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.toml"]  # nothing created


# ---------------------------------------------------------------------------- stacked search
@pytest.fixture(scope="module")
def thread_cluster():
    """A one-thread Dask worker in this process: it reuses the compiled functions the engine cached above."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                      silence_logs=logging.CRITICAL) as cluster:
        yield cluster.scheduler_address


def test_stacked_search_trials_record_their_unstacked_values(trained, real_mnist_dir, thread_cluster,
                                                             tmp_path) -> None:
    optuna = pytest.importorskip("optuna")
    from symopt.sweep.search import run_search, storage_url

    raw = _raw(real_mnist_dir, seeds=[0])
    del raw["optimizers"]
    raw["search"] = {"optimizer": "adam", "n_trials": 4, "sampler": "random", "sampler_seed": 3,
                     "metric": "test_loss", "space": {"learning_rate": {"low": 3e-3, "high": 3e-2, "log": True}}}
    from symopt.sweep import engine

    def stacked_runs() -> int:  # members trained by the worker's cached 4-member stacks
        return sum(e.runs for k, e in engine._COMPILED.items() if '"stack_size":4' in k)

    studies = {}
    for size in (4, 1):  # four trials asked at once and trained as one stack; then one trial per task
        storage = tmp_path / f"search{size}.db"
        before = stacked_runs()
        report = run_search(raw, storage, scheduler=thread_cluster, stack_size=size, progress=False, timeout=300)
        assert (report.complete, report.new_failed) == (4, 0)
        assert stacked_runs() - before == (4 if size == 4 else 0)
        study = optuna.load_study(study_name="adam-random", storage=storage_url(storage))
        studies[size] = {t.number: t for t in study.get_trials()}
    stacked, single = studies[4], studies[1]
    cfg = load_config(raw, require="search")
    for number, trial in stacked.items():
        other = single[number]
        assert trial.params == other.params  # the same draws: the random sampler's seeded sequence
        np.testing.assert_allclose(trial.value, other.value, rtol=RTOL, atol=ATOL)
        assert trial.user_attrs["stopped_epoch"] == other.user_attrs["stopped_epoch"]
        np.testing.assert_allclose(trial.user_attrs["final_learning_rate"], other.user_attrs["final_learning_rate"],
                                   rtol=1e-6)
        # ... and the value of that trial's run trained here, alone
        hyper = {**symopt.get("adam").hyperparameters, **trial.params}
        run = train_run(RunSpec("adam", hyper, 0, cfg.protocol, str(real_mnist_dir)).as_task())
        np.testing.assert_allclose(trial.value, run["history"][-1]["test_loss"], rtol=RTOL, atol=ATOL)
        assert trial.user_attrs["stopped_epoch"] == [run["stopped_epoch"]]
