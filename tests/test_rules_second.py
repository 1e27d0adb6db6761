"""SAM and Sophia-H (:mod:`symopt.rules_second`) against NumPy references.

The model is ``net * logistic + quad * quadratic`` over a matrix ``W`` and a vector
``b``, with ``net`` and ``quad`` shared scalars, so that one compiled function per (rule,
dtype) serves the trajectory tests (logistic regression, whose gradient and exact
Hessian-vector product are written out below in NumPy) and the convergence tests (a
quadratic with a non-diagonal Hessian and a known minimum). The references live in
:mod:`tests.reference` (:class:`~tests.reference.SAMReference`, :class:`~tests.reference.Sophia`);
the Rademacher draws there are a NumPy transcription of the SplitMix64 equation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import symopt

from .reference import REFERENCES, SAMReference
from .reference import Sophia as SophiaReference

# --------------------------------------------------------------------------- model
_rng = np.random.default_rng(20261203)
X = _rng.normal(size=(12, 3))
Y = (_rng.uniform(size=(12, 2)) < 0.5).astype(np.float64)
SHAPES = {"W": (3, 2), "b": (2,)}
INITIAL = {name: 0.5 * _rng.normal(size=shape) for name, shape in SHAPES.items()}
SIZE = sum(int(np.prod(s)) for s in SHAPES.values())
_Q, _ = np.linalg.qr(_rng.normal(size=(SIZE, SIZE)))
QUAD_A = _Q @ np.diag(np.linspace(0.5, 3.0, SIZE)) @ _Q.T  # SPD, off-diagonal terms
QUAD_CENTRE = _rng.normal(size=SIZE)

# float64: both sides evaluate the same equations in a different order; after 30 steps
# they differ by ~1e-14 relative. float32: unit roundoff 6e-8, as tests/test_rules.py.
TOLERANCE = {"float64": (1e-9, 1e-3), "float32": (2e-5, 0.1)}  # dtype -> (rtol, floor of max|ref|)
STEPS = 30


def _split(flat: np.ndarray, dtype: Any) -> list[np.ndarray]:
    out, start = [], 0
    for shape in SHAPES.values():
        n = int(np.prod(shape))
        out.append(np.asarray(flat[start:start + n].reshape(shape), dtype=dtype))
        start += n
    return out


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def logistic_parts(params: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Logits and ``sigma'(z) / N`` (N = number of logits) of the mean logistic loss."""
    W, b = params
    z = X.astype(W.dtype) @ W + b
    s = 1.0 / (1.0 + np.exp(-z))
    return z, s


def numpy_gradients(params: list[np.ndarray], net: float = 1.0, quad: float = 0.0) -> list[np.ndarray]:
    """Gradient of ``net * mean(softplus(z) - y z) + quad * 0.5 (p-c)^T A (p-c)``, ``z = X W + b``."""
    dtype = params[0].dtype
    _, s = logistic_parts(params)
    dz = (s - Y.astype(dtype)) / Y.size
    net_grads = [X.astype(dtype).T @ dz, dz.sum(axis=0)]
    quad_grads = _split(QUAD_A @ (_flat(params) - QUAD_CENTRE), dtype)
    return [np.asarray(net * g + quad * q, dtype=dtype) for g, q in zip(net_grads, quad_grads)]


def numpy_hvp(params: list[np.ndarray], vectors: list[np.ndarray], net: float = 1.0, quad: float = 0.0) -> list[np.ndarray]:
    """Exact Hessian-vector product of the same loss: ``X^T (s (1-s) (X U + u_b)) / N`` and ``A u``."""
    dtype = params[0].dtype
    _, s = logistic_parts(params)
    U, ub = vectors
    dz = s * (1.0 - s) * (X.astype(dtype) @ U + ub) / Y.size
    net_h = [X.astype(dtype).T @ dz, dz.sum(axis=0)]
    quad_h = _split(QUAD_A @ _flat(vectors), dtype)
    return [np.asarray(net * h + quad * q, dtype=dtype) for h, q in zip(net_h, quad_h)]


