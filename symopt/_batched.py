r"""``BatchedGemm``: the seed-stacked dense layer as one BLAS call per seed, without copies.

A :class:`~symopt.seeds.SeedStack` dense layer computes, for every seed ``s``,

.. math::

    Z_s = A_s B_s + \mathbf{1}\, c_s^\top, \qquad A_s \in \mathbb{R}^{M\times K},\;
    B_s \in \mathbb{R}^{K\times N},\; c_s \in \mathbb{R}^{N},

and its gradient needs :math:`\partial A_s = G_s B_s^\top` and
:math:`\partial B_s = A_s^\top G_s` (:math:`G_s = \partial Z_s`), :math:`\partial c_s =
G_s^\top \mathbf{1}`. PyTensor's ``matmul`` of 3-d tensors becomes ``BatchedDot``,
whose C code copies every operand that is not C-contiguous (the transposed views of
both gradient products: the S = 30 stacked step copied 18 MB per step) and whose bias
is a separate broadcast add over the output.

:class:`BatchedGemm` writes the bias rows into the (C-contiguous) output, then calls
``?gemm`` once per seed with ``beta = 1`` (``beta = 0`` without bias). Each operand's
layout is read from its strides at run time: a row-major slice (unit column stride) is
passed as is, a column-major one (unit row stride: a transposed view such as
``B.transpose(0, 2, 1)``) as the same memory with the BLAS transpose flag, and only an
operand with neither unit stride is copied. The gradient is built from
:class:`BatchedGemm` itself on transposed *views*, so the backward products copy
nothing either.

Three implementations compute the same products: C (the BLAS PyTensor links, see
:mod:`symopt.function`), Numba (SciPy's BLAS through Numba's ``numba_xxgemm``) and JAX
(``jnp.matmul``); the Numba and JAX ones are registered by :func:`register_backends`
when a mode that needs them is built, so ``import symopt`` imports neither.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Apply
from pytensor.link.c.op import COp
from pytensor.tensor.type import TensorType
from pytensor.tensor.variable import TensorVariable

__all__ = ["BatchedGemm", "batched_gemm", "register_backends"]

# Bumped whenever the C code or the Numba function changes.
_VERSION = 1


def _ldflags(**kwargs: Any) -> list[str]:
    try:
        from pytensor.tensor.blas._core import ldflags
    except ImportError:  # PyTensor < 3.3: blas is one module
        from pytensor.tensor.blas import ldflags
    return ldflags(**kwargs)


def _blas_headers() -> Any:
    try:
        from pytensor.tensor.blas.c_code import blas_headers
    except ImportError:  # PyTensor < 3.3
        from pytensor.tensor import blas_headers
    return blas_headers


class BatchedGemm(COp):
    """``out[s] = a[s] @ b[s] (+ bias[s])`` for 3-d ``a`` ``(S, M, K)``, ``b`` ``(S, K, N)``
    and an optional ``bias`` ``(S, N)`` added to every row; float32 or float64, one dtype.

    Operands may be any strided views (transposes included): see the module docstring.
    """

    __props__ = ()

    def make_node(self, a: Any, b: Any, *bias: Any) -> Apply:
        a, b = pt.as_tensor_variable(a), pt.as_tensor_variable(b)
        inputs = [a, b, *(pt.as_tensor_variable(c) for c in bias)]
        if len(inputs) > 3:
            raise TypeError(f"BatchedGemm takes a, b and at most one bias, got {len(inputs)} inputs")
        if a.ndim != 3 or b.ndim != 3:
            raise TypeError(f"BatchedGemm: a and b must be 3-d (seed, rows, cols), got {a.ndim}-d and {b.ndim}-d")
        if len(inputs) == 3 and inputs[2].ndim != 2:
            raise TypeError(f"BatchedGemm: bias must be 2-d (seed, cols), got {inputs[2].ndim}-d")
        dtypes = {x.type.dtype for x in inputs}
        if len(dtypes) != 1 or dtypes.pop() not in ("float32", "float64"):
            raise TypeError(f"BatchedGemm: operands must all be float32 or all float64, got {[x.dtype for x in inputs]}")

        def dim(*static: int | None) -> int | None:
            known = {d for d in static if d is not None}
            if len(known) > 1:
                raise ValueError(f"BatchedGemm: static shapes disagree: a {a.type.shape}, b {b.type.shape}")
            return known.pop() if known else None

        seeds = dim(a.type.shape[0], b.type.shape[0], *(c.type.shape[0] for c in inputs[2:]))
        dim(a.type.shape[2], b.type.shape[1])
        cols = dim(b.type.shape[2], *(c.type.shape[1] for c in inputs[2:]))
        out = TensorType(a.type.dtype, shape=(seeds, a.type.shape[1], cols))()
        return Apply(self, inputs, [out])

    def perform(self, node: Apply, inputs: Any, output_storage: Any) -> None:
        a, b, *bias = inputs
        if a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1] or (bias and bias[0].shape != (a.shape[0], b.shape[2])):
            raise ValueError(f"BatchedGemm: shapes a {a.shape}, b {b.shape}, bias {[c.shape for c in bias]} do not match")
        out = np.matmul(a, b)
        if bias:
            out += bias[0][:, None, :]
        output_storage[0][0] = out

    def infer_shape(self, *args: Any) -> list[tuple[Any, ...]]:
        # (fgraph, node, shapes) before PyTensor 3.3, (node, shapes) since.
        shapes = args[-1]
        (s, m, _), (_, _, n) = shapes[0], shapes[1]
        return [(s, m, n)]

    def pullback(self, inputs: Any, outputs: Any, output_grads: Any) -> list[TensorVariable]:
        a, b, *bias = inputs
        (g,) = output_grads
        # Both products read transposed views: BLAS flags, no copies.
        grads = [batched_gemm(g, b.transpose(0, 2, 1)), batched_gemm(a.transpose(0, 2, 1), g)]
        if bias:
            grads.append(g.sum(axis=1))
        return grads

    if not hasattr(COp, "pullback"):  # PyTensor < 3.3 calls L_op
        L_op = pullback

    # ---- C implementation: the BLAS PyTensor links -------------------------------------
    def c_support_code(self, **kwargs: Any) -> str:
        return _blas_headers().blas_header_text() + _C_SUPPORT

    def c_libraries(self, **kwargs: Any) -> list[str]:
        return _ldflags()

    def c_compile_args(self, **kwargs: Any) -> list[str]:
        return _ldflags(libs=False, flags=True)

    def c_lib_dirs(self, **kwargs: Any) -> list[str]:
        return _ldflags(libs=False, libs_dir=True)

    def c_header_dirs(self, **kwargs: Any) -> list[str]:
        return _ldflags(libs=False, include_dir=True)

    def c_code(self, node: Apply, name: str, inputs: Any, outputs: Any, sub: Any) -> str:
        if not self.c_libraries():
            raise NotImplementedError("BatchedGemm's C code needs a BLAS (blas__ldflags)")
        a, b, *bias = inputs
        (z,) = outputs
        fail = sub["fail"]
        dtype = node.outputs[0].type.dtype
        ctype, gemm, npy = ("float", "sgemm_", "NPY_FLOAT32") if dtype == "float32" else ("double", "dgemm_", "NPY_FLOAT64")
        c = bias[0] if bias else "NULL"
        has_bias = 1 if bias else 0
        return f"""
{{
    const npy_intp S = PyArray_DIMS({a})[0], M = PyArray_DIMS({a})[1], K = PyArray_DIMS({a})[2];
    const npy_intp N = PyArray_DIMS({b})[2];
    if (PyArray_DIMS({b})[0] != S || PyArray_DIMS({b})[1] != K
        || ({has_bias} && (PyArray_DIMS((PyArrayObject*){c})[0] != S || PyArray_DIMS((PyArrayObject*){c})[1] != N))) {{
        PyErr_Format(PyExc_ValueError, "BatchedGemm: shapes a (%ld, %ld, %ld) and b (%ld, %ld, %ld) (and bias) do not match",
                     (long)S, (long)M, (long)K, (long)PyArray_DIMS({b})[0], (long)PyArray_DIMS({b})[1], (long)N);
        {fail}
    }}
    if (M > INT_MAX || N > INT_MAX || K > INT_MAX) {{
        PyErr_SetString(PyExc_ValueError, "BatchedGemm: a dimension exceeds the BLAS int range");
        {fail}
    }}
    if (!{z} || PyArray_NDIM({z}) != 3 || PyArray_DIMS({z})[0] != S || PyArray_DIMS({z})[1] != M
        || PyArray_DIMS({z})[2] != N || !PyArray_IS_C_CONTIGUOUS({z})) {{
        npy_intp dims[3] = {{S, M, N}};
        Py_XDECREF({z});
        {z} = (PyArrayObject*)PyArray_EMPTY(3, dims, {npy}, 0);
        if (!{z}) {{ {fail} }}
    }}
    PyArrayObject* a_ = {a};
    PyArrayObject* b_ = {b};
    symopt_operand oa = symopt_layout(M, K, PyArray_STRIDES(a_)[1], PyArray_STRIDES(a_)[2], sizeof({ctype}));
    symopt_operand ob = symopt_layout(K, N, PyArray_STRIDES(b_)[1], PyArray_STRIDES(b_)[2], sizeof({ctype}));
    // Neither unit stride (or an odd one): the only case that copies.
    if (!oa.ok) {{ a_ = PyArray_GETCONTIGUOUS({a}); if (!a_) {{ {fail} }} oa = symopt_layout(M, K, K * sizeof({ctype}), sizeof({ctype}), sizeof({ctype})); }}
    else Py_INCREF(a_);
    if (!ob.ok) {{ b_ = PyArray_GETCONTIGUOUS({b}); if (!b_) {{ Py_DECREF(a_); {fail} }} ob = symopt_layout(K, N, N * sizeof({ctype}), sizeof({ctype}), sizeof({ctype})); }}
    else Py_INCREF(b_);
    const char* pa = (const char*)PyArray_DATA(a_);
    const char* pb = (const char*)PyArray_DATA(b_);
    const npy_intp sa = PyArray_STRIDES(a_)[0], sb = PyArray_STRIDES(b_)[0];
    {ctype}* pz = ({ctype}*)PyArray_DATA({z});
    const {ctype} one = 1, beta = {has_bias} ? 1 : 0;
    int m = (int)M, n = (int)N, k = (int)K, ldz = n > 1 ? n : 1;
    for (npy_intp s = 0; s < S; ++s) {{
        {ctype}* zs = pz + s * M * N;
        if ({has_bias}) {{
            const char* cs = (const char*)PyArray_DATA((PyArrayObject*){c}) + s * PyArray_STRIDES((PyArrayObject*){c})[0];
            const npy_intp cstride = PyArray_STRIDES((PyArrayObject*){c})[1];
            for (npy_intp j = 0; j < N; ++j) zs[j] = *(const {ctype}*)(cs + j * cstride);
            for (npy_intp i = 1; i < M; ++i) memcpy(zs + i * N, zs, N * sizeof({ctype}));
        }}
        if (M == 0 || N == 0) continue;
        if (K == 0) {{
            if (!{has_bias}) memset(zs, 0, M * N * sizeof({ctype}));
            continue;
        }}
        // Row-major Z_s is Z_s^T to column-major BLAS: Z_s^T = B_s^T A_s^T.
        {gemm}(&ob.trans, &oa.trans, &n, &m, &k, &one, (const {ctype}*)(pb + s * sb), &ob.ld,
               (const {ctype}*)(pa + s * sa), &oa.ld, &beta, zs, &ldz);
    }}
    Py_DECREF(a_);
    Py_DECREF(b_);
}}
"""

    def c_code_cache_version_apply(self, node: Apply) -> tuple[Any, ...]:
        return (_VERSION, len(node.inputs), _blas_headers().blas_header_version())


_C_SUPPORT = r"""
#ifndef SYMOPT_BATCHED_LAYOUT
#define SYMOPT_BATCHED_LAYOUT
#include <limits.h>
#include <string.h>
typedef struct { int ok; char trans; int ld; } symopt_operand;
/* How column-major BLAS reads X^T for an R x C matrix X with byte strides (sr, sc):
   a row-major X is X^T column-major ('N', ld = sr); a column-major X (a transposed
   view) is X itself column-major, so X^T is 'T' with ld = sc. A dimension of extent 1
   leaves its stride free. */
