r"""Rules beyond the classic thirteen: Adafactor, Muon, Prodigy and Schedule-Free.

Each matches one reference implementation (its class attribute ``reference``) to
float64 round-off: ``benchmarks/validate_torch.py`` checks Adafactor and Muon against
``torch.optim``, ``benchmarks/validate_optax.py`` Prodigy and Schedule-Free against
``optax.contrib``. Notation as in :mod:`symopt.rules`: :math:`\eta` is
``learning_rate``, :math:`t` the 1-based step, :math:`g_t` the gradient.

Unlike the element-wise rules these reduce over whole tensors (Adafactor's row and
column means and RMS clipping, Muon's orthogonalisation) or over all parameters
(Prodigy's distance estimate). On a stack of seeds (:mod:`symopt.seeds`, parameters
tagged ``tag.seed_axis``) the per-tensor reductions are taken per seed; Prodigy, whose
estimate couples every parameter, refuses stacks.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable

from .optimizer import HYPERPARAMETER_BOUNDS, Optimizer, _describe
from .registry import register
from .schedules import Schedule

__all__ = ["Adafactor"]

# The valid ranges of these rules' own hyperparameter names (the table holds every
# name's range once, so set_hyperparameter and load_state_dict check them too).
for _name, _bounds in {
    "beta2_decay": (-math.inf, 0.0, False, True),  # torch: beta2_decay <= 0
    "epsilon1": (0.0, math.inf, True, False),
    "epsilon2": (0.0, math.inf, True, False),
    "d": (1.0, math.inf, True, False),  # torch: clipping threshold d >= 1
    "beta3": (0.0, 1.0, True, False),
    "estim_lr0": (0.0, math.inf, False, False),
    "estim_lr_coef": (0.0, math.inf, False, False),
    "weight_lr_power": (0.0, math.inf, True, False),
}.items():
    HYPERPARAMETER_BOUNDS.setdefault(_name, _bounds)


def _lead(param: SharedVariable) -> int:
    """1 for a parameter with a seed axis (reductions then stay per seed), else 0."""
    return 1 if getattr(param.tag, "seed_axis", False) else 0


def _rms(x: Any, lead: int) -> Any:
    """Root mean square over every axis but the seed axis (kept, for broadcasting)."""
    axes = tuple(range(lead, x.ndim))
    if not axes:
        return pt.abs(x)
    return pt.sqrt(pt.mean(x * x, axis=axes, keepdims=True))


def _with_base_keywords(init: Any) -> Any:
    """Give an overriding ``__init__`` the base signature plus its own keyword-only settings,
    so :mod:`symopt.updates` and ``help()`` show the clip settings as for every rule."""
    base = inspect.signature(Optimizer.__init__).parameters
    own = inspect.signature(init).parameters
    kinds = inspect.Parameter
    extra = [p for name, p in own.items() if p.kind is kinds.KEYWORD_ONLY and name not in base]
    head = [p for p in base.values() if p.kind is not kinds.VAR_KEYWORD]
    tail = [p for p in base.values() if p.kind is kinds.VAR_KEYWORD]
    init.__signature__ = inspect.Signature(head + extra + tail)
    return init


# --------------------------------------------------------------------------- Adafactor
@register("adafactor")
class Adafactor(Optimizer):
    r"""Adafactor (Shazeer & Stern, ICML 2018) as ``torch.optim.Adafactor``.

    With :math:`\hat\beta_t = t^{c}` (:math:`c` = ``beta2_decay``),
    :math:`\rho_t = \min(\eta, 1/\sqrt t)` and RMS over the whole tensor:

    .. math::
        \alpha_t &= \max(\epsilon_2, \mathrm{RMS}(p_{t-1}))\, \rho_t, \qquad
        p' = (1 - \eta\lambda)\, p_{t-1} \\
        R_t &= (1 - \hat\beta_t) R_{t-1} + \hat\beta_t\, \mathrm{mean}_{\text{cols}}(g_t^2), \qquad
        C_t = (1 - \hat\beta_t) C_{t-1} + \hat\beta_t\, \mathrm{mean}_{\text{rows}}(g_t^2) \\
        \hat V_t &= R_t C_t^\top / \max(\mathrm{mean}(R_t), \epsilon_1)
            \quad\text{(tensors of 2+ dimensions, over the last two)} \\
        \hat V_t &= (1 - \hat\beta_t) \hat V_{t-1} + \hat\beta_t g_t^2
            \quad\text{(vectors and scalars)} \\
        U_t &= g_t / \sqrt{\max(\hat V_t, \epsilon_1^2)}, \qquad
        p_t = p' - \frac{\alpha_t}{\max(1, \mathrm{RMS}(U_t)/d)}\, U_t

    torch's form: no first moment, the relative step size :math:`\rho_t` capped by the
    learning rate, decoupled weight decay applied after :math:`\alpha_t` is measured.
    State: ``row_var`` (the parameter's shape without its last axis) and ``col_var``
    (without its second-to-last) for tensors of two or more dimensions, ``variance``
    otherwise; the unused slots are 0-d placeholders. (torch keeps the row and column
    factors with a singleton axis, ``(R, 1)`` and ``(1, C)``.)

    Defaults (torch's): ``learning_rate=1e-2``, ``beta2_decay=-0.8``,
    ``epsilon1=None`` (the parameter dtype's machine epsilon; stored as 0, which means
    the same), ``epsilon2=1e-3``, ``d=1.0``, ``weight_decay=0.0``.
    """

    reference = "torch.optim.Adafactor"
    hyperparameters = {
        "learning_rate": 1e-2,
        "beta2_decay": -0.8,
        "epsilon1": 0.0,
        "epsilon2": 1e-3,
        "d": 1.0,
        "weight_decay": 0.0,
    }
    slots = {"row_var": 0.0, "col_var": 0.0, "variance": 0.0}
    weight_decay_in_rule = True

    @_with_base_keywords
    def __init__(self, params: Any, *, epsilon1: float | None = None, **kwargs: Any) -> None:
        super().__init__(params, epsilon1=0.0 if epsilon1 is None else epsilon1, **kwargs)

    @staticmethod
    def _factored(param: SharedVariable) -> bool:
        return param.ndim - _lead(param) >= 2

    def slot_shape(self, param: SharedVariable, slot: str) -> tuple[int, ...]:
        shape = tuple(param.get_value(borrow=True).shape)
        factored = self._factored(param)
        if slot == "row_var" and factored:
            return shape[:-1]
        if slot == "col_var" and factored:
            return shape[:-2] + shape[-1:]
        if slot == "variance" and not factored:
            return shape
        return ()  # a slot this parameter does not use

    def update_param(self, param, grad, state):
        var = self.current_param
        lead, dtype = _lead(var), var.dtype
        # torch's one_minus_beta2_t, in the parameter's dtype: the reductions below fuse it
        # into their loops, where a float64 coefficient would be computed per element.
        beta = self.t**self.beta2_decay
        with self.float64_scalars() as cast:
            t = self.t
            rho = cast(pt.minimum(self.learning_rate, 1 / pt.sqrt(t)))
            shrink = cast(1 - self.learning_rate * self.weight_decay)
        eps1 = pt.switch(self.epsilon1 > 0, self.epsilon1, np.asarray(np.finfo(dtype).eps, dtype))
        alpha = pt.maximum(self.epsilon2, _rms(param, lead)) * rho
        square = grad * grad
        if self._factored(var):
            row = (1 - beta) * state["row_var"] + beta * pt.mean(square, axis=-1)
            col = (1 - beta) * state["col_var"] + beta * pt.mean(square, axis=-2)
            scale = pt.maximum(pt.mean(row, axis=-1), eps1)
            estimate = pt.expand_dims(row, -1) * pt.expand_dims(col, -2) / pt.expand_dims(scale, (-1, -2))
            new = {"row_var": row, "col_var": col}
        else:
            estimate = (1 - beta) * state["variance"] + beta * square
            new = {"variance": estimate}
        update = grad / pt.sqrt(pt.maximum(estimate, eps1 * eps1))
        denom = pt.maximum(1, _rms(update, lead) / self.d)  # an int: a float literal would be float32
        return param * shrink - (alpha / denom) * update, new
