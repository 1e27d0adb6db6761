"""Neural-network layers over PyTensor: small models for symopt to train.

A layer owns ``pytensor.shared`` parameters and builds a symbolic output; a model is
a :class:`Sequential` stack of layers (:class:`MLP` is one). A training loop::

    model = MLP([784, 100, 100, 10], batchnorm=True, dropout=0.2, seed=0)
    x, y = pt.matrix("x", dtype="float32"), pt.ivector("y")
    out = model.output(x, train=True)       # records model.extra_updates
    loss = cross_entropy(out, y)
    ups = opt.updates(loss)                 # opt = symopt.Adam(model.params)
    ups.update(model.extra_updates)         # BN running statistics, dropout RNG
    train = pytensor.function([x, y], loss, updates=ups)
    predict = pytensor.function([x], model.output(x, train=False))

``extra_updates`` are the non-gradient state changes of the last **train-mode**
``output`` call (evaluation-mode calls leave it alone, so the evaluation graph may be
built before compiling the train function). They belong in the same
``pytensor.function`` as the optimiser's updates: one call, one step.

Conventions: dense inputs are ``(batch, features)``, image inputs ``(batch, channels,
height, width)``. Every parameter is created in the layer's ``dtype`` and every
constant is cast to the input's dtype, so a float32 model fed float32 data computes in
float32 throughout (``x * 0.1`` would silently upcast to float64 in PyTensor).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.gradient import zero_grad
from pytensor.raise_op import Assert
from pytensor.tensor.variable import TensorVariable

from ._random import dropout_uniform, key_from_seed

__all__ = [
    "INITIALIZERS",
    "ACTIVATIONS",
    "normal",
    "xavier",
    "he",
    "initialize",
    "relu",
    "sigmoid",
    "tanh",
    "identity",
    "logsumexp",
    "softmax",
    "cross_entropy",
    "accuracy",
    "Layer",
    "Dense",
    "Activation",
    "ReLU",
    "Sigmoid",
    "Tanh",
    "BatchNorm",
    "Dropout",
    "Conv2D",
    "MaxPool2D",
    "Flatten",
    "Sequential",
    "MLP",
]

_FLOATS = ("float16", "float32", "float64")
_INTS = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")

Seed = int | np.random.Generator
#: A layer's extra updates (batch-norm statistics, dropout counters); not the optimiser's :class:`~symopt.optimizer.Updates`.
UpdateDict = OrderedDict[SharedVariable, TensorVariable]


def _const(value: float, dtype: str) -> TensorVariable:
    """A scalar constant of exactly ``dtype`` (Python floats like 0.1 upcast float32 to float64)."""
    return pt.constant(np.asarray(value, dtype=dtype))


def _generator(seed: Seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int or a numpy Generator, got {seed!r}")
    return np.random.default_rng(int(seed))


def _check_float_dtype(dtype: Any) -> str:
    name = np.dtype(dtype).name
    if name not in ("float16", "float32", "float64"):
        raise TypeError(f"dtype must be a float dtype, got {dtype!r}")
    return name


# ---------------------------------------------------------------------- initialisers
def _fan_in(shape: Sequence[int]) -> int:
    """Inputs feeding one output unit: ``n_in`` of an ``(n_in, n_out)`` matrix, ``C*kh*kw`` of a conv kernel."""
    if len(shape) == 0:
        raise ValueError("cannot initialise a scalar weight")
    if len(shape) <= 2:
        return int(shape[0])
    return int(np.prod(shape[1:]))


def normal(
    shape: Sequence[int], std: float = 0.01, *, seed: Seed, dtype: str = "float32", fan_in: int | None = None
) -> np.ndarray:
    """Zero-mean Gaussian weights with a fixed standard deviation ``std``.

    Samples are drawn in float64 and then cast, so the same seed gives the same
    weights (up to rounding) in every dtype. ``fan_in`` is accepted and ignored, so
    every initialiser has the same signature.
    """
    std = float(std)
    if not (math.isfinite(std) and std >= 0):
        raise ValueError(f"std must be finite and >= 0, got {std}")
    dtype = _check_float_dtype(dtype)
    return (_generator(seed).standard_normal(tuple(shape)) * std).astype(dtype)


def xavier(shape: Sequence[int], *, seed: Seed, dtype: str = "float32", fan_in: int | None = None) -> np.ndarray:
    """Gaussian with ``std = sqrt(1 / fan_in)``: the variant the seed experiments call Xavier.

    (Glorot & Bengio's paper averages fan-in and fan-out, ``sqrt(2 / (n_in + n_out))``;
    this is the fan-in form, also known as LeCun initialisation.)
    """
    n = _fan_in(shape) if fan_in is None else int(fan_in)
    return normal(shape, math.sqrt(1.0 / n), seed=seed, dtype=dtype)


def he(shape: Sequence[int], *, seed: Seed, dtype: str = "float32", fan_in: int | None = None) -> np.ndarray:
    """Gaussian with ``std = sqrt(2 / fan_in)`` (He et al., 2015), for ReLU networks."""
    n = _fan_in(shape) if fan_in is None else int(fan_in)
    return normal(shape, math.sqrt(2.0 / n), seed=seed, dtype=dtype)


INITIALIZERS: dict[str, Callable[..., np.ndarray]] = {"normal": normal, "xavier": xavier, "he": he}


def initialize(
    init: str | float, shape: Sequence[int], *, seed: Seed, dtype: str = "float32", fan_in: int | None = None
) -> np.ndarray:
    """Weights of ``shape`` from an initialiser name (``"normal"`` is std 0.01,
    ``"xavier"``, ``"he"``) or a float standard deviation.

    ``fan_in`` defaults to ``shape[0]`` for matrices and ``prod(shape[1:])`` for
    convolution kernels ``(out_channels, in_channels, kh, kw)``.
    """
    if isinstance(init, (bool, np.bool_)):
        raise TypeError(f"init must be a name or a float std, got {init!r}")
    if isinstance(init, (int, float, np.integer, np.floating)):
        return normal(shape, float(init), seed=seed, dtype=dtype)
    if init not in INITIALIZERS:
        raise ValueError(f"unknown initialiser {init!r}; choose from {sorted(INITIALIZERS)} or pass a float std")
    return INITIALIZERS[init](shape, seed=seed, dtype=dtype, fan_in=fan_in)


# ---------------------------------------------------------------------- functions
def relu(x: Any) -> TensorVariable:
    """``max(x, 0)``."""
    x = pt.as_tensor_variable(x)
    return pt.maximum(x, _const(0, x.dtype))


def sigmoid(x: Any) -> TensorVariable:
    """``1 / (1 + exp(-x))``."""
    return pt.sigmoid(x)


def tanh(x: Any) -> TensorVariable:
    """Hyperbolic tangent."""
    return pt.tanh(x)


def identity(x: Any) -> TensorVariable:
    """The input unchanged (a linear layer)."""
    return pt.as_tensor_variable(x)


ACTIVATIONS: dict[str, Callable[[Any], TensorVariable]] = {
    "relu": relu,
    "sigmoid": sigmoid,
    "tanh": tanh,
    "linear": identity,
    "identity": identity,
}


def logsumexp(x: Any, axis: int = -1, keepdims: bool = False) -> TensorVariable:
    r"""``log(sum(exp(x), axis))`` computed as :math:`m + \log\sum e^{x - m}`, :math:`m = \max x`.

    Finite for any finite input. The shift ``m`` is wrapped in ``zero_grad``: the
    result does not depend on it, so its gradient path is exactly zero and need not
    be built.
    """
    x = pt.as_tensor_variable(x)
    m = zero_grad(pt.max(x, axis=axis, keepdims=True))
    out = m + pt.log(pt.sum(pt.exp(x - m), axis=axis, keepdims=True))
    return out if keepdims else pt.squeeze(out, axis=axis)


def softmax(logits: Any, axis: int = -1) -> TensorVariable:
    """Numerically stable softmax: ``exp(x - logsumexp(x))``."""
    logits = pt.as_tensor_variable(logits)
    return pt.exp(logits - logsumexp(logits, axis=axis, keepdims=True))


def _checked_labels(logits: TensorVariable, labels: Any) -> TensorVariable:
    labels = pt.as_tensor_variable(labels)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (batch, classes), got a {logits.ndim}-d tensor")
    if labels.ndim != 1 or labels.dtype not in _INTS:
        raise TypeError(f"labels must be a vector of integer class indices, got {labels.type}")
    k = logits.shape[1]
    # The compiled backends do not bounds-check indexing, so a bad label would read garbage.
    in_range = pt.all(pt.ge(labels, 0) & pt.lt(labels, k))
    return Assert("class labels must lie in [0, number of classes)")(labels, in_range)


def cross_entropy(logits: Any, labels: Any, reduction: str = "mean") -> TensorVariable:
    r"""Softmax cross-entropy from unnormalised logits and integer labels.

    .. math:: \ell_i = \operatorname{logsumexp}_k z_{ik} - z_{i y_i}

    in log-sum-exp form, so logits of any finite magnitude (1e4 and beyond) give a
    finite loss; never ``log(softmax(z))``. ``reduction`` is ``"mean"`` (default),
    ``"sum"`` or ``"none"`` (per-example losses). Out-of-range labels raise at run time.
    """
    logits = pt.as_tensor_variable(logits)
    labels = _checked_labels(logits, labels)
    # One-hot selection instead of fancy indexing: element-wise, and its gradient too.
    onehot = pt.eq(labels[:, None], pt.arange(logits.shape[1])[None, :])
    picked = pt.sum(pt.switch(onehot, logits, _const(0, logits.dtype)), axis=1)
    losses = logsumexp(logits, axis=1) - picked
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    if reduction == "none":
        return losses
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def accuracy(logits: Any, labels: Any, reduction: str = "mean") -> TensorVariable:
    """Which rows' arg-max equals the label.

    ``reduction``: ``"mean"`` (default) the fraction of such rows, in the logits' dtype;
    ``"sum"`` their count (int64; sums over eval batches stay exact); ``"none"`` one
    boolean per row. Out-of-range labels raise at run time.
    """
    logits = pt.as_tensor_variable(logits)
    labels = _checked_labels(logits, labels)
    hits = pt.eq(pt.argmax(logits, axis=1), labels)
    if reduction == "mean":
        return pt.cast(hits, logits.dtype).mean()
    if reduction == "sum":
        return hits.sum()
    if reduction == "none":
        return hits
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


# ---------------------------------------------------------------------- layers
class Layer:
    """Base class: a piece of a model with parameters, buffers and a symbolic output.

    Subclasses implement :meth:`forward`; users call :meth:`output` (or the layer
    itself).

    Attributes
    ----------
    extra_updates
        ``OrderedDict`` of non-gradient updates (BN running statistics, dropout RNG
        state) made by the last train-mode :meth:`output` call; merge it into the
        optimiser's updates. Empty until then; evaluation-mode calls never change it.
    """

    def __init__(self, name: str):
        self.name = name
        self.extra_updates: UpdateDict = OrderedDict()

    @property
    def params(self) -> list[SharedVariable]:
        """Shared variables to optimise."""
        return []

    @property
    def buffers(self) -> list[SharedVariable]:
        """Non-trainable shared state (running statistics, RNG): save it with the params."""
        return []

    def forward(self, x: TensorVariable, train: bool, updates: UpdateDict) -> TensorVariable:
        """Symbolic output; in train mode, put state changes into ``updates``."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    def output(self, x: Any, train: bool) -> TensorVariable:
        """Symbolic output for input ``x``, in training (``train=True``) or evaluation mode."""
        if not isinstance(train, (bool, np.bool_)):
            raise TypeError(f"{type(self).__name__}.output: train must be True or False, got {train!r}")
        x = pt.as_tensor_variable(x)
        updates: UpdateDict = OrderedDict()
        out = self.forward(x, bool(train), updates)
        if train:
            self.extra_updates = updates
        return out

    __call__ = output

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _check_ndim(layer: Layer, x: TensorVariable, ndims: tuple[int, ...], what: str) -> None:
    if x.ndim not in ndims:
        raise ValueError(f"{type(layer).__name__} {layer.name!r} expects {what}, got a {x.ndim}-d input")


