"""Pairwise comparisons of the mnist-optimizers results (symopt.mnist_runs.compare_document):
Welch's t and the paired t against scipy.stats (ttest_ind(equal_var=False), ttest_rel),
on made-up documents and on the recorded results file (read only, nothing is re-run)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from symopt import mnist_runs
from symopt.experiments import mnist_optimizers
from symopt.mnist_runs import compare_document, paired_t, summarize_pairs, welch_t

stats = pytest.importorskip("scipy.stats")

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results"


def _document(finals: dict[str, dict[int, float]], epochs: int = 2) -> dict:
    """A results document whose runs end (last epoch) at the given test accuracies."""
    runs = {}
    for name, by_seed in finals.items():
        for seed, value in by_seed.items():
            runs[f"{name}/{seed}"] = {
                "optimizer": name, "seed": seed, "epoch": list(range(1, epochs + 1)),
                "train_loss": [1.0 - 0.1 * value] * epochs, "test_loss": [0.5] * epochs,
                "test_accuracy": [0.5] * (epochs - 1) + [value], "seconds": [1.0] * epochs,
            }
    return {"protocol": {}, "hyperparameters": {}, "runs": runs}


def _made_up() -> dict[str, dict[int, float]]:
    """Three rules; a seed effect shared by the rules (what pairing removes); "adam" lacks seed 5."""
    rng = np.random.default_rng(4)
    seed_effect = rng.normal(scale=2e-3, size=6)
    out = {}
    for name, shift in (("sgd", 0.950), ("momentum", 0.9505), ("adam", 0.952)):
        values = shift + seed_effect + rng.normal(scale=5e-4, size=6)
        out[name] = {s: float(v) for s, v in enumerate(values)}
    del out["adam"][5]
    return out


def test_pairs_equal_scipy():
    finals = _made_up()
    rows = compare_document(_document(finals))
    assert [(r["a"], r["b"]) for r in rows] == [("sgd", "momentum"), ("sgd", "adam"), ("momentum", "adam")]
    for r in rows:
        a, b = finals[r["a"]], finals[r["b"]]
        common = sorted(set(a) & set(b))
        pa, pb = np.array([a[s] for s in common]), np.array([b[s] for s in common])
        va, vb = np.array(list(a.values())), np.array(list(b.values()))
        assert (r["n_a"], r["n_b"], r["seeds"], r["epoch"]) == (len(va), len(vb), len(common), 2)
        np.testing.assert_allclose(r["welch_t"], stats.ttest_ind(va, vb, equal_var=False).statistic, rtol=1e-10)
        np.testing.assert_allclose(r["paired_t"], stats.ttest_rel(pa, pb).statistic, rtol=1e-10)
        np.testing.assert_allclose(r["difference"], va.mean() - vb.mean(), rtol=1e-12)
        np.testing.assert_allclose(r["paired_difference"], (pa - pb).mean(), rtol=1e-12)
        np.testing.assert_allclose(r["paired_se"], stats.sem(pa - pb), rtol=1e-10)
        np.testing.assert_allclose(r["correlation"], stats.pearsonr(pa, pb).statistic, rtol=1e-10)
    # The shared seed effect makes the paired t the sharper one here.
    assert abs(rows[0]["paired_t"]) > abs(rows[0]["welch_t"])


def test_degenerate_samples():
    assert math.isnan(welch_t([1.0], [1.0, 2.0])) and math.isnan(paired_t([1.0], [2.0]))
    assert paired_t([1.0, 2.0, 3.0], [0.5, 1.5, 2.5]) == math.inf  # a constant difference
    assert math.isnan(paired_t([1.0, 2.0], [1.0, 2.0]))
    assert welch_t([1.0, 1.0], [2.0, 2.0]) == -math.inf
    with pytest.raises(ValueError, match="matched"):
        paired_t([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="metric must be"):
        compare_document(_document(_made_up()), metric="accuracy")


def test_summary_lists_every_pair():
    text = summarize_pairs(compare_document(_document(_made_up())))
    assert text.count("\n| ") == 3  # one line per pair (the header is the first line)
    assert "| Welch t |" in text and "paired t" in text and "SGD - Momentum" in text


@pytest.mark.parametrize("name", ["mnist-optimizers", "mnist-optimizers-modern"])
def test_recorded_results(name):
    """The recorded JSON (30 and 10 seeds of every rule, seeds 0, 1, ...): every pair
    against scipy, and the Welch t's that experiments/README.md quotes."""
    path = RESULTS / f"{name}.json"
    doc = json.loads(path.read_text())
    rows = mnist_optimizers.compare(path)
    n_rules = len({run["optimizer"] for run in doc["runs"].values()})
    assert len(rows) == n_rules * (n_rules - 1) // 2
    groups = mnist_runs._grouped(doc)
    for r in rows:
        a, b = groups[r["a"]], groups[r["b"]]
        np.testing.assert_array_equal(a["seeds"], b["seeds"])  # the same seeds: every run paired
        va, vb = a["test_accuracy"][:, -1], b["test_accuracy"][:, -1]
        np.testing.assert_allclose(r["welch_t"], stats.ttest_ind(va, vb, equal_var=False).statistic, rtol=1e-10)
        np.testing.assert_allclose(r["paired_t"], stats.ttest_rel(va, vb).statistic, rtol=1e-10)
    if name == "mnist-optimizers":
        by_pair = {(r["a"], r["b"]): r for r in rows}
        quoted = {("rmsprop", "adadelta"): 1.4, ("adadelta", "adam"): 1.0, ("rmsprop", "adam"): 2.4,
                  ("nesterov", "adam"): -5.2, ("momentum", "nesterov"): -0.6, ("momentum", "adagrad"): 5.0,
                  ("sgd", "adagrad"): -44}
        for (a, b), t in quoted.items():
            assert by_pair[(a, b)]["welch_t"] == pytest.approx(t, abs=0.05 if abs(t) < 10 else 0.5), (a, b)
    summary = mnist_optimizers.summarize(path)
    assert "paired t" in summary
    if n_rules > mnist_optimizers.ALL_PAIRS_UP_TO:
        assert "Adjacent rules in the ranking" in summary
