"""symopt.function: backend selection, the BLAS the C backend links, and the flat-loop rewrite."""

from __future__ import annotations

import functools
import importlib
import warnings
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.link.c.basic import CLinker
from pytensor.link.numba.linker import NumbaLinker
from pytensor.link.vm import VMLinker
from pytensor.tensor.blas import Dot22, Dot22Scalar, Gemm, Gemv

try:  # PyTensor 3.3: pytensor.tensor.blas is a package
    from pytensor.tensor.blas.blas_c import CGemv
except ImportError:  # PyTensor 3.0
    from pytensor.tensor.blas_c import CGemv

import symopt
from symopt import _elemwise
from symopt.function import DEFAULT_MODE, MODES, blas_info, function, resolve_mode

function_module = importlib.import_module("symopt.function")

needs_c = pytest.mark.skipif(not function_module._c_available(), reason="no C++ compiler or BLAS for the C backend")


@pytest.fixture(autouse=True)
def _no_symopt_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYMOPT_MODE", raising=False)


# ---------------------------------------------------------------- selection
def test_default_is_default_mode() -> None:
    assert DEFAULT_MODE in MODES
    default, named = resolve_mode(None), resolve_mode(DEFAULT_MODE)
    assert type(default.linker) is type(named.linker)


@needs_c
def test_c_modes_include_the_flat_loop_rewrite() -> None:
    mode = resolve_mode("CVM")
    assert isinstance(mode.linker, VMLinker) and mode.linker.use_cloop
    assert _elemwise.TAG in mode.provided_optimizer.include


@pytest.mark.parametrize(
    ("value", "linker"),
    [("NUMBA", NumbaLinker), ("numba", NumbaLinker), (" Numba ", NumbaLinker), ("C", CLinker), ("cvm", VMLinker)],
)
def test_symopt_mode_overrides_the_default(monkeypatch: pytest.MonkeyPatch, value: str, linker: type) -> None:
    if linker is not NumbaLinker and not function_module._c_available():
        pytest.skip("no C backend here")
    monkeypatch.setenv("SYMOPT_MODE", value)
    assert isinstance(resolve_mode(None).linker, linker)


def test_symopt_mode_fast_run_and_fast_compile_are_pytensors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYMOPT_MODE", "FAST_RUN")
    assert resolve_mode(None) is pytensor.compile.mode.get_mode("FAST_RUN")
    monkeypatch.setenv("SYMOPT_MODE", "fast_compile")
    assert resolve_mode(None) is pytensor.compile.mode.get_mode("FAST_COMPILE")


def test_bad_symopt_mode_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYMOPT_MODE", "fastest")
    with pytest.raises(ValueError, match=r"SYMOPT_MODE='fastest' is not a symopt backend; allowed values: C, CVM") as info:
        function([], pt.constant(1.0))
    for name in MODES:
        assert name in str(info.value)


def test_other_mode_names_pass_through_to_pytensor() -> None:
    assert resolve_mode("DebugMode") == "DebugMode"
    assert resolve_mode("numba") is not None


def test_mode_argument_beats_symopt_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYMOPT_MODE", "C")
    assert isinstance(resolve_mode("NUMBA").linker, NumbaLinker)
    mode = pytensor.compile.mode.Mode(linker="py", optimizer="fast_compile")
    assert resolve_mode(mode) is mode


def test_empty_symopt_mode_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYMOPT_MODE", "  ")
    assert type(resolve_mode(None).linker) is type(resolve_mode(DEFAULT_MODE).linker)


def test_without_c_backend_falls_back_to_numba_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(function_module, "_c_available", lambda: False)
    function_module._fallback_warning.cache_clear()
    with pytest.warns(RuntimeWarning, match="the CVM backend is unavailable .*compiling with NUMBA instead") as record:
        first = resolve_mode("CVM")
        second = resolve_mode("CVM")
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    assert isinstance(first.linker, NumbaLinker) and isinstance(second.linker, NumbaLinker)
    function_module._fallback_warning.cache_clear()


# ---------------------------------------------------------------- BLAS
@needs_c
def test_blas_is_configured_and_detects_a_core() -> None:
    info = blas_info()
    assert info["source"] in ("scipy-openblas32", "user", "pytensor")
    assert pytensor.config.blas__ldflags
    if info["source"] == "scipy-openblas32":
        assert "-lscipy_openblas" in pytensor.config.blas__ldflags
        assert "-Dsgemm_=scipy_sgemm_" in pytensor.config.blas__ldflags
        assert info["corename"]  # OpenBLAS's runtime CPU detection (DYNAMIC_ARCH)


