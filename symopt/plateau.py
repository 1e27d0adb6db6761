r"""Reduce a hyperparameter when a metric stops improving: torch's ``ReduceLROnPlateau``.

::

    plateau = symopt.ReduceLROnPlateau(opt, factor=0.5, patience=3)
    history = symopt.fit(model, opt, mnist, epochs=30, plateau=plateau)   # stepped with each epoch's test loss

    for epoch in range(epochs):                                          # or by hand
        train_one_epoch()
        plateau.step(validation_loss)

It runs in Python once per epoch and changes the optimiser's shared hyperparameter, so
compiled train functions follow without recompiling. The numbers are torch's for any
metric sequence (``benchmarks/validate_schedules.py``), NaN included: a NaN is never an
improvement, so it counts as a bad epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .optimizer import Optimizer
from .schedules import Schedule
from .wrappers import Lookahead

__all__ = ["ReduceLROnPlateau"]

MODES = ("min", "max")
THRESHOLD_MODES = ("rel", "abs")


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"ReduceLROnPlateau: {name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"ReduceLROnPlateau: {name} must be finite, got {value}")
    return value


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"ReduceLROnPlateau: {name} must be an integer >= 0, got {value!r}")
    return int(value)


class ReduceLROnPlateau:
    r"""Multiply a hyperparameter by ``factor`` once a metric has not improved for
    ``patience`` epochs (torch's ``ReduceLROnPlateau``, the same numbers).

    Each :meth:`step` with metric :math:`m` (``mode="min"``; ``"max"`` mirrors it) counts
    it as an improvement when

    .. math::
        m < b\,(1 - \tau) \quad (\text{threshold\_mode="rel"}), \qquad
        m < b - \tau \quad (\text{"abs"}),

    with :math:`b` the best metric so far (initially :math:`+\infty`) and :math:`\tau`
    ``threshold``. An improvement sets :math:`b = m` and zeroes the count of bad epochs;
    anything else (NaN included) adds one. During ``cooldown`` epochs after a reduction
    bad epochs are not counted. When the count exceeds ``patience``, every param group's
    value :math:`v_g` becomes

    .. math:: v_g \leftarrow \max(f\, v_g,\ v_{g,\min}) \quad\text{if}\quad v_g - \max(f\, v_g, v_{g,\min}) > \epsilon,

    the cooldown starts and the count restarts from zero.

    Parameters
    ----------
    optimizer
        A symopt optimiser (or a :class:`~symopt.Lookahead` around one).
    factor
        :math:`f` in [0, 1).
    patience
        Bad epochs tolerated before a reduction.
    threshold, threshold_mode
        What counts as an improvement (see above).
    mode
        ``"min"`` (a loss) or ``"max"`` (an accuracy).
    cooldown
        Epochs after a reduction during which bad epochs are not counted.
    min_lr
        Lower bound :math:`v_{g,\min}`: one number, or one per param group.
    eps
        Reductions smaller than this are not applied.
    hyperparameter
        Which hyperparameter to reduce (``learning_rate`` by default; any numeric one).
        It must not follow a :mod:`~symopt.schedules` schedule in any group: a schedule
        owns its values.
    """

    def __init__(
        self,
        optimizer: Any,
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        mode: str = "min",
        cooldown: int = 0,
        min_lr: float | Sequence[float] = 0.0,
        eps: float = 1e-8,
        *,
        hyperparameter: str = "learning_rate",
    ):
        inner = optimizer.inner if isinstance(optimizer, Lookahead) else optimizer
        if not isinstance(inner, Optimizer):
            raise TypeError(f"ReduceLROnPlateau: optimizer must be a symopt optimiser, got {type(optimizer).__name__}")
        groups = inner.param_groups
        numeric = list(groups[0].values)
        if not isinstance(hyperparameter, str) or hyperparameter not in numeric:
            raise ValueError(
                f"ReduceLROnPlateau: {type(inner).__name__} has no numeric hyperparameter {hyperparameter!r}; "
                f"it has {numeric}"
            )
        for index, group in enumerate(groups):
            value = group.values[hyperparameter]
            if isinstance(value, Schedule):
                raise ValueError(
                    f"ReduceLROnPlateau: {hyperparameter} of param group {index} follows a schedule ({value!r}); "
                    f"a plateau cannot reduce a scheduled value: give {hyperparameter} as a number, or keep the schedule "
                    f"without a plateau"
                )
        factor = _real("factor", factor)
        if not 0.0 <= factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must lie in [0, 1), got {factor}")
        threshold = _real("threshold", threshold)
        if threshold < 0:
            raise ValueError(f"ReduceLROnPlateau: threshold must be >= 0, got {threshold}")
        if threshold_mode not in THRESHOLD_MODES:
            raise ValueError(f"ReduceLROnPlateau: threshold_mode must be one of {list(THRESHOLD_MODES)}, got {threshold_mode!r}")
        if mode not in MODES:
            raise ValueError(f"ReduceLROnPlateau: mode must be one of {list(MODES)}, got {mode!r}")
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != len(groups):
                raise ValueError(f"ReduceLROnPlateau: min_lr has {len(min_lr)} values for {len(groups)} param groups")
            min_lrs = [_real(f"min_lr[{i}]", v) for i, v in enumerate(min_lr)]
        else:
            min_lrs = [_real("min_lr", min_lr)] * len(groups)
        if any(v < 0 for v in min_lrs):
            raise ValueError(f"ReduceLROnPlateau: min_lr must be >= 0, got {min_lr!r}")
        eps = _real("eps", eps)
        if eps < 0:
            raise ValueError(f"ReduceLROnPlateau: eps must be >= 0, got {eps}")

        self.optimizer = inner
        self.hyperparameter = hyperparameter
        self.factor, self.patience, self.threshold = factor, _count("patience", patience), threshold
        self.threshold_mode, self.mode, self.cooldown = threshold_mode, mode, _count("cooldown", cooldown)
        self.min_lrs, self.eps = min_lrs, eps
        #: Best metric so far, bad epochs counted, cooldown epochs left, steps taken.
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0

    # ------------------------------------------------------------------ stepping
    def is_better(self, current: float, best: float) -> bool:
        """Whether ``current`` improves on ``best`` (False for NaN)."""
        if self.mode == "min":
            return current < (best * (1.0 - self.threshold) if self.threshold_mode == "rel" else best - self.threshold)
        return current > (best * (self.threshold + 1.0) if self.threshold_mode == "rel" else best + self.threshold)

    def step(self, metric: Any) -> None:
        """Record one epoch's ``metric`` (a number, or an array holding one) and reduce if due."""
        if isinstance(metric, bool) or isinstance(metric, (str, bytes)):
            raise TypeError(f"ReduceLROnPlateau.step: the metric must be a number, got {metric!r}")
        try:
            value = np.asarray(metric, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"ReduceLROnPlateau.step: the metric must be a number, got {metric!r}") from None
        if value.size != 1:
            raise ValueError(f"ReduceLROnPlateau.step: the metric must be one number, got shape {value.shape}")
        current = float(value.reshape(()))
        self.last_epoch += 1
        if self.is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs during the cooldown do not count
        if self.num_bad_epochs > self.patience:
            self._reduce()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0

    def _reduce(self) -> None:
        opt, name = self.optimizer, self.hyperparameter
        for index, floor in enumerate(self.min_lrs):
            old = float(opt.get_hyperparameter(name, group=index))
            new = max(old * self.factor, floor)
            if old - new > self.eps:
                opt.set_hyperparameter(name, new, group=index)

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def get_last_lr(self) -> list[float]:
        """The hyperparameter's current value in every param group (torch's name)."""
        return [float(self.optimizer.get_hyperparameter(self.hyperparameter, group=i)) for i in range(len(self.min_lrs))]

    # ------------------------------------------------------------------ state
    def _settings(self) -> dict[str, Any]:
        return {
            "hyperparameter": self.hyperparameter, "factor": self.factor, "patience": self.patience,
            "threshold": self.threshold, "threshold_mode": self.threshold_mode, "mode": self.mode,
            "cooldown": self.cooldown, "min_lr": list(self.min_lrs), "eps": self.eps,
        }

    def state_dict(self) -> dict[str, Any]:
        """Settings and counters (the hyperparameter's values live in the optimiser's state)."""
        return {"settings": self._settings(), "best": self.best, "num_bad_epochs": self.num_bad_epochs,
                "cooldown_counter": self.cooldown_counter, "last_epoch": self.last_epoch}

    def checked_state(self, state: Any) -> dict[str, Any]:
        """Validate a :meth:`state_dict` against this plateau without changing anything.

        Refuses a state saved with other settings, naming the first that differs. ``best``
        may be a float or, as JSON writes non-finite values, ``"inf"``/``"-inf"``.
        """
        keys = {"settings", "best", "num_bad_epochs", "cooldown_counter", "last_epoch"}
        if not isinstance(state, Mapping) or set(state) != keys:
            raise ValueError(f"ReduceLROnPlateau: a saved state holds {sorted(keys)}, got {state!r}")
        saved = state["settings"]
        mine = self._settings()
        if not isinstance(saved, Mapping) or set(saved) != set(mine):
            raise ValueError(f"ReduceLROnPlateau: saved settings {saved!r} are malformed")
        for key, value in mine.items():
            if saved[key] != value:
                raise ValueError(f"ReduceLROnPlateau: saved with {key}={saved[key]!r}, this one has {key}={value!r}")
        best = state["best"]
        if isinstance(best, str) and best in ("inf", "-inf"):
            best = float(best)
        if isinstance(best, bool) or not isinstance(best, (int, float, np.integer, np.floating)) or math.isnan(best):
            raise ValueError(f"ReduceLROnPlateau: saved best {state['best']!r} is not a number")
        out: dict[str, Any] = {"best": float(best)}
        for key in ("num_bad_epochs", "cooldown_counter", "last_epoch"):
            value = state[key]
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"ReduceLROnPlateau: saved {key} {value!r} is not an integer >= 0")
            out[key] = int(value)
        return out

    def load_checked(self, checked: Mapping[str, Any]) -> None:
        """Apply a dict from :meth:`checked_state`."""
        for key, value in checked.items():
            setattr(self, key, value)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; validates all of it before changing anything."""
        self.load_checked(self.checked_state(state))

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self._settings().items())
        return f"ReduceLROnPlateau({settings}; best={self.best}, num_bad_epochs={self.num_bad_epochs})"
