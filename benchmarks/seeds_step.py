"""Issue 14's stacked-seeds figures, side by side in one run: symopt against JAX and torch, and the bound.

Prints, in one process (one BLAS/XLA/torch thread each):

* the CPU model and its SIMD flags, the machine load before and after;
* the single-core sgemm peak (GFLOP/s, NumPy's OpenBLAS, best of several square products)
  and the FLOP bound of a seed-step: the step's matrix products (63.9 MFLOP for the MLP
  784-100x4-10, batch 128: forward, weight and input gradients) at that peak;
* per seed-step, with and without dropout 0.2, timed in interleaved rounds (every
  contender once per round, the median over rounds): one ``symopt.train.Trainer`` step
  (default backend), the S = 30 ``SeedTrainer`` step compiled with CVM and with Numba
  (step time / S), JAX ``jit(vmap(step))`` over S seeds with its own dropout draws
  (``jax.random.bernoulli``, one key per seed folded with the step and layer), torch eager
  (one seed) when installed, and the NumPy time of the S separate products (not a floor:
  JAX's vmap can beat it);
* issue 14's target ratios (targets 1, 2 and 4) with met / not met;
* the S = 30 stacked step's compile time from a warm PyTensor cache (a fresh process,
  after this one filled the cache), CVM and Numba.

Model: MLP 784-100x4-10 ReLU, dropout after every hidden layer, Adam (symopt's defaults),
batch 128, float32, synthetic MNIST-shaped data. Writes ``results/seeds_step.json``.

    python benchmarks/seeds_step.py [--seeds 30] [--rounds 5] [--steps 8] [--no-jax] [--no-torch]
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
from typing import Any, Callable

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
SIZES = [784, 100, 100, 100, 100, 10]
BATCH = 128
DROPOUT = 0.2
N_BATCHES = 8
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512dq", "avx512vl", "avx512bw", "avx512_bf16", "amx_tile")


# ---------------------------------------------------------------- the machine and the bound
def cpu_info() -> dict[str, Any]:
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"model": model, "cores": os.cpu_count(), "process_cpus": allowed,
            "simd_flags": [f for f in SIMD_FLAGS if f in flags]}


def sgemm_peak_gflops(rounds: int = 5, threads: int = 1, sizes: tuple[int, ...] = (512, 1024)) -> float:
    """Best float32 GEMM rate of NumPy's BLAS on ``threads`` threads over a few square sizes."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    best = 0.0
    with threadpool_limits(threads):
        for n in sizes:
            a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
            a @ b
            for _ in range(rounds):
                t = time.perf_counter()
                a @ b
                best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def step_flops(sizes: list[int] = SIZES, batch: int = BATCH) -> int:
    """FLOPs of one seed-step's matrix products: forward and weight gradient of every layer,
    input gradient of every layer but the first (the data needs none)."""
    pairs = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 2 * batch * (2 * sum(pairs) + sum(pairs[1:]))


# ---------------------------------------------------------------- contenders
class Contender:
    def __init__(self, name: str, step: Callable[[int], Any], seeds: int, compile_s: float, note: str = ""):
        self.name, self.step, self.seeds, self.compile_s, self.note = name, step, seeds, compile_s, note
        self.times: list[float] = []  # seconds per seed-step, one per round


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = BATCH * N_BATCHES
    return rng.random((n, SIZES[0]), dtype=np.float32), rng.integers(0, SIZES[-1], n)


def trainer_contender(dropout: float) -> Contender:
    import symopt
    from symopt.function import backend_name
    from symopt.nn import MLP
    from symopt.train import Trainer

    x, y = _data()
    start = time.perf_counter()
    model = MLP(SIZES, dropout=dropout, seed=0)
    trainer = Trainer(model, symopt.get("adam")(model.params), x, y, x[:BATCH], y[:BATCH], batch_size=BATCH)
    trainer.train_step(0)
    return Contender(f"Trainer{'+dropout' if dropout else ''}", trainer.train_step, 1,
                     time.perf_counter() - start, backend_name())


