r"""Training controls as small composable units around a rule.

A :class:`Transform` changes the gradients before the rule sees them, the parameter
or gradient one rule step at a time, or the rule's result, and may gate the whole step
(``applied``). Each built-in is one class here with its own state; an
:class:`~symopt.optimizer.Optimizer` composes them in :data:`BUILTIN_ORDER`, then the
user's ``transforms=[...]`` in the order given. One step is built in three phases, each
walking the transforms in that order:

1. :meth:`Transform.gradients` ``(grads, applied, step) -> (grads, applied)`` over all
   parameters together; ``applied`` is the symbolic flag of whether this call applies the
   update (``None``: every call does) and is passed explicitly from one transform to the next;
2. :meth:`Transform.before_rule` ``(index, param, grad, h) -> (param, grad)`` per parameter,
   with ``h`` the rule's hyperparameters (:class:`~symopt.hyperparameter.Values`);
3. :meth:`Transform.after_rule` ``(index, value, h) -> value`` on the rule's new value.

``reduces`` says what a transform computes over: ``None`` (element-wise), ``"tensor"``
(a whole tensor, or whole columns) or ``"parameters"`` (all parameters together). With a
seed axis stacked into every tensor (:class:`~symopt.seeds.SeedTrainer`) the last two
would mix the seeds; :func:`coupling_transforms` lists them. A transform that asks each
parameter for its seed axis (:func:`seed_axis`) and reduces over each member's own slice
declares ``per_member = True``; the built-ins do (the norm of a stacked gradient is taken
over all axes but the first, the global norm and the non-finite check per member, the
step then applied per member), so only :func:`seed_coupling_transforms` are refused.

Adding a built-in control is one subclass here with its ``keyword`` and one line in
:data:`BUILTIN_ORDER`; the keyword is then accepted by every rule's constructor, stored in
``opt.settings``, changeable with ``set_hyperparameter`` and saved with the state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.tensor.variable import TensorVariable

from .hyperparameter import Values, check_number, member_view

__all__ = [
    "Transform",
    "Step",
    "SkipNonFinite",
    "Accumulate",
    "ClipValue",
    "ClipNorm",
    "ClipGlobalNorm",
    "WeightDecay",
    "MaxNorm",
    "SettingTransform",
    "BUILTIN_ORDER",
    "coupling_transforms",
    "seed_coupling_transforms",
    "resolve_mask",
    "seed_axis",
    "stack_size",
]

Applied = TensorVariable | None


def _describe(param: Any, index: int) -> str:
    """Human-readable name of a parameter for error messages."""
    name = getattr(param, "name", None)
    if name:
        return f"parameter {name!r} (index {index})"
    return f"parameter at index {index}"


def seed_axis(param: Any) -> bool:
    """Whether ``param`` carries a leading seed (stack member) axis (:class:`~symopt.seeds.SeedStack`)."""
    return bool(getattr(getattr(param, "tag", None), "seed_axis", False))


def stack_size(params: Sequence[Any]) -> int | None:
    """S when every parameter has a leading seed axis of one length S, else ``None``."""
    if not params or not all(seed_axis(p) for p in params):
        return None
    sizes = {p.get_value(borrow=True).shape[0] for p in params}
    return sizes.pop() if len(sizes) == 1 else None


def _member_axes(param: Any, ndim: int) -> tuple[int, ...] | None:
    """The axes of one member's slice of a stacked tensor (``None``: not stacked, reduce all)."""
    return tuple(range(1, ndim)) if seed_axis(param) else None


def resolve_mask(owner: str, what: str, mask: Any, params: list[SharedVariable], default: Any) -> list[bool]:
    """A mask (callable ``param -> bool``, or a list of params) as one bool per parameter."""
    if mask is None:
        return [bool(default(p)) for p in params]
    if callable(mask):
        out = []
        for index, param in enumerate(params):
            flag = mask(param)
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{owner}: {what}({_describe(param, index)}) returned {flag!r}, expected True or False")
            out.append(bool(flag))
        return out
    if isinstance(mask, (str, bytes)) or not isinstance(mask, Sequence | set | frozenset):
        raise TypeError(f"{owner}: {what} must be a callable param -> bool or a list of parameters, got {mask!r}")
    ids = {id(p) for p in params}
    for entry in mask:
        if id(entry) not in ids:
            raise ValueError(f"{owner}: {what} names {getattr(entry, 'name', None) or entry!r}, which is not one of the parameters")
    chosen = {id(entry) for entry in mask}
    return [id(p) in chosen for p in params]


