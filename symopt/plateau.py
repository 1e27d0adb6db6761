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

On a seed stack (:class:`~symopt.seeds.SeedStack`) every member has its own fate:
:class:`MemberReduceLROnPlateau` keeps the plateau state per member and reduces only the
members whose own metric plateaued (member ``i`` follows exactly the rates
:class:`ReduceLROnPlateau` gives on member ``i``'s metrics alone), and
:class:`EarlyStopping` freezes each member whose metric stopped improving while the others
train on (an optimiser built with ``stoppable=True``)::

    opt = symopt.Adam(stack.params, learning_rate=[1e-3] * S, stoppable=True)
    plateau = symopt.MemberReduceLROnPlateau(opt, factor=0.5, patience=2)
    stopping = symopt.EarlyStopping(patience=5)
    SeedTrainer(stack, opt, ...).fit(30, plateau=plateau, early_stopping=stopping)
    stopping.stopped_epoch                  # per member: the epoch it stopped at (0: trained to the end)
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

__all__ = ["ReduceLROnPlateau", "MemberReduceLROnPlateau", "EarlyStopping"]

MODES = ("min", "max")
THRESHOLD_MODES = ("rel", "abs")


def _real(name: str, value: Any, owner: str = "ReduceLROnPlateau") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{owner}: {name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be finite, got {value}")
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


def _check_hyperparameter(opt: Optimizer, name: Any, where: str, per_member: bool = False) -> None:
    """``name`` is a numeric hyperparameter of ``opt`` and follows no schedule in any group;
    a vector over seed-stack members only for a per-member plateau."""
    numeric = list(opt.param_groups[0].values)
    if not isinstance(name, str) or name not in numeric:
        raise ValueError(f"ReduceLROnPlateau: {type(opt).__name__}{where} has no numeric hyperparameter {name!r}; "
                         f"it has {numeric}")
    for index, group in enumerate(opt.param_groups):
        value = group.values[name]
        if not per_member and not isinstance(value, Schedule) and np.ndim(value.get_value(borrow=True)) == 1:
            raise ValueError(
                f"ReduceLROnPlateau: {name}{where} of param group {index} is a vector over the members of a "
                f"seed stack; reduce each member's on its own with symopt.MemberReduceLROnPlateau"
            )
        if isinstance(value, Schedule):
            raise ValueError(
                f"ReduceLROnPlateau: {name}{where} of param group {index} follows a schedule ({value!r}); "
                f"a plateau cannot reduce a scheduled value: give {name} as a number, or keep the schedule "
                f"without a plateau"
            )


def _check_saved(owner: str, state: Any, keys: set[str], mine: Mapping[str, Any]) -> None:
    """A saved state holds exactly ``keys`` and was saved with the settings ``mine``."""
    if not isinstance(state, Mapping) or set(state) != keys:
        raise ValueError(f"{owner}: a saved state holds {sorted(keys)}, got {state!r}")
    saved = state["settings"]
    if not isinstance(saved, Mapping) or set(saved) != set(mine):
        raise ValueError(f"{owner}: saved settings {saved!r} are malformed")
    for key, value in mine.items():
        if saved[key] != value:
            raise ValueError(f"{owner}: saved with {key}={saved[key]!r}, this one has {key}={value!r}")


def _saved_count(owner: str, key: str, value: Any) -> int:
    """A saved counter: an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{owner}: saved {key} {value!r} is not an integer >= 0")
    return int(value)


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

    #: Whether the state is per stack member (:class:`MemberReduceLROnPlateau`).
    _per_member: bool = False

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
            _check_hyperparameter(inner, hyperparameter, "", self._per_member)
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
        _check_saved("ReduceLROnPlateau", state, {"settings", "best", "num_bad_epochs", "cooldown_counter", "last_epoch"},
                     self._settings())
        best = state["best"]
        if isinstance(best, str) and best in ("inf", "-inf"):
            best = float(best)
        if isinstance(best, bool) or not isinstance(best, (int, float, np.integer, np.floating)) or math.isnan(best):
            raise ValueError(f"ReduceLROnPlateau: saved best {state['best']!r} is not a number")
        out: dict[str, Any] = {"best": float(best)}
        for key in ("num_bad_epochs", "cooldown_counter", "last_epoch"):
            out[key] = _saved_count("ReduceLROnPlateau", key, state[key])
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


# ---------------------------------------------------------------------- per stack member
def _improves(current: np.ndarray, best: np.ndarray, mode: str, threshold_mode: str, threshold: float) -> np.ndarray:
    """Element-wise :meth:`ReduceLROnPlateau.is_better` (the same float64 operations; NaN never improves)."""
    with np.errstate(invalid="ignore", over="ignore"):
        if mode == "min":
            return current < (best * (1.0 - threshold) if threshold_mode == "rel" else best - threshold)
        return current > (best * (threshold + 1.0) if threshold_mode == "rel" else best + threshold)


def _metric_vector(owner: str, metrics: Any, members: int) -> np.ndarray:
    """``metrics`` as a float64 vector of ``members`` values (one number is one member's)."""
    if isinstance(metrics, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{owner}: the metrics must be numbers, one per stack member, got {metrics!r}")
    try:
        array = np.asarray(metrics)
    except (TypeError, ValueError):
        raise TypeError(f"{owner}: the metrics must be numbers, one per stack member, got {metrics!r}") from None
    if array.dtype.kind not in "iuf":
        raise TypeError(f"{owner}: the metrics must be numbers, one per stack member, got {metrics!r}")
    if array.ndim == 0 and members == 1:
        array = array.reshape(1)
    if array.shape != (members,):
        raise ValueError(f"{owner}: expected {members} metric(s), one per stack member, got shape {array.shape}")
    return array.astype(np.float64)


def _mask(owner: str, active: Any, members: int) -> np.ndarray:
    if active is None:
        return np.ones(members, dtype=bool)
    array = np.asarray(active)
    if array.shape != (members,) or array.dtype.kind not in "biu" or np.any((array != 0) & (array != 1)):
        raise ValueError(f"{owner}: active must be {members} booleans (one per stack member), got {active!r}")
    return array.astype(bool)


def _saved_vector(owner: str, name: str, value: Any, members: int, floats: bool) -> np.ndarray:
    """A saved per-member list: ``members`` numbers (``floats``: with ``"inf"``/``"-inf"``, no NaN),
    else integers >= 0."""
    if not isinstance(value, (list, tuple, np.ndarray)) or len(value) != members:
        raise ValueError(f"{owner}: saved {name} {value!r} is not a list of {members} values (one per stack member)")
    out = []
    for v in value:
        if floats:
            if isinstance(v, str) and v in ("inf", "-inf"):
                v = float(v)
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) or math.isnan(v):
                raise ValueError(f"{owner}: saved {name} {value!r} holds {v!r}, not a number")
        elif isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{owner}: saved {name} {value!r} holds {v!r}, not an integer >= 0")
        out.append(v)
    return np.array(out, dtype=np.float64 if floats else np.int64)


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]


def _ints(values: np.ndarray) -> list[int]:
    return [int(v) for v in values]


class MemberReduceLROnPlateau(ReduceLROnPlateau):
    r""":class:`ReduceLROnPlateau` for each member of a seed stack on its own.

    The state (best metric, bad epochs, cooldown) is a vector over the members, and
    :meth:`step` takes one metric per member (each member's own evaluation loss); a member
    whose metric plateaued has its value of the hyperparameter reduced, in every param
    group, the others keep theirs. Member ``i``'s values are exactly those
    :class:`ReduceLROnPlateau` gives on member ``i``'s metric sequence alone (torch's, NaN a
    bad epoch), because every comparison and product is the same float64 operation.

    The hyperparameter must have been given per member at construction (a vector, e.g.
    ``learning_rate=[1e-3] * S``): the compiled step reads it as an ``(S,)`` shared vector,
    which :meth:`~symopt.optimizer.Optimizer.set_hyperparameter` then changes per member.
    The other arguments are :class:`ReduceLROnPlateau`'s; ``min_lr`` is one number or one per
    param group, shared by the members.
    """

    _per_member = True

    def __init__(self, optimizer: Any, factor: float = 0.1, patience: int = 10, threshold: float = 1e-4,
                 threshold_mode: str = "rel", mode: str = "min", cooldown: int = 0,
                 min_lr: float | Sequence[float] = 0.0, eps: float = 1e-8, *, hyperparameter: str = "learning_rate"):
        super().__init__(optimizer, factor, patience, threshold, threshold_mode, mode, cooldown, min_lr, eps,
                         hyperparameter=hyperparameter)
        owner = type(self).__name__
        members = getattr(self.optimizer, "stack_size", None)
        if members is None:
            raise ValueError(f"{owner}: the optimiser's parameters are not stacked over a seed axis "
                             f"(symopt.seeds.SeedStack); for one run use symopt.ReduceLROnPlateau")
        for index, group in enumerate(self.optimizer.param_groups):
            if np.ndim(group.values[hyperparameter].get_value(borrow=True)) != 1:
                raise ValueError(
                    f"{owner}: {hyperparameter} of param group {index} is one value for all {members} members; "
                    f"give it per member at construction ({hyperparameter}=[value] * {members}) so that each "
                    f"member's can be reduced on its own"
                )
        #: Stack members S; the state below is a vector over them.
        self.members = int(members)
        self.best = np.full(self.members, self.best, dtype=np.float64)
        self.num_bad_epochs = np.zeros(self.members, dtype=np.int64)
        self.cooldown_counter = np.zeros(self.members, dtype=np.int64)

    def step(self, metric: Any, active: Any = None) -> None:  # type: ignore[override]
        """Record one epoch's metrics, one per member (an ``(S,)`` array), and reduce the
        members that plateaued.

        ``active`` (``S`` booleans, default all): members left out keep their state, as a
        member :class:`EarlyStopping` stopped. A wrong number of metrics is refused before
        anything changes.
        """
        owner = f"{type(self).__name__}.step"
        current = _metric_vector(owner, metric, self.members)
        mask = _mask(owner, active, self.members)
        better = mask & _improves(current, self.best, self.mode, self.threshold_mode, self.threshold)
        bad = np.where(mask, np.where(better, 0, self.num_bad_epochs + 1), self.num_bad_epochs)
        cooling = mask & (self.cooldown_counter > 0)
        cooldown = np.where(cooling, self.cooldown_counter - 1, self.cooldown_counter)
        bad = np.where(cooling, 0, bad)  # bad epochs during the cooldown do not count
        due = mask & (bad > self.patience)
        if due.any():
            self._reduce_members(due)
        self.best = np.where(better, current, self.best)
        self.num_bad_epochs = np.where(due, 0, bad)
        self.cooldown_counter = np.where(due, self.cooldown, cooldown)
        self.last_epoch += 1

    def _reduce_members(self, due: np.ndarray) -> None:
        opt, name = self.optimizer, self.hyperparameter
        for index, floor in enumerate(self.min_lrs):
            old = np.array(opt.get_hyperparameter(name, group=index), dtype=np.float64)
            new = np.maximum(old * self.factor, floor)
            apply = due & (old - new > self.eps)
            if apply.any():
                opt.set_hyperparameter(name, np.where(apply, new, old), group=index)

    @property
    def in_cooldown(self) -> np.ndarray:  # type: ignore[override]
        return self.cooldown_counter > 0

    def get_last_lr(self) -> list[np.ndarray]:  # type: ignore[override]
        """The hyperparameter's current values per param group, each a vector over the members."""
        return [np.array(self.optimizer.get_hyperparameter(self.hyperparameter, group=i), dtype=np.float64)
                for i in range(len(self.min_lrs))]

    def _settings(self) -> dict[str, Any]:
        return {**super()._settings(), "members": self.members}

    def state_dict(self) -> dict[str, Any]:
        """Settings and per-member counters, as JSON-able lists (the values live in the optimiser)."""
        return {"settings": self._settings(), "best": _floats(self.best), "num_bad_epochs": _ints(self.num_bad_epochs),
                "cooldown_counter": _ints(self.cooldown_counter), "last_epoch": self.last_epoch}

    def checked_state(self, state: Any) -> dict[str, Any]:
        """Validate a :meth:`state_dict` (settings equal to this plateau's, one value per
        member, ``best`` with ``"inf"``/``"-inf"`` as JSON writes them) without changing anything."""
        owner = type(self).__name__
        _check_saved(owner, state, {"settings", "best", "num_bad_epochs", "cooldown_counter", "last_epoch"},
                     self._settings())
        last = _saved_count(owner, "last_epoch", state["last_epoch"])
        return {"best": _saved_vector(owner, "best", state["best"], self.members, True),
                "num_bad_epochs": _saved_vector(owner, "num_bad_epochs", state["num_bad_epochs"], self.members, False),
                "cooldown_counter": _saved_vector(owner, "cooldown_counter", state["cooldown_counter"], self.members, False),
                "last_epoch": int(last)}

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self._settings().items())
        return f"{type(self).__name__}({settings}; best={_floats(self.best)}, num_bad_epochs={_ints(self.num_bad_epochs)})"


class EarlyStopping:
    r"""Stop a run, or each member of a seed stack on its own, once its metric has not
    improved for ``patience`` evaluations (Keras's ``EarlyStopping`` counting, torch's
    improvement test).

    Each :meth:`step` takes one metric per member (a number for one run). A member's metric
    :math:`m` improves on its best so far :math:`b` (initially :math:`+\infty` for
    ``mode="min"``) when :math:`m < b - \delta` (``mode="max"``: :math:`m > b + \delta`),
    :math:`\delta` = ``min_delta``; NaN never does. An improvement sets :math:`b = m` and
    zeroes the member's count of evaluations without improvement; any other metric adds
    one, and the member stops when the count reaches ``patience``. A stopped member's state
    no longer changes, and :attr:`stopped_epoch` records the evaluation (1-based, the epoch
    in ``fit``) at which it stopped (0 while it trains).

    Stopping a member of a stack freezes it: the optimiser must be built with
    ``stoppable=True`` (``symopt.Adam(stack.params, ..., stoppable=True)``), whose per-member
    gate (``opt.member_active``, the mechanism that makes ``skip_nonfinite`` skip a
    member's step) this sets to 0, so its parameters, optimiser state and buffers stop
    changing while the others train on, as in a separate run stopped at that epoch.
    ``Trainer.fit``/``SeedTrainer.fit(early_stopping=...)`` step it with each epoch's test
    loss (after a ``plateau``) and end the run once every member has stopped; its state
    goes in the checkpoint.

    Parameters
    ----------
    patience
        Evaluations without improvement after which a member stops (>= 1).
    min_delta
        :math:`\delta` >= 0, the least change that counts as an improvement.
    mode
        ``"min"`` (a loss) or ``"max"`` (an accuracy).
    optimizer
        For use outside ``fit``: the stacked optimiser (built with ``stoppable=True``) whose
        members to freeze. ``fit`` attaches the trainer's optimiser itself.
    """

    def __init__(self, patience: int = 10, min_delta: float = 0.0, mode: str = "min", *, optimizer: Any = None):
        if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 1:
            raise ValueError(f"EarlyStopping: patience must be an integer >= 1, got {patience!r}")
        min_delta = _real("min_delta", min_delta, "EarlyStopping")
        if min_delta < 0:
            raise ValueError(f"EarlyStopping: min_delta must be >= 0, got {min_delta}")
        if mode not in MODES:
            raise ValueError(f"EarlyStopping: mode must be one of {list(MODES)}, got {mode!r}")
        self.patience, self.min_delta, self.mode = int(patience), min_delta, mode
        #: The optimiser whose members are frozen (None: one run, or not attached yet).
        self.optimizer: Any = None
        #: Members (None until the first step or attach).
        self.members: int | None = None
        self.last_epoch = 0
        self.best = np.zeros(0)
        self.wait = np.zeros(0, dtype=np.int64)
        self.stopped_epoch = np.zeros(0, dtype=np.int64)
        if optimizer is not None:
            self.attach(optimizer, None)

    def _start(self, members: int) -> None:
        self.members = int(members)
        self.best = np.full(self.members, math.inf if self.mode == "min" else -math.inf)
        self.wait = np.zeros(self.members, dtype=np.int64)
        self.stopped_epoch = np.zeros(self.members, dtype=np.int64)

    def attach(self, optimizer: Any, streams: int | None) -> None:
        """Bind to the optimiser of a run of ``streams`` members (``None``: the optimiser's stack size).

        A stack needs an optimiser built with ``stoppable=True``; one run needs nothing (a
        stopped run ends). Refuses another optimiser than the one attached before, or
        another number of members than the state has.
        """
        inner = optimizer.inner if isinstance(optimizer, Lookahead) else optimizer
        stack = getattr(inner, "stack_size", None)
        members = stack if streams is None else int(streams)
        if members is None:
            members = 1
        if self.optimizer is not None and self.optimizer is not inner:
            raise ValueError("EarlyStopping: it was attached to another optimiser than this run's")
        if members > 1 or stack is not None:
            if getattr(inner, "member_active", None) is None:
                raise ValueError(
                    f"EarlyStopping: freezing a member of a seed stack needs an optimiser built with stoppable=True "
                    f"(e.g. symopt.{type(inner).__name__}(stack.params, ..., stoppable=True)); "
                    f"{type(optimizer).__name__} was not"
                )
            if stack != members:
                raise ValueError(f"EarlyStopping: the optimiser has {stack} stack members, this run {members}")
        if self.members is not None and self.members != members:
            raise ValueError(f"EarlyStopping: its state is for {self.members} member(s), this run has {members}")
        self.optimizer = inner
        if self.members is None:
            self._start(members)

    @property
    def active(self) -> np.ndarray:
        """Per member: still training (has not stopped)."""
        return self.stopped_epoch == 0

    @property
    def all_stopped(self) -> bool:
        """Whether every member has stopped (a run of one: whether it has)."""
        return self.members is not None and not self.active.any()

    def step(self, metric: Any) -> np.ndarray:
        """Record one evaluation's metrics (one per member) and stop the members that ran
        out of patience; returns which members stopped at this evaluation. Stopped members'
        metrics are ignored (their state stays as it was at their stop)."""
        owner = "EarlyStopping.step"
        members = self.members
        if members is None:  # not attached: as many members as metrics
            try:
                members = max(int(np.size(metric)), 1) if not isinstance(metric, (str, bytes)) else 1
            except (TypeError, ValueError):
                members = 1
        current = _metric_vector(owner, metric, members)
        if self.members is None:
            self._start(members)
        mask = self.active
        threshold = self.min_delta
        better = mask & _improves(current, self.best, self.mode, "abs", threshold)
        self.wait = np.where(mask, np.where(better, 0, self.wait + 1), self.wait)
        self.best = np.where(better, current, self.best)
        self.last_epoch += 1
        stop = mask & ~better & (self.wait >= self.patience)
        self.stopped_epoch = np.where(stop, self.last_epoch, self.stopped_epoch)
        gate = getattr(self.optimizer, "member_active", None)
        if gate is not None and stop.any():
            gate.set_value(np.where(stop, 0, gate.get_value()).astype(np.int64))
        return stop

    # ------------------------------------------------------------------ state
    def _settings(self) -> dict[str, Any]:
        return {"patience": self.patience, "min_delta": self.min_delta, "mode": self.mode, "members": self.members}

    def state_dict(self) -> dict[str, Any]:
        """Settings and per-member state as JSON-able lists (the freezing gate lives in the optimiser)."""
        return {"settings": self._settings(), "best": _floats(self.best), "wait": _ints(self.wait),
                "stopped_epoch": _ints(self.stopped_epoch), "last_epoch": self.last_epoch}

    def checked_state(self, state: Any) -> dict[str, Any]:
        """Validate a :meth:`state_dict` against this one (attached, so its member count is
        known) without changing anything."""
        _check_saved("EarlyStopping", state, {"settings", "best", "wait", "stopped_epoch", "last_epoch"}, self._settings())
        last = _saved_count("EarlyStopping", "last_epoch", state["last_epoch"])
        members = int(self.members or 0)
        stopped = _saved_vector("EarlyStopping", "stopped_epoch", state["stopped_epoch"], members, False)
        if np.any(stopped > last):
            raise ValueError(f"EarlyStopping: saved stopped_epoch {state['stopped_epoch']!r} lies beyond last_epoch {last}")
        return {"best": _saved_vector("EarlyStopping", "best", state["best"], members, True),
                "wait": _saved_vector("EarlyStopping", "wait", state["wait"], members, False),
                "stopped_epoch": stopped, "last_epoch": int(last)}

    def load_checked(self, checked: Mapping[str, Any]) -> None:
        """Apply a dict from :meth:`checked_state`."""
        for key, value in checked.items():
            setattr(self, key, value)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (validated first; the optimiser's gate is not touched)."""
        if self.members is None:
            size = state.get("settings", {}).get("members") if isinstance(state, Mapping) else None
            if isinstance(size, int) and not isinstance(size, bool) and size >= 1:
                self._start(size)
        self.load_checked(self.checked_state(state))

    def __repr__(self) -> str:
        stopped = _ints(self.stopped_epoch)
        return (f"EarlyStopping(patience={self.patience}, min_delta={self.min_delta!r}, mode={self.mode!r}; "
                f"stopped_epoch={stopped})")
