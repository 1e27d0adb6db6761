r"""Hyperparameter schedules, evaluated inside the compiled train step.

A schedule is a value as a function of :math:`s`, the number of updates applied so far
(0 for the first step, as optax counts). Pass one as any hyperparameter::

    lr = symopt.schedules.warmup_cosine(peak=1e-3, warmup_steps=100, total_steps=10_000)
    opt = symopt.Adam(params, learning_rate=lr)

The optimiser evaluates it on its own step counter in the graph, so no Python runs per
step. ``lr(s)`` evaluates it in NumPy (plotting, testing). Its parameters are shared
scalars: ``lr.set("peak", 5e-4)`` changes compiled functions without recompiling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable

__all__ = [
    "Schedule",
    "constant",
    "step_decay",
    "exponential_decay",
    "inverse_time",
    "cosine_decay",
    "linear_warmup",
    "warmup_cosine",
    "piecewise_constant",
    "one_cycle",
]


class _NumpyOps:
    """The few operations a schedule formula needs, on NumPy values."""

    cos, exp, floor, minimum, maximum = np.cos, np.exp, np.floor, np.minimum, np.maximum
    pi = math.pi

    @staticmethod
    def where(cond: Any, a: Any, b: Any) -> Any:
        return np.where(cond, a, b)

    @staticmethod
    def count_le(boundaries: Any, s: Any) -> Any:
        # (..., 1) against (n,): a scalar step gives a scalar count
        return (np.asarray(boundaries) <= np.asarray(s, dtype=np.float64)[..., None]).sum(-1)

    @staticmethod
    def take(values: Any, index: Any) -> Any:
        return np.asarray(values)[index]


class _SymbolicOps:
    """The same operations on PyTensor variables."""

    cos, exp, floor, minimum, maximum = pt.cos, pt.exp, pt.floor, pt.minimum, pt.maximum
    pi = math.pi

    @staticmethod
    def where(cond: Any, a: Any, b: Any) -> Any:
        return pt.switch(cond, a, b)

    @staticmethod
    def count_le(boundaries: Any, s: Any) -> Any:
        return pt.sum(pt.le(boundaries, s))

    @staticmethod
    def take(values: Any, index: Any) -> Any:
        return values[index]


class Schedule:
    """Base class: a formula over named parameters, written once for NumPy and PyTensor.

    Subclasses declare ``parameters`` (name -> default, ``None`` for required) and
    implement ``formula(s, p, ops)`` with ``p`` the parameter values and ``ops`` the
    NumPy or PyTensor operations.
    """

    parameters: ClassVar[dict[str, float | None]] = {}

    def __init__(self, **values: Any):
        kind = type(self).__name__
        unknown = set(values) - set(self.parameters)
        if unknown:
            raise TypeError(f"{kind}: unknown schedule parameter(s) {sorted(unknown)}; it takes {list(self.parameters)}")
        missing = [k for k, v in self.parameters.items() if v is None and k not in values]
        if missing:
            raise TypeError(f"{kind}: missing required parameter(s) {missing}")
        merged = {k: values.get(k, default) for k, default in self.parameters.items()}
        for key, value in merged.items():
            self.validate(key, self._number(key, value))
        self._shared: dict[str, SharedVariable] = {
            k: pytensor.shared(np.float64(v), name=f"{kind}.{k}") for k, v in merged.items()
        }
        self.check()

    def _number(self, key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{type(self).__name__}: parameter {key!r} must be a real number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{type(self).__name__}: parameter {key!r} must be finite, got {value}")
        return value

    def validate(self, key: str, value: float) -> None:
        """Per-parameter checks; override to add constraints."""
        if key.endswith("steps") and value <= 0:
            raise ValueError(f"{type(self).__name__}: {key!r} must be > 0, got {value}")

    def check(self) -> None:
        """Checks across parameters (after all are set); override when needed."""

    # -- values -----------------------------------------------------------------
    def get(self, key: str) -> float:
        """Current value of a parameter."""
        if key not in self._shared:
            raise KeyError(f"{type(self).__name__} has no parameter {key!r}; it has {list(self.parameters)}")
        return float(self._shared[key].get_value())

    def set(self, key: str, value: float) -> None:
        """Change a parameter; compiled functions use it from their next call."""
        if key not in self._shared:
            raise KeyError(f"{type(self).__name__} has no parameter {key!r}; it has {list(self.parameters)}")
        value = self._number(key, value)
        self.validate(key, value)
        old = self._shared[key].get_value()
        self._shared[key].set_value(np.float64(value))
        try:
            self.check()
        except ValueError:
            self._shared[key].set_value(old)
            raise

    @property
    def values(self) -> dict[str, float]:
        return {k: float(v.get_value()) for k, v in self._shared.items()}

    def state(self) -> dict[str, np.ndarray]:
        """Parameter values as arrays (for optimiser state files)."""
        return {k: np.array(v.get_value(), dtype=np.float64) for k, v in self._shared.items()}

    def checked_state(self, state: Any) -> dict[str, np.ndarray]:
        """Validate a :meth:`state` dict against this schedule without changing anything."""
        kind = type(self).__name__
        if not isinstance(state, dict) or set(state) != set(self._shared):
            raise ValueError(f"{kind}: saved schedule parameters {sorted(state) if isinstance(state, dict) else state!r} "
                             f"do not match {sorted(self._shared)}")
        out = {}
        for key, value in state.items():
            array = np.asarray(value)
            if array.shape != ():
                raise ValueError(f"{kind}: saved parameter {key!r} must be a scalar, got shape {array.shape}")
            number = self._number(key, array.item())
            self.validate(key, number)
            out[key] = np.float64(number)
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Apply a dict from :meth:`checked_state`."""
        for key, value in state.items():
            self._shared[key].set_value(np.float64(value))

    def __call__(self, step: Any) -> np.ndarray:
        """NumPy value after ``step`` applied updates (scalar or array)."""
        s = np.asarray(step, dtype=np.float64)
        if np.any(s < 0):
            raise ValueError(f"{type(self).__name__}: step must be >= 0")
        return np.asarray(self.formula(s, self.values, _NumpyOps), dtype=np.float64)

    def symbolic(self, step: Any) -> pt.TensorVariable:
        """float64 PyTensor expression of the value after ``step`` updates."""
        s = pt.cast(step, "float64")
        return pt.cast(self.formula(s, self._shared, _SymbolicOps), "float64")

    def formula(self, s: Any, p: Any, ops: Any) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v:g}' for k, v in self.values.items())})"


