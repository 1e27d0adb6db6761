"""The registry of update rules: one table drives tests, experiments and benchmarks.

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
from typing import TypeVar

from .optimizer import Optimizer

__all__ = ["OPTIMIZERS", "ENTRY_POINT_GROUP", "register", "get", "display_name", "UnknownOptimizerError"]

ENTRY_POINT_GROUP = "symopt.optimizers"

O = TypeVar("O", bound=type[Optimizer])


class UnknownOptimizerError(KeyError):
    """``get`` was asked for a name no rule is registered under."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


class _Registry(MutableMapping[str, type[Optimizer]]):
    """name -> rule class; entry points are loaded the first time it is read."""

    def __init__(self) -> None:
        self._rules: dict[str, type[Optimizer]] = {}
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
            if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
                warnings.warn(f"symopt: entry point {ep.name!r} ({ep.value}) is not an Optimizer subclass; skipped",
                              RuntimeWarning, stacklevel=3)
                continue
            self[name] = cls

    def reload_entry_points(self) -> None:
        """Look for newly installed plug-ins again."""
        self._entry_points_loaded = False
        self._load_entry_points()

    def __getitem__(self, name: str) -> type[Optimizer]:
        self._load_entry_points()
        return self._rules[name]

    def __setitem__(self, name: str, cls: type[Optimizer]) -> None:
        if cls.name is None or cls.name != name:
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
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"register: the name must be a non-empty string, got {name!r}")
    key = name.strip().lower()

    def decorate(cls: O) -> O:
        if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
            raise TypeError(f"register({name!r}): {cls!r} is not an Optimizer subclass")
        existing = OPTIMIZERS._rules.get(key)
        if existing is not None and existing is not cls and not replace:
            raise ValueError(
                f"register: the name {key!r} is taken by {existing.__module__}.{existing.__qualname__}; "
                f"pass replace=True to override it"
            )
        OPTIMIZERS[key] = cls
        return cls

    return decorate


def get(name: str) -> type[Optimizer]:
    """The rule class registered under ``name`` (case-insensitive)."""
    if not isinstance(name, str):
        raise TypeError(f"symopt.get: expected an optimizer name, got {name!r}")
    key = name.strip().lower()
    if key in OPTIMIZERS:
        return OPTIMIZERS[key]
    known = sorted(OPTIMIZERS)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownOptimizerError(f"unknown optimizer {name!r}.{hint} Known optimizers: {', '.join(known)}")


def display_name(name: str) -> str:
    """How tables and figures name the rule registered as ``name``: its class name.

    ``"adagrad"`` -> ``"AdaGrad"``, ``"rmsprop"`` -> ``"RMSprop"``; text that names no
    rule (``"adam learning_rate=0.003"``, a sweep's label) is returned as given. The
    registry is the one table: a new rule needs no label written anywhere else.
    """
    rule = OPTIMIZERS.get(name.strip().lower()) if isinstance(name, str) else None
    return rule.__name__ if rule is not None else name
