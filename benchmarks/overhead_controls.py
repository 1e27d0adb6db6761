"""Per-step cost of the in-graph training controls.

Purpose
-------
symopt puts the non-finite guard, gradient clipping and learning-rate schedules inside
the one compiled train step. This script measures what that costs on a realistic small
model: the MLP 784-100-100-100-100-10 (ReLU, He init, float32) with softmax
cross-entropy on a batch of 128, trained with Adam, compiled twice:

* ``plain``: ``symopt.Adam(params, learning_rate=1e-3)``;
* ``controls``: the same Adam with ``skip_nonfinite=True``, ``clip_global_norm=1.0``
  and ``learning_rate=warmup_cosine(peak=1e-3, warmup_steps=100, total_steps=10_000)``.

Each function is compiled once and warmed up; then ``--repeats`` rounds of ``--steps``
calls each are timed, alternating which function goes first in a round, so slow drift
of a shared machine affects both alike. The per-step time of a round is its wall time
divided by ``--steps``; the script reports the median over rounds (and the minimum) and
the overhead ``median(controls) / median(plain) - 1``. Data are random arrays of MNIST
shape (seeded), cycled over a few batches; the two models start from identical weights.

How to run
----------
::

    python benchmarks/overhead_controls.py [--steps 300] [--repeats 9] [--warmup 50]
                                           [--out benchmarks/results/overhead_controls.json]

It prints a table and writes the JSON with the machine (CPU model, cores,
``OPENBLAS_NUM_THREADS``, load average), versions and every round's timing.
"""

from __future__ import annotations

import os

# One BLAS thread unless the caller chose (symopt does the same when imported first);
# must happen before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytensor  # noqa: E402
import pytensor.tensor as pt  # noqa: E402

import symopt  # noqa: E402
from symopt import nn, schedules  # noqa: E402
from symopt._threads import limit_blas_threads  # noqa: E402
from symopt.report import machine_info  # noqa: E402

SIZES = [784, 100, 100, 100, 100, 10]
BATCH = 128
N_BATCHES = 8


def build(controls: bool) -> tuple[Any, symopt.Optimizer, float]:
    """A fresh MLP (seed 0) and its compiled Adam train step; returns (train, opt, compile seconds)."""
    model = nn.MLP(SIZES, activation="relu", init="he", seed=0, dtype="float32")
    x = pt.matrix("x", dtype="float32")
    y = pt.ivector("y")
    loss = nn.cross_entropy(model.output(x, train=True), y)
    if controls:
        lr = schedules.warmup_cosine(peak=1e-3, warmup_steps=100, total_steps=10_000)
        opt = symopt.Adam(model.params, learning_rate=lr, skip_nonfinite=True, clip_global_norm=1.0)
    else:
        opt = symopt.Adam(model.params, learning_rate=1e-3)
    start = time.perf_counter()
    train = pytensor.function([x, y], loss, updates=opt.updates(loss))
    return train, opt, time.perf_counter() - start


def run(train: Any, data: list[tuple[np.ndarray, np.ndarray]], steps: int) -> tuple[float, float]:
    """Wall seconds per step over ``steps`` calls, and the last loss."""
    loss = float("nan")
    start = time.perf_counter()
    for i in range(steps):
        x, y = data[i % len(data)]
        loss = train(x, y)
    return (time.perf_counter() - start) / steps, float(loss)