@dataclass
class Step:
    """What the gradient phase of one step sees besides the gradients.

    ``live`` are the indices of parameters with a gradient (the rest are left unchanged),
    ``slots[i]`` parameter ``i``'s per-parameter state (the transforms' own slots included),
    ``loss`` the loss (``None`` when gradients were given). A transform appends the new
    values of its own bookkeeping variables to ``updates``; they are applied on every call.
    """

    params: list[SharedVariable]
    live: list[int]
    slots: list[dict[str, SharedVariable]]
    loss: TensorVariable | None
    updates: list[tuple[SharedVariable, Any]] = field(default_factory=list)
    #: Stacked parameters: the loss of each member, shape ``(S,)``, when the caller gave them.
    member_losses: TensorVariable | None = None


class Transform:
    """Base class of gradient transforms and parameter constraints.

    Subclasses override any of :meth:`gradients`, :meth:`before_rule`, :meth:`after_rule`
    (each defaults to the identity) and may declare

    * ``slots``: per-parameter state, name -> fill value, made by the optimiser in the
      parameter's shape and dtype and saved with the rule's slots (``step.slots[i][name]``);
    * ``reduces``: ``None``, ``"tensor"`` or ``"parameters"`` (see the module docstring);
    * ``per_member``: ``True`` if, on stacked parameters, it reduces over each member's own
      slice only (then it does not couple the members of a :class:`~symopt.seeds.SeedStack`);
    * ``name``: how messages and :func:`coupling_transforms` call it.

    :meth:`bind` is called once with the optimiser's parameters; validate masks there.
    """

    name: ClassVar[str] = "transform"
    #: Constructor keyword of a built-in (``clip_norm``); ``None`` for a user's transform.
    keyword: ClassVar[str | None] = None
    reduces: ClassVar[str | None] = None
    per_member: ClassVar[bool] = False
    slots: ClassVar[dict[str, float]] = {}
    #: The shared scalar a built-in's keyword sets (``opt.settings[keyword]``), if any.
    setting: SharedVariable | None = None

    @classmethod
    def from_options(cls, owner: str, options: dict[str, Any]) -> Transform | None:
        """A built-in from the optimiser's constructor keywords, or ``None`` if not asked for."""
        return None

    @property
    def active(self) -> bool:
        """Whether it takes part in the step (``accumulate=1`` is an inactive Accumulate)."""
        return True

    def bind(self, owner: str, params: list[SharedVariable]) -> None:
        """Check this transform against the optimiser's parameters (masks, shapes)."""

    def gradients(self, grads: list[Any], applied: Applied, step: Step) -> tuple[list[Any], Applied]:
        """New gradients (``None`` stays ``None``) and the new applied flag."""
        return grads, applied

    def before_rule(self, index: int, param: TensorVariable, grad: TensorVariable, h: Values) -> tuple[Any, Any]:
        """The parameter and gradient the rule's ``update_param`` receives."""
        return param, grad

    def after_rule(self, index: int, value: TensorVariable, h: Values) -> TensorVariable:
        """The parameter's new value, from the rule's."""
        return value


class SettingTransform(Transform):
    """A transform with one positive number (a threshold), kept in a float64 shared scalar.

    With a ``keyword`` and an entry in :data:`BUILTIN_ORDER` it is a built-in: every
    rule's constructor takes the keyword, ``opt.settings[keyword]`` holds the scalar,
    ``set_hyperparameter(keyword, c)`` changes it and the state saves it.
    """

    def __init__(self, value: float, owner: str = "Transform"):
        self.setting = pytensor.shared(np.float64(self.check(owner, value)), name=f"{owner}.{self.keyword}")

    @classmethod
    def from_options(cls, owner: str, options: dict[str, Any]) -> Transform | None:
        value = options.get(cls.keyword)
        return None if value is None else cls(value, owner=owner)

    @classmethod
    def check(cls, owner: str, value: Any) -> float:
        value = check_number(owner, cls.keyword or cls.name, value)
        if value <= 0:
            raise ValueError(f"{owner}: {cls.keyword} must be > 0, got {value}")
        return value

    def set(self, owner: str, value: Any) -> None:
        self.setting.set_value(np.float64(self.check(owner, value)))


