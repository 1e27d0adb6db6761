r"""Update rules beyond the classic thirteen, each exact to a reference implementation.

================  =========================================  ===============================
name              class                                      numbers match
================  =========================================  ===============================
``rprop``         :class:`Rprop`                             ``torch.optim.Rprop``
``asgd``          :class:`ASGD`                              ``torch.optim.ASGD``
``adabelief``     :class:`AdaBelief`                         ``optax.adabelief``
``adopt``         :class:`ADOPT`                             ``optax.contrib.adopt``
``ademamix``      :class:`AdEMAMix`                          ``optax.contrib.ademamix``
``lamb``          :class:`LAMB`                              ``optax.lamb``
``lars``          :class:`LARS`                              ``optax.lars``
================  =========================================  ===============================

"Match" means float64 parameters within 1e-6 relative over 30 steps with the same
hyperparameters (``benchmarks/validate_torch.py``, ``benchmarks/validate_optax.py``).
The notation is :mod:`symopt.rules`': :math:`g_t` the gradient (with coupled weight
decay where the rule uses it), :math:`\eta` ``learning_rate``, :math:`t` the 1-based
step, operations element-wise unless a norm is written.

LAMB and LARS scale each parameter's step by a trust ratio of two norms over the
whole tensor. For a parameter stacked along a seed axis (:class:`symopt.seeds.SeedStack`,
``param.tag.seed_axis``) the norms are taken per seed, over every axis but the first,
so each seed's run is the run it would have alone.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytensor.tensor as pt
from pytensor.tensor.variable import TensorVariable

from .optimizer import HYPERPARAMETER_BOUNDS, Optimizer
from .transforms import resolve_mask as _mask
from .registry import register
from .schedules import Schedule

__all__ = ["Rprop", "ASGD", "AdaBelief", "ADOPT", "AdEMAMix", "LAMB", "LARS"]

# Valid ranges of the hyperparameter names these rules introduce (the table is shared by
# name, so a later rule reusing a name gets the same range).
HYPERPARAMETER_BOUNDS.update(
    {
        "eta_minus": (0.0, 1.0, False, False),
        "eta_plus": (1.0, math.inf, False, False),
        "step_size_min": (0.0, math.inf, True, False),
        "step_size_max": (0.0, math.inf, False, False),
        "lambd": (0.0, math.inf, True, False),
        "alpha": (0.0, math.inf, True, False),
        "t0": (0.0, math.inf, True, False),
        "beta3": (0.0, 1.0, True, False),
        "epsilon_root": (0.0, math.inf, True, False),
        "trust_coefficient": (0.0, math.inf, False, False),
    }
)


def _signature_of_base(*extra: inspect.Parameter) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorator giving an ``__init__(self, params, **kwargs)`` override the base class's
    signature (plus ``extra`` keyword-only parameters), so that introspection (``help``,
    :mod:`symopt.updates`) sees the real settings."""

    def decorate(init: Callable[..., None]) -> Callable[..., None]:
        parameters = list(inspect.signature(Optimizer.__init__).parameters.values())
        keyword = [p for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD]
        named = [p for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD]
        init.__signature__ = inspect.Signature(named + list(extra) + keyword)  # type: ignore[attr-defined]
        return init

    return decorate


