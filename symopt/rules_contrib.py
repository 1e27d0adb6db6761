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

from .optimizer import HYPERPARAMETER_BOUNDS, Optimizer, _check_number, _describe
from .registry import register
from .schedules import Schedule

__all__ = ["Adafactor", "Muon", "Prodigy", "ScheduleFreeAdamW", "ScheduleFreeSGD"]

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
    per_member_values = False  # row_var/col_var drop an axis: an (S, 1, 1) value would not broadcast

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


# --------------------------------------------------------------------------- Muon
#: torch.optim.Muon's quintic Newton-Schulz coefficients (Keller Jordan's) and step count.
MUON_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
MUON_NS_STEPS = 5
_ADJUST_LR = ("original", "match_rms_adamw")


@register("muon")
class Muon(Optimizer):
    r"""Muon, momentum orthogonalised by Newton-Schulz (Jordan et al., 2024) as ``torch.optim.Muon``.

    For each matrix :math:`p \in \mathbb{R}^{A \times B}`:

    .. math::
        B_t &= \mu B_{t-1} + (1 - \mu) g_t, \qquad
        \tilde B_t = (1 - \mu) g_t + \mu B_t \ \text{(nesterov; else } \tilde B_t = B_t) \\
        X_0 &= \tilde B_t / \max(\lVert \tilde B_t \rVert_F, \epsilon)
            \quad\text{(transposed first when } A > B) \\
        X_{k+1} &= a X_k + (b\, G_k + c\, G_k^2) X_k, \quad G_k = X_k X_k^\top,
            \qquad k = 0 \ldots K-1 \\
        p_t &= (1 - \eta\lambda)\, p_{t-1} - \eta\, s(A, B)\, X_K

    with :math:`(a, b, c)` = ``ns_coefficients``, :math:`K` = ``ns_steps`` and the
    learning-rate adjustment :math:`s = \sqrt{\max(1, A/B)}` (``adjust_lr_fn=None`` or
    ``"original"``, Keller Jordan's) or :math:`0.2 \sqrt{\max(A, B)}`
    (``"match_rms_adamw"``, Liu et al., "Muon is Scalable for LLM Training", 2025).
    Weight decay is decoupled. torch runs the iteration in bfloat16; symopt in the
    parameter's dtype (``benchmarks/validate_torch.py`` compares with torch's
    iteration in float64 and reports the bfloat16 difference).

    Matrices only, as torch: any other parameter is refused; optimise biases, gains and
    embeddings with AdamW through ``symopt.combine``. On a seed stack
    (``tag.seed_axis``) each seed's matrix is orthogonalised on its own.

    Defaults (torch's): ``learning_rate=1e-3``, ``momentum=0.95``, ``nesterov=True``,
    ``epsilon=1e-7``, ``weight_decay=0.1``; ``ns_coefficients=(3.4445, -4.775, 2.0315)``,
    ``ns_steps=5`` and ``adjust_lr_fn=None`` are fixed at construction (they shape the graph).
    """

    reference = "torch.optim.Muon"
    hyperparameters = {
        "learning_rate": 1e-3,
        "momentum": 0.95,
        "epsilon": 1e-7,
        "weight_decay": 0.1,
        "nesterov": True,
    }
    slots = {"momentum_buffer": 0.0}
    decoupled_weight_decay = True
    accepted_ndims = (2,)

    @_with_base_keywords
    def __init__(
        self,
        params: Any,
        *,
        ns_coefficients: Sequence[float] = MUON_NS_COEFFICIENTS,
        ns_steps: int = MUON_NS_STEPS,
        adjust_lr_fn: str | None = None,
        **kwargs: Any,
    ) -> None:
        owner = type(self).__name__
        if isinstance(ns_steps, bool) or not isinstance(ns_steps, (int, np.integer)) or not 1 <= ns_steps < 100:
            raise ValueError(f"{owner}: ns_steps must be an integer in [1, 100), got {ns_steps!r}")
        try:
            coefficients = tuple(float(c) for c in ns_coefficients)
        except (TypeError, ValueError):
            coefficients = ()
        if len(coefficients) != 3 or not all(math.isfinite(c) for c in coefficients):
            raise ValueError(f"{owner}: ns_coefficients must be three finite numbers (a, b, c), got {ns_coefficients!r}")
        if adjust_lr_fn is not None and adjust_lr_fn not in _ADJUST_LR:
            raise ValueError(f"{owner}: adjust_lr_fn must be None, 'original' or 'match_rms_adamw', got {adjust_lr_fn!r}")
        self.ns_coefficients, self.ns_steps, self.adjust_lr_fn = coefficients, int(ns_steps), adjust_lr_fn
        super().__init__(params, **kwargs)
        for index, param in enumerate(self.params):
            if param.ndim - _lead(param) not in self.accepted_ndims:
                shape = param.get_value(borrow=True).shape
                stacked = " (after its seed axis)" if _lead(param) else ""
                raise ValueError(
                    f"{owner}: {_describe(param, index)} has shape {shape}{stacked}; Muon orthogonalises "
                    f"2-D weight matrices only. Optimise the other parameters (biases, gains, embeddings) "
                    f"with AdamW and join the two rules with symopt.combine"
                )

    def lr_ratio(self, shape: tuple[int, ...]) -> float:
        """torch's ``_adjust_lr`` factor for a matrix of ``shape`` (rows, columns)."""
        rows, cols = shape
        if self.adjust_lr_fn == "match_rms_adamw":
            return 0.2 * math.sqrt(max(rows, cols))
        return math.sqrt(max(1.0, rows / cols))

    def orthogonalise(self, update: Any, tall: bool) -> Any:
        """Newton-Schulz iteration on the last two axes (a batch of matrices on a seed stack)."""
        # constants of the parameter's dtype: a Python float exact in float32 (2.0) would
        # otherwise become a float32 constant in a float64 graph
        a, b, c = (np.asarray(v, dtype=update.dtype) for v in self.ns_coefficients)
        x = pt.swapaxes(update, -1, -2) if tall else update
        norm = pt.sqrt(pt.sum(x * x, axis=(-2, -1), keepdims=True))
        x = x / pt.maximum(norm, self.epsilon)
        for _ in range(self.ns_steps):
            gram = pt.matmul(x, pt.swapaxes(x, -1, -2))
            x = a * x + pt.matmul(b * gram + c * pt.matmul(gram, gram), x)
        return pt.swapaxes(x, -1, -2) if tall else x

    def update_param(self, param, grad, state):
        var = self.current_param
        rows, cols = var.get_value(borrow=True).shape[_lead(var):]
        mu = self.momentum
        buffer = mu * state["momentum_buffer"] + (1 - mu) * grad
        update = (1 - mu) * grad + mu * buffer if self.nesterov else buffer
        with self.float64_scalars() as cast:
            step = cast(self.learning_rate * self.lr_ratio((rows, cols)))
        return param - step * self.orthogonalise(update, rows > cols), {"momentum_buffer": buffer}


