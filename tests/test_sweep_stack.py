"""Stacked sweeps: runs of one compiled structure trained together, each recorded as its own run.

The reference is the same sweep with ``stack_size = 1`` (one run per task, a single-model
``Trainer`` per run, the path ``tests/test_sweep_engine.py`` checks against direct
training). A stacked sweep must record the same runs under the same keys with the same
per-epoch numbers, to float32 round-off of the batched matmuls (rtol 1e-5), whatever the
stack size: 4 (one task per optimiser), 3 (a task of 3 and a single leftover run) and, on
resume, 2. The grid holds a member that diverges (SGD at learning rate 1e30): it must be
recorded as its unstacked run records it (non-finite losses) and leave its stack-mates
unaffected.

One module-wide ``LocalCluster`` of one process worker runs every sweep, so compiled
functions are reused across them (one per optimiser and stack size); tiny data and a
784-16-10 MLP keep each compilation and run short.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

import symopt
from symopt.sweep import ConfigError, ResultStore, load_config, run_sweep
from symopt.sweep.engine import _placement, plan_stacks

EPOCHS, SEEDS, N_TRAIN, N_TEST, BATCH = 2, 2, 512, 200, 64
MODEL = {"sizes": [784, 16, 10], "dropout": 0.1}
GRID = {"adam": {"learning_rate": [1e-3, 3e-3]}, "sgd": {"learning_rate": [0.1, 1e30]}}
DIVERGING = ("sgd", 1e30)
# float32 round-off of batched vs single matmuls over 16 steps (conditioning of a small MLP).
RTOL, ATOL = 1e-5, 1e-6


def _config(data_dir: Path, **change) -> dict:
    return {"epochs": EPOCHS, "seeds": SEEDS, "batch_size": BATCH, "model": MODEL,
            "data": {"n_train": N_TRAIN, "n_test": N_TEST, "dir": str(data_dir)}, "optimizers": GRID, **change}


def _runs(db: Path) -> dict[str, dict]:
    with ResultStore(db) as store:
        return {r["run_key"]: r for r in store.runs("done")}


def _assert_same_numbers(got: dict[str, dict], want: dict[str, dict]) -> None:
    assert sorted(got) == sorted(want)
    for key, run in want.items():
        mine = got[key]
        assert (mine["optimizer"], mine["hyperparameters"], mine["seed"]) == (
            run["optimizer"], run["hyperparameters"], run["seed"])
        assert mine["epoch"] == run["epoch"] == list(range(1, EPOCHS + 1))
        label = f"{run['optimizer']} {run['hyperparameters']['learning_rate']} seed {run['seed']}"
        for metric in ("train_loss", "test_loss", "test_accuracy"):
            np.testing.assert_allclose(mine[metric], run[metric], rtol=RTOL, atol=ATOL, equal_nan=True,
                                       err_msg=f"{label}: {metric}")
        for final, metric in (("final_train_loss", "train_loss"), ("final_test_accuracy", "test_accuracy")):
            assert (mine[final] is None) == (run[final] is None), label  # NaN is stored as NULL
            if mine[final] is not None:
                assert mine[final] == mine[metric][-1]


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    from symopt.sweep.engine import WORKER_ENV, _environment

    with _environment(WORKER_ENV), LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                                host="127.0.0.1", dashboard_address=None,
                                                silence_logs=logging.CRITICAL) as c:
        yield c.scheduler_address


@pytest.fixture(scope="module")
def dbs(cluster, real_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The reference sweep (one run per task) and the stacked ones, into their databases."""
    root = tmp_path_factory.mktemp("stack")
    out = {}
    for label, size in (("reference", None), ("stack4", 4)):
        out[label] = root / f"{label}.db"
        report = run_sweep(_config(real_mnist_dir), out[label], scheduler=cluster, progress=False,
                           stack_size=size, timeout=600)
        assert (report.total, report.done, report.failed, report.skipped) == (8, 8, 0, 0)
    out["stack3"] = root / "stack3.db"  # the config's own field this time
    report = run_sweep(_config(real_mnist_dir, stack_size=3), out["stack3"], scheduler=cluster, progress=False,
                       timeout=600)
    assert (report.done, report.failed) == (8, 0)
    return out