# ---------------------------------------------------------------------- the built-ins
class SkipNonFinite(Transform):
    """A call whose loss or gradients hold NaN/Inf changes nothing; ``skipped`` counts them.

    On stacked parameters the check is per member: a member whose loss (given per member,
    see :class:`Step`) or gradient slice is not finite keeps its parameters and state, the
    others step; ``applied`` is then a vector over the members, ``member_skipped`` counts
    each member's skipped calls and ``skipped`` the calls in which any member was skipped.

    The same per-member gate freezes members on request: with ``stoppable=True`` (stacked
    parameters only) ``member_active`` is an int64 shared vector of 0/1 over the members,
    and a member whose entry is 0 keeps its parameters and state on every call, as a
    skipped one does (:class:`~symopt.plateau.EarlyStopping` writes it). Its checks are
    then ``finite & active`` (``active`` alone without ``skip_nonfinite``).
    """

    name = keyword = "skip_nonfinite"
    reduces = "parameters"
    per_member = True
    #: Set on the instance only with ``stoppable=True``, so the description of other
    #: optimisers (checkpoint signatures) is unchanged.
    stoppable: bool = False
    member_active: SharedVariable | None = None

    def __init__(self, enabled: bool = True, owner: str = "Transform", stoppable: bool = False):
        if not isinstance(enabled, (bool, np.bool_)):
            raise TypeError(f"{owner}: skip_nonfinite must be True or False, got {enabled!r}")
        if not isinstance(stoppable, (bool, np.bool_)):
            raise TypeError(f"{owner}: stoppable must be True or False, got {stoppable!r}")
        self.enabled = bool(enabled)
        self.owner = owner
        self.skipped = pytensor.shared(np.int64(0), name=f"{owner}.skipped")
        self.member_skipped: SharedVariable | None = None
        if stoppable:
            self.stoppable = True

    def bind(self, owner, params):
        members = stack_size(params)
        if self.enabled and members is not None:
            self.member_skipped = pytensor.shared(np.zeros(members, dtype=np.int64), name=f"{owner}.member_skipped")
        if self.stoppable:
            if members is None:
                raise ValueError(f"{owner}: stoppable=True freezes members of a seed stack; the parameters are not "
                                 f"stacked over one seed axis (symopt.seeds.SeedStack)")
            self.member_active = pytensor.shared(np.ones(members, dtype=np.int64), name=f"{owner}.member_active")

    @classmethod
    def from_options(cls, owner, options):
        # always: opt.skipped exists
        return cls(options.get("skip_nonfinite", False), owner, options.get("stoppable", False))

    @property
    def active(self) -> bool:
        return self.enabled or self.stoppable

    def gradients(self, grads, applied, step):
        if self.member_skipped is not None or self.member_active is not None:
            return self._per_member(grads, applied, step)
        checks = [pt.all(pt.isfinite(grads[i])) for i in step.live]
        if step.loss is not None:
            checks.append(pt.isfinite(pt.as_tensor_variable(step.loss)))
        finite = pt.all(pt.stack(checks))
        step.updates.append((self.skipped, self.skipped + 1 - pt.cast(finite, "int64")))
        return grads, finite if applied is None else pt.and_(applied, finite)

    def _per_member(self, grads, applied, step):
        if applied is not None:
            raise ValueError(f"{self.owner}: skip_nonfinite on stacked parameters must come first among the transforms")
        gate = None if self.member_active is None else pt.neq(self.member_active, 0)  # (S,)
        if self.member_skipped is None:  # stoppable only: the gate is the mask
            return grads, gate
        checks = [pt.all(pt.isfinite(grads[i]), axis=_member_axes(step.params[i], grads[i].ndim) or None)
                  if grads[i].ndim > 1 else pt.isfinite(grads[i]) for i in step.live]
        if step.member_losses is not None:
            checks.append(pt.isfinite(pt.as_tensor_variable(step.member_losses)))
        elif step.loss is not None:  # one loss for all members: it cannot tell which one failed
            checks.append(pt.broadcast_to(pt.isfinite(pt.as_tensor_variable(step.loss)), self.member_skipped.shape))
        finite = pt.all(pt.stack(checks), axis=0)  # (S,)
        # A frozen member is not skipped: it does not take part.
        skipped = pt.invert(finite) if gate is None else pt.and_(gate, pt.invert(finite))
        step.updates.append((self.member_skipped, self.member_skipped + pt.cast(skipped, "int64")))
        step.updates.append((self.skipped, self.skipped + pt.cast(pt.any(skipped), "int64")))
        return grads, finite if gate is None else pt.and_(finite, gate)


