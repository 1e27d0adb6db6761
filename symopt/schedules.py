r"""Hyperparameter schedules, evaluated inside the compiled train step.

A schedule is a value as a function of :math:`s`, the number of updates applied so far
(0 for the first step, as optax counts). Pass one as any hyperparameter::

    lr = symopt.schedules.warmup_cosine(peak=1e-3, warmup_steps=100, total_steps=10_000)
    opt = symopt.Adam(params, learning_rate=lr)

The optimiser evaluates it on its own step counter in the graph, so no Python runs per
step. ``lr(s)`` evaluates it in NumPy (plotting, testing). Its parameters are shared
scalars: ``lr.set("peak", 5e-4)`` changes compiled functions without recompiling.

On a stack of models (:class:`~symopt.seeds.SeedStack`) any parameter may be a vector with
one value per member: ``cosine_decay(initial=[1e-3, 3e-3], total_steps=1000)`` gives member
``i`` the schedule ``cosine_decay(initial=[1e-3, 3e-3][i], total_steps=1000)``; the value is
then a vector over members (``lr(s)`` of shape ``(*np.shape(s), S)``), parameters given as
one number are shared by the members, and every vector has the stack's length.

torch's schedulers count the same way when stepped once per optimiser step: the value at
``s`` is the learning rate a ``torch.optim.lr_scheduler`` gives after ``s`` calls of
``scheduler.step()`` (its ``last_epoch``). :func:`cosine_restarts`, :func:`cyclic`,
:func:`polynomial` and :func:`join` equal ``CosineAnnealingWarmRestarts``, ``CyclicLR``,
``PolynomialLR`` and ``SequentialLR`` step for step (``benchmarks/validate_schedules.py``).
A torch schedule stepped once per *epoch* counts epochs instead: give symopt its
periods in steps (``period=10 * steps_per_epoch``); symopt then moves within the epoch
where torch holds the value for the whole epoch.
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
    "cosine_restarts",
    "cyclic",
    "polynomial",
    "join",
]


class _NumpyOps:
    """The few operations a schedule formula needs, on NumPy values."""

    cos, exp, log, floor, minimum, maximum = np.cos, np.exp, np.log, np.floor, np.minimum, np.maximum
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

    cos, exp, log, floor, minimum, maximum = pt.cos, pt.exp, pt.log, pt.floor, pt.minimum, pt.maximum
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
    NumPy or PyTensor operations. A parameter given per stack member is a vector in
    ``p`` (the formula broadcasts it; :meth:`validate` sees each member's number,
    :meth:`check` the vectors).
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
        merged = {k: self._value(k, values.get(k, default)) for k, default in self.parameters.items()}
        lengths = {k: len(v) for k, v in merged.items() if v.ndim == 1}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{kind}: per-member parameters must have one value per stack member, the same number "
                             f"each; got lengths {lengths}")
        self._shared: dict[str, SharedVariable] = {
            k: pytensor.shared(v, name=f"{kind}.{k}") for k, v in merged.items()
        }
        self.check()

    def _number(self, key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{type(self).__name__}: parameter {key!r} must be a real number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{type(self).__name__}: parameter {key!r} must be finite, got {value}")
        return value

    def _value(self, key: str, value: Any) -> np.ndarray:
        """A checked parameter value: a float64 scalar, or a float64 vector (one per member)."""
        if isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, (str, bytes)):
            shape = np.shape(value) if isinstance(value, np.ndarray) else (len(value),)
            if len(shape) != 1 or shape[0] == 0:
                raise ValueError(f"{type(self).__name__}: parameter {key!r} must be a number or a non-empty list of "
                                 f"numbers (one per stack member), got shape {shape}")
            numbers = [self._number(key, v.item() if isinstance(v, np.generic) else v) for v in value]
            for number in numbers:
                self.validate(key, number)
            return np.array(numbers, dtype=np.float64)
        number = self._number(key, value)
        self.validate(key, number)
        return np.array(number, dtype=np.float64)

    @property
    def n_members(self) -> int | None:
        """The number of stack members of the per-member parameters; ``None`` when every
        parameter is one number (the schedule is then a scalar)."""
        for var in self._shared.values():
            value = var.get_value(borrow=True)
            if value.ndim == 1:
                return len(value)
        return None

    def validate(self, key: str, value: float) -> None:
        """Per-parameter checks; override to add constraints."""
        if key.endswith("steps") and value <= 0:
            raise ValueError(f"{type(self).__name__}: {key!r} must be > 0, got {value}")

    def check(self) -> None:
        """Checks across parameters (after all are set); override when needed."""

    # -- values -----------------------------------------------------------------
    def get(self, key: str) -> float | np.ndarray:
        """Current value of a parameter (a per-member one as a vector)."""
        if key not in self._shared:
            raise KeyError(f"{type(self).__name__} has no parameter {key!r}; it has {list(self.parameters)}")
        return _plain(self._shared[key].get_value())

    def set(self, key: str, value: float | Sequence[float] | np.ndarray) -> None:
        """Change a parameter; compiled functions use it from their next call.

        A per-member parameter takes a vector of the same length, or one number for every
        member; one built as a single number stays one (the compiled graph is scalar there).
        """
        if key not in self._shared:
            raise KeyError(f"{type(self).__name__} has no parameter {key!r}; it has {list(self.parameters)}")
        kind = type(self).__name__
        old = self._shared[key].get_value()
        new = self._value(key, value)
        if old.ndim == 0 and new.ndim == 1:
            raise ValueError(f"{kind}: parameter {key!r} was built as one number for all stack members; give a "
                             f"per-member vector at construction to set it per member")
        if old.ndim == 1:
            if new.ndim == 0:
                new = np.full(old.shape, new, dtype=np.float64)
            elif new.shape != old.shape:
                raise ValueError(f"{kind}: parameter {key!r} has {len(old)} per-member values, got {len(new)}")
        self._shared[key].set_value(new)
        try:
            self.check()
        except ValueError:
            self._shared[key].set_value(old)
            raise

    @property
    def values(self) -> dict[str, float | np.ndarray]:
        return {k: _plain(v.get_value()) for k, v in self._shared.items()}

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
            shape = self._shared[key].get_value(borrow=True).shape
            if array.shape != shape:
                what = "a scalar" if shape == () else f"{shape[0]} per-member values"
                raise ValueError(f"{kind}: saved parameter {key!r} must be {what}, got shape {array.shape}")
            if array.ndim == 0:
                number = self._number(key, array.item())
                self.validate(key, number)
                out[key] = np.array(number, dtype=np.float64)
            else:
                out[key] = self._value(key, array)
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Apply a dict from :meth:`checked_state`."""
        for key, value in state.items():
            self._shared[key].set_value(np.array(value, dtype=np.float64))

    def __call__(self, step: Any) -> np.ndarray:
        """NumPy value after ``step`` applied updates (scalar or array); with per-member
        parameters one more, last axis: the members."""
        s = np.asarray(step, dtype=np.float64)
        if np.any(s < 0):
            raise ValueError(f"{type(self).__name__}: step must be >= 0")
        members = self.n_members
        if members is None:
            return np.asarray(self.formula(s, self.values, _NumpyOps), dtype=np.float64)
        value = self.formula(s[..., None], self.values, _NumpyOps)
        return np.array(np.broadcast_to(value, (*s.shape, members)), dtype=np.float64)

    def symbolic(self, step: Any) -> pt.TensorVariable:
        """float64 PyTensor expression of the value after ``step`` updates (a vector over
        members when a parameter is per member)."""
        s = pt.cast(step, "float64")
        value = pt.cast(self.formula(s, self._shared, _SymbolicOps), "float64")
        members = self.n_members
        return value if members is None else pt.broadcast_to(value, (members,))

    def formula(self, s: Any, p: Any, ops: Any) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={_format(v)}' for k, v in self.values.items())})"


