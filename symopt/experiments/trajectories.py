"""Optimiser paths on a 2-D quadratic, and gradient descent with too large / too small learning rates.

Part 1 (the seed's comparison of update rules): every rule of the registry
(:data:`symopt.OPTIMIZERS`) minimises the elongated bowl

.. math:: f(x, y) = x^2 / 20 + y^2

from :math:`(-7, 2)` for 30 steps. The point is a length-2 ``pytensor.shared`` float64
vector and each rule gets **one** compiled step function (forward, gradient and update);
a step is one call. The seed's learning rates are kept (SGD 0.95, Momentum 0.1, AdaGrad
1.5, Adam 0.3); :data:`RATES` gives the others and why.

Part 2 (the seed's learning-rate demonstration): plain gradient descent on
:math:`x_0^2 + x_1^2` from :math:`(-3, 4)` for 100 steps with learning rates 0.1, 10
and 1e-10, one compiled SGD function reused with ``set_hyperparameter``. Closed form:
:math:`x_k = (1 - 2\\eta)^k x_0`, so 0.1 converges (factor 0.8), 10 diverges (factor
-19) and 1e-10 does not move visibly. The results also hold the seed's own recipe (a
NumPy central-difference gradient with h = 1e-4) for comparison: with lr = 10 it stalls
near 1e13 because ``x + h == x`` once ``|x|`` exceeds about 1e12, which is where the
seed's printed value comes from.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..function import function
from ._common import figure, machine_info, read_json, save_png, write_json

DESCRIPTION = "paths of every registry optimiser on x^2/20 + y^2 from (-7, 2); GD with lr 0.1 / 10 / 1e-10"

START = (-7.0, 2.0)
STEPS = 30
#: Hyperparameters per rule (anything not listed keeps the rule's default).
#: SGD, Momentum, AdaGrad and Adam: the seed's rates. Nesterov: Momentum's. The Adam
#: family (AdamW with its default decoupled weight decay 0.01, AMSGrad, Adamax, NAdam,
#: RAdam) and Lion: Adam's 0.3, so their paths differ only by the rule. RMSprop: 0.3, about AdaGrad's first-step length
#: (lr / sqrt(1 - rho) ~ 0.95 per coordinate). AdaDelta has no real learning rate
#: (1.0); with the paper's epsilon 1e-6 its steps start at ~sqrt(eps) and it moves only
#: 0.14 in 30 steps, so epsilon is raised to 1e-2 to show its path.
RATES: dict[str, dict[str, float]] = {
    "sgd": {"learning_rate": 0.95},
    "momentum": {"learning_rate": 0.1, "momentum": 0.9},
    "nesterov": {"learning_rate": 0.1, "momentum": 0.9},
    "adagrad": {"learning_rate": 1.5},
    "rmsprop": {"learning_rate": 0.3},
    "adadelta": {"learning_rate": 1.0, "epsilon": 1e-2},
    "adam": {"learning_rate": 0.3},
    "adamw": {"learning_rate": 0.3, "weight_decay": 0.01},
    "amsgrad": {"learning_rate": 0.3},
    "adamax": {"learning_rate": 0.3},
    "nadam": {"learning_rate": 0.3},
    "radam": {"learning_rate": 0.3},
    "lion": {"learning_rate": 0.3},
}
QUICK_OPTIMIZERS = ("sgd", "momentum", "adagrad", "adam")

GD_START = (-3.0, 4.0)
GD_STEPS = 100
GD_RATES = (0.1, 10.0, 1e-10)
SEED_FD_STEP = 1e-4  # the seed's numerical-gradient step
DPI = 90


def f_bowl(x: Any, y: Any) -> Any:
    return x**2 / 20.0 + y**2


def results_path(results_dir: Path, quick: bool) -> Path:
    return Path(results_dir) / ("trajectories-quick.json" if quick else "trajectories.json")


# ----------------------------------------------------------------------------- running
def _optimizer_paths(names: list[str], steps: int) -> dict[str, Any]:
    import pytensor

    import symopt

    paths: dict[str, Any] = {}
    for name in names:
        cls = symopt.get(name)
        hp = dict(RATES.get(name, {"learning_rate": 0.3}))
        p = pytensor.shared(np.array(START, dtype="float64"), name="p")
        loss = f_bowl(p[0], p[1])
        opt = cls([p], **hp)
        # Not a Trainer: a closed-form function of two coordinates, no model and no data set.
        step = function([], loss, updates=opt.updates(loss))  # one compiled step per rule
        points = [p.get_value().copy()]
        for _ in range(steps):
            step()
            points.append(p.get_value().copy())
        path = np.array(points)
        fvals = f_bowl(path[:, 0], path[:, 1])
        paths[name] = {
            "class": cls.__name__,
            "hyperparameters": {k: opt.get_hyperparameter(k) for k in opt.hyperparameters},
            "set": hp,
            "path": path.tolist(),
            "f": fvals.tolist(),
            "final_f": float(fvals[-1]),
            "final_distance": float(np.hypot(*path[-1])),
        }
    return paths


def _seed_recipe_gd(lr: float, steps: int) -> list[float]:
    """The seed's gradient descent: central differences with h = 1e-4, in NumPy float64."""
    x = np.array(GD_START, dtype=np.float64)
    for _ in range(steps):
        grad = np.zeros(2)
        for i in range(2):
            orig = x[i]
            x[i] = orig + SEED_FD_STEP
            up = float(x @ x)
            x[i] = orig - SEED_FD_STEP
            down = float(x @ x)
            x[i] = orig
            grad[i] = (up - down) / (2 * SEED_FD_STEP)
        x -= lr * grad
    return x.tolist()