class Accumulate(Transform):
    """``k`` calls apply one update with the mean of their (counted) gradients."""

    name = keyword = "accumulate"

    def __init__(self, k: int = 1, owner: str = "Transform"):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"{owner}: accumulate must be an integer >= 1, got {k!r}")
        self.k = int(k)
        self.micro_steps = pytensor.shared(np.int64(0), name=f"{owner}.micro_steps")
        self.slots = {"grad_accum": 0.0} if self.k > 1 else {}

    @classmethod
    def from_options(cls, owner, options):
        return cls(options.get("accumulate", 1), owner)  # always: opt.micro_steps exists

    @property
    def active(self) -> bool:
        return self.k > 1

    def gradients(self, grads, applied, step):
        # A call that is not applied so far (a skipped non-finite micro-step) adds nothing.
        counted = self.micro_steps + (1 if applied is None else pt.cast(applied, "int64"))
        due = pt.eq(counted, self.k)
        grads = list(grads)
        for i in step.live:
            acc = step.slots[i]["grad_accum"]
            summed = acc + grads[i]
            if applied is not None:
                summed = pt.switch(applied, summed, acc)
            step.updates.append((acc, pt.switch(due, pt.zeros_like(acc), summed)))
            grads[i] = summed / self.k  # the mean gradient, used when `due`
        step.updates.append((self.micro_steps, pt.switch(due, 0, counted)))
        return grads, due if applied is None else pt.and_(applied, due)


class ClipValue(SettingTransform):
    """Clip each gradient element to ``[-c, c]``."""

    name = keyword = "clip_value"

    def gradients(self, grads, applied, step):
        grads = list(grads)
        for i in step.live:
            c = pt.cast(self.setting, grads[i].dtype)
            grads[i] = pt.clip(grads[i], -c, c)
        return grads, applied


class ClipNorm(SettingTransform):
    """Rescale each parameter's gradient to norm at most ``c``: ``g c / max(|g|, c)``.

    On a stacked parameter, each member's slice by its own norm.
    """

    name = keyword = "clip_norm"
    reduces = "tensor"
    per_member = True

    def gradients(self, grads, applied, step):
        grads = list(grads)
        for i in step.live:
            g = grads[i]
            c = pt.cast(self.setting, g.dtype)
            axes = _member_axes(step.params[i], g.ndim)
            norm = pt.sqrt(pt.sum(g * g) if axes is None else pt.sum(g * g, axis=axes, keepdims=True))
            grads[i] = g * (c / pt.maximum(norm, c))
        return grads, applied


class ClipGlobalNorm(SettingTransform):
    """Rescale all gradients together to global norm at most ``c`` (Keras/optax)."""

    name = keyword = "clip_global_norm"
    reduces = "parameters"
    per_member = True

    def bind(self, owner, params):
        if any(seed_axis(p) for p in params) and stack_size(params) is None:
            raise ValueError(f"{owner}: clip_global_norm on stacked parameters needs every parameter stacked over "
                             f"one seed axis (the global norm is taken per member)")

    def gradients(self, grads, applied, step):
        if not step.live:
            return grads, applied
        grads = list(grads)
        c = self.setting
        members = seed_axis(step.params[step.live[0]])
        # Stacked: one norm per member, over all of that member's slices.
        squares = [pt.cast(pt.sum(grads[i] * grads[i], axis=_member_axes(step.params[i], grads[i].ndim) if members
                                  else None), "float64") for i in step.live]
        norm = pt.sqrt(pt.sum(pt.stack(squares), axis=0))
        factor = c / pt.maximum(norm, c)  # scale only when the norm exceeds c
        for i in step.live:
            grads[i] = grads[i] * member_view(pt.cast(factor, grads[i].dtype), grads[i].ndim)
        return grads, applied


