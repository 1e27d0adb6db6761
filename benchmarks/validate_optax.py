"""Check symopt's rules whose reference is optax against optax, step for step, in float64.

Purpose
-------
Some of symopt's rules are defined by an optax implementation rather than a
``torch.optim`` class (``Rule.reference`` names it). For each such rule and several
hyperparameter settings this script

1. builds the problem of ``benchmarks/validate_torch.py`` twice: a tanh layer with a
   matrix ``W`` (5x8) and a vector ``b`` (8), read out by a fixed vector, squared error
   on a fixed batch of 32; once as a PyTensor graph, once in JAX (written again, not
   shared), with ``jax_enable_x64``;
2. trains both from the same start for ``--steps`` steps: symopt through one compiled
   function, optax with ``tx.update(grads, state, params)`` and ``jax.grad``;
3. records the largest element-wise relative difference of the parameters after every
   step (and, for Schedule-Free, of the evaluation parameters ``x`` too:
   ``opt.eval_param_values()`` against ``optax.contrib.schedule_free_eval_params``);
   a setting passes when it stays <= 1e-6.

It prints each setting's error and the worst error per rule, writes a JSON report and
exits 1 if any setting fails. Without JAX/optax it says how to install them and exits
0 with "skipped"::

    pip install -e '.[bench]'
    python benchmarks/validate_optax.py [--steps 30] [--rules prodigy] [--out ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

TOLERANCE = 1e-6
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "validate_optax.json"
BATCH, N_IN, N_HIDDEN = 32, 5, 8
SEED = 20240611


def make_problem(seed: int = SEED) -> dict[str, np.ndarray]:
    """Fixed float64 data, readout and initial parameters (as in validate_torch.py)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, N_IN))
    y = np.sin(2.0 * x[:, 0]) + 0.5 * x[:, 1] * x[:, 2]
    v = rng.standard_normal(N_HIDDEN) / np.sqrt(N_HIDDEN)
    W0 = rng.standard_normal((N_IN, N_HIDDEN)) * 0.7
    b0 = rng.standard_normal(N_HIDDEN) * 0.5
    return {"x": x, "y": y, "v": v, "W0": W0, "b0": b0}


# ---------------------------------------------------------------------------- settings
# rule -> [(setting name, symopt keyword arguments)]; optax gets the same values through OPTAX.
SETTINGS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "prodigy": [
        ("defaults", {}),
        ("lr=0.5, betas=(0.8, 0.99), beta3=0.9, eps=1e-6",
         {"learning_rate": 0.5, "beta1": 0.8, "beta2": 0.99, "beta3": 0.9, "epsilon": 1e-6}),
        ("estim_lr0=1e-3, estim_lr_coef=2, wd=0.1",
         {"estim_lr0": 1e-3, "estim_lr_coef": 2.0, "weight_decay": 0.1}),
        ("safeguard_warmup, beta2=0.99 (beta3 = sqrt(0.99))", {"safeguard_warmup": True, "beta2": 0.99}),
    ],
    # Schedule-Free: parameters y and evaluation parameters x are both compared.
    "schedule_free_sgd": [
        ("lr=0.1", {"learning_rate": 0.1}),
        ("lr=0.2, b1=0.8, weight_lr_power=1, wd=0.05",
         {"learning_rate": 0.2, "beta1": 0.8, "weight_lr_power": 1.0, "weight_decay": 0.05}),
        ("lr=0.1, warmup_steps=10", {"learning_rate": 0.1, "warmup_steps": 10}),
    ],
    "schedule_free_adamw": [
        ("defaults", {}),
        ("lr=0.02, b1=0.95, b2=0.99, eps=1e-4, wd=0.1",
         {"learning_rate": 0.02, "beta1": 0.95, "beta2": 0.99, "epsilon": 1e-4, "weight_decay": 0.1}),
        ("lr=0.02, warmup_steps=10, weight_lr_power=3",
         {"learning_rate": 0.02, "warmup_steps": 10, "weight_lr_power": 3.0}),
    ],
    # Rules of symopt/rules_modern.py. "mask_b": no weight decay on b (optax's mask);
    # "trust_b": no trust ratio on b (LARS); "alpha_warmup": AdEMAMix's alpha as a schedule.
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


