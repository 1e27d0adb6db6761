"""The registry of update rules: one table drives tests, experiments and benchmarks.

Every entry has a *kind* (:func:`kind`, the class's ``kind`` attribute):

* :data:`RULE` (``"per-parameter rule"``, every :class:`~symopt.optimizer.Optimizer`
  subclass): the math of one step per parameter, stepped on mini-batch gradients; it works
  everywhere a name is accepted (``symopt train``, ``bench-mnist``, sweeps, seed stacks,
  :func:`symopt.combine`, the benchmarks);
* :data:`FULL_BATCH` (``"full-batch, needs loss"``, :class:`symopt.LBFGS`): needs the loss
  itself, re-evaluated at trial points, and all parameters as one vector. ``symopt.get``,
  ``symopt optimizers`` and :mod:`symopt.updates` know it; code that steps rules on
  mini-batches asks for :func:`get_rule`, which refuses it with one clear error, and code
  that iterates the registry takes :func:`rules` (the per-parameter rules) or skips the
  others with :func:`not_a_rule` as the reason.

Third-party packages add rules without importing symopt first by declaring an entry
point in the group ``symopt.optimizers``::

    [project.entry-points."symopt.optimizers"]
    signsgd = "mypkg.rules:SignSGD"
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Iterator, MutableMapping
from importlib import metadata
from typing import Any, TypeVar

from .optimizer import Optimizer

__all__ = ["OPTIMIZERS", "ENTRY_POINT_GROUP", "register", "get", "get_rule", "rules", "kind", "not_a_rule",
           "display_name", "UnknownOptimizerError", "NotARuleError", "RULE", "FULL_BATCH", "KINDS"]

ENTRY_POINT_GROUP = "symopt.optimizers"

#: The kind of every Optimizer subclass: one step per parameter from its gradient.
RULE = "per-parameter rule"
#: The kind of an optimiser that needs the loss and all parameters at once (L-BFGS).
FULL_BATCH = "full-batch, needs loss"
#: kind -> what it means, in words.
KINDS = {
    RULE: "one step per parameter from mini-batch gradients; usable wherever a rule name is accepted",
    FULL_BATCH: "needs the loss itself (re-evaluated inside the step) on a deterministic full-batch problem; "
                "build the class directly: opt.updates(loss)",
}
#: What a full-batch optimiser class must provide (the wrappers' protocol).
_FULL_BATCH_PROTOCOL = ("updates", "state_dict", "load_state_dict", "save", "load")

O = TypeVar("O", bound=type[Any])


class UnknownOptimizerError(KeyError):
    """``get`` was asked for a name no rule is registered under."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


class NotARuleError(ValueError):
    """A registered name was given where only a per-parameter rule works (:func:`get_rule`)."""


def _registrable(cls: Any) -> bool:
    """An Optimizer subclass, or a class declaring the full-batch kind with its protocol."""
    if not isinstance(cls, type):
        return False
    if issubclass(cls, Optimizer):
        return True
    return getattr(cls, "kind", None) == FULL_BATCH and all(callable(getattr(cls, a, None)) for a in _FULL_BATCH_PROTOCOL)


class _Registry(MutableMapping[str, type[Any]]):
    """name -> rule class; entry points are loaded the first time it is read."""

    def __init__(self) -> None:
        self._rules: dict[str, type[Any]] = {}
        self._entry_points_loaded = False

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            name = ep.name.lower()
            if name in self._rules:
                continue  # built-ins and explicit register() calls win
            # A broken plug-in must not break symopt: say which one, skip it.
            try:
                cls = ep.load()
            except Exception as exc:
                warnings.warn(f"symopt: entry point {ep.name!r} ({ep.value}) failed to load and is skipped: {exc}",
                              RuntimeWarning, stacklevel=3)
                continue
            if not _registrable(cls):
                warnings.warn(f"symopt: entry point {ep.name!r} ({ep.value}) is not an Optimizer subclass; skipped",
                              RuntimeWarning, stacklevel=3)
                continue
            self[name] = cls

    def reload_entry_points(self) -> None:
        """Look for newly installed plug-ins again."""
        self._entry_points_loaded = False
        self._load_entry_points()

    def __getitem__(self, name: str) -> type[Any]:
        self._load_entry_points()
        return self._rules[name]

    def __setitem__(self, name: str, cls: type[Any]) -> None:
        if getattr(cls, "name", None) != name:
            cls.name = name
        self._rules[name] = cls

    def __delitem__(self, name: str) -> None:
        del self._rules[name]

    def __iter__(self) -> Iterator[str]:
        self._load_entry_points()
        return iter(self._rules)

    def __len__(self) -> int:
        self._load_entry_points()
        return len(self._rules)

    def __repr__(self) -> str:
        return f"OPTIMIZERS({', '.join(self)})"


