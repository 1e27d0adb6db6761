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

Operands may also broadcast along *some* axes (a seed-stacked loop: a per-seed key
``(S, 1, 1)``, a per-position index ``(1, B, n)``, activations ``(S, B, n)``): the
trailing axes along which every operand either broadcasts on all or on none form one
flat inner block (here ``B * n``), run by the same vectorised function once per index of
the leading axes, an operand that broadcasts along the block being passed by value. A
lone binary op with a broadcast operand (the stacked ReLU ``maximum(x, 0)``, which no
longer fuses with a bias add since the bias moved into :mod:`symopt._batched`) takes
the same path.

Why the stacked dropout step under CVM cost 1.76x the step without dropout (Numba:
1.00x): (1) the fused dropout loop read the bias ``(S, 1, n)``, a pattern the flat loop
did not take, so it ran PyTensor's strided loop: scalar 64-bit multiplies and a
data-dependent branch per element for the random keep decision (5.9 ms for one S = 30
layer); (2) even in the flat loop, PyTensor prints the float32 constant ``p`` as the
double literal ``0.2``, so ``u >= p`` widened every uniform to double: GCC vectorised it at
half width with conversions, 0.53 ms per S = 30 layer against 0.18 ms when compared in
float32. :class:`Float32AtLeast` compares in float32 against the float32 threshold that
gives exactly the same booleans (see its docstring); the masks are bit-identical.

One scalar op is swapped inside such loops: PyTensor's float ``sign`` is a chain of
ternaries GCC does not if-convert ("control flow in loop"), so Lion's update ran as a
scalar loop with a mispredicted branch per element (784x100: 3.1 ms against 0.47 ms in
PyTensor's own loop). :class:`BranchlessSign` computes the same values (1, -1, 0, NaN
for NaN, +-1 for +-inf) without branches, and the loop vectorises.
"""

from __future__ import annotations

from pytensor.compile import optdb
from pytensor.graph.rewriting.basic import dfs_rewriter, node_rewriter
import numpy as np
from pytensor.scalar.basic import GE, Composite, ScalarConstant, Sign, float_types
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
        out_bc = node.outputs[0].type.broadcastable
        dims = [j for j, b in enumerate(out_bc) if not b]  # size-1 output axes take no part
        inner = _inner_start(node)  # dims[inner:] is one flat block for every operand
        outer_dims, inner_dims = dims[:inner], dims[inner:]
        params, args, body, post, arrays, seen = [], [], [], [], [], set()
        offsets = []
        for x, var in zip(inames, node.inputs, strict=True):
            if x in seen:  # the same variable twice
                continue
            seen.add(x)
            ctype = var.type.dtype_specs()[1]
            bc = var.type.broadcastable
            # Byte offset of this operand's block at the outer index (o_j): its own strides
            # along the outer axes it does not broadcast.
            terms = [f"o{j} * PyArray_STRIDES({x})[{j}]" for j in outer_dims if not bc[j]]
            offset = " + ".join(terms) if terms else "0"
            offsets.append(f"const char* {x}_b = (const char*)PyArray_DATA({x}) + ({offset});")
            if all(bc[j] for j in inner_dims):  # one value per block: passed by value
                params.append(f"const {ctype} {x}_s")
                args.append(f"*(const {ctype}*){x}_b")
                body.append(f"const {ctype} {x}_i = {x}_s;")
            else:
                arrays.append(x)
                params.append(f"const {ctype}* {x}_p")
                args.append(f"(const {ctype}*){x}_b")
                body.append(f"const {ctype} {x}_i = {x}_p[i];")
        for o, var in zip(onames, node.outputs, strict=True):
            ctype = var.type.dtype_specs()[1]
            arrays.append(o)
            terms = [f"o{j} * PyArray_STRIDES({o})[{j}]" for j in outer_dims]
            offsets.append(f"char* {o}_b = (char*)PyArray_DATA({o}) + ({' + '.join(terms) if terms else '0'});")
            params.append(f"{ctype}* {o}_p")
            args.append(f"({ctype}*){o}_b")
            body.append(f"{ctype} {o}_i;")
            post.append(f"{o}_p[i] = {o}_i;")
        task = self.scalar_op.c_code(
            node.tag.fake_node, nodename + "_flat_", [f"{x}_i" for x in inames], [f"{o}_i" for o in onames], sub
        )
        if "goto" in task or "%(" in task:  # inner code that can fail needs the enclosing function
            return decl, checks, alloc, loop, end
        contiguous = " && ".join(f"PyArray_IS_C_CONTIGUOUS({a})" for a in arrays)
        o0 = onames[0]
        n_inner = " * ".join(f"PyArray_DIMS({o0})[{j}]" for j in inner_dims) or "1"
        opens = "".join(f"for (npy_intp o{j} = 0; o{j} < PyArray_DIMS({o0})[{j}]; ++o{j}) {{\n" for j in outer_dims)
        closes = "}" * len(outer_dims)
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
            const npy_intp n_inner = {n_inner};
            {opens}
                {nl.join(offsets)}
                flat_loop::run(n_inner, {", ".join(args)});
            {closes}
        }} else {{
            {loop}
        }}
        """
        return decl, checks, alloc, flat, end

    def c_code_cache_version_apply(self, node):
        version = super().c_code_cache_version_apply(node)
        return (*version, ("symopt-flat-loop", 3)) if version else version


