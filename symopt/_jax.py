"""Keep float32 float32 in PyTensor's JAX backend.

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
"""

from __future__ import annotations

from pytensor.compile import optdb
from pytensor.graph.rewriting.basic import dfs_rewriter, node_rewriter
from pytensor.tensor.basic import cast
from pytensor.tensor.elemwise import CAReduce

__all__ = ["TAG", "local_careduce_explicit_cast"]

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
