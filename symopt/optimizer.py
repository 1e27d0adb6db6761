"""The :class:`Optimizer` base class.

A rule (SGD, Adam, ...) declares its hyperparameters and per-parameter state
("slots") and implements :meth:`Optimizer.update_param`: the math of one step for
one parameter. Everything else lives here, once: gradients, validation, coupled or
decoupled weight decay, dtype casting, the step counter, state (de)serialisation
and the ``OrderedDict`` of updates that goes into ``pytensor.function``.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.tensor.variable import TensorVariable

from ._io import atomic_writer
from ._npz import NpzReader
from .schedules import Schedule

__all__ = ["Optimizer", "Updates", "HYPERPARAMETER_BOUNDS", "TRANSFORM_SETTINGS"]

#: Constructor keywords of every rule that transform gradients or constrain parameters;
#: given a value they become shared scalars, changeable like hyperparameters.
TRANSFORM_SETTINGS = ("clip_value", "clip_norm", "clip_global_norm", "max_norm")

# name -> (low, high, low_inclusive, high_inclusive). The names are shared by every
# rule, so their valid ranges are stated once; a rule's own extra hyperparameters
# only have to be finite.
HYPERPARAMETER_BOUNDS: dict[str, tuple[float, float, bool, bool]] = {
    "learning_rate": (0.0, math.inf, True, False),
    "momentum": (0.0, 1.0, True, False),
    "rho": (0.0, 1.0, True, False),
    "beta1": (0.0, 1.0, True, False),
    "beta2": (0.0, 1.0, True, False),
    "epsilon": (0.0, math.inf, True, False),
    "weight_decay": (0.0, math.inf, True, False),
    "momentum_decay": (0.0, math.inf, True, False),
    "beta1_decay": (0.0, 1.0, False, True),
}

# Names users coming from torch.optim, Keras or the seeds type; used for "did you mean".
_ALIASES = {
    "lr": "learning_rate",
    "eps": "epsilon",
    "alpha": "rho",
    "betas": "beta1 and beta2",
    "b1": "beta1",
    "b2": "beta2",
    "gamma": "beta1_decay",
    "decay": "weight_decay",
    "wd": "weight_decay",
}


def _describe(param: Any, index: int) -> str:
    """Human-readable name of a parameter for error messages."""
    name = getattr(param, "name", None)
    if name:
        return f"parameter {name!r} (index {index})"
    return f"parameter at index {index}"


def _check_number(owner: str, name: str, value: Any) -> float:
    """Validate one numeric hyperparameter value; returns it as a float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
            value = value.item()
        else:
            raise TypeError(f"{owner}: hyperparameter {name!r} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{owner}: hyperparameter {name!r} must be finite, got {value}")
    bounds = HYPERPARAMETER_BOUNDS.get(name)
    if bounds is not None:
        lo, hi, lo_in, hi_in = bounds
        ok_lo = value >= lo if lo_in else value > lo
        ok_hi = value <= hi if hi_in else value < hi
        if not (ok_lo and ok_hi):
            interval = f"{'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"
            raise ValueError(f"{owner}: hyperparameter {name!r} must lie in {interval}, got {value}")
    return value


class Updates(OrderedDict):
    """The ``OrderedDict`` :meth:`Optimizer.updates` returns.

    ``applied`` is the symbolic boolean telling whether a call applies the update (it
    does not while accumulating or on a skipped non-finite step), or ``None`` when
    every call does; wrappers (EMA, Lookahead) use it to move only with the optimiser.
    """

    applied: TensorVariable | None = None


class _HyperparameterTable:
    """``Rule.hyperparameters`` gives the defaults; ``opt.hyperparameters`` the current values."""

    def __get__(self, obj: Optimizer | None, owner: type[Optimizer]) -> dict[str, Any]:
        if obj is None:
            return dict(owner._defaults)
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

    def current(self, name: str, iterations: SharedVariable) -> float:
        value = self.values[name]
        if isinstance(value, Schedule):
            return float(value(iterations.get_value()))
        return float(value.get_value())


