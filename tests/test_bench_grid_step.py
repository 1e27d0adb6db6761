"""The correctness check of ``benchmarks/grid_step.py``, without compiling anything.

The benchmark asserts, before timing, that every framework's first grid step equals a
NumPy reference member by member. Here: that reference's backpropagation against finite
differences, and the check itself on first steps simulated in float32 by
``tests/reference.py``'s Adam: it accepts them, and refuses a member given another
member's learning rate, a wrong gradient and a step the rate does not allow.
"""

from __future__ import annotations

import numpy as np
import pytest

from ._scripts import load_benchmark
from .reference import Adam

gs = load_benchmark("grid_step")


def test_numpy_gradients_match_finite_differences() -> None:
    """The reference's hand-written backpropagation against central differences (float64)."""
    rng = np.random.default_rng(3)
    sizes = [7, 6, 5, 4]
    params = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        params += [rng.standard_normal((a, b)), rng.standard_normal(b) * 0.1]
    x, y = rng.standard_normal((9, sizes[0])), rng.integers(0, sizes[-1], 9)
    loss, grads = gs.numpy_loss_and_grads(params, x, y)
    h = 1e-6
    for j, p in enumerate(params):
        numeric = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            shifted = [q.copy() for q in params]
            shifted[j][idx] += h
            up = gs.numpy_loss_and_grads(shifted, x, y)[0]
            shifted[j][idx] -= 2 * h
            numeric[idx] = (up - gs.numpy_loss_and_grads(shifted, x, y)[0]) / (2 * h)
        np.testing.assert_allclose(grads[j], numeric, rtol=1e-6, atol=1e-8)
    assert loss > 0


class _Record:
    """A stand-in for a timed contender: a name and its ``first`` record."""

    def __init__(self, name: str, first: dict) -> None:
        self.name, self.first = name, first


@pytest.fixture(scope="module")
def simulated() -> tuple:
    """A 2-rate x 2-seed grid and each member's first step taken in float32 by the reference Adam."""
    grid = gs.Grid([1e-4, 3e-2], 2)
    from seeds_step import _he_params  # grid_step put benchmarks/ on sys.path

    init_one = [_he_params(s) for s in grid.seeds]  # seeds_step's He init, one list per member
    init = [np.stack(leaf) for leaf in zip(*init_one)]
    losses, params, moments = [], [[] for _ in init], [[] for _ in init]
    for i in range(grid.size):
        rows = grid.rows(0)[i]
        p0 = [p[i] for p in init]
        loss, grads = gs.numpy_loss_and_grads(p0, grid.x[rows], grid.y[rows])
        adam = Adam(p0, learning_rate=float(grid.lrs[i]))  # float32 arithmetic, as a framework's step
        adam.step([g.astype(np.float32) for g in grads])
        losses.append(np.float32(loss))
        for j in range(len(init)):
            params[j].append(adam.params[j])
            moments[j].append(adam.state[j]["exp_avg"])
    first = {"lrs": grid.lrs, "loss": np.array(losses), "params": [np.stack(p) for p in params],
             "exp_avg": [np.stack(m) for m in moments]}
    return grid, init, first


def test_check_accepts_a_float32_first_step(simulated: tuple) -> None:
    grid, init, first = simulated
    worst = gs.check_first_step([_Record("float32", first)], grid, init)["float32"]
    assert worst["param_err_over_tol"] < 1


def test_check_refuses_another_members_rate(simulated: tuple) -> None:
    """Members 0 and 1 (rate 1e-4) and 2, 3 (3e-2): the steps of 1 and 2 swapped."""
    grid, init, first = simulated
    swapped = {**first, "params": [p.copy() for p in first["params"]]}
    for j, p in enumerate(swapped["params"]):
        steps = p - init[j]
        p[1], p[2] = init[j][1] + steps[2], init[j][2] + steps[1]
    with pytest.raises(AssertionError, match="member 1"):
        gs.check_first_step([_Record("swapped", swapped)], grid, init)


def test_check_refuses_a_wrong_gradient(simulated: tuple) -> None:
    grid, init, first = simulated
    wrong = {**first, "exp_avg": [m.copy() for m in first["exp_avg"]]}
    wrong["exp_avg"][2][3] *= 1.001
    with pytest.raises(AssertionError, match="member 3.*first moment of parameter 2"):
        gs.check_first_step([_Record("wrong", wrong)], grid, init)


def test_check_refuses_a_step_larger_than_the_rate(simulated: tuple) -> None:
    grid, init, first = simulated
    big = {**first, "params": [p.copy() for p in first["params"]]}
    big["params"][0][0] = init[0][0] + 3 * (big["params"][0][0] - init[0][0])
    with pytest.raises(AssertionError, match="member 0"):
        gs.check_first_step([_Record("big", big)], grid, init)


def test_grid_is_lr_major_with_a_data_order_per_seed() -> None:
    grid = gs.Grid([1e-3, 1e-2, 1e-1], 2)
    assert grid.lrs.tolist() == [1e-3, 1e-3, 1e-2, 1e-2, 1e-1, 1e-1] and grid.seeds == [0, 1, 0, 1, 0, 1]
    rows = grid.rows(0)
    assert rows.shape == (6, gs.BATCH)
    np.testing.assert_array_equal(rows[0], rows[2])  # one seed, one order
    assert not np.array_equal(rows[0], rows[1])
    np.testing.assert_array_equal(rows[1], np.random.default_rng(1).permutation(len(grid.x))[:gs.BATCH])
    np.testing.assert_array_equal(grid.rows(gs.N_BATCHES), rows)  # batches cycle over the data