def optax_transform(optax: Any, rule: str, hp: dict[str, Any]) -> tuple[Any, str]:
    """The optax transformation matching symopt ``rule`` with full hyperparameters ``hp``."""
    if rule == "prodigy":
        return optax.contrib.prodigy(
            learning_rate=hp["learning_rate"], betas=(hp["beta1"], hp["beta2"]), beta3=hp["beta3"],
            eps=hp["epsilon"], estim_lr0=hp["estim_lr0"], estim_lr_coef=hp["estim_lr_coef"],
            weight_decay=hp["weight_decay"], safeguard_warmup=hp["safeguard_warmup"],
        ), "optax.contrib.prodigy"
    if rule.startswith("schedule_free") and hp.get("warmup_steps") is not None:
        # optax's warmup_constant_schedule returns float32 even under jax_enable_x64, which
        # shows at 1e-5 here; the same warm-up in float64, wired as schedule_free_sgd /
        # schedule_free_adamw wire theirs (optax/contrib/_schedule_free.py).
        import jax.numpy as jnp

        peak, steps = hp["learning_rate"], hp["warmup_steps"]

        def schedule(count: Any) -> Any:
            return peak * jnp.minimum(jnp.asarray(count, jnp.float64) / steps, 1.0)

        if rule == "schedule_free_sgd":
            base = optax.sgd(schedule)
            if hp["weight_decay"]:
                base = optax.chain(optax.add_decayed_weights(hp["weight_decay"]), base)
        else:
            base = optax.chain(
                optax.scale_by_rms(decay=hp["beta2"], eps=hp["epsilon"], eps_in_sqrt=False, bias_correction=True),
                optax.add_decayed_weights(hp["weight_decay"]),
                optax.scale_by_learning_rate(schedule),
            )
        return optax.contrib.schedule_free(base, learning_rate=schedule, b1=hp["beta1"],
                                           weight_lr_power=hp["weight_lr_power"]), \
            f"optax.contrib.{rule} wiring, float64 linear warm-up (optax's own schedule is float32)"
    if rule == "schedule_free_sgd":
        return optax.contrib.schedule_free_sgd(
            learning_rate=hp["learning_rate"], warmup_steps=hp.get("warmup_steps"), b1=hp["beta1"],
            weight_decay=hp["weight_decay"] or None, weight_lr_power=hp["weight_lr_power"],
        ), "optax.contrib.schedule_free_sgd"
    if rule == "schedule_free_adamw":
        return optax.contrib.schedule_free_adamw(
            learning_rate=hp["learning_rate"], warmup_steps=hp.get("warmup_steps"), b1=hp["beta1"], b2=hp["beta2"],
            eps=hp["epsilon"], weight_decay=hp["weight_decay"], weight_lr_power=hp["weight_lr_power"],
        ), "optax.contrib.schedule_free_adamw"
    if rule in MODERN:
        return _modern_transform(optax, rule, hp)
    raise KeyError(rule)


def _modern_transform(optax: Any, rule: str, hp: dict[str, Any]) -> tuple[Any, str]:
    """The optax transformations of the rules of symopt/rules_modern.py."""
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


MODERN = ("adabelief", "adopt", "ademamix", "lamb", "lars")
WARMUP_STEPS = 20


def symopt_kwargs(kwargs: dict[str, Any], params: list[Any]) -> dict[str, Any]:
    """optax's ``warmup_steps=N`` is symopt's linear warm-up schedule as the learning rate;
    the masks and AdEMAMix's alpha warm-up of the modern rules' settings become keywords."""
    import symopt

    kwargs = dict(kwargs)
    steps = kwargs.pop("warmup_steps", None)
    if steps is not None:
        kwargs["learning_rate"] = symopt.schedules.linear_warmup(peak=kwargs["learning_rate"], warmup_steps=steps)
    W, _ = params
    if kwargs.pop("mask_b", False):
        kwargs["weight_decay_mask"] = [W]
    if kwargs.pop("trust_b", False):
        kwargs["trust_ratio_mask"] = [W]
    if kwargs.pop("alpha_warmup", False):
        kwargs["alpha"] = symopt.schedules.LinearWarmup(peak=5.0, warmup_steps=WARMUP_STEPS)
    return kwargs


def _optax_eval(optax: Any, state: Any, params: Any) -> list[np.ndarray]:
    # schedule_free wraps its state in optax's chain/extra-args tuple on some versions
    inner = state
    while not hasattr(inner, "z") and isinstance(inner, tuple) and inner:
        inner = inner[0]
    x = optax.contrib.schedule_free_eval_params(inner, params)
    return [np.asarray(x["W"]), np.asarray(x["b"])]


#: Rules with evaluation parameters: (symopt getter, optax getter), both -> [W, b].
EVAL: dict[str, tuple[Callable[[Any], list[np.ndarray]], Callable[[Any, Any, Any], list[np.ndarray]]]] = {
    "schedule_free_sgd": (lambda opt: opt.eval_param_values(), _optax_eval),
    "schedule_free_adamw": (lambda opt: opt.eval_param_values(), _optax_eval),
}