def _cosine(progress: Any, ops: Any) -> Any:
    """1 -> 0 along half a cosine as progress goes 0 -> 1."""
    return 0.5 * (1 + ops.cos(ops.pi * progress))


class Constant(Schedule):
    """``value`` at every step."""

    parameters = {"value": None}

    def formula(self, s, p, ops):
        return p["value"] + 0 * s


class StepDecay(Schedule):
    r""":math:`v_0 \cdot f^{\lfloor s / n \rfloor}`: multiply by ``factor`` every ``step_size`` steps."""

    parameters = {"initial": None, "factor": 0.1, "step_size": None}

    def validate(self, key, value):
        super().validate(key, value)
        if key == "step_size" and value <= 0:
            raise ValueError(f"StepDecay: 'step_size' must be > 0, got {value}")

    def formula(self, s, p, ops):
        return p["initial"] * p["factor"] ** ops.floor(s / p["step_size"])


class ExponentialDecay(Schedule):
    r""":math:`v_0 \cdot r^{s / n}` (continuous; ``decay_steps`` is :math:`n`)."""

    parameters = {"initial": None, "decay_rate": None, "decay_steps": 1.0}

    def validate(self, key, value):
        super().validate(key, value)
        if key == "decay_rate" and value <= 0:
            raise ValueError(f"ExponentialDecay: 'decay_rate' must be > 0, got {value}")

    def formula(self, s, p, ops):
        return p["initial"] * p["decay_rate"] ** (s / p["decay_steps"])