class _Constrained(Optimizer):
    """A rule whose hyperparameters are constrained jointly (``step_size_min <= step_size_max``)
    or more tightly than the shared ranges; :meth:`check_values` says how.

    The check runs on construction, :meth:`set_hyperparameter` (before anything changes)
    and :meth:`load_state_dict`; values that follow a schedule are not checked.
    """

    def check_values(self, values: Mapping[str, float], where: str) -> None:
        """Raise ``ValueError`` naming the hyperparameter if ``values`` (one group's) are invalid."""

    def _numbers(self, group_index: int) -> dict[str, Any]:
        group = self.param_groups[group_index]
        return {k: v.get_value() for k, v in group.values.items() if not isinstance(v, Schedule)}

    def _check_each_member(self, values: Mapping[str, Any], where: str) -> None:
        """:meth:`check_values` for each stack member's values (per-member vectors, symopt.seeds)."""
        n = max((np.size(v) for v in values.values()), default=1)
        if any(np.size(v) not in (1, n) for v in values.values()):
            return  # vectors of different lengths: the base class names the wrong one
        for i in range(n):
            member = {k: float(np.ravel(v)[i if np.size(v) > 1 else 0]) for k, v in values.items()}
            self.check_values(member, where if n == 1 else f"{where} (stack member {i})")

    def _where(self, group_index: int) -> str:
        return f" (param group {group_index})" if len(self.param_groups) > 1 else ""

    @_signature_of_base()
    def __init__(self, params: Any, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        for gi in range(len(self.param_groups)):
            self._check_each_member(self._numbers(gi), self._where(gi))

    def set_hyperparameter(self, name: str, value: float, group: int | None = None) -> None:
        if name in self._declarations and name not in self.options:
            value = self._declarations[name].check(type(self).__name__, name, value)
            if group is not None:
                self._group_index(group)  # a clear IndexError for a group that does not exist
            indices = range(len(self.param_groups)) if group is None else [int(group)]
            for gi in indices:
                if isinstance(self.param_groups[gi].values[name], Schedule):
                    continue  # the base class says it follows a schedule
                self._check_each_member({**self._numbers(gi), name: value}, self._where(gi))
        super().set_hyperparameter(name, value, group)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = state.get("hyperparameters") if isinstance(state, Mapping) else None
        if isinstance(saved, list) and len(saved) == len(self.param_groups):
            for gi, values in enumerate(saved):
                try:
                    numbers = {**self._numbers(gi), **{k: np.asarray(v, dtype=np.float64) for k, v in values.items()}}
                except (TypeError, ValueError, AttributeError):
                    continue  # malformed: the base class reports it
                self._check_each_member(numbers, self._where(gi))
        super().load_state_dict(state)


def _per_seed_norm(x: TensorVariable, stacked: bool) -> TensorVariable:
    """The Euclidean (Frobenius) norm of ``x``, per seed when axis 0 stacks seeds.

    Keeps the reduced axes (size 1) so the result broadcasts against ``x``.
    """
    axes = tuple(range(1 if stacked else 0, x.ndim))
    if not axes:
        return pt.abs(x)
    return pt.sqrt(pt.sum(x * x, axis=axes, keepdims=True))


def _trust_ratio(
    param: TensorVariable, update: TensorVariable, stacked: bool, coefficient: Any = None, eps: Any = None
) -> TensorVariable:
    """optax's ``scale_by_trust_ratio``: ``c ||p|| / (||u|| + eps)``, and 1 where a norm is 0.

    ``coefficient`` and ``eps`` default to 1 and 0 (LAMB) and are then left out of the graph.
    """
    param_norm = _per_seed_norm(param, stacked)
    update_norm = _per_seed_norm(update, stacked)
    ratio = param_norm / (update_norm if eps is None else update_norm + eps)
    if coefficient is not None:
        ratio = coefficient * ratio
    # A zero parameter (a fresh bias) or a zero update would stall or divide by zero.
    zero = pt.or_(pt.eq(param_norm, 0), pt.eq(update_norm, 0))
    return pt.switch(zero, pt.ones_like(ratio), ratio)


def _is_stacked(opt: Optimizer) -> bool:
    param = getattr(opt, "current_param", None)
    return bool(getattr(getattr(param, "tag", None), "seed_axis", False))


# ---------------------------------------------------------------------------------- torch
@register("rprop")
class Rprop(_Constrained):
    r"""Resilient backpropagation (Riedmiller & Braun, ICNN 1993), the Rprop- variant of
    ``torch.optim.Rprop``.

    Each element keeps its own step size :math:`\Delta` (starting at :math:`\eta`) and
    the previous gradient it used :math:`g'`:

    .. math::
        s_t &= \mathrm{sign}(g_t\, g'_{t-1}), \qquad
        f_t = \begin{cases} \eta^+ & s_t > 0 \\ \eta^- & s_t < 0 \\ 1 & s_t = 0 \end{cases} \\
        \Delta_t &= \mathrm{clip}(f_t \Delta_{t-1}, \Delta_{\min}, \Delta_{\max}),
            \qquad \Delta_0 = \eta \\
        g'_t &= \begin{cases} 0 & s_t < 0 \\ g_t & \text{otherwise} \end{cases}, \qquad
        p_t = p_{t-1} - \mathrm{sign}(g'_t)\, \Delta_t

    A sign change shrinks the step and skips the update (and the next comparison).
    Rprop is a full-batch method: mini-batch noise flips signs at random.

    ``learning_rate`` only sets the initial step size (read at the first step).
    Slots: ``prev`` (:math:`g'`) and ``step_size`` (:math:`\Delta`; 0 before the first step).
    Defaults (torch's): ``learning_rate=0.01``, ``eta_minus=0.5``, ``eta_plus=1.2``,
    ``step_size_min=1e-6``, ``step_size_max=50``. Requires
    ``0 < eta_minus < 1 < eta_plus`` and ``step_size_min <= step_size_max``.
    """

    reference = "torch.optim.Rprop"
    hyperparameters = {
        "learning_rate": 0.01,
        "eta_minus": 0.5,
        "eta_plus": 1.2,
        "step_size_min": 1e-6,
        "step_size_max": 50.0,
    }
    slots = {"prev": 0.0, "step_size": 0.0}

    def check_values(self, values, where):
        if values["step_size_min"] > values["step_size_max"]:
            raise ValueError(
                f"{type(self).__name__}{where}: hyperparameter 'step_size_min' ({values['step_size_min']}) "
                f"must not exceed 'step_size_max' ({values['step_size_max']})"
            )

    def update_param(self, param, grad, state):
        first = pt.cast(pt.eq(self.iterations, 0), param.dtype)
        # The step sizes start at the learning rate of the first step (torch's full_like(p, lr)).
        previous_size = state["step_size"] + first * self.learning_rate
        sign = pt.sign(grad * state["prev"])
        one = pt.constant(1.0, dtype=param.dtype)  # a bare 1.0 would be a float32 constant in float64 graphs
        factor = pt.switch(pt.gt(sign, 0), self.eta_plus, pt.switch(pt.lt(sign, 0), self.eta_minus, one))
        step_size = pt.clip(previous_size * factor, self.step_size_min, self.step_size_max)
        used = pt.switch(pt.lt(sign, 0), pt.zeros_like(grad), grad)
        return param - pt.sign(used) * step_size, {"prev": used, "step_size": step_size}


@register("asgd")
class ASGD(Optimizer):
    r"""Averaged SGD (Polyak & Juditsky, SIAM J. Control Optim. 1992) with the step-size
    schedule of Bottou (2012, "Stochastic gradient descent tricks"), as ``torch.optim.ASGD``.

    .. math::
        \eta_t &= \frac{\eta}{(1 + \lambda \eta (t - 1))^{\alpha}}, \qquad
        \mu_t = \frac{1}{\max(1, t - 1 - t_0)} \\
        p_t &= (1 - \lambda \eta_t)\, p_{t-1} - \eta_t g_t \\
        \bar p_t &= \begin{cases} p_t & \mu_t = 1 \\
                    \bar p_{t-1} + \mu_t (p_t - \bar p_{t-1}) & \text{otherwise} \end{cases}

    :math:`\lambda` is ``lambd``, :math:`\alpha` ``alpha``, :math:`t_0` ``t0`` (the
    step after which averaging starts). The average :math:`\bar p` is the slot ``ax``;
    the trained parameters are :math:`p`, as in torch. torch computes :math:`\eta_t` from
    the learning rate of step :math:`t - 1`; here it is step :math:`t`'s (the same for a
    constant rate). Defaults (torch's): ``learning_rate=0.01``, ``lambd=1e-4``,
    ``alpha=0.75``, ``t0=1e6``.
    """

    reference = "torch.optim.ASGD"
    hyperparameters = {"learning_rate": 0.01, "lambd": 1e-4, "alpha": 0.75, "t0": 1e6}
    slots = {"ax": 0.0}

    def update_param(self, param, grad, state):
        with self.float64_scalars() as cast:
            steps_before = self.t - 1
            lr, lambd = self.learning_rate, self.lambd
            eta64 = lr / (1 + lambd * lr * steps_before) ** self.alpha
            mu64 = 1 / pt.maximum(1.0, steps_before - self.t0)
            eta, shrink, mu = cast(eta64), cast(1 - lambd * eta64), cast(mu64)
            averaging = pt.neq(mu64, 1)
        new_param = param * shrink - eta * grad
        ax = pt.switch(averaging, state["ax"] + (new_param - state["ax"]) * mu, new_param)
        return new_param, {"ax": ax}


# ---------------------------------------------------------------------------------- optax
@register("adabelief")
class AdaBelief(Optimizer):
    r"""AdaBelief (Zhuang et al., NeurIPS 2020), as ``optax.adabelief``.

    Adam with the second moment of the gradient's deviation from its running mean (the
    "belief") instead of the raw second moment:

    .. math::
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        s_t &= \beta_2 s_{t-1} + (1 - \beta_2) (g_t - m_t)^2 + \bar\epsilon \\
        \hat m_t &= \frac{m_t}{1 - \beta_1^t} \quad\text{or, with nesterov,}\quad
            \hat m_t = \frac{\beta_1 m_t}{1 - \beta_1^{t+1}} + \frac{(1 - \beta_1) g_t}{1 - \beta_1^t} \\
        p_t &= p_{t-1} - \eta \frac{\hat m_t}{\sqrt{s_t / (1 - \beta_2^t)} + \epsilon}

    :math:`\bar\epsilon` is ``epsilon_root`` (optax's ``eps_root``, added to the stored
    :math:`s_t` every step as in the authors' code). Defaults (optax's, those of the
    authors' implementation): ``beta1=0.9``, ``beta2=0.999``, ``epsilon=1e-16``,
    ``epsilon_root=1e-16``; ``learning_rate=1e-3`` (the paper's). ``weight_decay`` is
    L2 added to the gradient as on the classic rules (optax's adabelief has none).
    """

    reference = "optax.adabelief"
    hyperparameters = {
        "learning_rate": 1e-3,
        "beta1": 0.9,
        "beta2": 0.999,
        "epsilon": 1e-16,
        "epsilon_root": 1e-16,
        "nesterov": False,
    }
    slots = {"exp_avg": 0.0, "exp_avg_var": 0.0}

    def update_param(self, param, grad, state):
        with self.float64_scalars() as cast:
            t, beta1 = self.t, self.beta1
            correction2 = cast(1 - self.beta2**t)
            if self.nesterov:
                avg_coef = cast(beta1 / (1 - beta1 ** (t + 1)))
                grad_coef = cast((1 - beta1) / (1 - beta1**t))
            else:
                avg_coef = cast(1 / (1 - beta1**t))
        beta1, beta2 = self.beta1, self.beta2
        exp_avg = beta1 * state["exp_avg"] + (1 - beta1) * grad
        deviation = grad - exp_avg
        exp_avg_var = beta2 * state["exp_avg_var"] + (1 - beta2) * deviation * deviation + self.epsilon_root
        direction = avg_coef * exp_avg
        if self.nesterov:
            direction = direction + grad_coef * grad
        step = direction / (pt.sqrt(exp_avg_var / correction2) + self.epsilon)
        return param - self.learning_rate * step, {"exp_avg": exp_avg, "exp_avg_var": exp_avg_var}


@register("adopt")
class ADOPT(_Constrained):
    r"""ADOPT (Taniguchi et al., NeurIPS 2024), as ``optax.contrib.adopt``.

    The gradient is normalised by the second moment of the *previous* steps, before it
    enters the momentum, which makes the rule converge for any :math:`\beta_2`:

    .. math::
        u_t &= \mathrm{clip}\!\left(\frac{g_t}{\max(\sqrt{v_{t-1}}, \epsilon)},
               -(t-1)^{1/4}, (t-1)^{1/4}\right) \quad\text{(no clip without clipping)} \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) u_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \qquad (t > 1) \\
        m_1 &= 0, \qquad v_1 = g_1^2 \\
        p_t &= p_{t-1} - \eta\, m_t \quad\text{or, with nesterov,}\quad
            p_t = p_{t-1} - \eta\, (\beta_1 m_t + (1 - \beta_1) u_t)

    The first step only initialises :math:`v` (the parameters do not move). The clip
    bound :math:`(t-1)^{1/4}` is optax's default ``clip_value_fn``.
    Defaults (optax's): ``beta1=0.9``, ``beta2=0.9999``, ``epsilon=1e-6``,
    ``clipping=True``, ``nesterov=False``; ``learning_rate=1e-3`` (the paper's).
    ``epsilon`` must be > 0 (the first step divides by it). ``weight_decay`` is L2 added
    to the gradient.
    """

    reference = "optax.contrib.adopt"
    hyperparameters = {
        "learning_rate": 1e-3,
        "beta1": 0.9,
        "beta2": 0.9999,
        "epsilon": 1e-6,
        "clipping": True,
        "nesterov": False,
    }
    slots = {"exp_avg": 0.0, "exp_avg_sq": 0.0}

    def check_values(self, values, where):
        if values["epsilon"] <= 0:
            raise ValueError(
                f"{type(self).__name__}{where}: hyperparameter 'epsilon' must be > 0 "
                f"(the first step divides the gradient by it), got {values['epsilon']}"
            )

    def update_param(self, param, grad, state):
        with self.float64_scalars() as cast:
            later = pt.gt(self.iterations, 0)  # optax: b1, b2 -> 1, 0 on the first step
            beta1 = cast(pt.switch(later, self.beta1, 1.0))
            beta2 = cast(pt.switch(later, self.beta2, 0.0))
            bound = cast(pt.cast(self.iterations, "float64") ** 0.25)
        normalised = grad / pt.maximum(pt.sqrt(state["exp_avg_sq"]), self.epsilon)
        if self.clipping:
            normalised = pt.clip(normalised, -bound, bound)
        exp_avg = (1 - beta1) * normalised + beta1 * state["exp_avg"]
        exp_avg_sq = (1 - beta2) * grad * grad + beta2 * state["exp_avg_sq"]
        direction = (1 - beta1) * normalised + beta1 * exp_avg if self.nesterov else exp_avg
        return param - self.learning_rate * direction, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}


