"""Wrappers whose updates merge into the same compiled train step.

* :class:`EMA`: Polyak / exponential moving averages of the parameters.
* :class:`Lookahead`: Zhang et al.'s slow weights around any rule.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable

from .optimizer import Optimizer, Updates, _check_number

__all__ = ["EMA", "Lookahead"]


def _copies(params: Sequence[SharedVariable], tag: str) -> list[SharedVariable]:
    return [pytensor.shared(p.get_value(borrow=False), name=f"{p.name or f'param{i}'}.{tag}") for i, p in enumerate(params)]


class EMA:
    r"""Exponential moving average of parameters (Polyak & Juditsky, 1992).

    .. math:: a_t = d\, a_{t-1} + (1 - d)\, p_t

    where :math:`p_t` is the parameter *after* step :math:`t`. Averages start at the
    parameters' values when the EMA is created.

    >>> ema = symopt.EMA(model.params, decay=0.999)                          # doctest: +SKIP
    >>> train = pytensor.function([x, y], loss, updates=ema.updates(opt.updates(loss)))  # doctest: +SKIP
    >>> with ema.average_parameters():                                        # doctest: +SKIP
    ...     evaluate()   # runs with the averages, then the trained values come back
    """

    def __init__(self, params: Sequence[SharedVariable], decay: float = 0.999):
        params = list(params)
        if not params or not all(isinstance(p, SharedVariable) for p in params):
            raise TypeError("EMA: params must be a non-empty list of pytensor shared variables")
        decay = _check_number("EMA", "decay", decay)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: decay must lie in [0, 1), got {decay}")
        self.params = params
        self.averages = _copies(params, "ema")
        self.decay = pytensor.shared(np.float64(decay), name="EMA.decay")

    def set_decay(self, decay: float) -> None:
        decay = _check_number("EMA", "decay", decay)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: decay must lie in [0, 1), got {decay}")
        self.decay.set_value(np.float64(decay))

    def updates(self, updates: Mapping[SharedVariable, Any] | None = None) -> Updates:
        """``updates`` plus the averages' updates, which average the *new* parameter values.

        Given an optimiser's :class:`~symopt.optimizer.Updates`, the averages move only
        on calls that apply an update (not while accumulating, not on skipped steps).
        """
        applied = getattr(updates, "applied", None)
        out = Updates(updates or {})
        out.applied = applied
        for param, average in zip(self.params, self.averages):
            new = pt.as_tensor_variable(out.get(param, param))
            d = pt.cast(self.decay, param.dtype)
            moved = pt.cast(d * average + (1 - d) * new, param.dtype)
            out[average] = moved if applied is None else pt.switch(applied, moved, average)
        return out

    def reset(self) -> None:
        """Restart the averages at the current parameter values."""
        for param, average in zip(self.params, self.averages):
            average.set_value(param.get_value(borrow=False))

    @contextlib.contextmanager
    def average_parameters(self) -> Iterator[None]:
        """Inside the block the parameters hold the averages; afterwards their own values."""
        saved = [p.get_value(borrow=False) for p in self.params]
        for param, average in zip(self.params, self.averages):
            param.set_value(average.get_value(borrow=False))
        try:
            yield
        finally:
            for param, value in zip(self.params, saved):
                param.set_value(value)


class Lookahead:
    r"""Lookahead (Zhang, Lucas, Hinton & Ba, NeurIPS 2019) around any rule.

    The inner rule moves the fast weights :math:`p`; every ``k`` applied steps the slow
    weights move towards them and the fast weights restart there:

    .. math:: \phi \leftarrow \phi + \alpha (p - \phi), \qquad p \leftarrow \phi

    Slow weights start at the parameters' values. Defaults (the paper's): ``k=5``,
    ``alpha=0.5``. Hyperparameter calls go to the inner rule.
    """

    def __init__(self, inner: Optimizer, k: int = 5, alpha: float = 0.5):
        if not isinstance(inner, Optimizer):
            raise TypeError(f"Lookahead: inner must be a symopt Optimizer, got {type(inner).__name__}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"Lookahead: k must be an integer >= 1, got {k!r}")
        alpha = _check_number("Lookahead", "alpha", alpha)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"Lookahead: alpha must lie in (0, 1], got {alpha}")
        self.inner, self.k = inner, int(k)
        self.alpha = pytensor.shared(np.float64(alpha), name="Lookahead.alpha")
        self.slow = _copies(inner.params, "slow")
        self.counter = pytensor.shared(np.int64(0), name="Lookahead.counter")

    @property
    def params(self) -> list[SharedVariable]:
        return self.inner.params

    def __getattr__(self, name: str) -> Any:
        if name in ("set_hyperparameter", "get_hyperparameter", "hyperparameters", "iterations", "state"):
            return getattr(self.__dict__["inner"], name)
        raise AttributeError(f"Lookahead has no attribute {name!r}")

    def updates(
        self, loss: Any = None, *, grads: Sequence[Any] | None = None, allow_unused: bool = False
    ) -> Updates:
        out = self.inner.updates(loss, grads=grads, allow_unused=allow_unused)
        if out.applied is None:
            count = self.counter + 1
            sync = pt.eq(count % self.k, 0)
        else:  # not while accumulating or on a skipped step
            count = self.counter + pt.cast(out.applied, "int64")
            sync = pt.and_(out.applied, pt.eq(count % self.k, 0))
        for param, slow in zip(self.inner.params, self.slow):
            if param not in out:
                continue
            fast = out[param]
            alpha = pt.cast(self.alpha, param.dtype)
            moved = pt.cast(slow + alpha * (fast - slow), param.dtype)
            out[param] = pt.switch(sync, moved, fast)
            out[slow] = pt.switch(sync, moved, slow)
        out[self.counter] = count
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "inner": self.inner.state_dict(),
            "slow": [s.get_value(borrow=False) for s in self.slow],
            "counter": np.array(self.counter.get_value()),
            "alpha": np.array(self.alpha.get_value()),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; validates all of it before changing anything."""
        slow = [np.asarray(a) for a in state["slow"]]
        if len(slow) != len(self.slow):
            raise ValueError(f"Lookahead: state has {len(slow)} slow weights, expected {len(self.slow)}")
        for var, value in zip(self.slow, slow):
            want = var.get_value(borrow=True)
            if value.shape != want.shape or value.dtype != want.dtype:
                raise ValueError(f"Lookahead: slow weights {var.name} are {value.dtype}{list(value.shape)}, expected {want.dtype}{list(want.shape)}")
        counter = np.asarray(state["counter"])
        if counter.shape != () or counter.dtype.kind not in "iu" or counter < 0:
            raise ValueError(f"Lookahead: state counter must be a non-negative integer, got {counter!r}")
        alpha = _check_number("Lookahead", "alpha", np.asarray(state["alpha"]).item())
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"Lookahead: state alpha must lie in (0, 1], got {alpha}")
        self.inner.load_state_dict(state["inner"])  # validates everything of its own first
        for var, value in zip(self.slow, slow):
            var.set_value(value.copy())
        self.counter.set_value(np.int64(counter))
        self.alpha.set_value(np.float64(alpha))
