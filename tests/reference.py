r"""Pure-NumPy reference implementations of the update rules, for the tests.

Written from the published algorithms, with the numerics documented for the matching
``torch.optim`` class; deliberately independent of symopt (nothing here imports it),
so a test that compares symopt with these classes compares two implementations.

Conventions (the ones a careful NumPy user with a float32 model would follow):

* Hyperparameters are rounded once to each parameter's dtype, because those are the
  values a float32 model actually uses. ``0.999`` is not representable in float32,
  and ``1 - float32(0.999)`` differs from ``0.001`` by 1.3e-5 relative.
* Per-step *scalar* quantities (bias corrections, NAdam's :math:`\mu_t`, RAdam's
  :math:`\rho_t`) are computed in Python floats (float64) from those rounded values:
  scalar precision is free, and some of these expressions cancel badly in float32.
* Array arithmetic stays in the parameter's dtype: Python floats are "weak" scalars
  under NumPy >= 2 (NEP 50), so ``0.9 * float32_array`` is float32. ``step`` checks
  that no state array was silently upcast.
* Weight decay follows torch: L2 added to the gradient (:math:`g \leftarrow g +
  \lambda p`) for every rule except AdamW and Lion, whose decay is decoupled
  (:math:`p \leftarrow p (1 - \eta\lambda)` before the step).

Each class is keyed by the registry name in :data:`REFERENCES`; testing a new rule
means adding its reference there. The state slots carry the names symopt documents
for its rules, so the tests can compare slot by slot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import SimpleNamespace
from typing import ClassVar

import numpy as np

__all__ = ["ReferenceRule", "REFERENCES"]

Array = np.ndarray


class ReferenceRule:
    """One optimiser run over a list of NumPy parameters.

    Parameters
    ----------
    params
        Initial parameter values; copied, and their dtypes fix the arithmetic.
    **hyperparameters
        Overrides of :attr:`defaults`; unknown names raise ``TypeError`` so a
        renamed hyperparameter cannot be silently ignored.

    Attributes
    ----------
    params : list of numpy.ndarray
        Current parameter values.
    state : list of dict
        Per-parameter state slots, name -> array of the parameter's shape and dtype.
    t : int
        Number of steps taken.
    """

    #: Hyperparameter name -> documented default (booleans are structural options).
    defaults: ClassVar[dict[str, float | bool]] = {}
    #: AdamW and Lion: ``p *= 1 - lr * wd`` before the step instead of L2 in the gradient.
    decoupled_weight_decay: ClassVar[bool] = False

    def __init__(self, params: Sequence[np.ndarray], **hyperparameters: float | bool) -> None:
        unknown = set(hyperparameters) - set(self.defaults)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown hyperparameters {sorted(unknown)}")
        self.hyperparameters: dict[str, float | bool] = {**self.defaults, **hyperparameters}
        self.params = [np.array(p, copy=True) for p in params]
        for p in self.params:
            if p.dtype.kind != "f":
                raise TypeError(f"{type(self).__name__}: parameters must be float arrays, got {p.dtype}")
        self.t = 0
        self.state: list[dict[str, np.ndarray]] = [
            {slot: np.zeros_like(p) for slot in self.slot_names()} for p in self.params
        ]

    # ------------------------------------------------------------------ rule API
    def slot_names(self) -> tuple[str, ...]:
        """Names of the per-parameter state arrays (all start at zero)."""
        return ()

    def scalar_state(self) -> dict[str, float]:
        """Optimiser-wide scalar state after ``t`` steps (float64); most rules keep none."""
        return {}

    def update(self, p: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray], h: SimpleNamespace) -> np.ndarray:
        """Return the new parameter; replace the entries of ``state`` with their new values.

        ``g`` already holds coupled weight decay, ``p`` is already decoupled-decayed;
        ``h`` holds the hyperparameters rounded to ``p``'s dtype (as Python floats).
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ driver
    def rounded(self, dtype: np.dtype) -> SimpleNamespace:
        """Hyperparameters as the ``dtype`` values a model of that dtype uses, as Python floats."""
        cast = np.dtype(dtype).type
        return SimpleNamespace(
            **{k: v if isinstance(v, bool) else float(cast(v)) for k, v in self.hyperparameters.items()}
        )

    def step(self, grads: Sequence[np.ndarray]) -> None:
        """Apply one step given one gradient per parameter (without weight decay)."""
        if len(grads) != len(self.params):
            raise ValueError(f"got {len(grads)} gradients for {len(self.params)} parameters")
        self.t += 1
        for i, (p, g) in enumerate(zip(self.params, grads)):
            dtype = p.dtype
            g = np.asarray(g, dtype=dtype)
            h = self.rounded(dtype)
            if self.decoupled_weight_decay:
                p = p * (1.0 - h.learning_rate * h.weight_decay)
            else:
                g = g + h.weight_decay * p
            new = self.update(p, g, self.state[i], h)
            # The reference itself must not upcast, or it would no longer model float32.
            for what, arr in [("parameter", new), *self.state[i].items()]:
                if arr.dtype != dtype or arr.shape != p.shape:
                    raise AssertionError(f"{type(self).__name__}: {what} became {arr.dtype}{arr.shape}")
            self.params[i] = new


