"""Check the Keras-semantics options against Keras 3 itself, step for step, in float64.

Purpose
-------
Two symopt options exist to reproduce Keras 3 (and TF1) numbers, and torch has neither:

* ``Adam/AdamW(epsilon_hat=True)``: epsilon added to ``sqrt(v)`` before the bias
  correction (Kingma & Ba, section 2; ``tf.compat.v1.train.AdamOptimizer``; Keras 3's
  ``Adam``/``AdamW``), compared with ``keras.optimizers.Adam``/``AdamW`` (amsgrad too);
* ``EMA(opt, decay, overwrite_frequency=N)``: compared with ``keras.optimizers.SGD(
  use_ema=True, ema_momentum=decay, ema_overwrite_frequency=N)``. Keras's first average
  is the first step's parameters (its decay is 0 at iteration 0) while symopt's starts
  at the parameters the EMA was created with, so the symopt side sets ``decay=0`` for
  its first step (``ema.set_decay``, no recompilation) and ``decay`` after it.

A random 4x3 parameter and 30 fixed random gradients; symopt through one compiled
``pytensor.function`` with ``updates(grads=[g])``, Keras with ``apply_gradients`` on the
JAX backend with x64 enabled. A case passes when the largest element-wise relative
difference of the final parameters (and averages) is <= 1e-6. One negative control (the
default epsilon placement against Keras's) must differ, or the script fails.

How to run
----------
Keras is not a dependency of symopt::

    pip install -e ".[bench]"      # keras with the JAX backend, CPU is enough
    python benchmarks/validate_keras.py

Without Keras it says so and exits 0. Measured with Keras 3.15.1 (JAX 0.12.0.1): all 7 cases
within 1.3e-15, the control 2.0e-1.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

import numpy as np

TOLERANCE = 1e-6
STEPS = 30


def main() -> int:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
        import keras
    except ImportError as exc:
        print(f"skipped: {exc} (pip install keras jax)")
        return 0
    import pytensor
    import pytensor.tensor as pt

    import symopt

    keras.config.set_floatx("float64")
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(4, 3))
    grads = [rng.normal(scale=0.5, size=(4, 3)) for _ in range(STEPS)]

    def run_keras(opt: Any) -> tuple[np.ndarray, Any]:
        v = keras.Variable(p0.copy(), dtype="float64")
        for g in grads:
            opt.apply_gradients([(keras.ops.convert_to_tensor(g), v)])
        return np.asarray(v.value), opt

    def run_symopt(make: Callable[[list[Any]], Any], ema_kw: dict[str, Any] | None = None) -> tuple[np.ndarray, Any]:
        p = pytensor.shared(p0.copy(), name="p")
        opt, g, ema = make([p]), pt.dmatrix("g"), None
        if ema_kw is not None:
            ema = symopt.EMA(opt, **ema_kw)
            ema.set_decay(0.0)  # Keras: current_decay = (iterations != 0) * ema_momentum
            updates = ema.updates(grads=[g])
        else:
            updates = opt.updates(grads=[g])
        step = pytensor.function([g], [], updates=updates)
        for t, x in enumerate(grads):
            step(x)
            if ema is not None and t == 0:
                ema.set_decay(ema_kw["decay"])
        return p.get_value(), ema

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.max(np.abs(a - b) / np.abs(b)))

    K, S = keras.optimizers, symopt
    adam_cases = [
        ("Adam epsilon_hat, lr=0.02, betas=(0.8, 0.99), eps=1e-3",
         lambda: K.Adam(learning_rate=0.02, beta_1=0.8, beta_2=0.99, epsilon=1e-3),
         lambda ps: S.Adam(ps, learning_rate=0.02, beta1=0.8, beta2=0.99, epsilon=1e-3, epsilon_hat=True)),
        ("Adam epsilon_hat, Keras defaults (eps=1e-7)",
         lambda: K.Adam(learning_rate=0.001),
         lambda ps: S.Adam(ps, learning_rate=0.001, epsilon=1e-7, epsilon_hat=True)),
        ("Adam amsgrad epsilon_hat, lr=0.02, eps=1e-3",
         lambda: K.Adam(learning_rate=0.02, epsilon=1e-3, amsgrad=True),
         lambda ps: S.Adam(ps, learning_rate=0.02, epsilon=1e-3, amsgrad=True, epsilon_hat=True)),
        ("AdamW epsilon_hat, lr=0.02, wd=0.1, eps=1e-3",
         lambda: K.AdamW(learning_rate=0.02, weight_decay=0.1, epsilon=1e-3),
         lambda ps: S.AdamW(ps, learning_rate=0.02, weight_decay=0.1, epsilon=1e-3, epsilon_hat=True)),
    ]
    failed = 0
    for name, make_keras, make_symopt in adam_cases:
        err = rel(run_symopt(make_symopt)[0], run_keras(make_keras())[0])
        failed += err > TOLERANCE
        print(f"{name:58s} {err:10.3e}  {'pass' if err <= TOLERANCE else 'FAIL'}")
    for n in (1, 3, 7):
        kv, kopt = run_keras(K.SGD(learning_rate=0.1, use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=n))
        kavg = np.asarray(kopt._model_variables_moving_average[0].value)
        sv, ema = run_symopt(lambda ps: S.SGD(ps, learning_rate=0.1), {"decay": 0.8, "overwrite_frequency": n})
        err = max(rel(sv, kv), rel(ema.averages[0].get_value(), kavg))
        failed += err > TOLERANCE
        print(f"{f'EMA(SGD), overwrite_frequency={n}':58s} {err:10.3e}  {'pass' if err <= TOLERANCE else 'FAIL'}")
    control = rel(run_symopt(lambda ps: S.Adam(ps, learning_rate=0.02, beta1=0.8, beta2=0.99, epsilon=1e-3))[0],
                  run_keras(adam_cases[0][1]())[0])
    print(f"{'control: default epsilon placement vs Keras Adam':58s} {control:10.3e}  "
          f"{'detected' if control > TOLERANCE else 'NOT DETECTED'}")
    print(f"keras {keras.__version__}: {len(adam_cases) + 3 - failed}/{len(adam_cases) + 3} within {TOLERANCE:g}")
    return 1 if failed or control <= TOLERANCE else 0


if __name__ == "__main__":
    sys.exit(main())
