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
    """Duchi et al. (2011): accumulate ``g**2``; divide by ``sqrt(sum) + eps`` (or ``sqrt(sum + eps)``)."""

    defaults = {"learning_rate": 0.01, "epsilon": 1e-10, "epsilon_inside_sqrt": False, "weight_decay": 0.0}

    def slot_names(self) -> tuple[str, ...]:
        return ("sum_sq",)

    def update(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        s = state["sum_sq"] + np.square(g)
        state["sum_sq"] = s
        denom = np.sqrt(s + h.epsilon) if h.epsilon_inside_sqrt else np.sqrt(s) + h.epsilon
        return p - h.learning_rate * g / denom


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
    """

    defaults = {
        "learning_rate": 1e-3,
        "beta1": 0.9,
        "beta2": 0.999,
        "epsilon": 1e-8,
        "beta1_decay": 1.0,
        "amsgrad": False,
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


# ---------------------------------------------------------------------- second-order rules (SAM, Sophia)
# Rules that evaluate the loss more than once per step: their references take the model's
# gradient (and Hessian-vector product) as functions of the parameters.

class SAMReference:
    r"""Foret et al. (ICLR 2021), Algorithm 1 with one ascent step, around a base reference:

    .. math:: \hat\epsilon = \rho g / \lVert g \rVert_2 \;(\text{global norm}), \qquad
              \tilde g = \nabla L(p + \hat\epsilon), \qquad p \leftarrow \mathrm{base}(p, \tilde g)

    ``gradient(params) -> grads`` is the model's gradient (without weight decay); the
    base reference holds the parameters and state. The norm is accumulated in float64
    and ``rho / norm`` rounded once to each parameter's dtype.
    """

    def __init__(self, base: ReferenceRule, gradient, rho: float = 0.05) -> None:
        self.base, self.gradient, self.rho = base, gradient, float(rho)

    @property
    def params(self) -> list[Array]:
        return self.base.params

    def step(self) -> None:
        grads = [np.asarray(g, dtype=p.dtype) for g, p in zip(self.gradient(self.params), self.params)]
        norm = math.sqrt(sum(float(np.sum(np.square(g.astype(np.float64)))) for g in grads))
        scale = self.rho / norm if norm > 0 else 0.0
        perturbed = [p + g * p.dtype.type(scale) for p, g in zip(self.params, grads)]
        self.base.step([np.asarray(g, dtype=p.dtype) for g, p in zip(self.gradient(perturbed), self.params)])


# SplitMix64 (Steele, Lea & Flood, OOPSLA 2014): element j of step t of key k is output
# number (t + 1) 2**32 + j + 1 of the stream seeded with k; Sophia's u_j is -1 when its
# top bit is 0, else +1. Transcribed here from the published constants.
_SPLITMIX_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_SPLITMIX_M1 = np.uint64(0xBF58476D1CE4E5B9)
_SPLITMIX_M2 = np.uint64(0x94D049BB133111EB)


def rademacher_signs(seed: int, index: int, step: int, shape: tuple[int, ...], dtype: np.dtype) -> Array:
    """Sophia's ``u`` for parameter ``index`` at 0-based ``step``: ``+-1`` of ``shape``."""
    key = np.uint64(int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0]) >> 1)
    j = np.arange(int(np.prod(shape)), dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = key + ((np.uint64(step + 1) << np.uint64(32)) + j + np.uint64(1)) * _SPLITMIX_GAMMA
        z = (z ^ (z >> np.uint64(30))) * _SPLITMIX_M1
        z = (z ^ (z >> np.uint64(27))) * _SPLITMIX_M2
        z = z ^ (z >> np.uint64(31))
    return np.where((z >> np.uint64(63)) == 0, -1.0, 1.0).astype(dtype).reshape(shape)


class Sophia(ReferenceRule):
    r"""Sophia-H (Liu et al. 2023) in optax.contrib.sophia's order, with Hutchinson's
    estimate :math:`u \odot (H u)`, Rademacher :math:`u`, every ``update_interval`` steps:

    .. math:: m_t = \beta_1 m + (1-\beta_1) g, \quad
              p_t = p(1 - \eta\lambda) - \eta\,\mathrm{clip}\bigl(\tfrac{m_t / (1-\beta_1^t)}
              {\max(\gamma h_{t-1}, \epsilon)}, \pm c\bigr), \quad
              h_t = \beta_2 h_{t-1} + (1-\beta_2)\, u \odot (H u) \text{ if } (t-1) \bmod k = 0

    ``step(grads, hvp)``: ``hvp(signs) -> [H u]`` at the parameters before the step (only
    called on Hessian steps); ``signs`` default to :func:`rademacher_signs` of ``seed``.
    """

    defaults = {
        "learning_rate": 1e-3,
        "beta1": 0.965,
        "beta2": 0.99,
        "epsilon": 1e-8,
        "gamma": 0.01,
        "clip_threshold": 1.0,
        "weight_decay": 1e-4,
    }
    decoupled_weight_decay = True

    def __init__(self, params: Sequence[np.ndarray], update_interval: int = 10, seed: int = 0,
                 **hyperparameters: float) -> None:
        super().__init__(params, **hyperparameters)
        self.update_interval, self.seed = int(update_interval), int(seed)
        self._estimate: list[Array | None] = [None] * len(self.params)

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg", "hessian")

    def signs(self, step: int) -> list[Array]:
        return [rademacher_signs(self.seed, i, step, p.shape, p.dtype) for i, p in enumerate(self.params)]

    def step(self, grads: Sequence[np.ndarray], hvp=None, signs: list[Array] | None = None) -> None:  # type: ignore[override]
        due = self.t % self.update_interval == 0  # t: steps taken so far (optax's count)
        if due:
            u = signs if signs is not None else self.signs(self.t)
            products = hvp(u)
            self._estimate = [np.asarray(ui * np.asarray(hu, dtype=p.dtype), dtype=p.dtype)
                              for ui, hu, p in zip(u, products, self.params)]
        self._due = due
        super().step(grads)

    def update(self, p: Array, g: Array, state: dict[str, Array], h: SimpleNamespace) -> Array:
        m = h.beta1 * state["exp_avg"] + (1.0 - h.beta1) * g
        correction = 1.0 / (1.0 - h.beta1**self.t)
        ratio = (m * correction) / np.maximum(h.gamma * state["hessian"], h.epsilon)
        new = p - h.learning_rate * np.clip(ratio, -h.clip_threshold, h.clip_threshold)
        index = next(i for i, s in enumerate(self.state) if s is state)
        if self._due:
            state["hessian"] = h.beta2 * state["hessian"] + (1.0 - h.beta2) * self._estimate[index]
        state["exp_avg"] = m
        return new


class SAMOverSGD(ReferenceRule):
    """``sam`` as registered (SGD base) for tests/test_rules.py: the harness passes the
    gradient at the current point only, so the gradient at the perturbed point comes from
    that module's model (:func:`tests.test_rules.numpy_gradients`)."""

    defaults = {"learning_rate": 0.01, "rho": 0.05, "weight_decay": 0.0}

    def step(self, grads: Sequence[np.ndarray]) -> None:
        from .test_rules import numpy_gradients

        base = {k: v for k, v in self.hyperparameters.items() if k != "rho"}
        sam = SAMReference(SGD(self.params, **base), lambda ps: numpy_gradients(ps, 1.0, 0.0),
                           rho=float(self.hyperparameters["rho"]))
        sam.step()
        self.params = sam.params
        self.t += 1


class SophiaHarness(Sophia):
    r"""``sophia`` for tests/test_rules.py: the exact ``H u`` of that module's model
    :math:`L = \tfrac1n \lVert \tanh(XW) v - y \rVert^2`, differentiated by hand in float64
    (forward mode through its gradient, at the parameters before the step)."""

    def step(self, grads: Sequence[np.ndarray], hvp=None, signs=None) -> None:  # type: ignore[override]
        from .test_rules import X, Y

        W, v = (p.astype(np.float64) for p in self.params)

        def exact(u: list[Array]) -> list[Array]:
            U, w = (x.astype(np.float64) for x in u)
            n = len(Y)
            h = np.tanh(X @ W)
            r = h @ v - Y
            dh = (1.0 - h**2) * (X @ U)
            dr = dh @ v + h @ w
            d_gv = (2.0 / n) * (dh.T @ r + h.T @ dr)
            dD = (2.0 / n) * ((np.outer(dr, v) + np.outer(r, w)) * (1.0 - h**2) + np.outer(r, v) * (-2.0 * h * dh))
            return [(X.T @ dD).astype(self.params[0].dtype), d_gv.astype(self.params[1].dtype)]

        super().step(grads, hvp or exact, signs)


REFERENCES["sam"] = SAMOverSGD
REFERENCES["sophia"] = SophiaHarness
