"""Several optimisers over disjoint parameter sets, stepped as one.

Rules such as Muon update only matrices and leave biases and norm scales to another
rule (AdamW). :func:`combine` joins such optimisers into one optimiser-like object: its
:meth:`Combined.updates` differentiates the loss *once* with respect to every member's
parameters and hands each member its own gradients (``member.updates(grads=...)``), so
one compiled step trains all of them, and one ``state_dict`` / ``save`` / ``load``
holds every member's state (optax's ``multi_transform``, torch's several optimisers
stepped together).

Each member's gradient transforms (clipping, weight decay, masks) see only its own
parameters: ``clip_global_norm`` on a member is the norm of that member's gradients.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable

from ._io import atomic_writer
from ._npz import NpzReader
from .optimizer import Updates

__all__ = ["Combined", "combine"]

FORMAT = "symopt-combined"
VERSION = 1
#: Upper bound on a state string (an optimiser's name) in a saved file, in characters.
_MAX_NAME = 256


def _leaves(state: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(key, array) of every leaf of a nested state dict/list, keys joined with ``/``."""
    if isinstance(state, Mapping):
        for key, value in state.items():
            yield from _leaves(value, f"{path}/{key}")
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from _leaves(value, f"{path}/{i}")
    else:
        yield path, state


def _rebuild(template: Any, read: Callable[[str, np.ndarray], np.ndarray], path: str = "") -> Any:
    """A state shaped like ``template`` whose leaves come from ``read(key, template_leaf)``."""
    if isinstance(template, Mapping):
        return {key: _rebuild(value, read, f"{path}/{key}") for key, value in template.items()}
    if isinstance(template, (list, tuple)):
        return [_rebuild(value, read, f"{path}/{i}") for i, value in enumerate(template)]
    return read(path, np.asarray(template))


