"""Loss per iteration on MNIST for several update rules (the NumPy seeds' comparison).

The seeds train a 784-100-100-100-100-10 ReLU network (He initialisation, no dropout)
for 2,000 iterations of batch 128, each batch drawn with replacement from the 60,000
training images and shared by all optimisers, and plot the smoothed loss of each
iteration's batch measured *after* that iteration's update. They compare SGD (lr 0.01),
Momentum (lr 0.01, momentum 0.9), AdaGrad (lr 0.01, eps 1e-7) and Adam (lr 1e-3, betas
0.9/0.999, eps 1e-7) and find the three adaptive/momentum rules faster than SGD, about
equally fast, AdaGrad slightly ahead.

One train function per optimiser is compiled and reused for every seed (parameters set
to a fresh ``MLP(seed=seed)``, optimiser state to the one captured at construction);
the after-update loss comes from one eval function shared by all optimisers. Not a
:class:`~symopt.train.Trainer`: the seeds' protocol draws every batch with replacement (a
step takes the batch's row indices) and records each batch's loss after its update.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..function import function
from ..registry import display_name
from . import _common

DESCRIPTION = "NumPy seeds: smoothed minibatch loss over 2,000 iterations, SGD vs Momentum vs AdaGrad vs Adam (+ others)"

EXPERIMENT = "mnist-iterations"
SIZES = [784, 100, 100, 100, 100, 10]
BATCH_SIZE = 128
ITERATIONS = 2000
SEEDS = 3
#: Seeds for the rules beyond the seeds' four (one, to keep the run modest on a shared 2-core machine).
EXTRA_SEEDS = 1

#: The seeds' four rules with the seeds' rates (their defaults; eps 1e-7 outside the root).
SEED_RULES: dict[str, dict[str, Any]] = {
    "sgd": {"learning_rate": 0.01},
    "momentum": {"learning_rate": 0.01, "momentum": 0.9},
    "adagrad": {"learning_rate": 0.01, "epsilon": 1e-7},
    "adam": {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-7},
}
#: Rules the seeds define but leave out of the plot, with the seeds' defaults.
SEED_EXTRA: dict[str, dict[str, Any]] = {
    "nesterov": {"learning_rate": 0.01, "momentum": 0.9},
    "rmsprop": {"learning_rate": 0.01, "rho": 0.99, "epsilon": 1e-7},
}
#: The remaining registry rules run with symopt's defaults.
OTHERS = ["adadelta", "adamw", "amsgrad", "adamax", "nadam", "radam", "lion"]
ALL = [*SEED_RULES, *SEED_EXTRA, *OTHERS]

QUICK = {"optimizers": ["sgd", "adam"], "seeds": 1, "iterations": 60, "n_train": 2000, "n_test": 500}

#: Final-loss window: the mean raw loss of the last WINDOW iterations.
WINDOW = 100
#: Speed: first iteration at which the smoothed loss falls below this.
THRESHOLD = 0.3
#: Smoothing window of the all-rules panel (11, the seeds' window, leaves 13 noisy curves unreadable).
LONG_WINDOW = 51


def results_path(results_dir: Path, quick: bool) -> Path:
    return Path(results_dir) / (f"{EXPERIMENT}-quick.json" if quick else f"{EXPERIMENT}.json")


def hyperparameters(name: str) -> dict[str, Any]:
    import symopt

    values = dict(symopt.get(name).hyperparameters)
    values.update(SEED_RULES.get(name, SEED_EXTRA.get(name, {})))
    return values


def run(results_dir: Path, quick: bool = False, seed: int = 0) -> Path:
    """The seeds' four rules x 3 seeds and the 9 other rules x 1 seed, 2,000 iterations each;
    ``quick``: SGD and Adam, 1 seed, 60 iterations on 2,000 images."""
    import pytensor
    import pytensor.tensor as pt

    import symopt
    from symopt.nn import MLP, accuracy, cross_entropy

    if quick:
        names, iterations = QUICK["optimizers"], QUICK["iterations"]
        seeds_of = {name: list(range(seed, seed + QUICK["seeds"])) for name in names}
        data = _common.mnist_subset(QUICK["n_train"], QUICK["n_test"], seed=0)
    else:
        names, iterations = ALL, ITERATIONS
        seeds_of = {name: list(range(seed, seed + (SEEDS if name in SEED_RULES else EXTRA_SEEDS))) for name in names}
        from symopt.data import load_mnist

        data = load_mnist()
    seeds = sorted({s for v in seeds_of.values() for s in v})
    n_train = len(data.y_train)

    model = MLP(SIZES, activation="relu", init="he", seed=seeds[0], dtype="float32")
    x_all = pytensor.shared(data.x_train.astype("float32"), name="x_train")
    y_all = pytensor.shared(data.y_train.astype("int64"), name="y_train")
    idx = pt.vector("idx", dtype="int64")
    loss = cross_entropy(model.output(x_all[idx], train=True), y_all[idx])
    batch_loss = function([idx], loss)  # the loss after the update, as the seeds record it
    x_test = pt.matrix("x_test", dtype="float32")
    y_test = pt.vector("y_test", dtype="int64")
    correct = accuracy(model.output(x_test, train=False), y_test, reduction="sum")
    count_correct = function([x_test, y_test], correct)

    doc: dict[str, Any] = {
        "experiment": EXPERIMENT,
        "protocol": {"sizes": SIZES, "activation": "relu", "init": "he", "dropout": 0.0, "dtype": "float32",
                     "batch_size": BATCH_SIZE, "iterations": iterations, "n_train": n_train,
                     "n_test": len(data.y_test), "sampling": "each batch drawn with replacement, same for all rules",
                     "recorded": "loss_after[i]: the batch-i loss after update i (the seeds' curve); "
                                 "initial_loss: batch-0 loss before any update"},
        "machine": _common.machine_info(),
        "hyperparameters": {name: hyperparameters(name) for name in names},
        "compile_seconds": {},
        "runs": {},
    }
    fresh = {s: [p.get_value() for p in MLP(SIZES, activation="relu", init="he", seed=s, dtype="float32").params]
             for s in seeds}
    batches = {s: np.random.default_rng(s).integers(0, n_train, size=(iterations, BATCH_SIZE)) for s in seeds}
    for name in names:
        opt = symopt.get(name)(model.params, **doc["hyperparameters"][name])
        initial_state = opt.state_dict()
        start = time.perf_counter()
        step = function([idx], loss, updates=opt.updates(loss))
        for var, value in zip(model.params, fresh[seeds[0]]):  # compile (JIT) now, then reset below
            var.set_value(value)
        step(batches[seeds[0]][0])
        doc["compile_seconds"][name] = time.perf_counter() - start
        for s in seeds_of[name]:
            for var, value in zip(model.params, fresh[s]):
                var.set_value(value)
            opt.load_state_dict(initial_state)
            after = np.empty(iterations)
            start = time.perf_counter()
            for i, b in enumerate(batches[s]):
                before = step(b)
                if i == 0:
                    initial = float(before)
                after[i] = batch_loss(b)
            seconds = time.perf_counter() - start
            acc = sum(int(count_correct(data.x_test[j:j + 1000], data.y_test[j:j + 1000]))
                      for j in range(0, len(data.y_test), 1000)) / len(data.y_test)
            doc["runs"][f"{name}/{s}"] = {
                "optimizer": name, "seed": s, "initial_loss": initial,
                "loss_after": [round(float(v), 6) for v in after],
                "test_accuracy": acc, "seconds": seconds,
            }
            if not quick:
                print(f"{name} seed {s}: last-{WINDOW} mean loss {after[-WINDOW:].mean():.4f}, "
                      f"test accuracy {acc:.4f}, {seconds:.1f} s", file=sys.stderr, flush=True)
    return _common.write_json(results_path(results_dir, quick), doc)


# ---------------------------------------------------------------------------- analysis
def smooth(values: np.ndarray, window: int = 11, beta: float = 2.0) -> np.ndarray:
    """Kaiser-window moving average (window 11, beta 2, as the seeds smooth), same length as the input.

    The ends are padded by reflection so the curve does not sag towards zero there.
    """
    values = np.asarray(values, dtype=float)
    if window % 2 == 0 or window < 1:
        raise ValueError(f"smooth: window must be a positive odd number, got {window}")
    if len(values) < window:
        return values.copy()
    half = window // 2
    padded = np.concatenate([values[half:0:-1], values, values[-2:-half - 2:-1]])
    weights = np.kaiser(window, beta)
    return np.convolve(padded, weights / weights.sum(), mode="valid")


def _grouped(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in doc["runs"].values():
        by_name.setdefault(r["optimizer"], []).append(r)
    out = {}
    for name in [n for n in ALL if n in by_name] + sorted(n for n in by_name if n not in ALL):
        runs = sorted(by_name[name], key=lambda r: r["seed"])
        out[name] = {
            "loss": np.array([r["loss_after"] for r in runs], dtype=float),
            "accuracy": np.array([r["test_accuracy"] for r in runs]),
            "seconds": np.array([r["seconds"] for r in runs]),
            "seeds": [r["seed"] for r in runs],
        }
    return out


def table(results: Path) -> list[dict[str, Any]]:
    """Per optimiser: final loss (mean of the last WINDOW iterations), mean loss, iterations to THRESHOLD."""
    doc = _common.read_json(results)
    rows = []
    for name, g in _grouped(doc).items():
        loss = g["loss"]
        window = min(WINDOW, loss.shape[1])
        final = loss[:, -window:].mean(axis=1)
        area = loss.mean(axis=1)
        reach = []
        for curve in loss:
            below = np.nonzero(smooth(curve) < THRESHOLD)[0]
            reach.append(int(below[0]) + 1 if len(below) else None)
        rows.append({
            "optimizer": name, "seeds": len(g["seeds"]), "final_loss": final.tolist(),
            "final_loss_mean": float(final.mean()), "final_loss_std": float(final.std(ddof=1)) if len(final) > 1 else 0.0,
            "mean_loss": float(area.mean()), "iterations_to_threshold": reach,
            "test_accuracy_mean": float(g["accuracy"].mean()),
            "ms_per_iteration": float(g["seconds"].mean() / loss.shape[1] * 1000),
            "seed_rule": name in SEED_RULES,
        })
    return rows


def summarize(results: Path) -> str:
    doc = _common.read_json(results)
    rows = table(results)
    n_iter = doc["protocol"]["iterations"]
    window = min(WINDOW, n_iter)
    lines = [
        f"| optimizer | seeds | loss, mean of last {window} iterations | mean loss over all {n_iter} | "
        f"iterations until smoothed loss < {THRESHOLD} | test accuracy (%) |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["final_loss_mean"]):
        reach = ", ".join("never" if v is None else str(v) for v in r["iterations_to_threshold"])
        mark = "**" if r["seed_rule"] else ""
        lines.append(
            f"| {mark}{display_name(r['optimizer'])}{mark} | {r['seeds']} | "
            f"{r['final_loss_mean']:.4f} ± {r['final_loss_std']:.4f} | {r['mean_loss']:.4f} | {reach} | "
            f"{100 * r['test_accuracy_mean']:.2f} |"
        )
    seed_rows = sorted((r for r in rows if r["seed_rule"]), key=lambda r: r["final_loss_mean"])
    if seed_rows:
        ranking = " < ".join(f"{display_name(r['optimizer'])} {r['final_loss_mean']:.4f}" for r in seed_rows)
        lines.append(f"seed's four rules by final loss (lower is better): {ranking}")
    best = min(rows, key=lambda r: r["final_loss_mean"])
    lines.append(f"lowest final loss overall: {display_name(best['optimizer'])} "
                 f"{best['final_loss_mean']:.4f} (± is the sample std over seeds; bold: the seeds' four rules)")
    return "\n".join(lines)


def plot(results: Path, figures_dir: Path) -> list[Path]:
    """Left: the seeds' four rules as in the seeds (smoothed, y in 0..1); right: every rule, log scale."""
    doc = _common.read_json(results)
    groups = _grouped(doc)
    quick = "quick" in Path(results).stem
    fig, axes = _common.figure(1, 2, figsize=(14, 5.2))
    colours = {name: f"C{i % 10}" for i, name in enumerate(groups)}
    styles = {name: ("-" if i < 10 else "--") for i, name in enumerate(groups)}
    markers = {"sgd": "o", "momentum": "x", "adagrad": "s", "adam": "D"}
    final = {name: g["loss"][:, -WINDOW:].mean() for name, g in groups.items()}
    by_final = sorted(groups, key=lambda n: final[n])  # legend of the right panel: best first
    seeds_of = {name: len(g["seeds"]) for name, g in groups.items()}
    for ax, names, window in ((axes[0], [n for n in groups if n in SEED_RULES], 11), (axes[1], by_final, LONG_WINDOW)):
        for name in names:
            loss = groups[name]["loss"]
            curves = np.array([smooth(c, window=window) for c in loss])
            it = np.arange(1, loss.shape[1] + 1)
            mean = curves.mean(axis=0)
            label = display_name(name) + (f" ({seeds_of[name]} seed{'s' if seeds_of[name] > 1 else ''})" if ax is axes[1] else "")
            every = max(1, loss.shape[1] // 20)
            ax.plot(it, mean, color=colours[name], linestyle=styles[name], linewidth=1.3, label=label,
                    marker=markers.get(name) if ax is axes[0] else None, markevery=every, markersize=4)
            if len(curves) > 1 and ax is axes[0]:
                ax.fill_between(it, curves.min(axis=0), curves.max(axis=0), color=colours[name], alpha=0.2,
                                linewidth=0)
    n_seeds = max(seeds_of[n] for n in groups if n in SEED_RULES) if any(n in SEED_RULES for n in groups) else 1
    band = f"; band: min-max over {n_seeds} seeds" if n_seeds > 1 else ""
    axes[0].set_ylim(0, 1)
    axes[0].set_title(f"The seeds' four rules with the seeds' rates{band}", fontsize=10)
    axes[1].set_yscale("log")
    axes[1].set_title(f"All rules, smoothed over {LONG_WINDOW} iterations, log scale; legend: lowest final loss first",
                      fontsize=10)
    for ax, window in ((axes[0], 11), (axes[1], LONG_WINDOW)):
        ax.set_xlabel("iteration (batch of 128)")
        ax.set_ylabel(f"mini-batch cross-entropy after the update\n(nats, Kaiser-smoothed over {window} iterations)")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right")
    axes[1].legend(loc="upper right", fontsize=8, ncol=2)
    proto = doc["protocol"]
    fig.suptitle(f"MNIST ({proto['n_train']} training images), MLP {'-'.join(map(str, proto['sizes']))} ReLU, "
                 f"He init, mean over seeds{' (quick)' if quick else ''}", fontsize=11)
    fig.tight_layout()
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    out = figures_dir / (f"{EXPERIMENT}-quick.png" if quick else f"{EXPERIMENT}.png")
    return [_common.save_png(fig, out, dpi=80)]