def _inner_start(node) -> int:
    """Index into the output's non-broadcast axes where the flat inner block starts: the
    longest run of trailing axes along which every input either broadcasts on all or on none."""
    out_bc = node.outputs[0].type.broadcastable
    dims = [j for j, b in enumerate(out_bc) if not b]
    start = len(dims)
    while start > 0:
        block = dims[start - 1 :]
        if all(len({i.type.broadcastable[j] for j in block}) == 1 for i in node.inputs):
            start -= 1
        else:
            break
    return start


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


class Float32AtLeast(GE):
    """``x >= c`` for a float32 ``x`` and a constant ``c``, compared in float32.

    PyTensor's C code prints a float32 constant as a decimal double literal (``0.2``), so
    ``x >= 0.2`` widens every ``x`` to double: in the dropout loop (``u >= p``) that
    conversion halved the vector width and cost about as much as the SplitMix64 hash
    itself. For float32 ``x`` and the double ``C`` the compiler reads from that literal,
    ``(double) x >= C`` holds exactly when ``x >= T`` with ``T`` the smallest float32
    not below ``C`` (no float32 lies in ``[C, T)``); NaN compares false either way.
    ``threshold`` is ``T``, printed as an exact hexadecimal float literal: the same
    booleans, the masks bit for bit, in float32 lanes.
    """

    __props__ = ("threshold",)

    def __init__(self, threshold: float):
        super().__init__(name="ge_f32")
        self.threshold = float(threshold)

    def c_code(self, node, name, inputs, outputs, sub):
        (x, _), (z,) = inputs, outputs
        return f"{z} = ({x} >= {self.threshold.hex()}f);"

    def c_code_cache_version(self):
        return ("symopt-f32-ge", 1, *super().c_code_cache_version())


def _float32_at_least(node) -> Float32AtLeast | None:
    """The float32 comparison equal to ``node`` (``ge(x, constant)``, x float32), else None."""
    x, c = node.inputs
    if x.type.dtype != "float32" or not isinstance(c, ScalarConstant) or c.type.dtype not in ("float32", "float64"):
        return None
    literal = c.type.c_literal(c.data)
    try:
        bound = float(literal)  # the double the C compiler reads, correctly rounded as Python does
    except (TypeError, ValueError):
        return None
    if not np.isfinite(bound) or abs(bound) > float(np.finfo(np.float32).max):
        return None
    t = np.float32(bound)
    if float(t) < bound:
        t = np.nextafter(t, np.float32(np.inf))
    return Float32AtLeast(float(t))


def _without_branchy_ops(composite: Composite) -> Composite:
    """``composite`` with every float ``sign`` made :class:`BranchlessSign` and every
    float32 ``x >= constant`` made :class:`Float32AtLeast` (itself if neither occurs)."""
    nodes = composite.fgraph.toposort()
    swaps = {}
    for n in nodes:
        if type(n.op) is Sign:
            swaps[n] = branchless_sign
        elif type(n.op) is GE and (op := _float32_at_least(n)) is not None:
            swaps[n] = op
    if not swaps:
        return composite
    inputs = [i.type() for i in composite.inputs]
    mapping = dict(zip(composite.inputs, inputs, strict=True))
    for node in nodes:
        op = swaps.get(node, node.op)
        new = op.make_node(*(mapping.get(i, i) for i in node.inputs))
        mapping.update(zip(node.outputs, new.outputs, strict=True))
    return Composite(inputs, [mapping.get(o, o) for o in composite.outputs])


def _eligible(node) -> bool:
    op = node.op
    if type(op) is not Elemwise:
        return False
    # A fused loop, or a lone binary op with a broadcast operand (the stacked ReLU
    # ``maximum(x, 0)``): PyTensor's strided loop for either does not vectorise.
    if not isinstance(op.scalar_op, Composite) and not (
        len(node.inputs) == 2 and any(i.type.broadcastable != node.outputs[0].type.broadcastable for i in node.inputs)
    ):
        return False
    out = node.outputs[0].type
    if out.ndim == 0 or all(out.broadcastable):
        return False
    if any(o.type.broadcastable != out.broadcastable for o in node.outputs):
        return False
    if any(o.dtype == "float16" for o in node.outputs) or any(i.dtype == "float16" for i in node.inputs):
        return False
    return all(i.type.ndim == out.ndim for i in node.inputs)


@node_rewriter([Elemwise])
def local_contiguous_composite(fgraph, node):
    if not _eligible(node):
        return None
    scalar_op = node.op.scalar_op
    if isinstance(scalar_op, Composite):
        scalar_op = _without_branchy_ops(scalar_op)
    new_op = ContiguousElemwise(scalar_op, inplace_pattern=dict(node.op.inplace_pattern))
    return new_op.make_node(*node.inputs).outputs


optdb.register(
    "symopt_contiguous_composite",
    dfs_rewriter(local_contiguous_composite, ignore_newtrees=True),
    TAG,
    position=99,  # after fusion (49) and the in-place rewrites (50.5, 70)
)