def _plain(value: np.ndarray) -> float | np.ndarray:
    """A parameter as users see it: a float, or a copy of the per-member vector."""
    return float(value) if np.ndim(value) == 0 else np.array(value, dtype=np.float64)


def _format(value: float | np.ndarray) -> str:
    if np.ndim(value) == 0:
        return f"{value:g}"
    return "[" + ", ".join(f"{v:g}" for v in np.asarray(value)) + "]"


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
        if np.any(np.asarray(self.get("total_steps")) <= np.asarray(self.get("warmup_steps"))):
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


def _check_whole(kind: str, key: str, value: float) -> None:
    if value < 1 or not value.is_integer():
        raise ValueError(f"{kind}: {key!r} must be an integer >= 1, got {value:g}")


class CosineRestarts(Schedule):
    r"""Cosine annealing with warm restarts (SGDR, Loshchilov & Hutter, ICLR 2017), torch's
    ``CosineAnnealingWarmRestarts(T_0=period, T_mult=period_mult, eta_min=minimum)``.

    Cycle :math:`i` lasts :math:`T_i = T_0 m^i` steps (:math:`T_0` = ``period``,
    :math:`m` = ``period_mult``) and starts at :math:`S_i = T_0 (m^i - 1) / (m - 1)`
    (:math:`S_i = i T_0` when :math:`m = 1`). With :math:`i` the cycle holding :math:`s`
    and :math:`T_{cur} = s - S_i`,

    .. math:: v(s) = v_{min} + \tfrac12 (v_0 - v_{min}) \bigl(1 + \cos(\pi T_{cur} / T_i)\bigr)

    from ``initial`` (:math:`v_0`) at each restart towards ``minimum`` (:math:`v_{min}`).
    ``period`` and ``period_mult`` are integers >= 1, as in torch.
    """

    parameters = {"initial": None, "period": None, "period_mult": 1.0, "minimum": 0.0}

    def validate(self, key, value):
        super().validate(key, value)
        if key in ("period", "period_mult"):
            _check_whole("CosineRestarts", key, value)

    def formula(self, s, p, ops):
        period, mult = p["period"], p["period_mult"]
        # period_mult is a shared value: both cases live in one graph, the m > 1 branch
        # with a stand-in m so that it stays finite when m == 1.
        m = ops.where(mult > 1, mult, 2.0)

        def start(cycle: Any) -> Any:
            return period * (m**cycle - 1) / (m - 1)

        guess = ops.floor(ops.log(s * (m - 1) / period + 1) / ops.log(m))
        # the logarithm can land a hair below an integer at a cycle's first step: correct it
        guess = guess + ops.where(start(guess + 1) <= s, 1.0, 0.0) - ops.where(start(guess) > s, 1.0, 0.0)
        cycle = ops.where(mult > 1, guess, ops.floor(s / period))
        begin = ops.where(mult > 1, start(cycle), cycle * period)
        return p["minimum"] + (p["initial"] - p["minimum"]) * _cosine((s - begin) / (period * mult**cycle), ops)


