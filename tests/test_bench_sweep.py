"""bench-mnist is a front over the sweep engine: one way to train the mnist-optimizers protocol.

On a small protocol (512 training and 256 test images, 2 seeds, 2 epochs) three rules that
each need something beyond a plain rule: Muon (weight matrices only, combined with AdamW for
the biases; its seeds stacked), Prodigy (refuses seed stacks: seed by seed) and Schedule-Free
AdamW (evaluated at its point x; stacked). Every (rule, seed) that ``bench`` records must equal

* an independent single-model run of that seed: a ``Trainer`` compiled here, reset to the
  seed with :func:`symopt.mnist_runs.reset_run` (float32 round-off of batched vs single
  matmuls: rtol 1e-5; the accuracy may flip one near-tie image), and
* what ``symopt sweep`` records for the equivalent configuration (:func:`mo.sweep_config`) on
  a Dask worker (read through ``ResultStore.document()``, the bench results' format).

The shipped ``experiments/sweeps/mnist-optimizers.toml`` must be the configuration bench
builds for the full protocol, and the shipped results files must stay readable.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import symopt
from symopt.data import load_mnist, subset
from symopt.experiments import mnist_optimizers as mo
from symopt.mnist_runs import evaluate_at_eval_params, make_optimizer, reset_run, with_others
from symopt.nn import MLP
from symopt.sweep import ResultStore, load_config, run_sweep
from symopt.train import Trainer

RULES = ["muon", "prodigy", "schedule_free_adamw"]
SEEDS, EPOCHS, BATCH, N_TRAIN, N_TEST = 2, 2, 128, 512, 256
ROOT = Path(__file__).resolve().parents[1]
#: torch.optim.AdamW's defaults, written out independently of the code under test.
TORCH_ADAMW = {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8, "weight_decay": 0.01}


@pytest.fixture(scope="module")
def bench_doc(real_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    mp = pytest.MonkeyPatch()
    mp.setenv("SYMOPT_DATA", str(real_mnist_dir))
    try:
        path = mo.bench(RULES, SEEDS, EPOCHS, BATCH, tmp_path_factory.mktemp("bench") / "r.json", None, False,
                        n_train=N_TRAIN, n_test=N_TEST)
    finally:
        mp.undo()
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def separate(real_mnist_dir: Path) -> dict[str, list]:
    """"rule/seed" -> the history of a plain single-model run; one compiled Trainer per rule."""
    data = subset(load_mnist(real_mnist_dir), N_TRAIN, 0, n_test=N_TEST)
    out = {}
    for name in RULES:
        model = MLP([784, 100, 100, 100, 100, 10], activation="relu", init="he", dropout=0.2,
                    batchnorm=False, dtype="float32", seed=0)
        opt = make_optimizer(name, with_others(name, symopt.get(name).hyperparameters), model.params)
        initial = opt.state_dict()
        trainer = Trainer(model, opt, data.x_train, data.y_train, data.x_test, data.y_test, batch_size=BATCH)
        evaluate_at_eval_params(trainer, opt)
        for seed in range(SEEDS):
            reset_run(model, opt, initial, seed, MLP)
            out[f"{name}/{seed}"] = trainer.fit(EPOCHS, seed)
    return out


@pytest.fixture(scope="module")
def sweep_doc(real_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    config = mo.sweep_config(RULES, SEEDS, EPOCHS, BATCH, n_train=N_TRAIN, n_test=N_TEST)
    config["data"]["dir"] = str(real_mnist_dir)
    db = tmp_path_factory.mktemp("sweep") / "sweep.db"
    report = run_sweep(config, db, n_workers=1, progress=False, timeout=600)
    assert (report.done, report.failed) == (len(RULES) * SEEDS, 0)
    with ResultStore(db) as store:
        return store.document()


def _assert_same(got: dict, want: dict, label: str) -> None:
    for metric in ("train_loss", "test_loss"):
        np.testing.assert_allclose(got[metric], want[metric], rtol=1e-5, err_msg=f"{label} {metric}")
    # a count over the 256 test images: batched and single float32 matmuls may flip one near-tie argmax
    np.testing.assert_allclose(got["test_accuracy"], want["test_accuracy"], rtol=0, atol=1.01 / N_TEST,
                               err_msg=f"{label} test_accuracy")


def test_bench_runs_equal_separate_runs(bench_doc, separate) -> None:
    runs = bench_doc["runs"]
    assert set(runs) == set(separate) == {f"{n}/{s}" for n in RULES for s in range(SEEDS)}
    for key, history in separate.items():
        want = {m: [getattr(r, m) for r in history] for m in ("train_loss", "test_loss", "test_accuracy")}
        assert runs[key]["epoch"] == [1, 2]
        _assert_same(runs[key], want, key)
    # the positive control: the seeds differ, so equality above is per seed
    assert runs["muon/0"]["train_loss"] != runs["muon/1"]["train_loss"]
    # stacked where the rule allows it, Prodigy seed by seed
    assert [runs[f"{n}/0"].get("stacked_seeds") for n in RULES] == [SEEDS, None, SEEDS]
    assert bench_doc["hyperparameters"]["muon"]["others"]["hyperparameters"] == TORCH_ADAMW


def test_sweep_records_the_bench_numbers(bench_doc, sweep_doc) -> None:
    """``symopt sweep`` on bench's configuration: the same runs, hyperparameters and numbers."""
    assert set(sweep_doc["runs"]) == set(bench_doc["runs"])
    assert sweep_doc["hyperparameters"] == bench_doc["hyperparameters"]
    for key, run in bench_doc["runs"].items():
        assert sweep_doc["runs"][key]["epoch"] == run["epoch"]
        _assert_same(sweep_doc["runs"][key], run, key)


