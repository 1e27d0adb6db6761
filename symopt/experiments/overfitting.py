"""Overfitting on 300 MNIST samples, and what weight decay and dropout do to it.

Following the seed experiment: an MLP 784-100x6-10 (ReLU, He initialisation) trained on
300 real MNIST training samples with SGD lr 0.01, batch 100, for 201 epochs; accuracy on
the 300 training samples and on the full 10,000-image test set before training and
after every epoch. Three settings:

* ``none``: no regularisation;
* ``weight_decay``: L2 with lambda 0.1 on the weights (not the biases), i.e. the seed's
  ``loss + 0.5 * lambda * sum(W**2)``: symopt ``SGD(weight_decay=0.1,
  weight_decay_mask=symopt.masks.exclude_bias_and_norm)``, which adds ``lambda * W`` to
  the gradient;
* ``dropout``: dropout 0.2 after every hidden activation (inverted dropout).

``none`` and ``weight_decay`` share one compiled step (``weight_decay`` is a shared
hyperparameter set to 0 or 0.1); ``dropout`` has its own. All three start from the same
weights and see the same shuffled batches.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..function import function
from ._common import figure, machine_info, mnist_subset, read_json, save_png, write_json

DESCRIPTION = "300 MNIST samples, 6x100 ReLU MLP: train vs test accuracy without regularisation, with weight decay 0.1, with dropout 0.2"

HIDDEN = [100] * 6
LEARNING_RATE = 0.01
WEIGHT_DECAY = 0.1
DROPOUT = 0.2
SETTINGS = ("none", "weight_decay", "dropout")
LABELS = {"none": "no regularisation", "weight_decay": f"weight decay {WEIGHT_DECAY}", "dropout": f"dropout {DROPOUT}"}

FULL = {"n_train": 300, "n_test": None, "epochs": 201, "batch_size": 100, "n_seeds": 3}
QUICK = {"n_train": 100, "n_test": 500, "epochs": 25, "batch_size": 50, "n_seeds": 1}


def results_path(results_dir: Path, quick: bool) -> Path:
    return Path(results_dir) / ("overfitting-quick.json" if quick else "overfitting.json")


def _build(dropout: float, data: Any, batch_size: int, init_seed: int) -> dict[str, Any]:
    """Model, optimiser, :class:`~symopt.train.Trainer` (its compiled step) and an evaluation
    of train and test accuracy (counts of correct answers)."""
    from ..masks import exclude_bias_and_norm
    from ..nn import MLP, accuracy
    from ..rules import SGD
    from ..train import Trainer

    model = MLP([784, *HIDDEN, 10], activation="relu", init="he", dropout=dropout, seed=init_seed)
    opt = SGD(model.params, learning_rate=LEARNING_RATE, weight_decay=0.0, weight_decay_mask=exclude_bias_and_norm)
    # The Trainer compiles the step; the loop is the experiment's own: it evaluates before
    # training and on the training set too, and records each epoch's train loss as the
    # float32 mean of its step losses (the Trainer's tally sums in float64).
    trainer = Trainer(model, opt, data.x_train, data.y_train, data.x_test, data.y_test, batch_size=batch_size)

    def correct(xs: Any, ys: Any) -> Any:
        return accuracy(model.output(xs, train=False), ys, reduction="sum")

    evaluate = function([], [correct(trainer.x_train, trainer.y_train), correct(trainer.x_test, trainer.y_test)])
    weights = [p for p in model.params if p.ndim >= 2]
    return {"model": model, "opt": opt, "trainer": trainer, "evaluate": evaluate, "weights": weights,
            "initial_state": opt.state_dict()}


def weight_sq_norm(weights: list[Any]) -> float:
    """sum of W**2 over the weight matrices (the quantity the L2 penalty uses)."""
    return float(sum(np.sum(np.asarray(w.get_value(), dtype=np.float64) ** 2) for w in weights))


def run(results_dir: Path, quick: bool = False, seed: int = 0) -> Path:
    from ..nn import Dropout, initialize

    cfg = QUICK if quick else FULL
    seeds = [seed + k for k in range(cfg["n_seeds"])]
    n, bs, epochs = cfg["n_train"], cfg["batch_size"], cfg["epochs"]
    steps = n // bs
    start = time.perf_counter()

    first = mnist_subset(n, cfg["n_test"], seeds[0])
    plain = _build(0.0, first, bs, init_seed=0)
    dropped = _build(DROPOUT, first, bs, init_seed=0)
    nets = {"none": plain, "weight_decay": plain, "dropout": dropped}

    runs = []
    for s in seeds:
        data = mnist_subset(n, cfg["n_test"], s)
        for net in (plain, dropped):
            for key in ("x_train", "y_train", "x_test", "y_test"):
                getattr(net["trainer"], key).set_value(getattr(data, key).astype("float32" if key.startswith("x") else "int64"))
        n_test = len(data.y_test)
        # the same initial weights (He, from the seed's stream) for every setting
        init_rng = np.random.default_rng([s, 0])
        initial = [initialize("he", w.get_value().shape, seed=init_rng, dtype="float32") for w in plain["weights"]]
        perms = [p.astype("int64") for p in (np.random.default_rng([s, 1]).permutation(n) for _ in range(epochs))]
        for setting in SETTINGS:
            net = nets[setting]
            for w, value in zip(net["weights"], initial):
                w.set_value(value)
            for p in net["model"].params:
                if p.ndim < 2:
                    p.set_value(np.zeros_like(p.get_value()))
            for k, layer in enumerate(l for l in net["model"].layers if isinstance(l, Dropout)):
                layer.reseed(int(np.random.SeedSequence([s, 2, k]).generate_state(1)[0]))
            net["opt"].load_state_dict(net["initial_state"])  # a fresh optimiser, then this setting's decay
            net["opt"].set_hyperparameter("weight_decay", WEIGHT_DECAY if setting == "weight_decay" else 0.0)
            trainer = net["trainer"]
            t0 = time.perf_counter()
            train_acc, test_acc, norms, losses = [], [], [], []

            def record() -> None:
                right_train, right_test = net["evaluate"]()
                train_acc.append(int(right_train) / n)
                test_acc.append(int(right_test) / n_test)
                norms.append(weight_sq_norm(net["weights"]))

            record()
            for perm in perms:
                trainer.order.set_value(perm)
                losses.append(float(np.mean([trainer.train_step(b) for b in range(steps)])))
                record()
            runs.append(
                {
                    "seed": s,
                    "setting": setting,
                    "train_accuracy": train_acc,
                    "test_accuracy": test_acc,
                    "weight_sq_norm": norms,
                    "train_loss": losses,
                    "seconds": time.perf_counter() - t0,
                }
            )
            print(f"[overfitting] seed {s} {setting:12s} train {train_acc[-1]:.3f} test {test_acc[-1]:.3f} "
                  f"gap {train_acc[-1] - test_acc[-1]:.3f} ({time.perf_counter() - t0:.1f} s)", flush=True)

    payload = {
        "experiment": "overfitting",
        "quick": quick,
        "config": {
            **cfg,
            "seeds": seeds,
            "sizes": [784, *HIDDEN, 10],
            "activation": "relu",
            "init": "he",
            "learning_rate": LEARNING_RATE,
            "weight_decay": WEIGHT_DECAY,
            "weight_decay_on": "weight matrices only (symopt.masks.exclude_bias_and_norm)",
            "dropout": DROPOUT,
            "n_test_used": int(len(data.y_test)),
            "epoch_0": "accuracy before training",
            "train_loss": "mean mini-batch loss of each epoch (cross-entropy, without the L2 term)",
        },
        "runs": runs,
        "seconds": time.perf_counter() - start,
        "machine": machine_info(),
    }
    return write_json(results_path(results_dir, quick), payload)


def final_gaps(res: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Per setting: final train accuracy, test accuracy and their gap, one entry per seed."""
    out: dict[str, dict[str, list[float]]] = {}
    for r in res["runs"]:
        d = out.setdefault(r["setting"], {"train": [], "test": [], "gap": [], "seed": []})
        d["train"].append(r["train_accuracy"][-1])
        d["test"].append(r["test_accuracy"][-1])
        d["gap"].append(r["train_accuracy"][-1] - r["test_accuracy"][-1])
        d["seed"].append(r["seed"])
    return out


