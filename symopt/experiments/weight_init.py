"""Weight initialisation: activation histograms of a deep net and MNIST training per initialiser.

Two parts, following the seed experiment:

* **Histograms.** 1000 standard-normal inputs of width 100 go through 5 hidden layers of
  100 units (no bias); each layer's activations are binned into 30 bins over [0, 1].
  Sigmoid with weight std 1, std 0.01 and Xavier (std sqrt(1/100)); ReLU with std 0.01,
  Xavier and He (std sqrt(2/100)). The forward pass is one compiled PyTensor function per
  activation (float64); the weights are set per initialiser with ``set_value``.
* **Training.** A 5-layer ReLU MLP 784-100-100-100-100-10 on real MNIST, SGD lr 0.01,
  batch 128 drawn with replacement, 2000 iterations, for std 0.01, Xavier and He. One
  compiled train step serves all three: the weights are reset per initialiser, from
  the same standard-normal draws (only the scale differs), and every initialiser sees the
  same batches.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..function import function
from ._common import figure, machine_info, read_json, save_png, write_json

DESCRIPTION = "std 0.01 vs Xavier vs He: activation histograms (sigmoid, ReLU) and 5-layer ReLU MNIST loss curves"

HIST_LAYERS = 5
HIST_WIDTH = 100
HIST_SAMPLES = 1000
HIST_BINS = 30
HIST_RANGE = (0.0, 1.0)
#: (activation, label, initialiser: float std or symopt.nn name), as in the seed
HIST_CASES: list[tuple[str, str, float | str]] = [
    ("sigmoid", "std 1", 1.0),
    ("sigmoid", "std 0.01", 0.01),
    ("sigmoid", "Xavier", "xavier"),
    ("relu", "std 0.01", 0.01),
    ("relu", "Xavier", "xavier"),
    ("relu", "He", "he"),
]
TRAIN_INITS: list[tuple[str, float | str]] = [("std 0.01", 0.01), ("Xavier", "xavier"), ("He", "he")]
SIZES = [784, 100, 100, 100, 100, 10]
LEARNING_RATE = 0.01
BATCH_SIZE = 128
SMOOTH = 50  # iterations in the plotted moving average
FINAL_WINDOW = 100  # iterations averaged for the stated final loss

FULL = {"iterations": 2000, "n_seeds": 3, "n_train": None, "n_test": None}
QUICK = {"iterations": 40, "n_seeds": 1, "n_train": 2000, "n_test": 500}


def results_path(results_dir: Path, quick: bool) -> Path:
    return Path(results_dir) / ("weight-init-quick.json" if quick else "weight-init.json")


# ---------------------------------------------------------------------- histograms
def histogram_inputs(seed: int) -> np.ndarray:
    """The 1000 x 100 standard-normal inputs of the histogram experiment (float64)."""
    return np.random.default_rng([seed, 0]).standard_normal((HIST_SAMPLES, HIST_WIDTH))


def histogram_weights(seed: int, case: int) -> list[np.ndarray]:
    """The 5 weight matrices of histogram case ``case`` (index into HIST_CASES), float64."""
    from ..nn import initialize

    rng = np.random.default_rng([seed, 1, case])
    init = HIST_CASES[case][2]
    return [initialize(init, (HIST_WIDTH, HIST_WIDTH), seed=rng, dtype="float64") for _ in range(HIST_LAYERS)]


def _layer_stats(a: np.ndarray, activation: str) -> dict[str, Any]:
    counts, edges = np.histogram(a, bins=HIST_BINS, range=HIST_RANGE)
    stats = {
        "counts": counts.astype(int).tolist(),
        "mean": float(a.mean()),
        "std": float(a.std()),
        "frac_zero": float(np.mean(a == 0.0)),
        "frac_above_range": float(np.mean(a > HIST_RANGE[1])),
        "frac_below_0.02": float(np.mean(a < 0.02)),
        "frac_above_0.98": float(np.mean(a > 0.98)),
    }
    if activation == "sigmoid":
        # sigmoid'(z) = s (1 - s): the local gradient each unit passes back (max 0.25)
        stats["mean_local_grad"] = float(np.mean(a * (1.0 - a)))
    return stats


def _histograms(seed: int) -> list[dict[str, Any]]:
    import pytensor.tensor as pt

    from ..nn import ACTIVATIONS, Dense

    x_np = histogram_inputs(seed)
    out = []
    compiled: dict[str, tuple[Any, list[Any]]] = {}
    for case, (activation, label, init) in enumerate(HIST_CASES):
        if activation not in compiled:  # one compiled forward pass per activation
            x = pt.matrix("x", dtype="float64")
            layers = [
                Dense(HIST_WIDTH, HIST_WIDTH, seed=0, init=0.0, bias=False, dtype="float64", name=f"h{i}")
                for i in range(HIST_LAYERS)
            ]
            h, acts = x, []
            for layer in layers:
                h = ACTIVATIONS[activation](layer.output(h, train=False))
                acts.append(h)
            compiled[activation] = (function([x], acts), layers)
        fn, layers = compiled[activation]
        for layer, w in zip(layers, histogram_weights(seed, case)):
            layer.W.set_value(w)
        acts = fn(x_np)
        out.append(
            {
                "activation": activation,
                "init": label,
                "weight_std": _std_of(init, HIST_WIDTH),
                "layers": [_layer_stats(np.asarray(a), activation) for a in acts],
            }
        )
    return out


def _std_of(init: float | str, fan_in: int) -> float:
    if isinstance(init, str):
        return math.sqrt({"xavier": 1.0, "he": 2.0}[init] / fan_in)
    return float(init)


# ---------------------------------------------------------------------- training
def _reset_weights(model: Any, init: float | str, seed: int) -> None:
    """Weights from one standard-normal stream per seed (only the scale depends on ``init``); zero biases."""
    from ..nn import Dense, initialize

    rng = np.random.default_rng([seed, 2])
    for layer in model.layers:
        if isinstance(layer, Dense):
            layer.W.set_value(initialize(init, layer.W.get_value().shape, seed=rng, dtype=layer.dtype))
            if layer.b is not None:
                layer.b.set_value(np.zeros_like(layer.b.get_value()))


def _train(data: Any, seeds: list[int], iterations: int) -> list[dict[str, Any]]:
    import pytensor
    import pytensor.tensor as pt

    from ..nn import MLP, accuracy, cross_entropy
    from ..rules import SGD

    model = MLP(SIZES, activation="relu", init="he", seed=0)
    opt = SGD(model.params, learning_rate=LEARNING_RATE)
    initial_state = opt.state_dict()
    # Not a Trainer: the seeds' protocol draws every batch with replacement (a step takes
    # the batch's row indices), while a Trainer steps through epochs of a permutation.
    x_train = pytensor.shared(data.x_train, name="x_train")
    y_train = pytensor.shared(data.y_train.astype(np.int64), name="y_train")
    idx = pt.vector("idx", dtype="int64")
    x, y = pt.matrix("x", dtype="float32"), pt.vector("y", dtype="int64")
    loss = cross_entropy(model.output(x, train=True), y)
    step = function([idx], loss, updates=opt.updates(loss), givens={x: x_train[idx], y: y_train[idx]})
    logits = model.output(x, train=False)
    evaluate = function([x, y], [cross_entropy(logits, y), accuracy(logits, y, reduction="sum")])

    runs = []
    n = len(data.y_train)
    for seed in seeds:
        batches = np.random.default_rng([seed, 3]).integers(0, n, size=(iterations, BATCH_SIZE))
        for label, init in TRAIN_INITS:
            _reset_weights(model, init, seed)
            opt.load_state_dict(initial_state)
            start = time.perf_counter()
            losses = [float(step(b)) for b in batches]
            seconds = time.perf_counter() - start
            test_loss, correct = evaluate(data.x_test, data.y_test.astype(np.int64))
            test_acc = int(correct) / len(data.y_test)
            runs.append(
                {
                    "seed": seed,
                    "init": label,
                    "first_layer_std": _std_of(init, SIZES[0]),
                    "hidden_layer_std": _std_of(init, SIZES[1]),
                    "train_loss": losses,
                    "test_loss": float(test_loss),
                    "test_accuracy": float(test_acc),
                    "seconds": seconds,
                }
            )
            print(f"[weight-init] seed {seed} {label:9s} final loss {np.mean(losses[-FINAL_WINDOW:]):.4f} "
                  f"test acc {float(test_acc):.4f} ({seconds:.1f} s)", flush=True)
    return runs


def run(results_dir: Path, quick: bool = False, seed: int = 0) -> Path:
    from ..data import load_mnist, subset

    cfg = QUICK if quick else FULL
    seeds = [seed + k for k in range(cfg["n_seeds"])]
    data = load_mnist()
    if cfg["n_train"] is not None:
        data = subset(data, cfg["n_train"], seed, n_test=cfg["n_test"])
    start = time.perf_counter()
    histograms = {str(s): _histograms(s) for s in seeds}
    runs = _train(data, seeds, cfg["iterations"])
    payload = {
        "experiment": "weight-init",
        "quick": quick,
        "config": {
            **cfg,
            "seeds": seeds,
            "sizes": SIZES,
            "learning_rate": LEARNING_RATE,
            "batch_size": BATCH_SIZE,
            "batches": "drawn with replacement from the training set, the same for every initialiser",
            "n_train_used": int(len(data.y_train)),
            "n_test_used": int(len(data.y_test)),
            "hist_layers": HIST_LAYERS,
            "hist_width": HIST_WIDTH,
            "hist_samples": HIST_SAMPLES,
            "hist_bins": HIST_BINS,
            "hist_range": list(HIST_RANGE),
        },
        "histograms": histograms,
        "runs": runs,
        "seconds": time.perf_counter() - start,
        "machine": machine_info(),
    }
    return write_json(results_path(results_dir, quick), payload)


# ---------------------------------------------------------------------- report
def _moving_average(values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Trailing mean over ``window`` iterations; x is the 1-based iteration at the window's end."""
    window = max(1, min(window, len(values)))
    kernel = np.ones(window) / window
    smooth = np.convolve(values, kernel, mode="valid")
    return np.arange(window, len(values) + 1), smooth