def _learning_rate_runs(steps: int) -> list[dict[str, Any]]:
    import pytensor

    import symopt

    p = pytensor.shared(np.array(GD_START, dtype="float64"), name="x")
    loss = p[0] ** 2 + p[1] ** 2
    opt = symopt.SGD([p], learning_rate=GD_RATES[0])
    step = function([], loss, updates=opt.updates(loss))  # compiled once, reused for every rate
    initial_state = opt.state_dict()
    runs = []
    for lr in GD_RATES:
        opt.load_state_dict(initial_state)  # each rate a fresh run (step counter 0)
        opt.set_hyperparameter("learning_rate", lr)
        p.set_value(np.array(GD_START, dtype="float64"))
        points = [p.get_value().copy()]
        for _ in range(steps):
            step()
            points.append(p.get_value().copy())
        path = np.array(points)
        runs.append(
            {
                "learning_rate": lr,
                "path": path.tolist(),
                "final": path[-1].tolist(),
                "final_f": float(path[-1] @ path[-1]),
                "final_distance": float(np.hypot(*path[-1])),
                "closed_form_final": ((1 - 2 * lr) ** steps * np.array(GD_START)).tolist(),
                "seed_recipe_final": _seed_recipe_gd(lr, steps),
            }
        )
    return runs


def run(results_dir: Path, quick: bool = False, seed: int = 0) -> Path:
    import symopt

    # Per-parameter rules only: lbfgs (full-batch kind) runs whole iterations per call, not one step.
    names = list(QUICK_OPTIMIZERS) if quick else symopt.registry.rules()
    payload = {
        "experiment": "trajectories",
        "quick": quick,
        "seed": seed,  # recorded for the contract; the experiment is deterministic
        "machine": machine_info(),
        "bowl": {"function": "x^2/20 + y^2", "start": list(START), "steps": STEPS, "dtype": "float64"},
        "paths": _optimizer_paths(names, STEPS),
        "learning_rate": {
            "function": "x0^2 + x1^2",
            "start": list(GD_START),
            "steps": GD_STEPS,
            "optimizer": "sgd",
            "seed_fd_step": SEED_FD_STEP,
            "runs": _learning_rate_runs(GD_STEPS),
        },
    }
    return write_json(results_path(results_dir, quick), payload)


# ---------------------------------------------------------------------------- plotting
def _fmt(value: float) -> str:
    return f"{value:g}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.0e}"