def test_reference_has_a_diverged_run(dbs) -> None:
    """The positive control: the 1e30 learning rate diverges in the unstacked sweep, the others do not."""
    for run in _runs(dbs["reference"]).values():
        diverged = (run["optimizer"], run["hyperparameters"]["learning_rate"]) == DIVERGING
        assert np.isnan(run["train_loss"][-1]) == diverged
        assert np.isfinite(run["train_loss"]).all() != diverged


@pytest.mark.parametrize("label", ["stack4", "stack3"])
def test_stacked_sweep_records_the_unstacked_numbers(dbs, label: str) -> None:
    _assert_same_numbers(_runs(dbs[label]), _runs(dbs["reference"]))


def test_stack4_trained_each_optimizer_as_one_task(dbs) -> None:
    """Each optimiser's 4 runs are one task: one compilation, one share of the task's time each."""
    conn = sqlite3.connect(dbs["stack4"])
    rows = conn.execute("SELECT optimizer, COUNT(*), COUNT(DISTINCT train_seconds), SUM(compile_seconds > 0) "
                        "FROM runs GROUP BY optimizer ORDER BY optimizer").fetchall()
    conn.close()
    assert rows == [("adam", 4, 1, 1), ("sgd", 4, 1, 1)]


def test_resume_reruns_only_the_missing_members(dbs, cluster, real_mnist_dir, tmp_path) -> None:
    """Four runs lost from a stacked database: only they are trained (adam's three as a stack of 3, sgd's
    diverging one alone: both compiled functions are cached from the sweeps before); the four kept rows
    are untouched, and all eight equal the reference."""
    db = tmp_path / "resume.db"
    shutil.copy(dbs["stack4"], db)
    cfg = load_config(_config(real_mnist_dir))
    lost = [s for s in cfg.runs() if (s.optimizer, s.hyperparameters["learning_rate"], s.seed)
            in {("adam", 1e-3, 1), ("adam", 3e-3, 0), ("adam", 3e-3, 1), ("sgd", 1e30, 1)}]
    assert len(lost) == 4
    tasks, refused = plan_stacks(lost, 4)
    assert [[(s.optimizer, s.seed) for s in t] for t in tasks] == [[("adam", 1), ("adam", 0), ("adam", 1)],
                                                                   [("sgd", 1)]]
    assert refused == {}
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.executemany("DELETE FROM runs WHERE run_key = ?", [(s.key,) for s in lost])
    conn.commit()
    kept = conn.execute("SELECT * FROM runs ORDER BY run_key").fetchall()
    conn.close()
    report = run_sweep(cfg, db, scheduler=cluster, progress=False, stack_size=4, timeout=600)
    assert (report.total, report.skipped, report.done, report.failed) == (8, 4, 4, 0)
    conn = sqlite3.connect(db)
    after = conn.execute("SELECT * FROM runs ORDER BY run_key").fetchall()
    conn.close()
    assert [r for r in after if r[1] not in {s.key for s in lost}] == kept  # timings and run ids included
    _assert_same_numbers(_runs(db), _runs(dbs["reference"]))
    report = run_sweep(cfg, db, scheduler=cluster, progress=False, stack_size=4, timeout=60)
    assert (report.skipped, report.done) == (8, 0)


# ---------------------------------------------------------------------------- planning (no training)
def test_plan_groups_by_structure_and_cuts_uneven_tasks() -> None:
    cfg = load_config({"epochs": 1, "seeds": 3, "optimizers": {
        "sgd": {"learning_rate": [0.1, 0.2]},
        "adam": {"amsgrad": [False, True], "learning_rate": [1e-3, 2e-3]},
        "momentum": {"clip_norm": [1.0, 2.0]},
    }})
    tasks, refused = plan_stacks(cfg.runs(), 4)
    assert refused == {}
    described = [[(s.optimizer, s.hyperparameters.get("amsgrad"), s.hyperparameters.get("clip_norm"),
                   s.hyperparameters["learning_rate"], s.seed) for s in t] for t in tasks]
    # sgd: 2 rates x 3 seeds -> 4 + 2; adam: amsgrad is structure (two groups of 2 rates x 3 seeds);
    # momentum: clip_norm is one scalar per stack, so its values are separate groups of 3 seeds
    assert [len(t) for t in tasks] == [4, 2, 4, 2, 4, 2, 3, 3]
    assert described[0] == [("sgd", None, None, 0.1, 0), ("sgd", None, None, 0.1, 1), ("sgd", None, None, 0.1, 2),
                            ("sgd", None, None, 0.2, 0)]
    for task in described:
        assert len({d[:3] for d in task}) == 1  # one optimizer, amsgrad and clip_norm per task
    assert sorted(d for t in described for d in t) == sorted(
        (s.optimizer, s.hyperparameters.get("amsgrad"), s.hyperparameters.get("clip_norm"),
         s.hyperparameters["learning_rate"], s.seed) for s in cfg.runs())
    assert plan_stacks(cfg.runs(), 1) == ([[s] for s in cfg.runs()], {})
    # a task is placed by its first run; a worker gets whole structures where it can
    placement = _placement(tasks, ["tcp://a", "tcp://b"])
    assert set(placement) == {t[0].key for t in tasks}
    assert sorted(list(placement.values()).count(w) for w in ("tcp://a", "tcp://b")) == [4, 4]