def initial_params(dtype: str) -> list[np.ndarray]:
    return [INITIAL[name].astype(dtype) for name in SHAPES]


# --------------------------------------------------------------------------- compiled steps
@dataclasses.dataclass
class Compiled:
    opt: Any
    params: list[Any]
    net: Any
    quad: Any
    updates: Any
    step: Any
    fresh: dict[str, Any]
    dtype: str

    def reset(self, numeric: dict[str, float], *, net: float = 1.0, quad: float = 0.0) -> None:
        for var, value in zip(self.params, initial_params(self.dtype)):
            var.set_value(value)
        self.opt.load_state_dict(self.fresh)
        for name, value in numeric.items():
            self.opt.set_hyperparameter(name, value)
        self.net.set_value(np.asarray(net, dtype=self.dtype))
        self.quad.set_value(np.asarray(quad, dtype=self.dtype))

    def values(self) -> list[np.ndarray]:
        return [p.get_value() for p in self.params]


def compile_step(make: Callable[[list[Any]], Any], dtype: str) -> Compiled:
    params = [pytensor.shared(v, name=n) for n, v in zip(SHAPES, initial_params(dtype))]
    W, b = params
    net = pytensor.shared(np.asarray(1.0, dtype=dtype), name="net")
    quad = pytensor.shared(np.asarray(0.0, dtype=dtype), name="quad")
    with pytensor.config.change_flags(floatX=dtype):
        z = pt.constant(X.astype(dtype)) @ W + b
        logistic = pt.mean(pt.softplus(z) - pt.constant(Y.astype(dtype)) * z)
        d = pt.concatenate([W.flatten(), b]) - pt.constant(QUAD_CENTRE.astype(dtype))
        quadratic = 0.5 * pt.dot(d, pt.dot(pt.constant(QUAD_A.astype(dtype)), d))
        loss = net * logistic + quad * quadratic
    assert loss.dtype == dtype
    opt = make(params)
    updates = opt.updates(loss)
    step = pytensor.function([], [], updates=updates)
    return Compiled(opt, params, net, quad, updates, step, opt.state_dict(), dtype)


MAKERS: dict[str, Callable[[list[Any]], Any]] = {
    "sam-sgd": lambda params: symopt.SAM(params, rho=0.05, learning_rate=0.5),
    "sam-adam": lambda params: symopt.SAM(params, base="adam", rho=0.05),
    "sophia": lambda params: symopt.Sophia(params, update_interval=3, seed=7),
}


@pytest.fixture(scope="module")
def compiled() -> Iterator[Callable[[str, str], Compiled]]:
    cache: dict[tuple[str, str], Compiled] = {}

    def get(name: str, dtype: str) -> Compiled:
        if (name, dtype) not in cache:
            cache[name, dtype] = compile_step(MAKERS[name], dtype)
        return cache[name, dtype]

    yield get
    cache.clear()


def relative_error(actual: np.ndarray, desired: np.ndarray, floor: float) -> float:
    desired, actual = np.asarray(desired, np.float64), np.asarray(actual, np.float64)
    atol = floor * float(np.max(np.abs(desired), initial=0.0)) or np.finfo(np.float64).tiny
    return float(np.max(np.abs(actual - desired) / (np.abs(desired) + atol), initial=0.0))


def assert_close(actual: np.ndarray, desired: np.ndarray, dtype: str, what: str) -> float:
    rtol, floor = TOLERANCE[dtype]
    assert actual.dtype == desired.dtype == np.dtype(dtype), f"{what}: dtype {actual.dtype} / {desired.dtype}"
    err = relative_error(actual, desired, floor)
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:g}"
    return err


# --------------------------------------------------------------------------- SAM
SAM_CASES = [
    ("sam-sgd", {}),
    ("sam-sgd", {"rho": 0.2, "learning_rate": 0.3, "weight_decay": 0.1}),
    ("sam-adam", {"learning_rate": 0.05}),
    ("sam-adam", {"learning_rate": 0.02, "rho": 0.1, "beta1": 0.8, "epsilon": 1e-3, "weight_decay": 0.1}),
]