class Dense(Layer):
    """Fully connected layer ``x @ W + b`` with ``W`` of shape ``(n_in, n_out)``.

    Parameters
    ----------
    n_in, n_out
        Input and output widths.
    seed
        Seed or ``numpy.random.Generator`` for the weight initialisation.
    init
        Initialiser name or float std (see :func:`initialize`); the bias starts at zero.
    bias
        Whether to add a bias (a BatchNorm right after makes it redundant).
    dtype
        Parameter dtype.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        *,
        seed: Seed,
        init: str | float = "he",
        bias: bool = True,
        dtype: str = "float32",
        name: str = "dense",
    ):
        super().__init__(name)
        if int(n_in) < 1 or int(n_out) < 1:
            raise ValueError(f"Dense {name!r}: widths must be positive, got {n_in} -> {n_out}")
        self.n_in, self.n_out, self.dtype = int(n_in), int(n_out), _check_float_dtype(dtype)
        weights = initialize(init, (self.n_in, self.n_out), seed=seed, dtype=self.dtype)
        self.W = pytensor.shared(weights, name=f"{name}.W")
        self.b = pytensor.shared(np.zeros(self.n_out, dtype=self.dtype), name=f"{name}.b") if bias else None

    @property
    def params(self) -> list[SharedVariable]:
        return [self.W] if self.b is None else [self.W, self.b]

    def forward(self, x: TensorVariable, train: bool, updates: UpdateDict) -> TensorVariable:
        _check_ndim(self, x, (2,), "(batch, features)")
        if x.type.shape[1] is not None and x.type.shape[1] != self.n_in:
            raise ValueError(f"Dense {self.name!r} expects {self.n_in} features, got {x.type.shape[1]}")
        out = pt.dot(x, self.W)
        return out if self.b is None else out + self.b


class Activation(Layer):
    """Element-wise nonlinearity, by name (see :data:`ACTIVATIONS`) or callable."""

    def __init__(self, fn: str | Callable[[Any], TensorVariable], name: str | None = None):
        if isinstance(fn, str):
            if fn not in ACTIVATIONS:
                raise ValueError(f"unknown activation {fn!r}; choose from {sorted(ACTIVATIONS)} or pass a callable")
            label, fn = fn, ACTIVATIONS[fn]
        elif callable(fn):
            label = getattr(fn, "__name__", "activation")
        else:
            raise TypeError(f"activation must be a name or a callable, got {fn!r}")
        super().__init__(name or label)
        self.fn = fn

    def forward(self, x: TensorVariable, train: bool, updates: UpdateDict) -> TensorVariable:
        return self.fn(x)


class ReLU(Activation):
    """``max(x, 0)`` as a layer."""

    def __init__(self, name: str = "relu"):
        super().__init__(relu, name)


class Sigmoid(Activation):
    """Logistic sigmoid as a layer."""

    def __init__(self, name: str = "sigmoid"):
        super().__init__(sigmoid, name)


class Tanh(Activation):
    """Hyperbolic tangent as a layer."""

    def __init__(self, name: str = "tanh"):
        super().__init__(tanh, name)


class BatchNorm(Layer):
    r"""Batch normalisation (Ioffe & Szegedy, 2015) over ``(batch, features)`` or NCHW inputs.

    Statistics are per feature (axis 1), over the batch and, for 4-d inputs, the
    spatial axes. With :math:`\mu_B, \sigma_B^2` the batch mean and (biased) variance
    of :math:`n` values,

    * train: :math:`y = \gamma (x - \mu_B) / \sqrt{\sigma_B^2 + \epsilon} + \beta`, and
      ``extra_updates`` move the running statistics (the ``torch.nn.BatchNorm``
      convention, momentum 0.1 meaning 10 % new)::

          running_mean <- (1 - momentum) * running_mean + momentum * mu_B
          running_var  <- (1 - momentum) * running_var  + momentum * sigma_B^2 * n / (n - 1)

    * evaluation: the same formula with the running statistics.

    The running variance uses the unbiased batch variance (as torch), so a train
    batch needs ``n >= 2`` values per feature. ``running_mean`` starts at 0 and
    ``running_var`` at 1; ``gamma`` at 1 and ``beta`` at 0 are the trainable params.
    """

    def __init__(
        self,
        num_features: int,
        *,
        momentum: float = 0.1,
        epsilon: float = 1e-5,
        dtype: str = "float32",
        name: str = "bn",
    ):
        super().__init__(name)
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"BatchNorm {name!r}: momentum must lie in [0, 1], got {momentum}")
        if not float(epsilon) > 0.0:
            raise ValueError(f"BatchNorm {name!r}: epsilon must be > 0, got {epsilon}")
        self.num_features, self.momentum, self.epsilon = int(num_features), float(momentum), float(epsilon)
        self.dtype = _check_float_dtype(dtype)
        n = self.num_features
        self.gamma = pytensor.shared(np.ones(n, dtype=self.dtype), name=f"{name}.gamma")
        self.beta = pytensor.shared(np.zeros(n, dtype=self.dtype), name=f"{name}.beta")
        self.running_mean = pytensor.shared(np.zeros(n, dtype=self.dtype), name=f"{name}.running_mean")
        self.running_var = pytensor.shared(np.ones(n, dtype=self.dtype), name=f"{name}.running_var")

    @property
    def params(self) -> list[SharedVariable]:
        return [self.gamma, self.beta]

    @property
    def buffers(self) -> list[SharedVariable]:
        return [self.running_mean, self.running_var]

    def forward(self, x: TensorVariable, train: bool, updates: UpdateDict) -> TensorVariable:
        _check_ndim(self, x, (2, 4), "(batch, features) or (batch, channels, height, width)")
        if x.type.shape[1] is not None and x.type.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm {self.name!r} expects {self.num_features} features, got {x.type.shape[1]}")
        axes = (0,) if x.ndim == 2 else (0, 2, 3)
        pattern = ("x", 0) if x.ndim == 2 else ("x", 0, "x", "x")
        dtype = x.dtype
        if train:
            mean, var = x.mean(axis=axes), x.var(axis=axes)
            n = pt.cast(pt.prod([x.shape[a] for a in axes]), dtype)
            m, keep = _const(self.momentum, dtype), _const(1.0 - self.momentum, dtype)
            updates[self.running_mean] = pt.cast(keep * self.running_mean + m * mean, self.dtype)
            unbiased = var * n / (n - _const(1, dtype))
            updates[self.running_var] = pt.cast(keep * self.running_var + m * unbiased, self.dtype)
        else:
            mean, var = self.running_mean, self.running_var
        scale = self.gamma * pt.reciprocal(pt.sqrt(var + _const(self.epsilon, dtype)))
        return (x - mean.dimshuffle(*pattern)) * scale.dimshuffle(*pattern) + self.beta.dimshuffle(*pattern)


class Dropout(Layer):
    """Inverted dropout: in train mode zero each unit with probability ``p`` and scale
    the survivors by ``1 / (1 - p)``, so the expected output equals the input; in
    evaluation mode the identity.

    The mask is counter-based (:mod:`symopt._random`): unit ``i`` of the ``t``-th train
    step is kept where ``hash(key, t, i) >= p``, ``hash`` a SplitMix64 construction
    mapped to ``[0, 1)``. The draw is a scalar op fused into the same elementwise loop
    as the scaling, with no generator state: the layer holds two shared int64 scalars,
    ``key`` (from ``seed``: hashed from an int, drawn from a child spawned from a
    Generator, so two layers seeded from one Generator draw different masks) and
    ``counter`` (the step, advanced by ``extra_updates``), both among ``buffers``, so a
    checkpoint resumes the mask stream bit-exactly. :meth:`reseed` rewinds it.
    """

    def __init__(self, p: float, *, seed: Seed, name: str = "dropout"):
        super().__init__(name)
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"Dropout {name!r}: p must lie in [0, 1), got {p}")
        self.p = float(p)
        self.key = pytensor.shared(key_from_seed(seed), name=f"{name}.key")
        self.counter = pytensor.shared(np.int64(0), name=f"{name}.counter")

    def reseed(self, seed: Seed) -> None:
        """Reset the mask stream to the one ``seed`` gives (its key, step 0)."""
        self.key.set_value(key_from_seed(seed))
        self.counter.set_value(np.int64(0))

    @property
    def buffers(self) -> list[SharedVariable]:
        return [self.key, self.counter]

    def forward(self, x: TensorVariable, train: bool, updates: UpdateDict) -> TensorVariable:
        if not train or self.p == 0.0:
            return x
        dtype = x.dtype if x.dtype in ("float32", "float64") else pytensor.config.floatX
        updates[self.counter] = self.counter + np.int64(1)
        return dropout_mask(x, self.key, self.counter, self.p, dtype)


def dropout_mask(x: TensorVariable, key: Any, counter: Any, p: float, dtype: str, lead: int = 0) -> TensorVariable:
    """``switch(u >= p, x / (1 - p), 0)`` with ``u = dropout_uniform(key, counter, ...)`` in ``dtype``.

    ``lead`` leading axes of ``x`` are left out of the element index (``key`` varies
    along them: the seed axis of a :class:`~symopt.seeds.SeedStack`).
    """
    u = dropout_uniform(key, counter, [x.shape[k] for k in range(x.ndim)], dtype, lead=lead)
    keep = pt.ge(u, _const(p, dtype))  # P(u >= p) = 1 - p for u ~ U[0, 1)
    return pt.switch(keep, x * _const(1.0 / (1.0 - p), dtype), _const(0, dtype))


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or any(int(v) != v or v < 1 for v in pair):
        raise ValueError(f"{what} must be a positive int or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def _window_slices(x: TensorVariable, size: tuple[int, int], stride: tuple[int, int]) -> list[TensorVariable]:
    """For each kernel offset ``(i, j)`` (row-major), the strided view of ``x`` it sees.

    Element ``[..., r, c]`` of slice ``(i, j)`` is ``x[..., r*sh + i, c*sw + j]``; the
    output size is ``floor((H - kh) / sh) + 1`` (incomplete windows are dropped).
    """
    (kh, kw), (sh, sw) = size, stride
    ho = (x.shape[2] - kh) // sh + 1
    wo = (x.shape[3] - kw) // sw + 1
    return [
        x[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]


class Conv2D(Layer):
    """2-d convolution over NCHW inputs, as ``torch.nn.Conv2d``: cross-correlation
    (the kernel is not flipped), zero padding, floor output size.

    The kernel ``W`` has shape ``(out_channels, in_channels, kh, kw)`` and is
    initialised with ``fan_in = in_channels * kh * kw``; the bias starts at zero.

    Implemented as im2col: the ``kh * kw`` strided slices of the padded input are
    stacked and contracted with the kernel in one ``tensordot`` (a GEMM). PyTensor
    3.0.7 has no NCHW ``conv2d`` (Theano's ``abstract_conv`` is gone); its
    ``pytensor.tensor.signal.convolve2d`` convolves single 2-d images without strides
    and has no Numba kernel (it falls back to SciPy), whereas slicing and ``dot``
    compile natively and have ordinary gradients.

    Parameters
    ----------
    padding
        ``int`` or ``(ph, pw)`` zeros on each side, ``"valid"`` (0) or ``"same"``
        (stride 1 only; for even kernels the extra row/column goes bottom/right).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        *,
        seed: Seed,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        init: str | float = "he",
        bias: bool = True,
        dtype: str = "float32",
        name: str = "conv",
    ):
        super().__init__(name)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        kh, kw = self.kernel_size
        if padding == "valid":
            pads = ((0, 0), (0, 0))
        elif padding == "same":
            if self.stride != (1, 1):
                raise ValueError(f"Conv2D {name!r}: padding='same' needs stride 1")
            pads = (((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2))
        else:
            pair = (padding, padding) if isinstance(padding, (int, np.integer)) else padding
            if isinstance(pair, str) or len(pair) != 2 or min(pair) < 0:
                raise ValueError(f"Conv2D {name!r}: padding must be 'valid', 'same' or ints >= 0, got {padding!r}")
            ph, pw = pair
            pads = ((int(ph), int(ph)), (int(pw), int(pw)))
        self.pads = pads
        self.dtype = _check_float_dtype(dtype)
        shape = (self.out_channels, self.in_channels, kh, kw)
        self.W = pytensor.shared(initialize(init, shape, seed=seed, dtype=self.dtype), name=f"{name}.W")
        self.b = pytensor.shared(np.zeros(self.out_channels, dtype=self.dtype), name=f"{name}.b") if bias else None

    @property
    def params(self) -> list[SharedVariable]:
        return [self.W] if self.b is None else [self.W, self.b]

    def forward(self, x: TensorVariable, train: bool, updates: UpdateDict) -> TensorVariable:
        _check_ndim(self, x, (4,), "(batch, channels, height, width)")
        if x.type.shape[1] is not None and x.type.shape[1] != self.in_channels:
            raise ValueError(f"Conv2D {self.name!r} expects {self.in_channels} channels, got {x.type.shape[1]}")
        (top, bottom), (left, right) = self.pads
        if top or bottom or left or right:
            n, c, h, w = x.shape
            padded = pt.zeros((n, c, h + top + bottom, w + left + right), dtype=x.dtype)
            x = pt.set_subtensor(padded[:, :, top : top + h, left : left + w], x)
        kh, kw = self.kernel_size
        patches = pt.stack(_window_slices(x, self.kernel_size, self.stride), axis=2)  # (N, C, kh*kw, Ho, Wo)
        kernel = self.W.reshape((self.out_channels, self.in_channels, kh * kw))
        out = pt.tensordot(patches, kernel, axes=[[1, 2], [1, 2]]).dimshuffle(0, 3, 1, 2)  # (N, F, Ho, Wo)
        return out if self.b is None else out + self.b.dimshuffle("x", 0, "x", "x")


class MaxPool2D(Layer):
    """Max pooling over the last two axes of NCHW inputs; incomplete windows at the
    border are dropped (``torch``'s ``ceil_mode=False``, Keras' ``"valid"``).

    ``stride`` defaults to ``pool_size``; that non-overlapping case is a reshape and a
    max, other strides take the max over strided slices. PyTensor 3.0.7 has no pooling op.
    Where a window holds tied maxima, each receives the gradient.
    """

    def __init__(
        self,
        pool_size: int | Sequence[int] = 2,
        stride: int | Sequence[int] | None = None,
        name: str = "maxpool",
    ):
        super().__init__(name)
        self.pool_size = _pair(pool_size, "pool_size")
        self.stride = self.pool_size if stride is None else _pair(stride, "stride")

    def forward(self, x: TensorVariable, train: bool, updates: UpdateDict) -> TensorVariable:
        _check_ndim(self, x, (4,), "(batch, channels, height, width)")
        ph, pw = self.pool_size
        if self.stride == self.pool_size:
            n, c, h, w = x.shape
            ho, wo = h // ph, w // pw
            blocks = x[:, :, : ho * ph, : wo * pw].reshape((n, c, ho, ph, wo, pw))
            return pt.max(blocks, axis=(3, 5))
        return pt.max(pt.stack(_window_slices(x, self.pool_size, self.stride), axis=0), axis=0)


class Flatten(Layer):
    """``(batch, ...)`` to ``(batch, features)``, row-major."""

    def __init__(self, name: str = "flatten"):
        super().__init__(name)

    def forward(self, x: TensorVariable, train: bool, updates: UpdateDict) -> TensorVariable:
        return x.reshape((x.shape[0], -1), ndim=2)


class Sequential(Layer):
    """Layers applied in order; a model.

    ``params`` and ``buffers`` concatenate the layers' (each shared variable once) and
    a train-mode :meth:`output` collects every layer's ``extra_updates`` into its own.
    """

    def __init__(self, layers: Sequence[Layer], name: str = "sequential"):
        super().__init__(name)
        self.layers = list(layers)
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential {name!r}: item {i} is a {type(layer).__name__}, not a Layer")

    def _collect(self, attr: str) -> list[SharedVariable]:
        seen: set[int] = set()
        out = []
        for layer in self.layers:
            for var in getattr(layer, attr):
                if id(var) not in seen:
                    seen.add(id(var))
                    out.append(var)
        return out

    @property
    def params(self) -> list[SharedVariable]:
        return self._collect("params")

    @property
    def buffers(self) -> list[SharedVariable]:
        return self._collect("buffers")

    def forward(self, x: TensorVariable, train: bool, updates: UpdateDict) -> TensorVariable:
        for layer in self.layers:
            x = layer.output(x, train)
            if train:
                for var, new in layer.extra_updates.items():
                    if var in updates:
                        # A layer used twice would update its statistics twice in one step.
                        raise ValueError(f"Sequential {self.name!r}: {var.name or var} is updated by two layer calls")
                    updates[var] = new
        return x

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __getitem__(self, index: int) -> Layer:
        return self.layers[index]

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"{type(self).__name__}([{inner}])"


class MLP(Sequential):
    """Multi-layer perceptron returning logits.

    Each hidden layer is ``Dense -> [BatchNorm] -> activation -> [Dropout]``; the last
    layer is a plain ``Dense``. Layers are named ``dense0, bn0, <activation>0,
    dropout0, dense1, ...``.

    Parameters
    ----------
    sizes
        Widths from input to output, e.g. ``[784, 100, 100, 10]``.
    activation
        Name in :data:`ACTIVATIONS` or a callable.
    init
        Weight initialiser for every Dense layer (see :func:`initialize`).
    batchnorm
        Add BatchNorm after each hidden Dense, which then has no bias (BN's ``beta``
        takes its role; the bias gradient would be identically zero).
    dropout
        Dropout probability after each hidden activation (0 for none).
    seed
        Weights come from one stream and dropout seeds from another, both derived from
        ``seed``, so the weights do not depend on ``batchnorm`` or ``dropout``.
    dtype
        Parameter dtype.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str | Callable[[Any], TensorVariable] = "relu",
        init: str | float = "he",
        batchnorm: bool = False,
        dropout: float = 0.0,
        seed: int = 0,
        dtype: str = "float32",
        name: str = "mlp",
    ):
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"MLP sizes must be >= 2 positive widths, got {sizes}")
        weight_seq, dropout_seq = np.random.SeedSequence(int(seed)).spawn(2)
        weight_rng = np.random.default_rng(weight_seq)
        dropout_seeds = dropout_seq.spawn(len(sizes))
        act_name = Activation(activation).name  # validates it even with no hidden layer
        layers: list[Layer] = []
        last = len(sizes) - 2
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            hidden = i < last
            bias = not (hidden and batchnorm)
            layers.append(Dense(n_in, n_out, seed=weight_rng, init=init, bias=bias, dtype=dtype, name=f"dense{i}"))
            if hidden:
                if batchnorm:
                    layers.append(BatchNorm(n_out, dtype=dtype, name=f"bn{i}"))
                layers.append(Activation(activation, name=f"{act_name}{i}"))
                if dropout:
                    seed_i = int(dropout_seeds[i].generate_state(1)[0])
                    layers.append(Dropout(dropout, seed=seed_i, name=f"dropout{i}"))
        super().__init__(layers, name)
        self.sizes = sizes
        self.dtype = _check_float_dtype(dtype)
