"""``symopt search``: Optuna trials on Dask workers, stored in Optuna's SQLite storage, resumable."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from symopt.sweep import load_config  # noqa: E402
from symopt.sweep.config import RunSpec  # noqa: E402
from symopt.sweep.engine import train_run  # noqa: E402
from symopt.sweep.search import run_search, search_summary, storage_url  # noqa: E402


def _config(data_dir: Path, sampler: str = "random") -> dict:
    return {"epochs": 1, "seeds": [0, 1], "batch_size": 64, "model": {"sizes": [784, 32, 10], "dropout": 0.1},
            "data": {"n_train": 2000, "n_test": 500, "dir": str(data_dir)},
            "search": {"optimizer": "sgd", "n_trials": 3, "sampler": sampler, "sampler_seed": 7,
                       "space": {"learning_rate": {"low": 1e-3, "high": 0.5, "log": True}},
                       "fixed": {"weight_decay": 1e-4}}}


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.CRITICAL) as c:
        yield c.scheduler_address


def _complete(study) -> list:
    return [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]


def test_search_spreads_trials_resumes_and_values_are_real(cluster, real_mnist_dir, tmp_path) -> None:
    storage = tmp_path / "search.db"
    raw = _config(real_mnist_dir)
    report = run_search(raw, storage, scheduler=cluster, progress=False, timeout=240)
    assert (report.complete, report.new_complete, report.new_failed) == (3, 3, 0)
    study = optuna.load_study(study_name="sgd-random", storage=storage_url(storage))
    first = {t.number: (t.params, t.value) for t in _complete(study)}
    assert len(first) == 3
    workers = {w for t in _complete(study) for w in t.user_attrs["workers"]}
    assert len(workers) == 2  # trials (one task per seed) ran on both workers

    # A client killed mid-trial leaves a RUNNING trial; the next session fails it and goes on to 5 complete.
    study.ask()
    report = run_search(raw, storage, scheduler=cluster, n_trials=5, progress=False, timeout=240)
    assert (report.complete, report.new_complete) == (5, 2)
    study = optuna.load_study(study_name="sgd-random", storage=storage_url(storage))
    states = [t.state for t in study.get_trials()]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 5
    assert states.count(optuna.trial.TrialState.FAIL) == 1 and optuna.trial.TrialState.RUNNING not in states
    again = {t.number: (t.params, t.value) for t in _complete(study)}
    assert {n: again[n] for n in first} == first  # earlier trials untouched
    # resumed draws are new ones, not a replay of the first session's
    rates = [p["learning_rate"] for p, _ in again.values()]
    assert len(set(rates)) == 5 and all(1e-3 <= r <= 0.5 for r in rates)

    # a trial's value is the mean over its seeds of the final test accuracy of that training, run here
    best = study.best_trial
    cfg = load_config(raw, require="search")
    hyper = {"learning_rate": best.params["learning_rate"], "weight_decay": 1e-4}
    accs = [train_run(RunSpec("sgd", hyper, seed, cfg.protocol, str(real_mnist_dir)).as_task())["history"][-1][
        "test_accuracy"] for seed in (0, 1)]
    assert best.value == sum(accs) / 2
    assert best.user_attrs["test_accuracy"] == [[a] for a in accs]
    assert report.best_value == best.value
    text = search_summary(storage, "sgd-random")
    assert f"| {best.number} | {best.value:.4f} |" in text and "5 complete trial(s), 1 failed" in text

    # nothing more to do: no cluster needed
    report = run_search(raw, storage, scheduler="tcp://127.0.0.1:1", n_trials=5, progress=False)
    assert report.new_complete == 0

    # another protocol under the same study name is refused, the storage is unchanged
    before = storage.read_bytes()
    with pytest.raises(ValueError, match="made with a different protocol;"):
        run_search({**raw, "epochs": 2}, storage, scheduler=cluster, progress=False)
    assert storage.read_bytes() == before


def test_tpe_study_in_the_same_storage(cluster, real_mnist_dir, tmp_path) -> None:
    storage = tmp_path / "search.db"
    report = run_search(_config(real_mnist_dir, sampler="tpe"), storage, scheduler=cluster, n_trials=2,
                        progress=False, timeout=240)
    assert report.study == "sgd-tpe" and report.complete == 2
    assert 0.0 < report.best_value <= 1.0 and set(report.best_params) == {"learning_rate"}
