"""The functional convention of ``lasagne.updates`` and ``pymc.variational.updates``.

Code written for either switches by changing one import::

    from symopt import updates                      # was: from lasagne import updates
    train = pytensor.function([x, y], loss, updates=updates.adam(loss, params, learning_rate=1e-3))

    pm.fit(obj_optimizer=symopt.updates.adam(learning_rate=0.01))   # without loss and params: a partial

There is one function per registered rule (``symopt.OPTIMIZERS``), generated from the
registry: ``updates.<name>(loss_or_grads, params, <hyperparameters>..., *, <gradient
settings>..., allow_unused=False)`` builds ``symopt.get(name)(params, ...)`` and returns
its ``OrderedDict`` of updates. ``loss_or_grads`` is a scalar loss or a list of gradients
(Lasagne's :func:`get_or_compute_grads`). Each call makes a new optimiser with fresh
state, as Lasagne's functions do; keep the class (``symopt.Adam``) when you want to
change hyperparameters later, save state or reuse it. A rule registered after import
gets its function too (``getattr(symopt.updates, name)``). ``nesterov_momentum`` is
Lasagne's name for ``nesterov``.

``lbfgs`` (a full-batch optimiser, not a per-parameter rule: see :mod:`symopt.registry`)
has the same form with :class:`symopt.LBFGS`'s arguments, ``lbfgs(loss, params,
learning_rate=1.0, max_iter=20, ..., line_search=None)``; it needs the loss itself (it
re-evaluates it in its line search), so a list of gradients is refused, and one call of
the compiled function is one ``torch.optim.LBFGS.step``.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable
from typing import Any

import pytensor
from pytensor.compile.sharedvalue import SharedVariable

from . import optimizer as _optimizer
from .optimizer import Optimizer
from .registry import FULL_BATCH, OPTIMIZERS, kind
from .transforms import SETTING_KEYWORDS

__all__ = ["get_or_compute_grads"]

#: Lasagne's and PyMC's names for symopt rules.
ALIASES = {"nesterov_momentum": "nesterov"}

_P = inspect.Parameter


def get_or_compute_grads(loss_or_grads: Any, params: list[SharedVariable]) -> list[Any]:
    """Lasagne's helper: ``loss_or_grads`` as given if it is a list (or tuple) of one
    gradient per parameter, else ``pytensor.grad(loss_or_grads, params)``."""
    if any(not isinstance(p, SharedVariable) for p in params):
        raise ValueError("get_or_compute_grads: params must all be shared variables")
    if isinstance(loss_or_grads, (list, tuple)):
        if len(loss_or_grads) != len(params):
            raise ValueError(f"get_or_compute_grads: got {len(loss_or_grads)} gradients for {len(params)} parameters")
        return list(loss_or_grads)
    return pytensor.grad(loss_or_grads, params)


def _signature(cls: type[Optimizer]) -> inspect.Signature:
    """loss_or_grads, params, the rule's hyperparameters (in its order, with its defaults),
    then the constructor's keyword-only settings and allow_unused. A full-batch optimiser:
    its constructor's arguments after ``params``, then allow_unused."""
    parameters = [_P("loss_or_grads", _P.POSITIONAL_OR_KEYWORD, default=None),
                  _P("params", _P.POSITIONAL_OR_KEYWORD, default=None)]
    if kind(cls) == FULL_BATCH:
        own = [p.replace(annotation=_P.empty) for name, p in inspect.signature(cls.__init__).parameters.items()
               if name not in ("self", "params") and p.kind in (_P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY)]
        return inspect.Signature([*parameters, *own, _P("allow_unused", _P.KEYWORD_ONLY, default=False)])
    defaults = cls.hyperparameters
    parameters += [_P(name, _P.POSITIONAL_OR_KEYWORD, default=value) for name, value in defaults.items()]
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.kind is _P.KEYWORD_ONLY and p.name not in defaults and p.name != "allow_unused":
            parameters.append(p.replace(annotation=_P.empty))
    # built-in transforms added to the table after the constructor's signature was written
    taken = {p.name for p in parameters}
    parameters += [_P(k, _P.KEYWORD_ONLY, default=None) for k in SETTING_KEYWORDS if k not in taken]
    parameters.append(_P("allow_unused", _P.KEYWORD_ONLY, default=False))
    return inspect.Signature(parameters)


