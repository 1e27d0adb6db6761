"""Multi-seed runs of an MLP on MNIST: what the mnist-optimizers experiment, ``symopt bench-mnist``
and ``symopt sweep`` share.

* :data:`MODEL`: the network of the seed's comparison (784-100x4-10, ReLU, He, dropout 0.2),
  the sweep's default; a model description is ``symopt.nn.MLP``'s keyword arguments;
* :func:`build_model` and :func:`reset_run`: a network from a description, and a compiled
  (model, optimiser) pair put back in the state a fresh seed starts from, so that one
  compiled function serves every seed (and every sweep run on a worker);
* how a rule is set up for these runs (:func:`make_optimizer`): a rule that updates only
  some parameters (Muon) joined to AdamW over the rest (:func:`with_others` records that
  in its hyperparameters), a Schedule-Free rule evaluated at its evaluation point
  (:func:`evaluate_at_eval_params`);
* a results *document* (``protocol``, ``hyperparameters``, ``compile_seconds`` and
  ``runs`` keyed ``"<optimizer>/<seed>"`` with per-epoch lists, :func:`run_entry`): its table
  (:func:`table_document`, :func:`summarize_rows`) and figure (:func:`plot_document`,
  mean +- std over seeds per epoch). The experiment writes such documents as JSON, the
  sweep builds them from its SQLite store;
* pairwise comparisons of the rules (:func:`compare_document`, :func:`summarize_pairs`):
  Welch's t of the two samples and, since seed ``s`` of every rule starts from the same
  weights and sees the same data order (and dropout stream), the paired t of the
  per-seed differences.

An application module: the library (core and training layer) never imports it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import report
from .registry import display_name

__all__ = ["MODEL", "SEED_OPTIMIZERS", "OTHERS_RULE", "OTHERS_HYPERPARAMETERS", "RUN_METRICS", "build_model",
           "reset_run", "with_others", "make_optimizer", "set_rule_hyperparameter", "evaluate_at_eval_params",
           "run_entry", "table_document", "summarize_rows", "plot_document", "welch_t", "paired_t",
           "compare_document", "adjacent_pairs", "summarize_pairs"]

#: The rules the Theano seed compares, in its order; tables and figures list them first.
SEED_OPTIMIZERS = ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adadelta", "adam"]

#: The network (the seed gives none; this is the NumPy seeds' 784-100x4-10 with dropout).
MODEL: dict[str, Any] = {
    "sizes": [784, 100, 100, 100, 100, 10],
    "activation": "relu",
    "init": "he",
    "dropout": 0.2,
    "batchnorm": False,
    "dtype": "float32",
}


#: The rule for the parameters a rule does not accept (``Optimizer.accepted_ndims``; Muon
#: updates the weight matrices only): AdamW with torch.optim.AdamW's defaults, joined to the
#: rule by ``symopt.combine``. Stored with the rule's hyperparameters under ``"others"``.
OTHERS_RULE = "adamw"
OTHERS_HYPERPARAMETERS: dict[str, Any] = {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8,
                                          "weight_decay": 0.01}

#: The per-epoch fields of a results document's run (and of a sweep's ``epochs`` rows).
RUN_METRICS = ("epoch", "train_loss", "test_loss", "test_accuracy", "seconds")


def build_model(mlp_cls: type, seed: int, model: dict[str, Any] | None = None) -> Any:
    """``mlp_cls`` (``symopt.nn.MLP``) built from a model description like :data:`MODEL`."""
    m = MODEL if model is None else model
    return mlp_cls(m["sizes"], activation=m["activation"], init=m["init"], batchnorm=m["batchnorm"],
                   dropout=m["dropout"], seed=seed, dtype=m["dtype"])


def _fresh_values(mlp_cls: type, seed: int, model: dict[str, Any] | None = None) -> tuple[list[np.ndarray], list[Any]]:
    fresh = build_model(mlp_cls, seed, model)
    return [p.get_value() for p in fresh.params], [b.get_value() for b in fresh.buffers]


def reset_run(
    model: Any, opt: Any, initial_state: dict[str, Any], seed: int, mlp_cls: type,
    model_config: dict[str, Any] | None = None,
) -> None:
    """Put a compiled (model, optimiser) pair in the state a fresh ``MLP(seed=seed)`` run starts from.

    Parameters and dropout streams become those of a freshly built model, the optimiser
    state (slots, step counter, hyperparameters) the one captured right after construction,
    so a run does not depend on what the compiled function trained before.
    """
    params, buffers = _fresh_values(mlp_cls, seed, model_config)
    for var, value in zip(model.params, params):
        var.set_value(value)
    for var, value in zip(model.buffers, buffers):
        var.set_value(value)
    opt.load_state_dict(initial_state)


def with_others(name: str, hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
    """``hyperparameters`` of rule ``name``, plus ``"others"`` if the rule accepts only some parameters.

    ``"others"`` names the rule training the rest (:data:`OTHERS_RULE` at
    :data:`OTHERS_HYPERPARAMETERS`), so that it is part of what a run records (and of a
    sweep run's key). A rule that accepts every parameter gets nothing added.
    """
    from .registry import get

    out = dict(hyperparameters)
    accepted = get(name).accepted_ndims
    if accepted is not None and "others" not in out:
        out["others"] = {"rule": OTHERS_RULE, "parameters": f"those with ndim not in {list(accepted)}",
                         "hyperparameters": dict(OTHERS_HYPERPARAMETERS)}
    return out


def make_optimizer(name: str, hyper: Mapping[str, Any], params: list[Any], **options: Any) -> Any:
    """Rule ``name`` over ``params``, or over those it accepts ``combine``-d with the ``"others"`` rule over the rest.

    ``hyper`` as :func:`with_others` gives it (values may be per-member vectors for a seed
    stack). The split follows the rule's declared ``accepted_ndims`` (a seed axis,
    ``tag.seed_axis``, not counted); parameters all of one kind need no combination.
    ``options`` (e.g. ``stoppable=True``) go to every rule's constructor.
    """
    from .combine import combine
    from .registry import get
    from .seeds import seed_axis_ndim

    cls = get(name)
    own = {k: v for k, v in hyper.items() if k != "others"}
    if cls.accepted_ndims is None:
        return cls(params, **own, **options)
    accepted = [p for p in params if seed_axis_ndim(p) in cls.accepted_ndims]
    rest = [p for p in params if seed_axis_ndim(p) not in cls.accepted_ndims]
    if not accepted:
        raise ValueError(f"{name} updates parameters with ndim in {list(cls.accepted_ndims)} only; the model has none")
    if not rest:
        return cls(params, **own, **options)
    others = with_others(name, hyper)["others"]
    return combine(**{name: cls(accepted, **own, **options),
                      others["rule"]: get(others["rule"])(rest, **others["hyperparameters"], **options)})


def set_rule_hyperparameter(opt: Any, name: str, key: str, value: Any) -> None:
    """Set rule ``name``'s hyperparameter ``key`` in ``opt`` (:func:`make_optimizer`'s result).

    In a combination only the rule's own member is changed: ``Combined.set_hyperparameter``
    without a member would also set the ``"others"`` rule's value of the same name.
    """
    from .combine import Combined

    if isinstance(opt, Combined):
        opt.set_hyperparameter(key, value, member=name)
    else:
        opt.set_hyperparameter(key, value)


def evaluate_at_eval_params(trainer: Any, opt: Any) -> None:
    """Have ``trainer`` evaluate a Schedule-Free rule at its evaluation point x (``opt.eval_params()``).

    Not at the point y where the gradients are taken: optax and the paper evaluate there.
    Other rules are left as they are.
    """
    if not hasattr(opt, "eval_params"):
        return
    evaluate = trainer._evaluate

    def at_eval_params() -> Any:
        with opt.eval_params():
            return evaluate()

    trainer._evaluate = at_eval_params


# ---------------------------------------------------------------------------- results documents
def run_entry(optimizer: str, seed: int, history: Sequence[Mapping[str, Any]], **extra: Any) -> dict[str, Any]:
    """A results document's run from its per-epoch rows (``EpochRecord.as_dict()``, as the sweep
    engine returns them, or a sweep database's ``epochs`` rows): one list per :data:`RUN_METRICS`
    field, then ``extra`` (e.g. ``finished``, ``stacked_seeds``)."""
    return {"optimizer": optimizer, "seed": int(seed), **{m: [row[m] for row in history] for m in RUN_METRICS},
            **extra}


def _grouped(doc: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """optimizer -> metric -> array (seeds, epochs), the seed's rules first, in its order.

    A run that early stopping ended before its group's longest keeps its last metrics for
    the epochs it did not train (its model no longer changed), so "final" is the value at
    its stop; its missing ``seconds`` are NaN.
    """
    by_name: dict[str, list[dict[str, Any]]] = {}
    for run in doc["runs"].values():
        by_name.setdefault(run["optimizer"], []).append(run)
    order = [n for n in SEED_OPTIMIZERS if n in by_name] + sorted(n for n in by_name if n not in SEED_OPTIMIZERS)
    out = {}
    for name in order:
        runs = sorted(by_name[name], key=lambda r: r["seed"])
        longest = max(len(r["test_accuracy"]) for r in runs)

        def padded(values: list[float], fill: float | None = None) -> list[float]:
            values = list(values)
            last = fill if fill is not None or not values else values[-1]
            return values + [last] * (longest - len(values))

        out[name] = {m: np.array([padded(r[m]) for r in runs], dtype=float)
                     for m in ("train_loss", "test_loss", "test_accuracy")}
        out[name]["seconds"] = np.array([padded(r["seconds"], math.nan) for r in runs], dtype=float)
        out[name]["seeds"] = np.array([r["seed"] for r in runs])
    return out


def _stats(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def plot_document(doc: dict[str, Any], out: Path, *, quick: bool = False, source: str = "the results") -> Path:
    """Mean +- std over seeds per epoch of test accuracy (full and zoomed) and train loss, into ``out``.

    ``doc`` is a results document (``protocol`` and ``runs``, as the mnist-optimizers JSON
    file); the SQLite store of ``symopt sweep`` draws the same figure by building one.
    """
    groups = _grouped(doc)
    if not groups:
        raise ValueError(f"{source} holds no finished runs to plot")
    fig, axes = report.figure(1, 3, figsize=(15, 4.6))
    # Ten colours; past ten rules the colours repeat with dashed lines and square markers.
    styles = {name: (f"C{i % 10}", "-" if i < 10 else "--", "o" if i < 10 else "s") for i, name in enumerate(groups)}
    finals = []
    for name, g in groups.items():
        epochs = np.arange(1, g["test_accuracy"].shape[1] + 1)
        label = f"{display_name(name)} (n={len(g['seeds'])})"
        for ax, metric, scale in ((axes[0], "test_accuracy", 100.0), (axes[1], "test_accuracy", 100.0),
                                  (axes[2], "train_loss", 1.0)):
            values = g[metric] * scale
            mean = values.mean(axis=0)
            std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros_like(mean)
            colour, line, marker = styles[name]
            ax.plot(epochs, mean, color=colour, linestyle=line, marker=marker, markersize=3, label=label)
            ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
        finals.append(g["test_accuracy"][:, -1].mean() * 100)
    n_epochs = max(g["test_accuracy"].shape[1] for g in groups.values())
    axes[0].set_title("Test accuracy (mean ± std over seeds)")
    axes[0].set_ylabel("test accuracy (%)")
    # Zoom: from a bit below the second-worst final mean to above the best curve.
    finals.sort()
    top = max(float((g["test_accuracy"] * 100).max()) for g in groups.values())
    low = finals[1] if len(finals) > 1 else finals[0]
    axes[1].set_ylim(low - 0.6, top + 0.2)
    axes[1].set_xlim(max(0.5, n_epochs / 4), n_epochs + 0.5)
    axes[1].set_title("Test accuracy, zoomed (curves below are cut off)")
    axes[1].set_ylabel("test accuracy (%)")
    axes[2].set_yscale("log")
    axes[2].set_title("Training loss (mean over epoch, dropout on)")
    axes[2].set_ylabel("cross-entropy (nats, log scale)")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    proto = doc["protocol"]
    sizes = "-".join(str(s) for s in proto["model"]["sizes"])
    data = "MNIST" if proto["data"]["n_train"] is None else f"MNIST subset {proto['data']['n_train']} train"
    fig.suptitle(f"{data}, MLP {sizes} ReLU, dropout {proto['model']['dropout']}, batch {proto['batch_size']}"
                 f"{' (quick)' if quick else ''}", fontsize=11)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return report.save_png(fig, Path(out), dpi=90)


def table_document(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per optimiser of a results document: final-epoch metrics mean and std over seeds,
    seconds per epoch."""
    rows = []
    for name, g in _grouped(doc).items():
        acc_mean, acc_std = _stats(g["test_accuracy"][:, -1])
        loss_mean, loss_std = _stats(g["train_loss"][:, -1])
        tl_mean, tl_std = _stats(g["test_loss"][:, -1])
        rows.append({
            "optimizer": name, "seeds": len(g["seeds"]), "epochs": g["test_accuracy"].shape[1],
            "hyperparameters": doc["hyperparameters"].get(name, {}),
            "test_accuracy_mean": acc_mean, "test_accuracy_std": acc_std,
            "train_loss_mean": loss_mean, "train_loss_std": loss_std,
            "test_loss_mean": tl_mean, "test_loss_std": tl_std,
            "seconds_per_epoch": float(np.nanmean(g["seconds"])),
            "compile_seconds": doc.get("compile_seconds", {}).get(name),
        })
    return rows