@limit_blas_threads()  # BLAS held at $OPENBLAS_NUM_THREADS (1) threads, even if NumPy came first
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="train calls per timed round")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds per function")
    parser.add_argument("--warmup", type=int, default=50, help="untimed calls per function first")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "overhead_controls.json")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    data = [
        (rng.random((BATCH, 784), dtype=np.float32), rng.integers(0, 10, size=BATCH).astype(np.int32))
        for _ in range(N_BATCHES)
    ]
    load_before = os.getloadavg()
    functions: dict[str, Any] = {}
    compile_s: dict[str, float] = {}
    for name in ("plain", "controls"):
        train, opt, seconds = build(name == "controls")
        first = time.perf_counter()
        train(*data[0])  # the first call finishes the JIT compilation
        compile_s[name] = seconds + time.perf_counter() - first
        functions[name] = (train, opt)
    for name, (train, _) in functions.items():
        run(train, data, args.warmup)

    rounds: dict[str, list[float]] = {"plain": [], "controls": []}
    losses: dict[str, float] = {}
    for r in range(args.repeats):
        order = ["plain", "controls"] if r % 2 == 0 else ["controls", "plain"]
        for name in order:
            per_step, losses[name] = run(functions[name][0], data, args.steps)
            rounds[name].append(per_step)
    load_after = os.getloadavg()

    controls_opt = functions["controls"][1]
    skipped = int(controls_opt.skipped.get_value())
    if skipped or not all(np.isfinite(v) for v in losses.values()):
        raise SystemExit(f"unexpected: {skipped} skipped steps, losses {losses}")
    median = {k: statistics.median(v) for k, v in rounds.items()}
    best = {k: min(v) for k, v in rounds.items()}
    overhead = 100.0 * (median["controls"] / median["plain"] - 1.0)
    overhead_min = 100.0 * (best["controls"] / best["plain"] - 1.0)

    result = {
        "benchmark": "per-step time of one compiled Adam train step, plain vs with in-graph controls",
        "model": {"sizes": SIZES, "activation": "relu", "init": "he", "seed": 0, "dtype": "float32",
                  "loss": "symopt.nn.cross_entropy (mean)", "batch": BATCH,
                  "data": f"random uniform [0,1) float32 images of MNIST shape, {N_BATCHES} batches cycled, seed 0"},
        "variants": {
            "plain": "symopt.Adam(params, learning_rate=1e-3)",
            "controls": "symopt.Adam(params, learning_rate=warmup_cosine(peak=1e-3, warmup_steps=100, "
                        "total_steps=10000), skip_nonfinite=True, clip_global_norm=1.0)",
        },
        "protocol": {"steps_per_round": args.steps, "rounds": args.repeats, "warmup_steps": args.warmup,
                     "order": "alternating per round", "statistic": "median over rounds of wall time / steps"},
        "machine": {**machine_info(), "loadavg_before": load_before, "loadavg_after": load_after},
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "pytensor": pytensor.__version__,
                     "symopt": symopt.__version__, "pytensor_linker": str(pytensor.config.linker),
                     "pytensor_mode": str(pytensor.config.mode)},
        "compile_and_first_call_s": compile_s,
        "per_step_ms_rounds": {k: [1e3 * v for v in vals] for k, vals in rounds.items()},
        "per_step_ms_median": {k: 1e3 * v for k, v in median.items()},
        "per_step_ms_min": {k: 1e3 * v for k, v in best.items()},
        "overhead_percent_median": overhead,
        "overhead_percent_min": overhead_min,
        "skipped_steps_controls": skipped,
        "final_loss": losses,
    }

    print(f"MLP {'-'.join(map(str, SIZES))} ReLU float32, batch {BATCH}, Adam; {args.repeats} rounds x {args.steps} steps")
    print(f"CPU: {result['machine']['cpu_model']}, {result['machine']['usable_cores']} usable cores, "
          f"OPENBLAS_NUM_THREADS={result['machine']['openblas_threads']}, load {load_before[0]:.2f} -> {load_after[0]:.2f}")
    print(f"{'variant':<10} {'median ms/step':>15} {'min ms/step':>12} {'compile s':>10}")
    for name in ("plain", "controls"):
        print(f"{name:<10} {1e3 * median[name]:>15.3f} {1e3 * best[name]:>12.3f} {compile_s[name]:>10.1f}")
    print(f"overhead of skip_nonfinite + clip_global_norm + warmup_cosine: {overhead:+.1f}% (median), "
          f"{overhead_min:+.1f}% (min)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