class WeightDecay(Transform):
    r"""The rule's ``weight_decay`` :math:`\lambda`, on the parameters the mask picks.

    Coupled (L2, torch's ``weight_decay``): :math:`g \leftarrow g + \lambda p`.
    Decoupled (Loshchilov & Hutter; torch 2.x AdamW): :math:`p \leftarrow p - \eta\lambda p`
    before the rule's step, with :math:`\eta` the rule's ``learning_rate``.
    """

    name = keyword = "weight_decay"

    def __init__(self, decoupled: bool = False, mask: Any = None, owner: str = "Transform"):
        if not isinstance(decoupled, (bool, np.bool_)):
            raise TypeError(f"{owner}: decoupled_weight_decay must be True or False, got {decoupled!r}")
        self.decoupled, self.mask, self.flags = bool(decoupled), mask, None

    @classmethod
    def from_options(cls, owner, options):
        # Always: weight_decay is a hyperparameter of every rule (0 by default).
        return cls(options.get("decoupled_weight_decay", False), options.get("weight_decay_mask"), owner)

    def bind(self, owner, params):
        self.flags = resolve_mask(owner, "weight_decay_mask", self.mask, params, lambda p: True)

    def before_rule(self, index, param, grad, h):
        if not self.flags[index]:
            return param, grad
        if self.decoupled:
            return param * (1 - h.learning_rate * h.weight_decay), grad
        return param, grad + h.weight_decay * param


class MaxNorm(SettingTransform):
    r"""After the step, each unit's incoming weights to norm <= ``c`` (Lasagne's ``norm_constraint``).

    .. math:: w \leftarrow w \, \frac{\min(\lVert w \rVert_A, c)}{10^{-7} + \lVert w \rVert_A},
        \qquad \lVert w \rVert_A = \Big(\sum_{a \in A} w^2\Big)^{1/2}

    with the sum over the axes :math:`A` (kept, so each slice along the other axes has its
    own norm). :math:`A` is ``axes`` (Lasagne's ``norm_axes``), the same for every masked
    parameter; ``None`` takes Lasagne's default: a matrix's columns (``(0,)``), or every
    axis but the first of a 3- to 5-D convolution kernel. The mask picks the parameters
    (default: those with 2 or more dimensions); with explicit ``axes`` a masked vector is
    allowed, and every axis must exist in every masked parameter.
    """

    name = keyword = "max_norm"
    reduces = "tensor"
    per_member = True  # a stacked weight's columns are each member's own

    def __init__(self, value: float, mask: Any = None, owner: str = "Transform", axes: Any = None):
        super().__init__(value, owner)
        self.mask, self.flags = mask, None
        self.axes = self.check_axes(owner, axes)
        self._resolved: dict[int, tuple[int, ...]] = {}

    @staticmethod
    def check_axes(owner: str, axes: Any) -> tuple[int, ...] | None:
        """``axes`` as a tuple of ints (one int is one axis), or ``None``; anything else is a ValueError."""
        if axes is None:
            return None
        if isinstance(axes, (int, np.integer)) and not isinstance(axes, (bool, np.bool_)):
            axes = (axes,)
        if isinstance(axes, (str, bytes)) or not isinstance(axes, Sequence):
            raise ValueError(f"{owner}: max_norm_axes must be an int or a sequence of ints, got {axes!r}")
        if not axes:
            raise ValueError(f"{owner}: max_norm_axes must name at least one axis, got {axes!r}")
        for axis in axes:
            if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
                raise ValueError(f"{owner}: max_norm_axes must be an int or a sequence of ints, got {axes!r}")
        return tuple(int(a) for a in axes)

    @classmethod
    def from_options(cls, owner, options):
        if options.get("max_norm") is None:
            for keyword in ("max_norm_mask", "max_norm_axes"):
                if options.get(keyword) is not None:
                    raise ValueError(f"{owner}: {keyword} given without max_norm")
            return None
        return cls(options["max_norm"], options.get("max_norm_mask"), owner, options.get("max_norm_axes"))

    def bind(self, owner, params):
        # A stacked parameter's (symopt.seeds) axes start one later: the seed axis is not reduced.
        flags = resolve_mask(owner, "max_norm_mask", self.mask, params, lambda p: p.ndim - seed_axis(p) >= 2)
        resolved: dict[int, tuple[int, ...]] = {}
        for index, (param, flag) in enumerate(zip(params, flags)):
            if not flag:
                continue
            lead = int(seed_axis(param))
            ndim = param.ndim - lead
            if self.axes is None:
                if ndim < 2:
                    raise ValueError(f"{owner}: max_norm constrains weight columns; {_describe(param, index)} has {ndim} dimensions")
                resolved[index] = (lead,) if ndim == 2 else tuple(range(lead + 1, param.ndim))
                continue
            bad = [a for a in self.axes if not -ndim <= a < ndim]
            if bad:
                raise ValueError(
                    f"{owner}: max_norm_axes {self.axes} do not fit {_describe(param, index)}, which has "
                    f"{ndim} dimensions (axis {bad[0]}); give a max_norm_mask that leaves it out"
                )
            normalised = tuple(a % ndim + lead for a in self.axes)
            if len(set(normalised)) != len(normalised):
                raise ValueError(f"{owner}: max_norm_axes {self.axes} name an axis twice for {_describe(param, index)}")
            resolved[index] = tuple(sorted(normalised))
        self.flags, self._resolved = flags, resolved

    def after_rule(self, index, value, h):
        if not self.flags[index]:
            return value
        value = pt.as_tensor_variable(value)
        norms = pt.sqrt(pt.sum(value * value, axis=self._resolved[index], keepdims=True))
        target = pt.clip(norms, 0, pt.cast(self.setting, h.dtype))
        return value * (target / (1e-7 + norms))


