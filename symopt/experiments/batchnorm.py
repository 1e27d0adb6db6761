"""Batch normalisation across weight scales: train accuracy with and without BN.

Following the seed experiment: an MLP 784-100x5-10 (ReLU) on 1000 real MNIST training
samples, SGD lr 0.01, batch 100, 20 epochs, for 16 initial weight standard deviations
``np.logspace(0, -4, 16)`` (every layer, output layer included). Accuracy on the 1000
training samples (evaluation mode: BN uses its running statistics) before training and
after every epoch.

One compiled train step and one compiled evaluation per network (BN, no BN), reused for
all scales and seeds: the weights are set with ``set_value`` from the same standard-normal
draws for both networks (only the scale changes), BN's gamma/beta and running statistics
are reset, and both networks see the same shuffled batches.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..function import function
from ._common import figure, machine_info, read_json, save_png, write_json

DESCRIPTION = "with vs without batch norm across 16 initial weight scales: train accuracy curves on 1000 MNIST samples"

SIZES = [784, 100, 100, 100, 100, 100, 10]
LEARNING_RATE = 0.01
BATCH_SIZE = 100
WIN_MARGIN = 0.0  # BN "wins" a scale when its final mean train accuracy is higher

FULL = {"n_train": 1000, "epochs": 20, "scales": np.logspace(0, -4, 16).tolist(), "n_seeds": 3}
QUICK = {"n_train": 200, "epochs": 12, "scales": np.logspace(0, -4, 4).tolist(), "n_seeds": 1}


def results_path(results_dir: Path, quick: bool) -> Path:
    return Path(results_dir) / ("batchnorm-quick.json" if quick else "batchnorm.json")


def reset_parameters(model: Any, scale: float, seed: int) -> None:
    """Weights ~ N(0, scale^2) from the stream of ``(seed, 0)``; zero biases; fresh BN state."""
    from ..nn import BatchNorm, Dense

    rng = np.random.default_rng([seed, 0])
    for layer in model.layers:
        if isinstance(layer, Dense):
            shape = layer.W.get_value().shape
            layer.W.set_value((rng.standard_normal(shape) * scale).astype(layer.dtype))
            if layer.b is not None:
                layer.b.set_value(np.zeros(shape[1], dtype=layer.dtype))
        elif isinstance(layer, BatchNorm):
            n = layer.num_features
            layer.gamma.set_value(np.ones(n, dtype=layer.dtype))
            layer.beta.set_value(np.zeros(n, dtype=layer.dtype))
            layer.running_mean.set_value(np.zeros(n, dtype=layer.dtype))
            layer.running_var.set_value(np.ones(n, dtype=layer.dtype))


def build(batchnorm: bool, x_train: Any, y_train: Any) -> tuple[Any, Any, Any, Any, Any]:
    """(model, optimizer, its initial state, trainer, evaluate() -> (loss, correct count) on the training set).

    The :class:`~symopt.train.Trainer` compiles the step; the loop is the experiment's own:
    it evaluates on the training set before training, and records the float32 mean loss
    of the whole set in one call (the Trainer's evaluation sums batches in float64).
    """
    from ..nn import MLP, accuracy, cross_entropy
    from ..rules import SGD
    from ..train import Trainer

    model = MLP(SIZES, activation="relu", init=0.01, batchnorm=batchnorm, seed=0)
    opt = SGD(model.params, learning_rate=LEARNING_RATE)
    trainer = Trainer(model, opt, x_train, y_train, x_train[:1], y_train[:1], batch_size=BATCH_SIZE)
    logits = model.output(trainer.x_train, train=False)
    evaluate = function([], [cross_entropy(logits, trainer.y_train), accuracy(logits, trainer.y_train, reduction="sum")])
    return model, opt, opt.state_dict(), trainer, evaluate


def _finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def run(results_dir: Path, quick: bool = False, seed: int = 0) -> Path:
    from ._common import mnist_subset

    cfg = QUICK if quick else FULL
    seeds = [seed + k for k in range(cfg["n_seeds"])]
    n, epochs = cfg["n_train"], cfg["epochs"]
    steps = n // BATCH_SIZE
    start = time.perf_counter()

    empty_x, empty_y = np.zeros((n, SIZES[0]), dtype="float32"), np.zeros(n, dtype="int64")
    nets = {name: build(name == "bn", empty_x, empty_y) for name in ("bn", "no_bn")}

    runs = []
    for s in seeds:
        data = mnist_subset(n, 1, s)  # n random training samples (the test set is not used)
        for _, _, _, trainer, _ in nets.values():
            trainer.x_train.set_value(data.x_train.astype("float32"))
            trainer.y_train.set_value(data.y_train.astype("int64"))
        for k, scale in enumerate(cfg["scales"]):
            record: dict[str, Any] = {"seed": s, "scale_index": k, "scale": scale}
            orders = np.random.default_rng([s, 1, k])
            perms = [orders.permutation(n) for _ in range(epochs)]
            for name, (model, opt, initial_state, trainer, evaluate) in nets.items():
                reset_parameters(model, scale, s)
                opt.load_state_dict(initial_state)
                loss, correct = evaluate()
                accs, losses = [int(correct) / n], [_finite(loss)]
                for perm in perms:  # the same batches for both networks
                    trainer.order.set_value(perm.astype("int64"))
                    for b in range(steps):
                        trainer.train_step(b)
                    loss, correct = evaluate()
                    accs.append(int(correct) / n)
                    losses.append(_finite(loss))
                record[name] = {"train_accuracy": accs, "train_loss": losses}
            runs.append(record)
            print(f"[batchnorm] seed {s} scale {scale:.3g}: final train acc BN {record['bn']['train_accuracy'][-1]:.3f} "
                  f"no BN {record['no_bn']['train_accuracy'][-1]:.3f}", flush=True)

    payload = {
        "experiment": "batchnorm",
        "quick": quick,
        "config": {
            **cfg,
            "seeds": seeds,
            "sizes": SIZES,
            "activation": "relu",
            "learning_rate": LEARNING_RATE,
            "batch_size": BATCH_SIZE,
            "steps_per_epoch": steps,
            "accuracy": "on the training samples, evaluation mode (BN running statistics), epoch 0 = before training",
            "bn_momentum": 0.1,
        },
        "runs": runs,
        "seconds": time.perf_counter() - start,
        "machine": machine_info(),
    }
    return write_json(results_path(results_dir, quick), payload)


def _final_table(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Per scale: the final train accuracy of each net, per seed and mean."""
    rows = []
    for k, scale in enumerate(res["config"]["scales"]):
        runs = [r for r in res["runs"] if r["scale_index"] == k]
        bn = [r["bn"]["train_accuracy"][-1] for r in runs]
        no = [r["no_bn"]["train_accuracy"][-1] for r in runs]
        rows.append({"scale": scale, "bn": bn, "no_bn": no, "bn_mean": float(np.mean(bn)), "no_bn_mean": float(np.mean(no))})
    return rows


def plot(results: Path, figures_dir: Path) -> list[Path]:
    res = read_json(results)
    scales = res["config"]["scales"]
    seeds = res["config"]["seeds"]
    ncols = 4
    nrows = -(-len(scales) // ncols)
    fig, axes = figure(nrows, ncols, figsize=(11, 2.3 * nrows + 1.0), sharex=True, sharey=True, squeeze=False)
    for k, scale in enumerate(scales):
        ax = axes[k // ncols, k % ncols]
        for r in (r for r in res["runs"] if r["scale_index"] == k):
            epochs = np.arange(len(r["bn"]["train_accuracy"]))
            ax.plot(epochs, r["bn"]["train_accuracy"], color="tab:blue", lw=1.2, alpha=0.85)
            ax.plot(epochs, r["no_bn"]["train_accuracy"], color="tab:orange", lw=1.2, ls="--", alpha=0.85)
        ax.set_title(f"weight std {scale:.3g}", fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if k % ncols == 0:
            ax.set_ylabel("train accuracy")
        if k // ncols == nrows - 1:
            ax.set_xlabel("epoch")
    for k in range(len(scales), nrows * ncols):
        axes[k // ncols, k % ncols].set_visible(False)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color="tab:blue", lw=1.5, label="with batch norm"),
        Line2D([], [], color="tab:orange", lw=1.5, ls="--", label="without batch norm"),
    ]
    fig.legend(handles=handles, loc="upper right", ncol=2, fontsize=9, bbox_to_anchor=(0.99, 0.995))
    fig.suptitle(
        f"MLP 784-100x5-10 (ReLU), SGD lr {res['config']['learning_rate']}, batch {res['config']['batch_size']}, "
        f"{res['config']['n_train']} MNIST training samples\ntrain accuracy per epoch for each initial weight std "
        f"({len(seeds)} seed{'s' if len(seeds) > 1 else ''}, one line each)",
        fontsize=10, x=0.01, ha="left",
    )
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path = Path(figures_dir) / f"batchnorm{'-quick' if res['quick'] else ''}.png"
    return [save_png(fig, path, dpi=90)]


def summarize(results: Path) -> str:
    res = read_json(results)
    rows = _final_table(res)
    wins = sum(r["bn_mean"] > r["no_bn_mean"] + WIN_MARGIN for r in rows)
    ties = sum(r["bn_mean"] == r["no_bn_mean"] for r in rows)
    per_seed = []
    for j, s in enumerate(res["config"]["seeds"]):
        per_seed.append(f"seed {s}: {sum(r['bn'][j] > r['no_bn'][j] for r in rows)}")
    lines = [
        f"batchnorm ({'quick' if res['quick'] else 'full'}), seeds {res['config']['seeds']}, "
        f"{res['config']['epochs']} epochs on {res['config']['n_train']} samples:",
        f"  BN has the higher final train accuracy (mean over seeds) at {wins} of {len(rows)} weight scales"
        f" ({ties} ties); per seed: {', '.join(per_seed)}",
    ]
    for r in rows:
        lines.append(f"  std {r['scale']:9.3g}: BN {r['bn_mean']:.3f}  no BN {r['no_bn_mean']:.3f}")
    return "\n".join(lines)
