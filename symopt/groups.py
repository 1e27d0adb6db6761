"""Param groups and the hyperparameter values they hold, for :class:`~symopt.optimizer.Optimizer`.

:class:`GroupsMixin` is the part of the optimiser that knows names and values: checking
a configuration (:meth:`~GroupsMixin.validate`, unknown keywords, per-member vectors, the
built-in transforms' settings), splitting ``params`` into torch-style param groups, the
values a rule receives per group (``h``), and getting and setting hyperparameters on a
built optimiser. The optimiser creates the groups and shared scalars in its constructor.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.tensor.variable import TensorVariable

from .hyperparameter import ALIASES as _ALIASES
from .hyperparameter import Hyperparameter, Values, member_view
from .schedules import Schedule
from .transforms import (
    BUILTIN_ORDER,
    SETTING_KEYWORDS,
    Accumulate,
    MaxNorm,
    SettingTransform,
    SkipNonFinite,
    WeightDecay,
    _describe,
)

if TYPE_CHECKING:
    from .optimizer import Optimizer

__all__ = ["GroupsMixin", "TRANSFORM_SETTINGS"]

#: Constructor keywords of every rule that transform gradients or constrain parameters;
#: given a value they become shared scalars, changeable like hyperparameters. Derived
#: from :data:`symopt.transforms.BUILTIN_ORDER`.
TRANSFORM_SETTINGS = SETTING_KEYWORDS

#: The constructor keywords that configure transforms rather than the rule.
_TRANSFORM_KEYWORDS = ("max_norm_mask", "max_norm_axes", "weight_decay_mask", "accumulate", "skip_nonfinite", "stoppable",
                       "decoupled_weight_decay")


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
            current = value(iterations.get_value())  # a vector over members for a per-member schedule
            return float(current) if current.ndim == 0 else current
        current = value.get_value()
        return float(current) if current.ndim == 0 else current.copy()


class GroupsMixin:
    """Param groups, hyperparameter checks and get/set; a base of :class:`~symopt.optimizer.Optimizer`.

    Uses the optimiser's ``_declarations``, ``per_member_values``, ``params``, ``param_groups``,
    ``options``, ``settings``, ``iterations``, ``member_steps`` and ``stack_size``.
    """

    _declarations: ClassVar[dict[str, Hyperparameter]]
    per_member_values: ClassVar[bool]
    params: list[SharedVariable]
    param_groups: list[_Group]
    options: dict[str, bool]
    settings: dict[str, SharedVariable]
    iterations: SharedVariable
    member_steps: SharedVariable | None
    stack_size: int | None

    # ------------------------------------------------------------------ checking a configuration
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
        if "stoppable" in transform_options:
            out["stoppable"] = SkipNonFinite(False, owner, transform_options["stoppable"]).stoppable
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

    def _check_keywords(self, given: Mapping[str, Any]) -> None:
        self._check_keywords_of(type(self).__name__, given)

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

    # ------------------------------------------------------------------ param groups
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


def _builtin(keyword: str) -> type[SettingTransform]:
    """The built-in transform class of a numeric keyword (``clip_norm`` -> ClipNorm)."""
    for cls in BUILTIN_ORDER:
        if cls.keyword == keyword and issubclass(cls, SettingTransform):
            return cls
    raise KeyError(keyword)
