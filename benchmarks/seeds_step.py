"""S seeds in one compiled step (symopt.seeds) against S separate steps and JAX vmap.

Measures, in one run on this machine:

* ``single``: one :class:`symopt.train.Trainer` step (one seed), the way a sequential
  multi-seed run spends its time;
* ``stacked S``: one :class:`symopt.seeds.SeedTrainer` step over S seeds, per seed-step
  (= step time / S), for each S given;
* the NumPy matmul floor of one seed-step (the 14 forward/backward matmuls alone) and
  of S seed-steps done as S separate products, so "where the time goes" is read off
  as floor vs the rest;
* JAX ``vmap`` of the same jitted step over S seeds (``benchmarks/step_time.py``'s
  :func:`time_jax_vmap`), when JAX and optax are installed;
* the projected wall time of the mnist-optimizers protocol (7 optimisers x 30 seeds x
  20 epochs x 468 steps) from the measured per-seed-step time.

Model: MLP 784-100x4-10 ReLU, batch 128, float32, Adam (symopt defaults); synthetic
MNIST-shaped data (timing does not depend on the pixel values). ``--dropout`` adds
dropout 0.2 as in the mnist-optimizers protocol (JAX's vmap has none: compare the
no-dropout figures with it).

    python benchmarks/seeds_step.py [--seeds 1,10,30] [--optimizer adam] [--dropout 0.2]
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

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SIZES = [784, 100, 100, 100, 100, 10]
BATCH = 128
PROTOCOL_SEED_STEPS = 7 * 30 * 20 * (60000 // BATCH)


def _data(n_batches: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = BATCH * n_batches
    return rng.random((n, SIZES[0]), dtype=np.float32), rng.integers(0, SIZES[-1], n)


def _median_step(step: Any, n_batches: int, steps: int, rounds: int) -> float:
    """Median over ``rounds`` of the mean seconds per call over ``steps`` calls."""
    for i in range(3):
        step(i % n_batches)
    means = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(steps):
            step(i % n_batches)
        means.append((time.perf_counter() - start) / steps)
    return statistics.median(means)


def time_single(optimizer: str, dropout: float, steps: int, rounds: int, n_batches: int) -> dict[str, Any]:
    import symopt
    from symopt.nn import MLP
    from symopt.train import Trainer

    x, y = _data(n_batches)
    start = time.perf_counter()
    model = MLP(SIZES, dropout=dropout, seed=0)
    trainer = Trainer(model, symopt.get(optimizer)(model.params), x, y, x[:BATCH], y[:BATCH], batch_size=BATCH)
    trainer.train_step(0)
    compile_s = time.perf_counter() - start
    step = _median_step(trainer.train_step, n_batches, steps, rounds)
    return {"compile_and_first_call_s": compile_s, "step_ms": 1e3 * step, "per_seed_step_ms": 1e3 * step}


def time_stacked(optimizer: str, seeds: int, dropout: float, steps: int, rounds: int, n_batches: int) -> dict[str, Any]:
    import symopt
    from symopt.nn import MLP
    from symopt.seeds import SeedStack, SeedTrainer

    x, y = _data(n_batches)
    start = time.perf_counter()
    stack = SeedStack(lambda s: MLP(SIZES, dropout=dropout, seed=s), list(range(seeds)))
    trainer = SeedTrainer(stack, symopt.get(optimizer)(stack.params), x, y, x[:BATCH], y[:BATCH], batch_size=BATCH)
    trainer.train_step(0)
    compile_s = time.perf_counter() - start
    step = _median_step(trainer.train_step, n_batches, steps, rounds)
    return {"seeds": seeds, "compile_and_first_call_s": compile_s, "step_ms": 1e3 * step,
            "per_seed_step_ms": 1e3 * step / seeds}


def matmul_floor(seeds: int, rounds: int, n_batches: int) -> float:
    """Seconds per seed-step of the 14 matmuls alone (S separate products per matmul)."""
    rng = np.random.default_rng(1)
    xs = [rng.random((seeds, BATCH, SIZES[0]), dtype=np.float32) for _ in range(n_batches)]
    Ws = [rng.standard_normal((seeds, a, b)).astype(np.float32) for a, b in zip(SIZES[:-1], SIZES[1:])]
    deltas = [rng.standard_normal((seeds, BATCH, b)).astype(np.float32) for b in SIZES[1:]]
    hidden = [rng.standard_normal((seeds, BATCH, a)).astype(np.float32) for a in SIZES[1:-1]]

    def step(i: int) -> None:
        x = xs[i % n_batches]
        for s in range(seeds):
            acts = [x[s], *(h[s] for h in hidden)]
            for layer, W in enumerate(Ws):
                acts[layer] @ W[s]                       # forward
                acts[layer].T @ deltas[layer][s]         # weight gradient
                if layer:
                    deltas[layer][s] @ W[s].T            # input gradient (none for the data)

    return _median_step(step, n_batches, 10, rounds) / seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1,10,30", help="comma-separated S values")
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=16, help="distinct preloaded batches cycled through")
    parser.add_argument("--no-jax", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "seeds_step.json")
    args = parser.parse_args(argv)
    seed_counts = [int(s) for s in args.seeds.split(",")]

    from step_time import machine_info

    result: dict[str, Any] = {"benchmark": "seeds_step", "machine": machine_info(), "optimizer": args.optimizer,
                              "model": {"sizes": SIZES, "batch": BATCH, "dtype": "float32", "dropout": args.dropout},
                              "symopt_mode": os.environ.get("SYMOPT_MODE"), "load_before": os.getloadavg()}
    result["single"] = time_single(args.optimizer, args.dropout, args.steps, args.rounds, args.batches)
    print(f"single: {result['single']['per_seed_step_ms']:.3f} ms/step", flush=True)
    result["stacked"] = []
    for S in seed_counts:
        row = time_stacked(args.optimizer, S, args.dropout, max(3, args.steps // max(1, S // 5)), args.rounds,
                           args.batches)
        row["floor_per_seed_step_ms"] = 1e3 * matmul_floor(S, args.rounds, args.batches)
        row["floor_share"] = row["floor_per_seed_step_ms"] / row["per_seed_step_ms"]
        result["stacked"].append(row)
        print(f"stacked S={S}: {row['per_seed_step_ms']:.3f} ms/seed-step (floor {row['floor_per_seed_step_ms']:.3f}), "
              f"compile {row['compile_and_first_call_s']:.1f} s", flush=True)
    if not args.no_jax:
        try:
            from step_time import time_jax_vmap

            result["jax_vmap"] = [time_jax_vmap(args.optimizer, S, steps=max(3, args.steps // max(1, S // 5)),
                                                rounds=args.rounds) for S in seed_counts if S > 1]
            for row in result["jax_vmap"]:
                print(f"jax vmap S={row['seeds']}: {row['per_seed_step_ms_median']:.3f} ms/seed-step", flush=True)
        except ImportError as exc:
            result["jax_vmap"] = f"skipped: {exc}"
            print(f"jax vmap skipped ({exc}); pip install '.[bench]'", flush=True)
    best = min(result["stacked"], key=lambda r: r["per_seed_step_ms"])
    result["protocol_projection_min"] = {
        "seed_steps": PROTOCOL_SEED_STEPS,
        "stacked_best_S": best["seeds"],
        "stacked_minutes": PROTOCOL_SEED_STEPS * best["per_seed_step_ms"] / 6e4,
        "single_minutes": PROTOCOL_SEED_STEPS * result["single"]["per_seed_step_ms"] / 6e4,
        "floor_minutes": PROTOCOL_SEED_STEPS * best["floor_per_seed_step_ms"] / 6e4,
        "note": "training steps only, one process; evaluation adds ~1 forward pass of the test set per epoch",
    }
    result["load_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["protocol_projection_min"], indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
