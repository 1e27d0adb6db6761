"""A graph rewrite that lets the C backend vectorise fused elementwise loops.

PyTensor's C ``Elemwise`` loop addresses every operand through a runtime stride,
``*(x_iter + x_stride_l1 * i1 + x_stride_l0 * i0)``, even where the stride is 0 (a
broadcast scalar such as a learning rate) or 1. With eleven operands, as in Adam's
fused update, GCC cannot prove anything about them and emits one scalar ``sqrtss`` and
two ``divss`` per element: 0.7 ms for a 784x100 parameter on this machine, more than the
forward matmul of that layer. PyTensor only switches to a flat loop when *every*
operand has the same fully known static shape, which a loop with broadcast scalars or
unknown shapes never has.

``symopt_contiguous`` (enabled in symopt's C modes only, never in PyTensor's own)
swaps each fused ``Elemwise`` whose operands are either full-shape arrays or broadcast
scalars for :class:`ContiguousElemwise`: when all arrays are C-contiguous at run time it
runs a flat loop in a function of its own (``hot``, so GCC does not treat it as cold
code after the long chain of error checks, which it did), with the scalars passed by
value and ``#pragma GCC ivdep`` (elementwise: iteration ``i`` reads and writes index
``i`` only, so in-place outputs are safe). The per-element C code is PyTensor's own,
so the numbers are the same; the loop vectorises (Adam on 784x100: 0.9 -> 0.3 ms).
Other layouts take PyTensor's generic loop as before.

One scalar op is swapped inside such loops: PyTensor's float ``sign`` is a chain of
ternaries GCC does not if-convert ("control flow in loop"), so Lion's update ran as a
scalar loop with a mispredicted branch per element (784x100: 3.1 ms against 0.47 ms in
PyTensor's own loop). :class:`BranchlessSign` computes the same values (1, -1, 0, NaN
for NaN, +-1 for +-inf) without branches, and the loop vectorises.
"""

from __future__ import annotations

from pytensor.compile import optdb
from pytensor.graph.rewriting.basic import dfs_rewriter, node_rewriter
from pytensor.scalar.basic import Composite, Sign, float_types
from pytensor.tensor.elemwise import Elemwise

__all__ = ["ContiguousElemwise", "BranchlessSign", "TAG"]

#: The optdb tag symopt's C modes include.
TAG = "symopt_contiguous"


class ContiguousElemwise(Elemwise):
    """An :class:`~pytensor.tensor.elemwise.Elemwise` with a vectorisable flat C loop.

    Only built by the rewrite below, where every input is either broadcast in all
    dimensions (a scalar) or has the output's broadcast pattern, so every non-scalar
    operand holds exactly as many elements as the output.
    """

    def _c_all(self, node, nodename, inames, onames, sub):
        decl, checks, alloc, loop, end = super()._c_all(node, nodename, inames, onames, sub)
        params, args, body, post, arrays, seen = [], [], [], [], [], set()
        for x, var in zip(inames, node.inputs, strict=True):
            if x in seen:  # the same variable twice
                continue
            seen.add(x)
            ctype = var.type.dtype_specs()[1]
            if all(var.type.broadcastable):
                params.append(f"const {ctype} {x}_s")
                args.append(f"(({ctype}*)PyArray_DATA({x}))[0]")
                body.append(f"const {ctype} {x}_i = {x}_s;")
            else:
                arrays.append(x)
                params.append(f"const {ctype}* {x}_p")
                args.append(f"(const {ctype}*)PyArray_DATA({x})")
                body.append(f"const {ctype} {x}_i = {x}_p[i];")
        for o, var in zip(onames, node.outputs, strict=True):
            ctype = var.type.dtype_specs()[1]
            arrays.append(o)
            params.append(f"{ctype}* {o}_p")
            args.append(f"({ctype}*)PyArray_DATA({o})")
            body.append(f"{ctype} {o}_i;")
            post.append(f"{o}_p[i] = {o}_i;")
        task = self.scalar_op.c_code(
            node.tag.fake_node, nodename + "_flat_", [f"{x}_i" for x in inames], [f"{o}_i" for o in onames], sub
        )
        if "goto" in task or "%(" in task:  # inner code that can fail needs the enclosing function
            return decl, checks, alloc, loop, end
        contiguous = " && ".join(f"PyArray_IS_C_CONTIGUOUS({a})" for a in arrays)
        nl = "\n"
        # A local struct's static member: a function of its own, so GCC does not treat
        # the loop as cold after the long chain of error checks before it (it did, and
        # then did not vectorise it).
        flat = f"""
        if ({contiguous}) {{
            struct flat_loop {{
                static void __attribute__((noinline, hot)) run(npy_intp n, {", ".join(params)}) {{
                    #pragma GCC ivdep
                    for (npy_intp i = 0; i < n; ++i) {{
                        {nl.join(body)}
                        {task}
                        {nl.join(post)}
                    }}
                }}
            }};
            flat_loop::run(PyArray_SIZE({onames[0]}), {", ".join(args)});
        }} else {{
            {loop}
        }}
        """
        return decl, checks, alloc, flat, end

    def c_code_cache_version_apply(self, node):
        version = super().c_code_cache_version_apply(node)
        return (*version, ("symopt-flat-loop", 2)) if version else version