@register("ademamix")
class AdEMAMix(Optimizer):
    r"""AdEMAMix (Pagliardini, Ablin & Grangier, ICLR 2025), as ``optax.contrib.ademamix``.

    Adam whose numerator mixes a fast and a very slow momentum:

    .. math::
        m^{(1)}_t &= \beta_1 m^{(1)}_{t-1} + (1 - \beta_1) g_t, \qquad
        m^{(2)}_t = \beta_3 m^{(2)}_{t-1} + (1 - \beta_3) g_t \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        p_t &= (1 - \eta\lambda)\, p_{t-1} - \eta\,
            \frac{m^{(1)}_t / (1 - \beta_1^t) + \alpha\, m^{(2)}_t}
                 {\sqrt{v_t / (1 - \beta_2^t) + \bar\epsilon} + \epsilon}

    The slow momentum is not bias-corrected. Weight decay :math:`\lambda` is decoupled
    (optax's ``add_decayed_weights`` after the scaling). The paper warms :math:`\alpha`
    and :math:`\beta_3` up over many steps: pass :mod:`symopt.schedules` objects for
    ``alpha`` and ``beta3`` (optax's ``alpha``/``b3`` schedules see the same 0-based
    step). Defaults (optax's): ``beta1=0.9``, ``beta2=0.999``, ``beta3=0.9999``,
    ``alpha=5``, ``epsilon=1e-8``, ``epsilon_root=0``, ``weight_decay=0``;
    ``learning_rate=1e-3``.
    """

    reference = "optax.contrib.ademamix"
    hyperparameters = {
        "learning_rate": 1e-3,
        "beta1": 0.9,
        "beta2": 0.999,
        "beta3": 0.9999,
        "alpha": 5.0,
        "epsilon": 1e-8,
        "epsilon_root": 0.0,
    }
    slots = {"exp_avg_fast": 0.0, "exp_avg_slow": 0.0, "exp_avg_sq": 0.0}
    decoupled_weight_decay = True

    def update_param(self, param, grad, state):
        with self.float64_scalars() as cast:
            t = self.t
            correction1 = cast(1 - self.beta1**t)
            correction2 = cast(1 - self.beta2**t)
        beta1, beta2, beta3 = self.beta1, self.beta2, self.beta3
        fast = (1 - beta1) * grad + beta1 * state["exp_avg_fast"]
        slow = (1 - beta3) * grad + beta3 * state["exp_avg_slow"]
        second = (1 - beta2) * grad * grad + beta2 * state["exp_avg_sq"]
        denom = pt.sqrt(second / correction2 + self.epsilon_root) + self.epsilon
        step = (fast / correction1 + self.alpha * slow) / denom
        new = {"exp_avg_fast": fast, "exp_avg_slow": slow, "exp_avg_sq": second}
        return param - self.learning_rate * step, new


