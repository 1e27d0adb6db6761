"""What dropout costs a training step: step with dropout 0.2 / step without, before and after.

For each symopt source tree given (by default the working tree, "after", and the git
ref ``--before``, checked out into a temporary worktree), one worker process per tree
builds, on the same synthetic MNIST-shaped data:

* one :class:`symopt.train.Trainer` step (default mode: Numba), MLP 784-100x4-10 ReLU,
  batch 128, float32, Adam, without dropout and with dropout 0.2;
* one :class:`symopt.seeds.SeedTrainer` step over S seeds (default: S = 30,
  :data:`symopt.seeds.STACKED_MODE`), without and with dropout;
* with ``--numba-stacked``, the same stacked step compiled with Numba (its compile time
  is what the generator draws of the old implementation made slow).

The two steps of a pair are timed in interleaved rounds (median over rounds of the
mean over ``--steps`` calls), so load drifts hit both alike; the ratio
with/without is the figure of merit (issue 14's target: <= 1.15). Compile times are
compile + first call in a fresh process (PyTensor's on-disk caches as they are).

    python benchmarks/dropout_cost.py [--before main] [--seeds 30] [--numba-stacked]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIZES = [784, 100, 100, 100, 100, 10]
BATCH = 128
P = 0.2


def _data(n_batches: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = BATCH * n_batches
    return rng.random((n, SIZES[0]), dtype=np.float32), rng.integers(0, SIZES[-1], n)


def _interleaved(steps: dict[str, Any], n_batches: int, calls: int, rounds: int) -> dict[str, float]:
    """Median (over rounds) seconds per call of each step, the steps alternating within a round."""
    for step in steps.values():
        for i in range(2):
            step(i % n_batches)
    means: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for i in range(calls):
                step(i % n_batches)
            means[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(m) for name, m in means.items()}


def _build_single(dropout: float, n_batches: int) -> tuple[Any, float]:
    import symopt
    from symopt.nn import MLP
    from symopt.train import Trainer

    x, y = _data(n_batches)
    start = time.perf_counter()
    model = MLP(SIZES, dropout=dropout, seed=0)
    trainer = Trainer(model, symopt.get("adam")(model.params), x, y, x[:BATCH], y[:BATCH], batch_size=BATCH)
    trainer.train_step(0)
    return trainer.train_step, time.perf_counter() - start


def _build_stacked(dropout: float, seeds: int, n_batches: int, mode: Any) -> tuple[Any, float]:
    import symopt
    from symopt.nn import MLP
    from symopt.seeds import SeedStack, SeedTrainer

    x, y = _data(n_batches)
    start = time.perf_counter()
    stack = SeedStack(lambda s: MLP(SIZES, dropout=dropout, seed=s), list(range(seeds)))
    trainer = SeedTrainer(stack, symopt.get("adam")(stack.params), x, y, x[:BATCH], y[:BATCH],
                          batch_size=BATCH, mode=mode)
    trainer.train_step(0)
    return trainer.train_step, time.perf_counter() - start


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import symopt
    from symopt.seeds import STACKED_MODE

    out: dict[str, Any] = {"symopt": str(Path(symopt.__file__).parent), "stacked_mode": STACKED_MODE}
    steps: dict[str, Any] = {}
    for name, p in (("single", 0.0), ("single+dropout", P)):
        steps[name], out[f"{name} compile_s"] = _build_single(p, args.batches)
    single = _interleaved(steps, args.batches, args.steps, args.rounds)
    S = args.seeds
    stacked_steps: dict[str, Any] = {}
    for name, p in ((f"stacked{S}", 0.0), (f"stacked{S}+dropout", P)):
        stacked_steps[name], out[f"{name} compile_s"] = _build_stacked(p, S, args.batches, None)
    stacked = _interleaved(stacked_steps, args.batches, max(2, args.steps // 10), args.rounds)
    for name, sec in {**single, **stacked}.items():
        out[f"{name} ms"] = 1e3 * sec
    out["single ratio"] = single["single+dropout"] / single["single"]
    out[f"stacked{S} ratio"] = stacked[f"stacked{S}+dropout"] / stacked[f"stacked{S}"]
    if args.numba_stacked:
        _, out[f"stacked{S}+dropout NUMBA compile_s"] = _build_stacked(P, S, args.batches, "NUMBA")
    return out


def _run_tree(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--seeds", str(args.seeds),
           "--steps", str(args.steps), "--rounds", str(args.rounds), "--batches", str(args.batches)]
    if args.numba_stacked:
        cmd.append("--numba-stacked")
    done = subprocess.run(cmd, env=env, cwd=tree, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="main", help="git ref of the 'before' tree ('' to skip it)")
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=40, help="calls per round (stacked: a tenth)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--numba-stacked", action="store_true", help="also time the Numba compile of the stacked step")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "dropout_cost.json")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    load = [Path("/proc/loadavg").read_text().split()[:3]] if Path("/proc/loadavg").exists() else []
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"after": ROOT}
        if args.before:
            before = Path(tmp) / "before"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.before],
                           check=True, capture_output=True)
            trees = {"before": before, **trees}
        try:
            for label, tree in trees.items():
                print(f"{label}: {tree}", file=sys.stderr)
                results[label] = _run_tree(tree, args)
        finally:
            if args.before:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], check=False)
    if Path("/proc/loadavg").exists():
        load.append(Path("/proc/loadavg").read_text().split()[:3])
    keys = [k for k in results["after"] if k not in ("symopt", "stacked_mode")]
    print(f"{'':36s}" + "".join(f"{label:>12s}" for label in results))
    for k in keys:
        print(f"{k:36s}" + "".join(f"{r.get(k, float('nan')):12.3f}" for r in results.values()))
    print("loadavg (start, end):", load)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"loadavg": load, "before_ref": args.before, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