def test_bench_on_dask_workers_records_the_same_runs(bench_doc, real_mnist_dir, tmp_path, monkeypatch) -> None:
    """``workers=1``: the same tasks on a local Dask worker, the same runs in the results file."""
    monkeypatch.setenv("SYMOPT_DATA", str(real_mnist_dir))
    path = mo.bench(["schedule_free_adamw"], SEEDS, EPOCHS, BATCH, tmp_path / "r.json", None, False,
                    n_train=N_TRAIN, n_test=N_TEST, workers=1)
    doc = json.loads(path.read_text())
    assert doc["protocol"] == bench_doc["protocol"]
    assert set(doc["runs"]) == {f"schedule_free_adamw/{s}" for s in range(SEEDS)}
    for key, run in doc["runs"].items():
        assert run["stacked_seeds"] == SEEDS
        _assert_same(run, bench_doc["runs"][key], key)
    # where the time went, per run (benchmarks/protocol_time.py): the worker's address, its
    # compile (given to the stack's first member) and the training
    runs = [doc["runs"][f"schedule_free_adamw/{s}"] for s in range(SEEDS)]
    assert all(r["worker"].startswith("tcp://") and r["train_seconds"] > 0 for r in runs)
    assert runs[0]["compile_seconds"] > 0 and all(r["compile_seconds"] == 0 for r in runs[1:])


def test_a_complete_results_file_trains_nothing(bench_doc, tmp_path, monkeypatch) -> None:
    """A results file holding the runs is complete: nothing is trained, nothing written."""
    path = tmp_path / "r.json"
    path.write_text(json.dumps(bench_doc))
    before = path.read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("symopt.sweep.engine.train_run", no_training)
    monkeypatch.setattr("symopt.sweep.engine.train_stack", no_training)
    mo.bench(RULES, SEEDS, EPOCHS, BATCH, path, None, False, n_train=N_TRAIN, n_test=N_TEST)
    assert path.read_text() == before


def test_shipped_sweep_config_is_the_bench_protocol() -> None:
    """experiments/sweeps/mnist-optimizers.toml is what `symopt bench-mnist` (all defaults) trains, and the
    settings recorded in the shipped results file are its settings."""
    shipped = load_config(ROOT / "experiments" / "sweeps" / "mnist-optimizers.toml")
    built = load_config(mo.sweep_config(mo.DEFAULT_OPTIMIZERS, mo.DEFAULT_SEEDS, mo.DEFAULT_EPOCHS,
                                        mo.DEFAULT_BATCH_SIZE))
    assert (shipped.protocol, shipped.seeds, shipped.grid, shipped.stack_size) == (
        built.protocol, built.seeds, built.grid, built.stack_size)
    recorded = json.loads((ROOT / "experiments" / "results" / "mnist-optimizers.json").read_text())
    assert {k: recorded["protocol"][k] for k in ("epochs", "batch_size", "model")} == {
        k: shipped.protocol[k] for k in ("epochs", "batch_size", "model")}
    assert list(shipped.grid) == list(recorded["hyperparameters"])
    for name, stored in recorded["hyperparameters"].items():
        # (the file predates Adam's epsilon_hat option, which defaults to off)
        assert {k: shipped.grid[name][0][k] for k in stored} == stored, name


@pytest.mark.parametrize("name", ["mnist-optimizers.json", "mnist-optimizers-modern.json"])
def test_shipped_results_stay_readable(name: str, tmp_path) -> None:
    path = ROOT / "experiments" / "results" / name
    text = mo.summarize(path)
    assert "| optimizer | seeds |" in text and "paired t" in text
    assert mo.compare(path) and mo.table(path)
    if name == "mnist-optimizers-modern.json":
        assert mo.plot(path, tmp_path)[0].stat().st_size > 10_000
