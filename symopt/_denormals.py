"""Flush subnormal floats to zero while a training loop runs (x86-64's FTZ and DAZ flags).

Tiny gradients and optimiser state that decays towards zero produce values in float32's
subnormal range (below 1.2e-38) during training: squares of small gradients in Adam's
second moment, products in the backward pass. x86 CPUs compute with subnormal operands
or results in microcode, tens to a hundred times slower than with normal numbers, so the
same compiled step grows slower as training goes on: on the mnist-optimizers protocol
(2-core Intel Xeon, one run per Dask worker) Adam's step went from 1.77 ms in the first
epoch to 2.45 ms by the twentieth and Nesterov's from 1.61 to 2.32 ms, while SGD's stayed
at 1.4 ms (``benchmarks/README.md``, "Subnormal numbers").
:attr:`symopt.train.Trainer.flush_denormals` runs every training loop under
:func:`flush_denormals`.

The SSE control register MXCSR has two flags: FTZ (bit 15) writes zero instead of a
subnormal result, DAZ (bit 6) reads subnormal inputs as zero. XLA's CPU backend (JAX,
TensorFlow) and torch's ``set_flush_denormal`` use the same flags. The register is per
thread, so :func:`flush_denormals` sets them in the calling thread for the duration of a
``with`` block and restores the previous value after. NumPy has no call for it; the two
LLVM intrinsics ``llvm.x86.sse.stmxcsr`` and ``ldmxcsr`` are reached through Numba, which
symopt's default backend already needs. On other CPUs (or without Numba) it does nothing.

Numerically a value that would be subnormal becomes zero; runs stay deterministic, and
differ from runs without flushing only where such values reach a result: in the whole
protocol (210 runs of 20 epochs) every recorded loss and accuracy was bit-identical with
and without flushing.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from collections.abc import Iterator
from typing import Any

__all__ = ["FTZ", "DAZ", "flush_denormals", "mxcsr"]

FTZ = 1 << 15  #: MXCSR flush-to-zero
DAZ = 1 << 6  #: MXCSR denormals-are-zero


@functools.cache
def _intrinsics() -> tuple[Any, Any] | None:
    """Numba functions (get, set) of this thread's MXCSR, or None where unavailable."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        from llvmlite import ir
        from numba import njit, types
        from numba.core import cgutils
        from numba.extending import intrinsic
    except ImportError:
        return None
    i8p = ir.IntType(8).as_pointer()

    @intrinsic
    def _read(typingctx: Any) -> Any:
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            slot = cgutils.alloca_once(builder, ir.IntType(32))
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p]),
                                                "llvm.x86.sse.stmxcsr")
            builder.call(fn, [builder.bitcast(slot, i8p)])
            return builder.load(slot)

        return types.uint32(), codegen

    @intrinsic
    def _write(typingctx: Any, value: Any) -> Any:
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            slot = cgutils.alloca_once(builder, ir.IntType(32))
            builder.store(args[0], slot)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p]),
                                                "llvm.x86.sse.ldmxcsr")
            builder.call(fn, [builder.bitcast(slot, i8p)])
            return context.get_dummy_value()

        return types.void(types.uint32), codegen

    @njit(cache=True)
    def get() -> int:
        return _read()

    @njit(cache=True)
    def put(value: int) -> None:
        _write(value)

    return get, put


def mxcsr() -> int | None:
    """This thread's MXCSR register, or None where it cannot be read."""
    funcs = _intrinsics()
    return None if funcs is None else int(funcs[0]())


@contextlib.contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[bool]:
    """Set FTZ and DAZ in this thread for the block; restore the register after.

    Yields whether flushing is on (False when ``enabled`` is false or the CPU/Numba
    cannot do it).
    """
    funcs = _intrinsics() if enabled else None
    if funcs is None:
        yield False
        return
    get, put = funcs
    before = int(get())
    put(before | FTZ | DAZ)
    try:
        yield True
    finally:
        put(before)
