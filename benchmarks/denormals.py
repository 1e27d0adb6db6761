"""What subnormal floats cost a train step late in training, with and without flushing them.

For each rule (the mnist-optimizers protocol's settings: MLP 784-100x4-10, dropout 0.2,
full MNIST, batch 128, the sweep engine's compiled step), one process:

1. trains ``--epochs`` epochs with ``Trainer.flush_denormals`` off (IEEE subnormals), timing
   each epoch: the slowdown as training goes on;
2. then times epochs alternately with flushing off and on, in ABBA order (off, on, on, off,
   ...; ``--pairs`` of each), so drifts of the machine hit both alike.

Reports ms per step: the first epoch, the last trained epoch, and the medians of the
alternated epochs off and on. Writes ``results/denormals_<machine>.json``.

    python benchmarks/denormals.py [--optimizers sgd,momentum,nesterov,adam] [--epochs 8] [--pairs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from grid_step import machine_tag  # noqa: E402
from protocol_time import protocol_trainer  # noqa: E402
from seeds_step import cpu_info  # noqa: E402


def measure(name: str, epochs: int, pairs: int) -> dict[str, Any]:
    import numpy as np

    trainer, rng = protocol_trainer(name), np.random.default_rng(0)

    def epoch(flush: bool) -> float:
        trainer.flush_denormals = flush
        t = time.perf_counter()
        trainer.epoch_tally(rng)
        return (time.perf_counter() - t) / trainer.steps_per_epoch * 1e3

    trained = [epoch(False) for _ in range(epochs)]
    order = [flag for _ in range(pairs // 2 + pairs % 2) for flag in (False, True, True, False)][:2 * pairs]
    alternated = [(flag, epoch(flag)) for flag in order]
    off = [t for flag, t in alternated if not flag]
    on = [t for flag, t in alternated if flag]
    return {"trained_ms": trained, "alternated": alternated, "first_ms": trained[0], "last_ms": trained[-1],
            "off_ms": statistics.median(off), "on_ms": statistics.median(on)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizers", default="sgd,momentum,nesterov,adam")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    cpu = cpu_info()
    report: dict[str, Any] = {"benchmark": "denormals", "cpu": cpu, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "load_before": os.getloadavg(), "epochs": args.epochs, "pairs": args.pairs, "rules": {}}
    for name in args.optimizers.split(","):
        r = report["rules"][name] = measure(name, args.epochs, args.pairs)
        print(f"{name:9s} epoch 1 {r['first_ms']:.3f}, epoch {args.epochs} {r['last_ms']:.3f} ms/step; then "
              f"flush off {r['off_ms']:.3f}, on {r['on_ms']:.3f} ms/step (on / off {r['on_ms'] / r['off_ms']:.2f})",
              flush=True)
    report["load_after"] = os.getloadavg()
    out = args.out or HERE / "results" / f"denormals_{machine_tag(cpu['model'])}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"load {report['load_before'][0]:.2f} -> {report['load_after'][0]:.2f}; report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