def summarize_rows(rows: list[dict[str, Any]], source: str = "results") -> str:
    """The Markdown summary table of :func:`table` rows."""
    if not rows:
        return f"{source}: no finished runs"
    lines = [
        "| optimizer | seeds | final test accuracy (%) | final train loss | final test loss | s/epoch |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: -r["test_accuracy_mean"]):
        lines.append(
            f"| {display_name(r['optimizer'])} | {r['seeds']} | "
            f"{100 * r['test_accuracy_mean']:.2f} ± {100 * r['test_accuracy_std']:.2f} | "
            f"{r['train_loss_mean']:.4f} ± {r['train_loss_std']:.4f} | "
            f"{r['test_loss_mean']:.4f} ± {r['test_loss_std']:.4f} | {r['seconds_per_epoch']:.2f} |"
        )
    best = max(rows, key=lambda r: r["test_accuracy_mean"])
    worst = min(rows, key=lambda r: r["test_accuracy_mean"])
    lines.append(
        f"best final test accuracy: {display_name(best['optimizer'])} "
        f"{100 * best['test_accuracy_mean']:.2f}%; worst: {display_name(worst['optimizer'])} "
        f"{100 * worst['test_accuracy_mean']:.2f}% (± is the sample std over seeds, epoch {rows[0]['epochs']})"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- comparisons
def _ratio(difference: float, standard_error: float) -> float:
    """``difference / standard_error``; a zero error gives +-inf (a difference) or NaN (none)."""
    if standard_error > 0:
        return difference / standard_error
    return float("nan") if difference == 0 else math.copysign(math.inf, difference)


def welch_t(a: Any, b: Any) -> float:
    r"""Welch's t of two independent samples:
    :math:`(\bar a - \bar b) / \sqrt{s_a^2 / n_a + s_b^2 / n_b}` with sample variances
    (``ddof=1``). NaN with fewer than two values in a sample."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    error = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return _ratio(float(a.mean() - b.mean()), error)


def paired_t(a: Any, b: Any) -> float:
    r"""The paired t of matched samples: the mean of the differences
    :math:`d_i = a_i - b_i` over its standard error, :math:`\bar d / (s_d / \sqrt n)`.
    NaN with fewer than two pairs."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_t: the samples must be matched, got {len(a)} and {len(b)} values")
    d = a - b
    if len(d) < 2:
        return float("nan")
    return _ratio(float(d.mean()), float(d.std(ddof=1)) / math.sqrt(len(d)))


def compare_document(doc: dict[str, Any], metric: str = "test_accuracy", epoch: int = -1) -> list[dict[str, Any]]:
    """Every pair of rules of a results document, compared on ``metric`` at ``epoch``
    (an index into the epochs, ``-1``: the last).

    Rows, in the order of the rules (the seed's first): ``a``, ``b``; ``difference``, the
    difference of the means (a - b) and ``welch_t`` over all seeds of each; and over the
    seeds both ran (``seeds``, their number), matched by seed: ``paired_difference``
    (the mean of the per-seed differences), its ``paired_se`` and ``paired_t``, and
    ``correlation``, the correlation of the two rules' per-seed values (what pairing
    gains: the variance of a difference is reduced by ``2 r s_a s_b``).
    """
    if metric not in ("train_loss", "test_loss", "test_accuracy"):
        raise ValueError(f"compare_document: metric must be train_loss, test_loss or test_accuracy, got {metric!r}")
    groups = _grouped(doc)
    finals = {name: dict(zip((int(s) for s in g["seeds"]), g[metric][:, epoch])) for name, g in groups.items()}
    names = list(groups)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = sorted(set(finals[a]) & set(finals[b]))
            pa = np.array([finals[a][s] for s in common])
            pb = np.array([finals[b][s] for s in common])
            d = pa - pb
            n = len(common)
            corr = float("nan")
            if n > 1 and pa.std() > 0 and pb.std() > 0:
                corr = float(np.corrcoef(pa, pb)[0, 1])
            va, vb = np.array(list(finals[a].values())), np.array(list(finals[b].values()))
            epochs = groups[a][metric].shape[1]
            rows.append({
                "a": a, "b": b, "metric": metric, "epoch": epochs + epoch + 1 if epoch < 0 else epoch + 1,
                "n_a": len(va), "n_b": len(vb),
                "difference": float(va.mean() - vb.mean()),
                "welch_t": welch_t(va, vb),
                "seeds": n,
                "paired_difference": float(d.mean()) if n else float("nan"),
                "paired_se": float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
                "paired_t": paired_t(pa, pb),
                "correlation": corr,
            })
    return rows


def _t(value: float) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


def adjacent_pairs(rows: list[dict[str, Any]], table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The :func:`compare_document` rows of rules next to each other in the ranking of
    ``table`` (:func:`table_document` rows, by mean final test accuracy)."""
    ranked = [r["optimizer"] for r in sorted(table, key=lambda r: -r["test_accuracy_mean"])]
    neighbours = {frozenset(pair) for pair in zip(ranked, ranked[1:])}
    return [r for r in rows if frozenset((r["a"], r["b"])) in neighbours]


def summarize_pairs(rows: list[dict[str, Any]], scale: float | None = None) -> str:
    """The Markdown table of :func:`compare_document` rows, largest paired |t| first.

    ``scale`` multiplies the differences (default: 100 for accuracies, shown in points).
    """
    if not rows:
        return "no pair of rules to compare"
    metric = rows[0]["metric"]
    if scale is None:
        scale = 100.0 if metric == "test_accuracy" else 1.0
    unit = " (points)" if metric == "test_accuracy" and scale == 100.0 else ""
    lines = [
        f"| rules (a - b) | {metric} difference{unit} | Welch t | paired difference{unit} | paired t | seeds paired "
        f"| per-seed correlation |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: 0.0 if math.isnan(r["paired_t"]) else -abs(r["paired_t"])):
        corr = "-" if math.isnan(r["correlation"]) else f"{r['correlation']:+.2f}"
        lines.append(
            f"| {display_name(r['a'])} - {display_name(r['b'])} | {scale * r['difference']:+.3f} | {_t(r['welch_t'])} | "
            f"{scale * r['paired_difference']:+.3f} ± {scale * r['paired_se']:.3f} | {_t(r['paired_t'])} | "
            f"{r['seeds']} | {corr} |"
        )
    lines.append(
        f"({metric} at epoch {rows[0]['epoch']}; Welch's t treats the rules' seeds as independent samples, the "
        f"paired t matches seed s of a to seed s of b (same initial weights, data order and dropout seed): "
        f"mean per-seed difference ± its standard error)"
    )
    return "\n".join(lines)