class Cyclic(Schedule):
    r"""Cyclical learning rates (Smith, WACV 2017), torch's ``CyclicLR(base_lr=low,
    max_lr=high, step_size_up, step_size_down, mode, gamma)``.

    A cycle of :math:`C = u + d` steps rises linearly from ``low`` to ``high`` over
    :math:`u` = ``step_size_up`` steps and falls back over :math:`d` = ``step_size_down``
    (default :math:`u`). With :math:`c = \lfloor 1 + s / C \rfloor` the 1-based cycle,
    :math:`x = 1 + s / C - c` and :math:`r = u / C`,

    .. math::
        v(s) = v_{low} + (v_{high} - v_{low}) \, h(x) \, f, \qquad
        h(x) = \begin{cases} x / r & x \le r \\ (x - 1) / (r - 1) & x > r \end{cases}

    with the amplitude factor :math:`f = 1` (``mode="triangular"``), :math:`f = 2^{1-c}`
    (``"triangular2"``: halved every cycle) or :math:`f = \gamma^s` (``"exp_range"``,
    ``gamma``). ``mode`` shapes the graph and is fixed at construction; ``step_size_down``
    is resolved then too (a later ``set("step_size_up", ...)`` leaves it). ``low`` above
    ``high`` is allowed (torch cycles momentum that way).
    """

    parameters = {"low": None, "high": None, "step_size_up": None, "step_size_down": None, "gamma": 1.0}
    MODES: ClassVar[tuple[str, ...]] = ("triangular", "triangular2", "exp_range")

    def __init__(
        self,
        low: float,
        high: float,
        step_size_up: float,
        step_size_down: float | None = None,
        mode: str = "triangular",
        gamma: float | None = None,
    ):
        if mode not in self.MODES:
            raise ValueError(f"Cyclic: mode must be one of {list(self.MODES)}, got {mode!r}")
        if gamma is not None and mode != "exp_range":
            raise ValueError(f"Cyclic: gamma applies to mode='exp_range' only, not mode={mode!r}")
        self.mode = mode
        super().__init__(
            low=low,
            high=high,
            step_size_up=step_size_up,
            step_size_down=step_size_up if step_size_down is None else step_size_down,
            gamma=1.0 if gamma is None else gamma,
        )

    def validate(self, key, value):
        super().validate(key, value)
        if key.startswith("step_size") and value <= 0:
            raise ValueError(f"Cyclic: {key!r} must be > 0, got {value:g}")
        if key == "gamma" and value <= 0:
            raise ValueError(f"Cyclic: 'gamma' must be > 0, got {value:g}")

    def formula(self, s, p, ops):
        total = p["step_size_up"] + p["step_size_down"]
        ratio = p["step_size_up"] / total
        cycle = ops.floor(1 + s / total)
        x = 1.0 + s / total - cycle
        height = (p["high"] - p["low"]) * ops.where(x <= ratio, x / ratio, (x - 1) / (ratio - 1))
        if self.mode == "triangular2":
            height = height / 2.0 ** (cycle - 1)
        elif self.mode == "exp_range":
            height = height * p["gamma"] ** s
        return p["low"] + height

    def __repr__(self):
        return f"{super().__repr__()[:-1]}, mode={self.mode!r})"


