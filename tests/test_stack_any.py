"""A SeedStack of any symopt.nn model (the vectorize_graph path of symopt.seeds) against
separate Trainer runs of each seed's own model."""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
import pytest

import symopt
from symopt._batched import BatchedGemm
from symopt.nn import MLP, BatchNorm, Conv2D, Dense, Dropout, Flatten, Layer, MaxPool2D, ReLU, Sequential
from symopt.seeds import SeedStack, SeedTrainer
from symopt.train import ModelStep, Trainer

SEEDS = [3, 11, 42]
EPOCHS = 2
BATCH = 16
# A learning rate per member: member s must equal the run with its own rate.
LEARNING_RATES = [1e-2, 3e-2, 5e-3]


def _cnn(seed: int) -> Sequential:
    """Conv2D -> BatchNorm -> ReLU -> MaxPool2D -> Dense (and a Dropout: each member's own stream)."""
    rng = np.random.default_rng(seed)
    return Sequential([
        Conv2D(1, 3, 3, padding=1, seed=rng, bias=False, dtype="float64", name="conv"),
        BatchNorm(3, dtype="float64", name="bn"),
        ReLU(),
        MaxPool2D(2),
        Flatten(),
        Dropout(0.2, seed=rng, name="drop"),
        Dense(3 * 4 * 4, 4, seed=rng, init="xavier", dtype="float64", name="out"),
    ])


def _images(n_train: int = 96, n_test: int = 40):
    """Four classes of noisy 8x8 single-channel images around random templates."""
    rng = np.random.default_rng(0)
    templates = rng.normal(size=(4, 1, 8, 8))
    y_train, y_test = rng.integers(0, 4, n_train), rng.integers(0, 4, n_test)
    x_train = templates[y_train] + rng.normal(scale=1.0, size=(n_train, 1, 8, 8))
    x_test = templates[y_test] + rng.normal(scale=1.0, size=(n_test, 1, 8, 8))
    return x_train, y_train, x_test, y_test


class ImageStep(ModelStep):
    """One model's step on NCHW images (ModelStep's input is a (batch, features) matrix)."""

    def _inputs(self):
        return pt.tensor4("x", dtype=self.model.params[0].dtype), pt.vector("y", dtype="int64")


# The CNN runs cost minutes even with warm compile caches (fixture 446 s at load 4.5; alone,
# load 1.6-2.7: building the SeedTrainer 190 s, the single Trainer 3.5 s, a stacked epoch
# 0.02 s), almost all in compiling the vectorised graph, so make test-slow runs them.
@pytest.fixture(scope="module")
def runs():
    """(stack, its histories, separate runs' (history, params, buffers) per seed)."""
    data = _images()
    stack = SeedStack(_cnn, SEEDS)
    opt = symopt.Adam(stack.params, learning_rate=LEARNING_RATES)
    trainer = SeedTrainer(stack, opt, *data, batch_size=BATCH, eval_batch_size=25)
    histories = trainer.fit(EPOCHS, progress=False)

    # The separate runs reuse one compiled Trainer, reset to each seed's fresh model.
    model = _cnn(SEEDS[0])
    single_opt = symopt.Adam(model.params, learning_rate=LEARNING_RATES[0])
    initial = single_opt.state_dict()
    single = Trainer(model, single_opt, *data, batch_size=BATCH, eval_batch_size=25, step=ImageStep(model))
    separate = []
    for seed, rate in zip(SEEDS, LEARNING_RATES):
        fresh = _cnn(seed)
        for var, new in zip(model.params + model.buffers, fresh.params + fresh.buffers):
            var.set_value(new.get_value())
        single_opt.load_state_dict(initial)
        single_opt.set_hyperparameter("learning_rate", rate)
        history = single.fit(EPOCHS, seed, progress=False)
        separate.append((history, [p.get_value() for p in model.params], [b.get_value() for b in model.buffers]))
    return stack, histories, separate, trainer


@pytest.mark.slow
def test_cnn_stack_takes_the_vectorised_path(runs):
    stack, _, _, trainer = runs
    assert stack.vectorized and stack.input_ndim == 4
    ops = {type(node.op) for node in trainer.train_step.maker.fgraph.apply_nodes}
    assert BatchedGemm not in ops
    assert [b.name for b in stack.buffers] == [f"{n}[seeds]" for n in
                                               ("bn.running_mean", "bn.running_var", "drop.key", "drop.counter")]
    assert all(b.get_value().shape[0] == len(SEEDS) for b in stack.params + stack.buffers)


@pytest.mark.slow
def test_cnn_params_equal_separate_runs(runs):
    stack, _, separate, _ = runs
    for s, (_, params, _) in enumerate(separate):
        for got, want in zip(stack.values(s), params):
            assert got.dtype == np.float64
            # float64: only the summation order of the (batched) products may differ.
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=f"seed {SEEDS[s]}")