def plot(results: Path, figures_dir: Path) -> list[Path]:
    data = read_json(results)
    suffix = "-quick" if data["quick"] else ""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    out = [_plot_paths(data, figures_dir / f"trajectories{suffix}.png")]
    out.append(_plot_learning_rates(data, figures_dir / f"trajectories-lr{suffix}.png"))
    return out


def _plot_paths(data: dict[str, Any], path: Path) -> Path:
    paths = data["paths"]
    names = list(paths)
    ncols = 4 if len(names) > 4 else 2
    nrows = math.ceil((len(names) + 1) / ncols)  # one extra panel: final distances
    fig, axes = figure(nrows, ncols, figsize=(3.6 * ncols, 2.7 * nrows), squeeze=False)
    gx, gy = np.meshgrid(np.linspace(-8, 8, 321), np.linspace(-3, 3, 161))
    levels = [0.05, 0.2, 0.5, 1, 2, 4, 8]
    start = data["bowl"]["start"]
    for ax, name in zip(axes.flat, names):
        entry = paths[name]
        pts = np.array(entry["path"])
        ax.contour(gx, gy, f_bowl(gx, gy), levels=levels, colors="0.7", linewidths=0.7)
        ax.plot(pts[:, 0], pts[:, 1], "o-", color="tab:red", ms=2.5, lw=1)
        ax.plot(*start, "s", color="k", ms=4)
        ax.plot(0, 0, "+", color="k", ms=9, mew=1.5)
        ax.set_xlim(-8, 8)
        ax.set_ylim(-3, 3)
        hp = ", ".join(f"{'lr' if k == 'learning_rate' else k} {_fmt(v)}" for k, v in entry["set"].items())
        ax.set_title(f"{entry['class']} ({hp})\nf after {len(pts) - 1} steps = {entry['final_f']:.2g}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("x", fontsize=8, labelpad=1)
        ax.set_ylabel("y", fontsize=8, labelpad=1)
    rest = list(axes.flat)[len(names) :]
    bar_ax = rest[0]
    dists = [paths[n]["final_distance"] for n in names]
    order = np.argsort(dists)
    bar_ax.barh([paths[names[i]]["class"] for i in order], [dists[i] for i in order], color="tab:blue")
    bar_ax.set_xscale("log")
    from matplotlib.ticker import LogLocator, NullFormatter

    bar_ax.xaxis.set_major_locator(LogLocator(base=10, numticks=12))
    bar_ax.xaxis.set_minor_formatter(NullFormatter())
    bar_ax.invert_yaxis()
    bar_ax.set_xlabel("distance to minimum (0, 0) after 30 steps (log)", fontsize=8)
    bar_ax.set_title("final distance, best first", fontsize=9)
    bar_ax.tick_params(labelsize=7)
    for ax in rest[1:]:
        ax.axis("off")
    fig.suptitle(
        f"Paths on f(x, y) = x²/20 + y² from ({start[0]:g}, {start[1]:g}), {data['bowl']['steps']} steps, "
        "one compiled step function per rule\n"
        "(square: start, +: minimum (0, 0); grey: contours f = 0.05, 0.2, 0.5, 1, 2, 4, 8; x and y axes not to scale)",
        fontsize=10,
    )
    fig.tight_layout()
    return save_png(fig, path, dpi=DPI)


def _plot_learning_rates(data: dict[str, Any], path: Path) -> Path:
    lr_data = data["learning_rate"]
    x0 = np.array(lr_data["start"])
    colors = {0.1: "tab:green", 10.0: "tab:red", 1e-10: "tab:blue"}
    fig, (ax1, ax2) = figure(1, 2, figsize=(11, 5.2))
    for entry in lr_data["runs"]:
        lr = entry["learning_rate"]
        pts = np.array(entry["path"])
        k = np.arange(len(pts))
        color = colors.get(lr, None)
        ax1.semilogy(k, np.hypot(pts[:, 0], pts[:, 1]), "-", color=color, lw=2, label=f"lr = {_fmt(lr)} (symopt SGD)")
        ax1.semilogy(k, np.linalg.norm(x0) * np.abs(1 - 2 * lr) ** k, "k:", lw=1)
    ax1.plot([], [], "k:", lw=1, label="closed form 5·|1 − 2 lr|^k")
    ax1.set_xlabel("step k")
    ax1.set_ylabel("distance to minimum ‖x_k‖ (log)")
    ax1.set_title(f"GD on x0² + x1² from ({x0[0]:g}, {x0[1]:g})")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3, which="major")

    g = np.linspace(-6, 6, 241)
    gx, gy = np.meshgrid(g, g)
    ax2.contour(gx, gy, gx**2 + gy**2, levels=[1, 4, 9, 16, 25, 36], colors="0.75", linewidths=0.7)
    for entry in lr_data["runs"]:
        lr = entry["learning_rate"]
        pts = np.array(entry["path"])
        color = colors.get(lr, None)
        if abs(1 - 2 * lr) > 1:  # leaves the window at once: draw step 1 up to the window's edge
            d = pts[1] - pts[0]
            t = min((5.8 - np.sign(c) * p0) / abs(c) for c, p0 in zip(d, pts[0]) if c != 0)
            ax2.annotate(
                "", xy=pts[0] + d * t, xytext=pts[0], zorder=1,
                arrowprops=dict(arrowstyle="->", color=color, lw=1.5, ls="--"),
            )
            label = (
                f"lr = {_fmt(lr)}: step 1 jumps to ({pts[1][0]:.0f}, {pts[1][1]:.0f}), "
                f"step 2 to ({pts[2][0]:.0f}, {pts[2][1]:.0f})"
            )
            ax2.plot([], [], "--", color=color, lw=1.5, label=label)
        else:
            last = entry["final"]
            ax2.plot(pts[:, 0], pts[:, 1], "o-", color=color, ms=3, lw=1, zorder=2,
                     label=f"lr = {_fmt(lr)}: ends at ({last[0]:.3g}, {last[1]:.3g})" if abs(last[0]) < 1e-3
                     else f"lr = {_fmt(lr)}: ends at ({last[0]:.9g}, {last[1]:.9g})")
    ax2.plot(*x0, "ks", ms=5)
    ax2.plot(0, 0, "k+", ms=10, mew=1.5)
    ax2.set_xlim(-6, 6)
    ax2.set_ylim(-6, 6)
    ax2.set_aspect("equal")
    ax2.set_xlabel("x0")
    ax2.set_ylabel("x1")
    ax2.set_title(f"paths, {lr_data['steps']} steps (square: start)")
    ax2.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.13))
    fig.tight_layout()
    return save_png(fig, path, dpi=DPI)


