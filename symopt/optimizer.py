"""The :class:`Optimizer` base class: a rule's math composed with the training controls.

A rule (SGD, Adam, ...) declares its hyperparameters (:class:`~symopt.hyperparameter.Hyperparameter`)
and per-parameter state ("slots") and implements :meth:`Optimizer.update_param`, the
math of one step for one parameter, receiving its hyperparameters explicitly. The
controls around it (clipping, weight decay, accumulation, non-finite skipping, max-norm,
the user's own) are :mod:`symopt.transforms`. This module holds what joins them, once:
gradients -> transforms -> rule -> cast -> updates, with the slots and the step counter.
The optimiser's other parts are its bases: param groups and getting/setting
hyperparameters (:mod:`symopt.groups`), ``state_dict``/``save``/``load``
(:mod:`symopt.state`), and the old rule API (:mod:`symopt._legacy_rules`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.tensor.variable import TensorVariable

from ._legacy_rules import OldRuleMixin, _callable_without_h, _takes_values
from .groups import TRANSFORM_SETTINGS, GroupsMixin, _Group, _HyperparameterTable
from .hyperparameter import ALIASES as _ALIASES  # symopt.updates reads optimizer._ALIASES
from .hyperparameter import HYPERPARAMETER_BOUNDS, Hyperparameter, Values, check_number, member_view
from .schedules import Schedule
from .state import StateMixin
from .transforms import (
    BUILTIN_ORDER,
    SETTING_KEYWORDS,
    Accumulate,
    SettingTransform,
    SkipNonFinite,
    Step,
    Transform,
    WeightDecay,
    _describe,
    stack_size,
)

__all__ = ["Optimizer", "Updates", "HYPERPARAMETER_BOUNDS", "TRANSFORM_SETTINGS"]


#: Attributes of the values a rule receives (``h.t``, ``h.cast``, ...), so no hyperparameter names.
_RESERVED = frozenset({"t", "dtype", "target", "cast", "float64", "keys"})


def _check_number(owner: str, name: str, value: Any) -> float:
    """Validate one numeric value by its name's range in :data:`HYPERPARAMETER_BOUNDS`."""
    return check_number(owner, name, value)


class Updates(OrderedDict):
    """The ``OrderedDict`` :meth:`Optimizer.updates` returns.

    ``applied`` repeats :meth:`Optimizer.build`'s second result (whether a call applies
    the update; ``None``: every call does) for code written before ``build`` existed,
    such as ``EMA(params).updates(opt.updates(loss))``. New code passes it explicitly.
    """

    applied: TensorVariable | None = None