@pytest.mark.slow
def test_cnn_batchnorm_statistics_and_dropout_streams_equal_separate_runs(runs):
    """Each member's running statistics are its own run's, and its dropout key and step
    counter those of its own stream."""
    stack, _, separate, _ = runs
    steps = EPOCHS * (96 // BATCH)
    for s, (_, _, buffers) in enumerate(separate):
        mean, var, key, counter = stack.buffer_values(s)
        np.testing.assert_allclose(mean, buffers[0], rtol=1e-10, atol=1e-12, err_msg=f"seed {SEEDS[s]}")
        np.testing.assert_allclose(var, buffers[1], rtol=1e-10, atol=1e-12, err_msg=f"seed {SEEDS[s]}")
        assert mean.dtype == var.dtype == np.float64
        assert key == buffers[2] and counter == buffers[3] == steps
    # The statistics moved, and differently per member.
    assert not np.allclose(stack.buffer_values(0)[0], stack.buffer_values(1)[0])
    assert not np.allclose(stack.buffer_values(0)[1], 1.0)


@pytest.mark.slow
def test_cnn_histories_equal_separate_runs(runs):
    _, histories, separate, _ = runs
    for s, (history, _, _) in enumerate(separate):
        got = np.array([[r.train_loss, r.test_loss, r.test_accuracy] for r in histories[s]])
        want = np.array([[r.train_loss, r.test_loss, r.test_accuracy] for r in history])
        np.testing.assert_allclose(got, want, rtol=1e-10, err_msg=f"seed {SEEDS[s]}")


def _mlp(seed: int) -> MLP:
    return MLP([6, 5, 3], dropout=0.3, seed=seed, dtype="float64")


@pytest.fixture(scope="module")
def mlp_batch():
    rng = np.random.default_rng(5)
    return rng.normal(size=(len(SEEDS), 7, 6)), rng.integers(0, 3, (len(SEEDS), 7))


def _stacked_step(stack, x_value, y_value):
    """One compiled SGD step of the stack: returns the per-member losses."""
    x, y = pt.tensor3("x", dtype="float64"), pt.lmatrix("y")
    losses = symopt.seeds.seed_cross_entropy(stack.output(x, train=True), y)
    updates = symopt.SGD(stack.params, learning_rate=0.1).updates(losses.sum())
    updates.update(stack.extra_updates)
    fn = symopt.function([x, y], losses, updates=updates)
    return fn, fn(x_value, y_value)


def test_dense_stack_keeps_the_batched_gemm_path(mlp_batch):
    """Dense/activation/Dropout stacks stay on BatchedGemm (the path benchmarks/README.md
    measures); vectorize=True sends the same model through vectorize_graph instead."""
    fast, vectorised = SeedStack(_mlp, SEEDS), SeedStack(_mlp, SEEDS, vectorize=True)
    assert not fast.vectorized and vectorised.vectorized
    fn, _ = _stacked_step(fast, *mlp_batch)
    assert any(isinstance(node.op, BatchedGemm) for node in fn.maker.fgraph.apply_nodes)
    fn, _ = _stacked_step(vectorised, *mlp_batch)
    assert not any(isinstance(node.op, BatchedGemm) for node in fn.maker.fgraph.apply_nodes)


def test_vectorised_dense_stack_step_equals_each_members_own_step(mlp_batch):
    """A forced vectorize_graph stack of an MLP with dropout: one SGD step of member s is
    the step its own model takes on its own batch (same mask stream)."""
    x_value, y_value = mlp_batch
    stack = SeedStack(_mlp, SEEDS, vectorize=True)
    _, losses = _stacked_step(stack, x_value, y_value)
    for s, seed in enumerate(SEEDS):
        model = _mlp(seed)
        x, y = pt.dmatrix("x"), pt.lvector("y")
        loss = symopt.nn.cross_entropy(model.output(x, train=True), y)
        updates = symopt.SGD(model.params, learning_rate=0.1).updates(loss)
        updates.update(model.extra_updates)
        want = symopt.function([x, y], loss, updates=updates)(x_value[s], y_value[s])
        np.testing.assert_allclose(losses[s], want, rtol=1e-12)
        for got, param in zip(stack.values(s), model.params):
            np.testing.assert_allclose(got, param.get_value(), rtol=1e-12, atol=1e-15)
        assert [int(v) for v in stack.buffer_values(s)] == [int(b.get_value()) for b in model.buffers]


class _Counter(Layer):
    """A user's layer that updates a shared variable it does not list as a buffer."""

    def __init__(self):
        super().__init__("counter")
        self.count = symopt.nn.pytensor.shared(np.int64(0), name="hidden")

    def forward(self, x, train, updates):
        if train:
            updates[self.count] = self.count + 1
        return x


def test_bad_vectorised_stacks():
    with pytest.raises(ValueError, match="vectorize must be"):
        SeedStack(_mlp, [0, 1], vectorize="yes")
    with pytest.raises(ValueError, match="Conv2D 'conv' needs vectorize"):
        SeedStack(_cnn, [0, 1], vectorize=False)
    with pytest.raises(TypeError, match="Layer"):
        SeedStack(lambda s: object(), [0, 1])
    unknown = SeedStack(lambda s: Sequential([ReLU()]), [0, 1], vectorize=True)
    with pytest.raises(ValueError, match="pass per_member"):
        unknown.output(pt.dmatrix("x"), train=False)
    hidden = SeedStack(lambda s: Sequential([Dense(2, 2, seed=s), _Counter()]), [0, 1])
    with pytest.raises(ValueError, match="hidden, which is not among its params or buffers"):
        hidden.output(pt.tensor3("x"), train=True)
    with pytest.raises(ValueError, match="structure"):
        SeedStack(lambda s: Sequential([Conv2D(1, 2 + s, 3, seed=s), BatchNorm(2 + s)]), [0, 1])
