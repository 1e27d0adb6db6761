"""Wrappers around an optimiser whose updates merge into the same compiled train step.

* :class:`EMA`: Polyak / exponential moving averages of the parameters.
* :class:`Lookahead`: Zhang et al.'s slow weights around any rule.

Both wrap an optimiser (or another wrapper) and offer its protocol: ``params``,
``iterations``, ``updates(loss)``, ``build(loss) -> (updates, applied)``, ``state_dict`` /
``load_state_dict`` and ``save`` / ``load``, so a :class:`~symopt.train.Trainer` takes
them like an optimiser: ``EMA(Lookahead(symopt.Adam(params)), decay=0.999)``. They move
only on calls that apply an update (not while accumulating, not on skipped steps); the
applied flag comes from the inner :meth:`build`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.tensor.variable import TensorVariable

from ._npz import StateFile
from .hyperparameter import check_number
from .optimizer import Optimizer, Updates

__all__ = ["EMA", "Lookahead"]

_FORWARDED = ("set_hyperparameter", "get_hyperparameter", "hyperparameters", "state", "param_groups",
              "skipped", "micro_steps", "transforms", "settings", "options", "skip_nonfinite", "accumulate",
              "decoupled")


def _copies(params: Sequence[SharedVariable], tag: str) -> list[SharedVariable]:
    return [pytensor.shared(p.get_value(borrow=False), name=f"{p.name or f'param{i}'}.{tag}") for i, p in enumerate(params)]


def _is_optimizer(obj: Any) -> bool:
    """An Optimizer or a wrapper of one (anything offering ``build`` and ``params``)."""
    return isinstance(obj, Optimizer) or (hasattr(obj, "build") and hasattr(obj, "params") and hasattr(obj, "state_dict"))


def _check_arrays(owner: str, what: str, arrays: Any, variables: list[SharedVariable]) -> list[np.ndarray]:
    arrays = [np.asarray(a) for a in arrays]
    if len(arrays) != len(variables):
        raise ValueError(f"{owner}: state has {len(arrays)} {what}, expected {len(variables)}")
    for var, value in zip(variables, arrays):
        want = var.get_value(borrow=True)
        if value.shape != want.shape or value.dtype != want.dtype:
            raise ValueError(f"{owner}: {what} {var.name} are {value.dtype}{list(value.shape)}, expected {want.dtype}{list(want.shape)}")
    return arrays


def _every(counter: SharedVariable, k: Any, applied: TensorVariable | None) -> tuple[TensorVariable, TensorVariable]:
    """``(new count, fires)``: ``counter`` advanced by one applied step, and whether that step is a k-th one.

    Calls that accumulate or skip (``applied`` false) neither count nor fire.
    """
    if applied is None:
        count = counter + 1
        return count, pt.eq(count % k, 0)
    count = counter + pt.cast(applied, "int64")
    return count, pt.and_(applied, pt.eq(count % k, 0))


class _Wrapper:
    """What EMA and Lookahead share: the inner optimiser's protocol and the state file."""

    inner: Any

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("inner")
        if inner is not None and name in _FORWARDED:
            return getattr(inner, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def iterations(self) -> SharedVariable:
        return self.inner.iterations

    def updates(
        self, loss: Any = None, *, grads: Sequence[Any] | None = None, allow_unused: bool = False
    ) -> Updates:
        """The inner optimiser's updates with this wrapper's, for ``pytensor.function(updates=...)``."""
        return self.build(loss, grads=grads, allow_unused=allow_unused)[0]

    def build(
        self, loss: Any = None, *, grads: Sequence[Any] | None = None, allow_unused: bool = False
    ) -> tuple[Updates, TensorVariable | None]:
        """``(updates, applied)`` as :meth:`~symopt.optimizer.Optimizer.build`."""
        updates, applied = self.inner.build(loss, grads=grads, allow_unused=allow_unused)
        out = self.apply(updates, applied)
        out.applied = applied
        return out, applied

    def apply(self, updates: Mapping[SharedVariable, Any], applied: TensorVariable | None) -> Updates:
        raise NotImplementedError

    # ---------------------------------------------------------------- state
    def _own_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _check_own_state(self, state: Mapping[str, Any]) -> list[tuple[SharedVariable, np.ndarray]]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """A copy of everything needed to resume: the inner optimiser's state and this wrapper's."""
        state = self._own_state()
        if self.inner is not None:
            state["inner"] = self.inner.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; validates all of it before changing anything."""
        owner = type(self).__name__
        if not isinstance(state, Mapping):
            raise TypeError(f"{owner}: state must be a dict from state_dict(), got {type(state).__name__}")
        if (self.inner is not None) != ("inner" in state):
            raise ValueError(f"{owner}: state {'lacks' if self.inner is not None else 'has'} an inner optimiser's state")
        pending = self._check_own_state(state)
        if self.inner is not None:
            self.inner.load_state_dict(state["inner"])  # validates everything of its own first
        for var, value in pending:
            var.set_value(value.copy())

    def _flat_state(self) -> dict[str, np.ndarray]:
        flat: dict[str, np.ndarray] = {"wrapper": np.array(type(self).__name__)}
        for key, value in self._own_state().items():
            if isinstance(value, list):
                flat.update({f"{key}/{i}": np.asarray(v) for i, v in enumerate(value)})
            else:
                flat[key] = np.asarray(value)
        if self.inner is not None:
            flat.update({f"inner/{k}": v for k, v in self.inner._flat_state().items()})
        return flat

    def _largest_array(self) -> int:
        sizes = [int(np.prod(p.get_value(borrow=True).shape)) for p in self.params]
        if self.inner is not None:
            sizes.append(self.inner._largest_array())
        return max(sizes + [1])

    def _strings(self) -> tuple[str, ...]:
        inner = self.inner._strings() if isinstance(self.inner, _Wrapper) else ("optimizer",)
        return ("wrapper", *(f"inner/{k}" for k in inner))

    def _state_from_flat(self, flat: Mapping[str, np.ndarray], path: Any) -> dict[str, Any]:
        owner = type(self).__name__
        if str(flat.get("wrapper", "")) != owner:
            found = str(flat["wrapper"]) if "wrapper" in flat else "no wrapper"
            raise ValueError(f"{owner}: {str(path)!r} does not hold {owner} state (it holds {found!r})")
        state: dict[str, Any] = {}
        lists: dict[str, dict[int, np.ndarray]] = {}
        for key, value in flat.items():
            if key == "wrapper" or key.startswith("inner/"):
                continue
            head, _, index = key.rpartition("/")
            if head and index.isdigit():
                lists.setdefault(head, {})[int(index)] = value
            else:
                state[key] = value
        for key, items in lists.items():
            state[key] = [items[i] for i in range(len(items)) if i in items]
        if self.inner is not None:
            inner = {k[len("inner/"):]: v for k, v in flat.items() if k.startswith("inner/")}
            state["inner"] = self.inner._state_from_flat(inner, path)
        return state

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` (the inner optimiser's included) to an ``.npz`` file atomically."""
        StateFile(type(self).__name__).write(path, self._flat_state())

    def load(self, path: str | os.PathLike[str]) -> None:
        """Restore state written by :meth:`save`; the file is checked as ``Optimizer.load`` checks its own."""
        flat = StateFile(type(self).__name__).read(path, self._largest_array(), strings=self._strings())
        self.load_state_dict(self._state_from_flat(flat, path))


class EMA(_Wrapper):
    r"""Exponential moving average of parameters (Polyak & Juditsky, 1992).

    .. math:: a_t = d\, a_{t-1} + (1 - d)\, p_t

    where :math:`p_t` is the parameter *after* applied step :math:`t`. Averages start at
    the parameters' values when the EMA is created.

    >>> ema = symopt.EMA(symopt.Adam(model.params), decay=0.999)              # doctest: +SKIP
    >>> train = pytensor.function([x, y], loss, updates=ema.updates(loss))     # doctest: +SKIP
    >>> with ema.average_parameters():                                        # doctest: +SKIP
    ...     evaluate()   # runs with the averages, then the trained values come back

    The older form ``EMA(params, decay)`` with ``ema.updates(opt.updates(loss))`` (averages
    of given parameters over any updates dict) still works; there ``state_dict`` holds
    the averages only.

    ``overwrite_frequency=N`` (Keras 3's ``use_ema=True, ema_overwrite_frequency=N``):
    after every :math:`N`-th applied step, counted from the EMA's creation, the
    parameters are overwritten by their averages in the same compiled step,

    .. math:: p_t \leftarrow a_t \quad\text{if } t \bmod N = 0,

    so training continues from the averages. ``None`` (the default) never overwrites.
    The count is state (``counter``), saved and restored with the averages.
    """

    def __init__(
        self,
        optimizer: Any = None,
        decay: float = 0.999,
        *,
        params: Sequence[SharedVariable] | None = None,
        overwrite_frequency: int | None = None,
    ):
        if (optimizer is None) == (params is None):
            raise TypeError("EMA: give an optimiser to wrap (or, the older form, params=[...])")
        if params is not None:
            optimizer = params
        if _is_optimizer(optimizer):
            self.inner = optimizer
            params = list(optimizer.params)
        else:
            self.inner = None
            params = list(optimizer) if isinstance(optimizer, Sequence) else []
            if not params or not all(isinstance(p, SharedVariable) for p in params):
                raise TypeError("EMA: params must be a non-empty list of pytensor shared variables")
        self.params = params
        self.averages = _copies(params, "ema")
        self.decay = pytensor.shared(np.float64(self._check_decay(decay)), name="EMA.decay")
        self.overwrite_frequency = self._check_frequency(overwrite_frequency)
        # Only an overwriting EMA counts, so the default's state and graph stay as they were.
        self.counter = None if self.overwrite_frequency is None else pytensor.shared(np.int64(0), name="EMA.counter")

    @staticmethod
    def _check_frequency(frequency: Any, what: str = "overwrite_frequency") -> int | None:
        if frequency is None:
            return None
        if isinstance(frequency, (bool, np.bool_)) or not isinstance(frequency, (int, np.integer)) or frequency < 1:
            raise ValueError(f"EMA: {what} must be None or an integer >= 1, got {frequency!r}")
        return int(frequency)

    @staticmethod
    def _check_decay(decay: Any) -> float:
        decay = check_number("EMA", "decay", decay)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: decay must lie in [0, 1), got {decay}")
        return decay

    def set_decay(self, decay: float) -> None:
        self.decay.set_value(np.float64(self._check_decay(decay)))

    def updates(self, loss: Any = None, *, grads: Sequence[Any] | None = None, allow_unused: bool = False) -> Updates:
        """The inner optimiser's updates and the averages', which average the *new* parameter values.

        For ``EMA(params)``: ``updates(updates_dict)`` adds the averages to a given dict
        (an optimiser's :class:`~symopt.optimizer.Updates` carries its applied flag).
        """
        if self.inner is None:
            updates = loss
            return self.apply(updates or {}, getattr(updates, "applied", None))
        return super().updates(loss, grads=grads, allow_unused=allow_unused)

    def apply(self, updates: Mapping[SharedVariable, Any], applied: TensorVariable | None) -> Updates:
        """``updates`` plus the averages' updates; the averages move only when ``applied``."""
        out = Updates(updates)
        out.applied = applied
        overwrite = None
        if self.counter is not None:
            count, overwrite = _every(self.counter, self.overwrite_frequency, applied)
        for param, average in zip(self.params, self.averages):
            new = pt.as_tensor_variable(out.get(param, param))
            d = pt.cast(self.decay, param.dtype)
            moved = pt.cast(d * average + (1 - d) * new, param.dtype)
            out[average] = moved if applied is None else pt.switch(applied, moved, average)
            if overwrite is not None:
                out[param] = pt.switch(overwrite, moved, new)
        if self.counter is not None:
            out[self.counter] = count
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

    def _own_state(self) -> dict[str, Any]:
        state = {
            "averages": [a.get_value(borrow=False) for a in self.averages],
            "decay": np.array(self.decay.get_value(), dtype=np.float64),
        }
        if self.counter is not None:
            state["overwrite_frequency"] = np.array(self.overwrite_frequency, dtype=np.int64)
            state["counter"] = np.array(self.counter.get_value(), dtype=np.int64)
        return state

    def _check_own_state(self, state: Mapping[str, Any]) -> list[tuple[SharedVariable, np.ndarray]]:
        missing = {"averages", "decay"} - set(state)
        if missing:
            raise ValueError(f"EMA: state is missing {sorted(missing)}")
        averages = _check_arrays("EMA", "averages", state["averages"], self.averages)
        decay = self._check_decay(np.asarray(state["decay"]).item())
        pending = [*zip(self.averages, averages), (self.decay, np.asarray(decay, dtype=np.float64))]
        saved = state.get("overwrite_frequency")
        saved = None if saved is None else self._check_frequency(np.asarray(saved).item(), "state overwrite_frequency")
        if saved != self.overwrite_frequency:
            raise ValueError(f"EMA: state has overwrite_frequency={saved}, this EMA has overwrite_frequency={self.overwrite_frequency}")
        if self.counter is not None:
            if "counter" not in state:
                raise ValueError("EMA: state is missing ['counter']")
            counter = np.asarray(state["counter"])
            if counter.shape != () or counter.dtype.kind not in "iu" or counter < 0:
                raise ValueError(f"EMA: state counter must be a non-negative integer, got {counter!r}")
            pending.append((self.counter, counter.astype(np.int64)))
        return pending


class Lookahead(_Wrapper):
    r"""Lookahead (Zhang, Lucas, Hinton & Ba, NeurIPS 2019) around any rule.

    The inner rule moves the fast weights :math:`p`; every ``k`` applied steps the slow
    weights move towards them and the fast weights restart there:

    .. math:: \phi \leftarrow \phi + \alpha (p - \phi), \qquad p \leftarrow \phi

    Slow weights start at the parameters' values. Defaults (the paper's): ``k=5``,
    ``alpha=0.5``. Hyperparameter calls go to the inner rule.
    """

    def __init__(self, inner: Any, k: int = 5, alpha: float = 0.5):
        if not _is_optimizer(inner):
            raise TypeError(f"Lookahead: inner must be a symopt Optimizer, got {type(inner).__name__}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"Lookahead: k must be an integer >= 1, got {k!r}")
        self.inner, self.k = inner, int(k)
        self.alpha = pytensor.shared(np.float64(self._check_alpha(alpha)), name="Lookahead.alpha")
        self.slow = _copies(inner.params, "slow")
        self.counter = pytensor.shared(np.int64(0), name="Lookahead.counter")

    @staticmethod
    def _check_alpha(alpha: Any, what: str = "alpha") -> float:
        alpha = check_number("Lookahead", "alpha", alpha)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"Lookahead: {what} must lie in (0, 1], got {alpha}")
        return alpha

    @property
    def params(self) -> list[SharedVariable]:
        return self.inner.params

    def apply(self, updates: Mapping[SharedVariable, Any], applied: TensorVariable | None) -> Updates:
        """``updates`` with the slow-weight synchronisation every ``k`` applied steps."""
        out = Updates(updates)
        count, sync = _every(self.counter, self.k, applied)
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

    def _own_state(self) -> dict[str, Any]:
        return {
            "slow": [s.get_value(borrow=False) for s in self.slow],
            "counter": np.array(self.counter.get_value()),
            "alpha": np.array(self.alpha.get_value()),
        }

    def _check_own_state(self, state: Mapping[str, Any]) -> list[tuple[SharedVariable, np.ndarray]]:
        slow = _check_arrays("Lookahead", "slow weights", state["slow"], self.slow)
        counter = np.asarray(state["counter"])
        if counter.shape != () or counter.dtype.kind not in "iu" or counter < 0:
            raise ValueError(f"Lookahead: state counter must be a non-negative integer, got {counter!r}")
        alpha = self._check_alpha(np.asarray(state["alpha"]).item(), "state alpha")
        return [*zip(self.slow, slow), (self.counter, counter.astype(np.int64)), (self.alpha, np.asarray(alpha, dtype=np.float64))]
