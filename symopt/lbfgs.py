r"""L-BFGS with an optional strong-Wolfe line search, one whole step per compiled call.

:class:`LBFGS` reproduces ``torch.optim.LBFGS`` (torch 2.x, ``torch/optim/lbfgs.py``, itself
a port of Schmidt's minFunc and torch7's ``lbfgs.lua``/``lswolfe.lua``): one call of the
compiled function is one ``optimizer.step(closure)`` of torch, that is up to ``max_iter``
L-BFGS iterations and at most about ``max_eval`` loss/gradient evaluations, every one of
them inside the graph. The loss and its gradient at a trial point come from the user's
loss graph cloned with the parameters replaced by slices of a flat trial vector
(``pytensor.clone_replace``); the iterations and the line search are ``pytensor.scan``
while-loops (``until``), so nothing runs in Python between evaluations.

Algorithm (Nocedal & Wright, *Numerical Optimization*, 2nd ed. 2006)
--------------------------------------------------------------------
With :math:`x` the parameters flattened, :math:`g = \nabla f(x)`, and the last ``history_size``
pairs :math:`s_i = x_{i+1} - x_i`, :math:`y_i = g_{i+1} - g_i`, :math:`\rho_i = 1 / y_i^\top s_i`
(a pair is stored only when :math:`y^\top s > 10^{-10}`), the direction
:math:`d = -H g` comes from the two-loop recursion (Alg. 7.4)::

    q <- -g
    for i = k-1, ..., k-m:   a_i <- rho_i s_i.q ;  q <- q - a_i y_i
    r <- gamma q,            gamma = s_{k-1}.y_{k-1} / y_{k-1}.y_{k-1}   (1 before any pair)
    for i = k-m, ..., k-1:   b <- rho_i y_i.r ;   r <- r + s_i (a_i - b)
    d <- r

and one iteration of Alg. 7.5 is :math:`x \leftarrow x + t d`. The first iteration ever uses
:math:`d = -g` and :math:`t = \min(1, 1/\lVert g\rVert_1)\,\mathrm{lr}`; later ones start from
:math:`t = \mathrm{lr}`. With ``line_search="strong_wolfe"``, :math:`t` is chosen so that
the strong Wolfe conditions hold (N&W eq. 3.7, :math:`c_1 = 10^{-4}`, :math:`c_2 = 0.9`):

.. math::

    f(x + t d) \le f(x) + c_1 t\, g^\top d, \qquad |\nabla f(x + t d)^\top d| \le c_2 |g^\top d|,

by torch's ``_strong_wolfe``: a bracketing phase that extrapolates with safeguarded cubic
interpolation (N&W eq. 3.59) into ``[t + 0.01 (t - t_prev), 10 t]``, then a zoom phase
(N&W Alg. 3.6) with cubic interpolation kept at least a tenth of the bracket away from its
ends, stopping when the bracket is shorter than ``1e-9 / max|d|``; it may use
``max_eval - evaluations so far`` further evaluations. Without a line search the step is
``t`` and the loss is re-evaluated at the new point (except after the last iteration).

An iteration stops the step when ``max_iter`` iterations or ``max_eval`` evaluations are
reached, when :math:`\max|g| \le` ``tolerance_grad``, when :math:`g^\top d > -`
``tolerance_change``, when :math:`\max|t d| \le` ``tolerance_change`` or when the loss
changed by less than ``tolerance_change``; a step whose starting gradient already
satisfies ``tolerance_grad`` changes nothing but the evaluation counter. The history,
the last direction and step, and the counters persist between calls, as torch's state does.

Registered, but not a rule: ``symopt.get("lbfgs")`` is this class, of the registry's kind
``"full-batch, needs loss"`` (:data:`symopt.registry.FULL_BATCH`). The rules of the registry
are :class:`~symopt.optimizer.Optimizer` subclasses, one parameter at a time
(``update_param(param, grad, state, h)``), that accept gradients instead of a loss
(``updates(grads=...)``, ``combine``, seed stacks, the per-rule experiments). L-BFGS needs
the loss itself, re-evaluated at trial points, and all parameters as one vector, so it is a
class with the same protocol as the wrappers (``params``, ``iterations``, ``updates(loss)``,
``build``, ``state_dict`` / ``load_state_dict``, ``save`` / ``load``); code that steps rules
on mini-batches refuses the name with one message (:func:`symopt.registry.get_rule`), and
``symopt.updates.lbfgs(loss, params, ...)`` builds it in the functional form.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.replace import clone_replace
from pytensor.scan.utils import until
from pytensor.tensor.variable import TensorVariable

from ._npz import StateFile
from .optimizer import Updates
from .registry import FULL_BATCH, register

__all__ = ["LBFGS"]

#: torch's fixed line-search constants (``_strong_wolfe`` defaults, not the step's tolerance_change).
_C1, _C2, _LS_TOLERANCE_CHANGE = 1e-4, 0.9, 1e-9
#: torch stores a curvature pair only above this y.s.
_CURVATURE_EPS = 1e-10

_BRACKET, _ZOOM, _DONE = 0, 1, 2


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"LBFGS: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not np.isfinite(value) or value < 0:
        raise ValueError(f"LBFGS: {name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _cubic_interpolate(x1: Any, f1: Any, g1: Any, x2: Any, f2: Any, g2: Any, bounds: tuple[Any, Any] | None = None) -> Any:
    """torch's ``_cubic_interpolate``: the minimiser of the cubic through two points with
    their slopes, clipped to ``bounds`` (default: the points), or the midpoint of the
    bounds when the cubic has no minimum."""
    if bounds is None:
        lo, hi = pt.switch(x1 <= x2, x1, x2), pt.switch(x1 <= x2, x2, x1)
    else:
        lo, hi = bounds
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    d2 = pt.sqrt(pt.maximum(d2_square, 0))
    min_pos = pt.switch(
        x1 <= x2,
        x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2)),
        x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2)),
    )
    return pt.switch(d2_square >= 0, pt.minimum(pt.maximum(min_pos, lo), hi), (lo + hi) / 2.0)


class _Hyperparameters:
    """``LBFGS.hyperparameters``: the constructor's defaults; ``opt.hyperparameters``: the values in force."""

    def __get__(self, obj: LBFGS | None, owner: type[LBFGS]) -> dict[str, Any]:
        if obj is None:
            return {name: p.default for name, p in inspect.signature(owner.__init__).parameters.items()
                    if name not in ("self", "params")}
        return obj._current_hyperparameters()