# --------------------------------------------------------------------------- Prodigy
@register("prodigy")
class Prodigy(Optimizer):
    r"""Prodigy, D-Adaptation's faster learning-rate-free Adam (Mishchenko & Defazio, ICML 2024),
    as ``optax.contrib.prodigy``.

    With :math:`d_{t-1}` the distance estimate (:math:`d_0` = ``estim_lr0``),
    :math:`\eta_t` the learning rate (a schedule with base 1) and sums over all the
    parameters of the param group:

    .. math::
        \hat\eta_t &= d_{t-1}\, \eta_t\, \sqrt{1 - \beta_2^t} / (1 - \beta_1^t) \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, d_{t-1} g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, d_{t-1}^2 g_t^2 \\
        s_t &= \beta_3 s_{t-1} + \frac{\hat\eta_t\, d_{t-1}}{d_0} g_t
            \quad\text{(safeguard\_warmup: } \tfrac{d_{t-1}^2}{d_0} g_t) \\
        r_t &= \beta_3 r_{t-1} + \frac{d_{t-1}}{d_0} \hat\eta_t \sum \langle g_t, p_0 - p_{t-1} \rangle,
        \qquad d_t = \max\Big(d_{t-1},\ c\, \frac{r_t}{\sum \lVert s_t \rVert_1}\Big) \\
        p_t &= p_{t-1} - \lambda \hat\eta_t\, p_{t-1} - \hat\eta_t \frac{m_t}{\sqrt{v_t} + d_t \epsilon}

    :math:`c` is ``estim_lr_coef``, :math:`p_0` the parameters at the first step.
    Scalar state: ``estim_lr`` (:math:`d_t`, 0 until the first step) and
    ``numerator_weighted`` (:math:`r_t`), one pair per param group; slots ``exp_avg``,
    ``exp_avg_sq``, ``grad_sum`` (:math:`s`) and ``params0``. The estimate couples every
    parameter, so seed stacks are refused (``stackable = False``; one :math:`d` per member
    would need per-member sums and step counts: not done).

    Defaults (optax's): ``learning_rate=1.0``, ``beta1=0.9``, ``beta2=0.999``,
    ``beta3=None`` (:math:`\sqrt{\beta_2}` of the construction-time ``beta2``),
    ``epsilon=1e-8``, ``estim_lr0=1e-6``, ``estim_lr_coef=1.0``, ``weight_decay=0.0``,
    ``safeguard_warmup=False``.
    """

    reference = "optax.contrib.prodigy"
    hyperparameters = {
        "learning_rate": 1.0,
        "beta1": 0.9,
        "beta2": 0.999,
        "beta3": math.sqrt(0.999),
        "epsilon": 1e-8,
        "estim_lr0": 1e-6,
        "estim_lr_coef": 1.0,
        "weight_decay": 0.0,
        "safeguard_warmup": False,
    }
    slots = {"exp_avg": 0.0, "exp_avg_sq": 0.0, "grad_sum": 0.0, "params0": 0.0}
    scalar_slots = {"estim_lr": 0.0, "numerator_weighted": 0.0}
    weight_decay_in_rule = True
    stackable = False
    unstackable_reason = "its distance estimate d sums over all parameters (one d for the whole model)"

    @_with_base_keywords
    def __init__(self, params: Any, *, beta3: float | None = None, **kwargs: Any) -> None:
        owner = type(self).__name__

        def root(beta2: Any, where: str) -> float:
            if isinstance(beta2, Schedule):
                raise ValueError(f"{owner}: beta2 follows a schedule{where}; give beta3 explicitly")
            return math.sqrt(_check_number(owner, "beta2", beta2))

        if beta3 is None:
            beta3 = root(kwargs.get("beta2", 0.999), "")
            if isinstance(params, Sequence) and params and all(isinstance(g, dict) for g in params):
                params = [
                    {**g, "beta3": root(g["beta2"], f" in param group {i}")} if "beta2" in g and "beta3" not in g else g
                    for i, g in enumerate(params)
                ]
        super().__init__(params, beta3=beta3, **kwargs)  # refuses seed stacks: stackable = False

    def _coefficients(self) -> tuple[Any, Any, Any]:
        """float64: d_{t-1}, the step size d * lr * bias correction, and the grad_sum coefficient."""
        first = pt.eq(self.iterations, 0)
        d = pt.switch(first, self.estim_lr0, self.current_group.scalars["estim_lr"])
        t = self.t
        dlr = d * self.learning_rate * pt.sqrt(1 - self.beta2**t) / (1 - self.beta1**t)
        return d, dlr, (d if self.safeguard_warmup else dlr) / self.estim_lr0

    @staticmethod
    def _grad_sum(grad: Any, grad_sum: Any, d: Any, coef: Any, beta3: Any) -> Any:
        dtype = grad.dtype
        return pt.cast(beta3, dtype) * grad_sum + pt.cast(coef, dtype) * (pt.cast(d, dtype) * grad)

    def update_group_scalars(self, state, h, params, grads, slots):
        with self._legacy(h):  # self.<hyperparameter> in float64, as in update_param
            return self._group_scalars(state, params, grads, slots)

    def _group_scalars(self, state, params, grads, slots):
        d, _, coef = self._coefficients()
        first = pt.eq(self.iterations, 0)
        numerator, denominator = [], []
        for param, grad, slot in zip(params, grads, slots):
            start = pt.switch(first, param, slot["params0"])
            numerator.append(pt.cast(pt.sum(grad * (start - param)), "float64"))
            grad_sum = self._grad_sum(grad, slot["grad_sum"], d, coef, self.beta3)
            denominator.append(pt.cast(pt.sum(pt.abs(grad_sum)), "float64"))
        _, dlr, _ = self._coefficients()
        weighted = self.beta3 * state["numerator_weighted"] + (d / self.estim_lr0) * dlr * pt.add(*numerator)
        estimate = self.estim_lr_coef * weighted / pt.add(*denominator)
        return {"estim_lr": pt.maximum(d, estimate), "numerator_weighted": weighted}

    def update_param(self, param, grad, state):
        with self.float64_scalars() as cast:
            d, dlr, coef = self._coefficients()
            beta3 = self.beta3
            step, decay = cast(dlr), cast(self.weight_decay * dlr)
            eps = cast(state["estim_lr"] * self.epsilon)  # the new estimate d_t
        beta1, beta2 = self.beta1, self.beta2
        scaled = pt.cast(d, param.dtype) * grad
        exp_avg = beta1 * state["exp_avg"] + (1 - beta1) * scaled
        exp_avg_sq = beta2 * state["exp_avg_sq"] + (1 - beta2) * scaled * scaled
        grad_sum = self._grad_sum(grad, state["grad_sum"], d, coef, beta3)
        start = pt.switch(pt.eq(self.iterations, 0), param, state["params0"])
        new = param - decay * param - step * exp_avg / (pt.sqrt(exp_avg_sq) + eps)
        return new, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "grad_sum": grad_sum, "params0": start}


