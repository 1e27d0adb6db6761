"""Check symopt's rules whose reference is optax against optax, step for step, in float64.

For each rule and several hyperparameter settings this script builds a tanh layer with
a matrix ``W`` (5x8) and a vector ``b`` (8), read out by a fixed vector, squared error on
a fixed batch of 32 (the problem of ``benchmarks/validate_torch.py``), once as a
PyTensor graph and once in JAX with ``jax_enable_x64``; trains both from the same start
for ``--steps`` steps (symopt through one compiled function, optax through its
``update``); and records the largest element-wise relative difference of the
parameters after every step. A setting passes when it stays <= 1e-6. It prints each
setting's error and the worst per rule, writes a JSON report and exits 1 if any setting
fails. Without JAX/optax it says how to install them and exits 0 with "skipped"::

    pip install -e '.[bench]'
    python benchmarks/validate_optax.py [--steps 30] [--rules sam,sophia] [--out ...]
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


def relative_error(actual: np.ndarray, desired: np.ndarray) -> float:
    """max |a - d| / max(|d|, 1e-3 max|d|): element-wise, floored at the array's scale."""
    floor = 1e-3 * float(np.max(np.abs(desired))) or 1e-300
    return float(np.max(np.abs(actual - desired) / np.maximum(np.abs(desired), floor)))


def _symopt_problem(problem: dict[str, np.ndarray]) -> tuple[list[Any], Any]:
    import pytensor
    import pytensor.tensor as pt

    W = pytensor.shared(problem["W0"].copy(), name="W")
    b = pytensor.shared(problem["b0"].copy(), name="b")
    prediction = pt.tanh(pt.constant(problem["x"]) @ W + b) @ pt.constant(problem["v"])
    return [W, b], pt.mean(pt.square(prediction - pt.constant(problem["y"])))


def _jax_loss(problem: dict[str, np.ndarray]) -> Callable[[dict[str, Any]], Any]:
    import jax.numpy as jnp

    x, y, v = (jnp.asarray(problem[k]) for k in ("x", "y", "v"))

    def loss(params: dict[str, Any]) -> Any:
        return jnp.mean(jnp.square(jnp.tanh(x @ params["W"] + params["b"]) @ v - y))

    return loss


# ---------------------------------------------------------------------------- SAM and Sophia
# Both need the loss inside optax's update too: SAM through ``grad_fn`` (opaque_mode=True,
# sync_period=2: one adversarial step, then the outer step, per update), Sophia through
# ``obj_fn``. Sophia's Rademacher vectors come from symopt's counter hash in both runs:
# optax gets a Hessian-diagonal function (the same u * jvp(grad) as optax's
# hutchinson_estimator_diag_hessian) that reads them from a table instead of jax.random.
SECOND_ORDER_SETTINGS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "sam": [
        ("base=sgd lr=0.1 rho=0.05", {"base": "sgd", "learning_rate": 0.1, "rho": 0.05}),
        ("base=sgd lr=0.05 rho=0.3", {"base": "sgd", "learning_rate": 0.05, "rho": 0.3}),
        ("base=momentum lr=0.05 momentum=0.9 rho=0.1",
         {"base": "momentum", "learning_rate": 0.05, "momentum": 0.9, "rho": 0.1}),
        ("base=adam lr=0.01 rho=0.05", {"base": "adam", "learning_rate": 0.01, "rho": 0.05}),
    ],
    "sophia": [
        ("lr=0.01 (optax defaults otherwise), k=10", {"learning_rate": 0.01}),
        ("lr=0.02 gamma=1 b1=0.9 b2=0.8 clip=0.5 eps=1e-4 wd=0.1 k=3",
         {"learning_rate": 0.02, "gamma": 1.0, "beta1": 0.9, "beta2": 0.8, "clip_threshold": 0.5,
          "epsilon": 1e-4, "weight_decay": 0.1, "update_interval": 3}),
        ("lr=0.05 gamma=0.5 k=1", {"learning_rate": 0.05, "gamma": 0.5, "update_interval": 1}),
    ],
}


def _optax_sam(optax: Any, setting: dict[str, Any]) -> Any:
    lr, rho = setting["learning_rate"], setting["rho"]
    base = {
        "sgd": lambda: optax.sgd(lr),
        "momentum": lambda: optax.sgd(lr, momentum=setting.get("momentum", 0.9)),  # torch's heavy ball
        "adam": lambda: optax.adam(lr),
    }[setting["base"]]()
    adversary = optax.chain(optax.contrib.normalize(), optax.sgd(rho))
    return optax.contrib.sam(base, adversary, sync_period=2, opaque_mode=True)