class InverseTime(Schedule):
    r""":math:`v_0 / (1 + k\, s / n)`, the classic :math:`1/t` decay."""

    parameters = {"initial": None, "decay_rate": 1.0, "decay_steps": 1.0}

    def validate(self, key, value):
        super().validate(key, value)
        if key == "decay_rate" and value < 0:
            raise ValueError(f"InverseTime: 'decay_rate' must be >= 0, got {value}")

    def formula(self, s, p, ops):
        return p["initial"] / (1 + p["decay_rate"] * s / p["decay_steps"])


class CosineDecay(Schedule):
    r"""From ``initial`` to ``final`` along half a cosine over ``total_steps``, then ``final``
    (Loshchilov & Hutter, SGDR, without restarts)."""

    parameters = {"initial": None, "total_steps": None, "final": 0.0}

    def formula(self, s, p, ops):
        progress = ops.minimum(s, p["total_steps"]) / p["total_steps"]
        return p["final"] + (p["initial"] - p["final"]) * _cosine(progress, ops)


class LinearWarmup(Schedule):
    """From ``start`` to ``peak`` linearly over ``warmup_steps``, then ``peak``."""

    parameters = {"peak": None, "warmup_steps": None, "start": 0.0}

    def formula(self, s, p, ops):
        return p["start"] + (p["peak"] - p["start"]) * ops.minimum(s / p["warmup_steps"], 1.0)


class WarmupCosine(Schedule):
    """Linear warm-up from ``start`` to ``peak`` over ``warmup_steps``, then cosine decay to
    ``final`` at ``total_steps`` (optax's ``warmup_cosine_decay_schedule``)."""

    parameters = {"peak": None, "warmup_steps": None, "total_steps": None, "start": 0.0, "final": 0.0}

    def check(self):
        if self.get("total_steps") <= self.get("warmup_steps"):
            raise ValueError("WarmupCosine: 'total_steps' must exceed 'warmup_steps'")

    def formula(self, s, p, ops):
        warm = p["start"] + (p["peak"] - p["start"]) * s / p["warmup_steps"]
        progress = ops.minimum(s - p["warmup_steps"], p["total_steps"] - p["warmup_steps"]) / (
            p["total_steps"] - p["warmup_steps"]
        )
        decay = p["final"] + (p["peak"] - p["final"]) * _cosine(progress, ops)
        return ops.where(s < p["warmup_steps"], warm, decay)


