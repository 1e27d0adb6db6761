"""Check symopt's optax-referenced rules against optax, step for step, in float64.

Purpose
-------
The rules of ``symopt/rules_modern.py`` whose reference implementation is optax
(``adabelief`` -> ``optax.adabelief``, ``adopt`` -> ``optax.contrib.adopt``,
``ademamix`` -> ``optax.contrib.ademamix``, ``lamb`` -> ``optax.lamb``, ``lars`` ->
``optax.lars``) promise the same numbers: float64 parameters within 1e-6 relative over
30 steps with the same hyperparameters. This script is the evidence, in the manner of
``benchmarks/validate_torch.py``:

1. the same small non-convex problem is written twice, once as a PyTensor graph and
   once in JAX: a tanh layer with a matrix ``W`` (5x8) and a vector ``b`` (8), read out
   by a fixed vector, squared error on a fixed random batch of 32;
2. both sides train from the same initial parameters for ``--steps`` steps: symopt
   through one compiled ``pytensor.function`` with ``opt.updates(loss)``, optax with
   ``jax.grad``, ``tx.update`` and ``optax.apply_updates`` under ``jax_enable_x64``;
3. per step, the largest element-wise relative difference of the parameters,
   ``max |p_symopt - p_optax| / |p_optax|``; a setting passes when its maximum over the
   steps is <= 1e-6. The displacement error ``max |d_symopt - d_optax| / max |d_optax|``
   (``d = p_t - p_0``) is recorded too, as a diagnostic;
4. negative controls (pairs that must differ) keep the comparison honest.

Mapping of settings: symopt's ``weight_decay`` is L2 added to the gradient on
AdaBelief and ADOPT (optax's functions have no decay), so those settings compare with
``optax.chain(optax.add_decayed_weights(wd), optax.<rule>(...))``, which is the same
L2 term; on AdEMAMix and LAMB it is optax's own ``weight_decay``; on LARS optax's
``weight_decay`` too. ``weight_decay_mask`` is optax's ``mask`` /
``weight_decay_mask``, LARS's ``trust_ratio_mask`` optax's. An AdEMAMix ``alpha``
schedule (``symopt.schedules.LinearWarmup``) is compared with ``optax.linear_schedule``.

How to run
----------
::

    pip install -e '.[bench]'
    python benchmarks/validate_optax.py [--steps 30] [--rules lamb lars] [--out PATH]

Prints the worst relative error per setting and per rule, writes a JSON report
(default ``benchmarks/results/validate_optax.json``) and exits 1 if any setting fails
or a negative control is not detected. Without JAX/optax it says how to install them
and exits 0 with "skipped".
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

TOLERANCE = 1e-6
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "validate_optax.json"
BATCH, N_IN, N_HIDDEN = 32, 5, 8
SEED = 20240611


def make_problem(seed: int = SEED) -> dict[str, np.ndarray]:
    """Fixed float64 data, readout and initial parameters (shared by both sides)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, N_IN))
    y = np.sin(2.0 * x[:, 0]) + 0.5 * x[:, 1] * x[:, 2]
    v = rng.standard_normal(N_HIDDEN) / np.sqrt(N_HIDDEN)
    W0 = rng.standard_normal((N_IN, N_HIDDEN)) * 0.7
    b0 = rng.standard_normal(N_HIDDEN) * 0.5
    return {"x": x, "y": y, "v": v, "W0": W0, "b0": b0}


