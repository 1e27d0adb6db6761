"""Every element-wise rule's update compiles to one in-place pass per parameter.

Issue 14's target 3 compares a step with the "step floor": the matrix products plus one
fused pass of the rule's update over parameter and state (``benchmarks/step_time.py``,
``STEP_FLOOR_RULES``). This checks the structure that target relies on, in the default
backend, for every rule that has such a floor: the new parameter and every new slot of
one parameter come out of ONE element-wise node (no second loop, no separate
``sqrt``/``maximum``/``abs`` pass, no reduction), each written over its variable (no
copy, no fresh array per step), with as many state arrays as the floor's pass, and
nothing element-wise is computed in float64. The rules' updates are independent
subgraphs of one compiled function (one compilation per module). No timing here.
"""

from __future__ import annotations


import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.tensor.shape import Shape, Shape_i

import symopt
from symopt.function import function

from ._scripts import load_benchmark

try:  # PyTensor >= 3.3
    from pytensor.graph.traversal import io_toposort
except ImportError:  # PyTensor 3.0
    from pytensor.graph.basic import io_toposort

STEP_FLOOR_RULES = load_benchmark("step_time").STEP_FLOOR_RULES
RULES = sorted(STEP_FLOOR_RULES)
SHAPES = [(5, 3), (3,)]  # a weight and a bias: 2-D and 1-D loops


@pytest.fixture(scope="module")
def compiled() -> tuple[object, dict[str, symopt.Optimizer]]:
    """One function updating every rule's own (weight, bias) from given gradients.

    One compilation for the module: the rules' updates are independent subgraphs of it.
    """
    rng = np.random.default_rng(0)
    updates: dict = {}
    inputs, optimizers = [], {}
    for name in RULES:
        own = [pytensor.shared(rng.standard_normal(s).astype("float32"), name=f"{name}.p{i}") for i, s in enumerate(SHAPES)]
        grads = [pt.tensor(f"{name}.g{i}", dtype="float32", shape=(None,) * len(s)) for i, s in enumerate(SHAPES)]
        optimizers[name] = opt = symopt.get(name)(own)
        updates.update(opt.updates(grads=grads))
        inputs += grads
    return function(inputs, [], updates=updates, mode="NUMBA"), optimizers


def _producers(fn: object) -> dict[object, tuple[object, int]]:
    """Updated shared variable -> (the compiled graph's node computing its new value, output index)."""
    fgraph = fn.maker.fgraph
    out = {}
    for out_index, in_index in fgraph.update_mapping.items():
        var = fgraph.outputs[out_index]
        out[fn.maker.inputs[in_index].variable] = (var.owner, var.owner.outputs.index(var))
    return out


@pytest.mark.parametrize("name", RULES)
def test_update_is_one_in_place_pass_per_parameter(compiled: tuple, name: str) -> None:
    """Parameter and slots from one node, in place, float32; no other pass over the rule's arrays."""
    fn, optimizers = compiled
    opt = optimizers[name]
    producers = _producers(fn)
    for param, state in zip(opt.params, opt.state, strict=True):
        node, index = producers[param]
        assert node is not None, f"{name}: {param.name} is not updated"
        slots = [v for v in state.values() if v.type.ndim == param.type.ndim]
        assert len(slots) == len(STEP_FLOOR_RULES[name][0])  # as many state arrays as the floor's pass
        for var in [param, *slots]:
            var_node, var_index = producers[var]
            assert var_node is node, (
                f"{name}: {var.name} is computed by {var_node.op}, {param.name} by {node.op}: "
                "two passes over the parameter's elements")
            assert var_index in node.op.destroy_map, f"{name}: {var.name} is not written in place by {node.op}"
            assert node.outputs[var_index].type.dtype == "float32"
        wide = [i for i in node.inputs if i.type.dtype == "float64" and not all(i.type.broadcastable)]
        assert wide == [], f"{name}: float64 arrays enter the update of {param.name}"
    # No other pass over any of the rule's arrays (a reduction, a separate sqrt/abs loop, a
    # copy): the only nodes reading an array are the update loops above, one per parameter.
    fgraph = fn.maker.fgraph
    outputs = [fgraph.outputs[o] for o, i in fgraph.update_mapping.items()
               if fn.maker.inputs[i].variable in {*opt.params, *(v for st in opt.state for v in st.values())}]
    passes = [node for node in io_toposort(fgraph.inputs, outputs) if _reads_an_array(node)]
    assert len(passes) == len(opt.params), (
        f"{name}: {len(passes)} passes over arrays for {len(opt.params)} parameters: {[str(n.op) for n in passes]}")


def _reads_an_array(node: object) -> bool:
    """Whether ``node`` loops over an array's elements (not a view, not a shape query)."""
    if getattr(node.op, "view_map", None) or isinstance(node.op, Shape | Shape_i):
        return False
    return any(i.type.ndim > 0 and not all(i.type.broadcastable) for i in node.inputs)
