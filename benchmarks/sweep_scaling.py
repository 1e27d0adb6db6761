"""Sweep scaling on Dask: 1 vs 2 workers, and the overhead of one task.

Purpose
-------
How much a ``symopt sweep`` gains from a second worker process on this machine, and what
running a run as a Dask task (scheduling, transfer, result recording) costs on top of
training it in-process.

Settings
--------
* **Scaling** -- 2 optimisers (SGD, Adam; the rules' defaults) x 4 seeds, 1 epoch on a
  10,000-image MNIST subset (test: 2,000 images), the mnist-optimizers MLP
  784-100-100-100-100-10 (ReLU, He, dropout 0.2), batch 128 (78 steps per run). Timed:

  - ``cold``: ``run_sweep`` end to end with its own ``LocalCluster`` of 1 or 2 workers
    (cluster start, data loading and compilation in each worker included) -- what a user
    waits for;
  - ``warm``: the same sweep into a fresh database on an existing cluster whose workers
    have already compiled both functions (``scheduler=ADDRESS``) -- the distribution of
    the training itself.

* **Per-task overhead** -- tiny runs (1 epoch of 1 step: 128 training, 100 test images,
  the same MLP and SGD) on a warm 1-worker cluster. ``run_sweep`` is timed for
  ``--small`` and ``--large`` seeds; the per-run time is the slope
  ``(T_large - T_small) / (large - small)`` (fixed costs such as connecting cancel), and
  the overhead is that minus the time of the same call of ``train_run`` in-process.
  The time of one ``ResultStore.record`` (the SQLite transaction) is reported alone too.

How to run
----------
::

    python benchmarks/sweep_scaling.py [--out benchmarks/results/sweep_scaling.json]

The machine is shared: the load average before and after is recorded with the numbers.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy (symopt does the same)

import argparse  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

SCALING: dict[str, Any] = {
    "epochs": 1, "seeds": 4, "batch_size": 128,
    "model": {"sizes": [784, 100, 100, 100, 100, 10], "dropout": 0.2},
    "data": {"n_train": 10_000, "n_test": 2_000},
    "optimizers": {"sgd": {}, "adam": {}},
}
TINY: dict[str, Any] = {
    "epochs": 1, "batch_size": 128,
    "model": {"sizes": [784, 100, 100, 100, 100, 10], "dropout": 0.2},
    "data": {"n_train": 128, "n_test": 100},
    "optimizers": {"sgd": {}},
}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cluster(n: int) -> Any:
    from distributed import LocalCluster

    from symopt.sweep.engine import WORKER_ENV, _environment

    with _environment(WORKER_ENV):
        return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                            dashboard_address=None, silence_logs=logging.CRITICAL)


def _db_stats(db: Path) -> dict[str, Any]:
    import sqlite3

    conn = sqlite3.connect(db)
    compile_s, train_s, runs, workers = conn.execute(
        "SELECT SUM(compile_seconds), SUM(train_seconds), COUNT(*), COUNT(DISTINCT worker) FROM runs").fetchone()
    compiles = conn.execute("SELECT COUNT(*) FROM runs WHERE compile_seconds > 0").fetchone()[0]
    conn.close()
    return {"runs": runs, "workers_used": workers, "compilations": compiles,
            "compile_seconds_total": round(compile_s, 3), "train_seconds_total": round(train_s, 3)}


def scaling(tmp: Path) -> dict[str, Any]:
    from symopt.sweep import run_sweep

    out: dict[str, Any] = {}
    for n in (1, 2):
        load_before = _load()
        db = tmp / f"cold{n}.db"
        start = time.perf_counter()
        report = run_sweep(SCALING, db, n_workers=n, progress=False)
        cold = time.perf_counter() - start
        assert report.done == 8, report
        cluster = _cluster(n)
        try:
            run_sweep(SCALING, tmp / f"warmup{n}.db", scheduler=cluster.scheduler_address, progress=False)
            # Warm-up passes: each worker compiles what the placement gives it (and, after
            # a second pass with other seeds, what work stealing moved to it).
            run_sweep({**SCALING, "seeds": [10, 11, 12, 13, 14, 15]}, tmp / f"warmup{n}b.db",
                      scheduler=cluster.scheduler_address, progress=False)
            db_warm = tmp / f"warm{n}.db"
            start = time.perf_counter()
            run_sweep(SCALING, db_warm, scheduler=cluster.scheduler_address, progress=False)
            warm = time.perf_counter() - start
        finally:
            cluster.close()
        out[f"{n}_workers"] = {"cold_seconds": round(cold, 2), "warm_seconds": round(warm, 2),
                               "cold_db": _db_stats(db), "warm_db": _db_stats(db_warm),
                               "load_before": load_before, "load_after": _load()}
        print(f"{n} worker(s): cold {cold:.2f} s, warm {warm:.2f} s  {out[f'{n}_workers']}", flush=True)
    out["speedup_cold"] = round(out["1_workers"]["cold_seconds"] / out["2_workers"]["cold_seconds"], 3)
    out["speedup_warm"] = round(out["1_workers"]["warm_seconds"] / out["2_workers"]["warm_seconds"], 3)
    return out


def overhead(tmp: Path, small: int, large: int, repeats: int) -> dict[str, Any]:
    from symopt.sweep import ResultStore, load_config, run_sweep
    from symopt.sweep.engine import train_run

    cfg = load_config({**TINY, "seeds": large})
    tasks = [spec.as_task() for spec in cfg.runs()]
    train_run(tasks[0])  # compile in this process
    inproc = []
    for _ in range(repeats):
        start = time.perf_counter()
        for task in tasks:
            train_run(task)
        inproc.append((time.perf_counter() - start) / len(tasks))
    with ResultStore(tmp / "record.db", cfg.protocol) as store:
        results = [train_run(t) for t in tasks[:small]]
        start = time.perf_counter()
        for spec, result in zip(cfg.runs()[:small], results):
            store.record(spec, result=result)
        record_s = (time.perf_counter() - start) / small
    cluster = _cluster(1)
    try:
        address = cluster.scheduler_address
        run_sweep({**TINY, "seeds": [10_000]}, tmp / "tiny-warmup.db", scheduler=address, progress=False)
        slopes, t_small, t_large = [], [], []
        for i in range(repeats):
            timings = {}
            for n in (small, large):
                start = time.perf_counter()
                run_sweep({**TINY, "seeds": n}, tmp / f"tiny{i}-{n}.db", scheduler=address, progress=False)
                timings[n] = time.perf_counter() - start
            t_small.append(timings[small])
            t_large.append(timings[large])
            slopes.append((timings[large] - timings[small]) / (large - small))
    finally:
        cluster.close()
    per_task = statistics.median(slopes)
    in_process = statistics.median(inproc)
    out = {
        "small": small, "large": large, "repeats": repeats,
        "sweep_seconds_small": [round(t, 3) for t in t_small], "sweep_seconds_large": [round(t, 3) for t in t_large],
        "per_task_seconds_dask": round(per_task, 5), "per_run_seconds_in_process": round(in_process, 5),
        "overhead_per_task_seconds": round(per_task - in_process, 5),
        "sqlite_record_seconds": round(record_s, 5),
        "fixed_seconds_per_sweep_call": round(statistics.median(
            [ts - small * per_task for ts in t_small]), 3),
    }
    print(f"per task: {per_task * 1e3:.1f} ms on Dask vs {in_process * 1e3:.1f} ms in-process -> overhead "
          f"{out['overhead_per_task_seconds'] * 1e3:.1f} ms (SQLite record: {record_s * 1e3:.2f} ms)", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sweep_scaling.json"))
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--large", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from symopt import report

    start_load = _load()
    with tempfile.TemporaryDirectory() as tmp:
        doc = {
            "benchmark": "sweep_scaling",
            "setting": {"scaling": SCALING, "tiny": TINY,
                        "notes": "cold: run_sweep with its own LocalCluster (start, data, compile included); "
                                 "warm: same sweep on an existing cluster with both functions compiled"},
            "machine": report.machine_info(),
            "load_average_start": start_load,
            "scaling": scaling(Path(tmp)),
            "overhead": overhead(Path(tmp), args.small, args.large, args.repeats),
            "load_average_end": _load(),
        }
    report.write_json(args.out, doc)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