# float32 with Adam as the base is compared in float64 only: Adam's early steps are about
# +-lr whatever the gradient's size, so a gradient component within a few float32 ulps of
# zero (the perturbed gradient is a difference of two evaluations) makes the step's
# direction itself rounding noise. The float32 graph is checked for dtypes below.
SAM_CASES_32 = [case for case in SAM_CASES if case[0] == "sam-sgd"]


@pytest.mark.parametrize(
    ("name", "setting", "dtype"),
    [(*case, "float64") for case in SAM_CASES] + [(*case, "float32") for case in SAM_CASES_32],
    ids=lambda v: str(v),
)
def test_sam_matches_reference(compiled: Callable[[str, str], Compiled], name: str, setting: dict[str, float],
                               dtype: str) -> None:
    c = compiled(name, dtype)
    c.reset(setting)
    base = REFERENCES["adam" if name == "sam-adam" else "sgd"]
    base_setting = {k: v for k, v in setting.items() if k != "rho"}
    if name == "sam-sgd":
        base_setting.setdefault("learning_rate", 0.5)
    reference = SAMReference(base(initial_params(dtype), **base_setting), numpy_gradients,
                             rho=setting.get("rho", 0.05))
    start = initial_params(dtype)
    worst = 0.0
    for t in range(1, STEPS + 1):
        reference.step()
        c.step()
        for i, name_i in enumerate(SHAPES):
            worst = max(worst, assert_close(c.params[i].get_value(), reference.params[i], dtype, f"step {t}: {name_i}"))
            for slot, var in c.opt.state[i].items():
                assert_close(var.get_value(), reference.base.state[i][slot], dtype, f"step {t}: {name_i}.{slot}")
    moved = max(float(np.max(np.abs(p - p0))) for p, p0 in zip(reference.params, start))
    assert moved > 1e-2, f"the reference moved only {moved:g}"
    # The perturbation matters: plain base steps end elsewhere.
    plain = base(initial_params(dtype), **base_setting)
    for _ in range(STEPS):
        plain.step(numpy_gradients(plain.params))
    assert max(float(np.max(np.abs(p - q))) for p, q in zip(plain.params, reference.params)) > 1e-4


def test_sam_rho_zero_is_the_base_rule(compiled: Callable[[str, str], Compiled]) -> None:
    c = compiled("sam-sgd", "float64")
    c.reset({"rho": 0.0})
    reference = REFERENCES["sgd"](initial_params("float64"), learning_rate=0.5)
    for _ in range(10):
        reference.step(numpy_gradients(reference.params))
        c.step()
    for actual, desired in zip(c.values(), reference.params):
        np.testing.assert_allclose(actual, desired, rtol=1e-12, atol=1e-14)


def test_sam_classes_and_protocol(compiled: Callable[[str, str], Compiled]) -> None:
    c = compiled("sam-adam", "float64")
    assert isinstance(c.opt, symopt.SAM) and isinstance(c.opt, symopt.Adam)
    assert type(c.opt).__name__ == "SAM[Adam]"
    assert set(c.opt.hyperparameters) == set(symopt.Adam.hyperparameters) | {"rho"}
    assert symopt.SAM.hyperparameters["rho"] == 0.05
    assert type(symopt.SAM(c.params)) is type(symopt.SAM(c.params, base=symopt.SGD))  # one class per base
    with pytest.raises(ValueError, match="needs the loss: call updates\\(loss\\)"):
        c.opt.updates(grads=[pt.zeros((3, 2)), pt.zeros(2)])
    assert symopt.SAM.validate(base="adam", rho=0.1)["beta2"] == 0.999
    # The ascent's global norm would mix a SeedTrainer's stacked seeds: it is reported as coupling.
    assert symopt.transforms.coupling_transforms(c.opt) == ["sam_global_gradient_norm"]
    assert symopt.transforms.coupling_transforms(symopt.Sophia(c.params)) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rho": -0.1}, "'rho' must lie in"),
        ({"base": "no_such_rule"}, "base must be a registered rule name"),
        ({"base": 3}, "base must be a registered rule name"),
        ({"base": symopt.Sophia}, "SAM needs a first-order rule"),
    ],
)
def test_sam_refuses_bad_settings(kwargs: dict[str, Any], match: str) -> None:
    p = pytensor.shared(np.zeros(2), name="p")
    with pytest.raises(ValueError, match=match):
        symopt.SAM([p], **kwargs)


