"""Finite-difference check of symbolic gradients.

:func:`check_grad` compares ``pytensor.grad`` of a scalar loss with central
differences obtained by perturbing the entries of shared parameters, as the seed
experiments did before trusting a model's gradient.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.basic import Variable
from pytensor.graph.traversal import ancestors

from .function import function

__all__ = ["check_grad", "DEFAULT_EPS", "DEFAULT_FLOOR"]

_FLOATS = ("float16", "float32", "float64")

#: Central-difference step per working precision. The error of a central difference is
#: about ``eps**2 * |f'''| + macheps * |f| / eps``, smallest near ``eps = macheps**(1/3)``
#: (6e-6 for float64, 5e-3 for float32); a step a little below that optimum keeps
#: fewer ReLU kinks inside the stencil. Expect errors near 1e-2 in float32 whatever the
#: step: check gradients in float64.
DEFAULT_EPS: dict[str, float] = {"float16": 3e-2, "float32": 3e-3, "float64": 1e-6}
#: Denominator floor of the relative error, about the numerical gradient's rounding
#: noise ``macheps * |f| / eps`` for a loss of order one: gradients smaller than this
#: are compared in absolute terms instead of amplifying that noise.
DEFAULT_FLOOR: dict[str, float] = {"float16": 1e-1, "float32": 1e-3, "float64": 1e-8}


def _least_precise(*dtypes: str) -> str:
    return max(dtypes, key=lambda d: float(np.finfo(d).eps))


def check_grad(
    loss: Any,
    params: Sequence[SharedVariable],
    inputs: Mapping[Variable, Any] | None = None,
    *,
    eps: float | None = None,
    n_samples: int | None = None,
    seed: int = 0,
    floor: float | None = None,
    mode: Any = None,
) -> dict[str, float]:
    r"""Maximum relative error between the symbolic and the numerical gradient, per parameter.

    For each checked entry :math:`\theta_i` of a parameter, the numerical gradient is
    the central difference

    .. math:: n_i = \frac{L(\theta_i^+) - L(\theta_i^-)}{\theta_i^+ - \theta_i^-},
        \qquad \theta_i^\pm = \operatorname{fl}(\theta_i \pm \epsilon)

    (dividing by the step actually taken after rounding to the parameter's dtype),
    and its error against the symbolic gradient :math:`a_i` is

    .. math:: e_i = \frac{|a_i - n_i|}{\max(|a_i|, |n_i|, \text{floor})}.

    A gradient off by a factor of 2 thus scores 0.5; a correct float64 gradient
    typically scores below 1e-6.

    Parameters
    ----------
    loss
        Scalar float expression of ``params`` (and of ``inputs``). It must be
        deterministic: shared RNGs are not advanced while checking (their default
        updates are overridden), so a dropout mask stays fixed across evaluations.
    params
        The shared variables whose gradients are checked.
    inputs
        Values for the loss's symbolic inputs, ``{x: X, y: Y}``; each value is cast to
        its variable's dtype.
    eps
        Perturbation; default :data:`DEFAULT_EPS` of the less precise of the loss and
        the parameter dtypes (1e-6 for float64, 3e-3 for float32).
    n_samples
        Check at most this many entries per parameter (all when ``None``). Parameter
        ``k`` (in order) with more entries than that checks the flat indices
        ``rng.choice(size, n_samples, replace=False)``, with one
        ``rng = numpy.random.default_rng(seed)`` shared by all parameters.
    seed
        Seed of that sampling.
    floor
        Denominator floor; default :data:`DEFAULT_FLOOR` of the same dtype.
    mode
        PyTensor compilation mode (default: the configured one).

    Returns
    -------
    dict
        Parameter name (``name``, or ``"param<k>"`` when unnamed, with ``"[k]"``
        appended to names that repeat) to the maximum error over its checked entries.

    Notes
    -----
    One function returning the loss and the gradients is compiled, once: compiling
    dominates the cost for the small models a gradient check is for, and a second,
    loss-only function would cost about a third as much again. Every parameter's value is
    copied first and restored exactly afterwards, also when an evaluation raises.
    """
    loss = pt.as_tensor_variable(loss)
    if loss.ndim != 0 or loss.dtype not in _FLOATS:
        raise ValueError(f"check_grad: the loss must be a float scalar, got {loss.type}")
    params = list(params)
    if not params:
        raise ValueError("check_grad: no parameters to check")
    seen: set[int] = set()
    for k, p in enumerate(params):
        if not isinstance(p, SharedVariable) or not isinstance(p.type, pt.TensorType) or p.dtype not in _FLOATS:
            raise TypeError(f"check_grad: params[{k}] must be a float pytensor.shared tensor, got {p!r}")
        if id(p) in seen:
            raise ValueError(f"check_grad: params[{k}] ({p.name}) is listed twice")
        seen.add(id(p))
    if n_samples is not None and int(n_samples) < 1:
        raise ValueError(f"check_grad: n_samples must be >= 1, got {n_samples}")

    inputs = dict(inputs or {})
    in_vars = list(inputs)
    in_vals = [np.asarray(v, dtype=var.dtype) if hasattr(var, "dtype") else v for var, v in inputs.items()]

    # Unused parameters get a zero gradient, which the finite difference confirms.
    grads = pytensor.grad(loss, params, disconnected_inputs="ignore", return_disconnected="zero")
    # Shared variables with a default update (RandomStream RNGs) would advance on every
    # call and change the loss between evaluations; updating them to themselves pins them.
    pinned = {
        v: v
        for v in ancestors([loss, *grads])
        if isinstance(v, SharedVariable) and getattr(v, "default_update", None) is not None
    }
    fn = function(in_vars, [loss, *grads], updates=pinned, mode=mode, on_unused_input="ignore")

    names = [p.name or f"param{k}" for k, p in enumerate(params)]
    keys = [f"{n}[{k}]" if names.count(n) > 1 else n for k, n in enumerate(names)]
    rng = np.random.default_rng(seed)
    originals = [p.get_value(borrow=False) for p in params]
    result: dict[str, float] = {}
    try:
        analytic = [np.asarray(g, dtype=np.float64) for g in fn(*in_vals)[1:]]
        for p, key, value, grad in zip(params, keys, originals, analytic):
            dtype = _least_precise(p.dtype, loss.dtype)
            step = DEFAULT_EPS[dtype] if eps is None else float(eps)
            tiny = DEFAULT_FLOOR[dtype] if floor is None else float(floor)
            size = value.size
            if n_samples is None or n_samples >= size:
                indices = np.arange(size)
            else:
                indices = rng.choice(size, int(n_samples), replace=False)
            work = value.copy()
            flat = work.reshape(-1)  # a view: writing flat[i] edits work
            errors = []
            for i in indices:
                x0 = flat[i]
                flat[i] = x0 + step
                up = float(flat[i])
                p.set_value(work)
                loss_up = float(fn(*in_vals)[0])
                flat[i] = x0 - step
                down = float(flat[i])
                p.set_value(work)
                loss_down = float(fn(*in_vals)[0])
                flat[i] = x0
                if up == down:
                    raise ValueError(f"check_grad: eps={step} vanishes next to {key} entry {i} = {x0} in {p.dtype}")
                numeric = (loss_up - loss_down) / (up - down)
                a = float(grad.reshape(-1)[i])
                errors.append(abs(a - numeric) / max(abs(a), abs(numeric), tiny))
            p.set_value(value.copy())
            result[key] = float(np.max(errors))  # NaN propagates: a NaN loss never passes
    finally:
        for p, value in zip(params, originals):
            p.set_value(value)
    return result
