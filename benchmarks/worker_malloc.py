"""What Dask's worker malloc setting costs a train step, and what symopt._malloc gives back.

Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``; with it glibc maps and
faults in a step's temporaries afresh at every call. Each variant runs in its own fresh
process (the variable is read at process start), in interleaved rounds:

* ``plain``: no variable (glibc's adaptive thresholds);
* ``dask``: ``MALLOC_TRIM_THRESHOLD_=65536``, as in a Dask worker;
* ``dask+keep``: the same, then :func:`symopt._malloc.keep_freed_memory` (what the sweep
  engine's tasks call in a worker).

A process compiles (from the warm cache) the sweep engine's step for the mnist-optimizers
protocol (MLP with dropout, Adam, full MNIST, batch 128; ``--stack S``: S seeds stacked),
trains one epoch to warm up, then times a second epoch (468 steps) and counts its minor
page faults and system time. Reports the median per step over rounds.

    python benchmarks/worker_malloc.py [--rounds 5] [--stack 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VARIANTS = {"plain": ({}, False), "dask": ({"MALLOC_TRIM_THRESHOLD_": "65536"}, False),
            "dask+keep": ({"MALLOC_TRIM_THRESHOLD_": "65536"}, True)}


def child(keep: bool, stack: int) -> dict[str, float]:
    """Runs in the variant's process: per-step seconds and minor faults of the engine's step."""
    import resource

    import numpy as np

    if keep:
        from symopt._malloc import keep_freed_memory

        assert keep_freed_memory()
    from protocol_time import protocol_trainer

    trainer = protocol_trainer("adam", stack)
    # one epoch warms up (first calls, the allocator settling), a second is timed
    rng = np.random.default_rng(0) if stack == 1 else [np.random.default_rng(s) for s in range(stack)]
    trainer.epoch_tally(rng)
    before = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    trainer.epoch_tally(rng)
    seconds = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_SELF)
    n = trainer.steps_per_epoch
    return {"ms_per_step": seconds / n * 1e3, "faults_per_step": (after.ru_minflt - before.ru_minflt) / n,
            "sys_ms_per_step": (after.ru_stime - before.ru_stime) / n * 1e3}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stack", type=int, default=1, help="seeds per stacked step (1: one Trainer step)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0] == "1", int(args.child[1]))))
        return 0
    from seeds_step import cpu_info

    report: dict[str, Any] = {"benchmark": "worker_malloc", "cpu": cpu_info(), "stack": args.stack,
                              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "load_before": os.getloadavg(),
                              "rounds": {name: [] for name in VARIANTS}}
    base = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    base.setdefault("OPENBLAS_NUM_THREADS", "1")
    for r in range(args.rounds):
        names = list(VARIANTS)[r % 3:] + list(VARIANTS)[:r % 3]
        for name in names:
            env, keep = VARIANTS[name]
            out = subprocess.run([sys.executable, __file__, "--child", "1" if keep else "0", str(args.stack)],
                                 env={**base, **env}, capture_output=True, text=True, check=True)
            report["rounds"][name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    report["load_after"] = os.getloadavg()
    report["median"] = {name: {k: statistics.median(x[k] for x in rows) for k in rows[0]}
                        for name, rows in report["rounds"].items()}
    out_path = args.out or HERE / "results" / f"worker_malloc_stack{args.stack}.json"
    out_path.write_text(json.dumps(report, indent=1) + "\n")
    plain = report["median"]["plain"]["ms_per_step"]
    for name, m in report["median"].items():
        print(f"{name:10s} {m['ms_per_step'] / args.stack:.3f} ms per seed-step "
              f"({m['ms_per_step'] / plain:.2f}x plain), "
              f"{m['faults_per_step']:.0f} minor faults and {m['sys_ms_per_step']:.3f} ms system time per step")
    print(f"load {report['load_before'][0]:.2f} -> {report['load_after'][0]:.2f}; report: {out_path}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