# --------------------------------------------------------------------------- Sophia
SOPHIA_CASES = [
    {"learning_rate": 0.01},
    # gamma and beta2 chosen so that part of the elements are clipped and part are not.
    {"learning_rate": 0.05, "gamma": 1.0, "beta1": 0.9, "beta2": 0.8, "clip_threshold": 0.5, "weight_decay": 0.1,
     "epsilon": 1e-4},
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("setting", SOPHIA_CASES, ids=["lr", "nondefault"])
def test_sophia_matches_reference(compiled: Callable[[str, str], Compiled], setting: dict[str, float],
                                  dtype: str) -> None:
    c = compiled("sophia", dtype)
    c.reset(setting)
    reference = SophiaReference(initial_params(dtype), update_interval=3, seed=7, **setting)
    start = initial_params(dtype)
    for t in range(1, STEPS + 1):
        before = [p.astype(np.float64) for p in reference.params]
        # The reference's HVP in float64 at the float32 parameters, rounded once: the exact
        # product, as the float32 graph approximates it.
        reference.step(numpy_gradients(reference.params),
                       lambda u: [h.astype(dtype) for h in numpy_hvp(before, [x.astype(np.float64) for x in u])])
        c.step()
        for i, name in enumerate(SHAPES):
            assert_close(c.params[i].get_value(), reference.params[i], dtype, f"step {t}: {name}")
            for slot, var in c.opt.state[i].items():
                assert_close(var.get_value(), reference.state[i][slot], dtype, f"step {t}: {name}.{slot}")
    assert max(float(np.max(np.abs(p - p0))) for p, p0 in zip(reference.params, start)) > 1e-2
    assert np.all(reference.state[0]["hessian"] != 0), "the Hessian estimate was never updated"


def test_sophia_draws_are_rademacher_and_differ_by_step_and_parameter() -> None:
    draws = [SophiaReference([np.zeros((40, 50))], seed=7).signs(t)[0] for t in range(3)]
    assert set(np.unique(draws[0])) == {-1.0, 1.0}
    assert abs(draws[0].mean()) < 4 / math.sqrt(draws[0].size)  # 4 sigma
    assert np.mean(draws[0] == draws[1]) == pytest.approx(0.5, abs=0.05)


def test_sophia_converges_to_the_quadratic_minimum(compiled: Callable[[str, str], Compiled]) -> None:
    """0.5 (p - c)^T A (p - c) with A SPD and non-diagonal: Sophia ends close to c."""
    c = compiled("sophia", "float64")
    c.reset({"weight_decay": 0.0, "gamma": 1.0, "beta2": 0.9}, net=0.0, quad=1.0)

    def distance() -> float:
        return float(np.linalg.norm(_flat(c.values()) - QUAD_CENTRE))

    start = distance()
    assert start > 2.0
    # Clipped steps move each coordinate by about the rate; unclipped ones contract like
    # a diagonally preconditioned Newton step. Observed: 3e-6 (the NumPy reference too).
    for rate, steps in ((0.1, 600), (0.01, 300)):
        c.opt.set_hyperparameter("learning_rate", rate)
        for _ in range(steps):
            c.step()
    assert distance() < 1e-4, f"ended {distance():.3g} from the minimum (start {start:.3g})"


def test_sophia_resumes_exactly(compiled: Callable[[str, str], Compiled]) -> None:
    """The draws depend on the step counter only: a restored state repeats the same steps."""
    c = compiled("sophia", "float64")
    c.reset({"learning_rate": 0.01})
    for _ in range(4):
        c.step()
    saved, params = c.opt.state_dict(), c.values()
    for _ in range(5):
        c.step()
    first = c.values()
    c.opt.load_state_dict(saved)
    for var, value in zip(c.params, params):
        var.set_value(value)
    for _ in range(5):
        c.step()
    for a, b in zip(first, c.values()):
        np.testing.assert_array_equal(a, b)


def test_sophia_float32_graph_has_no_float64_array(compiled: Callable[[str, str], Compiled]) -> None:
    for name in ("sophia", "sam-adam"):
        c = compiled(name, "float32")
        for var, update in c.updates.items():
            assert update.type.dtype == var.type.dtype, f"{name}: update of {var.name}"
        wide = [
            f"{node.op}" for node in c.step.maker.fgraph.toposort() for out in node.outputs
            if getattr(out.type, "dtype", None) == "float64" and getattr(out.type, "ndim", 0) >= 1
        ]
        assert not wide, f"{name}: float64 arrays in the float32 graph: {wide}"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"update_interval": 0}, "update_interval must be an integer >= 1"),
        ({"update_interval": 2.5}, "update_interval must be an integer >= 1"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"epsilon": -1e-8}, "'epsilon' must lie in"),
        ({"gamma": -1.0}, "'gamma' must lie in"),
        ({"beta2": 1.0}, "'beta2' must lie in"),
        ({"clip_threshold": 0.0}, "'clip_threshold' must lie in"),
    ],
)
def test_sophia_refuses_bad_settings(kwargs: dict[str, Any], match: str) -> None:
    p = pytensor.shared(np.zeros(2), name="p")
    with pytest.raises(ValueError, match=match):
        symopt.Sophia([p], **kwargs)