# Settings: (name, symopt keyword arguments). "mask_b" means: no weight decay on b
# (and for LARS "trust_b": no trust ratio on b); "alpha_warmup" an alpha schedule.
SETTINGS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "adabelief": [
        ("defaults", {}),
        ("lr=0.02, betas=(0.8, 0.99)", {"learning_rate": 0.02, "beta1": 0.8, "beta2": 0.99}),
        ("paper eps=1e-8, eps_root=0", {"learning_rate": 0.02, "epsilon": 1e-8, "epsilon_root": 0.0}),
        ("nesterov, lr=0.02", {"learning_rate": 0.02, "nesterov": True}),
        ("lr=0.02, wd=0.05 (L2)", {"learning_rate": 0.02, "weight_decay": 0.05}),
    ],
    "adopt": [
        ("defaults", {}),
        ("lr=0.02, betas=(0.8, 0.999)", {"learning_rate": 0.02, "beta1": 0.8, "beta2": 0.999}),
        ("nesterov, lr=0.02", {"learning_rate": 0.02, "nesterov": True}),
        ("no clipping, lr=0.02", {"learning_rate": 0.02, "clipping": False}),
        ("lr=0.02, eps=1e-3, wd=0.05 (L2)", {"learning_rate": 0.02, "epsilon": 1e-3, "weight_decay": 0.05}),
    ],
    "ademamix": [
        ("defaults", {}),
        ("lr=0.02, beta3=0.99, alpha=2", {"learning_rate": 0.02, "beta3": 0.99, "alpha": 2.0}),
        ("lr=0.02, eps_root=1e-4, betas=(0.8,0.99)",
         {"learning_rate": 0.02, "epsilon_root": 1e-4, "beta1": 0.8, "beta2": 0.99}),
        ("lr=0.02, wd=0.1 (decoupled)", {"learning_rate": 0.02, "weight_decay": 0.1}),
        ("alpha warmup 0->5 over 20 steps", {"learning_rate": 0.02, "alpha_warmup": True}),
    ],
    "lamb": [
        ("defaults", {}),
        ("lr=0.02, betas=(0.8, 0.99)", {"learning_rate": 0.02, "beta1": 0.8, "beta2": 0.99}),
        ("lr=0.02, eps=1e-3, eps_root=1e-6", {"learning_rate": 0.02, "epsilon": 1e-3, "epsilon_root": 1e-6}),
        ("lr=0.02, wd=0.1", {"learning_rate": 0.02, "weight_decay": 0.1}),
        ("lr=0.02, wd=0.1 not on b", {"learning_rate": 0.02, "weight_decay": 0.1, "mask_b": True}),
    ],
    "lars": [
        ("defaults", {}),
        ("lr=5, momentum=0.5", {"learning_rate": 5.0, "momentum": 0.5}),
        ("lr=5, nesterov", {"learning_rate": 5.0, "nesterov": True}),
        ("lr=5, trust=0.01, eps=1e-3", {"learning_rate": 5.0, "trust_coefficient": 0.01, "epsilon": 1e-3}),
        ("lr=5, wd=0.05", {"learning_rate": 5.0, "weight_decay": 0.05}),
        ("lr=5, wd=0.05 not on b, no trust on b",
         {"learning_rate": 5.0, "weight_decay": 0.05, "mask_b": True, "trust_b": True}),
    ],
}

# (name, symopt rule, symopt kwargs, optax-side rule, optax-side kwargs): must NOT match.
NEGATIVE_CONTROLS: list[tuple[str, str, dict[str, Any], str, dict[str, Any]]] = [
    ("symopt adabelief vs optax adabelief nesterov",
     "adabelief", {"learning_rate": 0.02}, "adabelief", {"learning_rate": 0.02, "nesterov": True}),
    ("symopt adopt clipping vs optax adopt without",
     "adopt", {"learning_rate": 0.02}, "adopt", {"learning_rate": 0.02, "clipping": False}),
    ("symopt lamb wd=0.1 vs optax lamb wd=0.1 not on b",
     "lamb", {"learning_rate": 0.02, "weight_decay": 0.1}, "lamb",
     {"learning_rate": 0.02, "weight_decay": 0.1, "mask_b": True}),
    ("symopt lars vs optax lars without trust ratio on b",
     "lars", {"learning_rate": 5.0}, "lars", {"learning_rate": 5.0, "trust_b": True}),
    ("symopt ademamix alpha=5 vs optax ademamix alpha=4",
     "ademamix", {"learning_rate": 0.02}, "ademamix", {"learning_rate": 0.02, "alpha": 4.0}),
]

WARMUP_STEPS = 20


def symopt_kwargs(rule: str, setting: dict[str, Any], params: list[Any]) -> dict[str, Any]:
    """The constructor keywords of the symopt side of a setting."""
    import symopt

    kw = {k: v for k, v in setting.items() if k not in ("mask_b", "trust_b", "alpha_warmup")}
    W, b = params
    if setting.get("mask_b"):
        kw["weight_decay_mask"] = [W]
    if setting.get("trust_b"):
        kw["trust_ratio_mask"] = [W]
    if setting.get("alpha_warmup"):
        kw["alpha"] = symopt.schedules.LinearWarmup(peak=5.0, warmup_steps=WARMUP_STEPS)
    return kw


