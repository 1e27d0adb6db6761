"""Learning-rate sensitivity from the stacked sweep's database: a figure and a Markdown table.

Reads only the raw runs in ``experiments/results/lr-sensitivity.db`` (written by
``symopt sweep experiments/sweeps/lr-sensitivity.toml``) and draws final test accuracy against
the learning rate for each rule (mean over seeds, bars: the smallest and largest seed)::

    python experiments/sweeps/lr_sensitivity.py [--db DB] [--figure PNG]
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from symopt.sweep import ResultStore

HERE = Path(__file__).resolve().parent.parent


def table(db: Path) -> dict[str, dict[float, np.ndarray]]:
    """rule -> learning rate -> final test accuracy per seed (NaN for a diverged run)."""
    out: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    with ResultStore(db) as store:
        for run in store.runs():
            acc = run["test_accuracy"][-1] if run["test_accuracy"] else math.nan
            out[run["optimizer"]][float(run["hyperparameters"]["learning_rate"])].append(acc)
    return {rule: {lr: np.asarray(v) for lr, v in sorted(rates.items())} for rule, rates in out.items()}


def markdown(data: dict[str, dict[float, np.ndarray]]) -> str:
    rules = list(data)
    lines = ["| rule | " + " | ".join(f"lr x{m:g}" for m in (0.1, 0.316, 1, 3.16, 10)) + " | best lr |",
             "|---|" + "---:|" * 6]
    for rule in rules:
        cells, best = [], (None, -1.0)
        for lr, acc in data[rule].items():
            mean = float(np.mean(acc))
            cells.append(f"{lr:g}: {100 * mean:.2f} +- {100 * float(np.std(acc, ddof=1)):.2f}")
            if mean > best[1]:
                best = (lr, mean)
        lines.append(f"| {rule} | " + " | ".join(cells) + f" | {best[0]:g} |")
    return "\n".join(lines)


def plot(data: dict[str, dict[float, np.ndarray]], figure: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for rule, rates in data.items():
        default = sorted(rates)[len(rates) // 2]  # the grids are centred on each rule's default
        x = np.asarray(sorted(rates)) / default
        acc = [100 * rates[lr] for lr in sorted(rates)]
        mean = np.array([np.mean(a) for a in acc])
        lo = mean - np.array([np.min(a) for a in acc])
        hi = np.array([np.max(a) for a in acc]) - mean
        ax.errorbar(x, mean, yerr=[lo, hi], marker="o", capsize=3, label=rule)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate / the rule's default")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_ylim(bottom=max(0.0, ax.get_ylim()[0]))
    ax.legend(fontsize=8)
    ax.set_title("MNIST MLP, 5 epochs, 3 seeds (bars: min-max)")
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, default=HERE / "results" / "lr-sensitivity.db")
    parser.add_argument("--figure", type=Path, default=HERE / "figures" / "lr-sensitivity-curve.png")
    args = parser.parse_args()
    data = table(args.db)
    plot(data, args.figure)
    print(markdown(data))
    print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