class BranchlessSign(Sign):
    """``sign`` whose float C code has no branches, so loops containing it vectorise.

    NaN stays NaN, +-inf gives +-1, zeros give +0 (as PyTensor's own C code does).
    """

    def c_code(self, node, name, inputs, outputs, sub):
        (x,), (z,) = inputs, outputs
        if node.inputs[0].type not in float_types:
            return super().c_code(node, name, inputs, outputs, sub)
        ctype = node.outputs[0].type.dtype_specs()[1]
        return f"{z} = ({x} != {x}) ? {x} : (({ctype})({x} > 0) - ({ctype})({x} < 0));"

    def c_code_cache_version(self):
        return ("symopt-branchless", 1, *super().c_code_cache_version())


branchless_sign = BranchlessSign(name="sign", output_types_preference=Sign._output_types_preference)


def _without_branchy_ops(composite: Composite) -> Composite:
    """``composite`` with every float ``sign`` made :class:`BranchlessSign` (itself if none)."""
    nodes = composite.fgraph.toposort()
    if not any(type(n.op) is Sign for n in nodes):
        return composite
    inputs = [i.type() for i in composite.inputs]
    mapping = dict(zip(composite.inputs, inputs, strict=True))
    for node in nodes:
        op = branchless_sign if type(node.op) is Sign else node.op
        new = op.make_node(*(mapping.get(i, i) for i in node.inputs))
        mapping.update(zip(node.outputs, new.outputs, strict=True))
    return Composite(inputs, [mapping.get(o, o) for o in composite.outputs])


def _eligible(node) -> bool:
    op = node.op
    if type(op) is not Elemwise or not isinstance(op.scalar_op, Composite):
        return False
    out = node.outputs[0].type
    if out.ndim == 0 or all(out.broadcastable):
        return False
    if any(o.type.broadcastable != out.broadcastable for o in node.outputs):
        return False
    if any(o.dtype == "float16" for o in node.outputs) or any(i.dtype == "float16" for i in node.inputs):
        return False
    return all(all(i.type.broadcastable) or i.type.broadcastable == out.broadcastable for i in node.inputs)


@node_rewriter([Elemwise])
def local_contiguous_composite(fgraph, node):
    if not _eligible(node):
        return None
    scalar_op = _without_branchy_ops(node.op.scalar_op)
    new_op = ContiguousElemwise(scalar_op, inplace_pattern=dict(node.op.inplace_pattern))
    return new_op.make_node(*node.inputs).outputs


optdb.register(
    "symopt_contiguous_composite",
    dfs_rewriter(local_contiguous_composite, ignore_newtrees=True),
    TAG,
    position=99,  # after fusion (49) and the in-place rewrites (50.5, 70)
)