class PiecewiseConstant(Schedule):
    """``values[i]`` while ``boundaries[i-1] <= s < boundaries[i]``; boundaries increasing."""

    parameters = {}

    def __init__(self, boundaries: Sequence[float], values: Sequence[float]):
        boundaries, values = [float(b) for b in boundaries], [float(v) for v in values]
        if len(values) != len(boundaries) + 1:
            raise ValueError(
                f"PiecewiseConstant: needs one more value than boundaries, got {len(values)} values "
                f"for {len(boundaries)} boundaries"
            )
        if any(b <= a for a, b in zip(boundaries, boundaries[1:])) or any(b < 0 for b in boundaries):
            raise ValueError(f"PiecewiseConstant: boundaries must be >= 0 and increasing, got {boundaries}")
        if not all(math.isfinite(v) for v in values + boundaries):
            raise ValueError("PiecewiseConstant: boundaries and values must be finite")
        self._shared = {}
        self.boundaries = pytensor.shared(np.array(boundaries, dtype=np.float64), name="PiecewiseConstant.boundaries")
        self.piece_values = pytensor.shared(np.array(values, dtype=np.float64), name="PiecewiseConstant.values")

    def set_values(self, values: Sequence[float]) -> None:
        """Replace the values (same count) without recompiling."""
        new = np.array([float(v) for v in values], dtype=np.float64)
        if new.shape != self.piece_values.get_value().shape or not np.all(np.isfinite(new)):
            raise ValueError(f"PiecewiseConstant: expected {len(self.piece_values.get_value())} finite values")
        self.piece_values.set_value(new)

    def state(self):
        return {"boundaries": self.boundaries.get_value(), "values": self.piece_values.get_value()}

    def checked_state(self, state):
        if not isinstance(state, dict) or set(state) != {"boundaries", "values"}:
            raise ValueError("PiecewiseConstant: saved state must hold 'boundaries' and 'values'")
        boundaries = np.asarray(state["boundaries"], dtype=np.float64)
        if not np.array_equal(boundaries, self.boundaries.get_value()):
            raise ValueError(f"PiecewiseConstant: saved boundaries {boundaries.tolist()} differ from "
                             f"{self.boundaries.get_value().tolist()}")
        values = np.asarray(state["values"], dtype=np.float64)
        if values.shape != self.piece_values.get_value().shape or not np.all(np.isfinite(values)):
            raise ValueError(f"PiecewiseConstant: expected {self.piece_values.get_value().size} finite saved values")
        return {"values": values}

    def load_state(self, state):
        self.piece_values.set_value(np.array(state["values"], dtype=np.float64))

    def __call__(self, step):
        s = np.asarray(step, dtype=np.float64)
        if np.any(s < 0):
            raise ValueError("PiecewiseConstant: step must be >= 0")
        index = _NumpyOps.count_le(self.boundaries.get_value(), s)
        return np.asarray(self.piece_values.get_value()[index], dtype=np.float64)

    def symbolic(self, step):
        s = pt.cast(step, "float64")
        return self.piece_values[_SymbolicOps.count_le(self.boundaries, s)]

    def __repr__(self):
        return f"PiecewiseConstant(boundaries={self.boundaries.get_value().tolist()}, values={self.piece_values.get_value().tolist()})"


class OneCycle(Schedule):
    """Smith & Topin's one-cycle policy in the cosine form of torch's ``OneCycleLR``:
    ``max_value / div_factor`` -> ``max_value`` at ``s = pct_start * total_steps``, then
    down to ``max_value / (div_factor * final_div_factor)`` at ``s = total_steps``
    (torch reaches them one step earlier, at ``pct_start * total_steps - 1`` and
    ``total_steps - 1``)."""

    parameters = {"max_value": None, "total_steps": None, "pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4}

    def validate(self, key, value):
        super().validate(key, value)
        if key == "pct_start" and not 0 < value < 1:
            raise ValueError(f"OneCycle: 'pct_start' must be in (0, 1), got {value}")
        if key in ("div_factor", "final_div_factor") and value <= 0:
            raise ValueError(f"OneCycle: {key!r} must be > 0, got {value}")

    def formula(self, s, p, ops):
        initial = p["max_value"] / p["div_factor"]
        final = initial / p["final_div_factor"]
        up_steps = p["pct_start"] * p["total_steps"]
        down_steps = p["total_steps"] - up_steps
        up = p["max_value"] + (initial - p["max_value"]) * _cosine(s / up_steps, ops)
        progress = ops.minimum(s - up_steps, down_steps) / down_steps
        down = final + (p["max_value"] - final) * _cosine(progress, ops)
        return ops.where(s < up_steps, up, down)


# Lower-case constructors, as the schedules are usually spelled.
constant = Constant
step_decay = StepDecay
exponential_decay = ExponentialDecay
inverse_time = InverseTime
cosine_decay = CosineDecay
linear_warmup = LinearWarmup
warmup_cosine = WarmupCosine
piecewise_constant = PiecewiseConstant
one_cycle = OneCycle
