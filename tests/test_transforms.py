"""symopt.transforms: each built-in against a NumPy re-implementation of its definition, a
user-defined transform, the order of composition, decoupled weight decay on any rule (torch 2.x
formula written in NumPy) and coupling_transforms. float64 throughout, 3 steps of SGD (Adam for
the decoupled decay) on a fixed matrix W and vector b, gradients fed through ``grads=``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import symopt
from symopt.transforms import BUILTIN_ORDER, Transform, coupling_transforms

LR = 0.1
STEPS = 3
RTOL = 1e-12  # float64, a handful of operations per element


def _initial() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=(3, 2)), rng.normal(size=(2,))]


def _batches(nan_at: int | None = None) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(1)
    out = []
    for step in range(STEPS + 1):  # one more for accumulate=2 to apply twice
        gs = [rng.normal(scale=2.0, size=(3, 2)), rng.normal(scale=2.0, size=(2,))]
        if step == nan_at:
            gs[1][0] = np.nan
        out.append(gs)
    return out


def _run(make: Any, batches: list[list[np.ndarray]]) -> tuple[Any, list[np.ndarray]]:
    W, b = (pytensor.shared(v.copy(), name=n) for v, n in zip(_initial(), "Wb"))
    opt = make([W, b])
    gs = [pt.matrix("gW", dtype="float64"), pt.vector("gb", dtype="float64")]
    step = pytensor.function(gs, [], updates=opt.updates(grads=gs))
    for batch in batches:
        step(*batch)
    return opt, [W.get_value(), b.get_value()]


def _sgd_reference(batches: list[list[np.ndarray]], transform_grads: Any = lambda gs, p: gs,
                   after: Any = lambda p: p) -> list[np.ndarray]:
    p = _initial()
    for gs in batches:
        gs = transform_grads([g.copy() for g in gs], p)
        p = after([pi - LR * gi for pi, gi in zip(p, gs)])
    return p


def _close(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=1e-14)


def _clip_value(gs, p, c=0.5):
    return [np.clip(g, -c, c) for g in gs]


def _clip_norm(gs, p, c=1.0):
    return [g * c / max(np.linalg.norm(g), c) for g in gs]


def _clip_global_norm(gs, p, c=1.5):
    norm = np.sqrt(sum(np.sum(g * g) for g in gs))
    return [g * c / max(norm, c) for g in gs]


def _max_norm(p, c=0.8):
    W, b = p
    norms = np.sqrt(np.sum(W * W, axis=0, keepdims=True))
    return [W * (np.clip(norms, 0, c) / (1e-7 + norms)), b]  # Lasagne's norm_constraint


BUILTINS = {
    "clip_value": (dict(clip_value=0.5), _clip_value, lambda p: p),
    "clip_norm": (dict(clip_norm=1.0), _clip_norm, lambda p: p),
    "clip_global_norm": (dict(clip_global_norm=1.5), _clip_global_norm, lambda p: p),
    "coupled_weight_decay_masked": (
        dict(weight_decay=0.3, weight_decay_mask=lambda q: q.ndim == 2),
        lambda gs, p: [gs[0] + 0.3 * p[0], gs[1]],
        lambda p: p,
    ),
    "max_norm": (dict(max_norm=0.8), lambda gs, p: gs, _max_norm),
}


@pytest.mark.parametrize("name", list(BUILTINS))
def test_builtin_against_numpy(name: str) -> None:
    keywords, grads_ref, after_ref = BUILTINS[name]
    batches = _batches()[:STEPS]
    _, got = _run(lambda ps: symopt.SGD(ps, learning_rate=LR, **keywords), batches)
    _close(got, _sgd_reference(batches, grads_ref, after_ref))


def test_accumulate_against_numpy() -> None:
    batches = _batches()  # 4 calls = 2 applied updates with the mean of each pair
    opt, got = _run(lambda ps: symopt.SGD(ps, learning_rate=LR, accumulate=2), batches)
    pairs = [[(a + b) / 2 for a, b in zip(batches[i], batches[i + 1])] for i in (0, 2)]
    _close(got, _sgd_reference(pairs))
    assert int(opt.iterations.get_value()) == 2 and int(opt.micro_steps.get_value()) == 0


def test_skip_nonfinite_against_numpy() -> None:
    batches = _batches(nan_at=1)[:STEPS]
    opt, got = _run(lambda ps: symopt.SGD(ps, learning_rate=LR, skip_nonfinite=True), batches)
    _close(got, _sgd_reference([batches[0], batches[2]]))
    assert int(opt.skipped.get_value()) == 1 and int(opt.iterations.get_value()) == 2


def _adam_torch_decoupled(batches: list[list[np.ndarray]], lr: float, wd: float) -> list[np.ndarray]:
    """torch.optim.AdamW's documented algorithm (torch 2.x): p <- p - lr wd p, then Adam."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    p = _initial()
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    for t, gs in enumerate(batches, start=1):
        for i, g in enumerate(gs):
            p[i] = p[i] - lr * wd * p[i]
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            m_hat, v_hat = m[i] / (1 - beta1**t), v[i] / (1 - beta2**t)
            p[i] = p[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def test_decoupled_weight_decay_on_adam_is_torch_adamw() -> None:
    batches = _batches()[:STEPS]
    opt, got = _run(lambda ps: symopt.Adam(ps, learning_rate=0.05, weight_decay=0.2, decoupled_weight_decay=True), batches)
    assert opt.decoupled
    _close(got, _adam_torch_decoupled(batches, 0.05, 0.2))
    # the default stays coupled for Adam, decoupled for AdamW; AdamW can be made coupled
    assert not symopt.Adam([pytensor.shared(np.zeros(2))]).decoupled
    assert symopt.AdamW([pytensor.shared(np.zeros(2))]).decoupled
    assert not symopt.AdamW([pytensor.shared(np.zeros(2))], decoupled_weight_decay=False).decoupled


def test_decoupled_weight_decay_on_sgd() -> None:
    batches = _batches()[:STEPS]
    _, got = _run(lambda ps: symopt.SGD(ps, learning_rate=LR, weight_decay=0.5, decoupled_weight_decay=True), batches)
    p = _initial()
    for gs in batches:
        p = [pi - LR * 0.5 * pi - LR * gi for pi, gi in zip(p, gs)]
    _close(got, p)


class Smooth(Transform):
    """A user's transform with state: g <- s = beta s + (1 - beta) g, one slot per parameter."""

    name = "smooth"
    slots = {"smooth": 0.0}

    def __init__(self, beta: float):
        self.beta = beta

    def gradients(self, grads, applied, step):
        grads = list(grads)
        for i in step.live:
            s = step.slots[i]["smooth"]
            grads[i] = self.beta * s + (1 - self.beta) * grads[i]
            step.updates.append((s, grads[i]))
        return grads, applied


class Double(Transform):
    name = "double"

    def gradients(self, grads, applied, step):
        return [None if g is None else 2 * g for g in grads], applied


def test_user_transform_with_state() -> None:
    batches = _batches()[:STEPS]
    opt, got = _run(lambda ps: symopt.SGD(ps, learning_rate=LR, transforms=[Smooth(0.5)]), batches)
    s = [np.zeros((3, 2)), np.zeros(2)]

    def smooth(gs, p):
        for i, g in enumerate(gs):
            s[i] = 0.5 * s[i] + 0.5 * g
        return [x.copy() for x in s]

    _close(got, _sgd_reference(batches, smooth))
    assert set(opt.state_dict()["slots"]) == {"smooth"}  # saved with the rule's slots
    _close([opt.state[i]["smooth"].get_value() for i in range(2)], s)


def test_user_transforms_follow_the_builtins_in_order() -> None:
    """clip_value (built-in) first, then Double: g -> 2 clip(g), not clip(2 g)."""
    batches = _batches()[:STEPS]
    _, got = _run(lambda ps: symopt.SGD(ps, learning_rate=LR, clip_value=0.5, transforms=[Double()]), batches)
    _close(got, _sgd_reference(batches, lambda gs, p: [2 * g for g in _clip_value(gs, p)]))


def test_setting_changes_without_recompiling() -> None:
    W, b = (pytensor.shared(v.copy(), name=n) for v, n in zip(_initial(), "Wb"))
    opt = symopt.SGD([W, b], learning_rate=LR, clip_norm=1.0)
    gs = [pt.matrix("gW", dtype="float64"), pt.vector("gb", dtype="float64")]
    step = pytensor.function(gs, [], updates=opt.updates(grads=gs))
    opt.set_hyperparameter("clip_norm", 0.25)
    batch = _batches()[0]
    step(*batch)
    _close([W.get_value(), b.get_value()], _sgd_reference([batch], lambda g, p: _clip_norm(g, p, c=0.25)))


def test_coupling_transforms() -> None:
    class PerTensor(Double):
        name, reduces = "per_tensor", "tensor"

    p = [pytensor.shared(np.zeros((2, 2)), name="W")]
    assert coupling_transforms(symopt.SGD(p)) == []
    assert coupling_transforms(symopt.SGD(p, clip_value=1.0, accumulate=2, weight_decay=0.1)) == []
    opt = symopt.SGD(p, clip_norm=1.0, clip_global_norm=1.0, max_norm=2.0, skip_nonfinite=True,
                     transforms=[Double(), PerTensor()])
    assert coupling_transforms(opt) == ["skip_nonfinite", "clip_norm", "clip_global_norm", "max_norm", "per_tensor"]
    assert coupling_transforms(symopt.Lookahead(opt)) == coupling_transforms(opt)
    # the keyword tuple SeedTrainer kept by hand is now derived from the declarations
    assert symopt.seeds.COUPLING_SETTINGS == ("clip_norm", "clip_global_norm", "max_norm")
    reduces = {t.name: t.reduces for t in BUILTIN_ORDER}
    assert reduces == {"skip_nonfinite": "parameters", "accumulate": None, "clip_value": None, "clip_norm": "tensor",
                       "clip_global_norm": "parameters", "weight_decay": None, "max_norm": "tensor"}


def test_bad_transforms() -> None:
    p = [pytensor.shared(np.zeros(2), name="w")]
    with pytest.raises(TypeError, match=r"transforms\[0\] is a str"):
        symopt.SGD(p, transforms=["clip"])
    with pytest.raises(TypeError, match="transforms must be a list"):
        symopt.SGD(p, transforms=Double())

    class Taken(Smooth):
        slots = {"velocity": 0.0}

    with pytest.raises(ValueError, match="slot 'velocity', which is taken"):
        symopt.Momentum(p, transforms=[Taken(0.5)])
    with pytest.raises(TypeError, match="decoupled_weight_decay must be True or False"):
        symopt.SGD(p, decoupled_weight_decay="yes")


# ---------------------------------------------------------------- max_norm_axes (Lasagne's norm_axes)
def _lasagne_norm_constraint(w: np.ndarray, c: float, axes: tuple[int, ...]) -> np.ndarray:
    """lasagne.updates.norm_constraint(w, c, norm_axes=axes), epsilon 1e-7, in NumPy."""
    norms = np.sqrt(np.sum(w * w, axis=axes, keepdims=True))
    return w * (np.clip(norms, 0, c) / (1e-7 + norms))


@pytest.mark.parametrize(
    ("keywords", "axes_W", "axes_b"),
    [
        (dict(max_norm_axes=1), (1,), None),  # rows of W; b left out by the default mask
        (dict(max_norm_axes=(-1,)), (1,), None),  # negative axes count from the end, as NumPy's
        (dict(max_norm_axes=0, max_norm_mask=lambda q: True), (0,), (0,)),  # a vector's whole norm
        (dict(max_norm_axes=[0, 1]), (0, 1), None),  # the Frobenius norm of the whole matrix
    ],
    ids=["rows", "negative", "vector", "whole-matrix"],
)
def test_max_norm_axes_against_lasagne(keywords: dict[str, Any], axes_W: tuple[int, ...], axes_b: Any) -> None:
    batches = _batches()[:STEPS]

    def after(p: list[np.ndarray]) -> list[np.ndarray]:
        W, b = p
        return [_lasagne_norm_constraint(W, 0.3, axes_W), b if axes_b is None else _lasagne_norm_constraint(b, 0.3, axes_b)]

    _, got = _run(lambda ps: symopt.SGD(ps, learning_rate=LR, max_norm=0.3, **keywords), batches)
    want = _sgd_reference(batches, after=after)
    _close(got, want)
    # The constraint was active (the result is not plain SGD's) and holds.
    free = _sgd_reference(batches)
    assert max(float(np.max(np.abs(g - f))) for g, f in zip(got, free)) > 1e-2
    assert np.max(np.sqrt(np.sum(got[0] ** 2, axis=axes_W))) <= 0.3


def test_max_norm_axes_on_a_convolution_kernel_in_float32() -> None:
    """A (out, in, h, w) kernel normed over (0, 2, 3), float32 throughout."""
    rng = np.random.default_rng(3)
    start = rng.normal(size=(2, 3, 2, 2)).astype("float32")
    K = pytensor.shared(start.copy(), name="K")
    opt = symopt.SGD([K], learning_rate=0.1, max_norm=1.5, max_norm_axes=(0, 2, 3))
    g = pt.tensor4("g", dtype="float32")
    updates = opt.updates(grads=[g])
    assert updates[K].dtype == "float32"
    step = pytensor.function([g], [], updates=updates)
    want = start
    for _ in range(3):
        grad = rng.normal(size=start.shape).astype("float32")
        step(grad)
        want = _lasagne_norm_constraint((want - np.float32(0.1) * grad).astype("float64"), 1.5, (0, 2, 3))
    assert K.get_value().dtype == np.float32
    np.testing.assert_allclose(K.get_value(), want, rtol=1e-5, atol=1e-6)  # float32 rounding of ~10 ops


def test_max_norm_axes_validation() -> None:
    W = pytensor.shared(np.zeros((3, 2)), name="W")
    b = pytensor.shared(np.zeros(2), name="b")
    with pytest.raises(ValueError, match=r"SGD: max_norm_axes \(2,\) do not fit parameter 'W' \(index 0\), which has 2 dimensions"):
        symopt.SGD([W, b], max_norm=1.0, max_norm_axes=2)
    with pytest.raises(ValueError, match=r"max_norm_axes \(1,\) do not fit parameter 'b' \(index 1\)"):
        symopt.SGD([W, b], max_norm=1.0, max_norm_axes=1, max_norm_mask=[W, b])
    with pytest.raises(ValueError, match=r"max_norm_axes \(0, -2\) name an axis twice for parameter 'W'"):
        symopt.SGD([W, b], max_norm=1.0, max_norm_axes=(0, -2))
    for bad in [(), "0", 1.0, (0, 1.5), True, None.__class__]:
        with pytest.raises(ValueError, match="SGD: max_norm_axes must"):
            symopt.SGD([W, b], max_norm=1.0, max_norm_axes=bad)
    with pytest.raises(ValueError, match="SGD: max_norm_axes given without max_norm"):
        symopt.SGD([W, b], max_norm_axes=0)
    # Without axes a vector still cannot be constrained (Lasagne refuses it too).
    with pytest.raises(ValueError, match="max_norm constrains weight columns; parameter 'b'"):
        symopt.SGD([W, b], max_norm=1.0, max_norm_mask=[b])
    assert symopt.SGD.validate(max_norm=1.0, max_norm_axes=-1)["max_norm_axes"] == (-1,)
    with pytest.raises(ValueError, match="Adam: max_norm_axes must"):
        symopt.Adam.validate(max_norm=1.0, max_norm_axes="rows")
