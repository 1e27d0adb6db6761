"""Issue 17's grid step: per-member learning rates in one stacked step, against JAX ``jit(vmap)``.

Purpose
-------
What one step of a learning-rate x seed grid costs per member when the whole grid is one
compiled function: symopt's stacked step (a ``SeedStack`` and ``SeedTrainer`` built as the
sweep engine builds a stacked task, the learning rate a vector over the members) against
JAX ``jax.jit(jax.vmap(step))`` whose members each carry their own learning rate in the
optimiser state (``optax.inject_hyperparams(optax.adam)(learning_rate=lr_i)``), with and
without dropout. Beside them, to read the figures:

* the same symopt stack with one scalar learning rate, and plain ``optax.adam`` with one
  rate under the same ``vmap``: what per-member hyperparameters cost each framework
  (symopt's rate is a shared variable either way, so the aim is a ratio of 1);
* one single-model ``symopt.train.Trainer`` step (default backend), for scale;
* torch ``torch.func.vmap`` of ``grad_and_value`` with a hand-written Adam over the stacked
  tensors (rates as a vector), when torch is installed (``--no-torch`` skips it);
* the FLOP bound of a member-step: its matrix products (``seeds_step.step_flops``) at the
  single-core sgemm peak (``seeds_step.sgemm_peak_gflops``), measured in every round.

Before any timing the script asserts that every stacked contender without dropout took
the same first step as a NumPy reference, for every member: a float64 forward/backward
pass of the MLP on the member's own batch and ``tests/reference.py``'s Adam with the
member's rate (loss and first-moment slot, i.e. the gradient, within float32
round-off; the updated parameters wherever the update's sign is well conditioned, and
no step larger than the member's rate anywhere).

Settings
--------
* Grid: Adam (the paper's defaults but the rate), 6 learning rates 1e-4 .. 3e-2
  (``sweep_stack.GRID``) x 5 seeds = S = 30 members, lr-major as ``symopt sweep`` orders
  them (member ``i``: rate ``i // 5``, seed ``i % 5``); members of one seed start from one
  model and share its data order, as their unstacked runs do.
* Model: the mnist-optimizers MLP 784-100x4-10 (ReLU, He init; ``symopt.mnist_runs.MODEL``)
  with dropout 0.2 after every hidden layer and without dropout; float32; batch 128.
* Data: synthetic MNIST-shaped (``seeds_step``'s 1,024 rows); each member's batch ``b`` is
  rows ``b * 128 .. (b + 1) * 128`` of its seed's permutation
  (``numpy.random.default_rng(seed)``), gathered inside every framework's step (symopt
  gathers from its shared data set too). JAX and torch start from symopt's initial values.
* JAX: parameters and optimiser state donated; with dropout each member draws
  ``jax.random.bernoulli`` from its own key folded with the step and the layer.
* One thread per framework: ``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS``/``MKL_NUM_THREADS``
  = 1 and XLA's single-thread flags when unset (as ``seeds_step.py``),
  ``torch.set_num_threads(1)``.
* Timing: every contender once per round, interleaved, with the sgemm peak measured in
  every round too (``seeds_step.time_rounds``; stacked contenders make ``--steps // 2``
  calls a round); the median over rounds of the time per member-step.

How to run
----------
::

    python benchmarks/grid_step.py [--rounds 7] [--steps 8] [--no-torch] [--mode CVM]
                                   [--out benchmarks/results/grid_step_<machine>.json]
    python benchmarks/grid_step.py --quick     # S = 4, 2 rounds: checks the script (~1 min)

``<machine>`` is ``intel`` or ``amd`` from the CPU model (as ``seeds_step_intel.json``),
else the platform's machine name. Expected duration of the full run on a quiet 2-core
Xeon: about 2 minutes, under 3 (estimated from ``seeds_step.py``'s figures: building the
four S = 30 stacked steps with CVM, ~20 s each from a cold PyTensor cache, ~5 s warm;
the four JAX programs ~5-10 s each; then 7 rounds of ~3 s). ``--quick`` took 71 s at
load 4-5. It prints
the table and writes the JSON: CPU model, SIMD flags, ``symopt.report.machine_info()``,
framework versions, the load average before and after, every round's time.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before NumPy loads its BLAS
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
os.environ.setdefault("SYMOPT_QUIET_FIRST_COMPILE", "1")

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
for _where in (HERE, HERE.parent / "tests"):  # seeds_step, sweep_stack; reference.py (the tests' NumPy Adam)
    if str(_where) not in sys.path:
        sys.path.append(str(_where))

from reference import Adam as ReferenceAdam  # noqa: E402
from seeds_step import (BATCH, DROPOUT, N_BATCHES, SIZES, Contender, _available, _data, cpu_info, jax_mlp_loss,  # noqa: E402
                        step_flops, time_rounds)
from sweep_stack import GRID  # noqa: E402

LEARNING_RATES: list[float] = list(GRID["optimizers"]["adam"]["learning_rate"])
N_SEEDS: int = int(GRID["seeds"])
BETA1, BETA2, EPSILON = 0.9, 0.999, 1e-8  # Adam's defaults in symopt, optax and torch alike
QUICK = {"learning_rates": [LEARNING_RATES[0], LEARNING_RATES[-1]], "seeds": 2, "rounds": 2, "steps": 2}


class Grid:
    """The members of a learning-rate x seed grid, lr-major (``symopt sweep``'s order), and their data.

    Parameters
    ----------
    learning_rates
        One rate per setting.
    n_seeds
        Seeds ``0 .. n_seeds - 1``, each trained at every rate.
    """

    def __init__(self, learning_rates: list[float], n_seeds: int):
        self.lrs = np.array([lr for lr in learning_rates for _ in range(n_seeds)], dtype=np.float64)
        self.seeds = [s for _ in learning_rates for s in range(n_seeds)]
        self.size = len(self.seeds)
        self.x, self.y = _data()
        # Member i's data order: its seed's permutation, as Trainer.fit draws an epoch's order.
        self.order = np.stack([np.random.default_rng(s).permutation(len(self.x)) for s in self.seeds])

    def rows(self, batch: int) -> np.ndarray:
        """Every member's rows of batch ``batch`` (cycling over the data), shape ``(S, BATCH)``."""
        b = batch % N_BATCHES
        return self.order[:, b * BATCH:(b + 1) * BATCH]


def machine_tag(model: str) -> str:
    """The results file's machine name: ``intel``/``amd`` from the CPU model, else the platform's."""
    lowered = model.lower()
    for tag, words in (("intel", ("intel",)), ("amd", ("amd", "epyc", "ryzen"))):
        if any(w in lowered for w in words):
            return tag
    return platform.machine().lower() or "unknown"


def _model(dropout: float) -> dict[str, Any]:
    from symopt.mnist_runs import MODEL

    return {**MODEL, "sizes": list(SIZES), "dropout": dropout}


def _suffix(dropout: float) -> str:
    return "+dropout" if dropout else ""


# ---------------------------------------------------------------- symopt
def symopt_stack_contender(grid: Grid, dropout: float, per_member: bool, mode: str | None) -> Contender:
    """The stacked step as ``symopt.sweep.engine._compiled_stack`` builds it, members reset to the grid's.

    ``per_member``: the rate a vector over the members, set as ``train_stack`` sets it;
    otherwise one scalar rate (1e-3) for all.
    """
    import symopt
    from symopt.mnist_runs import build_model
    from symopt.nn import MLP
    from symopt.seeds import STACKED_MODE, SeedStack, SeedTrainer
    from symopt.sweep.engine import _stacked_hyperparameters

    model = _model(dropout)
    start = time.perf_counter()
    # Placeholder seeds, then reset to the members' (a seed repeats once per rate), as a sweep worker does.
    stack = SeedStack(lambda seed: build_model(MLP, seed, model), list(range(grid.size)))
    hyper = _stacked_hyperparameters("adam", {"learning_rate": 1e-3}, grid.size) if per_member else {}
    opt = symopt.get("adam")(stack.params, **hyper)
    trainer = SeedTrainer(stack, opt, grid.x, grid.y, grid.x[:BATCH], grid.y[:BATCH], batch_size=BATCH, mode=mode,
                          on_nonfinite="continue")
    stack.reset(lambda seed: build_model(MLP, seed, model), grid.seeds)
    if per_member:
        opt.set_hyperparameter("learning_rate", grid.lrs.tolist())
    trainer.order.set_value(grid.order.astype(np.int64))
    init = [p.get_value().copy() for p in stack.params]
    steps = trainer.steps_per_epoch

    def run(i: int) -> Any:
        return trainer.train_step(i % steps)

    loss = np.asarray(run(0))
    name = f"symopt-{'grid' if per_member else 'scalar-lr'}{_suffix(dropout)}"
    c = Contender(name, run, grid.size, time.perf_counter() - start, f"S={grid.size}, SeedTrainer {mode or STACKED_MODE}")
    c.init = init  # type: ignore[attr-defined]
    c.first = {"lrs": grid.lrs if per_member else np.full(grid.size, 1e-3), "loss": loss,  # type: ignore[attr-defined]
               "params": [p.get_value().copy() for p in stack.params],
               "exp_avg": [opt.state[j]["exp_avg"].get_value().copy() for j in range(len(stack.params))]}
    return c


def symopt_trainer_contender(grid: Grid, dropout: float) -> Contender:
    """One single-model ``Trainer`` step (default backend, rate 1e-3), seed 0's data order."""
    import symopt
    from symopt.function import backend_name
    from symopt.mnist_runs import build_model
    from symopt.nn import MLP
    from symopt.train import Trainer

    start = time.perf_counter()
    model = build_model(MLP, 0, _model(dropout))
    trainer = Trainer(model, symopt.get("adam")(model.params), grid.x, grid.y, grid.x[:BATCH], grid.y[:BATCH],
                      batch_size=BATCH)
    trainer.order.set_value(grid.order[0].astype(np.int64))
    steps = trainer.steps_per_epoch

    def run(i: int) -> Any:
        return trainer.train_step(i % steps)

    run(0)
    return Contender(f"symopt-Trainer{_suffix(dropout)}", run, 1, time.perf_counter() - start,
                     f"one model, {backend_name()}")


# ---------------------------------------------------------------- JAX
def _find_adam_state(state: Any) -> Any:
    """optax's ``ScaleByAdamState`` inside a (possibly injected, chained) optimiser state."""
    if hasattr(state, "mu") and hasattr(state, "nu"):
        return state
    if isinstance(state, tuple):
        for part in state:
            found = _find_adam_state(part)
            if found is not None:
                return found
    return None


def jax_contender(grid: Grid, dropout: float, per_member: bool, init: list[np.ndarray]) -> Contender:
    """``jit(vmap(step))`` over the members; ``per_member``: each member's optimiser is
    ``inject_hyperparams(adam)(learning_rate=lr_i)``, the rate living in its (vmapped) state;
    otherwise plain ``optax.adam(1e-3)`` shared by all."""
    import jax
    import jax.numpy as jnp
    import optax

    def adam_with(lr: Any) -> Any:
        return optax.inject_hyperparams(optax.adam)(learning_rate=lr, b1=BETA1, b2=BETA2, eps=EPSILON)

    tx = adam_with(1e-3) if per_member else optax.adam(1e-3, b1=BETA1, b2=BETA2, eps=EPSILON)

    def loss_fn(params: list[Any], xb: Any, yb: Any, key: Any) -> Any:
        return jax_mlp_loss(params, xb, yb, key, dropout)

    def step(params: list[Any], state: Any, rows: Any, key: Any, x: Any, y: Any, t: Any) -> Any:
        loss, grads = jax.value_and_grad(loss_fn)(params, x[rows], y[rows], jax.random.fold_in(key, t))
        updates, state = tx.update(grads, state, params)  # inject_hyperparams: the rate read from `state`
        return optax.apply_updates(params, updates), state, loss

    start = time.perf_counter()
    params = [jnp.asarray(p) for p in init]
    if per_member:
        state = jax.vmap(lambda p, lr: adam_with(lr).init(p))(params, jnp.asarray(grid.lrs, jnp.float32))
    else:
        state = jax.vmap(tx.init)(params)
    holder: dict[str, Any] = {"params": params, "state": state}
    keys = jax.random.split(jax.random.PRNGKey(0), grid.size)
    x, y = jax.device_put(grid.x), jax.device_put(grid.y.astype(np.int32))
    rows = [jax.device_put(grid.rows(b).astype(np.int32)) for b in range(N_BATCHES)]
    fn = jax.jit(jax.vmap(step, in_axes=(0, 0, 0, 0, None, None, None)), donate_argnums=(0, 1))

    def run(i: int) -> Any:
        out = jax.block_until_ready(fn(holder["params"], holder["state"], rows[i % N_BATCHES], keys, x, y,
                                       np.int32(i)))
        holder["params"], holder["state"], loss = out
        return loss

    loss = np.asarray(run(0))
    name = f"jax-{'inject-lr' if per_member else 'scalar-lr'}{_suffix(dropout)}"
    c = Contender(name, run, grid.size, time.perf_counter() - start,
                  f"S={grid.size}, jax {jax.__version__}, optax {optax.__version__}")
    c.first = {"lrs": grid.lrs if per_member else np.full(grid.size, 1e-3), "loss": loss,  # type: ignore[attr-defined]
               "params": [np.asarray(p) for p in holder["params"]],
               "exp_avg": [np.asarray(m) for m in _find_adam_state(holder["state"]).mu]}
    return c


# ---------------------------------------------------------------- torch
def torch_contender(grid: Grid, dropout: float, init: list[np.ndarray]) -> Contender:
    """``torch.func.vmap(grad_and_value(loss))`` over the members, then Adam on the stacked
    tensors with a per-member rate vector (torch has no vmapped optimiser of its own)."""
    import torch
    import torch.nn.functional as F
    from torch.func import grad_and_value, vmap

    torch.set_num_threads(1)
    last = len(SIZES) - 2

    def loss_fn(params: list[Any], xb: Any, yb: Any) -> Any:
        a = xb
        for k in range(last + 1):
            a = torch.addmm(params[2 * k + 1], a, params[2 * k])
            if k < last:
                a = torch.relu(a)
                if dropout:
                    a = F.dropout(a, dropout, training=True)
        return F.cross_entropy(a, yb)

    start = time.perf_counter()
    torch.manual_seed(0)
    params = [torch.tensor(p) for p in init]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    lr = torch.tensor(grid.lrs, dtype=torch.float32)
    lr_views = [lr.view(-1, *([1] * (p.ndim - 1))) for p in params]
    x, y = torch.from_numpy(grid.x), torch.from_numpy(grid.y.astype(np.int64))
    rows = [torch.from_numpy(grid.rows(b).astype(np.int64)) for b in range(N_BATCHES)]
    grad_fn = vmap(grad_and_value(loss_fn), randomness="different" if dropout else "error")
    t_holder = [0]

    def run(i: int) -> Any:
        r = rows[i % N_BATCHES]
        grads, loss = grad_fn(params, x[r], y[r])
        t_holder[0] += 1
        t = t_holder[0]
        bc1, bc2_sqrt = 1 - BETA1**t, math.sqrt(1 - BETA2**t)
        with torch.no_grad():
            for p, g, mj, vj, lrj in zip(params, grads, m, v, lr_views):
                mj.mul_(BETA1).add_(g, alpha=1 - BETA1)
                vj.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)
                denom = vj.sqrt().div_(bc2_sqrt).add_(EPSILON)
                p.sub_(mj * (lrj / bc1) / denom)
        return loss

    loss = run(0).numpy().copy()
    c = Contender(f"torch-vmap-lr{_suffix(dropout)}", run, grid.size, time.perf_counter() - start,
                  f"S={grid.size}, torch.func.vmap, torch {torch.__version__}")
    c.first = {"lrs": grid.lrs, "loss": loss,  # type: ignore[attr-defined]
               "params": [p.numpy().copy() for p in params], "exp_avg": [mj.numpy().copy() for mj in m]}
    return c


