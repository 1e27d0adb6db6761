"""Paired stack members (``SeedStack(..., paired=True)``, ``member_grid``): members of one seed
differ only in their hyperparameters, and each equals its separate single-model run.

The reference is independent of the stacked step: one compiled :class:`~symopt.train.Trainer`
per rule, reset to a fresh ``MLP(seed=s)`` and given member ``i``'s learning rate. Data
orders and dropout masks are compared directly (batch indices; masks against the NumPy
reference of the counter-based hash, ``tests/test_nn.reference_uniform``).
"""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
import pytest

import symopt
from symopt.nn import Dropout, Sequential
from symopt.seeds import MemberGrid, SeedStack, SeedTrainer, StackGroup, member_grid
from symopt.train import Trainer

from .test_nn import reference_uniform
from .test_seeds import _data, _model

SEEDS = [3, 11]
RATES = [1e-2, 3e-2]
EPOCHS = 2
BATCH = 32


@pytest.fixture(scope="module")
def data():
    return _data()


@pytest.fixture(scope="module")
def runs(data):
    """(grid, stacked histories, final params, data orders per epoch) and the separate runs'
    (histories, final params, data orders per epoch), one per member."""
    x_train, y_train, x_test, y_test = data
    grid = member_grid(SEEDS, learning_rate=RATES)
    stack = SeedStack(_model, grid.seeds, paired=True)
    opt = symopt.Adam(stack.params, **grid.values)
    trainer = SeedTrainer(stack, opt, x_train, y_train, x_test, y_test, batch_size=BATCH, eval_batch_size=50)
    orders: list[np.ndarray] = []
    histories = trainer.fit(EPOCHS, progress=False, callback=lambda e, r: orders.append(trainer.order.get_value().copy()))
    joint = (histories, [stack.values(i) for i in range(stack.n_seeds)], orders)

    model = _model(SEEDS[0])
    single_opt = symopt.Adam(model.params, learning_rate=RATES[0])
    initial = single_opt.state_dict()
    single = Trainer(model, single_opt, x_train, y_train, x_test, y_test, batch_size=BATCH, eval_batch_size=50)
    separate = []
    for seed, rate in zip(grid.seeds, grid.values["learning_rate"]):
        fresh = _model(seed)
        for var, new in zip(model.params + model.buffers, fresh.params + fresh.buffers):
            var.set_value(new.get_value())
        single_opt.load_state_dict(initial)
        single_opt.set_hyperparameter("learning_rate", rate)
        single_orders: list[np.ndarray] = []
        history = single.fit(EPOCHS, seed, progress=False,
                             callback=lambda r: single_orders.append(single.order.get_value().copy()))
        separate.append((history, [p.get_value() for p in model.params], single_orders))
    return grid, joint, separate


def test_member_grid_is_seed_major():
    grid = member_grid([5, 6, 7], learning_rate=[0.1, 0.2], beta1=[0.8, 0.9])
    assert isinstance(grid, MemberGrid)
    assert grid.seeds == [5] * 4 + [6] * 4 + [7] * 4
    assert grid.values["learning_rate"] == [0.1, 0.1, 0.2, 0.2] * 3
    assert grid.values["beta1"] == [0.8, 0.9, 0.8, 0.9] * 3


def test_members_equal_their_separate_runs(runs):
    grid, (histories, params, _), separate = runs
    for i, (history, want_params, _) in enumerate(separate):
        where = f"member {i} (seed {grid.seeds[i]}, lr {grid.values['learning_rate'][i]})"
        for got, want in zip(params[i], want_params):
            # Batched and single matmuls may sum in different orders: float32 round-off only.
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6, err_msg=where)
        got = np.array([[r.train_loss, r.test_loss] for r in histories[i]])
        want = np.array([[r.train_loss, r.test_loss] for r in history])
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=where)