OPTIMIZERS = _Registry()


def register(name: str, *, replace: bool = False) -> Callable[[O], O]:
    """Class decorator adding an :class:`Optimizer` subclass to :data:`OPTIMIZERS`.

    Names are case-insensitive. Registering a taken name raises unless ``replace=True``.
    A class that is not an Optimizer subclass is accepted when it declares
    ``kind = FULL_BATCH`` and has the optimiser protocol (``updates(loss)``, ``state_dict``,
    ``load_state_dict``, ``save``, ``load``), as :class:`symopt.LBFGS` does.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"register: the name must be a non-empty string, got {name!r}")
    key = name.strip().lower()

    def decorate(cls: O) -> O:
        if not _registrable(cls):
            raise TypeError(f"register({name!r}): {cls!r} is not an Optimizer subclass (nor a class declaring "
                            f"kind = {FULL_BATCH!r} with {', '.join(_FULL_BATCH_PROTOCOL)})")
        existing = OPTIMIZERS._rules.get(key)
        if existing is not None and existing is not cls and not replace:
            raise ValueError(
                f"register: the name {key!r} is taken by {existing.__module__}.{existing.__qualname__}; "
                f"pass replace=True to override it"
            )
        OPTIMIZERS[key] = cls
        return cls

    return decorate


def get(name: str) -> type[Any]:
    """The class registered under ``name`` (case-insensitive): a rule, or a full-batch optimiser."""
    if not isinstance(name, str):
        raise TypeError(f"symopt.get: expected an optimizer name, got {name!r}")
    key = name.strip().lower()
    if key in OPTIMIZERS:
        return OPTIMIZERS[key]
    known = sorted(OPTIMIZERS)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownOptimizerError(f"unknown optimizer {name!r}.{hint} Known optimizers: {', '.join(known)}")


def kind(rule: str | type[Any]) -> str:
    """The kind of a registered name or class: :data:`RULE` or :data:`FULL_BATCH`."""
    cls = get(rule) if isinstance(rule, str) else rule
    return RULE if isinstance(cls, type) and issubclass(cls, Optimizer) else str(getattr(cls, "kind", RULE))


def rules() -> list[str]:
    """The registered names of per-parameter rules (kind :data:`RULE`), in registry order.

    What code that runs "every rule" on mini-batches iterates (tables of tests,
    experiments, benchmarks); the other names are skipped with :func:`not_a_rule`.
    """
    return [name for name, cls in OPTIMIZERS.items() if kind(cls) == RULE]


def not_a_rule(name: str, where: str = "this") -> str | None:
    """Why ``name`` cannot be used where a per-parameter rule is needed (``None``: it can).

    ``where`` names the place in the message (``"symopt train"``, ``"bench-mnist"``, ...).
    """
    cls = get(name)
    found = kind(cls)
    if found == RULE:
        return None
    return (f"{where}: {name.strip().lower()!r} ({cls.__module__.split('.')[0]}.{cls.__name__}) is not a "
            f"per-parameter rule (its kind: {found}): it re-evaluates the loss of one deterministic, full-batch "
            f"problem inside its step, and {where} steps rules on mini-batch gradients. Use it directly on a "
            f"full-batch loss, {cls.__name__}(params, ...).updates(loss), or pick a rule (`symopt optimizers` "
            f"lists the kinds)")


def get_rule(name: str, where: str = "this") -> type[Optimizer]:
    """:func:`get`, refusing a name that is not a per-parameter rule with :class:`NotARuleError`.

    For every place that steps a rule on mini-batch gradients (``symopt train``,
    ``bench-mnist``, sweeps, the benchmarks); unknown names raise
    :class:`UnknownOptimizerError` as in :func:`get`.
    """
    cls = get(name)
    reason = not_a_rule(name, where)
    if reason is not None:
        raise NotARuleError(reason)
    return cls


def display_name(name: str) -> str:
    """How tables and figures name the rule registered as ``name``: its class name.

    ``"adagrad"`` -> ``"AdaGrad"``, ``"rmsprop"`` -> ``"RMSprop"``; text that names no
    rule (``"adam learning_rate=0.003"``, a sweep's label) is returned as given. The
    registry is the one table: a new rule needs no label written anywhere else.
    """
    rule = OPTIMIZERS.get(name.strip().lower()) if isinstance(name, str) else None
    return rule.__name__ if rule is not None else name
