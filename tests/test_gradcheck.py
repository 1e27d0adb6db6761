"""symopt.gradcheck.check_grad against gradients known in closed form.

PyTensor's ``grad_scale(x, k)`` is the identity whose gradient is multiplied by ``k``:
it plants symbolic gradients that are wrong by a known factor, so the relative error
check_grad must report is known exactly (``1 - 1/k`` when its numerical gradient is
the true derivative). A check that always passed would fail these tests.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.gradient import grad_scale
from pytensor.raise_op import Assert

from symopt.gradcheck import DEFAULT_EPS, check_grad

BAD = 7  # the entry of C whose symbolic gradient is tripled


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(1234)
    A = pytensor.shared(rng.standard_normal((3, 4)), name="A")  # correct gradient
    B = pytensor.shared(rng.standard_normal(5), name="B")  # symbolic gradient doubled
    C = pytensor.shared(rng.standard_normal(20), name="C")  # entry BAD tripled
    D = pytensor.shared(rng.standard_normal(2))  # unnamed and unused: gradient exactly 0
    E = pytensor.shared(rng.standard_normal(3), name="A")  # a repeated name
    x = pt.vector("x")
    M = rng.standard_normal((3, 4))
    scaled_c = pt.concatenate([C[:BAD], grad_scale(C[BAD : BAD + 1], 3.0), C[BAD + 1 :]])
    loss = (
        0.5 * pt.sum(pt.dot(A, x) ** 2)  # d/dA = (A x) x^T
        + pt.sum(A * M)
        + pt.sum(grad_scale(B, 2.0) ** 2)  # true d/dB = 2B, symbolic 4B
        + pt.sum(scaled_c**3) / 3  # true d/dC = C**2; cubic, so truncation error is not zero
        + pt.sum(E**2)
    )
    X = rng.standard_normal(4)
    return dict(A=A, B=B, C=C, D=D, E=E, x=x, X=X, loss=loss)


@pytest.fixture(scope="module")
def full_check(problem):
    p = problem
    before = [v.get_value() for v in (p["A"], p["B"], p["C"], p["D"], p["E"])]
    result = check_grad(p["loss"], [p["A"], p["B"], p["C"], p["D"], p["E"]], {p["x"]: p["X"]})
    after = [v.get_value() for v in (p["A"], p["B"], p["C"], p["D"], p["E"])]
    return result, before, after


def test_correct_gradients_score_near_zero(full_check):
    result, _, _ = full_check
    assert result["A[0]"] < 1e-6
    assert result["A[4]"] < 1e-6


def test_wrong_gradients_score_their_known_error(full_check):
    result, _, _ = full_check
    # symbolic 2x the truth: |2a - a| / 2a = 1/2; tripled entry: 2/3. Only when the
    # numerical gradient is the true derivative (4a would also give 1/2, not 2/3 too).
    assert result["B"] == pytest.approx(0.5, abs=1e-7)
    assert result["C"] == pytest.approx(2 / 3, abs=1e-7)


def test_unused_parameter_and_key_names(full_check):
    result, _, _ = full_check
    assert set(result) == {"A[0]", "B", "C", "param3", "A[4]"}
    assert result["param3"] == 0.0
    assert all(isinstance(v, float) for v in result.values())


def test_values_restored_exactly(full_check):
    _, before, after = full_check
    for b, a in zip(before, after):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def _sample_hits(seed: int, size: int, n: int) -> bool:
    # The documented sampling: one default_rng(seed), choice(size, n, replace=False) per parameter.
    return BAD in np.random.default_rng(seed).choice(size, n, replace=False)


def test_sampled_entries_follow_the_documented_seed(problem):
    p = problem
    hit = next(s for s in range(100) if _sample_hits(s, 20, 5))
    miss = next(s for s in range(100) if not _sample_hits(s, 20, 5))
    got_hit = check_grad(p["loss"], [p["C"]], {p["x"]: p["X"]}, n_samples=5, seed=hit)
    got_miss = check_grad(p["loss"], [p["C"]], {p["x"]: p["X"]}, n_samples=5, seed=miss)
    assert got_hit["C"] == pytest.approx(2 / 3, abs=1e-7)
    assert got_miss["C"] < 1e-4  # so not every entry was checked


@pytest.fixture(scope="module")
def float32_problem():
    P = pytensor.shared(np.array([[0.1, -0.7], [0.3, 0.9]], dtype="float32"), name="P")
    w = np.array([[1.5, 2.0], [-1.0, 0.5]], dtype="float32")
    bound = pt.scalar("bound", dtype="float32")
    # Raises at run time once an entry of P reaches the bound: for the restore-on-error test.
    loss = Assert("P crossed the bound")(pt.sum(w * P**2), pt.all(pt.lt(P, bound)))
    return P, bound, loss, w


def test_float32_default_step_and_exact_restore(float32_problem):
    P, bound, loss, w = float32_problem
    before = P.get_value()
    assert loss.dtype == "float32" and DEFAULT_EPS["float32"] > DEFAULT_EPS["float64"]
    result = check_grad(loss, [P], {bound: 10.0})
    assert result["P"] < 1e-2  # a quadratic: only float32 rounding remains
    after = P.get_value()
    assert after.dtype == np.float32 and np.array_equal(after, before)


def test_values_restored_when_the_loss_raises(float32_problem):
    P, bound, loss, w = float32_problem
    before = P.get_value()
    # 0.9 + 0.2 crosses the bound 1.0 in the middle of the sweep.
    with pytest.raises(AssertionError, match="crossed the bound"):
        check_grad(loss, [P], {bound: 1.0}, eps=0.2)
    assert np.array_equal(P.get_value(), before)


def test_rejects_bad_arguments(problem):
    p = problem
    with pytest.raises(ValueError, match="scalar"):
        check_grad(p["A"] * 2, [p["A"]])
    with pytest.raises(TypeError, match="shared"):
        check_grad(p["loss"], [p["x"]], {p["x"]: p["X"]})
    with pytest.raises(ValueError, match="twice"):
        check_grad(p["loss"], [p["A"], p["A"]], {p["x"]: p["X"]})
    with pytest.raises(ValueError, match="n_samples"):
        check_grad(p["loss"], [p["A"]], {p["x"]: p["X"]}, n_samples=0)
    with pytest.raises(ValueError, match="no parameters"):
        check_grad(p["loss"], [], {p["x"]: p["X"]})


def test_default_update_rngs_are_pinned_during_the_check():
    # A RandomStream RNG advances on every call by default; unpinned, each loss
    # evaluation would draw a new mask and the central differences would be garbage.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # RandomStream is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        srng = pt.random.RandomStream(3)
        mask = srng.uniform(size=(6,)) > 0.5
    W = pytensor.shared(np.arange(1.0, 7.0), name="W")
    loss = pt.sum(pt.switch(mask, W**2, 0.0))
    rngs = [rng for rng, _ in srng.state_updates]
    states = [rng.get_value().bit_generator.state for rng in rngs]
    result = check_grad(loss, [W])
    assert result["W"] < 1e-6
    assert [rng.get_value().bit_generator.state for rng in rngs] == states
