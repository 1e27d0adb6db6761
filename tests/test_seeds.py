"""S seeds in one compiled step (symopt.seeds) against S separate Trainer runs."""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
import pytest

import symopt
from symopt.nn import MLP, Dropout, Sequential
from symopt.seeds import SeedStack, SeedTrainer, seed_axis_ndim
from symopt.train import Trainer

from .test_nn import reference_uniform

SIZES = [20, 16, 12, 4]
SEEDS = [3, 11, 42]
EPOCHS = 2


def _data(n_train: int = 200, n_test: int = 70):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, SIZES[0]))
    y_train = rng.integers(0, 4, n_train)
    y_test = rng.integers(0, 4, n_test)
    x_train = (centers[y_train] + rng.normal(scale=1.5, size=(n_train, SIZES[0]))).astype(np.float32)
    x_test = (centers[y_test] + rng.normal(scale=1.5, size=(n_test, SIZES[0]))).astype(np.float32)
    return x_train, y_train, x_test, y_test


def _model(seed: int) -> MLP:
    return MLP(SIZES, dropout=0.25, seed=seed, dtype="float32")


# (rule, hyperparameters, stacked step's mode): hyperparameters chosen so a rule's state
# matters within 2 epochs of 6 steps; one case compiles the stacked step with Numba
# instead of SeedTrainer's default.
CASES = {
    "adam": ("adam", {"learning_rate": 1e-2}, None),
    "momentum": ("momentum", {"learning_rate": 0.05, "momentum": 0.9, "weight_decay": 1e-3}, None),
    "rmsprop": ("rmsprop", {"learning_rate": 1e-2, "clip_value": 0.5}, None),
    "adam-numba": ("adam", {"learning_rate": 1e-2}, "NUMBA"),
    # A learning rate per seed and the guards that reduce per seed (symopt/transforms.py):
    # seed s's separate run has its own learning rate and the same guards.
    "adam-grid-guards": ("adam", {"learning_rate": [1e-2, 3e-2, 5e-3], "clip_norm": 0.3, "clip_global_norm": 0.5,
                                  "max_norm": 0.9, "skip_nonfinite": True}, None),
}
# The Numba case costs a minute of cold compilation: make test-slow runs it; the fast suite
# checks the Numba stacked dropout masks directly (test_stacked_dropout_masks_are_each_seeds_own).
SLOW_CASES = {"adam-numba"}


@pytest.fixture(scope="module")
def data():
    return _data()


@pytest.fixture(
    scope="module",
    params=[pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c for c in CASES],
)
def runs(request, data):
    """(vectorised histories and final params, separate runs' histories and final params)."""
    name, hyper, mode = CASES[request.param]
    x_train, y_train, x_test, y_test = data
    stack = SeedStack(_model, SEEDS)
    opt = symopt.get(name)(stack.params, **hyper)
    trainer = SeedTrainer(stack, opt, x_train, y_train, x_test, y_test, batch_size=32, eval_batch_size=50, mode=mode)
    histories = trainer.fit(EPOCHS, progress=False)
    joint = (histories, [stack.values(s) for s in range(len(SEEDS))])

    # The separate runs reuse one compiled Trainer, reset to each seed's fresh model.
    model = _model(SEEDS[0])
    vectors = {k: v for k, v in hyper.items() if isinstance(v, list)}
    single_opt = symopt.get(name)(model.params, **{**hyper, **{k: v[0] for k, v in vectors.items()}})
    initial = single_opt.state_dict()
    single = Trainer(model, single_opt, x_train, y_train, x_test, y_test, batch_size=32, eval_batch_size=50)
    separate = []
    for seed in SEEDS:
        fresh = _model(seed)
        for var, new in zip(model.params + model.buffers, fresh.params + fresh.buffers):
            var.set_value(new.get_value())
        single_opt.load_state_dict(initial)
        for key, values in vectors.items():
            single_opt.set_hyperparameter(key, values[SEEDS.index(seed)])
        history = single.fit(EPOCHS, seed, progress=False)
        separate.append((history, [p.get_value() for p in model.params]))
    return request.param, joint, separate