def _mask(owner: str, what: str, mask: Any, params: list[SharedVariable], default: Any) -> list[bool]:
    """Resolve a mask (callable param -> bool, or a list of params) to one bool per param."""
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
    max_norm, max_norm_mask
        After the step, rescale each unit's incoming weights (columns of a matrix,
        Lasagne's norm constraint) to norm at most ``max_norm``; the mask (callable
        ``param -> bool`` or a list) picks the parameters, by default those with ``ndim >= 2``.
    weight_decay_mask
        Which parameters weight decay applies to (callable or list), e.g.
        :func:`symopt.masks.exclude_bias_and_norm`; coupled and decoupled alike.
    accumulate
        ``k > 1``: ``k`` calls apply one update with the mean of their gradients.
    skip_nonfinite
        A call whose loss or gradients hold NaN/Inf changes nothing; ``opt.skipped``
        counts them.
    **hyperparameters
        Values for the rule's hyperparameters (see the rule's ``hyperparameters``),
        numbers or :mod:`symopt.schedules` objects; the rest take the rule's defaults.
        Every rule accepts ``weight_decay``.

    The clip and ``max_norm`` values are shared scalars too, changed with
    :meth:`set_hyperparameter`.

    Notes
    -----
    A rule subclass declares

    * ``hyperparameters``: name -> default. Numbers become float64 shared scalars,
      so :meth:`set_hyperparameter` changes a compiled function without recompiling;
      booleans are structural options fixed at construction (they change the graph).
    * ``slots``: per-parameter state, name -> initial fill value. Each slot is a
      shared variable of its parameter's shape and dtype.
    * ``scalar_slots`` (rarely): optimiser-wide scalars such as NAdam's momentum
      product, advanced once per step by :meth:`update_scalars`.

    and implements :meth:`update_param`. Inside it ``self.<hyperparameter>`` and
    ``self.t`` (the 1-based step number) are symbolic scalars already cast to the
    parameter's dtype, and Python float literals take that dtype too, so a rule
    written naively keeps float32 parameters in float32 arithmetic. Per-step scalar
    coefficients that cancel badly in float32 belong in :meth:`float64_scalars`.
    """

    hyperparameters: ClassVar[Any] = _HyperparameterTable()
    slots: ClassVar[dict[str, float]] = {}
    scalar_slots: ClassVar[dict[str, float]] = {}
    #: Decoupled rules (AdamW, Lion) shrink the parameter by ``1 - lr * wd`` before the
    #: step instead of adding ``wd * p`` to the gradient.
    decoupled_weight_decay: ClassVar[bool] = False
    #: Rules whose decay is part of their own step (Adafactor, Prodigy, schedule-free AdamW)
    #: apply ``self.weight_decay`` in :meth:`update_param`; the base class then neither adds
    #: it to the gradient nor shrinks the parameter, and ``self.weight_decay`` reads 0 for
    #: parameters that ``weight_decay_mask`` excludes.
    weight_decay_in_rule: ClassVar[bool] = False
    #: Registry name, set by :func:`symopt.register`.
    name: ClassVar[str | None] = None
    _defaults: ClassVar[dict[str, Any]] = {"weight_decay": 0.0}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = cls.__dict__.get("hyperparameters")
        if isinstance(declared, Mapping):
            defaults = dict(declared)
            defaults.setdefault("weight_decay", 0.0)
            for key, value in defaults.items():
                if not isinstance(value, bool):
                    _check_number(cls.__name__, key, value)
            cls._defaults = defaults
            cls.hyperparameters = _HyperparameterTable()
        if cls.decoupled_weight_decay and "learning_rate" not in cls._defaults:
            raise TypeError(f"{cls.__name__}: decoupled weight decay needs a 'learning_rate' hyperparameter")

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
        weight_decay_mask: Any = None,
        accumulate: int = 1,
        skip_nonfinite: bool = False,
        **hyperparameters: Any,
    ):
        owner = type(self).__name__
        self._ctx_group: _Group | None = None
        self._ctx_dtype: str | None = None
        self._ctx_no_decay = False
        #: Inside update_param: the shared variable whose step is being built (its static
        #: shape and tags, e.g. ``tag.seed_axis``, for rules that reduce over a tensor).
        self.current_param: SharedVariable | None = None
        self._check_keywords(hyperparameters)
        self.options: dict[str, bool] = {}
        numeric: dict[str, float] = {}
        for key, default in self._defaults.items():
            value = hyperparameters.get(key, default)
            if isinstance(default, bool):
                if not isinstance(value, (bool, np.bool_)):
                    raise TypeError(f"{owner}: option {key!r} must be True or False, got {value!r}")
                self.options[key] = bool(value)
            else:
                numeric[key] = value if isinstance(value, Schedule) else _check_number(owner, key, value)

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
            values: dict[str, SharedVariable | Schedule] = {}
            for key, default in numeric.items():
                value = overrides.get(key, default)
                if isinstance(value, Schedule):
                    values[key] = value
                    continue
                value = _check_number(f"{owner} (param group {gi})", key, value)
                tag = key if len(group_specs) == 1 else f"{key}[{gi}]"
                values[key] = pytensor.shared(np.float64(value), name=f"{owner}.{tag}")
            self.param_groups.append(_Group(list(group_params), values))
        if not self.params:
            raise ValueError(f"{owner}: no parameters to optimise (params is empty)")

        for group in self.param_groups:
            group.scalars = {
                key: pytensor.shared(np.float64(fill), name=f"{owner}.{key}")
                for key, fill in self.scalar_slots.items()
            }
        self.iterations: SharedVariable = pytensor.shared(np.int64(0), name=f"{owner}.iterations")

        # Gradient transforms and constraints (the same for every rule).
        if isinstance(accumulate, bool) or not isinstance(accumulate, (int, np.integer)) or accumulate < 1:
            raise ValueError(f"{owner}: accumulate must be an integer >= 1, got {accumulate!r}")
        if not isinstance(skip_nonfinite, (bool, np.bool_)):
            raise TypeError(f"{owner}: skip_nonfinite must be True or False, got {skip_nonfinite!r}")
        self.accumulate, self.skip_nonfinite = int(accumulate), bool(skip_nonfinite)
        given = {"clip_value": clip_value, "clip_norm": clip_norm, "clip_global_norm": clip_global_norm, "max_norm": max_norm}
        self.settings: dict[str, SharedVariable] = {
            key: pytensor.shared(np.float64(self._check_setting(key, value)), name=f"{owner}.{key}")
            for key, value in given.items()
            if value is not None
        }
        self._decays = _mask(owner, "weight_decay_mask", weight_decay_mask, self.params, lambda p: True)
        if max_norm is None and max_norm_mask is not None:
            raise ValueError(f"{owner}: max_norm_mask given without max_norm")
        self._max_norms = _mask(owner, "max_norm_mask", max_norm_mask, self.params, lambda p: p.ndim >= 2)
        if max_norm is not None:
            for index, (param, flag) in enumerate(zip(self.params, self._max_norms)):
                if flag and param.ndim < 2:
                    raise ValueError(f"{owner}: max_norm constrains weight columns; {_describe(param, index)} has {param.ndim} dimensions")
        #: Applied-or-not bookkeeping: micro-steps of the current accumulation, skipped steps.
        self.micro_steps: SharedVariable = pytensor.shared(np.int64(0), name=f"{owner}.micro_steps")
        self.skipped: SharedVariable = pytensor.shared(np.int64(0), name=f"{owner}.skipped")

        self.state: list[dict[str, SharedVariable]] = [
            {slot: self._make_slot(param, index, slot, fill) for slot, fill in self._all_slots().items()}
            for index, param in enumerate(self.params)
        ]

    def _check_setting(self, key: str, value: Any) -> float:
        value = _check_number(type(self).__name__, key, value)
        if value <= 0:
            raise ValueError(f"{type(self).__name__}: {key} must be > 0, got {value}")
        return value

    def _all_slots(self) -> dict[str, float]:
        """The rule's slots plus the gradient accumulator when ``accumulate > 1``."""
        slots = self.active_slots()
        if self.accumulate > 1:
            slots["grad_accum"] = 0.0
        return slots

    def _check_keywords(self, given: Mapping[str, Any]) -> None:
        known = list(self._defaults)
        for key in given:
            if key in self._defaults:
                continue
            hint = _ALIASES.get(key) or next(iter(difflib.get_close_matches(key, known, n=1)), None)
            did_you_mean = f" (did you mean {hint!r}?)" if hint else ""
            raise TypeError(
                f"{type(self).__name__} got an unknown hyperparameter {key!r}{did_you_mean}; "
                f"it accepts: {', '.join(known)}"
            )

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
                    if isinstance(self._defaults[key], bool):
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
        shape = self.slot_shape(param, slot) if slot != "grad_accum" else param.get_value(borrow=True).shape
        label = param.name or f"param{index}"
        return pytensor.shared(np.full(shape, fill, dtype=param.dtype), name=f"{label}.{slot}")

    def slot_shape(self, param: SharedVariable, slot: str) -> tuple[int, ...]:
        """Shape of ``slot`` for ``param``: the parameter's; override for factored state (Adafactor)."""
        return tuple(param.get_value(borrow=True).shape)

    # ------------------------------------------------------------------ the rule API
    def active_slots(self) -> dict[str, float]:
        """Slots this instance keeps; override when an option adds state (AMSGrad)."""
        return dict(self.slots)

    def update_param(
        self, param: TensorVariable, grad: TensorVariable, state: dict[str, TensorVariable]
    ) -> tuple[TensorVariable, dict[str, TensorVariable]]:
        """One step for one parameter: return the new value and the new slot values.

        ``grad`` already includes coupled weight decay; for decoupled rules ``param``
        is already shrunk by ``1 - lr * wd``. ``state`` maps slot names to their
        shared variables and scalar-slot names to their updated float64 values.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement update_param")

    def update_scalars(self, state: dict[str, TensorVariable]) -> dict[str, TensorVariable]:
        """New values of the optimiser-wide ``scalar_slots`` (float64), once per step."""
        return {}

    def update_group_scalars(
        self,
        state: dict[str, TensorVariable],
        params: list[TensorVariable],
        grads: list[TensorVariable],
        slots: list[dict[str, TensorVariable]],
    ) -> dict[str, TensorVariable]:
        """:meth:`update_scalars` seeing the whole param group, for scalars that reduce over
        all its parameters (Prodigy's distance estimate): the live parameters before this
        step, their gradients (after clipping, before coupled weight decay) and their slots."""
        return self.update_scalars(state)

    @property
    def t(self) -> TensorVariable:
        """The 1-based number of the step being built, as a symbolic float."""
        return pt.cast(self.iterations + 1, self._ctx_dtype or "float64")

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: hyperparameters and options by name.
        groups = self.__dict__.get("param_groups")
        if groups:
            if name in groups[0].values:
                group = self.__dict__.get("_ctx_group") or groups[0]
                var = group.symbolic(name, self.iterations)
                dtype = self.__dict__.get("_ctx_dtype")
                if name == "weight_decay" and self.__dict__.get("_ctx_no_decay"):
                    var = pt.zeros((), dtype=var.dtype)  # weight_decay_in_rule, masked out
                return pt.cast(var, dtype) if dtype and dtype != var.dtype else var
            if name in self.__dict__.get("options", {}):
                return self.options[name]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    @contextlib.contextmanager
    def float64_scalars(self) -> Iterator[Callable[[Any], TensorVariable]]:
        """Inside ``update_param``: compute per-step scalar coefficients in float64.

        Bias corrections such as ``1 - beta2**t`` cancel badly in float32 (RAdam's
        ``rho_t`` lost a third of its value at beta2=0.9999); torch computes them as
        Python floats. Yields a function casting a finished coefficient back to the
        parameter's dtype, to be applied before it meets an array::

            with self.float64_scalars() as cast:
                step_size = cast(self.learning_rate / (1 - self.beta1**self.t))
        """
        dtype = self._ctx_dtype or "float64"
        self._ctx_dtype = "float64"
        try:
            with pytensor.config.change_flags(floatX="float64"):
                yield lambda value: pt.cast(value, dtype)
        finally:
            self._ctx_dtype = dtype

    @contextlib.contextmanager
    def _context(self, group: _Group, dtype: str) -> Iterator[None]:
        self._ctx_group, self._ctx_dtype = group, dtype
        try:
            with pytensor.config.change_flags(floatX=dtype):
                yield
        finally:
            self._ctx_group, self._ctx_dtype = None, None

    # ------------------------------------------------------------------ gradients
    def _gradients(
        self, loss: Any, grads: Sequence[Any] | None, allow_unused: bool
    ) -> list[TensorVariable | None]:
        owner = type(self).__name__
        if (loss is None) == (grads is None):
            raise TypeError(f"{owner}.updates needs exactly one of loss or grads=")
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
            bookkeeping; each cast to its variable's dtype. ``.applied`` is the
            symbolic flag of whether a call applies the update (``None``: always).
        """
        grads = self._gradients(loss, grads, allow_unused)
        grads = [None if g is None else (pt.cast(g, p.dtype) if g.dtype != p.dtype else g) for p, g in zip(self.params, grads)]
        live = [i for i, g in enumerate(grads) if g is not None]
        extra: list[tuple[SharedVariable, TensorVariable]] = []

        # Whether this call applies an update: only finite steps, and only every k-th call.
        apply = None
        finite = None
        if self.skip_nonfinite:
            checks = [pt.all(pt.isfinite(grads[i])) for i in live]
            if loss is not None:
                checks.append(pt.isfinite(pt.as_tensor_variable(loss)))
            finite = pt.all(pt.stack(checks))
            apply = finite
            extra.append((self.skipped, self.skipped + 1 - pt.cast(finite, "int64")))
        if self.accumulate > 1:
            counted = self.micro_steps + (1 if finite is None else pt.cast(finite, "int64"))
            due = pt.eq(counted, self.accumulate)
            for i in live:
                acc = self.state[i]["grad_accum"]
                summed = acc + grads[i]
                if finite is not None:
                    summed = pt.switch(finite, summed, acc)  # a non-finite micro-step adds nothing
                extra.append((acc, pt.switch(due, pt.zeros_like(acc), summed)))
                grads[i] = summed / self.accumulate  # the mean gradient, used when `due`
            extra.append((self.micro_steps, pt.switch(due, 0, counted)))
            apply = due if apply is None else pt.and_(apply, due)

        grads = self._clip(grads, live)

        grad_of = {id(p): g for p, g in zip(self.params, grads)}
        index_of = {id(p): i for i, p in enumerate(self.params)}
        new_params = Updates()
        new_params.applied = apply
        new_state: list[tuple[SharedVariable, TensorVariable]] = []
        for group in self.param_groups:
            live_params = [p for p in group.params if grad_of[id(p)] is not None]
            with self._context(group, "float64"):
                scalars = self.update_group_scalars(
                    dict(group.scalars), live_params, [grad_of[id(p)] for p in live_params],
                    [self.state[index_of[id(p)]] for p in live_params],
                )
                scalars = self._checked(scalars, group.scalars, "update_scalars")
            new_state += [(group.scalars[k], v) for k, v in scalars.items()]
            for param in group.params:
                grad = grad_of[id(param)]
                if grad is None:
                    continue
                index = index_of[id(param)]
                slots = {k: v for k, v in self.state[index].items() if k != "grad_accum"}
                with self._context(group, param.dtype):
                    self.current_param = param
                    self._ctx_no_decay = not self._decays[index]
                    source, view = self._same_static_shape(param, grad, slots)
                    current: TensorVariable = source
                    if self._decays[index] and not self.weight_decay_in_rule:
                        if self.decoupled_weight_decay:
                            current = source * (1 - self.learning_rate * self.weight_decay)
                        else:
                            grad = grad + self.weight_decay * source
                    view.update(scalars)  # float64: use inside float64_scalars() and cast
                    try:
                        new_value, slot_values = self.update_param(current, grad, view)
                    finally:
                        self.current_param, self._ctx_no_decay = None, False
                    if "max_norm" in self.settings and self._max_norms[index]:
                        new_value = self._constrain_norm(pt.as_tensor_variable(new_value), param.dtype)
                slot_values = self._checked(slot_values, slots, "update_param")
                new_params[param] = self._cast_to(param, new_value)
                new_state += [(slots[k], v) for k, v in slot_values.items()]
        out = new_params
        for var, value in new_state:
            out[var] = self._cast_to(var, value)
        if apply is not None:  # a step that is not applied leaves everything as it was
            for var in out:
                out[var] = pt.switch(apply, out[var], var)
            out[self.iterations] = self.iterations + pt.cast(apply, "int64")
        else:
            out[self.iterations] = self.iterations + 1
        for var, value in extra:
            out[var] = self._cast_to(var, value)
        return out

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

    def _clip(self, grads: list[TensorVariable | None], live: list[int]) -> list[TensorVariable | None]:
        """clip_value, then clip_norm per parameter, then clip_global_norm over all."""
        settings = self.settings
        grads = list(grads)
        for i in live:
            g = grads[i]
            if "clip_value" in settings:
                c = pt.cast(settings["clip_value"], g.dtype)
                g = pt.clip(g, -c, c)
            if "clip_norm" in settings:
                c = pt.cast(settings["clip_norm"], g.dtype)
                g = g * (c / pt.maximum(pt.sqrt(pt.sum(g * g)), c))
            grads[i] = g
        if "clip_global_norm" in settings and live:
            c = settings["clip_global_norm"]
            norm = pt.sqrt(pt.sum(pt.stack([pt.cast(pt.sum(grads[i] * grads[i]), "float64") for i in live])))
            factor = c / pt.maximum(norm, c)  # Keras/optax: scale only when the norm exceeds c
            for i in live:
                grads[i] = grads[i] * pt.cast(factor, grads[i].dtype)
        return grads

    def _constrain_norm(self, value: TensorVariable, dtype: str) -> TensorVariable:
        """Lasagne's norm constraint: rescale each unit's incoming weights to norm <= max_norm."""
        axes = (0,) if value.ndim == 2 else tuple(range(1, value.ndim))
        norms = pt.sqrt(pt.sum(value * value, axis=axes, keepdims=True))
        target = pt.clip(norms, 0, pt.cast(self.settings["max_norm"], dtype))
        return value * (target / (1e-7 + norms))

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

    def set_hyperparameter(self, name: str, value: float, group: int | None = None) -> None:
        """Change a numeric hyperparameter in place; compiled functions see it next call.

        ``group=None`` sets it for every param group.
        """
        owner = type(self).__name__
        if name in self.options:
            raise ValueError(f"{owner}: {name!r} is a structural option fixed at construction; build a new optimiser")
        if name in TRANSFORM_SETTINGS:
            if name not in self.settings:
                raise ValueError(f"{owner}: {name} was not enabled at construction; pass {name}=... to the constructor")
            self.settings[name].set_value(np.float64(self._check_setting(name, value)))
            return
        if name not in self._defaults:
            self._check_keywords({name: value})
        value = _check_number(owner, name, value)
        groups = self.param_groups if group is None else [self._group_index(group)]
        for g in groups:
            if isinstance(g.values[name], Schedule):
                raise ValueError(f"{owner}: {name} follows a schedule; change it with schedule.set(...)")
        for g in groups:
            g.values[name].set_value(np.float64(value))

    def get_hyperparameter(self, name: str, group: int = 0) -> float | bool:
        """Current value of a hyperparameter (or option)."""
        if name in self.options:
            return self.options[name]
        if name in self.settings:
            return float(self.settings[name].get_value())
        if name not in self._defaults:
            self._check_keywords({name: None})
        return self._group_index(group).current(name, self.iterations)

    def _current_hyperparameters(self) -> dict[str, Any]:
        group = self.param_groups[0]
        values: dict[str, Any] = {k: group.current(k, self.iterations) for k in group.values}
        values.update(self.options)
        return {k: values[k] for k in self._defaults}

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
                    if value.shape != ():
                        raise ValueError(f"{owner}: state {key} {name!r} must be a scalar, got shape {value.shape}")
                    if key == "hyperparameters":
                        _check_number(owner, name, value.item())
                    elif not np.isfinite(value):
                        raise ValueError(f"{owner}: state scalar {name!r} must be finite, got {value}")
                    pending.append((var, value))
        if set(state["settings"]) != set(self.settings):
            raise ValueError(f"{owner}: state has settings {sorted(state['settings'])}, this optimiser {sorted(self.settings)}")
        for name, value in state["settings"].items():
            pending.append((self.settings[name], np.asarray(self._check_setting(name, np.asarray(value).item()))))
        for name, var in (("micro_steps", self.micro_steps), ("skipped", self.skipped)):
            count = np.asarray(state["counters"].get(name, -1))
            if count.shape != () or count.dtype.kind not in "iu" or count < 0:
                raise ValueError(f"{owner}: state counter {name!r} must be a non-negative integer, got {count!r}")
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

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` to an ``.npz`` file atomically (no partial file on failure)."""
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
        with atomic_writer(path) as f:
            np.savez(f, **flat)

    def load(self, path: str | os.PathLike[str]) -> None:
        """Restore state written by :meth:`save`.

        The file is not trusted: the group count must be this optimiser's and every
        array's declared size must fit the largest state it could hold, checked from the
        ``.npy`` headers before anything is allocated; then :meth:`load_state_dict`
        validates the rest before anything changes.
        """
        owner = type(self).__name__
        path = Path(path)
        sizes = [int(np.prod(p.get_value(borrow=True).shape)) for p in self.params]
        for group in self.param_groups:  # schedules' parameter arrays (PiecewiseConstant)
            for value in group.values.values():
                if isinstance(value, Schedule):
                    sizes += [np.asarray(v).size for v in value.state().values()]
        largest = max(sizes + [1])
        try:
            with NpzReader(path, "optimiser state file") as npz:
                groups_array = npz.read("groups", shape=(), kinds="iu")
                groups = int(groups_array)
                if groups != len(self.param_groups):
                    raise ValueError(
                        f"{owner}: {str(path)!r} holds {groups} param groups, this optimiser has {len(self.param_groups)}"
                    )
                flat = {"groups": groups_array}
                for name in npz.names:
                    if name == "groups":
                        continue
                    if name == "optimizer":
                        flat[name] = npz.read(name, shape=(), kinds="U", max_itemsize=4 * 256)
                    else:
                        flat[name] = npz.read(name, kinds="biuf", max_size=largest)
        except FileNotFoundError:
            raise FileNotFoundError(f"{owner}: no optimiser state file {str(path)!r}") from None
        except ValueError as exc:
            message = str(exc)
            raise ValueError(message if message.startswith(owner) else f"{owner}: {message}") from None
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
        self.load_state_dict(state)
