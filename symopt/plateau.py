r"""Reduce a hyperparameter when a metric stops improving: torch's ``ReduceLROnPlateau``.

::

    plateau = symopt.ReduceLROnPlateau(opt, factor=0.5, patience=3)
    history = symopt.fit(model, opt, mnist, epochs=30, plateau=plateau)   # stepped with each epoch's test loss

    for epoch in range(epochs):                                          # or by hand
        train_one_epoch()
        plateau.step(validation_loss)

It runs in Python once per epoch and changes the optimiser's shared hyperparameter, so
compiled train functions follow without recompiling. On a :func:`symopt.combine` of
optimisers it reduces every member that has the hyperparameter (or the one named by
``member=``), each exactly as a plateau of its own stepped with the same metrics would. The numbers are torch's for any
metric sequence (``benchmarks/validate_schedules.py``), NaN included: a NaN is never an
improvement, so it counts as a bad epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .combine import Combined
from .optimizer import Optimizer
from .schedules import Schedule
from .wrappers import EMA, Lookahead

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


def _unwrap(optimizer: Any) -> Any:
    """A Lookahead's or EMA's inner optimiser (its hyperparameters are the inner rule's)."""
    if isinstance(optimizer, (Lookahead, EMA)) and getattr(optimizer, "inner", None) is not None:
        return optimizer.inner
    return optimizer


def _check_hyperparameter(opt: Optimizer, name: Any, where: str) -> None:
    """``name`` is a numeric hyperparameter of ``opt`` and follows no schedule in any group."""
    numeric = list(opt.param_groups[0].values)
    if not isinstance(name, str) or name not in numeric:
        raise ValueError(f"ReduceLROnPlateau: {type(opt).__name__}{where} has no numeric hyperparameter {name!r}; "
                         f"it has {numeric}")
    for index, group in enumerate(opt.param_groups):
        value = group.values[name]
        if isinstance(value, Schedule):
            raise ValueError(
                f"ReduceLROnPlateau: {name}{where} of param group {index} follows a schedule ({value!r}); "
                f"a plateau cannot reduce a scheduled value: give {name} as a number, or keep the schedule "
                f"without a plateau"
            )


def _members(combined: Combined, name: str, member: int | str | None) -> list[tuple[str, Optimizer]]:
    """(member name, optimiser) of the members a plateau on a combine reduces."""
    names = list(combined.members)
    if member is not None:
        chosen = combined.member(member)  # ValueError naming the members for an unknown one
        label = str(member) if isinstance(member, str) else names[int(member)]
        candidates = [(label, chosen)]
    else:
        candidates = list(combined.members.items())
    out: list[tuple[str, Optimizer]] = []
    for label, opt in candidates:
        inner = _unwrap(opt)
        if not isinstance(inner, Optimizer):
            if member is not None:
                raise TypeError(f"ReduceLROnPlateau: member {label!r} is a {type(opt).__name__}, not a symopt optimiser "
                                f"with param groups")
            continue
        if member is None and (not isinstance(name, str) or name not in inner.param_groups[0].values):
            continue  # reduce the members that have it, as Combined.set_hyperparameter sets them
        _check_hyperparameter(inner, name, f" (member {label!r})")
        out.append((label, inner))
    if not out:
        raise ValueError(f"ReduceLROnPlateau: no member of the combine ({', '.join(names)}) has a numeric "
                         f"hyperparameter {name!r}")
    return out


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
        A symopt optimiser (or a :class:`~symopt.Lookahead` or :class:`~symopt.EMA` around
        one), or a :func:`symopt.combine` of them: then the param groups are those of every
        member that has ``hyperparameter`` (or of ``member``), member by member in the
        combine's order, and each is reduced as a plateau on that member alone would reduce
        it (one metric, one count of bad epochs: torch's schedulers stepped together).
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
        Lower bound :math:`v_{g,\min}`: one number, or one per param group (on a combine,
        one per group of the members reduced, in their order).
    eps
        Reductions smaller than this are not applied.
    hyperparameter
        Which hyperparameter to reduce (``learning_rate`` by default; any numeric one).
        It must not follow a :mod:`~symopt.schedules` schedule in any group: a schedule
        owns its values.
    member
        On a combine only: the member to reduce (its name or position); ``None`` (default):
        every member that has ``hyperparameter``.
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
        member: int | str | None = None,
    ):
        inner = _unwrap(optimizer)
        if isinstance(inner, Combined):
            targets = _members(inner, hyperparameter, member)
        else:
            if member is not None:
                raise ValueError(f"ReduceLROnPlateau: member={member!r} applies to a symopt.combine(...) only, "
                                 f"not to {type(optimizer).__name__}")
            if not isinstance(inner, Optimizer):
                raise TypeError(f"ReduceLROnPlateau: optimizer must be a symopt optimiser, got {type(optimizer).__name__}")
            _check_hyperparameter(inner, hyperparameter, "")
            targets = [(None, inner)]
        #: (member name or None, optimiser, param group index) of every value the plateau reduces.
        self._groups = [(label, opt, index) for label, opt in targets for index in range(len(opt.param_groups))]
        groups = self._groups
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

        #: What the plateau was built on (a Lookahead's or EMA's inner rule; a combine itself).
        self.optimizer = inner
        #: The optimisers reduced, by member name (``None``: not a combine).
        self.targets: dict[str | None, Optimizer] = dict(targets)
        #: The member chosen with ``member=`` (its name), or None.
        self.member = None if member is None else targets[0][0]
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
        name = self.hyperparameter
        for (_, opt, index), floor in zip(self._groups, self.min_lrs, strict=True):
            old = float(opt.get_hyperparameter(name, group=index))
            new = max(old * self.factor, floor)
            if old - new > self.eps:
                opt.set_hyperparameter(name, new, group=index)

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def get_last_lr(self) -> list[float]:
        """The hyperparameter's current value in every param group (torch's name); on a
        combine, the groups of the members reduced, member by member."""
        return [float(opt.get_hyperparameter(self.hyperparameter, group=i)) for _, opt, i in self._groups]

    # ------------------------------------------------------------------ state
    def _settings(self) -> dict[str, Any]:
        settings = {
            "hyperparameter": self.hyperparameter, "factor": self.factor, "patience": self.patience,
            "threshold": self.threshold, "threshold_mode": self.threshold_mode, "mode": self.mode,
            "cooldown": self.cooldown, "min_lr": list(self.min_lrs), "eps": self.eps,
        }
        if self.member is not None:  # only then: states saved before member= existed still load
            settings["member"] = self.member
        return settings

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