def test_final_params_equal_separate_runs(runs):
    name, (_, joint_params), separate = runs
    for s, (_, params) in enumerate(separate):
        for got, want in zip(joint_params[s], params):
            assert got.dtype == np.float32
            # Batched and single matmuls may sum in different orders: float32 round-off only.
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6, err_msg=f"{name} seed {SEEDS[s]}")


def test_histories_equal_separate_runs(runs, data):
    name, (joint_histories, _), separate = runs
    for s, (history, _) in enumerate(separate):
        got = np.array([[r.train_loss, r.test_loss, r.test_accuracy] for r in joint_histories[s]])
        want = np.array([[r.train_loss, r.test_loss, r.test_accuracy] for r in history])
        np.testing.assert_allclose(got[:, :2], want[:, :2], rtol=1e-5, err_msg=f"{name} seed {SEEDS[s]}")
        # An accuracy is a count of argmaxes: float32 round-off may flip a near-tie, one example.
        n_test = len(data[3])
        np.testing.assert_allclose(got[:, 2], want[:, 2], rtol=0, atol=1.01 / n_test, err_msg=f"{name} seed {SEEDS[s]}")


def test_seeds_differ(runs):
    """The copies are independent: different seeds end in different places."""
    _, (_, joint_params), _ = runs
    assert not np.allclose(joint_params[0][0], joint_params[1][0])


@pytest.mark.parametrize("mode", ["NUMBA", "CVM"])
def test_stacked_dropout_masks_are_each_seeds_own(mode):
    """Seed s's slice is the mask seed s's own Dropout draws (the NumPy reference of its
    key, the step, the element index of its (B, n) tensor), step after step, under both backends."""
    seeds, p, shape = [7, 8, 9], 0.3, (40, 50)
    stack = SeedStack(lambda s: Sequential([Dropout(p, seed=s)]), seeds)
    keys = [int(m.layers[0].key.get_value()) for m in stack.models]
    x = pt.tensor3("x", dtype="float32")
    fn = symopt.function([x], stack.output(x, train=True), updates=stack.extra_updates, mode=mode)
    X = np.random.default_rng(1).uniform(0.5, 1.5, (len(seeds), *shape)).astype(np.float32)
    for step in range(2):
        got = fn(X)
        assert got.shape == X.shape and got.dtype == np.float32
        for k, key in enumerate(keys):
            keep = reference_uniform(key, step, shape) >= np.float32(p)
            np.testing.assert_array_equal(got[k] != 0, keep, err_msg=f"seed {seeds[k]} step {step}")
            np.testing.assert_allclose(got[k][keep], X[k][keep] / np.float32(1 - p), rtol=2.0**-22)
    key_vector, counter = stack.buffers
    assert key_vector.get_value().tolist() == keys and counter.get_value() == 2


def test_stack_starts_at_each_seeds_model():
    stack = SeedStack(_model, [5, 6])
    for s, seed in enumerate([5, 6]):
        for got, want in zip(stack.values(s), _model(seed).params):
            np.testing.assert_array_equal(got, want.get_value())
    assert [seed_axis_ndim(p) for p in stack.params] == [p.ndim for p in _model(5).params]
    assert all(p.dtype == "float32" for p in stack.params)


def test_mask_sees_parameter_without_seed_axis():
    """exclude_bias_and_norm must not decay stacked biases (2-d only because of the seed axis)."""
    stack = SeedStack(_model, [0, 1])
    flags = [symopt.masks.exclude_bias_and_norm(p) for p in stack.params]
    assert flags == [True, False] * (len(SIZES) - 1)


class _PerTensor(symopt.transforms.Transform):
    """A user's transform reducing over whole tensors, not declared per_member."""

    name = "per_tensor"
    reduces = "tensor"