@register("lamb")
class LAMB(Optimizer):
    r"""LAMB, layer-wise adaptive moments (You et al., ICLR 2020), as ``optax.lamb``.

    The Adam direction plus decoupled weight decay, rescaled per parameter tensor by a
    trust ratio:

    .. math::
        r_t &= \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t) + \bar\epsilon} + \epsilon}
               + \lambda p_{t-1} \qquad (m_t, v_t \text{ as in Adam}) \\
        p_t &= p_{t-1} - \eta\, \frac{\|p_{t-1}\|}{\|r_t\|}\, r_t

    with :math:`\|\cdot\|` the Frobenius norm of the whole tensor, and a ratio of 1 where
    either norm is 0. For a parameter with a seed axis (``SeedStack``) the norms are per
    seed. The gradient :math:`g_t` carries no decay term; ``weight_decay_mask`` excludes
    parameters from :math:`\lambda` as optax's ``mask``. Defaults (optax's):
    ``beta1=0.9``, ``beta2=0.999``, ``epsilon=1e-6``, ``epsilon_root=0``,
    ``weight_decay=0``; ``learning_rate=1e-3``.
    """

    reference = "optax.lamb"
    hyperparameters = {
        "learning_rate": 1e-3,
        "beta1": 0.9,
        "beta2": 0.999,
        "epsilon": 1e-6,
        "epsilon_root": 0.0,
    }
    slots = {"exp_avg": 0.0, "exp_avg_sq": 0.0}
    weight_decay_in_rule = True

    def update_param(self, param, grad, state):
        with self.float64_scalars() as cast:
            t = self.t
            correction1 = cast(1 - self.beta1**t)
            correction2 = cast(1 - self.beta2**t)
        beta1, beta2 = self.beta1, self.beta2
        exp_avg = (1 - beta1) * grad + beta1 * state["exp_avg"]
        exp_avg_sq = (1 - beta2) * grad * grad + beta2 * state["exp_avg_sq"]
        direction = (exp_avg / correction1) / (pt.sqrt(exp_avg_sq / correction2 + self.epsilon_root) + self.epsilon)
        direction = direction + self.weight_decay * param
        ratio = _trust_ratio(param, direction, _is_stacked(self))
        return param - self.learning_rate * (direction * ratio), {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}