# --------------------------------------------------------------------------- summary
def summarize(results: Path) -> str:
    data = read_json(results)
    lines = [
        f"Paths on x^2/20 + y^2 from {tuple(data['bowl']['start'])}, {data['bowl']['steps']} steps (float64):",
        f"{'rule':10s} {'hyperparameters':28s} {'final (x, y)':>24s} {'f':>10s} {'distance':>10s}",
    ]
    paths = data["paths"]
    for name in sorted(paths, key=lambda n: paths[n]["final_distance"]):
        e = paths[name]
        hp = ", ".join(f"{'lr' if k == 'learning_rate' else k}={_fmt(v)}" for k, v in e["set"].items())
        x, y = e["path"][-1]
        point = f"({x:.3g}, {y:.3g})"
        lines.append(f"{e['class']:10s} {hp:28s} {point:>24s} {e['final_f']:10.3g} {e['final_distance']:10.3g}")
    lr_data = data["learning_rate"]
    lines.append(
        f"Gradient descent on x0^2 + x1^2 from {tuple(lr_data['start'])}, {lr_data['steps']} steps "
        "(symopt SGD, symbolic gradient; closed form (1 - 2 lr)^k x0; "
        "seed's recipe = NumPy central differences h=1e-4):"
    )
    for e in lr_data["runs"]:
        fx = ", ".join(f"{v:.9g}" for v in e["final"])
        cf = ", ".join(f"{v:.9g}" for v in e["closed_form_final"])
        sr = ", ".join(f"{v:.9g}" for v in e["seed_recipe_final"])
        lines.append(f"  lr={_fmt(e['learning_rate'])}: final ({fx}), closed form ({cf}), seed's recipe ({sr})")
    return "\n".join(lines)
