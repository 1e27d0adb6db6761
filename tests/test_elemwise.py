"""symopt._elemwise: the flat-loop rewrite on broadcast blocks and the exact float32 comparison."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

from symopt import _elemwise
import importlib

function_module = importlib.import_module("symopt.function")
from symopt.function import function

needs_c = pytest.mark.skipif(not function_module._c_available(), reason="no C compiler or BLAS")


def _flat_nodes(fn):
    return [n for n in fn.maker.fgraph.apply_nodes if isinstance(n.op, _elemwise.ContiguousElemwise)]


@pytest.fixture(scope="module")
def stacked_fn():
    """A seed-stacked loop: per-seed scalar (S,1,1), per-position (1,B,n), full (S,B,n), scalar."""
    k = pt.tensor("k", dtype="float64", shape=(None, 1, 1))
    idx = pt.tensor("idx", dtype="float64", shape=(1, None, None))
    x = pt.tensor3("x", dtype="float64")
    s = pt.scalar("s", dtype="float64")
    out = pt.switch(x * k + idx >= s, x - idx, k * s)
    return function([k, idx, x, s], out, mode="CVM")


@needs_c
def test_broadcast_blocks_take_the_flat_loop(stacked_fn):
    assert _flat_nodes(stacked_fn)


@needs_c
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
def test_broadcast_blocks_equal_numpy(stacked_fn, layout):
    rng = np.random.default_rng(0)
    S, B, n = 3, 5, 7
    # Multiples of 1/8 in a small range: every sum and product is exact, so equality is exact.
    k = rng.integers(-4, 5, (S, 1, 1)) / 8.0
    idx = rng.integers(-8, 9, (1, B, n)) / 8.0
    x = rng.integers(-8, 9, (S, B, n)) / 8.0
    if layout == "transposed":  # the generic loop
        x = np.ascontiguousarray(x.transpose(0, 2, 1)).transpose(0, 2, 1)
    elif layout == "strided":
        x = np.repeat(x, 2, axis=2)[:, :, ::2]
    s = 0.25
    want = np.where(x * k + idx >= s, x - idx, k * s)
    np.testing.assert_array_equal(stacked_fn(k, idx, x, s), want)


@needs_c
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lone_maximum_with_a_scalar_takes_the_flat_loop(dtype):
    x = pt.tensor3("x", dtype=dtype)
    fn = function([x], pt.maximum(x, 0), mode="CVM")
    assert _flat_nodes(fn)
    values = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, -1.5, 2.5, 1e-30] * 6, dtype=dtype).reshape(2, 3, 8)
    np.testing.assert_array_equal(fn(values), np.maximum(values, 0))  # NaN stays NaN


@needs_c
@pytest.mark.parametrize("p", [0.2, 0.7, 0.1, 0.5, 1 / 3, 0.9999999])
def test_float32_comparison_with_a_constant_is_exact(p):
    """``x >= p`` for float32 x must give what PyTensor's C code gives: x widened to double
    and compared with the double the compiler reads from the printed literal."""
    x = pt.vector("x", dtype="float32")
    const = np.float32(p)
    fn = function([x], pt.switch(x >= const, x * np.float32(2), np.float32(0)), mode="CVM")
    (node,) = _flat_nodes(fn)
    assert any(isinstance(n.op, _elemwise.Float32AtLeast) for n in node.op.scalar_op.fgraph.apply_nodes)
    bound = float(str(const))  # the C literal PyTensor prints, as the compiler reads it
    centre = np.float32(bound)
    # Every float32 within 40 ulps of the bound, both sides, plus specials.
    up = [centre]
    down = [centre]
    for _ in range(40):
        up.append(np.nextafter(up[-1], np.float32(np.inf)))
        down.append(np.nextafter(down[-1], np.float32(-np.inf)))
    values = np.array(down[::-1] + up + [np.nan, np.inf, -np.inf, 0.0, 1.0], dtype=np.float32)
    want = np.where(values.astype(np.float64) >= bound, values * np.float32(2), np.float32(0))
    np.testing.assert_array_equal(fn(values), want)


def test_float32_at_least_threshold_is_the_smallest_float32_not_below_the_literal():
    x = pytensor.scalar.float32("x")
    for p in (0.2, 0.7, 0.1, 1 / 3):
        node = pytensor.scalar.basic.ge(x, pytensor.scalar.constant(np.float32(p))).owner
        op = _elemwise._float32_at_least(node)
        bound = float(str(np.float32(p)))
        t = np.float32(op.threshold)
        assert float(t) >= bound and float(np.nextafter(t, np.float32(-np.inf))) < bound
