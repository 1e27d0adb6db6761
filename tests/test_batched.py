"""BatchedGemm (symopt._batched) against NumPy float64 products, on every backend that implements it."""

from __future__ import annotations

import itertools

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import symopt  # noqa: F401  (configures the BLAS the C backend links)
from symopt._batched import BatchedGemm, batched_gemm
from symopt.function import resolve_mode

S, M, K, N = 3, 5, 7, 4
# (a transposed, b transposed): the operand is built as the transpose of a stored
# (S, cols, rows) array, so BLAS reads it column-major through its transpose flag.
TRANSPOSES = list(itertools.product([False, True], repeat=2))
MODES = ["CVM", "FAST_RUN", "NUMBA"]


def _operands(dtype: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "a": rng.standard_normal((S, M, K)).astype(dtype),
        "at": rng.standard_normal((S, K, M)).astype(dtype),  # a = at^T
        "b": rng.standard_normal((S, K, N)).astype(dtype),
        "bt": rng.standard_normal((S, N, K)).astype(dtype),  # b = bt^T
        "c": rng.standard_normal((S, N)).astype(dtype),
        "wide": rng.standard_normal((S, M, 2 * K)).astype(dtype),  # a = wide[:, :, ::2]: no unit stride
    }


def _bound(a: np.ndarray, b: np.ndarray, c: np.ndarray | None, dtype: str) -> np.ndarray:
    """Forward error bound of a float ``dtype`` product, elementwise: K eps (|a| |b| + |c|) (Higham, 3.5)."""
    eps = np.finfo(dtype).eps
    mag = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    if c is not None:
        mag = mag + np.abs(c.astype(np.float64))[:, None, :]
    return (a.shape[-1] + 2) * eps * mag + np.finfo(dtype).tiny


def _symbolic(dtype: str):
    names = ["a", "at", "b", "bt", "c", "wide"]
    shapes = {"c": 2}
    return {n: pt.tensor(n, dtype=dtype, shape=(None,) * shapes.get(n, 3)) for n in names}


def _pick(v, ta: bool, tb: bool):
    a = v["at"].transpose(0, 2, 1) if ta else v["a"]
    b = v["bt"].transpose(0, 2, 1) if tb else v["b"]
    return a, b


@pytest.fixture(scope="module", params=[(m, d) for m in MODES for d in ("float32", "float64")], ids=str)
def compiled(request):
    """One compiled function per (mode, dtype): every transpose combination, with and
    without bias, the copy path, and the gradients of a weighted sum of the outputs."""
    mode, dtype = request.param
    v = _symbolic(dtype)
    outs, grads = [], []
    w = [pt.tensor(f"w{i}", dtype=dtype, shape=(None,) * 3) for i in range(len(TRANSPOSES))]
    for (ta, tb), wi in zip(TRANSPOSES, w):
        a, b = _pick(v, ta, tb)
        z = batched_gemm(a, b, v["c"])
        outs += [z, batched_gemm(a, b)]
        # d/d(a, b, c) of sum(w * z): G = w, so dA = w B^T, dB = A^T w, dc = sum_rows w.
        grads += pytensor.grad((wi * z).sum(), [v["at"] if ta else v["a"], v["bt"] if tb else v["b"], v["c"]])
    outs.append(batched_gemm(v["wide"][:, :, ::2], v["b"], v["c"]))
    inputs = [v[n] for n in ("a", "at", "b", "bt", "c", "wide")] + w
    fn = pytensor.function(inputs, outs + grads, mode=resolve_mode(mode), on_unused_input="ignore")
    return mode, dtype, fn


def _call(fn, dtype: str):
    ops = _operands(dtype)
    rng = np.random.default_rng(1)
    ws = [rng.standard_normal((S, M, N)).astype(dtype) for _ in TRANSPOSES]
    args = [ops[n] for n in ("a", "at", "b", "bt", "c", "wide")] + ws
    return ops, ws, fn(*args)


def test_values_every_transpose(compiled):
    mode, dtype, fn = compiled
    ops, _, out = _call(fn, dtype)
    f64 = {k: v.astype(np.float64) for k, v in ops.items()}
    for i, (ta, tb) in enumerate(TRANSPOSES):
        a = ops["at"].transpose(0, 2, 1) if ta else ops["a"]
        b = ops["bt"].transpose(0, 2, 1) if tb else ops["b"]
        ref = np.einsum("smk,skn->smn", a.astype(np.float64), b.astype(np.float64))
        with_bias, without = out[2 * i], out[2 * i + 1]
        assert with_bias.dtype == dtype and with_bias.shape == (S, M, N)
        assert np.all(np.abs(with_bias - (ref + f64["c"][:, None, :])) <= _bound(a, b, ops["c"], dtype)), (mode, ta, tb)
        assert np.all(np.abs(without - ref) <= _bound(a, b, None, dtype)), (mode, ta, tb)
    a = ops["wide"][:, :, ::2]
    ref = np.einsum("smk,skn->smn", a.astype(np.float64), f64["b"]) + f64["c"][:, None, :]
    assert np.all(np.abs(out[2 * len(TRANSPOSES)] - ref) <= _bound(a, ops["b"], ops["c"], dtype))