# ---------------------------------------------------------------------- SGD family
class SGD(ReferenceRule):
    """Plain gradient descent: ``p - lr * g``."""

    defaults = {"learning_rate": 0.01, "weight_decay": 0.0}

    def update(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        return p - h.learning_rate * g


class Momentum(ReferenceRule):
    """Heavy ball as torch.optim.SGD(momentum, dampening=0): ``b = mu b + g``, ``p - lr b``."""

    defaults = {"learning_rate": 0.01, "momentum": 0.9, "weight_decay": 0.0}

    def slot_names(self) -> tuple[str, ...]:
        return ("velocity",)

    def update(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        b = h.momentum * state["velocity"] + g
        state["velocity"] = b
        return p - h.learning_rate * b


class Nesterov(Momentum):
    """torch.optim.SGD(nesterov=True): the step uses ``g + mu b`` with the new buffer."""

    def update(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        b = h.momentum * state["velocity"] + g
        state["velocity"] = b
        return p - h.learning_rate * (g + h.momentum * b)


# ---------------------------------------------------------------------- adaptive
class AdaGrad(ReferenceRule):
    """Duchi et al. (2011): accumulate ``g**2``; divide by ``sqrt(sum) + eps`` (or ``sqrt(sum + eps)``).

    torch's options: the accumulator starts at ``initial_accumulator_value`` (kept apart
    from the ``sum_sq`` slot, which starts at 0) and the rate is ``lr / (1 + (t-1) lr_decay)``.
    """

    defaults = {
        "learning_rate": 0.01,
        "epsilon": 1e-10,
        "epsilon_inside_sqrt": False,
        "initial_accumulator_value": 0.0,
        "lr_decay": 0.0,
        "weight_decay": 0.0,
    }

    def slot_names(self) -> tuple[str, ...]:
        return ("sum_sq",)

    def update(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        s = state["sum_sq"] + np.square(g)
        state["sum_sq"] = s
        total = h.initial_accumulator_value + s
        denom = np.sqrt(total + h.epsilon) if h.epsilon_inside_sqrt else np.sqrt(total) + h.epsilon
        return p - (h.learning_rate / (1.0 + (self.t - 1) * h.lr_decay)) * g / denom


class RMSprop(ReferenceRule):
    """Hinton's RMSprop; Graves' centred variant; torch's momentum buffer on ``g / denom``.

    As torch, the momentum buffer exists only when momentum > 0 at construction.
    """

    defaults = {
        "learning_rate": 1e-3,
        "rho": 0.9,
        "epsilon": 1e-8,
        "momentum": 0.0,
        "centered": False,
        "epsilon_inside_sqrt": False,
        "weight_decay": 0.0,
    }

    def slot_names(self) -> tuple[str, ...]:
        names = ["square_avg"]
        if self.hyperparameters["centered"]:
            names.append("grad_avg")
        if self.hyperparameters["momentum"] > 0:
            names.append("momentum_buffer")
        return tuple(names)

    def update(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        v = h.rho * state["square_avg"] + (1.0 - h.rho) * np.square(g)
        state["square_avg"] = v
        if h.centered:
            mean = h.rho * state["grad_avg"] + (1.0 - h.rho) * g
            state["grad_avg"] = mean
            v = v - np.square(mean)  # variance estimate
        denom = np.sqrt(v + h.epsilon) if h.epsilon_inside_sqrt else np.sqrt(v) + h.epsilon
        direction = g / denom
        if "momentum_buffer" in state:
            direction = h.momentum * state["momentum_buffer"] + direction
            state["momentum_buffer"] = direction
        return p - h.learning_rate * direction


class AdaDelta(ReferenceRule):
    """Zeiler (2012), Algorithm 1, with torch's learning-rate factor on the update."""

    defaults = {"learning_rate": 1.0, "rho": 0.95, "epsilon": 1e-6, "weight_decay": 0.0}

    def slot_names(self) -> tuple[str, ...]:
        return ("square_avg", "acc_delta")

    def update(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        rho, eps = h.rho, h.epsilon
        eg2 = rho * state["square_avg"] + (1.0 - rho) * np.square(g)  # E[g^2]_t
        rms_dx = np.sqrt(state["acc_delta"] + eps)  # RMS[dx]_{t-1}
        rms_g = np.sqrt(eg2 + eps)  # RMS[g]_t
        dx = rms_dx / rms_g * g
        state["square_avg"] = eg2
        state["acc_delta"] = rho * state["acc_delta"] + (1.0 - rho) * np.square(dx)
        return p - h.learning_rate * dx


class Adam(ReferenceRule):
    r"""Kingma & Ba (2015), Algorithm 1; AMSGrad max (Reddi et al., 2018) as torch applies it.

    ``beta1_decay`` (:math:`\gamma`) is the first preprint's decaying first-moment
    coefficient :math:`\beta_{1,t} = \beta_1 \gamma^{t-1}`; the bias correction keeps
    :math:`1 - \beta_1^t`.

    ``epsilon_hat``: the order of computation of Kingma & Ba's section 2 as the
    ``tf.compat.v1.train.AdamOptimizer`` documentation writes it, ``lr_t = lr *
    sqrt(1 - beta2^t) / (1 - beta1^t)``, ``p -= lr_t * m / (sqrt(v) + epsilon_hat)``.
    """

    defaults = {
        "learning_rate": 1e-3,
        "beta1": 0.9,
        "beta2": 0.999,
        "epsilon": 1e-8,
        "beta1_decay": 1.0,
        "amsgrad": False,
        "epsilon_hat": False,
        "weight_decay": 0.0,
    }

    def slot_names(self) -> tuple[str, ...]:
        names = ("exp_avg", "exp_avg_sq")
        return names + ("max_exp_avg_sq",) if self.hyperparameters["amsgrad"] else names

    def update(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        t = self.t
        beta1_t = h.beta1 * h.beta1_decay ** (t - 1)
        m = beta1_t * state["exp_avg"] + (1.0 - beta1_t) * g
        v = h.beta2 * state["exp_avg_sq"] + (1.0 - h.beta2) * np.square(g)
        state["exp_avg"], state["exp_avg_sq"] = m, v
        if h.amsgrad:
            v = np.maximum(state["max_exp_avg_sq"], v)
            state["max_exp_avg_sq"] = v
        if h.epsilon_hat:
            lr_t = h.learning_rate * math.sqrt(1.0 - h.beta2**t) / (1.0 - h.beta1**t)
            return p - lr_t * m / (np.sqrt(v) + h.epsilon)
        m_hat = m / (1.0 - h.beta1**t)
        v_hat = v / (1.0 - h.beta2**t)
        return p - h.learning_rate * m_hat / (np.sqrt(v_hat) + h.epsilon)


class AdamW(Adam):
    """Loshchilov & Hutter (2019): Adam with decoupled weight decay (torch default 0.01)."""

    defaults = {**Adam.defaults, "weight_decay": 0.01}
    decoupled_weight_decay = True


class AMSGrad(Adam):
    """Adam with the AMSGrad maximum switched on by default."""

    defaults = {**Adam.defaults, "amsgrad": True}


class Adamax(ReferenceRule):
    """Kingma & Ba (2015), Algorithm 2, with torch's ``eps`` inside the max."""

    defaults = {"learning_rate": 2e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8, "weight_decay": 0.0}

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_inf")

    def update(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        m = h.beta1 * state["exp_avg"] + (1.0 - h.beta1) * g
        u = np.maximum(h.beta2 * state["exp_inf"], np.abs(g) + h.epsilon)
        state["exp_avg"], state["exp_inf"] = m, u
        return p - (h.learning_rate / (1.0 - h.beta1**self.t)) * m / u


class NAdam(ReferenceRule):
    r"""Dozat (2016) as torch.optim.NAdam: momentum schedule
    :math:`\mu_t = \beta_1 (1 - \tfrac12 0.96^{t\psi})` and its running product."""

    defaults = {
        "learning_rate": 2e-3,
        "beta1": 0.9,
        "beta2": 0.999,
        "epsilon": 1e-8,
        "momentum_decay": 4e-3,
        "weight_decay": 0.0,
    }

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    @staticmethod
    def mu(t: int, beta1: float, psi: float) -> float:
        """The momentum coefficient of step ``t``."""
        return beta1 * (1.0 - 0.5 * 0.96 ** (t * psi))

    def _product(self, beta1: float, psi: float) -> float:
        return math.prod(self.mu(i, beta1, psi) for i in range(1, self.t + 1))

    def scalar_state(self) -> dict[str, float]:
        h = self.hyperparameters
        return {"mu_product": self._product(float(h["beta1"]), float(h["momentum_decay"]))}

    def update(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        t = self.t
        mu, mu_next = self.mu(t, h.beta1, h.momentum_decay), self.mu(t + 1, h.beta1, h.momentum_decay)
        prod = self._product(h.beta1, h.momentum_decay)  # includes mu_t
        m = h.beta1 * state["exp_avg"] + (1.0 - h.beta1) * g
        v = h.beta2 * state["exp_avg_sq"] + (1.0 - h.beta2) * np.square(g)
        state["exp_avg"], state["exp_avg_sq"] = m, v
        denom = np.sqrt(v / (1.0 - h.beta2**t)) + h.epsilon
        p = p - (h.learning_rate * (1.0 - mu) / (1.0 - prod)) * g / denom
        return p - (h.learning_rate * mu_next / (1.0 - prod * mu_next)) * m / denom


class RAdam(ReferenceRule):
    r"""Liu et al. (2020), Algorithm 2, with torch's ``eps`` added to :math:`\sqrt{v_t}`.

    ``rectified`` records, per step, whether :math:`\rho_t > 5` selected the adaptive
    branch, so a test can check that a run covered both branches.
    """

    defaults = {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8, "weight_decay": 0.0}

    def __init__(self, params: Sequence[np.ndarray], **hyperparameters: float | bool) -> None:
        super().__init__(params, **hyperparameters)
        self.rectified: list[bool] = []

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def step(self, grads: Sequence[np.ndarray]) -> None:
        super().step(grads)
        h = self.rounded(self.params[0].dtype)
        self.rectified.append(self.rho(self.t, h.beta2)[1] > 5)

    @staticmethod
    def rho(t: int, beta2: float) -> tuple[float, float]:
        r""":math:`(\rho_\infty, \rho_t)`, the SMA lengths, in float64."""
        rho_inf = 2.0 / (1.0 - beta2) - 1.0
        return rho_inf, rho_inf - 2.0 * t * beta2**t / (1.0 - beta2**t)

    def update(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        t = self.t
        m = h.beta1 * state["exp_avg"] + (1.0 - h.beta1) * g
        v = h.beta2 * state["exp_avg_sq"] + (1.0 - h.beta2) * np.square(g)
        state["exp_avg"], state["exp_avg_sq"] = m, v
        m_hat = m / (1.0 - h.beta1**t)
        rho_inf, rho_t = self.rho(t, h.beta2)
        if rho_t > 5:
            r = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            adaptive = math.sqrt(1.0 - h.beta2**t) / (np.sqrt(v) + h.epsilon)  # l_t
            return p - (h.learning_rate * r) * m_hat * adaptive
        return p - h.learning_rate * m_hat


class Lion(ReferenceRule):
    """Chen et al. (2023), Program 1: sign of an interpolated momentum; decoupled decay."""

    defaults = {"learning_rate": 1e-4, "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.0}
    decoupled_weight_decay = True

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg",)

    def update(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        c = h.beta1 * state["exp_avg"] + (1.0 - h.beta1) * g
        state["exp_avg"] = h.beta2 * state["exp_avg"] + (1.0 - h.beta2) * g
        return p - h.learning_rate * np.sign(c)


#: Registry name -> reference class. A rule registered in symopt without an entry
#: here makes the rule tests fail, so every new rule arrives with its reference.
REFERENCES: dict[str, type[ReferenceRule]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "adagrad": AdaGrad,
    "rmsprop": RMSprop,
    "adadelta": AdaDelta,
    "adam": Adam,
    "adamw": AdamW,
    "amsgrad": AMSGrad,
    "adamax": Adamax,
    "nadam": NAdam,
    "radam": RAdam,
    "lion": Lion,
}


# ---------------------------------------------------------------------- rules that reduce over tensors
# Adafactor, Muon, Prodigy and Schedule-Free (symopt/rules_contrib.py), written from the
# papers' equations in the forms torch.optim / optax.contrib document. Their weight decay
# is part of their own step and some state is not parameter-shaped, so they drive their
# own steps; a parameter's leading seed axis, when ``seed_axis=True``, is a batch axis.
class WholeTensorRule(ReferenceRule):
    """Base of the rules below: ``update`` sees the raw gradient and applies its own decay.

    ``seed_axis=True`` (a keyword of the constructor) treats each parameter's first axis
    as a stack of independent seeds: reductions over a tensor are taken per seed.
    """

    #: Optimiser-wide scalars, name -> initial value (float64).
    scalars: ClassVar[dict[str, float]] = {}

    def __init__(self, params: Sequence[np.ndarray], *, seed_axis: bool = False, **hyperparameters: float | bool) -> None:
        super().__init__(params, **hyperparameters)
        self.lead = 1 if seed_axis else 0
        self.scalar = dict(self.scalars)
        for p, state in zip(self.params, self.state):
            for slot in state:
                state[slot] = np.zeros(self.slot_shape(p, slot), dtype=p.dtype)

    def slot_shape(self, p: Array, slot: str) -> tuple[int, ...]:
        return p.shape

    def scalar_state(self) -> dict[str, float]:
        return dict(self.scalar)

    def rms(self, x: Array) -> Array:
        """sqrt(mean(x**2)) per seed (a float for an unstacked tensor)."""
        axes = tuple(range(self.lead, x.ndim))
        if not axes:
            return np.abs(x)
        value = np.sqrt(np.mean(np.square(x), axis=axes, keepdims=True))
        return value if self.lead else value.reshape(())

    def before(self, grads: list[Array], hs: list[SimpleNamespace]) -> None:
        """Hook for optimiser-wide quantities computed from all gradients (Prodigy)."""

    def step(self, grads: Sequence[np.ndarray]) -> None:
        if len(grads) != len(self.params):
            raise ValueError(f"got {len(grads)} gradients for {len(self.params)} parameters")
        self.t += 1
        grads = [np.asarray(g, dtype=p.dtype) for p, g in zip(self.params, grads)]
        hs = [self.rounded(p.dtype) for p in self.params]
        self.before(grads, hs)
        for i, (p, g, h) in enumerate(zip(self.params, grads, hs)):
            new = self.update(p, g, self.state[i], h)
            for what, arr in [("parameter", new), *self.state[i].items()]:
                if arr.dtype != p.dtype:
                    raise AssertionError(f"{type(self).__name__}: {what} became {arr.dtype}")
            self.params[i] = new


class Adafactor(WholeTensorRule):
    r"""Shazeer & Stern (2018), Algorithm 4 (factored second moments) with the relative step
    size and update clipping of their section 8, as torch.optim.Adafactor documents it:
    :math:`\hat\beta_t = t^{c}`, :math:`\rho_t = \min(\eta, t^{-1/2})`, no first moment,
    decoupled decay after :math:`\alpha_t` is measured."""

    defaults = {
        "learning_rate": 1e-2,
        "beta2_decay": -0.8,
        "epsilon1": 0.0,
        "epsilon2": 1e-3,
        "d": 1.0,
        "weight_decay": 0.0,
    }

    def slot_names(self) -> tuple[str, ...]:
        return ("row_var", "col_var", "variance")

    def factored(self, p: Array) -> bool:
        return p.ndim - self.lead >= 2

    def slot_shape(self, p: Array, slot: str) -> tuple[int, ...]:
        if self.factored(p):
            return {"row_var": p.shape[:-1], "col_var": p.shape[:-2] + p.shape[-1:]}.get(slot, ())
        return p.shape if slot == "variance" else ()

    def update(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        t = self.t
        beta = t**h.beta2_decay
        rho = min(h.learning_rate, 1.0 / math.sqrt(t))
        eps1 = h.epsilon1 if h.epsilon1 > 0 else float(np.finfo(p.dtype).eps)
        alpha = np.maximum(h.epsilon2, self.rms(p)) * rho
        p = p * (1.0 - h.learning_rate * h.weight_decay)
        if self.factored(p):
            row = (1.0 - beta) * state["row_var"] + beta * np.mean(np.square(g), axis=-1)
            col = (1.0 - beta) * state["col_var"] + beta * np.mean(np.square(g), axis=-2)
            state["row_var"], state["col_var"] = row, col
            v = row[..., :, None] * col[..., None, :] / np.maximum(np.mean(row, axis=-1), eps1)[..., None, None]
        else:
            v = state["variance"] = (1.0 - beta) * state["variance"] + beta * np.square(g)
        u = g / np.sqrt(np.maximum(v, eps1 * eps1))
        return p - (alpha / np.maximum(1.0, self.rms(u) / h.d)) * u


REFERENCES.update({
    "adafactor": Adafactor,
})


class Muon(WholeTensorRule):
    r"""Jordan et al. (2024) as torch.optim.Muon documents it: momentum as a running average
    (``lerp``), Nesterov's look-ahead, a quintic Newton-Schulz iteration on the Frobenius-
    normalised matrix (transposed when tall), the learning rate scaled by the shape, and
    decoupled decay. ``ns_coefficients``, ``ns_steps`` and ``adjust_lr_fn`` are constructor
    keywords, as in symopt."""

    defaults = {"learning_rate": 1e-3, "momentum": 0.95, "epsilon": 1e-7, "weight_decay": 0.1, "nesterov": True}

    def __init__(self, params: Sequence[np.ndarray], *, ns_coefficients: Sequence[float] = (3.4445, -4.7750, 2.0315),
                 ns_steps: int = 5, adjust_lr_fn: str | None = None, **kwargs: float | bool) -> None:
        super().__init__(params, **kwargs)
        self.ns_coefficients, self.ns_steps, self.adjust_lr_fn = tuple(ns_coefficients), ns_steps, adjust_lr_fn

    def slot_names(self) -> tuple[str, ...]:
        return ("momentum_buffer",)

    def update(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        mu = h.momentum
        p = p * (1.0 - h.learning_rate * h.weight_decay)
        buffer = state["momentum_buffer"] = mu * state["momentum_buffer"] + (1.0 - mu) * g
        x = (1.0 - mu) * g + mu * buffer if h.nesterov else buffer
        rows, cols = p.shape[self.lead:]
        if rows > cols:
            x = np.swapaxes(x, -1, -2)
        x = x / np.maximum(np.sqrt(np.sum(np.square(x), axis=(-2, -1), keepdims=True)), h.epsilon)
        a, b, c = (float(np.dtype(p.dtype).type(v)) for v in self.ns_coefficients)
        for _ in range(self.ns_steps):
            gram = x @ np.swapaxes(x, -1, -2)
            x = a * x + (b * gram + c * gram @ gram) @ x
        if rows > cols:
            x = np.swapaxes(x, -1, -2)
        ratio = 0.2 * math.sqrt(max(rows, cols)) if self.adjust_lr_fn == "match_rms_adamw" else math.sqrt(max(1.0, rows / cols))
        return p - (h.learning_rate * ratio) * x


REFERENCES.update({
    "muon": Muon,
})


class Prodigy(WholeTensorRule):
    r"""Mishchenko & Defazio (2024), Algorithm 4 (Prodigy with Adam), in the form of
    optax.contrib.prodigy: the estimate :math:`d` scales the gradients entering the moments,
    the step :math:`\hat\eta_t = d_{t-1}\eta\sqrt{1-\beta_2^t}/(1-\beta_1^t)` and the
    weighted sums :math:`r_t`, :math:`s_t` over *all* parameters give
    :math:`d_t = \max(d_{t-1}, c\, r_t / \lVert s_t \rVert_1)`, used (times eps) in this
    step's denominator. ``params0`` is the parameters at the first step."""

    defaults = {
        "learning_rate": 1.0,
        "beta1": 0.9,
        "beta2": 0.999,
        "beta3": math.sqrt(0.999),
        "epsilon": 1e-8,
        "estim_lr0": 1e-6,
        "estim_lr_coef": 1.0,
        "weight_decay": 0.0,
        "safeguard_warmup": False,
    }
    scalars = {"estim_lr": 0.0, "numerator_weighted": 0.0}

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "grad_sum", "params0")

    def before(self, grads: list[Array], hs: list[SimpleNamespace]) -> None:
        h = SimpleNamespace(**self.hyperparameters)  # scalars in float64, as optax's for float64 params
        t = self.t
        d = h.estim_lr0 if t == 1 else self.scalar["estim_lr"]
        dlr = d * h.learning_rate * math.sqrt(1.0 - h.beta2**t) / (1.0 - h.beta1**t)
        numerator, denominator = 0.0, 0.0
        for p, g, state in zip(self.params, grads, self.state):
            if t == 1:
                state["params0"] = p.copy()
            numerator += float(np.sum(g * (state["params0"] - p)))
            coef = (d if h.safeguard_warmup else dlr) / h.estim_lr0
            state["grad_sum"] = h.beta3 * state["grad_sum"] + coef * (d * g)
            denominator += float(np.sum(np.abs(state["grad_sum"])))
        weighted = h.beta3 * self.scalar["numerator_weighted"] + (d / h.estim_lr0) * dlr * numerator
        self.scalar["numerator_weighted"] = weighted
        self.scalar["estim_lr"] = max(d, h.estim_lr_coef * weighted / denominator)
        self.d, self.dlr = d, dlr

    def update(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        dg = self.d * g
        m = state["exp_avg"] = h.beta1 * state["exp_avg"] + (1.0 - h.beta1) * dg
        v = state["exp_avg_sq"] = h.beta2 * state["exp_avg_sq"] + (1.0 - h.beta2) * np.square(dg)
        eps = self.scalar["estim_lr"] * self.hyperparameters["epsilon"]
        return p - (self.hyperparameters["weight_decay"] * self.dlr) * p - self.dlr * m / (np.sqrt(v) + eps)


REFERENCES.update({
    "prodigy": Prodigy,
})


class ScheduleFreeSGD(WholeTensorRule):
    r"""Defazio et al. (2024), Algorithm 1 (Schedule-Free SGD) with the warm-up weighting
    :math:`c_t = L_t^k / \sum_{i \le t} L_i^k`, :math:`L_t = \max_{i \le t} \eta'_i`, as
    optax.contrib.schedule_free: :math:`z \leftarrow z - \eta (g + \lambda y)`,
    :math:`x \leftarrow (1 - c_t) x + c_t z`, :math:`y = \beta_1 x + (1 - \beta_1) z`, with
    :math:`x` recovered from :math:`y` and :math:`z`; :math:`z_0 = y_0`. ``rate_at(t)``
    gives :math:`\eta'_t` (the learning rate; a subclass or test may override it)."""

    defaults = {"learning_rate": 1.0, "beta1": 0.9, "weight_lr_power": 2.0, "weight_decay": 0.0}
    scalars = {"max_lr": 0.0, "weight_sum": 0.0}

    def slot_names(self) -> tuple[str, ...]:
        return ("z",)

    def before(self, grads: list[Array], hs: list[SimpleNamespace]) -> None:
        h = self.hyperparameters
        self.scalar["max_lr"] = max(self.scalar["max_lr"], h["learning_rate"])
        weight = self.scalar["max_lr"] ** h["weight_lr_power"]
        self.scalar["weight_sum"] += weight
        total = self.scalar["weight_sum"]
        self.ck = weight / total if total > 0 else 0.0

    def direction(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        return g + h.weight_decay * p

    def update(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        z_prev = p if self.t == 1 else state["z"]
        z = state["z"] = z_prev - h.learning_rate * self.direction(p, g, state, h)
        x_prev = (p - (1.0 - h.beta1) * z_prev) / h.beta1
        x = (1.0 - self.ck) * x_prev + self.ck * z
        return h.beta1 * x + (1.0 - h.beta1) * z

    def eval_params(self) -> list[Array]:
        """x = (y - (1 - beta1) z) / beta1, optax's schedule_free_eval_params."""
        out = []
        for p, state in zip(self.params, self.state):
            b1 = float(np.dtype(p.dtype).type(self.hyperparameters["beta1"]))
            out.append(p.copy() if self.t == 0 else (p - (1.0 - b1) * state["z"]) / b1)
        return out


class ScheduleFreeAdamW(ScheduleFreeSGD):
    r"""Schedule-Free AdamW (Defazio et al., 2024, Algorithm 2 without warm-up in the
    bias correction), as optax.contrib.schedule_free_adamw: the base step is
    :math:`g / (\sqrt{v_t / (1 - \beta_2^t)} + \epsilon) + \lambda y`."""

    defaults = {
        "learning_rate": 0.0025,
        "beta1": 0.9,
        "beta2": 0.999,
        "epsilon": 1e-8,
        "weight_lr_power": 2.0,
        "weight_decay": 0.0,
    }

    def slot_names(self) -> tuple[str, ...]:
        return ("z", "exp_avg_sq")

    def direction(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        v = state["exp_avg_sq"] = h.beta2 * state["exp_avg_sq"] + (1.0 - h.beta2) * np.square(g)
        v_hat = v / (1.0 - h.beta2**self.t)
        return g / (np.sqrt(v_hat) + h.epsilon) + h.weight_decay * p


REFERENCES.update({
    "schedule_free_sgd": ScheduleFreeSGD,
    "schedule_free_adamw": ScheduleFreeAdamW,
})


# ---------------------------------------------------------------------- symopt/rules_modern.py
# Rprop and ASGD from the algorithms torch.optim documents; AdaBelief, ADOPT, AdEMAMix,
# LAMB and LARS from the papers' equations in the forms optax documents (its argument
# names in brackets). Written without looking at symopt's code.
class Rprop(ReferenceRule):
    """Riedmiller & Braun (1993), Rprop- as torch.optim.Rprop documents it: per-element step
    sizes starting at ``lr``, grown by ``eta_plus`` while the gradient keeps its sign, shrunk by
    ``eta_minus`` (and the step skipped, the gradient forgotten) when it flips."""

    defaults = {
        "learning_rate": 0.01,
        "eta_minus": 0.5,
        "eta_plus": 1.2,
        "step_size_min": 1e-6,
        "step_size_max": 50.0,
        "weight_decay": 0.0,
    }

    def slot_names(self) -> tuple[str, ...]:
        return ("prev", "step_size")

    def update(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        if self.t == 1:
            state["step_size"] = np.full_like(p, h.learning_rate)
        agreement = np.sign(g * state["prev"])
        factor = np.ones_like(p)
        factor[agreement > 0] = h.eta_plus
        factor[agreement < 0] = h.eta_minus
        step_size = np.clip(state["step_size"] * factor, h.step_size_min, h.step_size_max)
        g = np.where(agreement < 0, np.zeros_like(g), g)
        state["prev"], state["step_size"] = g, step_size
        return p - np.sign(g) * step_size


class ASGD(ReferenceRule):
    r"""Averaged SGD as torch.optim.ASGD: Bottou's decaying rate
    :math:`\eta_t = \eta / (1 + \lambda\eta(t-1))^\alpha`, the decay factor
    :math:`1 - \lambda\eta_t`, and Polyak averaging ``ax`` from step :math:`t_0 + 2` on."""

    defaults = {"learning_rate": 0.01, "lambd": 1e-4, "alpha": 0.75, "t0": 1e6, "weight_decay": 0.0}

    def slot_names(self) -> tuple[str, ...]:
        return ("ax",)

    def update(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        eta = h.learning_rate / (1.0 + h.lambd * h.learning_rate * (self.t - 1)) ** h.alpha
        mu = 1.0 / max(1.0, self.t - 1 - h.t0)
        p = p * (1.0 - h.lambd * eta) - eta * g
        state["ax"] = p.copy() if mu == 1 else state["ax"] + (p - state["ax"]) * mu
        return p


class AdaBelief(ReferenceRule):
    """Zhuang et al. (2020), Algorithm 2, as optax.adabelief: the second moment of
    ``g - m_t`` plus ``eps_root`` every step; optional Nesterov first moment."""

    defaults = {
        "learning_rate": 1e-3,
        "beta1": 0.9,
        "beta2": 0.999,
        "epsilon": 1e-16,
        "epsilon_root": 1e-16,
        "nesterov": False,
        "weight_decay": 0.0,
    }

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_var")

    def update(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        t, b1, b2 = self.t, h.beta1, h.beta2
        m = b1 * state["exp_avg"] + (1.0 - b1) * g
        s = b2 * state["exp_avg_var"] + (1.0 - b2) * np.square(g - m) + h.epsilon_root
        state["exp_avg"], state["exp_avg_var"] = m, s
        if h.nesterov:
            m_hat = b1 * (m / (1.0 - b1 ** (t + 1))) + (1.0 - b1) * (g / (1.0 - b1**t))
        else:
            m_hat = m / (1.0 - b1**t)
        s_hat = s / (1.0 - b2**t)
        return p - h.learning_rate * m_hat / (np.sqrt(s_hat) + h.epsilon)


class ADOPT(ReferenceRule):
    """Taniguchi et al. (2024), Algorithm 2 with the clipping of their section 4, as
    optax.contrib.adopt: normalise by the previous second moment, then average; step 1
    only initialises ``v = g**2``."""

    defaults = {
        "learning_rate": 1e-3,
        "beta1": 0.9,
        "beta2": 0.9999,
        "epsilon": 1e-6,
        "clipping": True,
        "nesterov": False,
        "weight_decay": 0.0,
    }

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def update(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        t = self.t
        b1, b2 = (h.beta1, h.beta2) if t > 1 else (1.0, 0.0)
        u = g / np.maximum(np.sqrt(state["exp_avg_sq"]), h.epsilon)
        if h.clipping:
            bound = (t - 1) ** 0.25
            u = np.clip(u, -bound, bound)
        m = b1 * state["exp_avg"] + (1.0 - b1) * u
        state["exp_avg"] = m
        state["exp_avg_sq"] = b2 * state["exp_avg_sq"] + (1.0 - b2) * np.square(g)
        direction = b1 * m + (1.0 - b1) * u if h.nesterov else m
        return p - h.learning_rate * direction


class AdEMAMix(ReferenceRule):
    """Pagliardini et al. (2024), Algorithm 1 (constant alpha and beta3), as
    optax.contrib.ademamix: a bias-corrected fast EMA plus alpha times an uncorrected slow
    EMA over Adam's denominator; decoupled weight decay."""

    defaults = {
        "learning_rate": 1e-3,
        "beta1": 0.9,
        "beta2": 0.999,
        "beta3": 0.9999,
        "alpha": 5.0,
        "epsilon": 1e-8,
        "epsilon_root": 0.0,
        "weight_decay": 0.0,
    }
    decoupled_weight_decay = True

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg_fast", "exp_avg_slow", "exp_avg_sq")

    def update(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        t = self.t
        m1 = h.beta1 * state["exp_avg_fast"] + (1.0 - h.beta1) * g
        m2 = h.beta3 * state["exp_avg_slow"] + (1.0 - h.beta3) * g
        v = h.beta2 * state["exp_avg_sq"] + (1.0 - h.beta2) * np.square(g)
        state["exp_avg_fast"], state["exp_avg_slow"], state["exp_avg_sq"] = m1, m2, v
        denom = np.sqrt(v / (1.0 - h.beta2**t) + h.epsilon_root) + h.epsilon
        return p - h.learning_rate * (m1 / (1.0 - h.beta1**t) + h.alpha * m2) / denom


class TrustRatioRule(ReferenceRule):
    """Base of LAMB and LARS, whose steps are scaled by norms of whole tensors.

    Keyword-only options of the constructor: ``seed_axis=True`` takes the norms per slice
    along each parameter's first axis (a stack of independent seeds); ``decay_mask`` and
    ``trust_mask`` (one bool per parameter, default all True) exclude parameters from the
    weight decay and from the trust ratio. LAMB's decay is part of its update (``decay_in_rule``).
    """

    decay_in_rule: ClassVar[bool] = False

    def __init__(
        self,
        params: Sequence[np.ndarray],
        *,
        seed_axis: bool = False,
        decay_mask: Sequence[bool] | None = None,
        trust_mask: Sequence[bool] | None = None,
        **hyperparameters: float | bool,
    ) -> None:
        super().__init__(params, **hyperparameters)
        self.seed_axis = seed_axis
        self.decay_mask = list(decay_mask) if decay_mask is not None else [True] * len(self.params)
        self.trust_mask = list(trust_mask) if trust_mask is not None else [True] * len(self.params)
        self.index = 0

    def norm(self, x: Array) -> Array:
        """Frobenius norm, per seed (keeping the reduced axes) with ``seed_axis``."""
        if not self.seed_axis:
            return np.asarray(np.sqrt(np.sum(np.square(x))))
        axes = tuple(range(1, x.ndim))
        return np.sqrt(np.sum(np.square(x), axis=axes, keepdims=True)) if axes else np.abs(x)

    def trust_ratio(self, p: Array, u: Array, coefficient: float, eps: float) -> Array:
        """``coefficient * |p| / (|u| + eps)``, 1 where either norm is 0 (You et al.'s convention in optax)."""
        p_norm, u_norm = self.norm(p), self.norm(u)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = coefficient * p_norm / (u_norm + eps)
        return np.where((p_norm == 0) | (u_norm == 0), np.ones_like(ratio), ratio).astype(p.dtype)

    def step(self, grads: Sequence[np.ndarray]) -> None:
        if len(grads) != len(self.params):
            raise ValueError(f"got {len(grads)} gradients for {len(self.params)} parameters")
        self.t += 1
        for i, (p, g) in enumerate(zip(self.params, grads)):
            g = np.asarray(g, dtype=p.dtype)
            h = self.rounded(p.dtype)
            if not self.decay_mask[i]:
                h.weight_decay = 0.0
            if not self.decay_in_rule:
                g = g + h.weight_decay * p
            self.index = i
            new = self.update(p, g, self.state[i], h)
            for what, arr in [("parameter", new), *self.state[i].items()]:
                if arr.dtype != p.dtype or arr.shape != p.shape:
                    raise AssertionError(f"{type(self).__name__}: {what} became {arr.dtype}{arr.shape}")
            self.params[i] = new


class LAMB(TrustRatioRule):
    """You et al. (2020), Algorithm 2, as optax.lamb: the Adam direction plus ``wd * p``,
    scaled by ``|p| / |direction|`` per tensor (phi = identity)."""

    defaults = {
        "learning_rate": 1e-3,
        "beta1": 0.9,
        "beta2": 0.999,
        "epsilon": 1e-6,
        "epsilon_root": 0.0,
        "weight_decay": 0.0,
    }
    decay_in_rule = True

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def update(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        t = self.t
        m = h.beta1 * state["exp_avg"] + (1.0 - h.beta1) * g
        v = h.beta2 * state["exp_avg_sq"] + (1.0 - h.beta2) * np.square(g)
        state["exp_avg"], state["exp_avg_sq"] = m, v
        r = (m / (1.0 - h.beta1**t)) / (np.sqrt(v / (1.0 - h.beta2**t) + h.epsilon_root) + h.epsilon)
        r = r + h.weight_decay * p
        return p - h.learning_rate * self.trust_ratio(p, r, 1.0, 0.0) * r


class LARS(TrustRatioRule):
    """You, Gitman & Ginsburg (2017), Algorithm 1, as optax.lars: local rate
    ``c |p| / (|g + wd p| + eps)`` per tensor, then momentum on the scaled step (optional Nesterov)."""

    defaults = {
        "learning_rate": 1.0,
        "trust_coefficient": 1e-3,
        "epsilon": 0.0,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 0.0,
    }

    def slot_names(self) -> tuple[str, ...]:
        return ("momentum_buffer",)

    def update(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        if self.trust_mask[self.index]:
            g = g * self.trust_ratio(p, g, h.trust_coefficient, h.epsilon)
        local = h.learning_rate * g
        buf = h.momentum * state["momentum_buffer"] + local
        state["momentum_buffer"] = buf
        return p - (local + h.momentum * buf if h.nesterov else buf)


REFERENCES.update(
    {
        "rprop": Rprop,
        "asgd": ASGD,
        "adabelief": AdaBelief,
        "adopt": ADOPT,
        "ademamix": AdEMAMix,
        "lamb": LAMB,
        "lars": LARS,
    }
)
