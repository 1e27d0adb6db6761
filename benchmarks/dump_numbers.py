"""Parameters after 5 steps for ~40 optimiser configurations, to prove a refactor changes no number.

Run once on the old code and once on the new, then compare bit for bit::

    .venv/bin/python benchmarks/dump_numbers.py /tmp/before.npz
    .venv/bin/python benchmarks/dump_numbers.py /tmp/after.npz --compare /tmp/before.npz

Every rule with its defaults and with options, each gradient control (clips, coupled and
decoupled weight decay, masks, accumulation, non-finite skipping, max-norm), param groups,
schedules, EMA and Lookahead, in float32 and float64. The gradients are fixed random
arrays (one NaN batch for the skipping configurations), fed through ``grads=`` and through
a loss, so both paths are covered.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

import numpy as np
import pytensor
import pytensor.tensor as pt

import symopt

STEPS = 5
SHAPES = {"W": (4, 3), "b": (3,)}


def _params(dtype: str, seed: int = 0) -> list[Any]:
    rng = np.random.default_rng(seed)
    return [pytensor.shared(rng.normal(size=s).astype(dtype), name=n) for n, s in SHAPES.items()]


def _grads(dtype: str, nan_at: int | None = None) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(1)
    out = []
    for step in range(STEPS):
        gs = [rng.normal(scale=2.0, size=s).astype(dtype) for s in SHAPES.values()]
        if step == nan_at:
            gs[0][0, 0] = np.nan
        out.append(gs)
    return out


def _run_grads(make: Callable[[list[Any]], Any], dtype: str, nan_at: int | None = None, wrap: Any = None) -> list[np.ndarray]:
    params = _params(dtype)
    opt = make(params)
    gs = [pt.tensor(f"g{i}", dtype=dtype, shape=(None,) * len(s)) for i, s in enumerate(SHAPES.values())]
    if wrap is not None:
        updates, extra = wrap(opt, params, gs)
    else:
        updates, extra = opt.updates(grads=gs), []
    step = pytensor.function(gs, [], updates=updates)
    for batch in _grads(dtype, nan_at):
        step(*batch)
    return [p.get_value() for p in params] + [v.get_value() for v in extra]


def _run_loss(make: Callable[[list[Any]], Any], dtype: str) -> list[np.ndarray]:
    params = _params(dtype)
    opt = make(params)
    x = pt.matrix("x", dtype=dtype)
    W, b = params
    loss = pt.mean((pt.tanh(x @ W + b) - 0.5) ** 2)
    step = pytensor.function([x], loss, updates=opt.updates(loss))
    rng = np.random.default_rng(2)
    for _ in range(STEPS):
        step(rng.normal(size=(6, 4)).astype(dtype))
    return [p.get_value() for p in params]


def _ema(decay: float) -> Any:
    def wrap(opt: Any, params: list[Any], gs: list[Any]) -> Any:
        ema = symopt.EMA(params, decay=decay)
        return ema.updates(opt.updates(grads=gs)), ema.averages
    return wrap


def _lookahead(k: int, alpha: float) -> Any:
    def wrap(opt: Any, params: list[Any], gs: list[Any]) -> Any:
        la = symopt.Lookahead(opt, k=k, alpha=alpha)
        return la.updates(grads=gs), la.slow
    return wrap


def configs() -> dict[str, Callable[[], list[np.ndarray]]]:
    S = symopt
    bias_only = lambda p: p.ndim == 1  # noqa: E731
    c: dict[str, Callable[[], list[np.ndarray]]] = {}
    for dtype in ("float32", "float64"):
        for name, cls in [("sgd", S.SGD), ("momentum", S.Momentum), ("nesterov", S.Nesterov), ("adagrad", S.AdaGrad),
                          ("rmsprop", S.RMSprop), ("adadelta", S.AdaDelta), ("adam", S.Adam), ("adamw", S.AdamW),
                          ("amsgrad", S.AMSGrad), ("adamax", S.Adamax), ("nadam", S.NAdam), ("radam", S.RAdam),
                          ("lion", S.Lion)]:
            c[f"{name}/{dtype}"] = lambda cls=cls, dtype=dtype: _run_grads(lambda p: cls(p, learning_rate=0.05), dtype)
    d = "float32"
    opts: dict[str, Callable[[list[Any]], Any]] = {
        "adagrad-eps-inside": lambda p: S.AdaGrad(p, learning_rate=0.1, epsilon_inside_sqrt=True),
        "rmsprop-centered-momentum": lambda p: S.RMSprop(p, learning_rate=0.01, centered=True, momentum=0.5),
        "rmsprop-eps-inside": lambda p: S.RMSprop(p, learning_rate=0.01, epsilon_inside_sqrt=True),
        "adam-amsgrad-decay": lambda p: S.Adam(p, learning_rate=0.05, amsgrad=True, beta1_decay=0.9),
        "nadam-psi": lambda p: S.NAdam(p, learning_rate=0.05, momentum_decay=0.01),
        "clip-value": lambda p: S.Adam(p, learning_rate=0.05, clip_value=0.5),
        "clip-norm": lambda p: S.Momentum(p, learning_rate=0.05, clip_norm=1.0),
        "clip-global-norm": lambda p: S.RMSprop(p, learning_rate=0.05, clip_global_norm=1.5),
        "clip-all": lambda p: S.SGD(p, learning_rate=0.05, clip_value=1.0, clip_norm=2.0, clip_global_norm=2.5),
        "wd-coupled": lambda p: S.Adam(p, learning_rate=0.05, weight_decay=0.1),
        "wd-decoupled-adamw": lambda p: S.AdamW(p, learning_rate=0.05, weight_decay=0.1),
        "wd-lion": lambda p: S.Lion(p, learning_rate=0.05, weight_decay=0.3),
        "wd-mask": lambda p: S.Momentum(p, learning_rate=0.05, weight_decay=0.2, weight_decay_mask=bias_only),
        "wd-mask-list": lambda p: S.AdamW(p, learning_rate=0.05, weight_decay=0.2, weight_decay_mask=[p[0]]),
        "accumulate": lambda p: S.Adam(p, learning_rate=0.05, accumulate=2),
        "max-norm": lambda p: S.SGD(p, learning_rate=0.5, max_norm=0.8),
        "max-norm-mask": lambda p: S.SGD(p, learning_rate=0.5, max_norm=0.8, max_norm_mask=[p[0]]),
        "groups": lambda p: S.Adam([{"params": [p[0]], "learning_rate": 0.02},
                                    {"params": [p[1]], "learning_rate": 0.1, "weight_decay": 0.5}], beta1=0.8),
        "schedule": lambda p: S.Adam(p, learning_rate=S.schedules.WarmupCosine(peak=0.1, warmup_steps=2, total_steps=5)),
        "schedule-wd": lambda p: S.AdamW(p, learning_rate=0.05, weight_decay=S.schedules.LinearWarmup(peak=0.2, warmup_steps=3)),
    }
    for name, make in opts.items():
        c[f"{name}/{d}"] = lambda make=make: _run_grads(make, d)
    c["skip-nonfinite/float32"] = lambda: _run_grads(lambda p: S.Adam(p, learning_rate=0.05, skip_nonfinite=True), d, nan_at=2)
    c["skip-accumulate/float32"] = lambda: _run_grads(lambda p: S.Adam(p, learning_rate=0.05, skip_nonfinite=True, accumulate=2), d, nan_at=1)
    c["ema/float32"] = lambda: _run_grads(lambda p: S.Adam(p, learning_rate=0.05), d, wrap=_ema(0.7))
    c["ema-accumulate/float64"] = lambda: _run_grads(lambda p: S.Adam(p, learning_rate=0.05, accumulate=2), "float64", wrap=_ema(0.7))
    c["lookahead/float32"] = lambda: _run_grads(lambda p: S.Adam(p, learning_rate=0.05), d, wrap=_lookahead(2, 0.5))
    c["lookahead-skip/float64"] = lambda: _run_grads(lambda p: S.SGD(p, learning_rate=0.1, skip_nonfinite=True), "float64",
                                                      nan_at=1, wrap=_lookahead(2, 0.6))
    c["loss-adam/float32"] = lambda: _run_loss(lambda p: S.Adam(p, learning_rate=0.05, clip_global_norm=0.1, weight_decay=0.01), d)
    c["loss-radam/float64"] = lambda: _run_loss(lambda p: S.RAdam(p, learning_rate=0.05), "float64")
    c["loss-skip/float32"] = lambda: _run_loss(lambda p: S.NAdam(p, learning_rate=0.05, skip_nonfinite=True, max_norm=1.0), d)
    return c


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--compare", help="an earlier dump; exit 1 unless every array is bit-identical")
    args = parser.parse_args(argv)
    arrays: dict[str, np.ndarray] = {}
    for name, run in configs().items():
        for i, value in enumerate(run()):
            arrays[f"{name}/{i}"] = value
    np.savez(args.out, **arrays)
    print(f"{len(configs())} configurations, {len(arrays)} arrays -> {args.out}")
    if args.compare:
        with np.load(args.compare) as before:
            names = set(before.files) | set(arrays)
            bad = [n for n in sorted(names) if n not in before.files or n not in arrays
                   or before[n].dtype != arrays[n].dtype or before[n].tobytes() != arrays[n].tobytes()]
        print("bit-identical" if not bad else f"DIFFERENT: {bad}")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