def stacked_contender(seeds: int, dropout: float, mode: str) -> Contender:
    import symopt
    from symopt.nn import MLP
    from symopt.seeds import SeedStack, SeedTrainer

    x, y = _data()
    start = time.perf_counter()
    stack = SeedStack(lambda s: MLP(SIZES, dropout=dropout, seed=s), list(range(seeds)))
    trainer = SeedTrainer(stack, symopt.get("adam")(stack.params), x, y, x[:BATCH], y[:BATCH], batch_size=BATCH,
                          mode=mode)
    trainer.train_step(0)
    return Contender(f"stacked-{mode}{'+dropout' if dropout else ''}", trainer.train_step, seeds,
                     time.perf_counter() - start, f"S={seeds}")


def _he_params(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    params = []
    for a, b in zip(SIZES[:-1], SIZES[1:]):
        params += [(rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32), np.zeros(b, np.float32)]
    return params


def jax_mlp_loss(params: list[Any], x: Any, y: Any, key: Any, dropout: float) -> Any:
    """The MLP's mean cross-entropy in JAX: ReLU hidden layers, each with its own
    ``bernoulli(fold_in(key, layer), 1 - dropout)`` mask (inverted dropout)."""
    import jax
    import jax.numpy as jnp

    last = len(SIZES) - 2
    a = x
    for k in range(last + 1):
        a = a @ params[2 * k] + params[2 * k + 1]
        if k < last:
            a = jax.nn.relu(a)
            if dropout:
                keep = jax.random.bernoulli(jax.random.fold_in(key, k), 1.0 - dropout, a.shape)
                a = jnp.where(keep, a / (1.0 - dropout), 0.0)
    logp = jax.nn.log_softmax(a, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def jax_contender(seeds: int, dropout: float) -> Contender:
    """``jit(vmap(step))`` over seeds, Adam from optax, params and state donated; with
    dropout each seed draws ``bernoulli(fold_in(fold_in(key_s, t), layer), 1 - p)``."""
    import jax
    import jax.numpy as jnp
    import optax

    tx = optax.adam(1e-3, b1=0.9, b2=0.999, eps=1e-8)

    def loss_fn(params, x, y, key):
        return jax_mlp_loss(params, x, y, key, dropout)

    def step(params, state, x, y, key, t):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y, jax.random.fold_in(key, t))
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    inits = [_he_params(s) for s in range(seeds)]
    holder: dict[str, Any] = {"params": [jnp.asarray(np.stack(leaf)) for leaf in zip(*inits)]}
    holder["state"] = jax.vmap(tx.init)(holder["params"])
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    x, y = _data()
    rng = np.random.default_rng(1)
    rows = [[rng.permutation(len(x))[:BATCH] for _ in range(seeds)] for _ in range(N_BATCHES)]  # own batch per seed
    xs = [jax.device_put(np.stack([x[r] for r in batch])) for batch in rows]
    ys = [jax.device_put(np.stack([y[r].astype(np.int32) for r in batch])) for batch in rows]
    fn = jax.jit(jax.vmap(step, in_axes=(0, 0, 0, 0, 0, None)), donate_argnums=(0, 1))

    def run(i: int) -> Any:
        out = jax.block_until_ready(fn(holder["params"], holder["state"], xs[i % N_BATCHES], ys[i % N_BATCHES], keys,
                                       np.int32(i)))
        holder["params"], holder["state"], loss = out
        return loss

    start = time.perf_counter()
    run(0)
    return Contender(f"jax-vmap{'+dropout' if dropout else ''}", run, seeds, time.perf_counter() - start,
                     f"S={seeds}, jax {jax.__version__}")


def torch_contender(dropout: float) -> Contender:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    params = [torch.tensor(p, requires_grad=True) for p in _he_params(0)]
    Ws, bs = params[0::2], params[1::2]
    opt = torch.optim.Adam(params, lr=1e-3, foreach=True)
    x, y = _data()
    xs = [torch.from_numpy(x[i * BATCH:(i + 1) * BATCH]) for i in range(N_BATCHES)]
    ys = [torch.from_numpy(y[i * BATCH:(i + 1) * BATCH].astype(np.int64)) for i in range(N_BATCHES)]
    last = len(Ws) - 1

    def run(i: int) -> Any:
        opt.zero_grad(set_to_none=True)
        a = xs[i % N_BATCHES]
        for k, (W, b) in enumerate(zip(Ws, bs)):
            a = torch.addmm(b, a, W)
            if k < last:
                a = torch.relu(a)
                if dropout:
                    a = F.dropout(a, dropout, training=True)
        loss = F.cross_entropy(a, ys[i % N_BATCHES])
        loss.backward()
        opt.step()
        return loss

    start = time.perf_counter()
    run(0)
    return Contender(f"torch{'+dropout' if dropout else ''}", run, 1, time.perf_counter() - start,
                     f"eager, one seed, torch {torch.__version__}")


def numpy_products_contender(seeds: int) -> Contender:
    """The S x 14 products of a stacked step as separate NumPy calls (not a floor)."""
    rng = np.random.default_rng(1)
    x = rng.random((seeds, BATCH, SIZES[0]), dtype=np.float32)
    Ws = [rng.standard_normal((seeds, a, b)).astype(np.float32) for a, b in zip(SIZES[:-1], SIZES[1:])]
    deltas = [rng.standard_normal((seeds, BATCH, b)).astype(np.float32) for b in SIZES[1:]]
    hidden = [rng.standard_normal((seeds, BATCH, a)).astype(np.float32) for a in SIZES[1:-1]]

    def run(i: int) -> None:
        for s in range(seeds):
            acts = [x[s], *(h[s] for h in hidden)]
            for layer, W in enumerate(Ws):
                acts[layer] @ W[s]
                acts[layer].T @ deltas[layer][s]
                if layer:
                    deltas[layer][s] @ W[s].T

    return Contender("numpy-products", run, seeds, 0.0, f"S={seeds} separate products")


# ---------------------------------------------------------------- timing
def time_rounds(contenders: list[Contender], rounds: int, steps: int) -> list[float]:
    """Every contender once per round (interleaved, so load changes hit all alike), and the
    sgemm peak once per round too, so the FLOP bound sees the same load as the steps.
    Returns the per-round peaks (GFLOP/s)."""
    for c in contenders:  # warm-up
        for i in range(2):
            c.step(i)
    peaks = []
    for _ in range(rounds):
        peaks.append(sgemm_peak_gflops(rounds=2))
        for c in contenders:
            n = max(2, steps if c.seeds == 1 else max(2, steps // 2))
            t = time.perf_counter()
            for i in range(n):
                c.step(i)
            c.times.append((time.perf_counter() - t) / n / c.seeds)
    return peaks


def warm_compile_seconds(seeds: int, mode: str) -> float | None:
    """Compile + first call of the stacked dropout step in a fresh process (warm cache)."""
    code = (
        "import sys, time; sys.path.insert(0, %r); import seeds_step as b; t = time.perf_counter(); "
        "b.stacked_contender(%d, %r, %r); print(time.perf_counter() - t)" % (str(HERE), seeds, DROPOUT, mode)
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, check=True)
        return float(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as exc:
        print(f"warm compile ({mode}) failed: {exc}", file=sys.stderr)
        return None


def _available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="calls per contender per round (stacked: half)")
    parser.add_argument("--modes", default="CVM,NUMBA", help="backends of the stacked step")
    parser.add_argument("--no-jax", action="store_true")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-compile", action="store_true", help="skip the warm-cache compile subprocesses")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "seeds_step.json")
    args = parser.parse_args(argv)
    S = args.seeds
    os.environ.setdefault("SYMOPT_QUIET_FIRST_COMPILE", "1")

    result: dict[str, Any] = {"benchmark": "seeds_step", "cpu": cpu_info(), "load_before": os.getloadavg(),
                              "model": {"sizes": SIZES, "batch": BATCH, "dtype": "float32", "dropout": DROPOUT,
                                        "optimizer": "adam"}}
    print(f"CPU: {result['cpu']['model']} ({result['cpu']['cores']} cores), SIMD: {' '.join(result['cpu']['simd_flags'])}")
    print(f"load before: {' '.join(f'{v:.2f}' for v in result['load_before'])}", flush=True)
    peak = sgemm_peak_gflops()
    flops = step_flops()
    print(f"sgemm single-core peak: {peak:.1f} GFLOP/s; a seed-step is {flops / 1e6:.1f} MFLOP: "
          f"FLOP bound {1e3 * flops / (peak * 1e9):.3f} ms per seed-step", flush=True)

    contenders: list[Contender] = []
    for dropout in (0.0, DROPOUT):
        contenders.append(trainer_contender(dropout))
        for mode in args.modes.split(","):
            contenders.append(stacked_contender(S, dropout, mode.strip().upper()))
        if not args.no_jax and _available("jax") and _available("optax"):
            contenders.append(jax_contender(S, dropout))
        if not args.no_torch and _available("torch"):
            contenders.append(torch_contender(dropout))
    contenders.append(numpy_products_contender(S))
    for c in contenders:
        print(f"  built {c.name:24s} compile + first call {c.compile_s:6.1f} s  ({c.note})", flush=True)

    round_peaks = time_rounds(contenders, args.rounds, args.steps)
    best_peak = max(peak, *round_peaks)
    # The bound at the median of the per-round peaks: on a shared machine the best single
    # product would flatter the bound against steps timed under load.
    peak = statistics.median(round_peaks)
    bound_ms = 1e3 * flops / (peak * 1e9)
    result.update(sgemm_peak_best_gflops=best_peak, sgemm_peak_rounds_gflops=round_peaks,
                  flop_bound_best_ms=1e3 * flops / (best_peak * 1e9))
    med = {c.name: 1e3 * statistics.median(c.times) for c in contenders}
    result.update(sgemm_peak_gflops=peak, seed_step_mflop=flops / 1e6, flop_bound_ms=bound_ms)
    result["per_seed_step_ms"] = {c.name: {"median": med[c.name], "rounds": [1e3 * t for t in c.times],
                                           "compile_and_first_call_s": c.compile_s, "note": c.note} for c in contenders}
    print(f"\nper seed-step, median of {args.rounds} interleaved rounds (ms); FLOP bound {bound_ms:.3f} ms "
          f"(sgemm peak, median of the rounds: {peak:.1f} GFLOP/s; best seen {best_peak:.1f}: "
          f"bound {1e3 * flops / (best_peak * 1e9):.3f} ms)")
    for c in contenders:
        print(f"  {c.name:24s} {med[c.name]:8.3f}  x bound {med[c.name] / bound_ms:5.2f}")

    targets: list[tuple[str, float | None, str, bool | None]] = []

    def ratio(a: str, b: str) -> float | None:
        return med[a] / med[b] if a in med and b in med else None

    def target(name: str, value: float | None, goal: str, ok: Callable[[float], bool]) -> None:
        targets.append((name, value, goal, None if value is None else ok(value)))

    from symopt.seeds import STACKED_MODE

    best = min((n for n in med if n.startswith("stacked-") and n.endswith("+dropout")), key=med.get)
    default = f"stacked-{STACKED_MODE}+dropout"
    for label, name in (("default " + STACKED_MODE, default), ("fastest " + best.split("-")[1].split("+")[0], best)):
        if name not in med:
            continue
        target(f"T1 {label}: stacked+dropout / JAX vmap+dropout", ratio(name, "jax-vmap+dropout"), "< 1 (aim 0.77)",
               lambda v: v < 1)
        target(f"T1 {label}: stacked+dropout / FLOP bound", med[name] / bound_ms, "<= 1.5", lambda v: v <= 1.5)
        target(f"T1 {label}: stacked+dropout / Trainer+dropout", ratio(name, "Trainer+dropout"), "<= 0.7",
               lambda v: v <= 0.7)
    target("T2 Trainer: dropout / none", ratio("Trainer+dropout", "Trainer"), "<= 1.15", lambda v: v <= 1.15)
    for mode in args.modes.split(","):
        mode = mode.strip().upper()
        target(f"T2 stacked {mode}: dropout / none", ratio(f"stacked-{mode}+dropout", f"stacked-{mode}"), "<= 1.15",
               lambda v: v <= 1.15)
    if not args.no_compile:
        for mode in args.modes.split(","):
            mode = mode.strip().upper()
            seconds = warm_compile_seconds(S, mode)
            result.setdefault("warm_compile_s", {})[mode] = seconds
            target(f"T4 S={S} stacked step, warm-cache compile + first call ({mode}), s", seconds, "<= 10",
                   lambda v: v <= 10)
    result["targets"] = [{"target": n, "value": v, "goal": g, "met": m} for n, v, g, m in targets]
    result["load_after"] = os.getloadavg()
    print("\nissue 14 targets")
    for n, v, g, m in targets:
        print(f"  {n:62s} {'n/a' if v is None else f'{v:7.3f}'}  goal {g:16s} "
              f"{'n/a' if m is None else ('met' if m else 'NOT met')}")
    print(f"load after: {' '.join(f'{v:.2f}' for v in result['load_after'])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from pinning import pin_cores

    pin_cores(1)  # one core: JAX's thread pool follows the affinity, not XLA_FLAGS
    raise SystemExit(main())
