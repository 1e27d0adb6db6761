"""The mnist-optimizers experiment: quick run, resume, atomic writes, protocol checks, determinism."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import symopt
from symopt._io import file_lock
from symopt.experiments import mnist_optimizers as mo
from symopt.experiments import run_experiment
from symopt.mnist_runs import evaluate_at_eval_params, set_rule_hyperparameter, with_others
from symopt.seeds import SeedTrainer
from symopt.train import Trainer

QUICK_DATA = {"n_train": mo.QUICK["n_train"], "n_test": mo.QUICK["n_test"]}


@pytest.fixture(scope="module")
def quick(real_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], str]:
    mp = pytest.MonkeyPatch()
    mp.setenv("SYMOPT_DATA", str(real_mnist_dir))
    out = tmp_path_factory.mktemp("mnist_optimizers")
    try:
        yield run_experiment("mnist-optimizers", quick=True, results_dir=out, figures_dir=out)
    finally:
        mp.undo()


def _bench(path: Path, optimizers: list[str], seeds: int, first_seed: int = 0, epochs: int = 1,
           vectorize: bool = False) -> Path:
    return mo.bench(optimizers, seeds, epochs, 128, path, None, False, first_seed=first_seed, vectorize=vectorize,
                    **QUICK_DATA)


@pytest.fixture(scope="module")
def sequential(quick, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The quick protocol trained one seed after another (the quick run itself stacks them)."""
    path = tmp_path_factory.mktemp("sequential") / "mnist-optimizers-quick.json"
    return json.loads(_bench(path, mo.QUICK["optimizers"], mo.QUICK["seeds"]).read_text())["runs"]


def test_stacked_seeds_equal_sequential_runs(quick, sequential):
    """bench-mnist's default (all seeds in one compiled step) gives each seed's sequential results."""
    stacked = json.loads(quick[0].read_text())["runs"]
    assert set(stacked) == set(sequential)
    for key, run in stacked.items():
        assert run["stacked_seeds"] == mo.QUICK["seeds"] and "stacked_seeds" not in sequential[key]
        for metric in ("train_loss", "test_loss"):
            np.testing.assert_allclose(run[metric], sequential[key][metric], rtol=1e-5, err_msg=f"{key} {metric}")
        # Batched and single float32 matmuls round differently; that may flip one near-tie argmax.
        np.testing.assert_allclose(run["test_accuracy"], sequential[key]["test_accuracy"], rtol=0,
                                   atol=1.01 / QUICK_DATA["n_test"], err_msg=f"{key} test_accuracy")