@register("lars")
class LARS(Optimizer):
    r"""LARS, layer-wise adaptive rate scaling (You, Gitman & Ginsburg, 2017), as ``optax.lars``.

    .. math::
        u_t &= g_t + \lambda p_{t-1}, \qquad
        r_t = \begin{cases} \dfrac{c\, \|p_{t-1}\|}{\|u_t\| + \epsilon} & \text{both norms} > 0 \\
                            1 & \text{otherwise} \end{cases} \\
        b_t &= \mu b_{t-1} + \eta\, r_t u_t, \qquad
        p_t = p_{t-1} - b_t \quad\text{or, with nesterov,}\quad p_t = p_{t-1} - (\eta r_t u_t + \mu b_t)

    with :math:`\|\cdot\|` the Frobenius norm of the whole tensor (per seed for a
    parameter with a seed axis), :math:`c` ``trust_coefficient`` and :math:`\mu`
    ``momentum``. The momentum buffer holds learning-rate-scaled steps (optax's
    ``trace`` after ``scale_by_learning_rate``), so a new learning rate acts gradually.
    ``weight_decay`` (:math:`\lambda`, coupled) honours ``weight_decay_mask``; the
    constructor's ``trust_ratio_mask`` (callable ``param -> bool`` or a list; default
    all) picks the parameters whose step is scaled by :math:`r_t`, as optax's.
    Defaults (optax's): ``trust_coefficient=1e-3``, ``epsilon=0``, ``momentum=0.9``,
    ``nesterov=False``, ``weight_decay=0``; ``learning_rate=1.0`` (the method has no
    canonical value; with :math:`c = 10^{-3}` the local rates are
    :math:`10^{-3}\eta \|p\| / \|u\|`).
    """

    reference = "optax.lars"
    hyperparameters = {
        "learning_rate": 1.0,
        "trust_coefficient": 1e-3,
        "epsilon": 0.0,
        "momentum": 0.9,
        "nesterov": False,
    }
    slots = {"momentum_buffer": 0.0}

    @_signature_of_base(inspect.Parameter("trust_ratio_mask", inspect.Parameter.KEYWORD_ONLY, default=None))
    def __init__(self, params: Any, *, trust_ratio_mask: Any = None, **kwargs: Any) -> None:
        """``trust_ratio_mask``: callable ``param -> bool`` or a list of the parameters whose
        step the trust ratio scales (default: all); the other keywords are :class:`Optimizer`'s."""
        super().__init__(params, **kwargs)
        flags = _mask(type(self).__name__, "trust_ratio_mask", trust_ratio_mask, self.params, lambda p: True)
        self._trusted = {id(p): flag for p, flag in zip(self.params, flags)}

    def update_param(self, param, grad, state):
        direction = grad
        if self._trusted.get(id(self.current_param), True):
            ratio = _trust_ratio(param, grad, _is_stacked(self), self.trust_coefficient, self.epsilon)
            direction = grad * ratio
        step = self.learning_rate * direction
        buffer = step + self.momentum * state["momentum_buffer"]
        taken = step + self.momentum * buffer if self.nesterov else buffer
        return param - taken, {"momentum_buffer": buffer}