class Polynomial(Schedule):
    r"""Polynomial decay from ``initial`` to ``final`` over ``total_steps``, then ``final``:

    .. math:: v(s) = v_T + (v_0 - v_T) \bigl(1 - \min(s, T) / T\bigr)^{p}

    torch's ``PolynomialLR(total_iters=T, power=p)`` (which ends at 0) and optax's
    ``polynomial_schedule(init_value, end_value, power, transition_steps)``. ``power`` > 0.
    """

    parameters = {"initial": None, "total_steps": None, "power": 1.0, "final": 0.0}

    def validate(self, key, value):
        super().validate(key, value)
        if key == "power" and value <= 0:
            raise ValueError(f"Polynomial: 'power' must be > 0, got {value:g}")

    def formula(self, s, p, ops):
        remaining = 1 - ops.minimum(s, p["total_steps"]) / p["total_steps"]
        return p["final"] + (p["initial"] - p["final"]) * remaining ** p["power"]


class Join(Schedule):
    r"""Schedules one after another: ``schedules[k]`` from ``boundaries[k-1]`` on, seeing
    the step counted from its boundary (torch's ``SequentialLR(milestones=boundaries)``,
    optax's ``join_schedules``):

    .. math:: v(s) = v_k(s - b_k), \qquad b_{k} \le s < b_{k+1}, \quad b_0 = 0.

    ``boundaries`` (one fewer than ``schedules``) are fixed; the parts' parameters are
    reached as ``"k.name"``: ``join.set("1.initial", 0.1)`` or ``join.schedules[1].set(...)``.
    Unlike torch, each part has its own starting value (torch's all start from the
    optimiser's learning rate).
    """

    parameters = {}

    def __init__(self, schedules: Sequence[Schedule], boundaries: Sequence[float]):
        if isinstance(schedules, Schedule) or not isinstance(schedules, Sequence) or not schedules:
            raise TypeError(f"Join: schedules must be a non-empty list of schedules, got {schedules!r}")
        for index, part in enumerate(schedules):
            if not isinstance(part, Schedule):
                raise TypeError(f"Join: schedules[{index}] is a {type(part).__name__}, not a symopt schedule")
        if isinstance(boundaries, (str, bytes)) or not isinstance(boundaries, Sequence):
            raise TypeError(f"Join: boundaries must be a list of steps, got {boundaries!r}")
        if len(boundaries) != len(schedules) - 1:
            raise ValueError(
                f"Join: needs one boundary fewer than schedules, got {len(boundaries)} boundaries "
                f"for {len(schedules)} schedules"
            )
        steps = [self._number(f"boundaries[{i}]", b) for i, b in enumerate(boundaries)]
        if any(b <= a for a, b in zip(steps, steps[1:])) or any(b < 0 for b in steps):
            raise ValueError(f"Join: boundaries must be >= 0 and increasing, got {steps}")
        lengths = {index: part.n_members for index, part in enumerate(schedules) if part.n_members is not None}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"Join: the per-member parts must have one length (one value per stack member); got "
                             f"{', '.join(f'schedules[{k}]: {n}' for k, n in lengths.items())}")
        self._shared = {}
        self.schedules: tuple[Schedule, ...] = tuple(schedules)
        self.boundaries: tuple[float, ...] = tuple(steps)

    @property
    def n_members(self) -> int | None:
        return next((part.n_members for part in self.schedules if part.n_members is not None), None)

    def _part(self, key: str) -> tuple[Schedule, str]:
        index, dot, name = key.partition(".")
        if not dot or not index.isdigit() or int(index) >= len(self.schedules):
            raise KeyError(f"Join has no parameter {key!r}; its parameters are 'k.name' with k < {len(self.schedules)}, "
                           f"e.g. {next(iter(self.values), '0.initial')!r}")
        return self.schedules[int(index)], name

    def get(self, key):
        part, name = self._part(key)
        return part.get(name)

    def set(self, key, value):
        part, name = self._part(key)
        part.set(name, value)

    @property
    def values(self):
        return {f"{k}.{name}": v for k, part in enumerate(self.schedules) for name, v in part.values.items()}

    def state(self):
        out = {"boundaries": np.array(self.boundaries, dtype=np.float64)}
        for k, part in enumerate(self.schedules):
            out.update({f"{k}.{name}": value for name, value in part.state().items()})
        return out

    def checked_state(self, state):
        if not isinstance(state, dict) or "boundaries" not in state:
            raise ValueError("Join: saved state must hold 'boundaries' and the parts' parameters")
        boundaries = np.asarray(state["boundaries"], dtype=np.float64)
        if not np.array_equal(boundaries, np.array(self.boundaries, dtype=np.float64)):
            raise ValueError(f"Join: saved boundaries {boundaries.tolist()} differ from {list(self.boundaries)}")
        parts: list[dict[str, Any]] = [{} for _ in self.schedules]
        for key, value in state.items():
            if key == "boundaries":
                continue
            index, dot, name = key.partition(".")
            if not dot or not index.isdigit() or int(index) >= len(self.schedules):
                raise ValueError(f"Join: saved state has an unexpected entry {key!r}")
            parts[int(index)][name] = value
        checked = {}
        for k, (part, saved) in enumerate(zip(self.schedules, parts)):
            try:
                checked[k] = part.checked_state(saved)
            except ValueError as exc:
                raise ValueError(f"Join: schedules[{k}]: {exc}") from None
        return checked

    def load_state(self, state):
        for k, part in enumerate(self.schedules):
            part.load_state(state[k])

    def __call__(self, step):
        s = np.asarray(step, dtype=np.float64)
        if np.any(s < 0):
            raise ValueError("Join: step must be >= 0")
        members = self.n_members

        def value(part: Schedule, at: np.ndarray) -> np.ndarray:
            # A part shared by the members, against per-member ones: a members axis of 1.
            out = part(at)
            return out[..., None] if members is not None and part.n_members is None else out

        before = s if members is None else s[..., None]
        out = value(self.schedules[0], s)
        for boundary, part in zip(self.boundaries, self.schedules[1:]):
            out = np.where(before < boundary, out, value(part, np.maximum(s - boundary, 0.0)))
        shape = s.shape if members is None else (*s.shape, members)
        return np.array(np.broadcast_to(out, shape), dtype=np.float64)

    def symbolic(self, step):
        s = pt.cast(step, "float64")
        out = self.schedules[0].symbolic(s)
        for boundary, part in zip(self.boundaries, self.schedules[1:]):
            out = pt.switch(pt.lt(s, boundary), out, part.symbolic(pt.maximum(s - boundary, 0.0)))
        out = pt.cast(out, "float64")
        members = self.n_members
        return out if members is None else pt.broadcast_to(out, (members,))

    def __repr__(self):
        return f"Join({list(self.schedules)!r}, boundaries={list(self.boundaries)})"


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
cosine_restarts = CosineRestarts
cyclic = Cyclic
polynomial = Polynomial
join = Join