# --------------------------------------------------------------------------- Schedule-Free
class _ScheduleFree(Optimizer):
    r"""Schedule-Free averaging (Defazio et al., "The Road Less Scheduled", NeurIPS 2024) as
    ``optax.contrib.schedule_free`` wraps a momentum-free base rule.

    The parameter holds :math:`y`, where gradients are taken; the state holds the base
    iterate :math:`z`; the evaluation point :math:`x` is recovered from both:

    .. math::
        z_t &= z_{t-1} - \eta_t\, u_t \quad\text{(the base rule's step)}, \qquad
        x_{t-1} = \big(y_{t-1} - (1 - \beta_1) z_{t-1}\big) / \beta_1 \\
        L_t &= \max(L_{t-1}, \eta'_t), \qquad W_t = W_{t-1} + L_t^{k}, \qquad
        c_t = L_t^{k} / W_t \ (0 \text{ while } W_t = 0) \\
        x_t &= (1 - c_t)\, x_{t-1} + c_t z_t, \qquad y_t = \beta_1 x_t + (1 - \beta_1) z_t

    :math:`k` is ``weight_lr_power``; :math:`z_0 = y_0` (the parameters at the first step).
    :math:`\eta'_t` is the learning rate one step later than the base rule's
    :math:`\eta_t`, as optax evaluates a schedule at its 1-based step count for the
    weights and at the 0-based count for the base rule; optax's ``warmup_steps=N`` is
    ``learning_rate=symopt.schedules.linear_warmup(peak=lr, warmup_steps=N)``. Scalar
    state: ``max_lr`` (:math:`L`) and ``weight_sum`` (:math:`W`) per param group.

    Evaluate at :math:`x`: ``with opt.eval_params(): ...`` swaps it into the parameters
    (as :meth:`symopt.EMA.average_parameters`), ``opt.eval_param_values()`` returns it
    (optax's ``schedule_free_eval_params``). ``beta1`` must be > 0.
    """

    slots = {"z": 0.0}
    scalar_slots = {"max_lr": 0.0, "weight_sum": 0.0}
    # Per-member values are not wired through yet: update_scalars reads the learning rate's
    # shared variable itself, and the evaluation point uses beta1 and the shared step count.
    per_member_values = False

    @_with_base_keywords
    def __init__(self, params: Any, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        for gi, group in enumerate(self.param_groups):
            beta1 = group.values["beta1"]
            if not isinstance(beta1, Schedule):
                self._check_beta1(float(beta1.get_value()), gi)

    def _check_beta1(self, value: float, group: int | None = None) -> None:
        if value <= 0:
            where = "" if group is None or len(self.param_groups) == 1 else f" (param group {group})"
            raise ValueError(
                f"{type(self).__name__}: hyperparameter 'beta1' must be > 0 for Schedule-Free{where} "
                f"(x is recovered as (y - (1 - beta1) z) / beta1), got {value}"
            )

    def set_hyperparameter(self, name: str, value: float, group: int | None = None) -> None:
        if name == "beta1" and isinstance(value, (int, float, np.integer, np.floating)):
            self._check_beta1(float(value), group)
        super().set_hyperparameter(name, value, group)

    def _weight_rate(self) -> Any:
        """float64: the learning rate at the 1-based step (optax's schedule(step_count))."""
        value = self.current_group.values["learning_rate"]
        return value.symbolic(self.iterations + 1) if isinstance(value, Schedule) else value

    def update_scalars(self, state):
        max_lr = pt.maximum(state["max_lr"], self._weight_rate())
        return {"max_lr": max_lr, "weight_sum": state["weight_sum"] + max_lr**self.weight_lr_power}

    def base_step(self, param: Any, grad: Any, state: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The base rule's update :math:`-\\eta_t u_t` of ``z`` and its own new slot values."""
        raise NotImplementedError

    def update_param(self, param, grad, state):
        with self.float64_scalars() as cast:
            total = state["weight_sum"]  # already advanced by update_scalars
            weight = state["max_lr"] ** self.weight_lr_power
            ck = cast(pt.switch(total > 0, weight / pt.switch(total > 0, total, 1), 0))
        beta1 = self.beta1
        z_prev = pt.switch(pt.eq(self.iterations, 0), param, state["z"])
        delta, new = self.base_step(param, grad, state)
        z = z_prev + delta
        x_prev = (param - (1 - beta1) * z_prev) / beta1
        x = (1 - ck) * x_prev + ck * z
        return beta1 * x + (1 - beta1) * z, {"z": z, **new}

    def eval_param_values(self) -> list[np.ndarray]:
        """The evaluation point :math:`x = (y - (1 - \\beta_1) z) / \\beta_1` of every parameter,
        in its dtype (the parameters themselves before the first step)."""
        if int(self.iterations.get_value()) == 0:
            return [p.get_value(borrow=False) for p in self.params]
        beta1_of = {}
        for group in self.param_groups:
            beta1 = group.current("beta1", self.iterations)
            beta1_of.update({id(p): beta1 for p in group.params})
        out = []
        for index, param in enumerate(self.params):
            y = param.get_value(borrow=False)
            z = self.state[index]["z"].get_value(borrow=True)
            beta1 = y.dtype.type(beta1_of[id(param)])
            out.append(((y - (1 - beta1) * z) / beta1).astype(y.dtype, copy=False))
        return out

    @contextlib.contextmanager
    def eval_params(self) -> Iterator[None]:
        """Inside the block the parameters hold the evaluation point :math:`x`; afterwards
        :math:`y` again. Evaluate only: a training step inside the block would start from x."""
        values = self.eval_param_values()
        saved = [p.get_value(borrow=False) for p in self.params]
        for param, value in zip(self.params, values):
            param.set_value(value)
        try:
            yield
        finally:
            for param, value in zip(self.params, saved):
                param.set_value(value)


@register("schedule_free_sgd")
class ScheduleFreeSGD(_ScheduleFree):
    r"""Schedule-Free SGD (Defazio et al., NeurIPS 2024) as ``optax.contrib.schedule_free_sgd``.

    The base step is plain gradient descent, :math:`u_t = g_t` (weight decay, when
    given, is L2 added to the gradient at :math:`y`, as optax's
    ``add_decayed_weights`` before ``sgd``). Then Schedule-Free averaging:
    """

    reference = "optax.contrib.schedule_free_sgd"
    hyperparameters = {"learning_rate": 1.0, "beta1": 0.9, "weight_lr_power": 2.0, "weight_decay": 0.0}

    def base_step(self, param, grad, state):
        return -self.learning_rate * grad, {}


@register("schedule_free_adamw")
class ScheduleFreeAdamW(_ScheduleFree):
    r"""Schedule-Free AdamW (Defazio et al., NeurIPS 2024) as ``optax.contrib.schedule_free_adamw``.

    The base step is AdamW without momentum:

    .. math::
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \qquad
        u_t = \frac{g_t}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon} + \lambda y_{t-1}

    (slot ``exp_avg_sq``). Then Schedule-Free averaging:
    """

    reference = "optax.contrib.schedule_free_adamw"
    hyperparameters = {
        "learning_rate": 0.0025,
        "beta1": 0.9,
        "beta2": 0.999,
        "epsilon": 1e-8,
        "weight_lr_power": 2.0,
        "weight_decay": 0.0,
    }
    slots = {"z": 0.0, "exp_avg_sq": 0.0}
    weight_decay_in_rule = True

    def base_step(self, param, grad, state):
        with self.float64_scalars() as cast:
            bias_correction = cast(1 - self.beta2**self.t)
        beta2 = self.beta2
        exp_avg_sq = beta2 * state["exp_avg_sq"] + (1 - beta2) * grad * grad
        direction = grad / (pt.sqrt(exp_avg_sq / bias_correction) + self.epsilon) + self.weight_decay * param
        return -self.learning_rate * direction, {"exp_avg_sq": exp_avg_sq}


# The subclasses' docstrings end with the shared equations.
for _cls in (ScheduleFreeSGD, ScheduleFreeAdamW):
    _shared = inspect.cleandoc(_ScheduleFree.__doc__.split("\n", 2)[2])
    _cls.__doc__ = inspect.cleandoc(_cls.__doc__) + "\n\n" + _shared + (
        "\n\nDefaults (optax's): " + ", ".join(f"``{k}={v!r}``" for k, v in _cls.hyperparameters.items()) + "."
    )
