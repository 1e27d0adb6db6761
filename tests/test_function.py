"""symopt.function: backend selection, the BLAS the C backend links, and the flat-loop rewrite."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path
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


# ---------------------------------------------------------------- the JAX backend
needs_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax not installed (pip install -e '.[bench]')")


@needs_jax
def test_jax_reduction_with_a_wide_accumulator_returns_the_output_dtype() -> None:
    # PyTensor sums float32 with a float64 accumulator; its JAX dispatch returned the
    # accumulator's dtype (float64) unless symopt's rewrite casts the result back.
    x = pt.matrix("x", dtype="float32")
    total = pt.sum(x, axis=1)
    assert total.owner.op.acc_dtype == "float64" and total.dtype == "float32"
    data = np.random.default_rng(0).normal(size=(64, 4096)).astype("float32")
    got = np.asarray(function([x], total, mode="JAX")(data))
    assert got.dtype == np.float32
    exact = data.astype("float64").sum(axis=1)
    # Summation in float32 (JAX's order): error <= n * eps * sum |x| (Higham 4.2).
    bound = data.shape[1] * np.finfo(np.float32).eps * np.abs(data.astype("float64")).sum(axis=1)
    assert np.all(np.abs(got - exact) <= bound)


def _jax_ready_train_step(mode: str, steps: int = 5) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Adam on a small float32 MLP; the class count is static (JAX traces ``arange`` of it)."""
    rng = np.random.default_rng(0)
    x_data = rng.normal(size=(8 * steps, 6)).astype("float32")
    y_data = rng.integers(0, 3, 8 * steps).astype("int64")
    model = symopt.nn.MLP([6, 5, 4, 3], activation="relu", init="he", seed=0)
    opt = symopt.get("Adam")(model.params, learning_rate=1e-2)
    x, y = pt.matrix("x", dtype="float32"), pt.vector("y", dtype="int64")
    loss = symopt.nn.cross_entropy(pt.specify_shape(model.output(x, train=True), (None, 3)), y)
    step = function([x, y], loss, updates=opt.updates(loss), mode=mode)
    losses = [np.asarray(step(x_data[i : i + 8], y_data[i : i + 8])) for i in range(0, 8 * steps, 8)]
    state = [np.asarray(s.get_value()) for slots in opt.state for s in slots.values()]
    return [np.asarray(p.get_value()) for p in model.params] + state, losses


@needs_jax
def test_jax_backend_matches_the_default_backend_and_stays_float32() -> None:
    reference, ref_losses = _jax_ready_train_step("NUMBA")
    params, losses = _jax_ready_train_step("JAX")
    assert all(loss.dtype == np.float32 for loss in losses)
    np.testing.assert_allclose(np.array(losses), np.array(ref_losses), rtol=1e-5)
    assert len(params) == len(reference) == 6 * 3  # W, b of 3 layers, each with Adam's two slots
    for got, want in zip(params, reference, strict=True):
        assert got.dtype == np.float32  # was float64 after the first JAX step
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


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