#: The built-in controls, in the order they are applied; their keywords are accepted by
#: every rule's constructor. A new one is a class above and one entry here.
BUILTIN_ORDER: tuple[type[Transform], ...] = (
    SkipNonFinite,
    Accumulate,
    ClipValue,
    ClipNorm,
    ClipGlobalNorm,
    WeightDecay,
    MaxNorm,
)

#: Keywords of the built-ins with one positive number (``opt.settings``).
SETTING_KEYWORDS: tuple[str, ...] = tuple(t.keyword for t in BUILTIN_ORDER if issubclass(t, SettingTransform))


def coupling_transforms(opt: Any) -> list[str]:
    """Names of ``opt``'s active transforms that reduce over a whole tensor or over parameters.

    With a seed axis stacked into every parameter these would mix the seeds.
    """
    members = getattr(opt, "members", None)  # symopt.combine: each member's own transforms
    if isinstance(members, dict):
        return [name for member in members.values() for name in coupling_transforms(member)]
    inner = getattr(opt, "inner", None)  # EMA / Lookahead: the wrapped optimiser's
    if inner is not None and not hasattr(opt, "transforms"):
        return coupling_transforms(inner)
    return [t.name for t in getattr(opt, "transforms", ()) if t.active and t.reduces is not None]


def seed_coupling_transforms(opt: Any) -> list[str]:
    """Names of ``opt``'s active transforms that would mix the members of a seed stack.

    :func:`coupling_transforms` less those that reduce per member (``per_member``). A
    wrapper (EMA, Lookahead) over a per-member ``skip_nonfinite`` (or ``stoppable``) is
    listed too: its averages and synchronisation count applied steps for all members together.
    """
    members = getattr(opt, "members", None)
    if isinstance(members, dict):
        return [name for member in members.values() for name in seed_coupling_transforms(member)]
    inner = getattr(opt, "inner", None)
    if inner is not None:  # EMA / Lookahead: the wrapped optimiser's, and its per-member skipping
        wrapped = seed_coupling_transforms(inner)
        if getattr(inner, "member_skipped", None) is not None:
            wrapped.append(f"skip_nonfinite (under {type(opt).__name__})")
        if getattr(inner, "member_active", None) is not None:
            wrapped.append(f"stoppable (under {type(opt).__name__})")
        return wrapped
    return [t.name for t in getattr(opt, "transforms", ()) if t.active and t.reduces is not None and not t.per_member]
