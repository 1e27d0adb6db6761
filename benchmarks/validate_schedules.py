"""Check symopt's schedules and ReduceLROnPlateau against torch (and optax), step for step.

Purpose
-------
symopt promises that ``cosine_restarts``, ``cyclic``, ``polynomial`` and ``join`` give
the learning rates of ``torch.optim.lr_scheduler``'s ``CosineAnnealingWarmRestarts``,
``CyclicLR``, ``PolynomialLR`` and ``SequentialLR`` at every step (symopt's value at step
``s`` is torch's learning rate after ``s`` calls of ``scheduler.step()``), that
``polynomial`` and ``join`` equal optax's ``polynomial_schedule`` (with its end value) and
``join_schedules``, and that ``symopt.ReduceLROnPlateau`` sets the learning rates torch's
``ReduceLROnPlateau`` sets for any metric sequence. This script is the evidence:

1. every schedule case runs torch's scheduler on a one-parameter ``torch.optim.SGD``
   (``CyclicLR`` with ``cycle_momentum=False``) for ``--steps`` steps, reading
   ``param_groups[0]["lr"]`` before each ``scheduler.step()``; symopt's value is taken
   both from NumPy (``schedule(steps)``) and from ONE compiled PyTensor function holding
   every case's ``schedule.symbolic(step)``. A case passes when the largest relative
   difference, ``max |v_symopt - v_torch| / max(|v_torch|, 1e-300)``, is <= 1e-12 for
   both. The optax cases do the same with ``jax_enable_x64``.
2. ReduceLROnPlateau: for several settings (both modes and threshold modes, cooldown,
   per-group ``min_lr``, large ``eps``), ``--sequences`` random metric sequences of 60
   epochs (noisy descent with flat stretches, repeats, NaN, +-inf, negative values) step
   torch's and symopt's plateau on two param groups; the rates must be *equal* after
   every step (both do the same float64 arithmetic).
3. negative controls that must differ (else the check is too blunt): a cyclic schedule of
   another mode, a join with its boundary one step later, a polynomial with 1% more
   power, a plateau with patience one higher.

Run: ``python benchmarks/validate_schedules.py [--steps 300] [--sequences 50]``; writes
``benchmarks/results/validate_schedules.json`` and exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytensor  # noqa: E402
import pytensor.tensor as pt  # noqa: E402

import symopt  # noqa: E402
from symopt import schedules as S  # noqa: E402

TOLERANCE = 1e-12
BASE_LR = 0.1
ROOT = Path(__file__).resolve().parents[1]


def torch_lrs(make: Callable[[Any], Any], steps: int) -> np.ndarray:
    """The learning rate at s = 0 .. steps-1 of a torch scheduler stepped once per step."""
    import torch

    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([param], lr=BASE_LR)
    scheduler = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return np.array(out, dtype=np.float64)


def torch_cases() -> list[tuple[str, Any, Callable[[Any], Any]]]:
    """(name, symopt schedule, torch scheduler factory)."""
    from torch.optim import lr_scheduler as L

    lr = BASE_LR
    return [
        ("cosine_restarts T0=7", S.cosine_restarts(initial=lr, period=7, minimum=0.01),
         lambda o: L.CosineAnnealingWarmRestarts(o, T_0=7, eta_min=0.01)),
        ("cosine_restarts T0=5 mult=2", S.cosine_restarts(initial=lr, period=5, period_mult=2),
         lambda o: L.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=2)),
        ("cosine_restarts T0=3 mult=3 min=0.02", S.cosine_restarts(initial=lr, period=3, period_mult=3, minimum=0.02),
         lambda o: L.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=3, eta_min=0.02)),
        ("cyclic triangular", S.cyclic(0.01, lr, 5),
         lambda o: L.CyclicLR(o, base_lr=0.01, max_lr=lr, step_size_up=5, cycle_momentum=False)),
        ("cyclic triangular2 4/7", S.cyclic(0.01, lr, 4, step_size_down=7, mode="triangular2"),
         lambda o: L.CyclicLR(o, base_lr=0.01, max_lr=lr, step_size_up=4, step_size_down=7, mode="triangular2",
                              cycle_momentum=False)),
        ("cyclic exp_range 6/3 gamma=0.99", S.cyclic(0.01, lr, 6, step_size_down=3, mode="exp_range", gamma=0.99),
         lambda o: L.CyclicLR(o, base_lr=0.01, max_lr=lr, step_size_up=6, step_size_down=3, mode="exp_range",
                              gamma=0.99, cycle_momentum=False)),
        ("polynomial T=50 p=1", S.polynomial(initial=lr, total_steps=50), lambda o: L.PolynomialLR(o, total_iters=50)),
        ("polynomial T=30 p=2.5", S.polynomial(initial=lr, total_steps=30, power=2.5),
         lambda o: L.PolynomialLR(o, total_iters=30, power=2.5)),
        ("polynomial T=40 p=0.5", S.polynomial(initial=lr, total_steps=40, power=0.5),
         lambda o: L.PolynomialLR(o, total_iters=40, power=0.5)),
        ("join linear|restarts @8",
         S.join([S.linear_warmup(peak=lr, warmup_steps=5, start=0.1 * lr),
                 S.cosine_restarts(initial=lr, period=10, period_mult=2)], [8]),
         lambda o: L.SequentialLR(o, [L.LinearLR(o, start_factor=0.1, total_iters=5),
                                      L.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2)], milestones=[8])),
        ("join linear|polynomial|restarts @5,30",
         S.join([S.linear_warmup(peak=lr, warmup_steps=5, start=0.2 * lr),
                 S.polynomial(initial=lr, total_steps=20, power=2.0),
                 S.cosine_restarts(initial=lr, period=6)], [5, 30]),
         lambda o: L.SequentialLR(o, [L.LinearLR(o, start_factor=0.2, total_iters=5),
                                      L.PolynomialLR(o, total_iters=20, power=2.0),
                                      L.CosineAnnealingWarmRestarts(o, T_0=6)], milestones=[5, 30])),
    ]


def optax_cases() -> list[tuple[str, Any, Callable[[np.ndarray], np.ndarray]]]:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import optax

    def values(schedule: Any) -> Callable[[np.ndarray], np.ndarray]:
        return lambda steps: np.array([float(schedule(jnp.asarray(int(s), dtype=jnp.int64))) for s in steps])

    return [
        ("polynomial end=0.001 p=2 T=40", S.polynomial(initial=0.1, total_steps=40, power=2.0, final=0.001),
         values(optax.polynomial_schedule(init_value=0.1, end_value=0.001, power=2, transition_steps=40))),
        ("polynomial end=0.05 p=0.7 T=25", S.polynomial(initial=0.1, total_steps=25, power=0.7, final=0.05),
         values(optax.polynomial_schedule(init_value=0.1, end_value=0.05, power=0.7, transition_steps=25))),
        ("join linear|polynomial @10",
         S.join([S.polynomial(initial=0.0, total_steps=10, final=0.1),
                 S.polynomial(initial=0.1, total_steps=50, power=2.0, final=0.001)], [10]),
         values(optax.join_schedules([optax.linear_schedule(0.0, 0.1, 10),
                                      optax.polynomial_schedule(0.1, 0.001, 2, 50)], [10]))),
        ("join three @7,20",
         S.join([S.constant(value=0.02), S.polynomial(initial=0.1, total_steps=13, final=0.03),
                 S.polynomial(initial=0.05, total_steps=30, power=3.0)], [7, 20]),
         values(optax.join_schedules([optax.constant_schedule(0.02), optax.linear_schedule(0.1, 0.03, 13),
                                      optax.polynomial_schedule(0.05, 0.0, 3, 30)], [7, 20]))),
    ]


def rel_error(mine: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(mine - ref) / np.maximum(np.abs(ref), 1e-300)))


def compiled(schedules: list[Any]) -> Callable[[int], list[float]]:
    step = pt.lscalar("step")
    fn = pytensor.function([step], [s.symbolic(step) for s in schedules])
    return lambda s: [float(v) for v in fn(s)]


# ---------------------------------------------------------------------- plateau
PLATEAU_SETTINGS: list[dict[str, Any]] = [
    {"factor": 0.5, "patience": 2},
    {"factor": 0.1, "patience": 0, "cooldown": 2},
    {"factor": 0.3, "patience": 1, "threshold": 0.05, "threshold_mode": "abs"},
    {"factor": 0.5, "patience": 3, "mode": "max", "threshold": 0.01},
    {"factor": 0.7, "patience": 1, "mode": "max", "threshold_mode": "abs", "threshold": 0.02, "cooldown": 1},
    {"factor": 0.5, "patience": 0, "min_lr": [1e-3, 0.02], "eps": 1e-3},
    {"factor": 0.0, "patience": 4, "min_lr": 1e-4},
    {"factor": 0.5, "patience": 1, "eps": 0.2},
]


def metric_sequence(rng: np.random.Generator, n: int) -> list[float]:
    """A noisy decreasing loss with flat stretches, repeats, NaN, +-inf, and at times negative values."""
    values = np.cumsum(rng.normal(-0.02, 0.05, size=n)) + 2.0
    flat = rng.random(n) < 0.3
    values[flat] = np.maximum.accumulate(values)[flat]
    specials = rng.random(n)
    values[specials < 0.05] = np.nan
    values[(specials >= 0.05) & (specials < 0.07)] = np.inf
    values[(specials >= 0.07) & (specials < 0.08)] = -np.inf if rng.random() < 0.2 else values[0]
    if rng.random() < 0.3:
        values -= 3.0
    return [float(v) for v in values]


def plateau_runs(setting: dict[str, Any], sequences: int, seed: int, torch_setting: dict[str, Any] | None = None
                 ) -> tuple[int, int, int]:
    """(steps compared, steps whose rates differ, reductions torch made)."""
    import torch

    rng = np.random.default_rng(seed)
    compared = differ = reductions = 0
    for _ in range(sequences):
        metrics = metric_sequence(rng, 60)
        tp = [torch.nn.Parameter(torch.zeros(1, dtype=torch.float64)) for _ in range(2)]
        topt = torch.optim.SGD([{"params": [tp[0]], "lr": 0.1}, {"params": [tp[1]], "lr": 0.5}], lr=0.1)
        tplateau = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **(torch_setting or setting))
        sp = [pytensor.shared(np.zeros(1), name=f"p{i}") for i in range(2)]
        sopt = symopt.SGD([{"params": [sp[0]], "learning_rate": 0.1}, {"params": [sp[1]], "learning_rate": 0.5}])
        splateau = symopt.ReduceLROnPlateau(sopt, **setting)
        previous = [0.1, 0.5]
        for metric in metrics:
            tplateau.step(metric)
            splateau.step(metric)
            theirs = [g["lr"] for g in topt.param_groups]
            mine = [sopt.get_hyperparameter("learning_rate", group=i) for i in range(2)]
            compared += 1
            differ += mine != theirs
            reductions += theirs != previous
            previous = theirs
    return compared, differ, reductions


# ---------------------------------------------------------------------- main
def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]] if Path("/proc/loadavg").exists() else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="steps per schedule case")
    parser.add_argument("--sequences", type=int, default=50, help="random metric sequences per plateau setting")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "validate_schedules.json")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("torch is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore", category=UserWarning, module="torch.optim.lr_scheduler")
    load_before = load_average()
    steps = np.arange(args.steps)
    results: list[dict[str, Any]] = []

    cases = [(f"torch {name}", sched, lambda make=make: torch_lrs(make, args.steps)) for name, sched, make in torch_cases()]
    try:
        import optax

        cases += [(f"optax {name}", sched, lambda ref=ref: ref(steps)) for name, sched, ref in optax_cases()]
        optax_version = optax.__version__
    except ImportError:
        optax_version = None
        print("optax not installed: the optax cases are skipped")
    evaluate = compiled([sched for _, sched, _ in cases])
    graph = np.array([evaluate(int(s)) for s in steps])  # (steps, cases)
    for index, (name, sched, reference) in enumerate(cases):
        ref = reference()
        numpy_err, graph_err = rel_error(sched(steps), ref), rel_error(graph[:, index], ref)
        passed = max(numpy_err, graph_err) <= TOLERANCE
        results.append({"case": name, "numpy_max_rel_error": numpy_err, "graph_max_rel_error": graph_err,
                        "distinct_values": int(len(np.unique(ref))), "passed": passed})
        print(f"{name:48s} numpy {numpy_err:9.2e}  graph {graph_err:9.2e}  {'pass' if passed else 'FAIL'}", flush=True)

    plateau_results = []
    for i, setting in enumerate(PLATEAU_SETTINGS):
        compared, differ, reductions = plateau_runs(setting, args.sequences, seed=i)
        plateau_results.append({"setting": setting, "steps": compared, "differing_steps": differ,
                                "torch_reductions": reductions, "passed": differ == 0 and reductions > 0})
        print(f"plateau {json.dumps(setting):76s} {compared} steps, {reductions} reductions, {differ} differ", flush=True)

    from torch.optim import lr_scheduler as L

    controls = {
        "cyclic triangular vs torch triangular2": rel_error(
            S.cyclic(0.01, BASE_LR, 4)(steps),
            torch_lrs(lambda o: L.CyclicLR(o, base_lr=0.01, max_lr=BASE_LR, step_size_up=4, mode="triangular2",
                                           cycle_momentum=False), args.steps)),
        "join boundary 9 vs torch milestone 8": rel_error(
            S.join([S.linear_warmup(peak=BASE_LR, warmup_steps=5, start=0.1 * BASE_LR),
                    S.cosine_restarts(initial=BASE_LR, period=10, period_mult=2)], [9])(steps),
            torch_lrs(lambda o: L.SequentialLR(o, [L.LinearLR(o, start_factor=0.1, total_iters=5),
                                                   L.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2)], milestones=[8]),
                      args.steps)),
        "polynomial power 2.525 vs torch 2.5": rel_error(
            S.polynomial(initial=BASE_LR, total_steps=30, power=2.525)(steps),
            torch_lrs(lambda o: L.PolynomialLR(o, total_iters=30, power=2.5), args.steps)),
    }
    _, differ, _ = plateau_runs({"factor": 0.5, "patience": 3}, args.sequences, seed=0, torch_setting={"factor": 0.5, "patience": 2})
    controls["plateau patience 3 vs torch 2 (differing steps)"] = float(differ)
    for name, value in controls.items():
        print(f"control {name:60s} {value:9.2e}  {'detected' if value > TOLERANCE else 'NOT DETECTED'}")

    failed = [r["case"] for r in results if not r["passed"]] + [json.dumps(r["setting"]) for r in plateau_results if not r["passed"]]
    blind = [name for name, value in controls.items() if not value > TOLERANCE]
    report = {
        "purpose": "symopt schedules and ReduceLROnPlateau against torch.optim.lr_scheduler and optax, step for step",
        "tolerance": TOLERANCE, "steps": args.steps, "sequences": args.sequences,
        "versions": {"symopt": symopt.__version__, "torch": torch.__version__, "optax": optax_version,
                     "pytensor": pytensor.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "machine": platform.machine(), "load_average_before": load_before, "load_average_after": load_average(),
        "schedules": results, "plateau": plateau_results, "negative_controls": controls,
        "failed": failed, "controls_not_detected": blind,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=lambda v: None if isinstance(v, float) and not math.isfinite(v) else v) + "\n")
    print(f"{len(results) - sum(not r['passed'] for r in results)}/{len(results)} schedule cases and "
          f"{sum(r['passed'] for r in plateau_results)}/{len(plateau_results)} plateau settings pass "
          f"({sum(r['steps'] for r in plateau_results)} plateau steps); report written to {args.out}")
    if blind:
        print(f"{len(blind)} negative control(s) not detected: the comparison is not sensitive enough")
    return 1 if failed or blind else 0


if __name__ == "__main__":
    sys.exit(main())
