"""Gradient check: backprop (``pytensor.grad``) against central differences on real MNIST.

The seed's two-layer net 784-50-10 (``Dense -> ReLU -> Dense``, softmax cross-entropy,
weights ``N(0, 0.01^2)``, zero biases; also with the sigmoid hidden layer of the seed's
other network) on a batch of 3 real MNIST training images. For each parameter ``W1, b1,
W2, b2``:

* the maximum relative error of :func:`symopt.check_grad` (central differences, entries
  of ``W1`` sampled with a seed, every entry of the others);
* the seed's metric, the mean absolute difference between the backprop gradient and the
  numerical one over the same entries (computed here with the same step by a separate
  finite-difference loop over a compiled loss-only function);
* the aggregate relative error ``||a - n|| / (||a|| + ||n||)`` over those entries, which
  rounding noise on tiny gradients does not dominate the way it can dominate the maximum.

In float64 (``eps = 1e-6``) and, for comparison, float32 (``eps = 3e-3``); three seeds,
each with its own batch and initial weights. It also times one backprop gradient against
one evaluation of the loss, the unit cost of the numerical gradient (2 evaluations per
entry), to test the seed's claim that backprop is much faster with the same result.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..function import function
from ._common import figure, machine_info, read_json, save_png, write_json

DESCRIPTION = "backprop vs central-difference gradients of the 784-50-10 net on 3 real MNIST images (float64/float32)"

SIZES = (784, 50, 10)
BATCH = 3
INIT_STD = 0.01
NAMES = {"dense0.W": "W1", "dense0.b": "b1", "dense1.W": "W2", "dense1.b": "b2"}
FULL = {"activations": ("relu", "sigmoid"), "dtypes": ("float64", "float32"), "n_seeds": 3, "n_samples": 1000}
QUICK = {"activations": ("relu",), "dtypes": ("float64",), "n_seeds": 1, "n_samples": 20}


def results_path(results_dir: Path, quick: bool) -> Path:
    return Path(results_dir) / ("gradcheck-quick.json" if quick else "gradcheck.json")


def sample_indices(sizes: list[int], n_samples: int | None, seed: int) -> list[np.ndarray]:
    """The flat indices :func:`symopt.check_grad` checks (its documented sampling rule)."""
    rng = np.random.default_rng(seed)
    out = []
    for size in sizes:
        if n_samples is None or n_samples >= size:
            out.append(np.arange(size))
        else:
            out.append(rng.choice(size, int(n_samples), replace=False))
    return out


def _timeit(fn: Any, *args: Any, repeat: int = 200) -> float:
    fn(*args)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _one(activation: str, dtype: str, seed: int, x_batch: np.ndarray, y_batch: np.ndarray, n_samples: int) -> dict:
    import pytensor
    import pytensor.tensor as pt

    from ..gradcheck import DEFAULT_EPS, DEFAULT_FLOOR, check_grad
    from ..nn import MLP, cross_entropy

    model = MLP(list(SIZES), activation=activation, init=INIT_STD, seed=seed, dtype=dtype)
    params = model.params
    x = pt.matrix("x", dtype=dtype)
    y = pt.vector("y", dtype="int64")
    loss = cross_entropy(model.output(x, train=False), y)
    X, Y = x_batch.astype(dtype), y_batch.astype("int64")
    loss_fn = function([x, y], loss)
    grad_fn = function([x, y], pytensor.grad(loss, params))
    analytic = [np.asarray(g, dtype=np.float64) for g in grad_fn(X, Y)]
    loss0 = float(loss_fn(X, Y))
    t_backprop = _timeit(grad_fn, X, Y)
    t_loss = _timeit(loss_fn, X, Y)

    t0 = time.perf_counter()
    max_rel = check_grad(loss, params, {x: X, y: Y}, n_samples=n_samples, seed=seed)
    t_check = time.perf_counter() - t0

    # The seed's metric, over the same entries and with the same step: a separate loop.
    eps, floor = DEFAULT_EPS[dtype], DEFAULT_FLOOR[dtype]
    indices = sample_indices([p.get_value().size for p in params], n_samples, seed)
    per_param: dict[str, Any] = {}
    n_evals, t_fd = 0, 0.0
    for p, grad, idx in zip(params, analytic, indices):
        value = p.get_value()
        work = value.copy()
        flat = work.reshape(-1)
        numeric = np.empty(len(idx))
        t0 = time.perf_counter()
        for j, i in enumerate(idx):
            x0 = flat[i]
            flat[i] = x0 + eps
            up = float(flat[i])
            p.set_value(work)
            l_up = float(loss_fn(X, Y))
            flat[i] = x0 - eps
            down = float(flat[i])
            p.set_value(work)
            l_down = float(loss_fn(X, Y))
            flat[i] = x0
            numeric[j] = (l_up - l_down) / (up - down)
        t_fd += time.perf_counter() - t0
        n_evals += 2 * len(idx)
        p.set_value(value)
        a = grad.reshape(-1)[idx]
        diff = np.abs(a - numeric)
        rel = diff / np.maximum(np.maximum(np.abs(a), np.abs(numeric)), floor)
        denom = np.linalg.norm(a) + np.linalg.norm(numeric)
        per_param[NAMES[p.name]] = {
            "shape": list(value.shape),
            "size": int(value.size),
            "n_checked": int(len(idx)),
            "n_nonzero_grad": int(np.count_nonzero(a)),
            "max_rel_error": float(max_rel[p.name]),  # symopt.check_grad
            "max_rel_error_loop": float(rel.max()),  # this module's loop, same formula
            "abs_grad_at_max_rel": float(abs(a[rel.argmax()])),  # where the worst entry is
            "abs_diff_at_max_rel": float(diff[rel.argmax()]),
            "mean_abs_diff": float(diff.mean()),  # the seed's metric
            "max_abs_diff": float(diff.max()),
            "norm_rel_error": float(np.linalg.norm(a - numeric) / denom) if denom > 0 else 0.0,
            "mean_abs_grad": float(np.abs(a).mean()),
            "max_abs_grad": float(np.abs(a).max()),
        }
    n_total = int(sum(p.get_value().size for p in params))
    per_eval = t_fd / n_evals
    return {
        "activation": activation,
        "dtype": dtype,
        "seed": seed,
        "eps": eps,
        "floor": floor,
        "loss": loss0,
        # rounding noise of a central difference: macheps * |loss| / eps
        "fd_noise_estimate": float(np.finfo(dtype).eps * abs(loss0) / eps),
        "params": per_param,
        "timing": {
            "backprop_s": t_backprop,
            "loss_eval_s": t_loss,
            "fd_per_eval_s": per_eval,
            "n_params": n_total,
            "numerical_full_s_estimate": 2 * n_total * per_eval,
            "check_grad_s": t_check,
        },
    }


def run(results_dir: Path, quick: bool = False, seed: int = 0) -> Path:
    from ..data import load_mnist

    cfg = QUICK if quick else FULL
    data = load_mnist()
    runs = []
    for s in range(seed, seed + cfg["n_seeds"]):
        idx = np.sort(np.random.default_rng(s).choice(len(data.y_train), BATCH, replace=False))
        xb, yb = data.x_train[idx], data.y_train[idx]
        for activation in cfg["activations"]:
            for dtype in cfg["dtypes"]:
                entry = _one(activation, dtype, s, xb, yb, cfg["n_samples"])
                entry["batch_indices"] = idx.tolist()
                entry["batch_labels"] = yb.tolist()
                runs.append(entry)
    payload = {
        "experiment": "gradcheck",
        "quick": quick,
        "seed": seed,
        "machine": machine_info(),
        "model": {"sizes": list(SIZES), "init_std": INIT_STD, "loss": "softmax cross-entropy (mean over batch)"},
        "batch": BATCH,
        "n_samples": cfg["n_samples"],
        "runs": runs,
    }
    return write_json(results_path(results_dir, quick), payload)


# ---------------------------------------------------------------------------- plotting
def _configs(runs: list[dict]) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for r in runs:
        key = (r["activation"], r["dtype"])
        if key not in seen:
            seen.append(key)
    return seen


def plot(results: Path, figures_dir: Path) -> list[Path]:
    data = read_json(results)
    runs = data["runs"]
    params = ["W1", "b1", "W2", "b2"]
    configs = _configs(runs)
    fig, axes = figure(1, 2, figsize=(12, 5.0))
    width = 0.8 / len(configs)
    colors = {("relu", "float64"): "tab:blue", ("sigmoid", "float64"): "tab:cyan",
              ("relu", "float32"): "tab:red", ("sigmoid", "float32"): "tab:orange"}
    metrics = [("max_rel_error", "max relative error (symopt.check_grad)"),
               ("mean_abs_diff", "mean |backprop − numerical| (seed's metric)")]
    for ax, (metric, label) in zip(axes, metrics):
        for c, (act, dtype) in enumerate(configs):
            sel = [r for r in runs if r["activation"] == act and r["dtype"] == dtype]
            vals = np.array([[max(r["params"][p][metric], 1e-18) for p in params] for r in sel])  # seeds x params
            pos = np.arange(len(params)) - 0.4 + width * (c + 0.5)
            ax.bar(pos, vals.max(axis=0), width * 0.9, color=colors.get((act, dtype)),
                   label=f"{act}, {dtype}")
            for row in vals:
                ax.plot(pos, row, "k.", ms=3)
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(params)), [f"{p}\n{runs[0]['params'][p]['shape']}" for p in params])
        ax.set_xlabel("parameter (shape)")
        ax.set_ylabel(label + " (log)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_title("max relative error |a − n| / max(|a|, |n|, floor)", fontsize=10)
    axes[1].set_title("seed's metric: mean absolute difference", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(configs), fontsize=8, frameon=False)
    n = data["n_samples"]
    fig.suptitle(
        f"Backprop vs central differences, 784-50-10 net, {data['batch']} real MNIST images "
        f"(W1: {n} sampled entries; b1, W2, b2: {'all entries' if n >= 500 else f'up to {n} entries'})\n"
        f"bars: worst of {len({r['seed'] for r in runs})} seed(s) (each its own batch and weights); dots: each seed",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out = Path(figures_dir) / ("gradcheck-quick.png" if data["quick"] else "gradcheck.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    return [save_png(fig, out)]


# --------------------------------------------------------------------------- summary
def summarize(results: Path) -> str:
    data = read_json(results)
    runs = data["runs"]
    params = ["W1", "b1", "W2", "b2"]
    lines = [
        f"Backprop vs central differences, 784-50-10 net, batch of {data['batch']} real MNIST images; "
        f"worst over {len({r['seed'] for r in runs})} seed(s):",
        f"{'activation':10s} {'dtype':8s} {'eps':>6s} {'param':5s} {'checked':>8s} {'max rel err':>12s} "
        f"{'norm rel err':>12s} {'mean|a-n|':>10s} {'mean|a|':>10s}",
    ]
    for act, dtype in _configs(runs):
        sel = [r for r in runs if r["activation"] == act and r["dtype"] == dtype]
        for p in params:
            e = [r["params"][p] for r in sel]
            lines.append(
                f"{act:10s} {dtype:8s} {sel[0]['eps']:6.0e} {p:5s} {e[0]['n_checked']:8d} "
                f"{max(x['max_rel_error'] for x in e):12.2e} {max(x['norm_rel_error'] for x in e):12.2e} "
                f"{max(x['mean_abs_diff'] for x in e):10.2e} {np.mean([x['mean_abs_grad'] for x in e]):10.2e}"
            )
    for dtype in dict.fromkeys(r["dtype"] for r in runs):
        worst = max(
            ((r, p) for r in runs if r["dtype"] == dtype for p in params),
            key=lambda rp: rp[0]["params"][rp[1]]["max_rel_error"],
        )
        r, p = worst
        e = r["params"][p]
        if "abs_grad_at_max_rel" in e:
            lines.append(
                f"Worst {dtype} entry ({r['activation']}, seed {r['seed']}, {p}): |backprop| = "
                f"{e['abs_grad_at_max_rel']:.2e}, |difference| = {e['abs_diff_at_max_rel']:.2e}; "
                "a central difference's "
                f"rounding noise is ~macheps*|loss|/eps = {r['fd_noise_estimate']:.1e}."
            )
    t = [r["timing"] for r in runs if r["dtype"] == "float64"] or [r["timing"] for r in runs]
    bp = np.median([x["backprop_s"] for x in t])
    fe = np.median([x["fd_per_eval_s"] for x in t])
    full = np.median([x["numerical_full_s_estimate"] for x in t])
    lines.append(
        f"Timing ({t[0]['n_params']} parameters): one backprop gradient {bp * 1e3:.2f} ms; one loss evaluation in the "
        f"finite-difference loop {fe * 1e3:.2f} ms, so a full numerical gradient (2 per entry) ~{full:.0f} s, "
        f"{full / bp:.0f}x the backprop time."
    )
    return "\n".join(lines)