def test_sam_state_file_round_trip(compiled: Callable[[str, str], Compiled], tmp_path: Any) -> None:
    """SAM[Adam]'s state (the base's slots, rho) goes through save/load like any rule's."""
    c = compiled("sam-adam", "float64")
    c.reset({"rho": 0.2})
    for _ in range(3):
        c.step()
    c.opt.save(tmp_path / "sam.npz")
    params = [pytensor.shared(v.copy(), name=n) for n, v in zip(SHAPES, c.values())]
    fresh = symopt.SAM(params, base="adam")
    fresh.load(tmp_path / "sam.npz")
    assert fresh.get_hyperparameter("rho") == 0.2 and int(fresh.iterations.get_value()) == 3
    for mine, theirs in zip(fresh.state, c.opt.state):
        for slot in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(mine[slot].get_value(), theirs[slot].get_value())
    other = symopt.SAM(params, base="sgd")
    with pytest.raises(ValueError, match="saved from 'SAM\\[Adam\\]'"):
        other.load(tmp_path / "sam.npz")


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")  # RandomStream's, as users still write it
def test_sam_uses_the_same_random_draws_at_both_points() -> None:
    """A dropout-like mask from a RandomStream is drawn once per call: the cloned loss sees it too."""
    from pytensor.tensor.random.utils import RandomStream

    w = pytensor.shared(np.array([1.0, -2.0, 3.0, 0.5]), name="w")
    mask = RandomStream(1).bernoulli(0.5, size=(4,)).astype("float64")
    opt = symopt.SAM([w], rho=0.1, learning_rate=0.1)
    step = pytensor.function([], mask, updates=opt.updates(pt.sum(pt.square(w * mask))))
    masks = []
    for _ in range(4):
        before = w.get_value().copy()
        m = step()
        masks.append(m)
        g = 2 * before * m * m
        norm = np.linalg.norm(g)
        ascent = 0.1 * g / norm if norm > 0 else 0 * g
        np.testing.assert_allclose(w.get_value(), before - 0.1 * 2 * (before + ascent) * m * m, rtol=1e-14, atol=1e-15)
    assert len({tuple(m) for m in masks}) > 1, "the mask must change between calls"