def optax_transform(optax: Any, rule: str, hp: dict[str, Any]) -> tuple[Any, str]:
    """The optax transformation for full symopt hyperparameters ``hp`` (and the flags)."""
    lr, wd = hp["learning_rate"], hp.get("weight_decay", 0.0)
    mask = {"W": True, "b": False} if hp.get("mask_b") else None
    if rule == "adabelief":
        tx = optax.adabelief(lr, b1=hp["beta1"], b2=hp["beta2"], eps=hp["epsilon"], eps_root=hp["epsilon_root"],
                             nesterov=hp["nesterov"])
        name = "optax.adabelief"
    elif rule == "adopt":
        tx = optax.contrib.adopt(lr, b1=hp["beta1"], b2=hp["beta2"], eps=hp["epsilon"], nesterov=hp["nesterov"],
                                 use_clipping=hp["clipping"])
        name = "optax.contrib.adopt"
    elif rule == "ademamix":
        alpha = optax.linear_schedule(0.0, 5.0, WARMUP_STEPS) if hp.get("alpha_warmup") else hp["alpha"]
        return optax.contrib.ademamix(lr, b1=hp["beta1"], b2=hp["beta2"], b3=hp["beta3"], alpha=alpha,
                                      eps=hp["epsilon"], eps_root=hp["epsilon_root"], weight_decay=wd,
                                      mask=mask), "optax.contrib.ademamix"
    elif rule == "lamb":
        return optax.lamb(lr, b1=hp["beta1"], b2=hp["beta2"], eps=hp["epsilon"], eps_root=hp["epsilon_root"],
                          weight_decay=wd, mask=mask), "optax.lamb"
    elif rule == "lars":
        trust = {"W": True, "b": False} if hp.get("trust_b") else True
        return optax.lars(lr, weight_decay=wd, weight_decay_mask=True if mask is None else mask,
                          trust_coefficient=hp["trust_coefficient"], eps=hp["epsilon"], trust_ratio_mask=trust,
                          momentum=hp["momentum"], nesterov=hp["nesterov"]), "optax.lars"
    else:
        raise KeyError(rule)
    if wd:  # coupled L2: the decay term joins the gradient before the rule
        return optax.chain(optax.add_decayed_weights(wd, mask), tx), f"optax.chain(add_decayed_weights, {name})"
    return tx, name