static symopt_operand symopt_layout(npy_intp R, npy_intp C, npy_intp sr, npy_intp sc, npy_intp item) {
    symopt_operand o = {0, 'N', 1};
    const npy_intp r1 = R > 1 ? R : 1, c1 = C > 1 ? C : 1;
    if ((sc == item || C <= 1) && (R <= 1 || (sr > 0 && sr % item == 0 && sr / item >= c1 && sr / item <= INT_MAX))) {
        o.ok = 1; o.trans = 'N'; o.ld = (int)(R <= 1 ? c1 : sr / item);
    } else if ((sr == item || R <= 1) && (C <= 1 || (sc > 0 && sc % item == 0 && sc / item >= r1 && sc / item <= INT_MAX))) {
        o.ok = 1; o.trans = 'T'; o.ld = (int)(C <= 1 ? r1 : sc / item);
    }
    return o;
}
#endif
"""

batched_gemm_op = BatchedGemm()


def batched_gemm(a: Any, b: Any, bias: Any = None) -> TensorVariable:
    """``a @ b`` (+ ``bias[:, None, :]``) for stacks ``a`` ``(S, M, K)``, ``b`` ``(S, K, N)``, ``bias`` ``(S, N)``."""
    return batched_gemm_op(a, b) if bias is None else batched_gemm_op(a, b, bias)


@functools.cache
def register_backends(name: str) -> None:
    """Register BatchedGemm's implementation for the ``NUMBA`` or ``JAX`` backend (once).

    Called from :func:`symopt.function._build`, so importing symopt imports neither.
    """
    if name == "NUMBA":
        _register_numba()
    elif name == "JAX":
        _register_jax()


def _register_numba() -> None:
    from numba.np.linalg import _BLAS, ensure_blas
    from numba.np.numpy_support import from_dtype
    from pytensor.link.numba.dispatch import basic as numba_basic

    ensure_blas()
    kinds = {np.dtype("float32"): ord("s"), np.dtype("float64"): ord("d")}
    gemms = {dt: _BLAS().numba_xxgemm(from_dtype(dt)) for dt in kinds}
    N_, T_ = ord("n"), ord("t")

    def make(dtype: np.dtype, has_bias: bool) -> Any:
        gemm, kind = gemms[dtype], kinds[dtype]
        item = dtype.itemsize

        @numba_basic.numba_njit(inline="always")
        def layout(X):
            # (ok, trans, ld) of how column-major BLAS reads X^T (as the C code's symopt_layout).
            R, C = X.shape[0], X.shape[1]
            sr, sc = X.strides[0], X.strides[1]
            r1, c1 = max(R, 1), max(C, 1)
            if (sc == item or C <= 1) and (R <= 1 or (sr > 0 and sr % item == 0 and sr // item >= c1)):
                return True, N_, (c1 if R <= 1 else sr // item)
            if (sr == item or R <= 1) and (C <= 1 or (sc > 0 and sc % item == 0 and sc // item >= r1)):
                return True, T_, (r1 if C <= 1 else sc // item)
            return False, N_, 1

        @numba_basic.numba_njit
        def run(a, b, c):
            S, M, K = a.shape
            N = b.shape[2]
            if b.shape[0] != S or b.shape[1] != K:
                raise ValueError("BatchedGemm: shapes of a and b do not match")
            if has_bias and (c.shape[0] != S or c.shape[1] != N):
                raise ValueError("BatchedGemm: bias shape does not match")
            out = np.empty((S, M, N), dtype=dtype)
            one = np.ones(1, dtype=dtype)
            beta = np.ones(1, dtype=dtype) if has_bias else np.zeros(1, dtype=dtype)
            for s in range(S):
                zs = out[s]
                if has_bias:
                    for i in range(M):
                        zs[i, :] = c[s]
                if M == 0 or N == 0:
                    continue
                if K == 0:
                    if not has_bias:
                        zs[:, :] = 0
                    continue
                A, B = a[s], b[s]
                ok_a, ta, lda = layout(A)
                ok_b, tb, ldb = layout(B)
                if ok_a and ok_b:
                    # Row-major Z_s is Z_s^T to column-major BLAS: Z_s^T = B_s^T A_s^T.
                    gemm(kind, tb, ta, N, M, K, one.ctypes, B.ctypes, ldb, A.ctypes, lda, beta.ctypes, zs.ctypes,
                         max(N, 1))
                else:  # neither unit stride: the only case that copies
                    Ac, Bc = np.ascontiguousarray(A), np.ascontiguousarray(B)
                    gemm(kind, N_, N_, N, M, K, one.ctypes, Bc.ctypes, max(N, 1), Ac.ctypes, max(K, 1), beta.ctypes,
                         zs.ctypes, max(N, 1))
            return out

        if has_bias:

            @numba_basic.numba_njit
            def batched_gemm_numba(a, b, c):
                return run(a, b, c)

        else:
            empty = np.empty((0, 0), dtype=dtype)

            @numba_basic.numba_njit
            def batched_gemm_numba(a, b):
                return run(a, b, empty)

        return batched_gemm_numba

    def numba_funcify_batched_gemm(op: BatchedGemm, node: Apply, **kwargs: Any) -> Any:
        dtype = np.dtype(node.outputs[0].type.dtype)
        has_bias = len(node.inputs) == 3
        key = f"symopt.BatchedGemm:{dtype}:{has_bias}:{_VERSION}"
        return make(dtype, has_bias), key

    register = getattr(numba_basic, "register_funcify_and_cache_key", None)
    if register is not None:
        register(BatchedGemm)(numba_funcify_batched_gemm)
    else:  # older PyTensor: numba_funcify returns the function alone
        numba_basic.numba_funcify.register(BatchedGemm)(
            lambda op, node=None, **kw: numba_funcify_batched_gemm(op, node, **kw)[0]
        )


def _register_jax() -> None:
    import jax.numpy as jnp
    from pytensor.link.jax.dispatch import jax_funcify

    @jax_funcify.register(BatchedGemm)
    def jax_funcify_batched_gemm(op: BatchedGemm, node: Apply = None, **kwargs: Any) -> Any:
        if node is not None and len(node.inputs) == 3:

            def batched_gemm_bias(a, b, c):
                return jnp.matmul(a, b) + c[:, None, :]

            return batched_gemm_bias

        def batched_gemm_jax(a, b):
            return jnp.matmul(a, b)

        return batched_gemm_jax
