"""Rules written before ``h`` existed, for :class:`~symopt.optimizer.Optimizer`.

Such a rule's ``update_param(self, param, grad, state)`` reads its hyperparameters as
``self.<hyperparameter>``, the step as ``self.t`` and float64 coefficients through
``self.float64_scalars()``. :class:`OldRuleMixin` provides those while a step is built,
and calls each rule hook the way it was written (with or without ``h``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.tensor.variable import TensorVariable

from .hyperparameter import Values

__all__ = ["OldRuleMixin"]


def _takes_values(function: Callable[..., Any], positional: int) -> bool:
    """Whether a rule hook takes its hyperparameters explicitly (one more positional argument)."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return False
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds for p in parameters) > positional or any(
        p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters
    )


def _callable_without_h(method: Callable[..., Any]) -> Callable[..., Any]:
    """A new-style hook that an old-style subclass may still call as ``super().update_param(p, g, s)``:
    without ``h`` it gets the values the old-style call is being built with."""
    if getattr(method, "_h_optional", False):
        return method

    @functools.wraps(method)
    def hook(self: Any, *args: Any) -> Any:
        if len(args) == method.__code__.co_argcount - 2:  # h left out
            args = (*args, self.__dict__.get("_h"))
        return method(self, *args)

    hook._h_optional = True  # type: ignore[attr-defined]
    return hook


class OldRuleMixin:
    """``self.<hyperparameter>``, ``self.t``, :meth:`float64_scalars`; a base of :class:`~symopt.optimizer.Optimizer`.

    Uses the optimiser's ``_h`` (the values of the step being built), ``iterations``,
    ``param_groups``, ``options`` and its rule hooks ``update_param`` / ``update_scalars``.
    """

    _explicit_values: ClassVar[bool]
    _explicit_scalars: ClassVar[bool]
    _h: Values | None
    iterations: SharedVariable

    @contextlib.contextmanager
    def _legacy(self, h: Values) -> Iterator[None]:
        # Rules written before `h` read self.<hyperparameter> (__getattr__ below).
        saved, self._h = self._h, h
        try:
            yield
        finally:
            self._h = saved

    # -- the old rule API: self.<hyperparameter>, self.t, float64_scalars() -------------
    @property
    def t(self) -> TensorVariable:
        """Old-style rules: the 1-based number of the step being built, as a symbolic float."""
        h = self.__dict__.get("_h")
        return h.t if h is not None else pt.cast(self.iterations + 1, "float64")

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: old-style rules read hyperparameters here.
        h = self.__dict__.get("_h")
        if h is not None and name in h:
            return h[name]
        groups = self.__dict__.get("param_groups")
        if groups:
            if name in groups[0].values:
                return groups[0].symbolic(name, self.iterations)
            if name in self.__dict__.get("options", {}):
                return self.options[name]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    @contextlib.contextmanager
    def float64_scalars(self) -> Iterator[Callable[[Any], TensorVariable]]:
        """Old-style rules: ``self.<hyperparameter>`` in float64 inside the block.

        Yields a function casting a finished coefficient back to the parameter's dtype.
        New rules use ``with h.float64() as f:`` and ``f.cast``.
        """
        h = self.__dict__.get("_h")
        dtype = h.dtype if h is not None else "float64"
        with pytensor.config.change_flags(floatX="float64"):
            with self._legacy(h._make("float64", dtype) if h is not None else None):
                yield lambda value: pt.cast(value, dtype)

    def _rule_step(self, param: Any, grad: Any, state: dict[str, Any], h: Values) -> Any:
        if self._explicit_values:
            return self.update_param(param, grad, state, h)
        with self._legacy(h):
            return self.update_param(param, grad, state)  # type: ignore[call-arg]

    def _rule_scalars(self, state: dict[str, Any], h: Values) -> Any:
        if self._explicit_scalars:
            return self.update_scalars(state, h)
        with self._legacy(h):
            return self.update_scalars(state)  # type: ignore[call-arg]