def test_quick_results_structure_and_figure(quick, tmp_path):
    results, figures, summary = quick
    assert results.name == "mnist-optimizers-quick.json"
    doc = json.loads(results.read_text())
    assert doc["protocol"]["epochs"] == 1 and doc["protocol"]["batch_size"] == 128
    assert doc["protocol"]["model"]["sizes"] == [784, 100, 100, 100, 100, 10]
    assert set(doc["runs"]) == {"sgd/0", "sgd/1", "adam/0", "adam/1"}
    assert doc["hyperparameters"]["sgd"]["learning_rate"] == 0.01
    assert doc["hyperparameters"]["adam"]["beta1_decay"] == 1 - 1e-8
    for run in doc["runs"].values():
        for metric in ("train_loss", "test_loss", "test_accuracy", "seconds"):
            assert len(run[metric]) == 1 and np.isfinite(run[metric]).all()
        # accuracy is a count over the 1,000 test images
        assert abs(run["test_accuracy"][0] * 1000 - round(run["test_accuracy"][0] * 1000)) < 1e-9
    # different seeds give different runs
    assert doc["runs"]["adam/0"]["train_loss"] != doc["runs"]["adam/1"]["train_loss"]
    # the summary's numbers are the plain mean and sample std of the raw per-seed values
    acc = [doc["runs"][f"adam/{s}"]["test_accuracy"][-1] for s in (0, 1)]
    assert f"{100 * np.mean(acc):.2f} ± {100 * np.std(acc, ddof=1):.2f}" in summary
    assert len(figures) == 1 and figures[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # figures from the results file alone
    again = mo.plot(results, tmp_path)
    assert again[0].exists() and again[0].stat().st_size > 10_000


def test_finished_runs_are_skipped(quick, monkeypatch):
    results = quick[0]
    before = results.read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(Trainer, "__init__", no_training)
    monkeypatch.setattr(SeedTrainer, "__init__", no_training)
    for vectorize in (False, True):
        assert _bench(results, ["sgd", "adam"], seeds=2, vectorize=vectorize) == results
    assert results.read_text() == before


def test_crash_keeps_finished_runs_and_resume_is_deterministic(sequential, tmp_path, monkeypatch):
    """A run killed mid-way leaves a valid file with the finished runs; resuming trains only the rest,
    and a seed trained on a freshly compiled function equals the same seed trained after another seed."""
    path = tmp_path / "partial.json"
    real_fit = Trainer.fit
    calls = []

    def crashing_fit(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", crashing_fit)
    with pytest.raises(KeyboardInterrupt):
        _bench(path, ["sgd"], seeds=2)
    doc = json.loads(path.read_text())  # valid JSON, not truncated
    assert set(doc["runs"]) == {"sgd/0"}
    assert [p.name for p in tmp_path.iterdir()] == ["partial.json"]  # no temporary file left behind

    calls.clear()
    monkeypatch.setattr(Trainer, "fit", lambda self, *a, **k: (calls.append(a), real_fit(self, *a, **k))[1])
    _bench(path, ["sgd"], seeds=2)
    assert len(calls) == 1 and calls[0][1] == 1  # only seed 1 was trained
    doc = json.loads(path.read_text())
    for seed in (0, 1):
        for metric in ("train_loss", "test_loss", "test_accuracy"):
            assert doc["runs"][f"sgd/{seed}"][metric] == sequential[f"sgd/{seed}"][metric], (seed, metric)


def _fake_run(name: str, seed: int) -> dict:
    return {"optimizer": name, "seed": seed, "epoch": [1], "train_loss": [0.5], "test_loss": [0.4],
            "test_accuracy": [0.9], "seconds": [1.0], "finished": "now"}


def test_side_by_side_writers_keep_each_others_runs(tmp_path):
    """Two bench-mnist processes on one results file: a writer waits for the other's read-modify-write,
    so neither overwrites the runs the other added (without the lock the child would write at once)."""
    path = tmp_path / "shared.json"
    protocol = mo._protocol(1, 128, mo.QUICK["n_train"], mo.QUICK["n_test"])
    child = textwrap.dedent(f"""
        from pathlib import Path
        from symopt.experiments import mnist_optimizers as mo
        print("writing", flush=True)
        mo._record(Path({str(path)!r}), {protocol!r}, "adam", {{"learning_rate": 0.001}}, 1.0,
                   [{_fake_run("adam", 5)!r}], False)
    """)
    with file_lock(path):
        proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            assert proc.stdout.readline().strip() == "writing"
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(timeout=1.5)  # blocked on the lock
            doc = mo._new_document(protocol)
            doc["hyperparameters"]["sgd"] = {"learning_rate": 0.01}
            doc["runs"]["sgd/0"] = _fake_run("sgd", 0)
            mo._common.write_json(path, doc)
        except BaseException:
            proc.kill()
            raise
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    doc = json.loads(path.read_text())
    assert set(doc["runs"]) == {"sgd/0", "adam/5"}
    assert set(doc["hyperparameters"]) == {"sgd", "adam"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.json"]


def test_protocol_mismatch_is_refused(quick):
    with pytest.raises(ValueError, match="different protocol.*epochs: file has 1, this run 2"):
        _bench(quick[0], ["sgd"], seeds=1, epochs=2)
    with pytest.raises(ValueError, match="different protocol"):
        mo.bench(["sgd"], 1, 1, 64, quick[0], None, False, **QUICK_DATA)


def test_unknown_optimizer_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(symopt.UnknownOptimizerError, match="unknown optimizer 'adamm'.*Did you mean 'adam'"):
        _bench(tmp_path / "r.json", ["sgd", "adamm"], seeds=1)
    assert not (tmp_path / "r.json").exists()
    from symopt.cli import main

    assert main(["bench-mnist", "--optimizers", "sgd,nope", "--results", str(tmp_path / "r.json")]) == 2
    assert "unknown optimizer 'nope'" in capsys.readouterr().err


def test_lbfgs_is_refused_with_its_kind(tmp_path, capsys):
    """lbfgs is registered (full-batch kind) but cannot train on mini-batches: one clear error, before any data."""
    with pytest.raises(symopt.NotARuleError, match=r"bench-mnist: 'lbfgs' \(symopt.LBFGS\) is not a per-parameter rule"):
        _bench(tmp_path / "r.json", ["sgd", "lbfgs"], seeds=1)
    assert not (tmp_path / "r.json").exists()
    from symopt.cli import main

    assert main(["bench-mnist", "--optimizers", "lbfgs", "--results", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "full-batch, needs loss" in err and "LBFGS(params, ...).updates(loss)" in err


def test_bad_stack_size_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="stack_size must be a positive integer, got 0"):
        mo.bench(["sgd"], 2, 1, 128, tmp_path / "r.json", None, False, vectorize=True, stack_size=0, **QUICK_DATA)
    assert not (tmp_path / "r.json").exists()


# ---------------------------------------------------------------------------- the rules beyond the seed's
NEW_DATA = {"n_train": 1024, "n_test": 500}
NEW_RULES = ["muon", "prodigy", "schedule_free_adamw"]
#: torch.optim.AdamW's defaults (lr, betas, eps, weight_decay), written out independently of the module.
TORCH_ADAMW = {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8, "weight_decay": 0.01}


@pytest.fixture(scope="module")
def new_rules(real_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Muon (combined with AdamW), Prodigy (refuses seed stacks) and Schedule-Free AdamW, 2 seeds x 1 epoch,
    stacked where the rule allows, and Muon once more seed by seed."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SYMOPT_DATA", str(real_mnist_dir))
    out = tmp_path_factory.mktemp("new_rules")
    try:
        stacked = mo.bench(NEW_RULES, 2, 1, 128, out / "new.json", None, False, vectorize=True, **NEW_DATA)
        sequential = mo.bench(["muon"], 2, 1, 128, out / "muon-seq.json", None, False, vectorize=False, **NEW_DATA)
    finally:
        mp.undo()
    return {"stacked": json.loads(stacked.read_text()), "sequential": json.loads(sequential.read_text())}


def test_new_rules_run_and_record_results(new_rules):
    doc = new_rules["stacked"]
    assert set(doc["runs"]) == {f"{name}/{seed}" for name in NEW_RULES for seed in (0, 1)}
    for key, run in doc["runs"].items():
        for metric in ("train_loss", "test_loss", "test_accuracy", "seconds"):
            assert len(run[metric]) == 1 and np.isfinite(run[metric]).all(), (key, metric)
        # a count over the 500 test images
        assert abs(run["test_accuracy"][0] * 500 - round(run["test_accuracy"][0] * 500)) < 1e-9
    # stacked where the rule allows it; Prodigy's distance estimate refuses stacks: seed by seed
    assert doc["runs"]["muon/0"]["stacked_seeds"] == 2 and doc["runs"]["schedule_free_adamw/1"]["stacked_seeds"] == 2
    assert "stacked_seeds" not in doc["runs"]["prodigy/0"] and "stacked_seeds" not in doc["runs"]["prodigy/1"]
    # the rules' own defaults, and for Muon the rule that trains what it does not accept
    assert doc["hyperparameters"]["muon"]["learning_rate"] == 1e-3
    assert doc["hyperparameters"]["muon"]["others"] == {
        "rule": "adamw", "parameters": "those with ndim not in [2]", "hyperparameters": TORCH_ADAMW}
    assert "others" not in doc["hyperparameters"]["prodigy"]
    assert doc["runs"]["muon/0"]["train_loss"] != doc["runs"]["muon/1"]["train_loss"]


def test_stacked_muon_equals_seed_by_seed(new_rules):
    """Muon + AdamW through symopt.combine on a seed stack gives each seed's separate run."""
    stacked, sequential = new_rules["stacked"]["runs"], new_rules["sequential"]["runs"]
    for seed in (0, 1):
        key = f"muon/{seed}"
        for metric in ("train_loss", "test_loss"):
            np.testing.assert_allclose(stacked[key][metric], sequential[key][metric], rtol=1e-5, err_msg=key)
        np.testing.assert_allclose(stacked[key]["test_accuracy"], sequential[key]["test_accuracy"], rtol=0,
                                   atol=1.01 / NEW_DATA["n_test"], err_msg=key)


@pytest.mark.parametrize("stacked", [False, True])
def test_muon_gets_the_matrices_and_adamw_the_rest(stacked):
    from symopt.nn import MLP
    from symopt.seeds import SeedStack

    model = MLP([6, 5, 3], seed=0)
    params = SeedStack(lambda s: MLP([6, 5, 3], seed=s), [0, 1]).params if stacked else model.params
    shapes = [p.get_value().shape[1 if stacked else 0:] for p in params]
    hyper = with_others("muon", symopt.get("muon").hyperparameters)
    opt = mo.make_optimizer("muon", hyper, params)
    assert list(opt.members) == ["muon", "adamw"]
    assert [p.get_value().shape[1 if stacked else 0:] for p in opt.members["muon"].params] == [
        s for s in shapes if len(s) == 2] == [(6, 5), (5, 3)]
    assert [p.get_value().shape[1 if stacked else 0:] for p in opt.members["adamw"].params] == [(5,), (3,)]
    adamw = opt.members["adamw"]
    for name, value in TORCH_ADAMW.items():
        assert adamw.get_hyperparameter(name) == pytest.approx(value, rel=1e-12), name
    # what the sweep engine sets before a run reaches Muon only (AdamW also has a weight_decay)
    set_rule_hyperparameter(opt, "muon", "weight_decay", 0.2)
    assert opt.members["muon"].get_hyperparameter("weight_decay") == pytest.approx(0.2, rel=1e-12)
    assert adamw.get_hyperparameter("weight_decay") == pytest.approx(0.01, rel=1e-12)
    # a rule that accepts every parameter is built alone
    lamb = with_others("lamb", symopt.get("lamb").hyperparameters)
    assert "others" not in lamb and type(mo.make_optimizer("lamb", lamb, params)) is symopt.get("lamb")


def test_schedule_free_is_evaluated_at_x():
    """The recorded test metrics of a Schedule-Free rule are those of x = (y - (1 - beta1) z) / beta1,
    checked by a NumPy forward pass at x computed from the parameters and the z slots."""
    from symopt.nn import MLP

    rng = np.random.default_rng(0)
    x_train, y_train = rng.normal(size=(256, 6)).astype("float32"), rng.integers(0, 3, 256)
    x_test, y_test = rng.normal(size=(100, 6)).astype("float32"), rng.integers(0, 3, 100)
    model = MLP([6, 5, 3], seed=0, dropout=0.0)
    hyper = with_others("schedule_free_adamw", symopt.get("schedule_free_adamw").hyperparameters)
    opt = mo.make_optimizer("schedule_free_adamw", hyper, model.params)
    trainer = Trainer(model, opt, x_train, y_train, x_test, y_test, batch_size=32)
    evaluate_at_eval_params(trainer, opt)
    trainer.run_epoch(np.random.default_rng(1))
    loss, acc = trainer._evaluate()
    beta1 = hyper["beta1"]
    y = [p.get_value().astype(np.float64) for p in model.params]
    z = [opt.state[i]["z"].get_value().astype(np.float64) for i in range(len(y))]
    w1, b1, w2, b2 = ((yi - (1 - beta1) * zi) / beta1 for yi, zi in zip(y, z))
    logits = np.maximum(x_test @ w1 + b1, 0) @ w2 + b2
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    np.testing.assert_allclose(loss[0], -logp[np.arange(100), y_test].mean(), rtol=1e-4)
    assert acc[0] == np.mean(logits.argmax(1) == y_test)
    # and x is not y: evaluated at y the loss differs
    logits_y = np.maximum(x_test @ y[0] + y[1], 0) @ y[2] + y[3]
    assert not np.allclose(logits, logits_y, rtol=1e-3)