@register("lbfgs")
class LBFGS:
    r"""L-BFGS (Nocedal & Wright Alg. 7.4/7.5) with torch's strong-Wolfe line search; one call = one ``step``.

    Parameters
    ----------
    params
        The float ``pytensor.shared`` variables to optimise, all of one dtype; the loss
        must be deterministic (full batch): it is re-evaluated at trial points.
    learning_rate
        torch's ``lr``: the initial step length of every iteration (default 1).
    max_iter
        Iterations per call (torch's ``max_iter``, default 20); structural.
    max_eval
        Loss/gradient evaluations per call (default ``max_iter * 5 // 4``, torch's);
        with the line search one more may happen, as in torch.
    tolerance_grad, tolerance_change
        Stop when ``max|g| <= tolerance_grad``; when the directional derivative, the
        step ``max|t d|`` or the loss change falls below ``tolerance_change``.
    history_size
        Curvature pairs kept (default 100); structural.
    line_search
        ``"strong_wolfe"`` or ``None`` (fixed step ``learning_rate``; torch's default).

    Examples
    --------
    >>> opt = symopt.LBFGS([W, b], line_search="strong_wolfe")              # doctest: +SKIP
    >>> step = pytensor.function([x, y], loss, updates=opt.updates(loss))     # doctest: +SKIP
    >>> step(X, Y)   # one torch ``opt.step(closure)``: returns the loss before the step  # doctest: +SKIP

    Notes
    -----
    Reference: ``torch.optim.LBFGS`` (``torch/optim/lbfgs.py``); with
    ``line_search="strong_wolfe"`` and float64 parameters the iterates match torch's to
    rounding (``tests/test_lbfgs.py``, ``benchmarks/validate_torch.py``). J. Nocedal and
    S. Wright, *Numerical Optimization*, 2nd ed., Springer 2006: Alg. 7.4 (two-loop
    recursion), Alg. 7.5 (L-BFGS), eq. 3.7 (strong Wolfe conditions), Alg. 3.5/3.6 (line
    search and zoom). ``opt.n_iter`` and ``opt.func_evals`` are torch's state counters;
    ``opt.iterations`` counts calls.
    """

    #: The registry's kind: needs the loss and all parameters at once (symopt.registry.FULL_BATCH).
    kind = FULL_BATCH
    #: What the numbers match (``symopt optimizers``).
    reference = "torch.optim.LBFGS(line_search_fn='strong_wolfe')"
    #: Registry name (set by :func:`symopt.register`).
    name: str | None = None
    #: The attributes registry-driven code reads on a rule class, with the values that keep it
    #: out of the places L-BFGS cannot work: it needs the loss, all parameters as one vector.
    needs_loss = True
    stackable = False
    per_member_values = False
    accepted_ndims = None
    hyperparameters = _Hyperparameters()

    def __init__(
        self,
        params: Sequence[SharedVariable],
        learning_rate: float = 1.0,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_size: int = 100,
        line_search: str | None = None,
    ):
        if isinstance(params, (SharedVariable, Mapping)) or not isinstance(params, Sequence) or not params:
            raise ValueError("LBFGS: params must be a non-empty list of pytensor shared variables (one group: L-BFGS has no param groups)")
        params = list(params)
        seen: set[int] = set()
        for i, p in enumerate(params):
            if not isinstance(p, SharedVariable) or not hasattr(p, "dtype"):
                raise ValueError(f"LBFGS: params[{i}] is a {type(p).__name__}, not a pytensor shared tensor")
            if not str(p.dtype).startswith("float"):
                raise ValueError(f"LBFGS: params[{i}] ({p.name or 'unnamed'}) has dtype {p.dtype}; L-BFGS optimises float parameters")
            if id(p) in seen:
                raise ValueError(f"LBFGS: params[{i}] ({p.name or 'unnamed'}) is listed twice")
            seen.add(id(p))
        dtypes = {str(p.dtype) for p in params}
        if len(dtypes) != 1:
            raise ValueError(f"LBFGS: all params must share one dtype (they form one flat vector), got {sorted(dtypes)}")
        self.max_iter = _check_int("max_iter", max_iter, 1)
        self.max_eval = _check_int("max_eval", self.max_iter * 5 // 4 if max_eval is None else max_eval, 1)
        self.history_size = _check_int("history_size", history_size, 1)
        if line_search not in (None, "strong_wolfe"):
            raise ValueError(f"LBFGS: line_search must be 'strong_wolfe' or None, got {line_search!r}")
        self.line_search = line_search
        values = {
            "learning_rate": _check_float("learning_rate", learning_rate),
            "tolerance_grad": _check_float("tolerance_grad", tolerance_grad),
            "tolerance_change": _check_float("tolerance_change", tolerance_change),
        }
        self.params: list[SharedVariable] = params
        self.dtype = dtypes.pop()
        self.shapes = [tuple(p.get_value(borrow=True).shape) for p in params]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        n, m, dt = sum(self.sizes), self.history_size, self.dtype
        self.size = n
        self._hyper = {k: pytensor.shared(np.float64(v), name=f"LBFGS.{k}") for k, v in values.items()}
        self.iterations: SharedVariable = pytensor.shared(np.int64(0), name="LBFGS.iterations")
        # torch's state (``optimizer.state[params[0]]``), flat over all parameters.
        self._state: dict[str, SharedVariable] = {
            "func_evals": pytensor.shared(np.int64(0), name="LBFGS.func_evals"),
            "n_iter": pytensor.shared(np.int64(0), name="LBFGS.n_iter"),
            "d": pytensor.shared(np.zeros(n, dt), name="LBFGS.d"),
            "t": pytensor.shared(np.asarray(0, dt), name="LBFGS.t"),
            "old_dirs": pytensor.shared(np.zeros((m, n), dt), name="LBFGS.old_dirs"),
            "old_stps": pytensor.shared(np.zeros((m, n), dt), name="LBFGS.old_stps"),
            "ro": pytensor.shared(np.zeros(m, dt), name="LBFGS.ro"),
            "num_old": pytensor.shared(np.int64(0), name="LBFGS.num_old"),
            "H_diag": pytensor.shared(np.asarray(1, dt), name="LBFGS.H_diag"),
            "prev_flat_grad": pytensor.shared(np.zeros(n, dt), name="LBFGS.prev_flat_grad"),
            "prev_loss": pytensor.shared(np.asarray(0, dt), name="LBFGS.prev_loss"),
        }

    # ------------------------------------------------------------------ hyperparameters
    def _current_hyperparameters(self) -> dict[str, Any]:
        return {
            **{k: float(v.get_value()) for k, v in self._hyper.items()},
            "max_iter": self.max_iter, "max_eval": self.max_eval, "history_size": self.history_size,
            "line_search": self.line_search,
        }

    def get_hyperparameter(self, name: str) -> Any:
        if name not in self.hyperparameters:
            raise ValueError(f"LBFGS: unknown hyperparameter {name!r}; it has {', '.join(self.hyperparameters)}")
        return self.hyperparameters[name]

    def set_hyperparameter(self, name: str, value: float) -> None:
        """Change ``learning_rate``, ``tolerance_grad`` or ``tolerance_change`` without recompiling."""
        if name not in self._hyper:
            raise ValueError(f"LBFGS: {name!r} cannot be changed after construction (settable: {', '.join(self._hyper)})")
        self._hyper[name].set_value(np.float64(_check_float(name, value)))

    @property
    def n_iter(self) -> int:
        return int(self._state["n_iter"].get_value())

    @property
    def func_evals(self) -> int:
        return int(self._state["func_evals"].get_value())

    # ------------------------------------------------------------------ graph
    def _flatten(self, parts: Sequence[Any]) -> TensorVariable:
        return pt.concatenate([pt.cast(pt.as_tensor_variable(v), self.dtype).ravel() for v in parts])

    def _unflatten(self, flat: Any) -> list[TensorVariable]:
        out, offset = [], 0
        for shape, size in zip(self.shapes, self.sizes):
            out.append(flat[offset: offset + size].reshape(shape))
            offset += size
        return out

    def updates(self, loss: Any = None, *, grads: Sequence[Any] | None = None, allow_unused: bool = False) -> Updates:
        """One whole ``torch.optim.LBFGS.step`` as an updates dict for ``pytensor.function``."""
        return self.build(loss, grads=grads, allow_unused=allow_unused)[0]

    def build(
        self, loss: Any = None, *, grads: Sequence[Any] | None = None, allow_unused: bool = False
    ) -> tuple[Updates, None]:
        """``(updates, None)``: every call applies its step (the wrappers' protocol)."""
        if loss is None:
            raise ValueError("LBFGS: updates() needs the loss: L-BFGS re-evaluates it during the step")
        loss = pt.as_tensor_variable(loss)
        if loss.ndim != 0:
            raise ValueError(f"LBFGS: the loss must be a scalar, got a {loss.ndim}-d tensor")
        if grads is None:
            grads = pytensor.grad(loss, self.params, disconnected_inputs="ignore" if allow_unused else "raise")
        elif len(grads) != len(self.params):
            raise ValueError(f"LBFGS: got {len(grads)} gradients for {len(self.params)} params")
        dt = self.dtype
        f0 = pt.cast(loss, dt)
        g0 = self._flatten(grads)

        def evaluate(x: Any) -> tuple[TensorVariable, TensorVariable]:
            """The loss and flat gradient with the parameters replaced by ``x``."""
            f, g = clone_replace([f0, g0], replace=dict(zip(self.params, self._unflatten(x))))
            return f, g

        x0 = self._flatten(self.params)
        out = self._step_graph(x0, f0, g0, evaluate)
        updates = Updates()
        for param, value in zip(self.params, self._unflatten(out["x"])):
            # the parameter's own (symbolic) shape: a static (1, 1) would not match a (?, ?) variable's type
            updates[param] = pt.cast(value.reshape(param.shape, ndim=param.ndim), param.dtype)
        for key, var in self._state.items():
            updates[var] = pt.cast(out[key], var.dtype)
        updates[self.iterations] = self.iterations + 1
        updates.applied = None
        return updates, None

    def _step_graph(self, x0: Any, f0: Any, g0: Any, evaluate: Any) -> dict[str, Any]:
        dt, m = self.dtype, self.history_size
        lr = pt.cast(self._hyper["learning_rate"], dt)
        tol_grad = pt.cast(self._hyper["tolerance_grad"], dt)
        tol_change = pt.cast(self._hyper["tolerance_change"], dt)
        s = self._state
        max_iter, max_eval = self.max_iter, self.max_eval
        one = pt.constant(1, dtype=dt)

        def iteration(x, f, g, d, t, old_dirs, old_stps, ro, num_old, H_diag, prev_g, prev_loss, n_iter_total,
                      n_iter, current_evals, func_evals, opt_cond, active):
            n_iter_new = n_iter + 1
            n_total = n_iter_total + 1
            first = pt.eq(n_total, 1)
            # ---- memory update (skipped on the first iteration ever)
            y = g - prev_g
            step = d * t
            ys = pt.dot(y, step)
            store = pt.and_(pt.invert(first), ys > _CURVATURE_EPS)
            full = pt.ge(num_old, m)
            row = pt.minimum(num_old, m - 1)

            def pushed(buffer, value):
                shifted = pt.concatenate([buffer[1:], value[None]], axis=0)
                return pt.switch(full, shifted, pt.set_subtensor(buffer[row], value))

            dirs = pt.switch(store, pushed(old_dirs, y), old_dirs)
            stps = pt.switch(store, pushed(old_stps, step), old_stps)
            ros = pt.switch(store, pushed(ro[:, None], pt.reshape(one / ys, (1,)))[:, 0], ro)
            count = pt.switch(store, pt.minimum(num_old + 1, m), num_old)
            h_diag = pt.switch(store, ys / pt.dot(y, y), H_diag)
            # A fresh start drops the history, as torch's first iteration does.
            dirs = pt.switch(first, pt.zeros_like(dirs), dirs)
            stps = pt.switch(first, pt.zeros_like(stps), stps)
            ros = pt.switch(first, pt.zeros_like(ros), ros)
            count = pt.switch(first, 0, count)
            h_diag = pt.switch(first, one, h_diag)
            # ---- two-loop recursion: rows past `count` are zero, so they leave q and r unchanged exactly
            def backward(s_i, y_i, ro_i, q):
                al_i = pt.dot(s_i, q) * ro_i
                return q + (-al_i) * y_i, al_i

            qs, als_rev = pytensor.scan(backward, sequences=[stps[::-1], dirs[::-1], ros[::-1]],
                                        outputs_info=[-g, None], return_updates=False)

            def forward(s_i, y_i, ro_i, al_i, r):
                be_i = pt.dot(y_i, r) * ro_i
                return r + s_i * (al_i - be_i)

            rs = pytensor.scan(forward, sequences=[stps, dirs, ros, als_rev[::-1]],
                               outputs_info=[qs[-1] * h_diag], return_updates=False)
            r = rs[-1]
            d_new = pt.switch(first, -g, r)
            prev_g_new = g
            prev_loss_new = f
            l1 = pt.sum(pt.abs(g))
            t_new = pt.switch(first, pt.minimum(one, one / l1) * lr, lr)
            gtd = pt.dot(g, d_new)
            no_descent = gtd > -tol_change
            if self.line_search == "strong_wolfe":
                f_ls, g_ls, t_ls, ls_evals = self._strong_wolfe(evaluate, x, t_new, d_new, f, g, gtd,
                                                                  max_eval - current_evals)
                x_ls = x + t_ls * d_new
                opt_ls = pt.le(pt.max(pt.abs(g_ls)), tol_grad)
            else:
                x_ls = x + t_new * d_new
                t_ls = t_new
                if max_iter > 1:
                    f_eval, g_eval = evaluate(x_ls)
                    last = pt.eq(n_iter_new, max_iter)
                    f_ls = pt.switch(last, f, f_eval)
                    g_ls = pt.switch(last, g, g_eval)
                    opt_ls = pt.switch(last, opt_cond, pt.le(pt.max(pt.abs(g_eval)), tol_grad))
                    ls_evals = pt.switch(last, 0, 1)
                else:
                    f_ls, g_ls, opt_ls, ls_evals = f, g, opt_cond, pt.constant(0, dtype="int64")
            # `no_descent` breaks before the line search: x, f, g and the counters stay.
            x_out = pt.switch(no_descent, x, x_ls)
            f_out = pt.switch(no_descent, f, f_ls)
            g_out = pt.switch(no_descent, g, g_ls)
            t_out = pt.switch(no_descent, t_new, t_ls)
            opt_out = pt.switch(no_descent, opt_cond, opt_ls)
            evals = pt.switch(no_descent, 0, ls_evals).astype("int64")
            current = current_evals + evals
            stop = (no_descent | pt.eq(n_iter_new, max_iter) | pt.ge(current, max_eval) | opt_out
                    | pt.le(pt.max(pt.abs(d_new * t_out)), tol_change) | (pt.abs(f_out - prev_loss_new) < tol_change))
            new = [x_out, f_out, g_out, d_new, t_out, dirs, stps, ros, count, h_diag, prev_g_new, prev_loss_new, n_total,
                   n_iter_new, current, func_evals + evals, opt_out]
            old = [x, f, g, d, t, old_dirs, old_stps, ro, num_old, H_diag, prev_g, prev_loss, n_iter_total,
                   n_iter, current_evals, func_evals, opt_cond]
            outs = [pt.switch(active, a, b).astype(b.dtype) for a, b in zip(new, old)]
            still = pt.and_(active, pt.invert(stop))
            return [*outs, still], until(pt.invert(still))

        opt0 = pt.le(pt.max(pt.abs(g0)), tol_grad)
        init = [x0, f0, g0, s["d"], s["t"], s["old_dirs"], s["old_stps"], s["ro"], s["num_old"], s["H_diag"],
                s["prev_flat_grad"], s["prev_loss"], s["n_iter"], pt.constant(0, dtype="int64"),
                pt.constant(1, dtype="int64"), s["func_evals"] + 1, opt0, pt.invert(opt0)]
        init = [pt.as_tensor_variable(v) for v in init]
        results = pytensor.scan(iteration, outputs_info=init, n_steps=max_iter, return_updates=False)
        last = [r[-1] for r in results]
        names = ["x", "f", "g", "d", "t", "old_dirs", "old_stps", "ro", "num_old", "H_diag", "prev_flat_grad",
                 "prev_loss", "n_iter", "_local", "_current", "func_evals", "_opt", "_active"]
        return dict(zip(names, last))

    def _strong_wolfe(self, evaluate: Any, x: Any, t0: Any, d: Any, f: Any, g: Any, gtd: Any, max_ls: Any) -> tuple[Any, Any, Any, Any]:
        """torch's ``_strong_wolfe`` as a while-scan doing one evaluation per step.

        The carried bracket ``(b0, b1)`` holds (step, loss, gradient, slope) of two points:
        while bracketing, ``b0`` is the previous trial; in the zoom phase the bracket
        itself, whose low end is the point of the smaller loss (``b0`` on ties), as in
        torch. Returns ``(f, g, t, evaluations)`` of the accepted point.
        """
        dt = self.dtype
        d_norm = pt.max(pt.abs(d))
        c1, c2 = pt.constant(_C1, dtype=dt), pt.constant(_C2, dtype=dt)
        zero = pt.constant(0, dtype=dt)

        def pick(cond: Any, a: Sequence[Any], b: Sequence[Any]) -> list[Any]:
            return [pt.switch(cond, u, v) for u, v in zip(a, b)]

        def search(t, phase, b0t, b0f, b0g, b0gtd, b1t, b1f, b1g, b1gtd, insuf, li):
            fn, gn = evaluate(x + t * d)
            gtdn = pt.dot(gn, d)
            new = [t, fn, gn, gtdn]
            b0, b1 = [b0t, b0f, b0g, b0gtd], [b1t, b1f, b1g, b1gtd]
            armijo_fail = fn > f + c1 * t * gtd
            curvature_ok = pt.abs(gtdn) <= -c2 * gtd
            # ---- bracketing phase
            exhausted = pt.ge(li, max_ls)
            cond1 = armijo_fail | (pt.gt(li, 1) & (fn >= b0f))
            cond3 = gtdn >= 0
            to_zoom = pt.invert(exhausted) & (cond1 | (pt.invert(curvature_ok) & cond3))
            wolfe = pt.invert(exhausted) & pt.invert(cond1) & curvature_ok
            cont = pt.invert(exhausted | to_zoom | wolfe)
            start = [zero, f, g, gtd]
            br0 = pick(exhausted, start, pick(wolfe, new, pick(to_zoom, b0, new)))
            br1 = pick(to_zoom | exhausted | wolfe, new, b1)
            br_phase = pt.switch(to_zoom, _ZOOM, pt.switch(cont, _BRACKET, _DONE))
            t_extra = _cubic_interpolate(b0t, b0f, b0gtd, t, fn, gtdn, bounds=(t + 0.01 * (t - b0t), t * 10))
            # ---- zoom phase: the new point replaces the high end, or becomes the low end
            low0 = b0f <= b1f
            f_low = pt.switch(low0, b0f, b1f)
            worse = armijo_fail | (fn >= f_low)
            flip = gtdn * pt.switch(low0, b1t - b0t, b0t - b1t) >= 0
            zm0 = pick(worse, pick(low0, b0, new), pick(low0, new, pick(flip, b1, b0)))
            zm1 = pick(worse, pick(low0, new, b1), pick(low0, pick(flip, b0, b1), new))
            zm_phase = pt.switch(pt.invert(worse) & curvature_ok, _DONE, _ZOOM)
            # ---- merge, then the zoom loop's checks and its next trial
            zooming = pt.eq(phase, _ZOOM)
            n0, n1 = pick(zooming, zm0, br0), pick(zooming, zm1, br1)
            phase_new = pt.switch(zooming, zm_phase, br_phase)
            small = pt.abs(n1[0] - n0[0]) * d_norm < _LS_TOLERANCE_CHANGE
            in_zoom = pt.eq(phase_new, _ZOOM)
            finish = in_zoom & (pt.ge(li, max_ls) | small)
            phase_new = pt.switch(finish, _DONE, phase_new)
            t_zoom = _cubic_interpolate(n0[0], n0[1], n0[3], n1[0], n1[1], n1[3])
            hi, lo = pt.maximum(n0[0], n1[0]), pt.minimum(n0[0], n1[0])
            eps = 0.1 * (hi - lo)
            insuf_in = zooming & insuf  # torch starts the zoom with insuf_progress False
            near = pt.minimum(hi - t_zoom, t_zoom - lo) < eps
            move = near & (insuf_in | (t_zoom >= hi) | (t_zoom <= lo))
            t_moved = pt.switch(pt.abs(t_zoom - hi) < pt.abs(t_zoom - lo), hi - eps, lo + eps)
            t_zoom = pt.switch(move, t_moved, t_zoom)
            insuf_new = near & pt.invert(move)
            t_next = pt.switch(in_zoom, t_zoom, t_extra)
            carried = [t_next.astype(dt), phase_new.astype("int64"), *[v.astype(dt) if v.ndim == 0 else v for v in n0],
                       *[v.astype(dt) if v.ndim == 0 else v for v in n1], insuf_new, li + 1]
            return carried, until(pt.eq(phase_new, _DONE))

        init = [t0, pt.constant(_BRACKET, dtype="int64"), zero, f, g, gtd, zero, f, g, gtd,
                pt.constant(np.array(False)), pt.constant(0, dtype="int64")]
        init = [pt.as_tensor_variable(v) for v in init]
        init = [v.astype(dt) if v.ndim == 0 and v.dtype.startswith("float") else v for v in init]
        out = pytensor.scan(search, outputs_info=init, n_steps=self.max_eval, return_updates=False)
        _, _, b0t, b0f, b0g, _, b1t, b1f, b1g, _, _, li = [o[-1] for o in out]
        low0 = b0f <= b1f
        return pt.switch(low0, b0f, b1f), pt.switch(low0, b0g, b1g), pt.switch(low0, b0t, b1t), li

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """A copy of everything needed to resume: torch's state, the hyperparameters, the call count."""
        return {
            "optimizer": "LBFGS",
            "iterations": np.array(self.iterations.get_value(), dtype=np.int64),
            "hyperparameters": {k: np.array(v.get_value(), dtype=np.float64) for k, v in self._hyper.items()},
            "state": {k: v.get_value(borrow=False) for k, v in self._state.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; validates all of it before changing anything."""
        if not isinstance(state, Mapping):
            raise TypeError(f"LBFGS: state must be a dict from state_dict(), got {type(state).__name__}")
        missing = {"optimizer", "iterations", "hyperparameters", "state"} - set(state)
        if missing:
            raise ValueError(f"LBFGS: state is missing {sorted(missing)}")
        if str(state["optimizer"]) != "LBFGS":
            raise ValueError(f"LBFGS: state was saved from {str(state['optimizer'])!r}")
        pending: list[tuple[SharedVariable, np.ndarray]] = []
        if set(state["hyperparameters"]) != set(self._hyper):
            raise ValueError(f"LBFGS: state hyperparameters {sorted(state['hyperparameters'])} do not match {sorted(self._hyper)}")
        for name, var in self._hyper.items():
            pending.append((var, np.float64(_check_float(f"state hyperparameter {name}", np.asarray(state["hyperparameters"][name]).item()))))
        if set(state["state"]) != set(self._state):
            raise ValueError(f"LBFGS: state entries {sorted(state['state'])} do not match {sorted(self._state)}")
        for name, var in self._state.items():
            value, want = np.asarray(state["state"][name]), var.get_value(borrow=True)
            if value.shape != want.shape or value.dtype != want.dtype:
                raise ValueError(f"LBFGS: state {name!r} is {value.dtype}{list(value.shape)}, expected "
                                 f"{want.dtype}{list(want.shape)} (history_size and the parameters must match)")
            pending.append((var, value))
        iterations = np.asarray(state["iterations"])
        if iterations.shape != () or iterations.dtype.kind not in "iu" or iterations < 0:
            raise ValueError(f"LBFGS: state iterations must be a non-negative integer, got {iterations!r}")
        pending.append((self.iterations, iterations.astype(np.int64)))
        for var, value in pending:
            var.set_value(np.array(value, copy=True))

    def _flat_state(self) -> dict[str, np.ndarray]:
        state = self.state_dict()
        flat = {"optimizer": np.array(state["optimizer"]), "iterations": state["iterations"]}
        flat.update({f"hyperparameter/{k}": v for k, v in state["hyperparameters"].items()})
        flat.update({f"state/{k}": v for k, v in state["state"].items()})
        return flat

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` to an ``.npz`` file atomically."""
        StateFile("LBFGS").write(path, self._flat_state())

    def load(self, path: str | os.PathLike[str]) -> None:
        """Restore state written by :meth:`save`; the file is checked before anything is allocated."""
        flat = StateFile("LBFGS").read(path, max(self.history_size * self.size, 1), strings=("optimizer",))
        try:
            state = {
                "optimizer": str(flat["optimizer"]),
                "iterations": flat["iterations"],
                "hyperparameters": {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith("hyperparameter/")},
                "state": {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith("state/")},
            }
        except KeyError as exc:
            raise ValueError(f"LBFGS: {str(path)!r} is not an LBFGS state file (missing {exc})") from None
        self.load_state_dict(state)

    def __repr__(self) -> str:
        h = self.hyperparameters
        return "LBFGS(" + ", ".join(f"{k}={v!r}" for k, v in h.items()) + f", params={len(self.params)})"
