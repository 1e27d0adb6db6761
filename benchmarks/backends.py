"""Which PyTensor backend symopt compiles with by default, measured.

Purpose
-------
``symopt.function`` picks a default backend (``symopt.function.DEFAULT_MODE``). This
script is the measurement behind that choice: symopt's train step (the one
``symopt.Trainer`` compiles: MLP 784-100-100-100-100-10, ReLU, He init, float32,
softmax cross-entropy, batch 128 sliced from shared data by ``givens``, Adam 1e-3)
compiled with each backend, and

* ``step_ms``: the median per-step time over ``--repeats`` rounds of ``--steps`` calls,
  after warm-up, rounds alternating between backends (so drift on a shared machine
  hits all alike);
* ``floor_ms``: in the same process, the forward/backward matmuls alone in NumPy
  (5 forward, 5 weight-gradient, 4 input-gradient products, float32, preallocated
  outputs): no framework can do the step faster than that. ``ratio`` = step / floor;
* ``first_compile_s``: compiling the train step in a fresh process with an empty
  ``base_compiledir`` (includes the first call for JIT backends);
  ``cached_compile_s``: the same in a second fresh process reusing that compiledir;
* BLAS variants of the C backend: ``OPENBLAS_CORETYPE`` forced to each of a few core
  types and ``OPENBLAS_NUM_THREADS=2``, each in its own process (both variables are
  read when OpenBLAS loads).

How to run
----------
::

    python benchmarks/backends.py [--steps 200] [--repeats 15] [--warmup 50]
        [--backends NUMBA,C,CVM,CVM_NOGC] [--coretypes Haswell,Zen,Sandybridge]
        [--out benchmarks/results/backends.json]

Prints a table and writes the JSON (machine, ``uptime`` load before and after each
part, versions, the BLAS symopt linked and the core OpenBLAS detected, every round).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

SIZES = [784, 100, 100, 100, 100, 10]
BATCH = 128
N_BATCHES = 32
ROOT = Path(__file__).resolve().parent.parent


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def build_step(mode: str):
    """Compile symopt's train step with ``mode``; returns (step, seconds to compile)."""
    import numpy as np
    import pytensor
    import pytensor.tensor as pt

    import symopt
    from symopt import nn

    rng = np.random.default_rng(0)
    n = BATCH * N_BATCHES
    x_data = pytensor.shared(rng.random((n, SIZES[0]), dtype=np.float32), name="x_train")
    y_data = pytensor.shared(rng.integers(0, SIZES[-1], n).astype(np.int64), name="y_train")
    model = nn.MLP(SIZES, activation="relu", init="he", seed=0)
    opt = symopt.Adam(model.params, learning_rate=1e-3)
    x, y = pt.matrix("x", dtype="float32"), pt.vector("y", dtype="int64")
    i = pt.scalar("batch", dtype="int64")
    loss = nn.cross_entropy(model.output(x, train=True), y)
    rows = slice(i * BATCH, (i + 1) * BATCH)
    start = time.perf_counter()
    step = symopt.function([i], loss, updates=opt.updates(loss), givens={x: x_data[rows], y: y_data[rows]}, mode=mode)
    step(0)  # JIT backends compile on the first call
    return step, time.perf_counter() - start


def matmul_floor(rng: Any):
    """The step's 14 matmuls in NumPy; returns a zero-argument callable."""
    import numpy as np

    acts = [rng.random((BATCH, s), dtype=np.float32) for s in SIZES]
    weights = [rng.random((a, b), dtype=np.float32) for a, b in zip(SIZES, SIZES[1:])]
    outs = [np.empty((BATCH, b), np.float32) for b in SIZES[1:]]
    gws = [np.empty_like(w) for w in weights]
    gins = [np.empty((BATCH, a), np.float32) for a in SIZES[:-1]]

    def run() -> None:
        for k, w in enumerate(weights):
            np.matmul(acts[k], w, out=outs[k])
        for k in reversed(range(len(weights))):
            np.matmul(acts[k].T, acts[k + 1], out=gws[k])
            if k > 0:
                np.matmul(acts[k + 1], weights[k].T, out=gins[k])

    return run


def worker_compile(mode: str) -> None:
    _, seconds = build_step(mode)
    print(json.dumps({"seconds": seconds}))


def worker_time(backends: list[str], steps: int, repeats: int, warmup: int) -> None:
    import numpy as np

    from symopt.function import blas_info

    fns: dict[str, Any] = {"numpy_floor": matmul_floor(np.random.default_rng(1))}
    for name in backends:
        step, _ = build_step(name)
        fns[name] = lambda step=step, c=[0]: step((c.__setitem__(0, c[0] + 1) or c[0]) % N_BATCHES)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    rounds: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            fn = fns[name]
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            rounds[name].append((time.perf_counter() - start) / steps * 1e3)
    print(json.dumps({"rounds_ms": rounds, "blas": blas_info()}))