class Combined:
    """Optimisers over disjoint parameter sets, stepped together (build with :func:`combine`).

    Attributes
    ----------
    members
        Name -> optimiser, in the order given.
    params
        Every member's parameters, in member order.
    """

    #: A member skipping a non-finite step on its own would desynchronise the members.
    skip_nonfinite = False

    def __init__(self, members: Mapping[str, Any]):
        if not members:
            raise ValueError("combine: give at least one optimiser")
        owner: dict[int, str] = {}
        for name, opt in members.items():
            if "inner" in getattr(opt, "__dict__", {}) and opt.inner is None:  # EMA(params): averages, nothing to step
                raise TypeError(f"combine: member {name!r} is an {type(opt).__name__} over parameters with no "
                                f"optimiser to step; wrap the optimiser instead: {type(opt).__name__}(opt)")
            for attr in ("params", "updates", "state_dict", "load_state_dict", "iterations"):
                if not hasattr(opt, attr):
                    raise TypeError(f"combine: member {name!r} ({type(opt).__name__}) has no {attr!r}; "
                                    f"give symopt optimisers (or EMA/Lookahead wrappers)")
            if getattr(opt, "skip_nonfinite", False):
                raise ValueError(
                    f"combine: member {name!r} has skip_nonfinite=True; a member skipping steps on its own "
                    f"would leave the members at different steps"
                )
            if getattr(opt, "stoppable", False) or getattr(getattr(opt, "inner", None), "stoppable", False):
                raise ValueError(
                    f"combine: member {name!r} has stoppable=True; a member freezing stack members on its own "
                    f"would leave the members at different steps (build each rule on its own stack)"
                )
            for param in opt.params:
                if id(param) in owner:
                    raise ValueError(
                        f"combine: parameter {param.name or param!r} belongs to members {owner[id(param)]!r} "
                        f"and {name!r}; the parameter sets must be disjoint"
                    )
                owner[id(param)] = name
        accumulate = {name: int(getattr(opt, "accumulate", 1)) for name, opt in members.items()}
        if len(set(accumulate.values())) > 1:
            raise ValueError(f"combine: the members accumulate different numbers of steps {accumulate}; "
                             f"they must step together")
        self.members: dict[str, Any] = dict(members)
        self.params: list[SharedVariable] = [p for opt in self.members.values() for p in opt.params]
        self.accumulate = next(iter(accumulate.values()))

    # ------------------------------------------------------------------ members
    @property
    def iterations(self) -> SharedVariable:
        """The step counter (every member's counter advances with it; the first member's)."""
        return next(iter(self.members.values())).iterations

    def member(self, which: int | str) -> Any:
        """A member by name or position."""
        names = list(self.members)
        if isinstance(which, str) and which in self.members:
            return self.members[which]
        if isinstance(which, (int, np.integer)) and not isinstance(which, bool) and 0 <= which < len(names):
            return self.members[names[int(which)]]
        raise ValueError(f"combine: no member {which!r} (members: {names})")

    def __repr__(self) -> str:
        return f"Combined({', '.join(f'{k}={v!r}' for k, v in self.members.items())})"

    # ------------------------------------------------------------------ updates
    def updates(
        self, loss: Any = None, *, grads: Sequence[Any] | None = None, allow_unused: bool = False
    ) -> Updates:
        """Every member's updates from one gradient computation, merged into one ``Updates``.

        ``loss`` is differentiated once with respect to :attr:`params` (or ``grads`` gives one
        gradient per parameter of :attr:`params`); member ``k`` receives its slice. With
        ``allow_unused``, a member holding a parameter the loss does not reach differentiates
        the loss itself (and leaves that parameter alone), as :meth:`Optimizer.updates` does.
        """
        if (loss is None) == (grads is None):
            raise TypeError("Combined.updates needs exactly one of loss or grads=")
        if grads is not None:
            grads = list(grads)
            if len(grads) != len(self.params):
                raise ValueError(f"Combined: got {len(grads)} gradients for {len(self.params)} parameters")
        else:
            loss = pt.as_tensor_variable(loss)
            if loss.ndim != 0:
                raise ValueError(f"Combined: the loss must be a scalar, got a {loss.ndim}-d tensor")
            grads = pytensor.grad(loss, self.params, disconnected_inputs="ignore", return_disconnected="none")
            missing = [p for p, g in zip(self.params, grads) if g is None]
            if missing and not allow_unused:
                raise ValueError(
                    f"Combined: the loss does not depend on {[p.name for p in missing]}; remove them from their "
                    f"optimiser or pass allow_unused=True"
                )
        out = Updates()
        start = 0
        for opt in self.members.values():
            own = grads[start : start + len(opt.params)]
            start += len(opt.params)
            if any(g is None for g in own):
                if loss is None:
                    raise ValueError("Combined: grads holds None; give a gradient for every parameter")
                made = opt.updates(loss, allow_unused=True)  # allow_unused: the member leaves those alone
            else:
                made = opt.updates(grads=own)
            if out.applied is None:
                out.applied = made.applied  # equal for every member: same accumulation, no skipping
            out.update(made)
        return out

    # ------------------------------------------------------------------ hyperparameters
    def _targets(self, name: str, member: int | str | None) -> list[tuple[str, Any]]:
        if member is not None:
            return [(str(member), self.member(member))]
        having = [(k, opt) for k, opt in self.members.items() if _has_hyperparameter(opt, name)]
        if not having:
            raise ValueError(f"combine: no member has a hyperparameter {name!r}")
        return having

    def set_hyperparameter(self, name: str, value: float, member: int | str | None = None,
                           group: int | None = None) -> None:
        """Set ``name`` on one member (by name or position), or on every member that has it.

        All or nothing: a value one member refuses leaves every member unchanged.
        """
        self._all_or_nothing(self._targets(name, member),
                             lambda item: item[1].set_hyperparameter(name, value, group=group))

    def get_hyperparameter(self, name: str, member: int | str, group: int = 0) -> Any:
        """The current value of ``name`` in one member."""
        return self.member(member).get_hyperparameter(name, group=group)

    # ------------------------------------------------------------------ state
    @staticmethod
    def _all_or_nothing(members: Sequence[tuple[str, Any]], apply: Callable[[tuple[str, Any]], None]) -> None:
        """``apply`` to each (name, member); if one raises, the members already changed get
        their state back, so a refused value or state changes nothing."""
        saved = [opt.state_dict() for _, opt in members]
        done: list[int] = []
        try:
            for i, item in enumerate(members):
                apply(item)
                done.append(i)
        except BaseException:
            for i in done:
                members[i][1].load_state_dict(saved[i])
            raise

    def state_dict(self) -> dict[str, Any]:
        """Every member's :meth:`state_dict`, by member name."""
        return {"optimizer": "Combined", "members": {k: opt.state_dict() for k, opt in self.members.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; nothing changes unless every member accepts its part."""
        if not isinstance(state, Mapping) or state.get("optimizer") != "Combined" or not isinstance(
            state.get("members"), Mapping
        ):
            raise ValueError("Combined: state must be a dict from Combined.state_dict()")
        saved = state["members"]
        if list(saved) != list(self.members):
            raise ValueError(f"Combined: state has members {list(saved)}, this optimiser {list(self.members)}")
        steps = {k: int(np.asarray(_iterations(v))) for k, v in saved.items() if _iterations(v) is not None}
        if len(set(steps.values())) > 1:
            raise ValueError(f"Combined: the members' saved step counters differ {steps}")
        self._all_or_nothing(list(self.members.items()), lambda item: item[1].load_state_dict(saved[item[0]]))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` to an ``.npz`` file atomically (no partial file on failure)."""
        state = self.state_dict()
        header = {"format": FORMAT, "version": VERSION, "members": list(self.members)}
        flat = {"header": np.array(json.dumps(header))}
        for name, member_state in state["members"].items():
            flat.update({f"member/{name}{key}": np.asarray(value) for key, value in _leaves(member_state)})
        with atomic_writer(path) as f:
            np.savez(f, **flat)

    def load(self, path: str | os.PathLike[str]) -> None:
        """Restore state written by :meth:`save`.

        The file is not trusted: every array's shape and dtype is checked from its
        ``.npy`` header against this optimiser's own state before it is read, then
        :meth:`load_state_dict` validates the rest; nothing changes unless all of it passes.
        """
        path = Path(path)
        where = f"Combined: {str(path)!r}"
        current = self.state_dict()["members"]
        with NpzReader(path, "combined optimiser state file") as npz:
            try:
                header = json.loads(str(npz.read("header", shape=(), kinds="U", max_itemsize=4 * 4096)))
            except ValueError as exc:
                raise ValueError(f"{where} is not a combined optimiser state file ({exc})") from None
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise ValueError(f"{where} is not a combined optimiser state file")
            if header.get("version") != VERSION:
                raise ValueError(f"{where} has format version {header.get('version')!r}; this symopt reads {VERSION}")
            if header.get("members") != list(self.members):
                raise ValueError(f"{where} holds members {header.get('members')!r}, this optimiser {list(self.members)}")
            expected = {"header"} | {f"member/{k}{key}" for k, s in current.items() for key, _ in _leaves(s)}
            unexpected = sorted(set(npz.names) - expected)
            if unexpected:
                raise ValueError(f"{where} holds state this optimiser does not keep: {unexpected[:5]}")

            def reader(prefix: str) -> Callable[[str, np.ndarray], np.ndarray]:
                def read(key: str, like: np.ndarray) -> np.ndarray:
                    if like.dtype.kind == "U":
                        return npz.read(prefix + key, shape=(), kinds="U", max_itemsize=4 * _MAX_NAME)
                    return npz.read(prefix + key, shape=like.shape, dtype=like.dtype)

                return read

            members = {k: _rebuild(s, reader(f"member/{k}")) for k, s in current.items()}
        self.load_state_dict({"optimizer": "Combined", "members": members})


def _iterations(state: Any) -> Any:
    """A member state's step counter (a Lookahead's is its inner rule's)."""
    while isinstance(state, Mapping):
        if "iterations" in state:
            return state["iterations"]
        state = state.get("inner")
    return None


def _has_hyperparameter(opt: Any, name: str) -> bool:
    try:
        opt.get_hyperparameter(name)
    except (KeyError, ValueError, TypeError, AttributeError):
        return False
    return True


def combine(*optimizers: Any, **named: Any) -> Combined:
    """One optimiser-like object stepping several optimisers over disjoint parameter sets.

    >>> muon_part = symopt.Momentum(matrices, learning_rate=0.02, momentum=0.95)# doctest: +SKIP
    >>> adamw_part = symopt.AdamW(biases, learning_rate=3e-4)                   # doctest: +SKIP
    >>> opt = symopt.combine(matrices=muon_part, biases=adamw_part)             # doctest: +SKIP
    >>> train = pytensor.function([x, y], loss, updates=opt.updates(loss))      # doctest: +SKIP

    Positional members are named by their position (``"0"``, ``"1"``, ...), keyword
    members by their keyword; ``member=`` of :meth:`Combined.set_hyperparameter` takes
    either. A parameter in two members, a member skipping non-finite steps
    (``skip_nonfinite``) or members accumulating different step counts are refused
    (ValueError): the members always step together, on one step counter.
    """
    members = {str(i): opt for i, opt in enumerate(optimizers)}
    members.update(named)
    return Combined(members)