def _final_losses(results: dict[str, Any]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for r in results["runs"]:
        out.setdefault(r["init"], []).append(float(np.mean(r["train_loss"][-FINAL_WINDOW:])))
    return out


def plot(results: Path, figures_dir: Path) -> list[Path]:
    res = read_json(results)
    suffix = "-quick" if res["quick"] else ""
    figures_dir = Path(figures_dir)
    paths = []

    # loss curves: one line per initialiser per seed, smoothed
    fig, ax = figure(figsize=(7, 4.5))
    colors = {"std 0.01": "tab:blue", "Xavier": "tab:orange", "He": "tab:green"}
    seen = set()
    for r in res["runs"]:
        xs, ys = _moving_average(np.asarray(r["train_loss"]), SMOOTH)
        label = r["init"] if r["init"] not in seen else None
        seen.add(r["init"])
        ax.plot(xs, ys, color=colors.get(r["init"]), lw=1.3, alpha=0.85, label=label)
    n_seeds = len(res["config"]["seeds"])
    ax.set_xlabel("iteration (mini-batches of 128)")
    ax.set_ylabel("training loss (cross-entropy, nats)")
    ax.set_ylim(0, 2.5)
    ax.set_title(
        "5-layer ReLU MLP on MNIST, SGD lr 0.01: training loss per weight initialisation\n"
        f"(mini-batch loss, moving average over {SMOOTH} iterations; {n_seeds} seed{'s' if n_seeds > 1 else ''}, one line each)",
        fontsize=10,
    )
    ax.legend(title="initialisation")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = figures_dir / f"weight-init-loss{suffix}.png"
    paths.append(save_png(fig, path, dpi=100))

    # histograms of the first seed: one row per (activation, init), one column per layer
    seed = res["config"]["seeds"][0]
    cases = res["histograms"][str(seed)]
    lo, hi = res["config"]["hist_range"]
    bins = res["config"]["hist_bins"]
    edges = np.linspace(lo, hi, bins + 1)
    n_samples = res["config"]["hist_samples"] * res["config"]["hist_width"]
    fig, axes = figure(len(cases), HIST_LAYERS, figsize=(12, 2.0 * len(cases)), sharex=True)
    for row, case in enumerate(cases):
        ymax = 7000 if case["activation"] == "relu" else max(max(l["counts"]) for l in case["layers"]) * 1.5
        for col, layer in enumerate(case["layers"]):
            ax = axes[row, col]
            counts = np.asarray(layer["counts"])
            ax.bar(edges[:-1], np.minimum(counts, ymax), width=np.diff(edges), align="edge",
                   color="tab:red" if case["activation"] == "sigmoid" else "tab:blue", edgecolor="none")
            ax.set_ylim(0, ymax)
            if counts.max() > ymax:
                ax.text(0.04, 0.97, f"1st bar cut: {counts[0]:,}", transform=ax.transAxes, fontsize=7,
                        va="top", ha="left")
            note = f"std {layer['std']:.3g}"
            if case["activation"] == "relu":
                note += f"\nzeros {layer['frac_zero']:.0%}\n>1: {layer['frac_above_range']:.1%}"
            else:
                note += f"\n<0.02 or >0.98: {layer['frac_below_0.02'] + layer['frac_above_0.98']:.0%}"
            if case["activation"] == "relu":
                ax.text(0.97, 0.8, note, transform=ax.transAxes, fontsize=7, va="top", ha="right")
            else:
                ax.text(0.5, 0.97, note, transform=ax.transAxes, fontsize=7, va="top", ha="center")
            if row == 0:
                ax.set_title(f"layer {col + 1}", fontsize=10)
            if col == 0:
                ax.set_ylabel(f"{case['activation']}\n{case['init']}\ncount", fontsize=9)
            else:
                ax.set_yticklabels([])
            if row == len(cases) - 1:
                ax.set_xlabel("activation value")
            ax.tick_params(labelsize=7)
    fig.suptitle(
        f"Activations of 5 hidden layers (100 units, no bias) for {res['config']['hist_samples']} standard-normal "
        f"inputs: {bins} bins over [{lo:g}, {hi:g}], {n_samples:,} values per panel\n"
        "ReLU rows clipped at 7,000 counts (the first bin holds the exact zeros); "
        f"seed {seed}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path = figures_dir / f"weight-init-histograms{suffix}.png"
    paths.append(save_png(fig, path, dpi=90))
    return paths


def summarize(results: Path) -> str:
    res = read_json(results)
    lines = [f"weight-init ({'quick' if res['quick'] else 'full'}), seeds {res['config']['seeds']}, "
             f"{res['config']['iterations']} iterations of SGD lr {res['config']['learning_rate']}:"]
    finals = _final_losses(res)
    accs: dict[str, list[float]] = {}
    for r in res["runs"]:
        accs.setdefault(r["init"], []).append(r["test_accuracy"])
    for label, values in finals.items():
        lines.append(
            f"  {label:9s} training loss (mean of the last {FINAL_WINDOW} iterations) "
            f"{np.mean(values):.3f} (per seed {', '.join(f'{v:.3f}' for v in values)}); "
            f"test accuracy {np.mean(accs[label]):.4f}"
        )
    seed = res["config"]["seeds"][0]
    lines.append(f"  activation histograms (seed {seed}), per layer 1..5:")
    for case in res["histograms"][str(seed)]:
        stds = ", ".join(f"{l['std']:.3g}" for l in case["layers"])
        if case["activation"] == "sigmoid":
            sat = ", ".join(f"{l['frac_below_0.02'] + l['frac_above_0.98']:.0%}" for l in case["layers"])
            lines.append(f"    sigmoid {case['init']:8s} std {stds}; within 0.02 of 0 or 1: {sat}")
        else:
            zeros = ", ".join(f"{l['frac_zero']:.0%}" for l in case["layers"])
            lines.append(f"    relu    {case['init']:8s} std {stds}; exact zeros: {zeros}")
    return "\n".join(lines)