def plot(results: Path, figures_dir: Path) -> list[Path]:
    res = read_json(results)
    seeds = res["config"]["seeds"]
    fig, axes = figure(1, len(SETTINGS), figsize=(13, 4.2), sharey=True)
    for ax, setting in zip(axes, SETTINGS):
        for j, r in enumerate(r for r in res["runs"] if r["setting"] == setting):
            epochs = np.arange(len(r["train_accuracy"]))
            ax.plot(epochs, r["train_accuracy"], color="tab:blue", lw=1.1, alpha=0.8,
                    label="train" if j == 0 else None)
            ax.plot(epochs, r["test_accuracy"], color="tab:red", lw=1.1, alpha=0.8, ls="--",
                    label="test" if j == 0 else None)
        g = final_gaps(res)[setting]
        ax.set_title(f"{LABELS[setting]}\nfinal gap train - test: {np.mean(g['gap']):.3f}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    axes[0].set_ylabel("accuracy")
    fig.suptitle(
        f"MLP 784-100x6-10 (ReLU, He init), SGD lr {res['config']['learning_rate']}, batch {res['config']['batch_size']}: "
        f"{res['config']['n_train']} MNIST training samples vs {res['config']['n_test_used']:,} test images "
        f"({len(seeds)} seed{'s' if len(seeds) > 1 else ''}, one line each)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path = Path(figures_dir) / f"overfitting{'-quick' if res['quick'] else ''}.png"
    return [save_png(fig, path, dpi=90)]


def summarize(results: Path) -> str:
    res = read_json(results)
    lines = [
        f"overfitting ({'quick' if res['quick'] else 'full'}), seeds {res['config']['seeds']}, "
        f"{res['config']['epochs']} epochs on {res['config']['n_train']} samples; final accuracies (mean over seeds):"
    ]
    norms: dict[str, list[float]] = {}
    for r in res["runs"]:
        norms.setdefault(r["setting"], []).append(r["weight_sq_norm"][-1])
    for setting, g in final_gaps(res).items():
        lines.append(
            f"  {LABELS[setting]:18s} train {np.mean(g['train']):.3f}  test {np.mean(g['test']):.3f}  "
            f"gap {np.mean(g['gap']):.3f} (per seed {', '.join(f'{v:.3f}' for v in g['gap'])}); "
            f"sum W^2 {np.mean(norms[setting]):.1f}"
        )
    return "\n".join(lines)