class Optimizer(GroupsMixin, StateMixin, OldRuleMixin):
    """Base class of every update rule.

    Parameters
    ----------
    params
        The ``pytensor.shared`` float variables to optimise, or torch-style groups:
        a list of dicts ``{"params": [...], "<hyperparameter>": value, ...}`` whose
        values override the keyword arguments for that group's parameters.
    clip_value, clip_norm, clip_global_norm
        Clip each gradient element to ``[-c, c]``; rescale each parameter's gradient,
        then all gradients together, to norm at most ``c`` (``g * c / max(norm, c)``,
        Keras/optax semantics). Applied in that order, before weight decay.
    max_norm, max_norm_mask, max_norm_axes
        After the step, rescale each unit's incoming weights (columns of a matrix,
        Lasagne's norm constraint) to norm at most ``max_norm``; the mask (callable
        ``param -> bool`` or a list) picks the parameters, by default those with ``ndim >= 2``;
        ``max_norm_axes`` (Lasagne's ``norm_axes``) the axes each norm sums over.
    weight_decay_mask
        Which parameters weight decay applies to (callable or list), e.g.
        :func:`symopt.masks.exclude_bias_and_norm`; coupled and decoupled alike.
    decoupled_weight_decay
        ``True``: shrink each parameter by ``1 - learning_rate * weight_decay`` before the
        step (torch 2.x ``AdamW`` semantics) instead of adding ``weight_decay * p`` to the
        gradient; works with any rule. ``None``: the rule's default (AdamW and Lion decouple).
    accumulate
        ``k > 1``: ``k`` calls apply one update with the mean of their gradients.
    skip_nonfinite
        A call whose loss or gradients hold NaN/Inf changes nothing; ``opt.skipped``
        counts them.
    stoppable
        Stacked parameters only: ``opt.member_active`` (an int64 shared vector of 0/1 over
        the members, all 1) gates each member's update, so a member can be frozen (its
        parameters and state stop changing, the others go on) without recompiling, as
        :class:`~symopt.plateau.EarlyStopping` does. A frozen member's step count stops
        with it (``opt.member_steps``), as with ``skip_nonfinite``.
    transforms
        Further :class:`~symopt.transforms.Transform` objects, applied after the built-in
        ones in the order given.
    **hyperparameters
        Values for the rule's hyperparameters (see the rule's ``hyperparameters``),
        numbers or :mod:`symopt.schedules` objects; the rest take the rule's defaults.
        Every rule accepts ``weight_decay``. On parameters stacked over a seed axis
        (:class:`~symopt.seeds.SeedStack`) a number may also be a vector with one value
        per stack member (a float64 shared vector, see :meth:`set_hyperparameter`), and a
        schedule's parameters may be such vectors (:mod:`symopt.schedules`).

    The clip and ``max_norm`` values are shared scalars too, changed with
    :meth:`set_hyperparameter`.

    Notes
    -----
    A rule subclass declares

    * ``hyperparameters``: name -> :class:`~symopt.hyperparameter.Hyperparameter` (or a bare
      default, whose range then comes from :data:`HYPERPARAMETER_BOUNDS` by name). Numbers
      become float64 shared scalars, so :meth:`set_hyperparameter` changes a compiled
      function without recompiling; booleans are structural options fixed at
      construction (they change the graph).
    * ``slots``: per-parameter state, name -> initial fill value (or :meth:`slots_for`
      when options add state). Each slot is a shared variable of its parameter's shape and dtype.
    * ``scalar_slots`` (rarely): optimiser-wide scalars such as NAdam's momentum
      product, advanced once per step by :meth:`update_scalars`.

    and implements ``update_param(self, param, grad, state, h)``: ``h`` holds the
    hyperparameters as symbolic scalars in the parameter's dtype, the options as bools
    and ``h.t``, the 1-based step (:class:`~symopt.hyperparameter.Values`). Python float
    literals take the parameter's dtype too, so a rule written naively keeps float32
    parameters in float32 arithmetic; per-step scalar coefficients that cancel badly in
    float32 belong in ``with h.float64() as f: ...``.

    Three names for three things: ``opt.hyperparameters`` the rule's values (numbers per
    group, and options), ``opt.options`` the rule's structural booleans, ``opt.settings``
    the built-in transforms' numbers (``clip_norm``, ...). :meth:`get_hyperparameter` and
    :meth:`set_hyperparameter` reach all of them by name.

    Rules written before ``h`` existed (``update_param(self, param, grad, state)`` reading
    ``self.<hyperparameter>``, ``self.t`` and :meth:`float64_scalars`) keep working.
    """

    hyperparameters: ClassVar[Any] = _HyperparameterTable()
    #: ``stoppable=True`` (stacked parameters): the 0/1 per-member gate (see the constructor).
    #: Class defaults, set on the instance only when asked for.
    stoppable: bool = False
    member_active: SharedVariable | None = None
    slots: ClassVar[dict[str, float]] = {}
    scalar_slots: ClassVar[dict[str, float]] = {}
    #: Decoupled rules (AdamW, Lion) shrink the parameter by ``1 - lr * wd`` before the
    #: step instead of adding ``wd * p`` to the gradient (the constructor can override it).
    decoupled_weight_decay: ClassVar[bool] = False
    #: Rules whose decay is part of their own step (Adafactor, Prodigy, schedule-free AdamW)
    #: apply ``weight_decay`` in :meth:`update_param`; the weight-decay transform then
    #: neither adds it to the gradient nor shrinks the parameter, and ``weight_decay``
    #: reads 0 for parameters that ``weight_decay_mask`` excludes.
    weight_decay_in_rule: ClassVar[bool] = False
    #: Registry name, set by :func:`symopt.register`.
    name: ClassVar[str | None] = None
    #: ``False`` for a rule whose update reduces over a whole tensor or over all parameters
    #: (it would mix the members of a seed stack); its constructor then refuses stacked
    #: parameters, saying :attr:`unstackable_reason`, and ``bench-mnist`` trains it seed by seed.
    stackable: ClassVar[bool] = True
    #: Why a rule with ``stackable = False`` refuses seed stacks (the error message says it).
    unstackable_reason: ClassVar[str] = "its update reduces over whole tensors"
    #: ``False`` for a stackable rule whose state is not shaped like its parameter (Adafactor's
    #: factored moments), so a per-member value shaped ``(S, 1, ..., 1)`` does not broadcast
    #: against it: per-member hyperparameters and per-member ``skip_nonfinite`` (per-member
    #: step counts) are refused on a stack.
    per_member_values: ClassVar[bool] = True
    #: The parameters the rule updates, by their number of dimensions (a seed axis not
    #: counted): ``None`` for any parameter, ``(2,)`` for Muon's weight matrices. Code that
    #: builds one optimiser for a whole model (``symopt bench-mnist``) gives the others to
    #: a second rule through :func:`symopt.combine`.
    accepted_ndims: ClassVar[tuple[int, ...] | None] = None
    _declarations: ClassVar[dict[str, Hyperparameter]] = {
        "weight_decay": Hyperparameter(0.0, low=0.0, doc="weight decay (L2 or decoupled)")
    }
    _explicit_values: ClassVar[bool] = True
    _explicit_scalars: ClassVar[bool] = True
    #: Rules that differentiate the loss again inside the step (SAM, Sophia): ``grads=`` is
    #: refused and :meth:`from_loss` supplies the step's gradients and extra inputs.
    needs_loss: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = cls.__dict__.get("hyperparameters")
        if isinstance(declared, Mapping):
            inherited = {k: d for base in reversed(cls.__mro__[1:]) for k, d in getattr(base, "_declarations", {}).items()}
            table = {k: Hyperparameter.declare(v) for k, v in declared.items()}
            if "weight_decay" not in table:
                table["weight_decay"] = Optimizer._declarations["weight_decay"]
            for key, declaration in list(table.items()):
                # A bare number overriding a base class's declaration keeps its range.
                if declaration.by_name and key in inherited and not inherited[key].by_name:
                    base = inherited[key]
                    table[key] = Hyperparameter(declaration.default, base.low, base.high, base.low_inclusive,
                                                base.high_inclusive, base.doc)
            for key, declaration in table.items():
                if key in _RESERVED:
                    raise TypeError(f"{cls.__name__}: a hyperparameter cannot be called {key!r} (h.{key} is taken)")
                declaration.check(cls.__name__, key, declaration.default)
            cls._declarations = table
            cls.hyperparameters = _HyperparameterTable()
        if "update_param" in cls.__dict__:
            cls._explicit_values = _takes_values(cls.__dict__["update_param"], 4)
            if cls._explicit_values:
                cls.update_param = _callable_without_h(cls.__dict__["update_param"])  # type: ignore[method-assign]
        if "update_scalars" in cls.__dict__:
            cls._explicit_scalars = _takes_values(cls.__dict__["update_scalars"], 2)
            if cls._explicit_scalars:
                cls.update_scalars = _callable_without_h(cls.__dict__["update_scalars"])  # type: ignore[method-assign]
        if cls.decoupled_weight_decay and "learning_rate" not in cls._declarations:
            raise TypeError(f"{cls.__name__}: decoupled weight decay needs a 'learning_rate' hyperparameter")

    # ------------------------------------------------------------------ class-level queries (validate: symopt.groups)
    @classmethod
    def declarations(cls) -> dict[str, Hyperparameter]:
        """name -> :class:`~symopt.hyperparameter.Hyperparameter` of every hyperparameter and option."""
        return dict(cls._declarations)

    @classmethod
    def slots_for(cls, **options: Any) -> dict[str, float]:
        """The slots an instance built with these options keeps (name -> fill value).

        Override when an option adds state (Adam's ``amsgrad``); omitted options take
        their defaults.
        """
        return dict(cls.slots)

    # ------------------------------------------------------------------ construction
    def __init__(
        self,
        params: Sequence[SharedVariable] | Sequence[Mapping[str, Any]],
        *,
        clip_value: float | None = None,
        clip_norm: float | None = None,
        clip_global_norm: float | None = None,
        max_norm: float | None = None,
        max_norm_mask: Any = None,
        max_norm_axes: int | Sequence[int] | None = None,
        weight_decay_mask: Any = None,
        decoupled_weight_decay: bool | None = None,
        accumulate: int = 1,
        skip_nonfinite: bool = False,
        stoppable: bool = False,
        transforms: Sequence[Transform] = (),
        **hyperparameters: Any,
    ):
        owner = type(self).__name__
        self._h: Values | None = None
        #: While a step is built: the shared variable whose update is being built and its
        #: param group (static shape, tags such as ``tag.seed_axis``, the group's scalars),
        #: for rules that reduce over a tensor or a group.
        self.current_param: SharedVariable | None = None
        self.current_group: _Group | None = None
        if self.weight_decay_in_rule and decoupled_weight_decay is not None:
            raise ValueError(f"{owner} applies weight decay in its own step; decoupled_weight_decay does not apply to it")
        # Built-ins added to BUILTIN_ORDER after this signature was written arrive here.
        given = {"clip_value": clip_value, "clip_norm": clip_norm, "clip_global_norm": clip_global_norm, "max_norm": max_norm}
        given.update({k: hyperparameters.pop(k) for k in list(hyperparameters) if k in SETTING_KEYWORDS})
        self._check_keywords(hyperparameters)
        self.options: dict[str, bool] = {}
        numeric: dict[str, Any] = {}
        for key, declaration in self._declarations.items():
            value = hyperparameters.get(key, declaration.default)
            if declaration.is_option:
                self.options[key] = declaration.check(owner, key, value)
            else:
                numeric[key] = value if isinstance(value, Schedule) else declaration.check(owner, key, value)

        group_specs = self._split_groups(params)
        seen: dict[int, int] = {}
        self.params: list[SharedVariable] = []
        self.param_groups: list[_Group] = []
        for gi, (group_params, overrides) in enumerate(group_specs):
            for param in group_params:
                index = len(self.params)
                self._check_param(param, index)
                if id(param) in seen:
                    raise ValueError(
                        f"{owner}: {_describe(param, index)} is listed twice "
                        f"(first at index {seen[id(param)]}); pass each parameter once"
                    )
                seen[id(param)] = index
                self.params.append(param)
        if not self.params:
            raise ValueError(f"{owner}: no parameters to optimise (params is empty)")
        #: S when every parameter carries a leading seed axis of length S (symopt.seeds.SeedStack), else None.
        self.stack_size: int | None = stack_size(self.params)
        stacked = [i for i, p in enumerate(self.params) if getattr(p.tag, "seed_axis", False)]
        if not type(self).stackable and stacked:
            raise ValueError(f"{owner} refuses seed stacks (stackable = False): {_describe(self.params[stacked[0]], stacked[0])} "
                             f"has a seed axis, and {type(self).unstackable_reason}, so it would couple the members "
                             f"of the stack; train the seeds separately (symopt.Trainer per seed; bench-mnist does "
                             f"this for such a rule)")
        for gi, (group_params, overrides) in enumerate(group_specs):
            values: dict[str, SharedVariable | Schedule] = {}
            for key, default in numeric.items():
                value = overrides.get(key, default)
                where = owner if len(group_specs) == 1 else f"{owner} (param group {gi})"
                if isinstance(value, Schedule):
                    if value.n_members is not None:  # a schedule with per-member parameters
                        self._check_members(where, key, value.n_members)
                    values[key] = value
                    continue
                value = self._declarations[key].check(where, key, value)
                if isinstance(value, np.ndarray):
                    self._check_members(where, key, len(value))
                tag = key if len(group_specs) == 1 else f"{key}[{gi}]"
                values[key] = pytensor.shared(np.asarray(value, dtype=np.float64), name=f"{owner}.{tag}")
            self.param_groups.append(_Group(list(group_params), values))
        self.iterations: SharedVariable = pytensor.shared(np.int64(0), name=f"{owner}.iterations")

        # The training controls, in BUILTIN_ORDER, then the user's.
        if decoupled_weight_decay is None:
            decoupled_weight_decay = type(self).decoupled_weight_decay
        options = {
            **given,
            "accumulate": accumulate,
            "skip_nonfinite": skip_nonfinite,
            "stoppable": stoppable,
            "weight_decay_mask": weight_decay_mask,
            "max_norm_mask": max_norm_mask,
            "max_norm_axes": max_norm_axes,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        if isinstance(transforms, Transform) or not isinstance(transforms, Sequence):
            raise TypeError(f"{owner}: transforms must be a list of symopt.transforms.Transform, got {transforms!r}")
        for index, transform in enumerate(transforms):
            if not isinstance(transform, Transform):
                raise TypeError(f"{owner}: transforms[{index}] is a {type(transform).__name__}, not a symopt.transforms.Transform")
        built = [t for t in (cls.from_options(owner, options) for cls in BUILTIN_ORDER) if t is not None]
        self.transforms: list[Transform] = [*built, *transforms]
        for transform in self.transforms:
            transform.bind(owner, self.params)
        self.settings: dict[str, SharedVariable] = {
            t.keyword: t.setting for t in self.transforms if isinstance(t, SettingTransform) and t.keyword in SETTING_KEYWORDS
        }
        builtin = {type(t): t for t in built}
        self.accumulate: int = builtin[Accumulate].k
        self.skip_nonfinite: bool = builtin[SkipNonFinite].enabled
        self.decoupled: bool = builtin[WeightDecay].decoupled
        #: Applied-or-not bookkeeping: micro-steps of the current accumulation, skipped steps.
        self.micro_steps: SharedVariable = builtin[Accumulate].micro_steps
        self.skipped: SharedVariable = builtin[SkipNonFinite].skipped
        #: Per stack member, the calls skipped as non-finite (stacked parameters only).
        self.member_skipped: SharedVariable | None = builtin[SkipNonFinite].member_skipped
        # The per-member gate (symopt.transforms.SkipNonFinite): non-finite members skipped,
        # stopped members frozen. Set on the instance only when asked for, so the
        # description of other optimisers (checkpoint signatures) is unchanged.
        if builtin[SkipNonFinite].stoppable:
            self.stoppable = True
            self.member_active = builtin[SkipNonFinite].member_active
        gated = [k for k, on in (("skip_nonfinite", self.skip_nonfinite), ("stoppable", self.stoppable)) if on]
        per_member_skip = bool(gated) and self.stack_size is not None
        if per_member_skip and not type(self).per_member_values:
            raise ValueError(f"{owner}: {gated[0]} on a seed stack keeps a step count per member, which this "
                             f"rule's state cannot take (per_member_values is False); train the seeds separately")
        if per_member_skip and self.accumulate > 1:
            raise ValueError(f"{owner}: {gated[0]} with accumulate > 1 is not supported on stacked parameters "
                             f"(each member would need its own accumulation count)")
        #: Per stack member, the applied steps (stacked, skip_nonfinite or stoppable): a skipped
        #: member's next step is its own step t, as in its separate run. ``iterations`` then
        #: counts the calls in which at least one member stepped (schedules follow it).
        self.member_steps: SharedVariable | None = None
        if per_member_skip:
            self.member_steps = pytensor.shared(np.zeros(self.stack_size, dtype=np.int64), name=f"{owner}.member_steps")
        # Optimiser-wide scalars are per member when their values can differ between members.
        self._member_scalars = self.stack_size is not None and (per_member_skip or any(
            (v.n_members is not None) if isinstance(v, Schedule) else v.ndim == 1
            for g in self.param_groups for v in g.values.values()))
        for group in self.param_groups:
            group.scalars = {
                key: pytensor.shared(np.full(self.stack_size, fill, dtype=np.float64) if self._member_scalars
                                     else np.float64(fill), name=f"{owner}.{key}")
                for key, fill in self.scalar_slots.items()
            }

        slots = self._all_slots()
        self.state: list[dict[str, SharedVariable]] = [
            {slot: self._make_slot(param, index, slot, fill) for slot, fill in slots.items()}
            for index, param in enumerate(self.params)
        ]

    def _all_slots(self) -> dict[str, float]:
        """The rule's slots plus the transforms' (the accumulator when ``accumulate > 1``)."""
        slots = self.active_slots()
        for transform in self.transforms:
            for name, fill in transform.slots.items():
                if name in slots:
                    raise ValueError(f"{type(self).__name__}: transform {transform.name!r} declares slot {name!r}, which is taken")
                slots[name] = fill
        return slots

    def _make_slot(self, param: SharedVariable, index: int, slot: str, fill: float) -> SharedVariable:
        """The one place state variables are made: the parameter's shape and dtype."""
        transform_slots = {name for t in self.transforms for name in t.slots}
        shape = param.get_value(borrow=True).shape if slot in transform_slots else self.slot_shape(param, slot)
        label = param.name or f"param{index}"
        return pytensor.shared(np.full(shape, fill, dtype=param.dtype), name=f"{label}.{slot}")

    def slot_shape(self, param: SharedVariable, slot: str) -> tuple[int, ...]:
        """Shape of the rule's ``slot`` for ``param``: the parameter's; override for factored state (Adafactor)."""
        return tuple(param.get_value(borrow=True).shape)

    # ------------------------------------------------------------------ the rule API
    def active_slots(self) -> dict[str, float]:
        """Slots this instance keeps: :meth:`slots_for` its options."""
        return self.slots_for(**self.options)

    def update_param(
        self, param: TensorVariable, grad: TensorVariable, state: dict[str, TensorVariable], h: Values
    ) -> tuple[TensorVariable, dict[str, TensorVariable]]:
        """One step for one parameter: return the new value and the new slot values.

        ``grad`` already includes coupled weight decay; with decoupled decay ``param``
        is already shrunk by ``1 - lr * wd``. ``state`` maps slot names to their
        shared variables and scalar-slot names to their updated float64 values; ``h``
        holds the hyperparameters (:class:`~symopt.hyperparameter.Values`).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement update_param")

    def update_scalars(self, state: dict[str, TensorVariable], h: Values) -> dict[str, TensorVariable]:
        """New values of the optimiser-wide ``scalar_slots`` (float64), once per step."""
        return {}

    def from_loss(
        self, loss: TensorVariable, grads: list[TensorVariable | None]
    ) -> tuple[list[TensorVariable | None], list[dict[str, TensorVariable]]]:
        """Rules with ``needs_loss``: the gradients the step uses and per-parameter extra inputs.

        Called once per :meth:`build` with the scalar loss and its gradients (in the
        parameters' dtypes, ``None`` for unused parameters). Returns the gradients the
        transforms and :meth:`update_param` receive, and per parameter a dict of further
        symbolic values that :meth:`update_param` finds in ``state`` under their names
        (a Hessian-diagonal estimate, ...).
        """
        return grads, [{} for _ in grads]

    def update_group_scalars(
        self,
        state: dict[str, TensorVariable],
        h: Values,
        params: list[TensorVariable],
        grads: list[TensorVariable],
        slots: list[dict[str, TensorVariable]],
    ) -> dict[str, TensorVariable]:
        """:meth:`update_scalars` seeing the whole param group, for scalars that reduce over
        all its parameters (Prodigy's distance estimate): the live parameters before this
        step, their gradients (after the gradient transforms, before coupled weight decay)
        and their slots. The default calls :meth:`update_scalars`."""
        return self._rule_scalars(state, h)

    # ------------------------------------------------------------------ gradients
    def _gradients(
        self, loss: Any, grads: Sequence[Any] | None, allow_unused: bool
    ) -> list[TensorVariable | None]:
        owner = type(self).__name__
        if (loss is None) == (grads is None):
            raise TypeError(f"{owner}.updates needs exactly one of loss or grads=")
        if grads is not None and self.needs_loss:
            raise ValueError(
                f"{owner} differentiates the loss again inside its step, so it needs the loss: "
                f"call updates(loss), not updates(grads=...)"
            )
        if grads is not None:
            if len(grads) != len(self.params):
                raise ValueError(f"{owner}: got {len(grads)} gradients for {len(self.params)} parameters")
            out = []
            for index, (param, grad) in enumerate(zip(self.params, grads)):
                grad = pt.as_tensor_variable(grad)
                shape = param.get_value(borrow=True).shape
                where = f"gradient for {_describe(param, index)}"
                if grad.ndim != len(shape):
                    raise ValueError(f"{owner}: {where} has {grad.ndim} dimensions, the parameter has shape {shape}")
                if any(s is not None and s != want for s, want in zip(grad.type.shape, shape)):
                    raise ValueError(f"{owner}: {where} has shape {grad.type.shape}, the parameter has shape {shape}")
                if grad.dtype not in ("float16", "float32", "float64"):
                    raise TypeError(f"{owner}: {where} has dtype {grad.dtype}, expected a float")
                if any(s is None for s in grad.type.shape):
                    grad = pt.specify_shape(grad, shape)  # a wrong shape fails loudly at run time
                out.append(grad)
            return out

        loss = pt.as_tensor_variable(loss)
        if loss.ndim != 0:
            raise ValueError(f"{owner}: the loss must be a scalar, got a {loss.ndim}-d tensor (did you forget .mean()?)")
        if loss.dtype not in ("float16", "float32", "float64"):
            raise TypeError(f"{owner}: the loss must be a float scalar, got dtype {loss.dtype}")
        grads = pytensor.grad(loss, self.params, disconnected_inputs="ignore", return_disconnected="none")
        missing = [i for i, g in enumerate(grads) if g is None]
        if missing and not allow_unused:
            names = ", ".join(_describe(self.params[i], i) for i in missing)
            raise ValueError(
                f"{owner}: the loss does not depend on {names}; remove it from params or pass "
                f"allow_unused=True to leave it (and its state) unchanged"
            )
        return grads

    # ------------------------------------------------------------------ updates
    def build(
        self, loss: Any = None, *, grads: Sequence[Any] | None = None, allow_unused: bool = False
    ) -> tuple[Updates, TensorVariable | None]:
        """The symbolic updates of one step and whether a call applies them.

        Same arguments as :meth:`updates`. Returns ``(updates, applied)``: ``applied`` is
        the symbolic boolean telling whether a call applies the update (it does not while
        accumulating or on a skipped non-finite step), or ``None`` when every call does.
        Wrappers (:class:`~symopt.wrappers.EMA`, :class:`~symopt.wrappers.Lookahead`)
        take it from here to move only with the optimiser.
        """
        member_losses = None
        if loss is not None:
            loss = pt.as_tensor_variable(loss)
            if loss.ndim == 1 and self.stack_size is not None:
                # One loss per stack member: each member's gradient is that of its own loss.
                member_losses, loss = loss, loss.sum()
            else:
                member_losses = getattr(loss.tag, "member_losses", None)
        grads = self._gradients(loss, grads, allow_unused)
        grads = [None if g is None else (pt.cast(g, p.dtype) if g.dtype != p.dtype else g) for p, g in zip(self.params, grads)]
        extras: list[dict[str, TensorVariable]] = [{} for _ in grads]
        if self.needs_loss:
            grads, extras = self.from_loss(pt.as_tensor_variable(loss), grads)
        live = [i for i, g in enumerate(grads) if g is not None]
        active = [t for t in self.transforms if t.active]

        # Phase 1: the gradients of all parameters together, and the applied flag.
        step = Step(self.params, live, self.state, loss, member_losses=member_losses)
        applied: TensorVariable | None = None
        for transform in active:
            grads, applied = transform.gradients(list(grads), applied, step)

        # Phase 2: per parameter, the transforms around the rule's step.
        grad_of = {id(p): g for p, g in zip(self.params, grads)}
        index_of = {id(p): i for i, p in enumerate(self.params)}
        transform_slots = {name for t in self.transforms for name in t.slots}
        out = Updates()
        new_state: list[tuple[SharedVariable, TensorVariable]] = []
        decay = next((t for t in active if isinstance(t, WeightDecay)), None)
        for group in self.param_groups:
            self.current_group = group
            live_params = [p for p in group.params if grad_of[id(p)] is not None]
            with pytensor.config.change_flags(floatX="float64"):
                h64 = self._values(group, "float64", "float64", ndim=1 if self._member_scalars else 0)
                scalars = self.update_group_scalars(
                    dict(group.scalars), h64, live_params, [grad_of[id(p)] for p in live_params],
                    [self.state[index_of[id(p)]] for p in live_params],
                )
                scalars = self._checked(scalars, group.scalars, "update_scalars")
                if self._member_scalars:  # a value the members share, kept per member
                    scalars = {k: pt.broadcast_to(v, (self.stack_size,)) if pt.as_tensor_variable(v).ndim == 0
                               else v for k, v in scalars.items()}
            new_state += [(group.scalars[k], v) for k, v in scalars.items()]
            for param in group.params:
                grad = grad_of[id(param)]
                if grad is None:
                    continue
                index = index_of[id(param)]
                slots = {k: v for k, v in self.state[index].items() if k not in transform_slots}
                own_decay = self.weight_decay_in_rule and decay is not None
                with pytensor.config.change_flags(floatX=param.dtype):
                    h = self._values(group, param.dtype, param.dtype, no_decay=own_decay and not decay.flags[index],
                                     ndim=param.ndim if self.stack_size else 0)
                    current, view = self._same_static_shape(param, grad, slots)
                    for transform in active:
                        if not (own_decay and transform is decay):
                            current, grad = transform.before_rule(index, current, grad, h)
                    # float64: use inside h.float64() and cast; per member as (S, 1, ..., 1)
                    view.update({k: member_view(v, param.ndim) for k, v in scalars.items()})
                    view.update(extras[index])
                    self.current_param = param
                    try:
                        new_value, slot_values = self._rule_step(current, grad, view, h)
                    finally:
                        self.current_param = None
                    for transform in active:
                        new_value = transform.after_rule(index, new_value, h)
                slot_values = self._checked(slot_values, slots, "update_param")
                out[param] = self._cast_to(param, new_value)
                new_state += [(slots[k], v) for k, v in slot_values.items()]
        self.current_group = None
        for var, value in new_state:
            out[var] = self._cast_to(var, value)
        if applied is not None and applied.ndim == 1:
            # Per member (stacked, skip_nonfinite or stoppable): every variable here has the stack axis first.
            for var in out:
                out[var] = pt.switch(member_view(applied, var.ndim), out[var], var)
            out[self.iterations] = self.iterations + pt.cast(pt.any(applied), "int64")
            out[self.member_steps] = self.member_steps + pt.cast(applied, "int64")
        elif applied is not None:  # a step that is not applied leaves everything as it was
            for var in out:
                out[var] = pt.switch(applied, out[var], var)
            out[self.iterations] = self.iterations + pt.cast(applied, "int64")
        else:
            out[self.iterations] = self.iterations + 1
        for var, value in step.updates:
            out[var] = self._cast_to(var, value)
        out.applied = applied
        return out, applied

    def updates(
        self, loss: Any = None, *, grads: Sequence[Any] | None = None, allow_unused: bool = False
    ) -> Updates:
        """Symbolic updates of one optimiser step, for ``pytensor.function(updates=...)``.

        Parameters
        ----------
        loss
            Scalar float loss; gradients come from ``pytensor.grad(loss, params)``.
        grads
            Alternatively, one gradient per parameter, computed by the caller.
        allow_unused
            Leave parameters the loss does not depend on (and their state) unchanged
            instead of raising.

        Returns
        -------
        Updates
            An ``OrderedDict``: new values of the parameters, then of every state
            variable, then of the step counter, then the accumulation / skip
            bookkeeping; each cast to its variable's dtype. :meth:`build` also returns
            whether a call applies the update.
        """
        return self.build(loss, grads=grads, allow_unused=allow_unused)[0]

    @staticmethod
    def _same_static_shape(
        param: SharedVariable, grad: TensorVariable, slots: dict[str, SharedVariable]
    ) -> tuple[TensorVariable, dict[str, TensorVariable]]:
        """The parameter and its slots, with the gradient's static shape where it knows more.

        A gradient given through ``grads=`` carries its parameter's shape (``specify_shape``)
        while the shared variables have unknown shapes. The fused update then has a
        static-shape output type that differs from the variables' types, and PyTensor's
        in-place rewrite (which needs equal types) left every such update out of place:
        new parameter and slot arrays allocated on every step. Giving the parameter and
        slots the same static shape makes the types agree, so the update overwrites them.
        """
        shape = grad.type.shape
        if all(g is None or g == p for g, p in zip(shape, param.type.shape)):
            return param, dict(slots)
        view = {k: pt.specify_shape(v, shape) if v.type.ndim == len(shape) else v for k, v in slots.items()}
        return pt.specify_shape(param, shape), view

    def _checked(self, values: Any, allowed: Mapping[str, Any], hook: str) -> dict[str, Any]:
        if not isinstance(values, Mapping):
            raise TypeError(f"{type(self).__name__}.{hook} must return a dict of new state values, got {values!r}")
        unknown = set(values) - set(allowed)
        if unknown:
            raise KeyError(
                f"{type(self).__name__}.{hook} returned state {sorted(unknown)} that is not declared "
                f"(declared: {sorted(allowed)})"
            )
        return dict(values)

    def _cast_to(self, var: SharedVariable, value: Any) -> TensorVariable:
        value = pt.as_tensor_variable(value)
        if value.ndim != var.ndim:
            raise ValueError(
                f"{type(self).__name__}: the new value of {var.name or var} has {value.ndim} dimensions, "
                f"the variable has {var.ndim}"
            )
        return pt.cast(value, var.dtype) if value.dtype != var.dtype else value

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._current_hyperparameters().items())
        return f"{type(self).__name__}({args})"