# ---------------------------------------------------------------- the NumPy reference
def numpy_loss_and_grads(params: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
    """Mean softmax cross-entropy of the ReLU MLP (no dropout) and its gradients, float64,
    by backpropagation written out (independent of every framework measured here)."""
    Ws, bs = [np.asarray(p, np.float64) for p in params[0::2]], [np.asarray(p, np.float64) for p in params[1::2]]
    acts, pre = [np.asarray(x, np.float64)], []
    for k, (W, b) in enumerate(zip(Ws, bs)):
        z = acts[-1] @ W + b
        pre.append(z)
        if k < len(Ws) - 1:
            acts.append(np.maximum(z, 0.0))
    logits = pre[-1] - pre[-1].max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    n = len(y)
    loss = -logp[np.arange(n), y].mean()
    delta = np.exp(logp)
    delta[np.arange(n), y] -= 1.0
    delta /= n
    grads: list[np.ndarray] = [np.empty(0)] * (2 * len(Ws))
    for k in range(len(Ws) - 1, -1, -1):
        grads[2 * k], grads[2 * k + 1] = acts[k].T @ delta, delta.sum(axis=0)
        if k:
            delta = (delta @ Ws[k].T) * (pre[k - 1] > 0)
    return float(loss), grads


def check_first_step(contenders: list[Contender], grid: Grid, init: list[np.ndarray]) -> dict[str, Any]:
    """Assert every contender's first step (those with a ``first`` record, no dropout) against
    the NumPy reference, member by member; returns the largest deviations seen.

    Tolerances follow float32 conditioning: the loss to 1e-5 relative; the first-moment
    slot ``(1 - beta1) g`` to 1e-5 relative plus 1e-5 of the tensor's largest entry (the
    gradient is a sum over the batch, its small entries cancel); the parameters after the
    step entry by entry to the gradient's allowed error carried through Adam's first step
    ``lr * g / (|g| + eps)`` (``lr * eps / (|g| + eps)^2`` per unit of gradient error: large
    only where ``g`` is round-off, whose sign no framework gets reliably), plus 1e-4 of the
    rate (``1 - beta2`` rounded to float32) and float32 rounding; and no entry moved by more than its member's rate.
    """
    worst: dict[str, dict[str, float]] = {}
    for i in range(grid.size):
        rows = grid.rows(0)[i]
        p0 = [p[i] for p in init]
        loss_ref, g_ref = numpy_loss_and_grads(p0, grid.x[rows], grid.y[rows])
        for c in contenders:
            first = getattr(c, "first", None)
            if first is None:
                continue
            lr = float(first["lrs"][i])
            adam = ReferenceAdam([p.astype(np.float64) for p in p0], learning_rate=lr, beta1=BETA1, beta2=BETA2,
                                 epsilon=EPSILON)
            adam.step(g_ref)
            w = worst.setdefault(c.name, {"loss_rel": 0.0, "exp_avg_scaled": 0.0, "param_err_over_tol": 0.0})
            where = f"{c.name}, member {i} (lr {lr:g}, seed {grid.seeds[i]})"
            np.testing.assert_allclose(first["loss"][i], loss_ref, rtol=1e-5, err_msg=f"{where}: loss")
            w["loss_rel"] = max(w["loss_rel"], abs(float(first["loss"][i]) - loss_ref) / abs(loss_ref))
            for j, g in enumerate(g_ref):
                scale = float(np.abs(g).max()) or 1.0
                m = first["exp_avg"][j][i]
                np.testing.assert_allclose(m, (1 - BETA1) * g, rtol=1e-5, atol=1e-5 * (1 - BETA1) * scale,
                                           err_msg=f"{where}: first moment of parameter {j}")
                w["exp_avg_scaled"] = max(w["exp_avg_scaled"],
                                          float(np.abs(m - (1 - BETA1) * g).max()) / ((1 - BETA1) * scale))
                p1, p1_ref = first["params"][j][i], adam.params[j]
                assert p1.dtype == np.float32, f"{where}: parameter {j} became {p1.dtype}"
                # d(update)/dg = lr * eps / (|g| + eps)^2 carries the gradient's error into the update.
                # 1e-4 * lr: 1 - beta2 in float32 is off by up to 1.2e-7 / 1e-3 relative (0.999f:
                # 1.3e-5), and the frameworks differ in whether the bias correction cancels it
                # (optax: float32 1 - beta2**t; symopt: float64), i.e. up to ~6e-5 in the step.
                # 4e-7 |p|: float32 rounding of the new value.
                dg = 1e-5 * (scale + np.abs(g))  # the gradient error the first-moment check allows
                tol = lr * EPSILON * dg / (np.abs(g) + EPSILON) ** 2 + 1e-4 * lr + 4e-7 * np.abs(p1_ref)
                err = np.abs(p1.astype(np.float64) - p1_ref)
                bad = err > tol
                assert not bad.any(), (f"{where}: parameter {j} after the step: {int(bad.sum())} of {bad.size} "
                                       f"entries off, worst {err[bad].max():.3g} (tolerance there "
                                       f"{tol[bad][np.argmax(err[bad])]:.3g})")
                step = np.abs(p1.astype(np.float64) - p0[j])
                assert step.max() <= lr * (1 + 1e-5) + 1e-7, f"{where}: parameter {j} moved {step.max()} > lr"
                w["param_err_over_tol"] = max(w.get("param_err_over_tol", 0.0), float((err / tol).max()))
    return worst


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="S = 4 (2 rates x 2 seeds), 2 rounds of 2 steps")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=8, help="calls per contender per round (stacked: half)")
    parser.add_argument("--mode", default=None, help="backend of the stacked steps (default: SeedTrainer's)")
    parser.add_argument("--no-jax", action="store_true")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="default: results/grid_step_<machine>.json")
    args = parser.parse_args(argv)
    lrs, n_seeds, rounds, steps = LEARNING_RATES, N_SEEDS, args.rounds, args.steps
    if args.quick:
        lrs, n_seeds, rounds, steps = QUICK["learning_rates"], QUICK["seeds"], QUICK["rounds"], QUICK["steps"]
    grid = Grid(lrs, n_seeds)
    started = time.perf_counter()

    from symopt import report

    cpu = cpu_info()
    out = args.out or HERE / "results" / f"grid_step_{machine_tag(cpu['model'])}.json"
    result: dict[str, Any] = {
        "benchmark": "grid_step", "quick": args.quick, "cpu": cpu, "machine": report.machine_info(),
        "load_before": list(os.getloadavg()),
        "setting": {"sizes": SIZES, "batch": BATCH, "dtype": "float32", "dropout": DROPOUT, "optimizer": "adam",
                    "learning_rates": lrs, "seeds": list(range(n_seeds)), "members": grid.size,
                    "member_order": "lr-major (member i: rate i // seeds, seed i % seeds)",
                    "rounds": rounds, "steps": steps},
    }
    print(f"CPU: {cpu['model']} ({cpu['cores']} cores), SIMD: {' '.join(cpu['simd_flags'])}")
    print(f"load before: {' '.join(f'{v:.2f}' for v in result['load_before'])}; grid {len(lrs)} rates x "
          f"{n_seeds} seeds = S {grid.size}", flush=True)
    flops = step_flops()

    use_jax = not args.no_jax and _available("jax") and _available("optax")
    use_torch = not args.no_torch and _available("torch")
    versions: dict[str, str] = {}
    contenders: list[Contender] = []
    for dropout in (0.0, DROPOUT):
        grid_c = symopt_stack_contender(grid, dropout, True, args.mode)
        contenders += [grid_c, symopt_stack_contender(grid, dropout, False, args.mode),
                       symopt_trainer_contender(grid, dropout)]
        init = grid_c.init  # type: ignore[attr-defined]
        if use_jax:
            contenders += [jax_contender(grid, dropout, True, init), jax_contender(grid, dropout, False, init)]
        if use_torch:
            contenders.append(torch_contender(grid, dropout, init))
        if not dropout:
            checked = [c for c in contenders if hasattr(c, "first")]
            worst = check_first_step(checked, grid, init)
            result["first_step_check"] = {"members": grid.size, "passed": True, "worst": worst}
            print(f"first step of every member matches the NumPy reference: {', '.join(c.name for c in checked)}",
                  flush=True)
        for c in contenders:  # the dropout contenders' first steps are not checked (masks differ)
            if hasattr(c, "first"):
                del c.first  # type: ignore[attr-defined]
    if use_jax:
        import jax
        import optax

        versions.update(jax=jax.__version__, optax=optax.__version__)
    if use_torch:
        import torch

        versions["torch"] = torch.__version__
    result["versions"] = versions
    for c in contenders:
        print(f"  built {c.name:28s} compile + first call {c.compile_s:6.1f} s  ({c.note})", flush=True)

    round_peaks = time_rounds(contenders, rounds, steps)
    peak = statistics.median(round_peaks)  # the bound under the rounds' load (seeds_step's choice)
    bound_ms = 1e3 * flops / (peak * 1e9)
    med = {c.name: 1e3 * statistics.median(c.times) for c in contenders}
    result.update(sgemm_peak_gflops=peak, sgemm_peak_rounds_gflops=round_peaks, member_step_mflop=flops / 1e6,
                  flop_bound_ms=bound_ms)
    result["per_member_step_ms"] = {
        c.name: {"median": med[c.name], "x_flop_bound": med[c.name] / bound_ms, "rounds": [1e3 * t for t in c.times],
                 "members": c.seeds, "compile_and_first_call_s": c.compile_s, "note": c.note} for c in contenders}

    ratios: dict[str, float] = {}
    for d in ("", "+dropout"):
        for label, a, b in (("symopt grid / JAX inject_hyperparams", "symopt-grid", "jax-inject-lr"),
                            ("symopt grid / JAX scalar lr", "symopt-grid", "jax-scalar-lr"),
                            ("symopt grid / torch vmap", "symopt-grid", "torch-vmap-lr"),
                            ("symopt: lr vector / scalar", "symopt-grid", "symopt-scalar-lr"),
                            ("JAX: inject_hyperparams / scalar lr", "jax-inject-lr", "jax-scalar-lr"),
                            ("symopt grid / one Trainer step", "symopt-grid", "symopt-Trainer")):
            if a + d in med and b + d in med:
                ratios[f"{label}{' (dropout)' if d else ''}"] = med[a + d] / med[b + d]
    result["ratios"] = ratios

    print(f"\nper member-step, median of {rounds} interleaved rounds (ms); FLOP bound {bound_ms:.3f} ms "
          f"({flops / 1e6:.1f} MFLOP at the rounds' median sgemm peak {peak:.1f} GFLOP/s)")
    for c in contenders:
        print(f"  {c.name:28s} {med[c.name]:8.3f}  x bound {med[c.name] / bound_ms:5.2f}")
    print("\nratios of the medians")
    for label, value in ratios.items():
        print(f"  {label:48s} {value:6.3f}")
    result["load_after"] = list(os.getloadavg())
    result["seconds"] = time.perf_counter() - started
    print(f"load after: {' '.join(f'{v:.2f}' for v in result['load_after'])}; {result['seconds']:.0f} s in all")
    report.write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    from pinning import pin_cores

    pin_cores(1)  # one core: JAX's thread pool follows the affinity, not XLA_FLAGS
    raise SystemExit(main())
