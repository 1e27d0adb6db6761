"""The :class:`Optimizer` base class: a rule's math composed with the training controls.

A rule (SGD, Adam, ...) declares its hyperparameters (:class:`~symopt.hyperparameter.Hyperparameter`)
and per-parameter state ("slots") and implements :meth:`Optimizer.update_param`, the
math of one step for one parameter, receiving its hyperparameters explicitly. The
controls around it (clipping, weight decay, accumulation, non-finite skipping, max-norm,
the user's own) are :mod:`symopt.transforms`. This module holds what joins them, once:
gradients, param groups, slot allocation, update assembly and casting, the step counter,
getting and setting hyperparameters, and the state (``state_dict``, ``save``/``load``).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.tensor.variable import TensorVariable

from ._npz import StateFile
from .hyperparameter import ALIASES as _ALIASES
from .hyperparameter import HYPERPARAMETER_BOUNDS, Hyperparameter, Values, check_number, member_view
from .schedules import Schedule
from .transforms import (
    BUILTIN_ORDER,
    SETTING_KEYWORDS,
    Accumulate,
    MaxNorm,
    SettingTransform,
    SkipNonFinite,
    Step,
    Transform,
    WeightDecay,
    _describe,
    stack_size,
)

__all__ = ["Optimizer", "Updates", "HYPERPARAMETER_BOUNDS", "TRANSFORM_SETTINGS"]

#: Constructor keywords of every rule that transform gradients or constrain parameters;
#: given a value they become shared scalars, changeable like hyperparameters. Derived
#: from :data:`symopt.transforms.BUILTIN_ORDER`.
TRANSFORM_SETTINGS = SETTING_KEYWORDS

#: The constructor keywords that configure transforms rather than the rule.
_TRANSFORM_KEYWORDS = ("max_norm_mask", "max_norm_axes", "weight_decay_mask", "accumulate", "skip_nonfinite", "decoupled_weight_decay")


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


class _HyperparameterTable:
    """``Rule.hyperparameters`` gives the defaults; ``opt.hyperparameters`` the current values."""

    def __get__(self, obj: Optimizer | None, owner: type[Optimizer]) -> dict[str, Any]:
        if obj is None:
            return {k: d.default for k, d in owner._declarations.items()}
        return obj._current_hyperparameters()


class _Group:
    """Parameters that share one set of hyperparameter values (torch's param group)."""

    def __init__(self, params: list[SharedVariable], values: dict[str, SharedVariable | Schedule]):
        self.params = params
        self.values = values  # numeric hyperparameter name -> float64 shared scalar or a Schedule
        self.scalars: dict[str, SharedVariable] = {}

    def symbolic(self, name: str, iterations: SharedVariable) -> TensorVariable:
        value = self.values[name]
        return value.symbolic(iterations) if isinstance(value, Schedule) else value

    def current(self, name: str, iterations: SharedVariable) -> float | np.ndarray:
        """The current value: a float, or a copy of the per-member vector."""
        value = self.values[name]
        if isinstance(value, Schedule):
            return float(value(iterations.get_value()))
        current = value.get_value()
        return float(current) if current.ndim == 0 else current.copy()


def _takes_values(function: Callable[..., Any], positional: int) -> bool:
    """Whether a rule hook takes its hyperparameters explicitly (one more positional argument)."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return False
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds for p in parameters) > positional or any(
        p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters
    )


def _callable_without_h(method: Callable[..., Any]) -> Callable[..., Any]:
    """A new-style hook that an old-style subclass may still call as ``super().update_param(p, g, s)``:
    without ``h`` it gets the values the old-style call is being built with."""
    if getattr(method, "_h_optional", False):
        return method

    @functools.wraps(method)
    def hook(self: Any, *args: Any) -> Any:
        if len(args) == method.__code__.co_argcount - 2:  # h left out
            args = (*args, self.__dict__.get("_h"))
        return method(self, *args)

    hook._h_optional = True  # type: ignore[attr-defined]
    return hook


class Optimizer:
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
    transforms
        Further :class:`~symopt.transforms.Transform` objects, applied after the built-in
        ones in the order given.
    **hyperparameters
        Values for the rule's hyperparameters (see the rule's ``hyperparameters``),
        numbers or :mod:`symopt.schedules` objects; the rest take the rule's defaults.
        Every rule accepts ``weight_decay``. On parameters stacked over a seed axis
        (:class:`~symopt.seeds.SeedStack`) a number may also be a vector with one value
        per stack member (a float64 shared vector, see :meth:`set_hyperparameter`).

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

    # ------------------------------------------------------------------ class-level queries
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

    @classmethod
    def validate(cls, **hyperparameters: Any) -> dict[str, Any]:
        """Check a configuration as the constructor would, without parameters.

        Accepts the rule's hyperparameters and options and the numeric transform keywords
        (``clip_norm``, ``accumulate``, ...); raises the constructor's ``TypeError`` /
        ``ValueError`` for the first bad one. Returns the full configuration: defaults
        filled in, numbers as floats (schedules as given).
        """
        owner = cls.__name__
        given = dict(hyperparameters)
        settings = {k: given.pop(k) for k in list(given) if k in SETTING_KEYWORDS}
        transform_options = {k: given.pop(k) for k in list(given) if k in _TRANSFORM_KEYWORDS}
        cls._check_keywords_of(owner, given)
        out: dict[str, Any] = {}
        for key, declaration in cls._declarations.items():
            value = given.get(key, declaration.default)
            out[key] = value if isinstance(value, Schedule) and not declaration.is_option else declaration.check(owner, key, value)
        for key, value in settings.items():
            if value is not None:
                out[key] = _builtin(key).check(owner, value)
        if "accumulate" in transform_options:
            out["accumulate"] = Accumulate(transform_options["accumulate"], owner).k
        if "skip_nonfinite" in transform_options:
            out["skip_nonfinite"] = SkipNonFinite(transform_options["skip_nonfinite"], owner).enabled
        if transform_options.get("decoupled_weight_decay") is not None:
            out["decoupled_weight_decay"] = WeightDecay(transform_options["decoupled_weight_decay"], owner=owner).decoupled
        if transform_options.get("max_norm_axes") is not None:
            out["max_norm_axes"] = MaxNorm.check_axes(owner, transform_options["max_norm_axes"])
        return out

    @classmethod
    def _check_keywords_of(cls, owner: str, given: Mapping[str, Any]) -> None:
        known = list(cls._declarations)
        for key in given:
            if key in cls._declarations:
                continue
            hint = _ALIASES.get(key) or next(iter(difflib.get_close_matches(key, known, n=1)), None)
            did_you_mean = f" (did you mean {hint!r}?)" if hint else ""
            raise TypeError(
                f"{owner} got an unknown hyperparameter {key!r}{did_you_mean}; "
                f"it accepts: {', '.join(known)}"
            )

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
                if isinstance(value, Schedule):
                    values[key] = value
                    continue
                where = owner if len(group_specs) == 1 else f"{owner} (param group {gi})"
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
        per_member_skip = self.skip_nonfinite and self.stack_size is not None
        if per_member_skip and not type(self).per_member_values:
            raise ValueError(f"{owner}: skip_nonfinite on a seed stack keeps a step count per member, which this "
                             f"rule's state cannot take (per_member_values is False); train the seeds separately")
        if per_member_skip and self.accumulate > 1:
            raise ValueError(f"{owner}: skip_nonfinite with accumulate > 1 is not supported on stacked parameters "
                             f"(each member would need its own accumulation count)")
        #: Per stack member, the applied steps (stacked parameters with skip_nonfinite): a skipped
        #: member's next step is its own step t, as in its separate run. ``iterations`` then
        #: counts the calls in which at least one member stepped (schedules follow it).
        self.member_steps: SharedVariable | None = None
        if per_member_skip:
            self.member_steps = pytensor.shared(np.zeros(self.stack_size, dtype=np.int64), name=f"{owner}.member_steps")
        # Optimiser-wide scalars are per member when their values can differ between members.
        self._member_scalars = self.stack_size is not None and (per_member_skip or any(
            not isinstance(v, Schedule) and v.ndim == 1 for g in self.param_groups for v in g.values.values()))
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

    def _check_members(self, owner: str, name: str, length: int) -> None:
        """A per-member vector needs stacked parameters, one value per member and a rule that takes it."""
        if not type(self).per_member_values:
            raise ValueError(f"{owner}: hyperparameter {name!r} cannot be a per-member vector: this rule's state is "
                             f"not shaped like its parameters (per_member_values is False); give one number")
        if self.stack_size is None:
            raise ValueError(
                f"{owner}: hyperparameter {name!r} is a vector of {length} values (one per stack member), but the "
                f"parameters are not stacked over a seed axis (symopt.seeds.SeedStack); give one number"
            )
        if length != self.stack_size:
            raise ValueError(
                f"{owner}: hyperparameter {name!r} has {length} values but the stack has {self.stack_size} members; "
                f"give one value per member"
            )

    def _check_setting(self, key: str, value: Any) -> float:
        return _builtin(key).check(type(self).__name__, value)

    def _all_slots(self) -> dict[str, float]:
        """The rule's slots plus the transforms' (the accumulator when ``accumulate > 1``)."""
        slots = self.active_slots()
        for transform in self.transforms:
            for name, fill in transform.slots.items():
                if name in slots:
                    raise ValueError(f"{type(self).__name__}: transform {transform.name!r} declares slot {name!r}, which is taken")
                slots[name] = fill
        return slots

    def _check_keywords(self, given: Mapping[str, Any]) -> None:
        self._check_keywords_of(type(self).__name__, given)

    def _split_groups(self, params: Any) -> list[tuple[list[Any], dict[str, Any]]]:
        owner = type(self).__name__
        if isinstance(params, (SharedVariable, Mapping)) or not isinstance(params, Sequence):
            if isinstance(params, Mapping):
                params = [params]
            elif isinstance(params, SharedVariable):
                raise TypeError(f"{owner}: params must be a list of shared variables, got a single {params!r}")
            else:
                params = list(params)
        if params and all(isinstance(p, Mapping) for p in params):
            groups = []
            for gi, spec in enumerate(params):
                if "params" not in spec:
                    raise ValueError(f"{owner}: param group {gi} has no 'params' entry")
                overrides = {k: v for k, v in spec.items() if k != "params"}
                self._check_keywords(overrides)
                for key in overrides:
                    if self._declarations[key].is_option:
                        raise ValueError(
                            f"{owner}: option {key!r} changes the graph and applies to all groups; "
                            f"pass it as a keyword argument, not in param group {gi}"
                        )
                groups.append((list(spec["params"]), overrides))
            return groups
        if any(isinstance(p, Mapping) for p in params):
            raise TypeError(f"{owner}: params mixes shared variables and param-group dicts; use one or the other")
        return [(list(params), {})]

    def _check_param(self, param: Any, index: int) -> None:
        owner = type(self).__name__
        if not isinstance(param, SharedVariable) or not isinstance(param.type, pt.TensorType):
            raise TypeError(
                f"{owner}: {_describe(param, index)} must be a pytensor.shared tensor variable, "
                f"got {type(param).__name__}"
            )
        if param.dtype not in ("float16", "float32", "float64"):
            raise TypeError(f"{owner}: {_describe(param, index)} has dtype {param.dtype}; only float parameters can be optimised")

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

    def _values(self, group: _Group, dtype: str, target: str, no_decay: bool = False, ndim: int = 0) -> Values:
        """The group's hyperparameters in ``dtype``, built under the current floatX
        (``no_decay``: ``weight_decay`` reads 0, for a masked parameter of a rule that decays itself).

        Per-member values (vectors over the stack axis) come shaped ``(S, 1, ..., 1)`` to
        broadcast against an ``ndim``-d stacked tensor.
        """
        values: dict[str, Any] = {}
        for name in group.values:
            var = group.symbolic(name, self.iterations)
            if no_decay and name == "weight_decay":
                var = pt.zeros((), dtype=var.dtype)
            values[name] = member_view(pt.cast(var, dtype) if var.dtype != dtype else var, ndim)
        values.update(self.options)
        steps = self.iterations if self.member_steps is None else member_view(self.member_steps, ndim)
        t = pt.cast(steps + 1, dtype)
        return Values(values, t, dtype, target, lambda d, tg: self._values(group, d, tg, no_decay, ndim))

    @contextlib.contextmanager
    def _legacy(self, h: Values) -> Iterator[None]:
        # Rules written before `h` read self.<hyperparameter> (__getattr__ below).
        saved, self._h = self._h, h
        try:
            yield
        finally:
            self._h = saved

    # -- the old rule API: self.<hyperparameter>, self.t, float64_scalars() -------------
    @property
    def t(self) -> TensorVariable:
        """Old-style rules: the 1-based number of the step being built, as a symbolic float."""
        h = self.__dict__.get("_h")
        return h.t if h is not None else pt.cast(self.iterations + 1, "float64")

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: old-style rules read hyperparameters here.
        h = self.__dict__.get("_h")
        if h is not None and name in h:
            return h[name]
        groups = self.__dict__.get("param_groups")
        if groups:
            if name in groups[0].values:
                return groups[0].symbolic(name, self.iterations)
            if name in self.__dict__.get("options", {}):
                return self.options[name]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    @contextlib.contextmanager
    def float64_scalars(self) -> Iterator[Callable[[Any], TensorVariable]]:
        """Old-style rules: ``self.<hyperparameter>`` in float64 inside the block.

        Yields a function casting a finished coefficient back to the parameter's dtype.
        New rules use ``with h.float64() as f:`` and ``f.cast``.
        """
        h = self.__dict__.get("_h")
        dtype = h.dtype if h is not None else "float64"
        with pytensor.config.change_flags(floatX="float64"):
            with self._legacy(h._make("float64", dtype) if h is not None else None):
                yield lambda value: pt.cast(value, dtype)

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
            # Per member (stacked, skip_nonfinite): every variable here has the stack axis first.
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

    def _rule_step(self, param: Any, grad: Any, state: dict[str, Any], h: Values) -> Any:
        if self._explicit_values:
            return self.update_param(param, grad, state, h)
        with self._legacy(h):
            return self.update_param(param, grad, state)  # type: ignore[call-arg]

    def _rule_scalars(self, state: dict[str, Any], h: Values) -> Any:
        if self._explicit_scalars:
            return self.update_scalars(state, h)
        with self._legacy(h):
            return self.update_scalars(state)  # type: ignore[call-arg]

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

    # ------------------------------------------------------------------ hyperparameters
    def _group_index(self, group: int) -> _Group:
        if not isinstance(group, (int, np.integer)) or not 0 <= group < len(self.param_groups):
            raise IndexError(f"{type(self).__name__}: no param group {group!r} (there are {len(self.param_groups)})")
        return self.param_groups[int(group)]

    def set_hyperparameter(self, name: str, value: float | Sequence[float] | np.ndarray, group: int | None = None) -> None:
        """Change a numeric hyperparameter in place; compiled functions see it next call.

        ``group=None`` sets it for every param group. A hyperparameter built per stack
        member (a vector) takes a vector (one value per member) or one number (every member).
        """
        owner = type(self).__name__
        if name in self.options:
            raise ValueError(f"{owner}: {name!r} is a structural option fixed at construction; build a new optimiser")
        if name in TRANSFORM_SETTINGS:
            if name not in self.settings:
                raise ValueError(f"{owner}: {name} was not enabled at construction; pass {name}=... to the constructor")
            self.settings[name].set_value(np.float64(self._check_setting(name, value)))
            return
        if name not in self._declarations:
            self._check_keywords({name: value})
        value = self._declarations[name].check(owner, name, value)
        groups = self.param_groups if group is None else [self._group_index(group)]
        for g in groups:
            if isinstance(g.values[name], Schedule):
                raise ValueError(f"{owner}: {name} follows a schedule; change it with schedule.set(...)")
            if isinstance(value, np.ndarray):
                self._check_members(owner, name, len(value))
                if g.values[name].ndim == 0:
                    raise ValueError(f"{owner}: hyperparameter {name!r} was built with one value for all stack members; "
                                     f"pass a vector at construction to set it per member")
        for g in groups:
            var = g.values[name]
            var.set_value(np.full(var.get_value(borrow=True).shape, value, dtype=np.float64))

    def get_hyperparameter(self, name: str, group: int = 0) -> float | bool | np.ndarray:
        """Current value of a hyperparameter (or option); a per-member one as a vector."""
        if name in self.options:
            return self.options[name]
        if name in self.settings:
            return float(self.settings[name].get_value())
        if name not in self._declarations:
            self._check_keywords({name: None})
        return self._group_index(group).current(name, self.iterations)

    def _current_hyperparameters(self) -> dict[str, Any]:
        group = self.param_groups[0]
        values: dict[str, Any] = {k: group.current(k, self.iterations) for k in group.values}
        values.update(self.options)
        return {k: values[k] for k in self._declarations}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._current_hyperparameters().items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """A copy of everything needed to resume: step, hyperparameters, slots, scalars."""
        return {
            "optimizer": type(self).__name__,
            "iterations": np.array(self.iterations.get_value(), dtype=np.int64),
            "options": {k: np.array(v) for k, v in self.options.items()},
            "hyperparameters": [
                {k: np.array(v.get_value(), dtype=np.float64) for k, v in g.values.items() if not isinstance(v, Schedule)}
                for g in self.param_groups
            ],
            "schedules": [
                {k: v.state() for k, v in g.values.items() if isinstance(v, Schedule)} for g in self.param_groups
            ],
            "settings": {k: np.array(v.get_value(), dtype=np.float64) for k, v in self.settings.items()},
            "counters": {
                "micro_steps": np.array(self.micro_steps.get_value(), dtype=np.int64),
                "skipped": np.array(self.skipped.get_value(), dtype=np.int64),
                **{name: np.array(var.get_value(), dtype=np.int64) for name, var in self._member_counters()},
            },
            "scalars": [{k: np.array(v.get_value()) for k, v in g.scalars.items()} for g in self.param_groups],
            "slots": {
                slot: [self.state[i][slot].get_value(borrow=False) for i in range(len(self.params))]
                for slot in self._all_slots()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; validates all of it before changing anything."""
        owner = type(self).__name__
        if not isinstance(state, Mapping):
            raise TypeError(f"{owner}: state must be a dict from state_dict(), got {type(state).__name__}")
        missing = {
            "optimizer", "iterations", "options", "hyperparameters", "schedules", "settings", "counters", "scalars", "slots"
        } - set(state)
        if missing:
            raise ValueError(f"{owner}: state is missing {sorted(missing)}")
        if state["optimizer"] != owner:
            raise ValueError(f"{owner}: state was saved from {state['optimizer']!r}")
        options = {k: bool(v) for k, v in state["options"].items()}
        if options != self.options:
            raise ValueError(f"{owner}: state has options {options}, this optimiser has {self.options}")
        pending: list[tuple[SharedVariable, np.ndarray]] = []
        schedule_values: list[tuple[Schedule, dict[str, np.ndarray]]] = []
        for key in ("hyperparameters", "schedules", "scalars"):
            if len(state[key]) != len(self.param_groups):
                raise ValueError(f"{owner}: state has {len(state[key])} param groups in {key!r}, expected {len(self.param_groups)}")
        for gi, group in enumerate(self.param_groups):
            saved_schedules = state["schedules"][gi]
            schedules = {k: v for k, v in group.values.items() if isinstance(v, Schedule)}
            if set(saved_schedules) != set(schedules):
                raise ValueError(f"{owner}: state has schedules for {sorted(saved_schedules)}, this optimiser for {sorted(schedules)}")
            for name, schedule in schedules.items():
                schedule_values.append((schedule, schedule.checked_state(saved_schedules[name])))
            shared_values = {k: v for k, v in group.values.items() if not isinstance(v, Schedule)}
            for key, table in (("hyperparameters", shared_values), ("scalars", group.scalars)):
                saved = state[key][gi]
                if set(saved) != set(table):
                    raise ValueError(f"{owner}: state {key} {sorted(saved)} do not match {sorted(table)}")
                for name, var in table.items():
                    try:
                        value = np.asarray(saved[name], dtype=np.float64)
                    except (TypeError, ValueError):
                        raise ValueError(f"{owner}: state {key} {name!r} is not a number: {saved[name]!r}") from None
                    want = var.get_value(borrow=True).shape
                    if value.shape != want:
                        kind = "a scalar" if want == () else f"a vector of {want[0]} values (one per stack member)"
                        raise ValueError(f"{owner}: state {key} {name!r} must be {kind}, got shape {value.shape}")
                    if key == "hyperparameters":
                        self._declarations[name].check(owner, name, value.item() if value.ndim == 0 else value)
                    elif not np.all(np.isfinite(value)):
                        raise ValueError(f"{owner}: state scalar {name!r} must be finite, got {value}")
                    pending.append((var, value))
        if set(state["settings"]) != set(self.settings):
            raise ValueError(f"{owner}: state has settings {sorted(state['settings'])}, this optimiser {sorted(self.settings)}")
        for name, value in state["settings"].items():
            pending.append((self.settings[name], np.asarray(self._check_setting(name, np.asarray(value).item()))))
        for name, var in (("micro_steps", self.micro_steps), ("skipped", self.skipped), *self._member_counters()):
            count = np.asarray(state["counters"].get(name, -1))
            want = var.get_value(borrow=True).shape
            if count.shape != want or count.dtype.kind not in "iu" or np.any(count < 0):
                kind = "integer" if want == () else f"integer vector of shape {want}"
                raise ValueError(f"{owner}: state counter {name!r} must be a non-negative {kind}, got {count!r}")
            pending.append((var, count.astype(np.int64)))
        slots = state["slots"]
        if set(slots) != set(self._all_slots()):
            raise ValueError(f"{owner}: state has slots {sorted(slots)}, this optimiser keeps {sorted(self._all_slots())}")
        for slot, arrays in slots.items():
            if len(arrays) != len(self.params):
                raise ValueError(f"{owner}: slot {slot!r} has {len(arrays)} entries for {len(self.params)} parameters")
            for index, array in enumerate(arrays):
                var = self.state[index][slot]
                array = np.asarray(array)
                want = var.get_value(borrow=True)
                if array.shape != want.shape or array.dtype != want.dtype:
                    raise ValueError(
                        f"{owner}: slot {slot!r} of {_describe(self.params[index], index)} is "
                        f"{array.dtype}{list(array.shape)}, expected {want.dtype}{list(want.shape)}"
                    )
                pending.append((var, array))
        iterations = np.asarray(state["iterations"])
        if iterations.shape != () or iterations.dtype.kind not in "iu" or iterations < 0:
            raise ValueError(f"{owner}: state iterations must be a non-negative integer, got {iterations!r}")
        pending.append((self.iterations, iterations.astype(np.int64)))
        for var, value in pending:
            var.set_value(value.copy())
        for schedule, values in schedule_values:
            schedule.load_state(values)

    def _member_counters(self) -> list[tuple[str, SharedVariable]]:
        """The per-member counters of stacked parameters with skip_nonfinite."""
        return [(name, var) for name, var in (("member_steps", self.member_steps), ("member_skipped", self.member_skipped))
                if var is not None]

    def _flat_state(self) -> dict[str, np.ndarray]:
        """:meth:`state_dict` as ``name -> array`` (the ``.npz`` layout of :meth:`save`)."""
        state = self.state_dict()
        flat: dict[str, np.ndarray] = {
            "optimizer": np.array(state["optimizer"]),
            "iterations": state["iterations"],
            "groups": np.array(len(self.param_groups)),
        }
        flat.update({f"option/{k}": v for k, v in state["options"].items()})
        flat.update({f"setting/{k}": v for k, v in state["settings"].items()})
        flat.update({f"counter/{k}": v for k, v in state["counters"].items()})
        for gi in range(len(self.param_groups)):
            for name, params in state["schedules"][gi].items():
                flat.update({f"schedule/{gi}/{name}/{p}": v for p, v in params.items()})
            flat.update({f"hyperparameter/{gi}/{k}": v for k, v in state["hyperparameters"][gi].items()})
            flat.update({f"scalar/{gi}/{k}": v for k, v in state["scalars"][gi].items()})
        for slot, arrays in state["slots"].items():
            flat.update({f"slot/{slot}/{i}": a for i, a in enumerate(arrays)})
        return flat

    def _largest_array(self) -> int:
        """The most elements any array of this optimiser's state can have."""
        sizes = [int(np.prod(p.get_value(borrow=True).shape)) for p in self.params]
        for group in self.param_groups:  # schedules' parameter arrays (PiecewiseConstant)
            for value in group.values.values():
                if isinstance(value, Schedule):
                    sizes += [np.asarray(v).size for v in value.state().values()]
        return max(sizes + [1])

    def _state_from_flat(self, flat: Mapping[str, np.ndarray], path: Any) -> dict[str, Any]:
        """The :meth:`state_dict` form of :meth:`_flat_state` output read from ``path``."""
        try:
            groups = int(flat["groups"])
            state: dict[str, Any] = {
                "optimizer": str(flat["optimizer"]),
                "iterations": flat["iterations"],
                "options": {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith("option/")},
                "hyperparameters": [{} for _ in range(groups)],
                "schedules": [{} for _ in range(groups)],
                "settings": {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith("setting/")},
                "counters": {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith("counter/")},
                "scalars": [{} for _ in range(groups)],
                "slots": {},
            }
            for key, value in flat.items():
                kind, _, rest = key.partition("/")
                if kind in ("hyperparameter", "scalar"):
                    gi, name = rest.split("/", 1)
                    state["hyperparameters" if kind == "hyperparameter" else "scalars"][int(gi)][name] = value
                elif kind == "schedule":
                    gi, name, param = rest.split("/", 2)
                    state["schedules"][int(gi)].setdefault(name, {})[param] = value
                elif kind == "slot":
                    slot, index = rest.rsplit("/", 1)
                    state["slots"].setdefault(slot, {})[int(index)] = value
            state["slots"] = {k: [v[i] for i in range(len(v))] for k, v in state["slots"].items()}
        except (KeyError, ValueError, IndexError) as exc:
            raise ValueError(f"{type(self).__name__}: {str(path)!r} is not an optimiser state file (missing {exc})") from None
        return state

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` to an ``.npz`` file atomically (no partial file on failure)."""
        StateFile(type(self).__name__).write(path, self._flat_state())

    def load(self, path: str | os.PathLike[str]) -> None:
        """Restore state written by :meth:`save`.

        The file is not trusted: the group count must be this optimiser's and every
        array's declared size must fit the largest state it could hold, checked from the
        ``.npy`` headers before anything is allocated; then :meth:`load_state_dict`
        validates the rest before anything changes.
        """
        flat = StateFile(type(self).__name__).read(
            path, self._largest_array(), strings=("optimizer",), expect={"groups": len(self.param_groups)}
        )
        self.load_state_dict(self._state_from_flat(flat, path))


def _builtin(keyword: str) -> type[SettingTransform]:
    """The built-in transform class of a numeric keyword (``clip_norm`` -> ClipNorm)."""
    for cls in BUILTIN_ORDER:
        if cls.keyword == keyword and issubclass(cls, SettingTransform):
            return cls
    raise KeyError(keyword)
