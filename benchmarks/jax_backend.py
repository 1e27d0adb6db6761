"""Why ``symopt.function(mode="JAX")`` was slower than hand-written JAX + optax, measured.

Purpose
-------
The same Adam train step (``step_time.py``'s problem: MLP 784-100x4-10 ReLU, float32,
batch 128, softmax cross-entropy, synthetic MNIST-shaped batches) run, interleaved in
one process:

``pytensor[JAX]``
    PyTensor's stock ``JAX`` mode (``pytensor.compile.mode.get_mode("JAX")``): its JAX
    ``CAReduce`` returns a float32 sum widened to float64 and never cast back, so from
    the second step on the whole step runs in float64 (see ``symopt/_jax.py``).
``symopt[JAX]``
    ``symopt.function(mode="JAX")``: the same plus symopt's rewrite that keeps float32
    float32, shared values kept on the device and the updated variables' buffers
    donated to XLA.
``symopt[JAX,no-donate]``
    the same without donation (``DeviceSharedJAXLinker.donate_updated = False``): what
    donation changes.
``symopt[JAX],device-batch``
    ``symopt[JAX]``'s jitted program called as PyTensor's ``Function`` calls it (same
    arguments, donated state carried from step to step), with the batch already on the
    device as the ``jax-optax`` contender gets it: the difference to ``symopt[JAX]`` is
    PyTensor's ``Function`` call and the NumPy batch's transfer.
``jax-optax``
    ``step_time.jax_contender``: one ``jax.jit`` step, parameters and state donated,
    batches already on the device.
``symopt[default]``
    ``symopt.function()`` with symopt's default backend, for scale.
``xla:symopt[JAX]``, ``xla:jax-optax``
    the two compiled XLA executables alone, called on fixed device arguments (no
    Python wrapper, no transfers, no state carried): what is left of a gap once the
    programs are equal is call overhead (PyTensor's ``Function`` checks and copies the
    NumPy batch, passes ~40 arguments, NumPy scalars are transferred each call).

Shared data (``--data-rows``, default 60000: MNIST's training set, 188 MB float32): a
function that reads a 128-row batch of a shared 60000x784 array by an index vector, in
the stock mode and in symopt's, median of ``--steps`` calls. The stock mode copies the
whole NumPy array to the device at every call; symopt's puts it there once.

Each contender runs ``--warmup`` steps, then ``--rounds`` rounds of ``--steps`` timed
steps, the order rotated every round; the figure is the median over all timed steps,
and every ratio is to ``jax-optax`` from the same run. Also printed: the dtype of the
parameters after the run (the stock mode's are float64).

How to run
----------
::

    pip install -e '.[bench]'
    python benchmarks/jax_backend.py [--rounds 10] [--steps 50] [--optimizer adam]
        [--out benchmarks/results/jax_backend.json]
"""

from __future__ import annotations

import os
import sys

# One thread everywhere, before NumPy, JAX or a BLAS is loaded (as step_time.py).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import step_time as st  # noqa: E402  (sets the thread environment at import)

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

DEFAULT_OUT = st.HERE / "results" / "jax_backend.json"


def xla_only(step_fn: Any, args: list[Any]) -> Callable[[int], Any]:
    """A step that calls the AOT-compiled executable of ``step_fn`` on fixed ``args``."""
    import jax

    compiled = step_fn.lower(*args).compile()

    def step(i: int) -> Any:
        return jax.block_until_ready(compiled(*args))

    return step


def device_batch_step(fn: Any, problem: st.Problem) -> Callable[[int], Any]:
    """``fn``'s compiled thunk (symopt's linker's call, donation included) on device batches,
    the updates stored back as ``Function`` does: a step without ``Function.__call__``."""
    import jax

    thunk = fn.vm
    storage, outputs = thunk.inputs, thunk.outputs
    updates = list(fn.maker.fgraph.update_mapping.items())
    xs = [jax.device_put(x) for x in problem.xs]
    ys = [jax.device_put(y) for y in problem.ys]
    n = len(xs)

    def step(i: int) -> Any:
        storage[0][0], storage[1][0] = xs[i % n], ys[i % n]
        thunk()
        for out_idx, in_idx in updates:
            storage[in_idx][0] = outputs[out_idx][0]
        return jax.block_until_ready(outputs[0][0])

    return step