def run_symopt(rule: str, setting: dict[str, Any], data: dict[str, np.ndarray], steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Parameters (W, b) after each of ``steps`` compiled symopt steps."""
    import pytensor
    import pytensor.tensor as pt

    import symopt

    W = pytensor.shared(data["W0"].copy(), name="W")
    b = pytensor.shared(data["b0"].copy(), name="b")
    x, y = pt.dmatrix("x"), pt.dvector("y")
    loss = pt.mean((pt.dot(pt.tanh(pt.dot(x, W) + b), pt.constant(data["v"])) - y) ** 2)
    opt = symopt.get(rule)([W, b], **symopt_kwargs(rule, setting, [W, b]))
    train = pytensor.function([x, y], loss, updates=opt.updates(loss))
    out = []
    for _ in range(steps):
        train(data["x"], data["y"])
        out.append((W.get_value().copy(), b.get_value().copy()))
    return out


def run_optax(jax: Any, optax: Any, rule: str, hp: dict[str, Any], data: dict[str, np.ndarray], steps: int):
    """The same with optax and ``jax.grad`` (float64)."""
    jnp = jax.numpy
    x, y, v = (jnp.asarray(data[k]) for k in ("x", "y", "v"))

    def loss(params):
        return jnp.mean((jnp.tanh(x @ params["W"] + params["b"]) @ v - y) ** 2)

    params = {"W": jnp.asarray(data["W0"]), "b": jnp.asarray(data["b0"])}
    tx, name = optax_transform(optax, rule, hp)
    state = tx.init(params)
    grad = jax.jit(jax.grad(loss))
    out = []
    for _ in range(steps):
        updates, state = tx.update(grad(params), state, params)
        params = optax.apply_updates(params, updates)
        out.append((np.asarray(params["W"]), np.asarray(params["b"])))
    return out, name


def compare(sym, ref, data) -> dict[str, Any]:
    """Per-step element-wise relative error of the parameters and of the displacement."""
    p0 = np.concatenate([data["W0"].ravel(), data["b0"].ravel()])
    tiny = np.finfo(np.float64).tiny
    per_step, per_step_disp = [], []
    for (Ws, bs), (Wr, br) in zip(sym, ref):
        ps = np.concatenate([Ws.ravel(), bs.ravel()])
        pr = np.concatenate([Wr.ravel(), br.ravel()])
        per_step.append(float(np.max(np.abs(ps - pr) / np.maximum(np.abs(pr), tiny))))
        dr = pr - p0
        scale = float(np.max(np.abs(dr)))
        per_step_disp.append(float(np.max(np.abs((ps - p0) - dr)) / scale) if scale > 0 else 0.0)
    final = np.concatenate([ref[-1][0].ravel(), ref[-1][1].ravel()])
    return {
        "max_rel_error": max(per_step),
        "passed": all(e <= TOLERANCE for e in per_step),
        "first_failing_step": next((i + 1 for i, e in enumerate(per_step) if not e <= TOLERANCE), None),
        "max_displacement_rel_error": max(per_step_disp),
        "max_rel_error_per_step": per_step,
        "relative_distance_travelled": float(np.max(np.abs(final - p0)) / np.max(np.abs(p0))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="optimisation steps per setting (default 30)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report path")
    parser.add_argument("--rules", nargs="*", default=None, help="only these rules (default: all)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    try:
        import jax
        import optax
    except ImportError:
        print("validate_optax: JAX/optax are not installed; install the benchmark extras: pip install -e '.[bench]'\n"
              "skipped")
        return 0
    jax.config.update("jax_enable_x64", True)

    import pytensor

    import symopt

    wanted = [r.lower() for r in args.rules] if args.rules else list(SETTINGS)
    unknown = sorted(set(wanted) - set(SETTINGS))
    if unknown:
        parser.error(f"no optax comparison for {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
    data = make_problem()
    results = []
    for rule in wanted:
        defaults = symopt.get(rule).hyperparameters
        for setting, overrides in SETTINGS[rule]:
            t0 = time.perf_counter()
            sym = run_symopt(rule, overrides, data, args.steps)
            ref, reference = run_optax(jax, optax, rule, {**defaults, **overrides}, data, args.steps)
            row = {"rule": rule, "setting": setting, "reference": reference,
                   "symopt_settings": {k: v for k, v in overrides.items()}, **compare(sym, ref, data),
                   "seconds": round(time.perf_counter() - t0, 3)}
            results.append(row)
            status = "pass" if row["passed"] else f"FAIL (first at step {row['first_failing_step']})"
            print(f"{rule:9s} {setting:42s} {row['max_rel_error']:10.3e}  {status}", flush=True)

    controls = []
    if args.rules is None:
        for name, sym_rule, sym_kw, ref_rule, ref_kw in NEGATIVE_CONTROLS:
            sym = run_symopt(sym_rule, sym_kw, data, args.steps)
            ref, reference = run_optax(jax, optax, ref_rule, {**symopt.get(ref_rule).hyperparameters, **ref_kw},
                                       data, args.steps)
            err = compare(sym, ref, data)["max_rel_error"]
            controls.append({"control": name, "reference": reference, "max_rel_error": err,
                             "detected": not err <= TOLERANCE})

    failed = [r for r in results if not r["passed"]]
    blind = [c for c in controls if not c["detected"]]
    worst = {rule: max(r["max_rel_error"] for r in results if r["rule"] == rule) for rule in wanted}
    report = {
        "tolerance": TOLERANCE,
        "steps": args.steps,
        "criterion": "max over steps of max_i |p_symopt - p_optax|_i / |p_optax|_i, params W and b, float64",
        "problem": {"loss": "mean((tanh(x @ W + b) @ v - y)**2), v fixed",
                    "params": {"W": [N_IN, N_HIDDEN], "b": [N_HIDDEN]}, "batch": BATCH, "seed": SEED},
        "versions": {"python": platform.python_version(), "jax": jax.__version__, "optax": optax.__version__,
                     "pytensor": pytensor.__version__, "numpy": np.__version__, "symopt": symopt.__version__},
        "worst_per_rule": worst,
        "n_settings": len(results),
        "n_failed": len(failed),
        "results": results,
        "negative_controls": controls,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print()
    print(f"worst relative error per rule (tolerance {TOLERANCE:g}, {args.steps} steps, float64):")
    for rule, err in worst.items():
        print(f"  {rule:9s} {err:10.3e}  {'pass' if err <= TOLERANCE else 'FAIL'}")
    if controls:
        print(f"negative controls (must differ by > {TOLERANCE:g}):")
        for c in controls:
            print(f"  {c['control']:58s} {c['max_rel_error']:9.2e}  {'detected' if c['detected'] else 'NOT DETECTED'}")
    print(f"{len(results) - len(failed)}/{len(results)} settings pass; report written to {args.out}")
    if blind:
        print(f"{len(blind)} negative control(s) were not detected: the comparison is not sensitive enough")
    return 1 if failed or blind else 0


if __name__ == "__main__":
    sys.exit(main())
