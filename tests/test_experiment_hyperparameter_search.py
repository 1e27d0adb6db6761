"""The hyperparameter-search experiment (Optuna, SQLite, resumable), quick version on real MNIST."""

from __future__ import annotations

import builtins
import sqlite3
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("optuna")

import pytensor  # noqa: E402

from symopt.experiments import hyperparameter_search as hs  # noqa: E402
from symopt.experiments import run_experiment  # noqa: E402

NAME = "hyperparameter-search"


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory, real_mnist_dir: Path):
    """Run the quick search once (counting compilations), then run it again to resume."""
    out = tmp_path_factory.mktemp("hpsearch")
    compiled: list[int] = []
    real_function = pytensor.function

    def counting(*args, **kwargs):
        compiled.append(1)
        return real_function(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SYMOPT_DATA", str(real_mnist_dir))
        mp.setattr(pytensor, "function", counting)
        results, figures, summary = run_experiment(NAME, quick=True, results_dir=out, figures_dir=out)
        first_compiles = len(compiled)
        counts_first = hs.sqlite_trial_count(results)
        again = hs.run(out, quick=True, seed=0, progress=False)  # resume: nothing left to do
        second_compiles = len(compiled) - first_compiles
    return {
        "dir": out, "results": results, "again": again, "figures": figures, "summary": summary,
        "first_compiles": first_compiles, "second_compiles": second_compiles, "counts_first": counts_first,
        "mnist": real_mnist_dir,
    }


def test_one_compiled_train_and_eval_function_for_all_trials(quick):
    # 2 samplers x 4 trials share one train and one eval function; resuming a finished study compiles nothing.
    assert quick["first_compiles"] == 2
    assert quick["second_compiles"] == 0


def test_resume_keeps_n_trials(quick):
    n = hs.QUICK.n_trials
    assert quick["again"] == quick["results"]
    assert quick["counts_first"] == {"random-seed0": n, "tpe-seed0": n}
    assert hs.sqlite_trial_count(quick["results"]) == {"random-seed0": n, "tpe-seed0": n}


def test_database_is_sqlite_readable_without_optuna(quick):
    path = quick["results"]
    assert path.name == "hyperparameter-search-quick.db"
    assert path.read_bytes()[:16] == b"SQLite format 3\x00"
    with sqlite3.connect(path) as con:
        rows = con.execute(
            "SELECT s.study_name, t.number, p.param_name, p.param_value, v.value FROM trials t "
            "JOIN studies s ON s.study_id = t.study_id JOIN trial_params p ON p.trial_id = t.trial_id "
            "JOIN trial_values v ON v.trial_id = t.trial_id WHERE t.state = 'COMPLETE'"
        ).fetchall()
    assert len(rows) == 2 * 2 * hs.QUICK.n_trials  # two parameters per trial, two studies
    for study, _, param, value, acc in rows:
        low, high = hs.QUICK.lr_range if param == "learning_rate" else hs.QUICK.wd_range
        assert study in ("random-seed0", "tpe-seed0")
        assert low <= value <= high
        assert 0.0 <= acc <= 1.0


def test_raw_results_structure(quick):
    studies = hs.load(quick["results"])
    assert set(studies) == {"random-seed0", "tpe-seed0"}
    for name, study in studies.items():
        assert study["attrs"]["config"] == hs.QUICK.as_dict()
        assert study["attrs"]["seed"] == 0
        trials = study["trials"]
        assert [t["number"] for t in trials] == list(range(hs.QUICK.n_trials))
        for t in trials:
            assert len(t["val_accuracy"]) == len(t["train_accuracy"]) == hs.QUICK.epochs + 1
            assert len(t["train_loss"]) == hs.QUICK.epochs
            assert t["final_val_accuracy"] == t["val_accuracy"][-1]
            n_val = round(hs.QUICK.n_samples * hs.QUICK.val_fraction)
            # accuracies are counts over the 40 validation images
            assert np.allclose(np.asarray(t["val_accuracy"]) * n_val, np.round(np.asarray(t["val_accuracy"]) * n_val))
            assert t["seconds"] > 0
    # TPE starts with random trials drawn from the same seed: the first trials coincide.
    r, t = studies["random-seed0"]["trials"], studies["tpe-seed0"]["trials"]
    assert r[0]["learning_rate"] == t[0]["learning_rate"]
    assert r[0]["val_accuracy"] == t[0]["val_accuracy"]
    assert hs.best_so_far([0.1, 0.3, 0.2, 0.5]) == [0.1, 0.3, 0.3, 0.5]


def test_figures_and_plot_from_results_alone(quick, tmp_path):
    for path in quick["figures"]:
        assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size < 200_000
    redrawn = hs.plot(quick["results"], tmp_path)
    assert [p.name for p in redrawn] == [p.name for p in quick["figures"]]
    import matplotlib.image

    for p in redrawn:
        assert matplotlib.image.imread(p).ndim == 3
    assert "random-seed0: 4 trials" in quick["summary"] and "tpe-seed0: 4 trials" in quick["summary"]


def _numpy_accuracy(params: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Independent forward pass of the ReLU MLP in NumPy (float64): the accuracy, and how far a
    float32 evaluation may differ from it (the fraction of rows whose top two logits are closer
    than float32 round-off can reach: ~K u = 784 * 6e-8 ~ 5e-5 of the logits' scale per layer,
    taken as 1e-3 to cover the layers, whatever the CPU's BLAS kernel)."""
    h = x.astype(np.float64)
    pairs = list(zip(params[0::2], params[1::2]))
    for i, (w, b) in enumerate(pairs):
        h = h @ w.astype(np.float64) + b
        if i < len(pairs) - 1:
            h = np.maximum(h, 0.0)
    top2 = np.sort(h, axis=1)[:, -2:]
    near_tie = top2[:, 1] - top2[:, 0] < 1e-3 * np.abs(h).max(axis=1)
    return float(np.mean(np.argmax(h, axis=1) == y)), float(np.mean(near_tie))


def test_best_trial_reproduces_when_retrained(quick, monkeypatch):
    monkeypatch.setenv("SYMOPT_DATA", str(quick["mnist"]))
    studies = hs.load(quick["results"])
    trials = studies["random-seed0"]["trials"] + studies["tpe-seed0"]["trials"]
    best = max(trials, key=lambda t: t["final_val_accuracy"])
    search = hs.Search(hs.QUICK, seed=0)  # a fresh model, optimiser and compilation
    out = search.train(best["learning_rate"], best["weight_decay"])
    assert out["val_accuracy"] == best["val_accuracy"]
    assert out["train_accuracy"] == best["train_accuracy"]
    assert out["train_loss"] == best["train_loss"]
    # The compiled eval function agrees with a NumPy forward pass of the trained parameters.
    params = [p.get_value() for p in search.model.params]
    for split, key in (("val", "val_accuracy"), ("train", "train_accuracy")):
        want, slack = _numpy_accuracy(params, getattr(search.split, f"x_{split}"), getattr(search.split, f"y_{split}"))
        assert out[key][-1] == pytest.approx(want, abs=slack + 1e-12), split

    # Reset is complete (same call, same result) and the hyperparameters take effect without recompiling.
    step = search.trainer.train_step
    again = search.train(best["learning_rate"], best["weight_decay"])
    assert again["train_loss"] == out["train_loss"]
    faster = search.train(1e-2, best["weight_decay"])
    assert faster["train_loss"] != out["train_loss"]
    assert search.opt.get_hyperparameter("learning_rate") == 1e-2
    assert search.trainer.train_step is step
    w0 = [p.get_value() for p in search.model.params]
    search.train(5e-3, 1e-4)
    assert int(search.opt.iterations.get_value()) == hs.QUICK.epochs * search.trainer.steps_per_epoch
    assert any(not np.array_equal(a, b) for a, b in zip(w0, [p.get_value() for p in search.model.params]))


def test_changed_protocol_is_refused(quick, monkeypatch):
    changed = hs.Config(**{**hs.QUICK.__dict__, "epochs": hs.QUICK.epochs + 1})
    monkeypatch.setattr(hs, "QUICK", changed)
    with pytest.raises(ValueError, match="different protocol"):
        hs.run(quick["dir"], quick=True, seed=0, progress=False)


def test_missing_optuna_says_how_to_install(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_optuna(name, *args, **kwargs):
        if name == "optuna" or name.startswith("optuna."):
            raise ImportError("No module named 'optuna'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_optuna)
    with pytest.raises(ModuleNotFoundError, match=r"needs Optuna.*pip install 'symopt\[experiments\]'") as info:
        run_experiment(NAME, quick=True, results_dir=tmp_path, figures_dir=tmp_path)
    assert isinstance(info.value, hs.OptunaMissingError)
    assert not list(tmp_path.glob("*.db"))  # fails before creating anything