@needs_jax
def test_jax_mode_keeps_shared_data_on_the_device_and_sees_set_value() -> None:
    import jax

    # The data set is a shared variable, rows picked by an index input (PyTensor's JAX
    # backend cannot trace a slice with symbolic bounds, so not Trainer's slice).
    rng = np.random.default_rng(0)
    data = pytensor.shared(rng.normal(size=(40, 3)).astype("float32"), name="data")
    w = pytensor.shared(np.ones(3, dtype="float32"), name="w")
    scale = pytensor.shared(np.float32(0.5), name="scale")  # read, never updated
    idx = pt.vector("idx", dtype="int64")
    batch = data[idx]
    step = function([idx], (batch @ w).sum(), updates={w: w - scale * batch.sum(axis=0)}, mode="JAX")

    def stored(var: Any) -> Any:
        return var.get_value(borrow=True, return_internal_type=True)

    want_w = np.ones(3, dtype="float32")
    for k in range(3):
        rows = np.asarray(stored(data))[k * 8 : (k + 1) * 8]
        np.testing.assert_allclose(step(np.arange(k * 8, (k + 1) * 8)), (rows @ want_w).sum(), rtol=1e-6)
        want_w = want_w - np.float32(0.5) * rows.sum(axis=0)
        # Put on the device once and kept there, not copied from NumPy at every call.
        assert isinstance(stored(data), jax.Array) and isinstance(stored(scale), jax.Array)
    np.testing.assert_allclose(np.asarray(w.get_value()), want_w, rtol=1e-6)
    fresh = rng.normal(size=(40, 3)).astype("float32")
    data.set_value(fresh)  # NumPy again: used by the next call, then kept on the device
    np.testing.assert_allclose(step(np.arange(8)), (fresh[:8] @ want_w).sum(), rtol=1e-6)
    assert isinstance(stored(data), jax.Array)
    np.testing.assert_array_equal(np.asarray(data.get_value()), fresh)


# ---------------------------------------------------------------- the first-compilation notice
NOTICE = "symopt: first Numba compilation on this machine"
_TWO_COMPILES = """
import numpy as np, pytensor, pytensor.tensor as pt, symopt
x = pt.vector("x", dtype="float32")
w = pytensor.shared(np.ones(3, dtype="float32"))
symopt.function([x], (x * w).sum(), updates={w: w - np.float32(0.1) * x}, mode="NUMBA")
symopt.function([x], x.sum(), mode="NUMBA")
print("compiled")
"""


def test_first_compilation_on_a_cold_cache_says_so_once_and_never_again(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in (function_module.QUIET_ENV, "SYMOPT_MODE")}
    env["PYTENSOR_FLAGS"] = f"base_compiledir={tmp_path / 'pytensor'}"
    runs = [subprocess.run([sys.executable, "-c", _TWO_COMPILES], env=env, capture_output=True, text=True, timeout=600)
            for _ in range(2)]
    for run in runs:
        assert run.returncode == 0 and run.stdout.strip() == "compiled", run.stderr
    first, second = ([line for line in run.stderr.splitlines() if line.startswith("symopt: first")] for run in runs)
    assert len(first) == 1 and first[0].startswith(NOTICE) and str(tmp_path / "pytensor") in first[0]
    assert second == []


@pytest.fixture
def fresh_notice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, Path]:
    """symopt's cache paths pointed at an empty temporary cache; nothing noticed yet."""
    marker, cache = tmp_path / "symopt-cache-warm-numba", tmp_path / "numba"
    cache.mkdir()
    monkeypatch.setattr(function_module, "_cache_paths", lambda family: (marker, cache))
    monkeypatch.setattr(function_module, "_noticed", set())
    monkeypatch.setattr(function_module, "_marked", set())
    monkeypatch.delenv(function_module.QUIET_ENV, raising=False)
    return marker, cache


def _compile_tiny(mode: str = "NUMBA") -> None:
    x = pt.vector("x", dtype="float32")
    function([x], x * 2, mode=mode)


def test_first_compilation_notice_can_be_hidden(
    fresh_notice: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(function_module.QUIET_ENV, "1")
    _compile_tiny()
    assert capsys.readouterr().err == ""
    assert fresh_notice[0].exists()  # marked warm all the same


def test_a_cache_filled_before_markers_existed_is_warm(
    fresh_notice: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    marker, cache = fresh_notice
    (cache / "string.elemwise-0.nbi").write_bytes(b"")
    _compile_tiny()
    assert capsys.readouterr().err == ""
    assert marker.exists()


def test_a_cold_cache_notice_is_one_line_per_process(
    fresh_notice: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _compile_tiny("FAST_COMPILE")  # Python thunks: no persistent cache, no notice
    assert capsys.readouterr().err == ""
    _compile_tiny()
    _compile_tiny()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(NOTICE) and str(fresh_notice[1]) in err
    assert fresh_notice[0].exists()