def _assert_product_close(got: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """A BLAS product against the exact one (float64 of the inputs) within the classic bound
    |fl(AB) - AB| <= gamma_K |A| |B|, gamma_K ~ K u: every kernel (AVX2, AVX-512, any summation
    order, with or without FMA, any thread count) meets it, so nothing depends on the CPU."""
    exact = a.astype(np.float64) @ b.astype(np.float64)
    k = a.shape[-1]
    bound = (k + 1) * np.finfo(got.dtype).eps * (np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64))
    excess = np.abs(got - exact) - bound
    assert (excess <= 0).all(), f"product off by {np.max(excess):.3g} beyond its rounding bound"


def test_product_bound_catches_a_wrong_product() -> None:
    a = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    _assert_product_close(a @ a.T, a, a.T)
    wrong = a @ a.T
    wrong[3, 4] += 1e-4  # the bound here is ~5e-6
    with pytest.raises(AssertionError, match="beyond its rounding bound"):
        _assert_product_close(wrong, a, a.T)


@needs_c
@pytest.mark.parametrize("mode", ["C", "CVM"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_c_backend_runs_blas_ops_without_the_degraded_warning(mode: str, dtype: str) -> None:
    rng = np.random.default_rng(0)
    a, b = pt.matrix("a", dtype=dtype), pt.matrix("b", dtype=dtype)
    v = pt.vector("v", dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "severely degraded" or any other warning fails the test
        fn = function([a, b, v], [a @ b, a @ v], mode=mode)
        av, bv = rng.normal(size=(7, 5)).astype(dtype), rng.normal(size=(5, 3)).astype(dtype)
        vv = rng.normal(size=5).astype(dtype)
        mm, mv = fn(av, bv, vv)
    ops = {type(node.op) for node in fn.maker.fgraph.apply_nodes}
    assert ops & {Dot22, Gemm}, ops
    assert ops & {Gemv, CGemv}, ops
    _assert_product_close(mm, av, bv)
    _assert_product_close(mv, av, vv)
    assert mm.dtype == dtype and mv.dtype == dtype


@needs_c
def test_c_backend_computes_each_weight_gradient_once() -> None:
    """PyTensor's own Dot22Scalar rewrite gave every scaled use of a raw gradient its own product
    (AdamW: (1 - beta1) g and (1 - beta2) g g; Lion the same way)."""
    _, _, step = _train_step("CVM", "AdamW")
    products = [n for n in step.maker.fgraph.apply_nodes if isinstance(n.op, (Dot22, Dot22Scalar, Gemm))]
    operands = [tuple(n.inputs[:2]) if not isinstance(n.op, Gemm) else tuple(n.inputs[2:4]) for n in products]
    assert len(products) == 3 + 3 + 2  # forward, weight gradients, input gradients of the 3-layer MLP
    assert len(set(operands)) == len(operands)


# ---------------------------------------------------------------- equal results, float32
@functools.cache  # one compilation per (mode, rule) for the whole module; callers only read
def _train_step(mode: str | None, rule: str = "Adam") -> tuple[list[np.ndarray], list[float], Any]:
    rng = np.random.default_rng(0)
    x_data = rng.normal(size=(32, 6)).astype("float32")
    y_data = rng.integers(0, 3, 32).astype("int64")
    model = symopt.nn.MLP([6, 5, 4, 3], activation="relu", init="he", seed=0)
    opt = symopt.get(rule)(model.params, learning_rate=1e-2)
    x, y = pt.matrix("x", dtype="float32"), pt.vector("y", dtype="int64")
    loss = symopt.nn.cross_entropy(model.output(x, train=True), y)
    step = function([x, y], loss, updates=opt.updates(loss), mode=mode)
    losses = [float(step(x_data[i : i + 8], y_data[i : i + 8])) for i in range(0, 32, 8)]
    return [p.get_value() for p in model.params], losses, step


@needs_c
@pytest.mark.parametrize("rule", ["Adam", "RMSprop", "AdamW"])
def test_backends_agree_on_a_train_step_to_round_off(rule: str) -> None:
    # CVM only: the whole-graph "C" linker compiles one large module per graph (slow
    # cold); its BLAS linking is checked on the small graph above.
    reference, ref_losses, _ = _train_step("NUMBA", rule)
    for mode in ("CVM",):
        params, losses, _ = _train_step(mode, rule)
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
        for got, want in zip(params, reference):
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", [None, "NUMBA"])
def test_float32_train_step_stays_float32(mode: str | None) -> None:
    params, losses, step = _train_step(mode)
    assert all(p.dtype == np.float32 for p in params)
    assert step.maker.fgraph.outputs[0].dtype == "float32"
    wide = [
        (str(node.op), out.type)
        for node in step.maker.fgraph.apply_nodes
        for out in node.outputs
        if out.type.dtype == "float64" and out.type.ndim > 0 and not all(out.type.broadcastable)
    ]
    assert wide == []  # float64 only for per-step scalars (bias corrections, hyperparameters)


# ---------------------------------------------------------------- the flat-loop rewrite
@needs_c
def test_flat_loop_rewrite_applies_in_place_and_matches_the_generic_loop() -> None:
    def run(mode: Any) -> tuple[np.ndarray, Any]:
        W = pytensor.shared(np.linspace(-1, 1, 12, dtype="float32").reshape(3, 4), name="W")
        g = pt.matrix("g", dtype="float32")
        fn = function([g], [], updates=symopt.Adam([W], learning_rate=0.1).updates(grads=[g]), mode=mode)
        for k in range(3):
            fn(np.full((3, 4), 0.5 - k, dtype="float32"))
        return W.get_value(), fn

    flat, fn = run("CVM")
    nodes = [n for n in fn.maker.fgraph.apply_nodes if isinstance(n.op, _elemwise.ContiguousElemwise)]
    assert nodes and any(n.op.destroy_map for n in nodes)  # the update overwrites W and its slots
    generic, _ = run(pytensor.compile.mode.Mode(linker="cvm", optimizer="fast_run"))
    # The same scalar expression per element in another loop: the compiler may fuse a
    # multiply-add into an FMA in one and not the other (-march=native), so a few ulps of
    # W's scale (~1) may differ; a wrong rewrite would be off by a step (~0.1).
    np.testing.assert_allclose(flat, generic, rtol=0, atol=8 * np.finfo(np.float32).eps * np.abs(generic).max())


@needs_c
def test_flat_loop_takes_the_generic_path_for_non_contiguous_inputs() -> None:
    a, b = pt.matrix("a", dtype="float32"), pt.matrix("b", dtype="float32")
    s = pt.scalar("s", dtype="float32")
    fn = function([a, b, s], pt.sqrt(pt.abs(a)) * s / (b + 2), mode="CVM")
    assert any(isinstance(n.op, _elemwise.ContiguousElemwise) for n in fn.maker.fgraph.apply_nodes)
    rng = np.random.default_rng(1)
    big = rng.normal(size=(6, 10)).astype("float32")
    bv = rng.normal(size=(5, 3)).astype("float32")
    for av in (big[:5, :3].copy(), big[:5, ::3][:, :3], big.T[:5, :3]):
        want = np.sqrt(np.abs(av)) * np.float32(1.5) / (bv + 2)
        np.testing.assert_allclose(fn(av, bv, np.float32(1.5)), want, rtol=1e-6)


@needs_c
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_flat_loop_sign_is_branchless_and_equals_numpys(dtype: str) -> None:
    x, s = pt.matrix("x", dtype=dtype), pt.scalar("s", dtype=dtype)
    fn = function([x, s], s * pt.sign(x + 0), mode="CVM")
    (node,) = [n for n in fn.maker.fgraph.apply_nodes if isinstance(n.op, _elemwise.ContiguousElemwise)]
    inner = [type(n.op) for n in node.op.scalar_op.fgraph.apply_nodes]
    assert _elemwise.BranchlessSign in inner and pytensor.scalar.basic.Sign not in inner
    tiny = np.finfo(dtype).smallest_subnormal
    special = [np.nan, np.inf, -np.inf, 0.0, -0.0, tiny, -tiny, 1e-30, -3.5, 7.0]
    values = np.array(special * 3, dtype=dtype).reshape(5, 6)  # 30 elements: the vector body and its tail
    want = np.float32(2) * np.sign(values)
    got = fn(values, np.asarray(2, dtype=dtype))
    np.testing.assert_array_equal(got, want)  # NaN where NumPy has NaN
    assert not np.signbit(got[values == 0]).any()  # +0 for both zeros, as PyTensor's own C code


def test_grads_path_updates_in_place_in_the_default_backend() -> None:
    W = pytensor.shared(np.ones((3, 4), dtype="float32"), name="W")
    g = pt.matrix("g", dtype="float32")
    fn = function([g], [], updates=symopt.Adam([W]).updates(grads=[g]), mode="NUMBA")
    update = max((n for n in fn.maker.fgraph.apply_nodes if "Composite" in str(n.op)), key=lambda n: len(n.inputs))
    assert sorted(update.op.destroy_map) == [0, 1, 2]  # parameter, exp_avg, exp_avg_sq