# ---------------------------------------------------------------------------- runs
def run_symopt(rule: str, kwargs: dict[str, Any], data: dict[str, np.ndarray], steps: int) -> list[list[np.ndarray]]:
    """[W, b] (and the evaluation parameters, if the rule has them) after each step."""
    import pytensor
    import pytensor.tensor as pt

    import symopt

    W = pytensor.shared(data["W0"].copy(), name="W")
    b = pytensor.shared(data["b0"].copy(), name="b")
    out_ = pt.dot(pt.tanh(pt.dot(pt.constant(data["x"]), W) + b), pt.constant(data["v"]))
    loss = pt.mean((out_ - pt.constant(data["y"])) ** 2)
    opt = symopt.get(rule)([W, b], **symopt_kwargs(kwargs, [W, b]))
    train = pytensor.function([], loss, updates=opt.updates(loss))
    out = []
    for _ in range(steps):
        train()
        row = [W.get_value().copy(), b.get_value().copy()]
        if rule in EVAL:
            row += EVAL[rule][0](opt)
        out.append(row)
    return out


def run_optax(jax: Any, optax: Any, rule: str, hp: dict[str, Any], data: dict[str, np.ndarray], steps: int):
    import jax.numpy as jnp

    x, y, v = (jnp.asarray(data[k]) for k in ("x", "y", "v"))

    def loss(params: dict[str, Any]) -> Any:
        return jnp.mean((jnp.tanh(x @ params["W"] + params["b"]) @ v - y) ** 2)

    grad = jax.jit(jax.grad(loss))
    tx, reference = optax_transform(optax, rule, hp)
    params = {"W": jnp.asarray(data["W0"]), "b": jnp.asarray(data["b0"])}
    state = tx.init(params)
    out = []
    for _ in range(steps):
        updates, state = tx.update(grad(params), state, params)
        params = optax.apply_updates(params, updates)
        row = [np.asarray(params["W"]), np.asarray(params["b"])]
        if rule in EVAL:
            row += EVAL[rule][1](optax, state, params)
        out.append(row)
    return out, reference


def compare(sym: list[list[np.ndarray]], ref: list[list[np.ndarray]]) -> dict[str, Any]:
    tiny = np.finfo(np.float64).tiny
    per_step = []
    for s_row, r_row in zip(sym, ref):
        errors = [float(np.max(np.abs(a - b) / np.maximum(np.abs(b), tiny))) for a, b in zip(s_row, r_row)]
        per_step.append(max(errors))
    moved = float(max(np.max(np.abs(a - b)) for a, b in zip(ref[-1][:2], ref[0][:2])))
    return {
        "max_rel_error": max(per_step),
        "passed": all(e <= TOLERANCE for e in per_step),
        "first_failing_step": next((i + 1 for i, e in enumerate(per_step) if not e <= TOLERANCE), None),
        "max_rel_error_per_step": per_step,
        "moved_after_step_1": moved,
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
        print("validate_optax: JAX/optax are not installed; install them with  pip install -e '.[bench]'\nskipped")
        return 0
    jax.config.update("jax_enable_x64", True)

    import pytensor

    import symopt

    data = make_problem()
    wanted = [r.lower() for r in args.rules] if args.rules else None
    unknown = sorted(set(wanted or ()) - set(SETTINGS))
    if unknown:
        parser.error(f"no optax settings for {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
    results = []
    for rule, settings in SETTINGS.items():
        if wanted is not None and rule not in wanted:
            continue
        for setting, overrides in settings:
            opt_defaults = dict(symopt.get(rule).hyperparameters)
            hp = {**opt_defaults, **overrides}
            if rule == "prodigy" and "beta3" not in overrides:
                hp["beta3"] = hp["beta2"] ** 0.5  # optax's default, as symopt's beta3=None
            t0 = time.perf_counter()
            sym = run_symopt(rule, overrides, data, args.steps)
            ref, reference = run_optax(jax, optax, rule, hp, data, args.steps)
            row = {"rule": rule, "setting": setting, "reference": reference, "hyperparameters": hp,
                   **compare(sym, ref), "seconds": round(time.perf_counter() - t0, 3)}
            results.append(row)
            status = "pass" if row["passed"] else f"FAIL (first at step {row['first_failing_step']})"
            print(f"{rule:20s} {setting:50s} {row['max_rel_error']:10.3e}  {status}", flush=True)

    worst: dict[str, float] = {}
    for r in results:
        worst[r["rule"]] = max(worst.get(r["rule"], 0.0), r["max_rel_error"])
    failed = [r for r in results if not r["passed"]]
    report = {
        "tolerance": TOLERANCE,
        "steps": args.steps,
        "criterion": "max over steps of max_i |p_symopt - p_optax|_i / |p_optax|_i, W and b (and eval params), float64",
        "versions": {"python": platform.python_version(), "jax": jax.__version__, "optax": optax.__version__,
                     "pytensor": pytensor.__version__, "numpy": np.__version__, "symopt": symopt.__version__},
        "worst_per_rule": worst,
        "n_settings": len(results),
        "n_failed": len(failed),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(f"worst relative error per rule (tolerance {TOLERANCE:g}, {args.steps} steps, float64):")
    for rule, err in worst.items():
        print(f"  {rule:20s} {err:10.3e}  {'pass' if err <= TOLERANCE else 'FAIL'}")
    print(f"{len(results) - len(failed)}/{len(results)} settings pass; report written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