def run_worker(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    out = subprocess.run(
        [sys.executable, __file__, "--worker", *args], capture_output=True, text=True, env=full_env, cwd=ROOT
    )
    if out.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(rounds: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    floor = statistics.median(rounds["numpy_floor"])
    return {
        name: {
            "median_ms": round(statistics.median(v), 4),
            "min_ms": round(min(v), 4),
            "ratio_to_floor": round(statistics.median(v) / floor, 3),
        }
        for name, v in rounds.items()
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--backends", default="NUMBA,C,CVM,CVM_NOGC")
    p.add_argument("--coretypes", default="Haswell,Zen,Sandybridge")
    p.add_argument("--no-compile", action="store_true", help="skip the first/cached compile measurement")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "backends.json"))
    p.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "compile":
            worker_compile(rest[0])
        else:
            worker_time(rest[0].split(","), int(rest[1]), int(rest[2]), int(rest[3]))
        return

    import symopt
    from symopt.function import DEFAULT_MODE
    from symopt.report import machine_info

    backends = [b.strip().upper() for b in args.backends.split(",") if b.strip()]
    result: dict[str, Any] = {
        "machine": {**machine_info(), "symopt": symopt.__version__},
        "model": {"sizes": SIZES, "batch": BATCH, "dtype": "float32", "optimizer": "Adam(learning_rate=1e-3)"},
        "settings": {"steps": args.steps, "repeats": args.repeats, "warmup": args.warmup},
        "default_mode": DEFAULT_MODE,
    }

    compile_s: dict[str, dict[str, Any]] = {}
    if not args.no_compile:
        for name in backends:
            with tempfile.TemporaryDirectory(prefix="symopt-bench-compiledir-") as tmp:
                env = {"PYTENSOR_FLAGS": f"base_compiledir={tmp}"}
                before = load()
                first = run_worker(["compile", name], env)["seconds"]
                cached = run_worker(["compile", name], env)["seconds"]
                compile_s[name] = {"first_s": round(first, 2), "cached_s": round(cached, 2), "load_before": before, "load_after": load()}
            print(f"compile {name:9s} first {first:6.2f} s  cached {cached:5.2f} s   load {compile_s[name]['load_before']}", flush=True)
    result["compile"] = compile_s

    before = load()
    main_run = run_worker(["time", ",".join(backends), str(args.steps), str(args.repeats), str(args.warmup)])
    result["blas"] = main_run["blas"]
    result["step"] = {"load_before": before, "load_after": load(), "summary": summarise(main_run["rounds_ms"]), "rounds_ms": main_run["rounds_ms"]}

    variants: dict[str, Any] = {}
    c_backend = next((b for b in ("CVM", "C", "CVM_NOGC") if b in backends), None)
    if c_backend:
        settings = [{"OPENBLAS_CORETYPE": c} for c in args.coretypes.split(",") if c] + [{"OPENBLAS_NUM_THREADS": "2"}]
        for env in settings:
            label = ",".join(f"{k}={v}" for k, v in env.items())
            before = load()
            run = run_worker(["time", c_backend, str(args.steps), str(max(5, args.repeats // 2)), str(args.warmup)], env)
            variants[label] = {"backend": c_backend, "corename": run["blas"].get("corename"), "load_before": before,
                               "load_after": load(), "summary": summarise(run["rounds_ms"])}
    result["blas_variants"] = variants

    summary = result["step"]["summary"]
    print(f"\nBLAS: {result['blas'].get('source')} core={result['blas'].get('corename')}   load {result['step']['load_before']}")
    print(f"{'backend':28s} {'ms/step':>9s} {'min':>8s} {'x floor':>8s} {'first s':>8s} {'cached s':>8s}")
    for name, s in summary.items():
        c = compile_s.get(name, {})
        print(f"{name:28s} {s['median_ms']:9.3f} {s['min_ms']:8.3f} {s['ratio_to_floor']:8.2f} "
              f"{c.get('first_s', float('nan')):8.2f} {c.get('cached_s', float('nan')):8.2f}")
    for label, v in variants.items():
        s = v["summary"][v["backend"]]
        f = v["summary"]["numpy_floor"]
        print(f"{v['backend'] + ' ' + label:28s} {s['median_ms']:9.3f} {s['min_ms']:8.3f} {s['ratio_to_floor']:8.2f}"
              f"   floor {f['median_ms']:.3f} ms, core {v['corename']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
