r"""Counter-based uniforms for dropout masks: a hash of (key, step, element index).

A dropout mask drawn from a generator needs the generator's state threaded through
the graph, a random-variable node per draw and, under Numba, an object-mode call;
the draws then cost more than the rest of a small MLP's step. A counter-based
generator (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011:
Philox, Threefry) instead computes element ``i`` of step ``t``'s mask as a pure
function of ``(key, t, i)``: no state but the step counter, and the draw is an
ordinary scalar op that PyTensor's elementwise fusion puts into the same loop as the
masking ``switch(u >= p, x * scale, 0)``.

The function is SplitMix64 (Steele, Lea & Flood, "Fast splittable pseudorandom
number generators", OOPSLA 2014), whose ``k``-th output from seed ``s`` is
``mix64(s + k * GAMMA)`` mod 2**64. Element ``i`` of step ``t`` is output number
``k = (t + 1) * 2**32 + i + 1`` of the SplitMix64 stream seeded with ``key``:

.. math::

    h(\text{key}, t, i) = \operatorname{mix64}\bigl(\text{key} + ((t + 1)\,2^{32} + i + 1)\,\gamma\bigr)
    \pmod{2^{64}},

with :math:`\gamma` = ``0x9E3779B97F4A7C15`` (the golden-ratio increment) and
``mix64`` SplitMix64's finaliser (David Stafford's "Mix13" variant of MurmurHash3's
``fmix64``): ``z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27;
z *= 0x94D049BB133111EB; z ^= z >> 31``. Each step owns a block of 2**32 - 1
consecutive outputs of the key's stream, so within a key no two (step, element)
pairs share an output for ``t < 2**32 - 1`` steps and ``i < 2**32 - 1`` elements (of a
seed's slice of one layer). SplitMix64's output sequence passes TestU01's BigCrush
(Steele et al. 2014); the finaliser is a bijection with full avalanche, so
neighbouring elements and steps are decorrelated. Keys are random 63-bit words;
two keys' streams share outputs only if their difference is ``d * GAMMA`` with ``d``
within a block of a used step, with probability about ``2 n T / 2**64`` per pair
(1e-11 for ``n`` = 12,800 units and ``T`` = 10,000 steps). ``tests/test_nn.py``
checks the keep fraction, neighbour, step and seed correlations and a chi-square of
the uniforms against a NumPy transcription of this equation.

The uniform is the top bits of ``h``: ``(h >> 40) * 2**-24`` in float32 and
``(h >> 11) * 2**-53`` in float64, exactly representable and in ``[0, 1)``.

This is not Philox or Threefry (10 or 20 rounds of 32-bit arithmetic per pair of
words): one 64-bit multiply-add and one mix per element is several times cheaper in
the scalar C loop of the CVM backend and vectorises in Numba's and in symopt's flat C
loop (:mod:`symopt._elemwise`; AVX-512 has 64-bit multiplies), and SplitMix64's
statistical record is as good for this use (masks, not cryptography).
"""

from __future__ import annotations

import functools
from hashlib import sha256
from typing import Any

import numpy as np
import pytensor.tensor as pt
from pytensor import config
from pytensor.scalar.basic import ScalarOp, float32, float64, specific_out
from pytensor.tensor.elemwise import Elemwise
from pytensor.tensor.variable import TensorVariable

__all__ = ["GAMMA", "MIX1", "MIX2", "mix64", "counter_uniform", "dropout_uniform", "key_from_seed"]

#: SplitMix64's increment (2**64 / golden ratio, odd) and its finaliser's multipliers.
GAMMA = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
_MASK = (1 << 64) - 1
# Bumped whenever the hash changes: compiled C and Numba caches must not reuse old code.
_VERSION = 3


def mix64(z: int) -> int:
    """SplitMix64's finaliser on a Python int (mod 2**64): the reference the compiled versions follow."""
    z &= _MASK
    z = ((z ^ (z >> 30)) * MIX1) & _MASK
    z = ((z ^ (z >> 27)) * MIX2) & _MASK
    return z ^ (z >> 31)


def _hash(key: int, counter: int, index: int) -> int:
    return mix64((key + (((counter + 1) << 32) + index + 1) * GAMMA) & _MASK)


class CounterUniform(ScalarOp):
    """Scalar op ``(key, counter, index) -> u`` in ``[0, 1)``, int64 inputs (see the module docstring).

    C code for the C backends, a Numba lowering (registered on first use), and a
    Python ``impl`` for the Python backend; no gradient (its inputs are integers).
    """

    nin = 3

    def impl(self, key: Any, counter: Any, index: Any) -> Any:
        h = _hash(int(key), int(counter), int(index))
        dtype = self.output_types_preference.spec[0].dtype
        if dtype == "float32":
            return np.float32(h >> 40) * np.float32(2.0**-24)
        return np.float64(h >> 11) * np.float64(2.0**-53)

    def L_op(self, inputs: Any, outputs: Any, output_gradients: Any) -> Any:
        return [x.zeros_like(dtype=config.floatX) for x in inputs]

    def c_support_code(self, **kwargs: Any) -> str:
        return f"""
#ifndef SYMOPT_MIX64
#define SYMOPT_MIX64
static inline npy_uint64 symopt_mix64(npy_uint64 z) {{
    z = (z ^ (z >> 30)) * {MIX1:#x}ULL;
    z = (z ^ (z >> 27)) * {MIX2:#x}ULL;
    return z ^ (z >> 31);
}}
#endif
"""

    def c_code(self, node: Any, name: str, inputs: Any, outputs: Any, sub: Any) -> str:
        key, counter, index = inputs
        (z,) = outputs
        dtype = node.outputs[0].type.dtype
        if dtype == "float32":
            to_unit = "(npy_float32)(npy_int64)(h_ >> 40) * 5.9604644775390625e-08f"  # signed: a cheaper conversion
        else:
            to_unit = "(npy_float64)(npy_int64)(h_ >> 11) * 1.1102230246251565e-16"
        return f"""{{
    npy_uint64 k_ = (((npy_uint64){counter} + 1ULL) << 32) + (npy_uint64){index} + 1ULL;
    npy_uint64 h_ = symopt_mix64((npy_uint64){key} + k_ * {GAMMA:#x}ULL);
    {z} = {to_unit};
}}"""

    def c_code_cache_version(self) -> tuple[int, ...]:
        return (_VERSION,)