def _make(name: str, cls: type[Optimizer]) -> Callable[..., Any]:
    signature = _signature(cls)
    known = list(signature.parameters)
    qualified = f"symopt.updates.{name}"
    full_batch = kind(cls) == FULL_BATCH

    def update_function(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            unknown = [k for k in kwargs if k not in known]
            # torch/optax spellings (lr, eps, ...) as the classes' own error suggests them
            aliases = getattr(_optimizer, "_ALIASES", {})
            close = [aliases[unknown[0]]] if unknown and unknown[0] in aliases else (
                difflib.get_close_matches(unknown[0], known, n=1) if unknown else [])
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"{qualified}: {exc}{hint}; it takes {', '.join(known)}") from None
        arguments = dict(bound.arguments)
        loss_or_grads, params = arguments.pop("loss_or_grads", None), arguments.pop("params", None)
        if loss_or_grads is None and params is None:
            return functools.partial(update_function, **arguments)
        if loss_or_grads is None or params is None:
            missing = "params" if params is None else "loss_or_grads"
            raise ValueError(f"{qualified}: {missing} is missing; give both loss_or_grads and params, "
                             f"or neither to get a partial")
        allow_unused = arguments.pop("allow_unused", False)
        if full_batch and isinstance(loss_or_grads, (list, tuple)):
            raise TypeError(f"{qualified}: {cls.__name__} needs the loss itself (it re-evaluates it at trial "
                            f"points), not a list of gradients; pass the scalar loss")
        optimizer = cls(params, **arguments)
        if isinstance(loss_or_grads, (list, tuple)):
            return optimizer.updates(grads=list(loss_or_grads), allow_unused=allow_unused)
        return optimizer.updates(loss_or_grads, allow_unused=allow_unused)

    update_function.__name__ = update_function.__qualname__ = name
    update_function.__module__ = __name__
    update_function.__signature__ = signature  # type: ignore[attr-defined]
    what = "a scalar loss (a full-batch optimiser: not a list of gradients)" if full_batch else (
        "a\nscalar loss or a list of one gradient per parameter")
    update_function.__doc__ = (
        f"{cls.__name__} updates in the Lasagne / PyMC functional form.\n\n"
        f"Returns the ``OrderedDict`` of ``{cls.__module__}.{cls.__qualname__}(params, ...).updates(...)``:\n"
        f"the new parameters, the rule's state and its step counter. ``loss_or_grads`` is {what}. Called without\n"
        f"``loss_or_grads`` and ``params``, returns a ``functools.partial`` taking them\n"
        f"(``pm.fit(obj_optimizer={name}(learning_rate=...))``). Hyperparameters and\n"
        f"settings are those of the class:\n\n{inspect.getdoc(cls) or ''}\n"
    )
    update_function._symopt_rule = cls  # type: ignore[attr-defined]
    return update_function


_generated: dict[str, Callable[..., Any]] = {}


def _function(name: str) -> Callable[..., Any] | None:
    """The function of the rule registered under ``name`` now (made again if re-registered)."""
    rule = ALIASES.get(name, name)
    if rule not in OPTIMIZERS:
        return None
    cls = OPTIMIZERS[rule]
    made = _generated.get(name)
    if made is None or made._symopt_rule is not cls:  # type: ignore[attr-defined]
        made = _generated[name] = _make(name, cls)
    return made


def __getattr__(name: str) -> Any:
    # Rules registered (or replaced) after import; built-ins are module globals below.
    made = _function(name) if not name.startswith("__") else None
    if made is None:
        raise AttributeError(f"module 'symopt.updates' has no attribute {name!r}; registered rules: {', '.join(OPTIMIZERS)}")
    return made


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(OPTIMIZERS) | set(ALIASES))


def _publish() -> None:
    """The rules registered at import become module globals (help(), tab completion)."""
    for name in [*OPTIMIZERS, *ALIASES]:
        made = _function(name) if name.isidentifier() and name not in globals() else None
        if made is not None:
            globals()[name] = made
            __all__.append(name)


_publish()