def contenders(
    optimizer: str, problem: st.Problem
) -> tuple[dict[str, Callable[[int], Any]], dict[str, Callable[[], list[Any]]]]:
    """Every contender's ``step(i)``, built and compiled; each full step's ``params()``."""
    import jax
    import jax.numpy as jnp
    from pytensor.compile.mode import get_mode

    from symopt._jax import DeviceSharedJAXLinker

    DeviceSharedJAXLinker.donate_updated = False
    try:
        no_donate = st.symopt_contender(optimizer, problem, "JAX")
    finally:
        DeviceSharedJAXLinker.donate_updated = True
    built = {
        "pytensor[JAX]": st.symopt_contender(optimizer, problem, get_mode("JAX")),
        "symopt[JAX]": st.symopt_contender(optimizer, problem, "JAX"),
        "symopt[JAX,no-donate]": no_donate,
        "jax-optax": st.jax_contender(optimizer, problem),
        "symopt[default]": st.symopt_contender(optimizer, problem, None),
    }
    steps = {name: c.step for name, c in built.items()}
    for c in built.values():
        c.step(0)
    # The symopt[JAX] function's program (symopt's linker keeps the traced function as
    # ``fn`` on the call it gives PyTensor's thunk), jitted without donation (its arguments
    # are reused) on device copies of its current inputs and batch 0.
    fn = built["symopt[JAX]"].info["function"]
    # Copies: device_put of a device array returns it, and the step itself donates those.
    args = [None if s[0] is None else jnp.array(s[0], copy=True) for s in fn.vm.inputs]
    args[0], args[1] = jax.device_put(problem.xs[0]), jax.device_put(problem.ys[0])
    steps["xla:symopt[JAX]"] = xla_only(jax.jit(fn.vm.jit_fn.fn), args)
    steps["symopt[JAX],device-batch"] = device_batch_step(fn, problem)
    tx, _ = st.optax_transform(optimizer, st.hyperparameters(optimizer))
    params = [jnp.asarray(p) for p in problem.init]
    jo_args = [params, tx.init(params), args[0], args[1]]
    steps["xla:jax-optax"] = xla_only(jax.jit(st._jax_train_step(tx)), jo_args)
    return steps, {name: c.params for name, c in built.items()}


def shared_data_call_ms(rows: int, calls: int) -> dict[str, float]:
    """Median ms per call of a batch read from a shared ``rows`` x 784 float32 array."""
    import pytensor
    import pytensor.tensor as pt
    from pytensor.compile.mode import get_mode

    import symopt

    rng = np.random.default_rng(0)
    data = pytensor.shared(rng.random((rows, 784), dtype=np.float32), name="data")
    idx = pt.vector("idx", dtype="int64")
    out: dict[str, float] = {}
    for name, mode in (("pytensor[JAX]", get_mode("JAX")), ("symopt[JAX]", "JAX")):
        fn = symopt.function([idx], data[idx].sum(), mode=mode)
        batches = [rng.integers(0, rows, 128) for _ in range(calls)]
        np.asarray(fn(batches[0]))
        times = []
        for b in batches:
            t0 = time.perf_counter()
            np.asarray(fn(b))
            times.append(time.perf_counter() - t0)
        out[name] = round(1e3 * statistics.median(times), 4)
    return out


def run(optimizer: str, rounds: int, steps: int, warmup: int) -> dict[str, Any]:
    """Build, warm up and time every contender interleaved; medians in ms."""
    problem = st.make_problem()
    fns, params = contenders(optimizer, problem)
    for fn in fns.values():
        for i in range(warmup):
            fn(i)
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    load_before = os.getloadavg()
    gc.disable()
    try:
        for r in range(rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                fn = fns[name]
                for i in range(steps):
                    t0 = time.perf_counter()
                    fn(i)
                    times[name].append(time.perf_counter() - t0)
    finally:
        gc.enable()
    median = {name: 1e3 * statistics.median(ts) for name, ts in times.items()}
    # The lower quartile too: on a shared machine other jobs lengthen steps, rarely shorten them.
    q1 = {name: 1e3 * statistics.quantiles(ts, n=4)[0] for name, ts in times.items()}
    dtypes = {name: sorted({str(np.asarray(p).dtype) for p in get()}) for name, get in params.items()}
    return {
        "optimizer": optimizer,
        "median_ms": {k: round(v, 4) for k, v in median.items()},
        "over_jax_optax": {k: round(v / median["jax-optax"], 3) for k, v in median.items()},
        "q1_ms": {k: round(v, 4) for k, v in q1.items()},
        "q1_over_jax_optax": {k: round(v / q1["jax-optax"], 3) for k, v in q1.items()},
        "xla_over_xla": round(median["xla:symopt[JAX]"] / median["xla:jax-optax"], 3),
        "param_dtypes_after": dtypes,
        "rounds": rounds,
        "steps_per_round": steps,
        "warmup": warmup,
        "machine": st.machine_info(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--data-rows", type=int, default=60000)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    result = run(args.optimizer, args.rounds, args.steps, args.warmup)
    result["shared_data_call_ms"] = shared_data_call_ms(args.data_rows, args.steps)
    result["shared_data_rows"] = args.data_rows
    for name, ms in result["median_ms"].items():
        print(f"{name:26s} median {ms:7.3f} ms (/ jax-optax {result['over_jax_optax'][name]:.2f})   "
              f"q1 {result['q1_ms'][name]:7.3f} ms (/ jax-optax {result['q1_over_jax_optax'][name]:.2f})")
    print("parameter dtypes after the run:", result["param_dtypes_after"])
    print(f"batch from a shared {args.data_rows}x784 float32 array, ms per call:", result["shared_data_call_ms"])
    print("load average before / after:", result["load_before"], result["load_after"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    st.pin_cores(st.THREADS)
    sys.exit(main())