def test_rules_that_refuse_stacks_keep_one_run_per_task() -> None:
    cfg = load_config({"epochs": 1, "seeds": 2, "optimizers": {"sam": {}, "prodigy": {}, "sgd": {}}})
    tasks, refused = plan_stacks(cfg.runs(), 8)
    assert sorted(refused) == ["prodigy", "sam"]
    assert "seed stack" in refused["sam"] and "seed stack" in refused["prodigy"]
    assert [(t[0].optimizer, len(t)) for t in tasks] == [("sam", 1), ("sam", 1), ("prodigy", 1), ("prodigy", 1),
                                                          ("sgd", 2)]


# ---------------------------------------------------------------------------- bad stack_size
@pytest.mark.parametrize("value", [0, -1, 2.5, "4", True])
def test_bad_stack_size_in_the_config_is_refused(value) -> None:
    with pytest.raises(ConfigError, match=r"config \(dict\): stack_size: must be an integer >= 1, got "):
        load_config({"epochs": 1, "stack_size": value, "optimizers": ["sgd"]})


def test_stack_size_is_not_part_of_the_protocol_or_the_keys() -> None:
    base = {"epochs": 1, "seeds": 2, "optimizers": ["sgd"]}
    one, four = load_config(base), load_config({**base, "stack_size": 4})
    assert (one.stack_size, four.stack_size) == (1, 4)
    assert one.protocol == four.protocol
    assert [s.key for s in one.runs()] == [s.key for s in four.runs()]


@pytest.mark.parametrize("value", [0, 1.5, "2"])
def test_bad_stack_size_argument_is_refused_before_anything(tmp_path: Path, value) -> None:
    db = tmp_path / "s.db"
    with pytest.raises(ValueError, match=r"stack_size must be a positive integer .*nothing was run"):
        run_sweep({"epochs": 1, "optimizers": ["sgd"]}, db, stack_size=value, progress=False)
    assert not db.exists()


def test_cli_refuses_a_bad_stack_size(tmp_path: Path, capsys) -> None:
    from symopt.cli import main

    config = tmp_path / "s.toml"
    config.write_text("epochs = 1\n[optimizers.sgd]\n")
    with pytest.raises(SystemExit) as exc:
        main(["sweep", str(config), "--stack-size", "0", "--no-progress"])
    assert exc.value.code == 2
    assert "--stack-size" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["s.toml"]


# ---------------------------------------------------------------------------- SeedStack.reset
def test_seed_stack_reset_loads_fresh_members_with_repeated_seeds() -> None:
    from symopt.nn import MLP
    from symopt.seeds import SeedStack

    def make(seed: int):
        return MLP([6, 5, 3], dropout=0.2, seed=seed)

    stack = SeedStack(make, [0, 1, 2])
    for p in stack.params:
        p.set_value(p.get_value() + 1.0)  # as after training
    stack.reset(make, [7, 3, 7])
    assert stack.seeds == [7, 3, 7]
    for i, seed in enumerate([7, 3, 7]):
        fresh = make(seed)
        for got, want in zip(stack.values(i), fresh.params):
            np.testing.assert_array_equal(got, want.get_value())
        assert stack.buffer_values(i) == [b.get_value() for b in fresh.buffers]
    with pytest.raises(ValueError, match="got 2 seeds for a stack of 3 members"):
        stack.reset(make, [1, 2])
    with pytest.raises(ValueError, match="differs in structure"):
        stack.reset(lambda s: MLP([6, 4, 3], dropout=0.2, seed=s), [0, 1, 2])
    assert stack.seeds == [7, 3, 7]  # nothing changed by the refusals
    assert symopt.SGD(stack.params, learning_rate=[0.1, 0.2, 0.3]).stack_size == 3