@pytest.mark.parametrize("setting", [{"clip_norm": 1.0}, {"clip_global_norm": 1.0}, {"max_norm": 2.0},
                                     {"skip_nonfinite": True}])
def test_reducing_guards_are_per_seed_not_refused(setting, data):
    """The built-in guards reduce per seed (their equality with separate runs: the
    "adam-grid-guards" case above and tests/test_grid.py); a user's reducing transform that
    does not declare per_member still couples the seeds and is refused."""
    stack = SeedStack(_model, [0, 1])
    assert symopt.seeds.seed_coupling_transforms(symopt.SGD(stack.params, **setting)) == []
    opt = symopt.SGD(stack.params, transforms=[_PerTensor()])
    with pytest.raises(ValueError, match="per_tensor would couple the seeds"):
        SeedTrainer(stack, opt, *data)


def test_bad_stacks():
    with pytest.raises(ValueError, match="distinct"):
        SeedStack(_model, [1, 1])
    with pytest.raises(ValueError, match="at least one"):
        SeedStack(_model, [])
    with pytest.raises(ValueError, match="BatchNorm"):
        SeedStack(lambda s: MLP(SIZES, batchnorm=True, seed=s), [0, 1], vectorize=False)
    with pytest.raises(ValueError, match="structure"):
        SeedStack(lambda s: MLP([20, 8 + s, 4], seed=s), [0, 1])


@pytest.mark.parametrize("name, reason", [
    ("prodigy", "its distance estimate d sums over all parameters"),
    ("sam", "its ascent step is normalised by the gradient norm over all parameters"),
    ("sophia", r"its Hutchinson probes u are numbered across the whole stacked tensor \(each member"),
])
def test_rules_that_couple_the_members_refuse_stacks(name, reason):
    """Prodigy, SAM and Sophia declare stackable = False: built over a stack's parameters (alone,
    or as a member of symopt.combine, as SeedTrainer would get them) they refuse with the reason."""
    stack = SeedStack(_model, [0, 1])
    cls = symopt.get(name)
    assert cls.stackable is False
    message = (rf"^{cls.__name__}(\[SGD\])? refuses seed stacks \(stackable = False\): parameter '[^']+' \(index 0\) "
               rf"has a seed axis, and {reason}.*train the seeds separately")
    with pytest.raises(ValueError, match=message):
        cls(stack.params)
    weights = [p for p in stack.params if seed_axis_ndim(p) == 2]
    with pytest.raises(ValueError, match=message):
        symopt.combine(w=cls(weights), rest=symopt.Adam([p for p in stack.params if seed_axis_ndim(p) != 2]))
    cls([p for p in _model(0).params])  # unstacked: fine


def test_optimizer_over_other_params_refused(data):
    stack = SeedStack(_model, [0, 1])
    opt = symopt.SGD(_model(0).params)
    with pytest.raises(ValueError, match="stack.params"):
        SeedTrainer(stack, opt, *data)


def test_nonfinite_losses_are_recorded_by_default_or_raise(data):
    """SeedTrainer keeps its default on_nonfinite="continue" (a diverged seed is a result);
    "raise" stops at the first NaN step as a Trainer does."""
    x_train, y_train, x_test, y_test = data
    poisoned = np.full_like(x_train, np.inf)
    stack = SeedStack(lambda s: MLP([SIZES[0], 4], seed=s, dtype="float32"), [0, 1])
    trainer = SeedTrainer(stack, symopt.SGD(stack.params), poisoned, y_train, x_test, y_test, batch_size=100)
    histories = trainer.fit(1, progress=False)
    assert [np.isnan(h[0].train_loss) for h in histories] == [True, True]
    trainer = SeedTrainer(stack, symopt.SGD(stack.params), poisoned, y_train, x_test, y_test, batch_size=100,
                          on_nonfinite="raise")
    with pytest.raises(symopt.train.NonFiniteLossError, match="epoch 1, step 1"):
        trainer.fit(1, progress=False)
