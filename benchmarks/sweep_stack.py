"""Stacked sweep tasks vs one run per task: wall time of the same grid on the same Dask workers.

Purpose
-------
What ``stack_size`` (``symopt sweep --stack-size N``) saves on a learning-rate x seed grid:
the runs of one compiled structure trained together as one seed stack per task, against
today's one run per task, on the same 2-worker local cluster.

Settings
--------
* Grid: Adam, 6 learning rates (1e-4 .. 3e-2) x 5 seeds = 30 runs, 1 epoch on all of MNIST
  (60,000 training, 10,000 test images), the mnist-optimizers MLP 784-100-100-100-100-10
  (ReLU, He, dropout 0.2), batch 128 (468 steps per run); 2 worker processes of one
  thread each (``WORKER_ENV``: one BLAS thread).
* Stack sizes: 1 (one run per task, a single-model ``Trainer`` per run) and by default 15
  (two tasks of 15 members: one per worker) and 5 (six tasks).
* ``cold``: ``run_sweep`` end to end with its own ``LocalCluster`` (cluster start, data
  loading and compilation in each worker included): what a user waits for.
* ``warm``: the same grid into a fresh database on an existing cluster whose workers have
  trained the same grid with other seeds first (functions compiled, data loaded): the
  training and the task traffic alone.
* ``agreement``: the largest differences between the stacked and the unstacked databases'
  per-epoch numbers. Per step they agree to float32 round-off; over an epoch of 468 Adam
  steps the round-off is amplified (the two trajectories are bit-equal for ~90 steps, then
  drift), to a few percent at the larger learning rates, as between two unstacked runs
  compiled with Numba and with CVM.

How to run
----------
::

    python benchmarks/sweep_stack.py [--stack-sizes 1,15,5] [--no-warm] [--epochs 1]
                                     [--out benchmarks/results/sweep_stack.json]

The issue's 20-epoch grid, end to end only:
``--epochs 20 --stack-sizes 1,15 --no-warm --out benchmarks/results/sweep_stack_20ep.json``.

The machine is shared: the load average before and after each measurement is recorded
with the numbers.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy (symopt does the same)

import argparse  # noqa: E402
import sqlite3  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from sweep_scaling import _cluster, _db_stats, _load  # noqa: E402  (this folder is on sys.path when run)

GRID: dict[str, Any] = {
    "epochs": 1, "seeds": 5, "batch_size": 128,  # model: the mnist-optimizers MLP (the sweep's default)
    "optimizers": {"adam": {"learning_rate": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]}},
}
WORKERS = 2


def _numbers(db: Path) -> dict[tuple[str, int], list[tuple[float, float, float]]]:
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT r.run_key, e.epoch, e.train_loss, e.test_loss, e.test_accuracy FROM epochs e "
                        "JOIN runs r USING (run_id) ORDER BY r.run_key, e.epoch").fetchall()
    conn.close()
    out: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    for key, epoch, *values in rows:
        out[(key, epoch)] = values
    return out


def _agreement(db: Path, reference: Path) -> dict[str, Any]:
    import numpy as np

    got, want = _numbers(db), _numbers(reference)
    assert sorted(got) == sorted(want), "the databases hold different runs"
    a = np.array([got[k] for k in sorted(want)], dtype=float)
    b = np.array([want[k] for k in sorted(want)], dtype=float)
    rel = np.abs(a - b) / np.maximum(np.abs(b), 1e-12)
    return {"runs_epochs": len(want),
            "max_rel_diff_train_loss": float(np.nanmax(rel[:, 0])),
            "max_rel_diff_test_loss": float(np.nanmax(rel[:, 1])),
            "max_abs_diff_test_accuracy": float(np.nanmax(np.abs(a[:, 2] - b[:, 2])))}


def measure(tmp: Path, size: int, warm: bool, grid: dict[str, Any]) -> dict[str, Any]:
    from symopt.sweep import run_sweep

    out: dict[str, Any] = {"stack_size": size, "load_before": _load()}
    db = tmp / f"cold{size}.db"
    start = time.perf_counter()
    report = run_sweep(grid, db, n_workers=WORKERS, stack_size=size, progress=False)
    out["cold_seconds"] = round(time.perf_counter() - start, 2)
    assert (report.done, report.failed) == (30, 0), report
    out["cold_db"] = _db_stats(db)
    out["load_after_cold"] = _load()
    print(f"stack_size {size}: cold {out['cold_seconds']:.1f} s {out['cold_db']} load {out['load_after_cold']}",
          flush=True)
    if warm:
        cluster = _cluster(WORKERS)
        try:
            address = cluster.scheduler_address
            run_sweep({**grid, "seeds": [100, 101, 102, 103, 104]}, tmp / f"warmup{size}.db", scheduler=address,
                      stack_size=size, progress=False)
            db_warm = tmp / f"warm{size}.db"
            start = time.perf_counter()
            run_sweep(grid, db_warm, scheduler=address, stack_size=size, progress=False)
            out["warm_seconds"] = round(time.perf_counter() - start, 2)
        finally:
            cluster.close()
        out["warm_db"] = _db_stats(db_warm)
        out["load_after_warm"] = _load()
        print(f"stack_size {size}: warm {out['warm_seconds']:.1f} s {out['warm_db']} load {out['load_after_warm']}",
              flush=True)
    out["db"] = db
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sweep_stack.json"))
    parser.add_argument("--stack-sizes", default="1,15,5", help="comma-separated; 1 (the baseline) is always run")
    parser.add_argument("--no-warm", action="store_true", help="only the end-to-end (cold) sweeps")
    parser.add_argument("--epochs", type=int, default=GRID["epochs"], help="epochs per run (issue 17's grid: 20)")
    args = parser.parse_args()
    grid = {**GRID, "epochs": args.epochs}
    sizes = [int(s) for s in args.stack_sizes.split(",") if s.strip()]
    sizes = [1] + [s for s in sizes if s != 1]

    from symopt import report

    start_load = _load()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            results.append(measure(Path(tmp), size, not args.no_warm, grid))
        reference = results[0]["db"]
        for r in results:
            db = r.pop("db")
            if r["stack_size"] != 1:
                r["agreement_with_stack_size_1"] = _agreement(db, reference)
                r["speedup_cold"] = round(results[0]["cold_seconds"] / r["cold_seconds"], 3)
                if "warm_seconds" in r:
                    r["speedup_warm"] = round(results[0]["warm_seconds"] / r["warm_seconds"], 3)
    doc = {
        "benchmark": "sweep_stack",
        "setting": {"grid": grid, "model": "symopt.mnist_runs.MODEL (784-100x4-10, ReLU, He, dropout 0.2)",
                    "data": "all of MNIST", "workers": WORKERS,
                    "notes": "cold: run_sweep with its own LocalCluster (start, data, compile included); "
                             "warm: same grid on an existing cluster after the same grid with other seeds"},
        "machine": report.machine_info(),
        "load_average_start": start_load,
        "results": results,
        "load_average_end": _load(),
    }
    report.write_json(args.out, doc)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
