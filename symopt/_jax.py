"""symopt's ``JAX`` mode: PyTensor's JAX backend with float32 kept float32, shared data on the device
and updated state donated.

PyTensor (3.0.x) sums a float32 tensor with a float64 accumulator (``Sum{acc=float64}``,
output float32: what its C and Numba backends compute). Its JAX dispatch of ``CAReduce``
instead returns ``jnp.sum(x).astype(acc_dtype)``: a float32 sum, then widened to the
accumulator dtype, which it never casts to the output dtype. PyTensor enables JAX's x64
mode, so that float64 then spreads through everything downstream: in a train step the
loss, every gradient, every updated parameter and optimiser slot come back float64 (one
softmax cross-entropy is enough), each step after the first runs in float64 (2.2-2.8x
the time of a hand-written JAX step on the 2-core Zen 1, ``benchmarks/jax_backend.py``),
and ``get_value()`` returns float64 parameters for a float32 model.

The rewrite below, run only in symopt's ``JAX`` mode, casts such a reduction's result to
its output dtype: ``Cast{float32}(CAReduce{dtype=float64, acc=float64}(x))``. JAX still
sums float32 in float32, as PyTensor's JAX backend always did (and as ``jax.numpy``
does): a float64 accumulation (``Cast{float64}`` of the input first) measured about 8 %
slower per train step; within float32 round-off the sums agree with the C and Numba
backends' float64 accumulation.

The linker (:class:`DeviceSharedJAXLinker`) keeps shared tensors on the device and
donates the buffers of the shared variables a function updates, so XLA writes the new
parameters and optimiser state in place instead of allocating new ones each step.
"""

from __future__ import annotations

import numpy as np
from pytensor.compile import optdb
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.rewriting.basic import dfs_rewriter, node_rewriter
from pytensor.link.jax.linker import JAXLinker
from pytensor.tensor.basic import cast
from pytensor.tensor.elemwise import CAReduce
from pytensor.tensor.type import TensorType

__all__ = ["TAG", "local_careduce_explicit_cast", "DeviceSharedJAXLinker"]

#: The optdb tag symopt's JAX mode includes.
TAG = "symopt_jax"


@node_rewriter([CAReduce])
def local_careduce_explicit_cast(fgraph, node):
    """``CAReduce{acc=A}(x) -> D`` with ``A != D`` becomes ``Cast{D}(CAReduce{dtype=A, acc=A}(x))``."""
    op = node.op
    acc_dtype = getattr(op, "acc_dtype", None)
    out_dtype = node.outputs[0].type.dtype
    if acc_dtype is None or acc_dtype == out_dtype:
        return None
    wide = op.clone(dtype=acc_dtype, acc_dtype=acc_dtype).make_node(*node.inputs).outputs[0]
    return [cast(wide, out_dtype)]


optdb.register(
    "symopt_jax_careduce_explicit_cast",
    dfs_rewriter(local_careduce_explicit_cast, ignore_newtrees=True),
    TAG,
    position=99,  # after fusion (49), so no later rewrite folds the cast back into the sum
)


class DeviceSharedJAXLinker(JAXLinker):
    """PyTensor's JAX linker, with shared tensors kept on the device.

    PyTensor stores shared values as NumPy arrays and hands them to the jitted function
    as they are, so JAX copies every one to the device on every call: a training set
    held in a shared variable (188 MB for MNIST: 200 ms a call on this CPU, a PCIe
    transfer on a GPU), every hyperparameter. Updated variables become device arrays
    after the first call anyway (PyTensor stores the function's outputs). This linker
    does the same for the others: a NumPy value found in a shared variable's container
    at call time is put on the device once and stored back, so ``get_value()`` returns
    a ``jax.Array`` (NumPy reads it with ``np.asarray``) and a later ``set_value`` is
    picked up by the next call, transferred once. As for updated variables already, a
    function compiled with another backend on the same shared variables then receives
    ``jax.Array`` values.

    The buffers of updated shared variables are donated to XLA (``donate_argnums``):
    XLA writes the updated parameters and optimiser state into them, as the C and Numba
    backends update in place. Adam on the benchmark MLP, 2-core AMD EPYC under load
    (``benchmarks/jax_backend.py``): 2.43 -> 2.34 ms a step (median; 1.80 -> 1.68 in
    another run); the numbers are the same. The
    previous value of an updated variable is then gone: ``get_value()`` (a copy) is
    safe, but an array taken with ``get_value(borrow=True)`` before a call raises
    "Array has been deleted" after it (with the C backends such an array is
    overwritten in place instead). NumPy values are copied to the device, never
    aliased, and one array held by two updated variables is copied for one of them.
    ``donate_updated = False`` on the class turns donation off for functions compiled
    afterwards.
    """

    def create_thunk_inputs(self, storage_map):
        thunk_inputs = super().create_thunk_inputs(storage_map)
        self._shared_storage = tuple(
            (index, storage)
            for index, (var, storage) in enumerate(zip(self.fgraph.inputs, thunk_inputs, strict=True))
            if isinstance(var, SharedVariable) and isinstance(var.type, TensorType) and index not in self.scalar_shape_inputs
        )
        return thunk_inputs

    #: Donate the buffers of updated shared variables to XLA (see :meth:`jit_compile`).
    donate_updated = True

    def jit_compile(self, fn):
        import jax

        shared = getattr(self, "_shared_storage", ())  # a PyTensor that skips create_thunk_inputs: plain JAXLinker
        static = set(self.scalar_shape_inputs)
        mapping = getattr(self.fgraph, "update_mapping", None) or {}
        shared_index = {i for i, _ in shared}
        donate = tuple(sorted(i for i in set(mapping.values()) if i in shared_index and i not in static))
        if not (self.donate_updated and donate):
            jit_fn = super().jit_compile(fn)
            donate = ()
        else:
            jit_fn = jax.jit(fn, static_argnums=tuple(sorted(static)), donate_argnums=donate)
            if static:
                plain = jit_fn

                def jit_fn(*args, _static=static, _plain=plain):
                    return _plain(*(int(a) if i in _static else a for i, a in enumerate(args)))

        def call(*args):
            if any(type(args[i]) is np.ndarray for i, _ in shared):
                args = list(args)
                for i, storage in shared:
                    if type(args[i]) is np.ndarray:
                        # A device copy, never a view of NumPy's memory: donated buffers are reused.
                        storage[0] = args[i] = jax.numpy.array(args[i], copy=True)
            if donate and len(set(map(id, args))) < len(args):
                # One array in two arguments (two shared variables set to the same value): XLA
                # must not overwrite it in place, so a donated one gets its own copy.
                args = list(args)
                for i in donate:
                    if sum(a is args[i] for a in args) > 1:
                        args[i] = args[i].copy()
            return jit_fn(*args)

        call.jitted = jit_fn  # the jax.jit function itself (lower(), compile())
        call.donated = donate  # indices of the donated arguments
        call.fn = fn  # the traced Python function, for re-jitting (benchmarks/jax_backend.py)
        return call