def test_paired_members_differ_only_by_their_setting(runs):
    """Same seed, other learning rate: other weights at the end; the same start (one model)."""
    _, (_, params, _), _ = runs
    assert not np.allclose(params[0][0], params[1][0])
    stack = SeedStack(_model, [3, 3, 11], paired=True)
    assert stack.members_of == {3: [0, 1], 11: [2]}
    for a, b in zip(stack.values(0), stack.values(1)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(stack.values(0)[0], stack.values(2)[0])


def test_paired_members_see_the_same_batches(runs, data):
    """Batch indices: the rows of the stacked order of a seed's members are the same
    permutation, the one that seed's separate run draws, and differ between seeds."""
    grid, (_, _, orders), separate = runs
    for epoch in range(EPOCHS):
        order = orders[epoch]
        assert order.shape == (len(grid.seeds), len(data[0]))
        np.testing.assert_array_equal(order[0], order[1])
        np.testing.assert_array_equal(order[2], order[3])
        assert not np.array_equal(order[0], order[2])
        for i, (_, _, single_orders) in enumerate(separate):
            np.testing.assert_array_equal(order[i], single_orders[epoch], err_msg=f"member {i}, epoch {epoch + 1}")


@pytest.mark.parametrize("vectorize", [None, True])
def test_paired_members_draw_the_same_dropout_masks(vectorize):
    """Masks compared element by element, step after step: paired members' masks are
    identical and each is its seed's own (the NumPy reference of its key), on the
    batched-matmul path (keys a vector over members) and the vectorised graph."""
    seeds, p, shape = [7, 7, 9, 9], 0.3, (12, 10)
    stack = SeedStack(lambda s: Sequential([Dropout(p, seed=s)]), seeds, paired=True, vectorize=vectorize)
    assert stack.vectorized == bool(vectorize)
    x = pt.tensor3("x", dtype="float32")
    fn = symopt.function([x], stack.output(x, train=True, per_member=True), updates=stack.extra_updates)
    # Every member the same positive input: a zero marks a dropped unit.
    X = np.broadcast_to(np.random.default_rng(1).uniform(0.5, 1.5, shape).astype(np.float32), (4, *shape)).copy()
    keys = {s: int(Dropout(p, seed=s).key.get_value()) for s in set(seeds)}
    for step in range(3):
        masks = fn(X) != 0
        np.testing.assert_array_equal(masks[0], masks[1], err_msg=f"step {step}")
        np.testing.assert_array_equal(masks[2], masks[3], err_msg=f"step {step}")
        assert not np.array_equal(masks[0], masks[2])
        for i, seed in enumerate(seeds):
            np.testing.assert_array_equal(masks[i], reference_uniform(keys[seed], step, shape) >= np.float32(p),
                                          err_msg=f"member {i} step {step}")


def test_two_rules_on_disjoint_stacks(runs, data, tmp_path):
    """Adam (lr 1e-2) on one stack and heavy-ball Momentum on another, both of seeds 3 and 11,
    combined into one compiled step: each member equals its separate run (the Adam ones
    are those of the ``runs`` fixture), and seed s's members see the same batches. The run
    stops after epoch 1 and resumes from its checkpoint (one file for both stacks)."""
    x_train, y_train, x_test, y_test = data
    adam_stack, momentum_stack = SeedStack(_model, SEEDS), SeedStack(_model, SEEDS)
    momentum = {"learning_rate": 0.05, "momentum": 0.9}
    opt = symopt.combine(adam=symopt.Adam(adam_stack.params, learning_rate=RATES[0]),
                         momentum=symopt.Momentum(momentum_stack.params, **momentum))
    trainer = SeedTrainer([adam_stack, momentum_stack], opt, x_train, y_train, x_test, y_test, batch_size=BATCH,
                          eval_batch_size=50)
    assert isinstance(trainer.stack, StackGroup) and trainer.stack.seeds == SEEDS + SEEDS
    assert trainer.stack.members_of == {3: [0, 2], 11: [1, 3]}
    orders: list[np.ndarray] = []
    keep = lambda e, r: orders.append(trainer.order.get_value().copy())  # noqa: E731
    checkpoint = tmp_path / "group.ckpt"
    trainer.fit(1, progress=False, callback=keep, checkpoint=checkpoint)
    histories = trainer.fit(EPOCHS, progress=False, callback=keep, checkpoint=checkpoint, resume=True)
    assert len(orders) == EPOCHS and all(len(h) == EPOCHS for h in histories)
    for order in orders:
        np.testing.assert_array_equal(order[0], order[2])
        np.testing.assert_array_equal(order[1], order[3])

    grid, _, separate = runs
    adam_runs = [separate[i] for i, (seed, rate) in enumerate(zip(grid.seeds, grid.values["learning_rate"]))
                 if rate == RATES[0]]
    model = _model(SEEDS[0])
    single_opt = symopt.Momentum(model.params, **momentum)
    initial = single_opt.state_dict()
    single = Trainer(model, single_opt, x_train, y_train, x_test, y_test, batch_size=BATCH, eval_batch_size=50)
    momentum_runs = []
    for seed in SEEDS:
        fresh = _model(seed)
        for var, new in zip(model.params + model.buffers, fresh.params + fresh.buffers):
            var.set_value(new.get_value())
        single_opt.load_state_dict(initial)
        history = single.fit(EPOCHS, seed, progress=False)
        momentum_runs.append((history, [p.get_value() for p in model.params]))
    for i, (history, want_params, *_) in enumerate(adam_runs + momentum_runs):
        for got, want in zip(trainer.stack.values(i), want_params):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6, err_msg=f"member {i}")
        np.testing.assert_allclose([r.test_loss for r in histories[i]], [r.test_loss for r in history], rtol=1e-5,
                                   err_msg=f"member {i}")
    assert not np.allclose(trainer.stack.values(0)[0], trainer.stack.values(2)[0])  # the rules differ


def test_bad_paired_input():
    with pytest.raises(ValueError, match=r"seeds must be distinct, got \[1, 1\]; pass paired=True"):
        SeedStack(_model, [1, 1])
    with pytest.raises(TypeError, match="paired must be True or False"):
        SeedStack(_model, [1, 1], paired="yes")
    with pytest.raises(ValueError, match="member_grid: seeds must be distinct"):
        member_grid([0, 0], learning_rate=[0.1])
    with pytest.raises(ValueError, match="member_grid: seeds is empty"):
        member_grid([], learning_rate=[0.1])
    with pytest.raises(ValueError, match="at least one hyperparameter"):
        member_grid([0, 1])
    with pytest.raises(TypeError, match="learning_rate must be a non-empty list"):
        member_grid([0, 1], learning_rate=0.1)
    with pytest.raises(TypeError, match="learning_rate must be a non-empty list"):
        member_grid([0, 1], learning_rate=[])
    stack = SeedStack(_model, [0, 1])
    with pytest.raises(ValueError, match=r"stacks\[0\] and stacks\[1\] share"):
        StackGroup([stack, stack])
    with pytest.raises(TypeError, match=r"stacks\[1\] is a int"):
        StackGroup([stack, 3])
    with pytest.raises(TypeError, match="non-empty list of SeedStack"):
        StackGroup([])
