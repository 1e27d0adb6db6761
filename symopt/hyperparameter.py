"""Hyperparameter declarations and the values a rule's ``update_param`` receives.

A rule declares each hyperparameter once, in its class::

    hyperparameters = {
        "learning_rate": Hyperparameter(1e-3, low=0.0, doc="step size"),
        "beta1": Hyperparameter(0.9, low=0.0, high=1.0),
        "amsgrad": Hyperparameter(False),       # a boolean: a structural option
    }

The declaration is the default and the valid range; construction, ``set_hyperparameter``,
``Rule.validate`` and state loading all check values against it. At step-building time
the rule gets a :class:`Values`: every hyperparameter as a symbolic scalar already in the
parameter's dtype, the options as Python booleans, and ``t``, the 1-based step.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.tensor.variable import TensorVariable

__all__ = ["Hyperparameter", "Values", "HYPERPARAMETER_BOUNDS", "ALIASES", "check_number", "is_vector", "member_view"]

#: name -> (low, high, low_inclusive, high_inclusive) of the built-in rules' declarations
#: (filled by :mod:`symopt.rules` from them). A rule declaring a bare number under one of
#: these names gets this range; any other bare number only has to be finite.
HYPERPARAMETER_BOUNDS: dict[str, tuple[float, float, bool, bool]] = {}

#: Names users coming from torch.optim, Keras or the seeds type; used for "did you mean".
ALIASES = {
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


def _interval(low: float, high: float, low_inclusive: bool, high_inclusive: bool) -> str:
    return f"{'[' if low_inclusive else '('}{low:g}, {high:g}{']' if high_inclusive else ')'}"


def check_number(
    owner: str, name: str, value: Any, bounds: tuple[float, float, bool, bool] | None = None
) -> float:
    """Validate one numeric value (real, finite, within ``bounds``); returns it as a float.

    ``bounds=None`` looks the name up in :data:`HYPERPARAMETER_BOUNDS`.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
            value = value.item()
        else:
            raise TypeError(f"{owner}: hyperparameter {name!r} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{owner}: hyperparameter {name!r} must be finite, got {value}")
    if bounds is None:
        bounds = HYPERPARAMETER_BOUNDS.get(name)
    if bounds is not None:
        lo, hi, lo_in, hi_in = bounds
        ok_lo = value >= lo if lo_in else value > lo
        ok_hi = value <= hi if hi_in else value < hi
        if not (ok_lo and ok_hi):
            raise ValueError(f"{owner}: hyperparameter {name!r} must lie in {_interval(*bounds)}, got {value}")
    return value


def is_vector(value: Any) -> bool:
    """Whether ``value`` is a per-member vector (a list, tuple or 1-d array), not one number."""
    return isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim > 0)


def member_view(value: Any, ndim: int) -> Any:
    """A per-member value of shape ``(S,)`` as ``(S, 1, ..., 1)`` against an ``ndim``-d tensor
    whose leading axis is the stack axis; a scalar as it is."""
    value = pt.as_tensor_variable(value)
    if value.ndim != 1 or ndim <= 1:
        return value
    return value.dimshuffle(0, *(["x"] * (ndim - 1)))


@dataclass(frozen=True)
class Hyperparameter:
    """One declared hyperparameter: its default and valid range.

    Parameters
    ----------
    default
        A number (a float64 shared scalar at run time, changeable without recompiling,
        or a :mod:`symopt.schedules` object) or a boolean (a structural option, fixed at
        construction because it changes the graph).
    low, high, low_inclusive, high_inclusive
        The valid interval; ``None`` leaves that side open (finite values only).
    doc
        One line for error messages and documentation.
    """

    default: float | bool
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = False
    doc: str = ""
    #: A bare number in a rule's table: the range comes from HYPERPARAMETER_BOUNDS by name.
    by_name: bool = False

    @property
    def is_option(self) -> bool:
        return isinstance(self.default, (bool, np.bool_))

    def bounds(self, name: str) -> tuple[float, float, bool, bool] | None:
        """``(low, high, low_inclusive, high_inclusive)``, or ``None`` (finite is enough)."""
        if self.by_name:
            return HYPERPARAMETER_BOUNDS.get(name)
        if self.low is None and self.high is None:
            return None
        low = -math.inf if self.low is None else self.low
        high = math.inf if self.high is None else self.high
        return (low, high, self.low_inclusive, self.high_inclusive)

    def check(self, owner: str, name: str, value: Any) -> float | bool:
        """The value, validated: a bool for an option, else a float within the range."""
        if self.is_option or not is_vector(value):
            return self._check_one(owner, name, value)
        if isinstance(value, np.ndarray) and value.ndim != 1:
            raise ValueError(f"{owner}: hyperparameter {name!r} must be a number or a vector (one value per stack "
                             f"member), got an array of shape {value.shape}")
        if len(value) == 0:
            raise ValueError(f"{owner}: hyperparameter {name!r} is an empty vector; give one value per stack member")
        # Each member's value is checked as a scalar would be (elementwise range).
        return np.array([self._check_one(owner, f"{name}[{i}]", v) for i, v in enumerate(value)],  # type: ignore[return-value]
                        dtype=np.float64)

    def _check_one(self, owner: str, name: str, value: Any) -> float | bool:
        if self.is_option:
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{owner}: option {name!r} must be True or False, got {value!r}")
            return bool(value)
        return check_number(owner, name, value, self.bounds(name.split("[")[0]) or (-math.inf, math.inf, True, True))

    @classmethod
    def declare(cls, value: Any) -> Hyperparameter:
        """A table entry as a declaration (a bare default takes its range from the name)."""
        return value if isinstance(value, Hyperparameter) else cls(value, by_name=True)


class Values:
    """What ``update_param(param, grad, state, h)`` receives as ``h``.

    Every numeric hyperparameter of the parameter's group as an attribute (a symbolic
    scalar in ``h.dtype``; a schedule already evaluated at this step), every option as a
    Python bool, ``h.t`` the 1-based number of the step being built. On a seed stack a
    per-member value (and ``h.t`` when members count their own steps) has shape
    ``(S, 1, ..., 1)``, broadcasting against the stacked parameter, so a rule written for
    scalars steps every member with its own values. Also a read-only
    mapping (``h["beta1"]``, ``"amsgrad" in h``).

    Per-step scalar coefficients that cancel badly in float32 (``1 - beta2**t``) belong
    in float64, as torch computes them with Python floats::

        with h.float64() as f:
            step_size = f.cast(f.learning_rate / (1 - f.beta1**f.t))
    """

    def __init__(
        self,
        values: Mapping[str, Any],
        t: TensorVariable,
        dtype: str,
        target: str,
        make: Callable[[str, str], Values],
    ):
        self._values = dict(values)
        self._make = make
        self.t = t
        self.dtype = dtype
        self.target = target
        for key, value in self._values.items():
            setattr(self, key, value)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def keys(self) -> list[str]:
        return list(self._values)

    def cast(self, value: Any) -> TensorVariable:
        """A finished coefficient in the parameter's dtype (before it meets an array)."""
        return pt.cast(value, self.target)

    @contextlib.contextmanager
    def float64(self) -> Iterator[Values]:
        """The same values in float64 (Python float literals too); ``.cast`` goes back."""
        with pytensor.config.change_flags(floatX="float64"):
            yield self._make("float64", self.target)