def test_gradients_every_transpose(compiled):
    mode, dtype, fn = compiled
    ops, ws, out = _call(fn, dtype)
    grads = out[2 * len(TRANSPOSES) + 1 :]
    eps = np.finfo(dtype).eps
    for i, (ta, tb) in enumerate(TRANSPOSES):
        a = (ops["at"].transpose(0, 2, 1) if ta else ops["a"]).astype(np.float64)
        b = (ops["bt"].transpose(0, 2, 1) if tb else ops["b"]).astype(np.float64)
        w = ws[i].astype(np.float64)
        ga = np.einsum("smn,skn->smk", w, b)  # G B^T
        gb = np.einsum("smk,smn->skn", a, w)  # A^T G
        ga_bound = (N + 2) * eps * np.einsum("smn,skn->smk", np.abs(w), np.abs(b))
        gb_bound = (M + 2) * eps * np.einsum("smk,smn->skn", np.abs(a), np.abs(w))
        if ta:  # the gradient is with respect to the stored (S, K, M) array
            ga, ga_bound = ga.transpose(0, 2, 1), ga_bound.transpose(0, 2, 1)
        if tb:
            gb, gb_bound = gb.transpose(0, 2, 1), gb_bound.transpose(0, 2, 1)
        got_a, got_b, got_c = grads[3 * i : 3 * i + 3]
        assert got_a.dtype == dtype and got_b.dtype == dtype and got_c.dtype == dtype
        assert np.all(np.abs(got_a - ga) <= ga_bound + np.finfo(dtype).tiny), (mode, ta, tb)
        assert np.all(np.abs(got_b - gb) <= gb_bound + np.finfo(dtype).tiny), (mode, ta, tb)
        gc = w.sum(axis=1)
        assert np.all(np.abs(got_c - gc) <= (M + 2) * eps * np.abs(w).sum(axis=1)), (mode, ta, tb)


def test_gradient_graph_is_batched_gemm_on_views():
    """The backward products are BatchedGemm nodes reading transposed views (no copy op in between)."""
    a, b = pt.tensor3("a", dtype="float32"), pt.tensor3("b", dtype="float32")
    c = pt.matrix("c", dtype="float32")
    z = batched_gemm(a, b, c)
    fn = pytensor.function([a, b, c], pytensor.grad((z * z).sum(), [a, b]), mode=resolve_mode("CVM"))
    nodes = fn.maker.fgraph.toposort()
    gemms = [n for n in nodes if isinstance(n.op, BatchedGemm)]
    assert len(gemms) == 3
    for node in gemms:
        for x in node.inputs:
            owner = x.owner
            # Either a graph input, another gemm's output, an elementwise result, or a transpose view of one.
            assert owner is None or not owner.op.__class__.__name__.lower().startswith(("copy", "alloc")), owner


@pytest.mark.parametrize("mode", ["CVM", "NUMBA"])
def test_shape_mismatch_is_an_error(mode):
    a, b = pt.tensor3("a", dtype="float64"), pt.tensor3("b", dtype="float64")
    fn = pytensor.function([a, b], batched_gemm(a, b), mode=resolve_mode(mode))
    with pytest.raises(ValueError, match="BatchedGemm"):
        fn(np.zeros((2, 3, 4)), np.zeros((2, 5, 6)))


def test_make_node_errors():
    with pytest.raises(TypeError, match="3-d"):
        batched_gemm(pt.matrix(dtype="float64"), pt.tensor3(dtype="float64"))
    with pytest.raises(TypeError, match="float32 or all float64"):
        batched_gemm(pt.tensor3(dtype="float32"), pt.tensor3(dtype="float64"))
    with pytest.raises(TypeError, match="bias must be 2-d"):
        batched_gemm(pt.tensor3(dtype="float64"), pt.tensor3(dtype="float64"), pt.vector(dtype="float64"))


def test_jax_backend():
    pytest.importorskip("jax")
    ops = _operands("float32")
    v = _symbolic("float32")
    a, b = _pick(v, True, False)
    fn = pytensor.function([v["at"], v["b"], v["c"]], [batched_gemm(a, b, v["c"]), batched_gemm(a, b)],
                           mode=resolve_mode("JAX"))
    with_bias, without = fn(ops["at"], ops["b"], ops["c"])
    a_val = ops["at"].transpose(0, 2, 1)
    ref = np.einsum("smk,skn->smn", a_val.astype(np.float64), ops["b"].astype(np.float64))
    assert np.all(np.abs(np.asarray(with_bias) - (ref + ops["c"][:, None, :])) <= _bound(a_val, ops["b"], ops["c"], "float32"))
    assert np.all(np.abs(np.asarray(without) - ref) <= _bound(a_val, ops["b"], None, "float32"))