_OPS = {
    "float32": CounterUniform(specific_out(float32), name="counter_uniform32"),
    "float64": CounterUniform(specific_out(float64), name="counter_uniform64"),
}
_ELEMWISE = {dtype: Elemwise(op) for dtype, op in _OPS.items()}


def counter_uniform(key: Any, counter: Any, index: Any, dtype: str = "float32") -> TensorVariable:
    """Elementwise ``u = hash(key, counter, index)`` in ``[0, 1)`` of ``dtype`` (inputs broadcast).

    ``key``, ``counter`` and ``index`` are cast to int64 (read as unsigned 64-bit words).
    """
    if dtype not in _ELEMWISE:
        raise TypeError(f"counter_uniform: dtype must be 'float32' or 'float64', got {dtype!r}")
    _register_numba()  # here, not at import: it imports numba (about a second)
    args = [pt.cast(pt.as_tensor_variable(v), "int64") for v in (key, counter, index)]
    return _ELEMWISE[dtype](*args)


def dropout_uniform(key: Any, counter: Any, shape: Any, dtype: str, lead: int = 0) -> TensorVariable:
    """Uniforms for a tensor of ``shape``: element ``i`` (row-major flat index over the
    last ``len(shape) - lead`` axes) gets ``hash(key, counter, i)``.

    The flat index is built from one small ``arange`` per axis times its stride, so the
    multiply-adds fuse into the elementwise loop instead of filling an index array.
    ``lead`` leading axes (the seed axis of a stack) are left out of the index: there
    ``key`` varies (it broadcasts against them) and every slice sees the indices a single
    run's tensor of ``shape[lead:]`` sees.
    """
    shape = list(shape)
    ndim = len(shape)
    index: Any = None
    stride: Any = None
    for axis in range(ndim - 1, lead - 1, -1):
        ax = pt.arange(shape[axis], dtype="int64")
        pattern = ["x"] * ndim
        pattern[axis] = 0
        term = ax.dimshuffle(pattern)
        term = term if stride is None else term * stride
        index = term if index is None else index + term
        stride = pt.cast(shape[axis], "int64") if stride is None else stride * shape[axis]
    if index is None:  # a 0-d tensor
        index = pt.zeros((), dtype="int64")
    return counter_uniform(key, counter, index, dtype)


def key_from_seed(seed: int | np.random.Generator) -> np.int64:
    """A 63-bit key: hashed from an int seed (``SeedSequence``), drawn from a child of a Generator.

    A Generator is not advanced: a child spawned from it draws the key, so two layers
    seeded from one Generator get different keys (as ``Generator.spawn`` gives
    independent streams).
    """
    if isinstance(seed, np.random.Generator):
        child = seed.spawn(1)[0]
        return np.int64(child.integers(0, 2**63, dtype=np.int64))
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int or a numpy Generator, got {seed!r}")
    word = np.random.SeedSequence(int(seed)).generate_state(1, np.uint64)[0]
    return np.int64(int(word) >> 1)


@functools.cache
def _register_numba() -> None:
    try:
        import pytensor.link.numba.dispatch.scalar as numba_scalar
        from pytensor.link.numba.dispatch import basic as numba_basic
    except ImportError:  # pragma: no cover - numba is a PyTensor dependency
        return

    gamma, mix1, mix2 = np.uint64(GAMMA), np.uint64(MIX1), np.uint64(MIX2)
    one, s11, s27, s30, s31, s32, s40 = (np.uint64(k) for k in (1, 11, 27, 30, 31, 32, 40))

    @numba_basic.numba_njit
    def mix(z):
        z = (z ^ (z >> s30)) * mix1
        z = (z ^ (z >> s27)) * mix2
        return z ^ (z >> s31)

    @numba_basic.numba_njit
    def uniform32(key, counter, index):
        h = mix(np.uint64(key) + (((np.uint64(counter) + one) << s32) + np.uint64(index) + one) * gamma)
        return np.float32(h >> s40) * np.float32(2.0**-24)

    @numba_basic.numba_njit
    def uniform64(key, counter, index):
        h = mix(np.uint64(key) + (((np.uint64(counter) + one) << s32) + np.uint64(index) + one) * gamma)
        return np.float64(h >> s11) * np.float64(2.0**-53)

    def funcify(op: CounterUniform, node: Any = None, **kwargs: Any) -> Any:
        dtype = op.output_types_preference.spec[0].dtype
        fn = uniform32 if dtype == "float32" else uniform64
        return fn, sha256(f"symopt.CounterUniform:{dtype}:{_VERSION}".encode()).hexdigest()

    register = getattr(numba_scalar, "register_scalar_funcify", None)
    if register is None:
        register = getattr(numba_basic, "register_funcify_and_cache_key", None)
    if register is not None:
        register(CounterUniform)(funcify)
    else:  # older PyTensor: numba_funcify returns the function alone
        numba_basic.numba_funcify.register(CounterUniform)(lambda op, node=None, **kw: funcify(op, node)[0])
