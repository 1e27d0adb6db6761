r"""Rules that differentiate the loss again inside the step: SAM and Sophia-H.

Both need the loss, not only its gradient (``needs_loss``): :meth:`Optimizer.from_loss`
receives the scalar loss and its gradients and returns the gradients the step uses plus
per-parameter extra inputs. Everything happens in the one compiled function that
``pytensor.function(..., updates=opt.updates(loss))`` builds: SAM evaluates the loss
graph a second time at the perturbed parameters (the graph cloned with the parameters
replaced), Sophia differentiates the gradient once more for a Hessian-vector product.
``opt.updates(grads=...)`` is refused with a message saying so.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.replace import clone_replace

try:
    from pytensor.conditional.op import ifelse
except ImportError:  # PyTensor before the `conditional` package
    from pytensor.ifelse import ifelse
from pytensor.tensor.variable import TensorVariable

from ._random import dropout_uniform
from .hyperparameter import Hyperparameter
from .optimizer import Optimizer
from .registry import register
from .rules import SGD
from .transforms import Transform

__all__ = ["SAM", "Sophia", "hutchinson_keys"]


# ---------------------------------------------------------------------- SAM
def _base_rule(owner: str, base: Any) -> type[Optimizer]:
    """The base rule class from a registry name or a class."""
    if isinstance(base, str):
        from .registry import OPTIMIZERS, not_a_rule, rules  # the registry imports the rules: not at module import

        if base.strip().lower() not in OPTIMIZERS:
            raise ValueError(f"{owner}: base must be a registered rule name or an Optimizer subclass, got {base!r} "
                             f"(rules: {', '.join(sorted(rules()))})")
        reason = not_a_rule(base, f"{owner}'s base")
        if reason is not None:  # lbfgs: a full-batch optimiser, not a rule to take SAM's descent step
            raise ValueError(reason)
        base = OPTIMIZERS[base.strip().lower()]
    if not (isinstance(base, type) and issubclass(base, Optimizer)):
        raise ValueError(f"{owner}: base must be a registered rule name or an Optimizer subclass, got {base!r}")
    if issubclass(base, SAM) or base.needs_loss:
        raise ValueError(f"{owner}: base {base.__name__} differentiates the loss itself; SAM needs a first-order rule")
    return base


class _AscentNorm(Transform):
    """Marks SAM's ascent step, whose gradient norm is taken over all parameters together.

    It changes nothing itself; ``reduces = "parameters"`` lets
    :func:`~symopt.transforms.coupling_transforms` report it, so a
    :class:`~symopt.seeds.SeedTrainer` refuses SAM (the norm would mix the stacked seeds).
    """

    name = "sam_global_gradient_norm"
    reduces = "parameters"


@functools.cache
def _sam_class(base: type[Optimizer]) -> type[SAM]:
    """``SAM`` over ``base``: SAM's gradients, ``base``'s step, slots and hyperparameters."""
    table = {**base.declarations(), "rho": SAM.declarations()["rho"]}
    return type(f"SAM[{base.__name__}]", (SAM, base), {"hyperparameters": table, "base_rule": base, "name": SAM.name,
                                                       "__module__": __name__, "__doc__": SAM.__doc__})


@register("sam")
class SAM(Optimizer):
    r"""Sharpness-Aware Minimization (Foret, Kleiner, Mobahi & Neyshabur, ICLR 2021) around any rule.

    Each step takes the gradient at the worst point of a ball of radius :math:`\rho`
    (to first order) and hands it to the base rule, which steps from the original point:

    .. math::

        g_t = \nabla L(p_{t-1}), \qquad
        \hat\epsilon_t = \rho\, \frac{g_t}{\lVert g_t \rVert_2}, \qquad
        \tilde g_t = \nabla L(p_{t-1} + \hat\epsilon_t), \qquad
        p_t = \mathrm{base}(p_{t-1}, \tilde g_t)

    with :math:`\lVert g_t\rVert_2` the global norm over all parameters (optax's
    ``normalize()``; a zero gradient gives :math:`\hat\epsilon_t = 0`). Both gradients
    come from one compiled function: the loss graph is cloned with every parameter
    replaced by :math:`p_{t-1} + \hat\epsilon_t` and differentiated there, so a step
    costs about two forward and two backward passes. Randomness in the loss graph (a
    dropout mask) is the same at both points. The transforms (clipping, weight decay,
    accumulation, ...) act on :math:`\tilde g_t` at :math:`p_{t-1}`.

    The numbers are those of ``optax.contrib.sam(base, optax.chain(normalize(),
    optax.sgd(rho)), sync_period=2, opaque_mode=True)`` (one adversarial step per
    update; ``reset_state`` has no effect because that adversarial optimiser keeps no
    state), checked in ``benchmarks/validate_optax.py``.

    Parameters
    ----------
    params
        As for every rule (shared variables or param groups).
    rho
        Radius of the neighbourhood, in ``[0, 1)`` (``0``: the base rule alone). Default
        0.05 (the paper's value for its CIFAR runs).
    base
        The rule that takes the descent step: a registry name (``"sgd"``, ``"adam"``,
        ...) or an :class:`~symopt.optimizer.Optimizer` subclass; default ``"sgd"``.
    **hyperparameters
        The base rule's hyperparameters and the usual transform keywords.

    ``SAM(params, base="adam")`` is an instance of ``SAM[Adam]``, a subclass of both
    ``SAM`` and ``Adam``: state, ``set_hyperparameter`` and the state file work as for
    the base rule, with ``rho`` as one more hyperparameter. ``opt.updates(loss)`` only:
    the loss is needed for the second gradient.
    """

    needs_loss: ClassVar[bool] = True
    reference = "optax.contrib.sam (normalize() + sgd(rho) adversary, sync_period=2, opaque_mode=True)"
    #: The ascent's norm is taken over all parameters together: on a seed stack it would mix the seeds.
    stackable: ClassVar[bool] = False
    unstackable_reason: ClassVar[str] = "its ascent step is normalised by the gradient norm over all parameters"
    base_rule: ClassVar[type[Optimizer]] = SGD
    hyperparameters = {
        **SGD.declarations(),
        # [0, 1): the range every rule's "rho" shares in HYPERPARAMETER_BOUNDS (RMSprop's decay).
        "rho": Hyperparameter(0.05, low=0.0, high=1.0, doc="radius of the ascent step (L2 ball)"),
    }

    def __new__(cls, params: Any = None, *args: Any, base: Any = "sgd", **kwargs: Any) -> SAM:
        if cls.__dict__.get("base_rule") is None or cls is SAM:
            cls = _sam_class(_base_rule("SAM", base))
        return super().__new__(cls)

    def __init__(self, params: Sequence[SharedVariable] | Sequence[Mapping[str, Any]], *, base: Any = "sgd",
                 **hyperparameters: Any):
        transforms = hyperparameters.pop("transforms", ())
        if isinstance(transforms, Sequence) and not isinstance(transforms, (str, bytes)):
            transforms = [*transforms, _AscentNorm()]  # anything else: the base class's error
        super().__init__(params, transforms=transforms, **hyperparameters)

    @classmethod
    def validate(cls, **hyperparameters: Any) -> dict[str, Any]:
        """As :meth:`Optimizer.validate`; ``base`` picks the rule whose hyperparameters are checked."""
        base = hyperparameters.pop("base", None)
        target = _sam_class(_base_rule("SAM", base if base is not None else cls.base_rule))
        return Optimizer.validate.__func__(target, **hyperparameters)  # type: ignore[attr-defined]

    def from_loss(
        self, loss: TensorVariable, grads: list[TensorVariable | None]
    ) -> tuple[list[TensorVariable | None], list[dict[str, TensorVariable]]]:
        live = [i for i, g in enumerate(grads) if g is not None]
        if not live:
            return grads, [{} for _ in grads]
        # The global norm in float64: a float32 sum of squares over many parameters loses digits.
        norm = pt.sqrt(functools.reduce(pt.add, [pt.cast(pt.sum(pt.square(grads[i])), "float64") for i in live]))
        rho_of = {id(p): group.symbolic("rho", self.iterations) for group in self.param_groups for p in group.params}
        stand_ins: dict[SharedVariable, TensorVariable] = {}
        perturbed: dict[TensorVariable, TensorVariable] = {}
        for i in live:
            param = self.params[i]
            # rho / |g| is 0 for a zero gradient instead of 0/0 (optax would give NaN there).
            scale = pt.switch(pt.gt(norm, 0), rho_of[id(param)] / pt.switch(pt.gt(norm, 0), norm, 1.0), 0.0)
            stand_in = param.type()  # a free variable of the parameter's type, to differentiate at
            stand_ins[param] = stand_in
            perturbed[stand_in] = param + grads[i] * pt.cast(scale, param.dtype)
        at_stand_ins = clone_replace(pt.as_tensor_variable(loss), replace=stand_ins)
        wrt = [stand_ins[self.params[i]] for i in live]
        sharp = pytensor.grad(at_stand_ins, wrt, disconnected_inputs="ignore", return_disconnected="zero")
        sharp = clone_replace(sharp, replace=perturbed)
        out = list(grads)
        for i, g in zip(live, sharp):
            dtype = self.params[i].dtype
            out[i] = pt.cast(g, dtype) if g.dtype != dtype else g
        return out, [{} for _ in grads]


# ---------------------------------------------------------------------- Sophia
def hutchinson_keys(seed: int, count: int) -> list[int]:
    """The 63-bit counter-hash keys of Sophia's Rademacher draws, one per parameter.

    Key ``i`` is the first 64-bit word of ``numpy.random.SeedSequence([seed, i])``
    shifted right by one; element ``j`` of parameter ``i`` at 0-based step ``t`` is
    ``-1`` if the top bit of ``mix64(key_i + ((t + 1) 2**32 + j + 1) GAMMA)`` is 0, else
    ``+1`` (:mod:`symopt._random`: a pure function of the seed and the step, so a run
    resumed from a checkpoint draws what the uninterrupted run would have drawn).
    """
    return [int(np.random.SeedSequence([int(seed), i]).generate_state(1, np.uint64)[0]) >> 1 for i in range(count)]


@register("sophia")
class Sophia(Optimizer):
    r"""Sophia-H (Liu, Li, Hall, Liang & Ma, "Sophia: A Scalable Stochastic Second-order
    Optimizer for Language Model Pre-training", ICLR 2024) as ``optax.contrib.sophia``.

    A clipped, diagonally preconditioned momentum step; the Hessian diagonal is
    Hutchinson's estimate :math:`\hat h = u \odot (H u)` with Rademacher :math:`u`
    (:math:`u_j = \pm 1`), from an exact Hessian-vector product of the loss graph
    (reverse-over-reverse: :math:`H u = \nabla_p (\nabla_p L \cdot u)`), computed in the
    same compiled step on every ``update_interval``-th step (:math:`k`). With
    :math:`t` the 1-based step:

    .. math::

        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        \hat m_t = m_t / (1 - \beta_1^t),

        p_t = p_{t-1}(1 - \eta\lambda) - \eta\,
              \mathrm{clip}\bigl(\hat m_t / \max(\gamma h_{t-1}, \epsilon), -c, c\bigr),

        h_t = \beta_2 h_{t-1} + (1 - \beta_2)\, u_t \odot (H_t u_t) \text{ if } (t - 1) \bmod k = 0,
        \text{ else } h_{t-1}.

    This is optax's order (the step uses the estimate from before this step's update,
    :math:`m` bias-corrected) and its Rademacher :math:`u`; the paper's Algorithm 2
    updates :math:`h` first, uses Gaussian :math:`u` and no bias correction. Weight
    decay :math:`\lambda` is decoupled (optax's ``add_decayed_weights`` after the clip).
    Defaults are optax's (``beta1=0.965``, ``beta2=0.99``, ``epsilon=1e-8``,
    ``gamma=0.01``, ``clip_threshold=1``, ``weight_decay=1e-4``, ``update_interval=10``);
    optax has no default rate, symopt takes ``learning_rate=1e-3``.
    ``benchmarks/validate_optax.py`` runs optax with a Hessian-diagonal function that
    draws the same :math:`u` (optax's own draws come from ``jax.random``).

    Parameters
    ----------
    update_interval
        :math:`k`, an integer ``>= 1``, fixed at construction. The Hessian-vector product
        sits under an ``ifelse`` on the step counter, so the other steps can skip it.
        Measured on a two-layer tanh net (300x300, batch 512, 2-core AMD EPYC under load
        ~7): Numba 0.11 s per step with ``k=1``, 0.055 s with ``k=1000`` (the product
        skipped); the CVM backend 0.12-0.16 s against 0.10-0.12 s, so there most of the
        product's cost remains on every step.
    seed
        Seeds the Rademacher draws (:func:`hutchinson_keys`): a pure function of the
        seed, the parameter's position and the step counter, so resuming from a saved
        state draws what an uninterrupted run would.

    With ``accumulate=k``, the estimate comes from the loss of the call that applies
    the step. ``opt.updates(loss)`` only.
    """

    needs_loss: ClassVar[bool] = True
    reference = "optax.contrib.sophia (Hutchinson, Rademacher u; compared with the same u)"
    #: On a seed stack each member would draw other u than its separate run (the index spans the stack).
    stackable: ClassVar[bool] = False
    unstackable_reason: ClassVar[str] = ("its Hutchinson probes u are numbered across the whole stacked tensor "
                                         "(each member would draw other probes than its separate run)")
    decoupled_weight_decay: ClassVar[bool] = True
    hyperparameters = {
        "learning_rate": Hyperparameter(1e-3, low=0.0, doc="learning rate (step size)"),
        "beta1": Hyperparameter(0.965, low=0.0, high=1.0, doc="momentum decay"),
        "beta2": Hyperparameter(0.99, low=0.0, high=1.0, doc="decay of the Hessian-diagonal average"),
        "epsilon": Hyperparameter(1e-8, low=0.0, doc="floor of the preconditioner"),
        "gamma": Hyperparameter(0.01, low=0.0, low_inclusive=False, doc="scale of the Hessian diagonal"),
        "clip_threshold": Hyperparameter(1.0, low=0.0, low_inclusive=False, doc="bound of each update element"),
        "weight_decay": Hyperparameter(1e-4, low=0.0, doc="decoupled weight decay"),
    }
    slots = {"exp_avg": 0.0, "hessian": 0.0}

    def __init__(self, params: Sequence[SharedVariable] | Sequence[Mapping[str, Any]], *,
                 update_interval: int = 10, seed: int = 0, **hyperparameters: Any):
        if isinstance(update_interval, (bool, np.bool_)) or not isinstance(update_interval, (int, np.integer)) \
                or update_interval < 1:
            raise ValueError(f"Sophia: update_interval must be an integer >= 1, got {update_interval!r}")
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"Sophia: seed must be a non-negative integer, got {seed!r}")
        super().__init__(params, **hyperparameters)
        self.update_interval = int(update_interval)
        self.seed = int(seed)
        self.keys = hutchinson_keys(self.seed, len(self.params))

    def rademacher(self, index: int, counter: Any) -> TensorVariable:
        """The symbolic :math:`u` of parameter ``index`` at 0-based step ``counter`` (``+-1``)."""
        param = self.params[index]
        shape = param.get_value(borrow=True).shape
        uniform = dropout_uniform(np.int64(self.keys[index]), counter, shape, param.dtype)
        # uniform < 1/2 exactly when the hash's top bit is 0, in float32 and float64 alike.
        half, one = np.asarray(0.5, dtype=param.dtype), np.asarray(1, dtype=param.dtype)
        return pt.switch(pt.lt(uniform, half), -one, one)

    def from_loss(
        self, loss: TensorVariable, grads: list[TensorVariable | None]
    ) -> tuple[list[TensorVariable | None], list[dict[str, TensorVariable]]]:
        live = [i for i, g in enumerate(grads) if g is not None]
        extras: list[dict[str, TensorVariable]] = [{} for _ in grads]
        if not live:
            return grads, extras
        due = pt.eq(self.iterations % self.update_interval, 0)
        signs = {i: self.rademacher(i, self.iterations) for i in live}
        directional = functools.reduce(pt.add, [pt.sum(grads[i] * signs[i]) for i in live])
        hvp = pytensor.grad(directional, [self.params[i] for i in live], disconnected_inputs="ignore",
                            return_disconnected="zero")
        estimates = [pt.cast(signs[i] * h, self.params[i].dtype) for i, h in zip(live, hvp)]
        # ifelse: a backend that evaluates it lazily computes the product only on due steps.
        zeros = [pt.zeros_like(self.params[i]) for i in live]
        chosen = ifelse(due, estimates, zeros)
        chosen = chosen if isinstance(chosen, list) else [chosen]
        for i, estimate in zip(live, chosen):
            extras[i] = {"hutchinson": estimate, "hessian_due": due}
        return grads, extras

    def update_param(self, param, grad, state, h):
        with h.float64() as f:
            correction = f.cast(1.0 / (1.0 - f.beta1**f.t))
        m = h.beta1 * state["exp_avg"] + (1 - h.beta1) * grad
        hessian = state["hessian"]
        ratio = (m * correction) / pt.maximum(h.gamma * hessian, h.epsilon)
        new = param - h.learning_rate * pt.clip(ratio, -h.clip_threshold, h.clip_threshold)
        averaged = h.beta2 * hessian + (1 - h.beta2) * state["hutchinson"]
        return new, {"exp_avg": m, "hessian": pt.switch(state["hessian_due"], averaged, hessian)}