def _rademacher_table(opt: Any, steps: int, interval: int) -> list[dict[str, np.ndarray]]:
    """Sophia's u at each Hessian step 0, k, 2k, ... from symopt's counter hash (its Python reference)."""
    from symopt._random import _hash

    table = []
    for step in range(0, steps, interval):
        draws = {}
        for i, name in enumerate(("W", "b")):
            shape = opt.params[i].get_value().shape
            bits = [_hash(opt.keys[i], step, j) >> 63 for j in range(int(np.prod(shape)))]
            draws[name] = np.where(np.asarray(bits) == 0, -1.0, 1.0).reshape(shape)
        table.append(draws)
    return table


def _optax_sophia(optax: Any, setting: dict[str, Any], table: list[dict[str, np.ndarray]]) -> Any:
    import jax
    import jax.numpy as jnp

    stacked = {k: jnp.asarray(np.stack([d[k] for d in table])) for k in table[0]}

    def init(params: Any) -> Any:
        return jnp.zeros((), jnp.int32)

    def update(updates: Any, count: Any, params: Any = None, obj_fn: Any = None, **extra: Any) -> Any:
        signs = {k: v[count] for k, v in stacked.items()}
        hvp = jax.jvp(jax.grad(obj_fn), (params,), (signs,))[1]
        return jax.tree.map(lambda h, u: h * u, hvp, signs), count + 1

    return optax.contrib.sophia(
        learning_rate=setting["learning_rate"], b1=setting.get("beta1", 0.965), b2=setting.get("beta2", 0.99),
        eps=setting.get("epsilon", 1e-8), weight_decay=setting.get("weight_decay", 1e-4),
        gamma=setting.get("gamma", 0.01), clip_threshold=setting.get("clip_threshold", 1.0),
        update_interval=setting.get("update_interval", 10),
        hessian_diagonal_fn=optax.GradientTransformationExtraArgs(init, update),
    )


def run_second_order(rule: str, setting: dict[str, Any], steps: int, problem: dict[str, np.ndarray]) -> list[float]:
    """Per-step worst relative parameter error of symopt's ``rule`` against optax's."""
    import jax
    import jax.numpy as jnp
    import optax
    import pytensor

    import symopt

    params, loss = _symopt_problem(problem)
    kwargs = dict(setting)
    if rule == "sam":
        opt = symopt.SAM(params, **kwargs)
    else:
        opt = symopt.Sophia(params, seed=3, **kwargs)
    step = pytensor.function([], loss, updates=opt.updates(loss))

    objective = _jax_loss(problem)
    jparams = {"W": jnp.asarray(problem["W0"]), "b": jnp.asarray(problem["b0"])}
    if rule == "sam":
        tx = _optax_sam(optax, setting)
        extra = {"grad_fn": lambda p, _: jax.grad(objective)(p)}
    else:
        tx = _optax_sophia(optax, setting, _rademacher_table(opt, steps, setting.get("update_interval", 10)))
        extra = {"obj_fn": objective}
    state = tx.init(jparams)
    errors = []
    for _ in range(steps):
        updates, state = tx.update(jax.grad(objective)(jparams), state, jparams, **extra)
        jparams = optax.apply_updates(jparams, updates)
        step()
        errors.append(max(relative_error(p.get_value(), np.asarray(jparams[k])) for p, k in zip(params, ("W", "b"))))
    moved = max(float(np.max(np.abs(p.get_value() - problem[k + "0"]))) for p, k in zip(params, ("W", "b")))
    if moved < 1e-3:
        raise AssertionError(f"{rule} {setting}: the parameters moved only {moved:g}; pick a setting that trains")
    return errors


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rules", default="sam,sophia", help="comma-separated rule names")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    try:
        import jax
        import optax  # noqa: F401
    except ImportError:
        print("skipped: JAX and optax are not installed (pip install -e '.[bench]')")
        return 0
    jax.config.update("jax_enable_x64", True)
    problem = make_problem()
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    unknown = set(rules) - set(SECOND_ORDER_SETTINGS)
    if unknown:
        print(f"unknown rules {sorted(unknown)}; known: {', '.join(SECOND_ORDER_SETTINGS)}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"steps": args.steps, "tolerance": TOLERANCE, "python": platform.python_version(),
                              "jax": jax.__version__, "optax": __import__("optax").__version__, "rules": {}}
    failed = False
    for rule in rules:
        worst_rule = 0.0
        entries = []
        for name, setting in SECOND_ORDER_SETTINGS[rule]:
            start = time.perf_counter()
            errors = run_second_order(rule, setting, args.steps, problem)
            worst = max(errors)
            ok = worst <= TOLERANCE
            failed |= not ok
            worst_rule = max(worst_rule, worst)
            print(f"{rule:8s} {name:62s} worst {worst:.2e} {'ok' if ok else 'FAIL'} ({time.perf_counter() - start:.1f} s)")
            entries.append({"setting": name, "hyperparameters": setting, "worst": worst, "per_step": errors, "ok": ok})
        print(f"{rule:8s} worst over all settings: {worst_rule:.2e}")
        report["rules"][rule] = {"worst": worst_rule, "settings": entries}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"report: {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
