"""An optimiser's state: :meth:`~StateMixin.state_dict` and the ``.npz`` file of ``save`` / ``load``.

:class:`StateMixin` is the part of :class:`~symopt.optimizer.Optimizer` that copies out and
restores everything needed to resume: the step counter, hyperparameter values and
schedules, transform settings and counters, group scalars and slots. Loading validates
all of it before changing anything; a file is read through :class:`~symopt._npz.StateFile`,
which bounds every array from the ``.npy`` headers before allocating it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from pytensor.compile.sharedvalue import SharedVariable

from ._npz import StateFile
from .groups import _Group
from .hyperparameter import Hyperparameter
from .schedules import Schedule
from .transforms import _describe

__all__ = ["StateMixin"]


class StateMixin:
    """``state_dict`` / ``load_state_dict`` / ``save`` / ``load``; a base of :class:`~symopt.optimizer.Optimizer`.

    Uses the optimiser's ``_declarations``, ``params``, ``param_groups``, ``options``,
    ``settings``, ``state`` (the slots), ``iterations``, the transforms' counters, and
    ``_all_slots`` and ``_check_setting``.
    """

    _declarations: ClassVar[dict[str, Hyperparameter]]
    params: list[SharedVariable]
    param_groups: list[_Group]
    options: dict[str, bool]
    settings: dict[str, SharedVariable]
    state: list[dict[str, SharedVariable]]
    iterations: SharedVariable
    micro_steps: SharedVariable
    skipped: SharedVariable
    member_steps: SharedVariable | None
    member_skipped: SharedVariable | None

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
            if count.shape != want or count.dtype.kind not in "iu" or np.any(count < 0) or (
                    name == "member_active" and np.any(count > 1)):
                kind = "integer" if want == () else f"integer vector of shape {want}"
                kind += " of 0/1" if name == "member_active" else ""
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
        """The per-member counters of stacked parameters with skip_nonfinite or stoppable
        (``member_active``: 1 for a member that trains, 0 for a frozen one)."""
        return [(name, var) for name, var in (("member_steps", self.member_steps), ("member_skipped", self.member_skipped),
                                              ("member_active", self.member_active)) if var is not None]

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
