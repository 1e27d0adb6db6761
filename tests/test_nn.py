"""symopt.nn layers against NumPy references written from their equations.

Compiling is the slow part (seconds per function), so each group of checks compiles
one function in a module-scoped fixture and the tests read its results.
"""

from __future__ import annotations

import math

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.compile.mode import Mode

import symopt
from symopt.gradcheck import check_grad
from symopt.nn import (
    MLP,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Layer,
    MaxPool2D,
    ReLU,
    Sequential,
    Sigmoid,
    Tanh,
    accuracy,
    cross_entropy,
    he,
    initialize,
    normal,
    relu,
    sigmoid,
    softmax,
    tanh,
    xavier,
)


# ---------------------------------------------------------------------- NumPy references
def np_logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


def np_conv2d(x, W, b, stride, pads):
    """Cross-correlation by explicit loops: out[n, f, r, c] = sum(window * W[f]) + b[f]."""
    (top, bottom), (left, right) = pads
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    n, _, h, w = xp.shape
    f, _, kh, kw = W.shape
    sh, sw = stride
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = np.zeros((n, f, ho, wo))
    for i in range(n):
        for k in range(f):
            for r in range(ho):
                for c in range(wo):
                    window = xp[i, :, r * sh : r * sh + kh, c * sw : c * sw + kw]
                    out[i, k, r, c] = np.sum(window * W[k]) + b[k]
    return out


def np_maxpool(x, size, stride):
    (ph, pw), (sh, sw) = size, stride
    n, ch, h, w = x.shape
    ho, wo = (h - ph) // sh + 1, (w - pw) // sw + 1
    out = np.zeros((n, ch, ho, wo))
    for r in range(ho):
        for c in range(wo):
            out[:, :, r, c] = x[:, :, r * sh : r * sh + ph, c * sw : c * sw + pw].max(axis=(2, 3))
    return out


def float64_variables(fn) -> list:
    return [v for v in fn.maker.fgraph.variables if getattr(v.type, "dtype", None) == "float64"]


def _scalar_source(v):
    """The tensor a scalar came from: PyTensor 3.3 turns 0-d tensor inputs of a fused
    elementwise loop into scalars (ScalarFromTensor), still the same float64 hyperparameter."""
    while v.owner is not None and type(v.owner.op).__name__ == "ScalarFromTensor":
        v = v.owner.inputs[0]
    return v


# ---------------------------------------------------------------------- initialisers
def test_he_std_on_a_784x100_layer():
    W = he((784, 100), seed=0, dtype="float32")
    assert W.dtype == np.float32 and W.shape == (784, 100)
    # 78,400 samples: the sample std is within ~0.3 % (1 s.e.) of the true one.
    assert W.std() == pytest.approx(math.sqrt(2 / 784), rel=0.015)
    assert abs(W.mean()) < 4 * math.sqrt(2 / 784) / math.sqrt(W.size)


def test_xavier_normal_and_float_std():
    assert xavier((784, 100), seed=1).std() == pytest.approx(math.sqrt(1 / 784), rel=0.015)
    assert normal((784, 100), seed=2).std() == pytest.approx(0.01, rel=0.015)
    assert initialize("normal", (784, 100), seed=2).std() == pytest.approx(0.01, rel=0.015)
    assert initialize(0.05, (784, 100), seed=3).std() == pytest.approx(0.05, rel=0.015)
    assert initialize("xavier", (784, 100), seed=4, dtype="float64").dtype == np.float64


def test_conv_kernel_fan_in():
    # (out, in, kh, kw): fan_in = in * kh * kw = 72, not out = 64.
    W = initialize("he", (64, 8, 3, 3), seed=5, dtype="float64")
    assert W.std() == pytest.approx(math.sqrt(2 / 72), rel=0.03)


def test_initialisers_are_seeded():
    a = he((50, 20), seed=7, dtype="float64")
    assert np.array_equal(a, he((50, 20), seed=7, dtype="float64"))
    assert not np.array_equal(a, he((50, 20), seed=8, dtype="float64"))
    # Drawn in float64 then cast: the same seed gives the same weights in either dtype.
    np.testing.assert_array_equal(he((50, 20), seed=7, dtype="float32"), a.astype(np.float32))
    g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
    np.testing.assert_array_equal(normal((4,), seed=g1), normal((4,), seed=g2))


def test_initialiser_errors():
    with pytest.raises(ValueError, match="unknown initialiser"):
        initialize("glorot_uniform", (3, 3), seed=0)
    with pytest.raises(TypeError):
        initialize(True, (3, 3), seed=0)
    with pytest.raises(TypeError, match="float dtype"):
        he((3, 3), seed=0, dtype="int32")
    with pytest.raises(TypeError, match="seed"):
        he((3, 3), seed=1.5)


# ---------------------------------------------------------------------- MLP structure
def test_mlp_params_shapes_dtypes_and_zero_biases():
    model = MLP([784, 100, 100, 10], seed=0)
    names = [p.name for p in model.params]
    assert names == ["dense0.W", "dense0.b", "dense1.W", "dense1.b", "dense2.W", "dense2.b"]
    shapes = [p.get_value().shape for p in model.params]
    assert shapes == [(784, 100), (100,), (100, 100), (100,), (100, 10), (10,)]
    assert all(p.dtype == "float32" and p.get_value().dtype == np.float32 for p in model.params)
    for b in model.params[1::2]:
        assert not b.get_value().any()
    W0 = model.params[0].get_value()
    assert W0.std() == pytest.approx(math.sqrt(2 / 784), rel=0.015)
    assert model.params[2].get_value().std() == pytest.approx(math.sqrt(2 / 100), rel=0.05)
    assert model.buffers == []


def test_mlp_batchnorm_dropout_layout_and_seeding():
    plain = MLP([20, 16, 8, 3], seed=4, dtype="float64")
    model = MLP([20, 16, 8, 3], seed=4, dtype="float64", batchnorm=True, dropout=0.5, activation="tanh")
    assert [layer.name for layer in model] == [
        "dense0", "bn0", "tanh0", "dropout0", "dense1", "bn1", "tanh1", "dropout1", "dense2",
    ]
    assert [p.name for p in model.params] == [
        "dense0.W", "bn0.gamma", "bn0.beta", "dense1.W", "bn1.gamma", "bn1.beta", "dense2.W", "dense2.b",
    ]
    assert [b.name for b in model.buffers] == [
        "bn0.running_mean", "bn0.running_var", "dropout0.key", "dropout0.counter",
        "bn1.running_mean", "bn1.running_var", "dropout1.key", "dropout1.counter",
    ]
    assert all(p.dtype == "float64" for p in model.params)
    # Weights depend on the seed only, not on the batchnorm/dropout options.
    for a, b in zip([plain[0].W, plain[2].W, plain[4].W], [model[0].W, model[4].W, model[8].W]):
        np.testing.assert_array_equal(a.get_value(), b.get_value())
    other = MLP([20, 16, 8, 3], seed=5, dtype="float64")
    assert not np.array_equal(other[0].W.get_value(), plain[0].W.get_value())
    # The two dropout layers draw different masks.
    assert model[3].key.get_value() != model[7].key.get_value()


def test_layer_argument_errors():
    with pytest.raises(ValueError):
        MLP([10])
    with pytest.raises(ValueError, match="p must"):
        Dropout(1.0, seed=0)
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm(3, momentum=1.5)
    with pytest.raises(ValueError, match="unknown activation"):
        MLP([3, 2], activation="swish")
    with pytest.raises(ValueError, match="same"):
        Conv2D(1, 1, 3, seed=0, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding"):
        Conv2D(1, 1, 3, seed=0, padding="full")
    x = pt.matrix("x", dtype="float32")
    with pytest.raises(TypeError, match="train must be True or False"):
        Dense(3, 2, seed=0).output(x, train=pt.scalar())
    with pytest.raises(ValueError, match="expects 3 features"):
        Dense(3, 2, seed=0).output(pt.tensor("x", shape=(None, 4), dtype="float32"), train=False)
    with pytest.raises(ValueError, match="height, width"):
        MaxPool2D(2).output(x, train=False)


def test_zero_dropout_is_the_identity_in_train_mode():
    x = pt.matrix("x")
    layer = Dropout(0.0, seed=0)
    assert layer.output(x, train=True) is x
    assert len(layer.extra_updates) == 0


# ---------------------------------------------------------------------- Dense + activations
@pytest.fixture(scope="module")
def dense_run():
    rng = np.random.default_rng(10)
    layer = Dense(4, 3, seed=11, dtype="float64")
    layer.b.set_value(rng.standard_normal(3))
    x = pt.matrix("x")
    h = layer.output(x, train=False)
    fn = pytensor.function(
        [x],
        [h, relu(h), sigmoid(h), tanh(h), ReLU().output(h, False), Sigmoid()(h, False), Tanh()(h, False)],
    )
    X = rng.standard_normal((5, 4)) * 3
    return fn(X), X, layer.W.get_value(), layer.b.get_value()


def test_dense_forward(dense_run):
    (h, *_), X, W, b = dense_run
    np.testing.assert_allclose(h, X @ W + b, rtol=1e-12, atol=1e-12)


def test_activations_forward(dense_run):
    (h, r, s, t, r2, s2, t2), X, W, b = dense_run
    ref = X @ W + b
    assert (ref < 0).any() and (ref > 0).any()
    np.testing.assert_allclose(r, np.maximum(ref, 0), atol=1e-12)
    np.testing.assert_allclose(s, 1 / (1 + np.exp(-ref)), rtol=1e-12)
    np.testing.assert_allclose(t, np.tanh(ref), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(r2, r)
    np.testing.assert_array_equal(s2, s)
    np.testing.assert_array_equal(t2, t)


# ---------------------------------------------------------------------- cross-entropy
HUGE = np.array([[1e4, 0.0, -1e4], [1e4, 1e4 - 1.0, 5.0], [-3.0, 2.0, 0.5], [0.1, 0.2, 0.3]])
LABELS = np.array([1, 0, 1, 2], dtype="int32")


@pytest.fixture(scope="module")
def ce_fn():
    z64, z32, y = pt.matrix("z64"), pt.matrix("z32", dtype="float32"), pt.ivector("y")
    ce64 = cross_entropy(z64, y)
    ce32 = cross_entropy(z32, y)
    return pytensor.function(
        [z64, z32, y],
        [
            ce64,
            cross_entropy(z64, y, reduction="none"),
            cross_entropy(z64, y, reduction="sum"),
            pytensor.grad(ce64, z64),
            softmax(z64),
            accuracy(z64, y),
            ce32,
            pytensor.grad(ce32, z32),
        ],
    )


def test_cross_entropy_on_huge_logits_matches_logsumexp(ce_fn):
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.log(np.exp(HUGE).sum(axis=1))).all()  # the naive form overflows
    ce, per_row, total, grad, sm, acc, ce32, grad32 = ce_fn(HUGE, HUGE.astype("float32"), LABELS)
    ref_rows = np_logsumexp(HUGE) - HUGE[np.arange(4), LABELS]
    assert ref_rows[0] == 1e4 and ref_rows[1] == pytest.approx(math.log1p(math.exp(-1.0)))
    np.testing.assert_allclose(per_row, ref_rows, rtol=1e-12)
    assert np.isfinite(ce) and ce == pytest.approx(ref_rows.mean(), rel=1e-12)
    assert total == pytest.approx(ref_rows.sum(), rel=1e-12)
    assert ce32.dtype == np.float32 and np.isfinite(ce32)
    assert ce32 == pytest.approx(ref_rows.mean(), rel=1e-6)


def test_cross_entropy_gradient_softmax_and_accuracy(ce_fn):
    ce, per_row, total, grad, sm, acc, ce32, grad32 = ce_fn(HUGE, HUGE.astype("float32"), LABELS)
    ref_sm = np.exp(HUGE - np_logsumexp(HUGE)[:, None])
    onehot = np.eye(3)[LABELS]
    np.testing.assert_allclose(sm, ref_sm, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(grad, (ref_sm - onehot) / 4, rtol=1e-10, atol=1e-15)
    assert grad32.dtype == np.float32 and np.isfinite(grad32).all()
    np.testing.assert_allclose(grad32, (ref_sm - onehot) / 4, atol=1e-6)
    assert acc == pytest.approx(np.mean(HUGE.argmax(axis=1) == LABELS))


def test_accuracy_reductions():
    """mean (logits' dtype), sum (an exact int64 count) and none (one boolean per row)."""
    z, y = pt.matrix("z", dtype="float32"), pt.ivector("y")
    fn = pytensor.function([z, y], [symopt.nn.accuracy(z, y, reduction=r) for r in ("mean", "sum", "none")])
    mean, count, hits = fn(HUGE.astype("float32"), LABELS)
    want = HUGE.argmax(axis=1) == LABELS
    assert mean.dtype == np.float32 and mean == np.float32(want.mean())
    assert count.dtype == np.int64 and count == want.sum()
    assert hits.dtype == bool and hits.tolist() == want.tolist()
    with pytest.raises(ValueError, match="reduction"):
        symopt.nn.accuracy(z, y, reduction="max")


def test_cross_entropy_rejects_out_of_range_labels(ce_fn):
    with pytest.raises(AssertionError, match="class labels"):
        ce_fn(HUGE, HUGE.astype("float32"), np.array([1, 0, 3, 2], dtype="int32"))
    with pytest.raises(TypeError, match="integer"):
        cross_entropy(pt.matrix(), pt.vector())


# ---------------------------------------------------------------------- BatchNorm
@pytest.fixture(scope="module")
def bn_setup():
    rng = np.random.default_rng(20)
    bn2 = BatchNorm(3, momentum=0.2, epsilon=1e-3, dtype="float64")
    bn4 = BatchNorm(2, momentum=0.3, epsilon=1e-5, dtype="float64")
    bn4.gamma.set_value(np.array([1.5, -0.5]))
    bn4.beta.set_value(np.array([0.25, 2.0]))
    x2, x4 = pt.matrix("x2"), pt.tensor4("x4")
    train_out = [bn2.output(x2, train=True), bn4.output(x4, train=True)]
    eval_out = [bn2.output(x2, train=False), bn4.output(x4, train=False)]
    # Built after the eval graph: evaluation-mode calls must not clear extra_updates.
    updates = {**bn2.extra_updates, **bn4.extra_updates}
    train = pytensor.function([x2, x4], train_out, updates=updates)
    evaluate = pytensor.function([x2, x4], eval_out)
    batches = [
        (rng.normal(3.0, 2.0, (16, 3)) + np.array([0.0, -5.0, 10.0]), rng.normal(-1.0, 3.0, (4, 2, 3, 5)))
        for _ in range(3)
    ]
    return bn2, bn4, train, evaluate, batches


def test_batchnorm_train_mode_normalises_with_batch_statistics(bn_setup):
    bn2, bn4, train, evaluate, batches = bn_setup
    X2, X4 = batches[0]
    y2, y4 = train(X2, X4)
    # gamma = 1, beta = 0: per-feature mean 0 and (biased) variance var / (var + eps) ~ 1.
    np.testing.assert_allclose(y2.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(y2.var(axis=0), X2.var(axis=0) / (X2.var(axis=0) + 1e-3), rtol=1e-10)
    np.testing.assert_allclose(y2.var(axis=0), 1.0, atol=1e-3)
    mean = X4.mean(axis=(0, 2, 3), keepdims=True)
    var = X4.var(axis=(0, 2, 3), keepdims=True)
    gamma, beta = np.array([1.5, -0.5])[None, :, None, None], np.array([0.25, 2.0])[None, :, None, None]
    np.testing.assert_allclose(y4, gamma * (X4 - mean) / np.sqrt(var + 1e-5) + beta, rtol=1e-10, atol=1e-12)


def test_batchnorm_running_statistics_follow_the_momentum_rule(bn_setup):
    bn2, bn4, train, evaluate, batches = bn_setup
    for layer in (bn2, bn4):
        layer.running_mean.set_value(np.zeros(layer.num_features))
        layer.running_var.set_value(np.ones(layer.num_features))
    assert set(bn2.extra_updates) == {bn2.running_mean, bn2.running_var}
    rm2, rv2, rm4, rv4 = np.zeros(3), np.ones(3), np.zeros(2), np.ones(2)
    for X2, X4 in batches:
        train(X2, X4)
        rm2 = 0.8 * rm2 + 0.2 * X2.mean(axis=0)
        rv2 = 0.8 * rv2 + 0.2 * X2.var(axis=0, ddof=1)
        flat4 = X4.transpose(1, 0, 2, 3).reshape(2, -1)
        rm4 = 0.7 * rm4 + 0.3 * flat4.mean(axis=1)
        rv4 = 0.7 * rv4 + 0.3 * flat4.var(axis=1, ddof=1)
        np.testing.assert_allclose(bn2.running_mean.get_value(), rm2, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(bn2.running_var.get_value(), rv2, rtol=1e-12)
        np.testing.assert_allclose(bn4.running_mean.get_value(), rm4, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(bn4.running_var.get_value(), rv4, rtol=1e-12)


def test_batchnorm_inference_mode_uses_running_statistics(bn_setup):
    bn2, bn4, train, evaluate, batches = bn_setup
    rm2, rv2 = np.array([1.0, -2.0, 0.5]), np.array([4.0, 0.25, 9.0])
    rm4, rv4 = np.array([0.3, -0.1]), np.array([2.0, 0.5])
    bn2.running_mean.set_value(rm2), bn2.running_var.set_value(rv2)
    bn4.running_mean.set_value(rm4), bn4.running_var.set_value(rv4)
    X2, X4 = batches[1]
    y2, y4 = evaluate(X2, X4)
    np.testing.assert_allclose(y2, (X2 - rm2) / np.sqrt(rv2 + 1e-3), rtol=1e-12)
    gamma, beta = np.array([1.5, -0.5])[None, :, None, None], np.array([0.25, 2.0])[None, :, None, None]
    ref4 = gamma * (X4 - rm4[None, :, None, None]) / np.sqrt(rv4[None, :, None, None] + 1e-5) + beta
    np.testing.assert_allclose(y4, ref4, rtol=1e-12, atol=1e-12)
    # Evaluation leaves the running statistics alone.
    np.testing.assert_array_equal(bn2.running_mean.get_value(), rm2)
    np.testing.assert_array_equal(bn4.running_var.get_value(), rv4)


# ---------------------------------------------------------------------- Dropout
P_DROP = 0.25
DROP_SHAPE = (200, 500)
DROP_STEPS = 3

# The mask hash, transcribed from its published constants (SplitMix64, Steele, Lea &
# Flood 2014; finaliser "Mix13" by D. Stafford): output k = (t+1) 2**32 + i + 1 of the
# SplitMix64 stream of the key, h = mix64(key + k G) mod 2**64, u = top 24 (float32) or
# 53 (float64) bits of h.
_G = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z):
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def reference_uniform(key, step, shape, dtype="float32"):
    """NumPy uniforms of one step's mask, element i = row-major flat index."""
    with np.errstate(over="ignore"):
        k = np.uint64((step + 1) << 32) + np.arange(int(np.prod(shape)), dtype=np.uint64) + np.uint64(1)
        h = _mix64(np.uint64(key) + k * _G)
    if dtype == "float32":
        return ((h >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)).reshape(shape)
    return ((h >> np.uint64(11)).astype(np.float64) * 2.0**-53).reshape(shape)


def test_reference_hash_is_splitmix64():
    """The reference reproduces SplitMix64's known outputs (seed 1234567; first output of seed 0)."""
    with np.errstate(over="ignore"):
        outputs = _mix64(np.uint64(1234567) + np.arange(1, 6, dtype=np.uint64) * _G)
        first_of_zero = _mix64(np.uint64(0) + _G)
    assert outputs.tolist() == [6457827717110365317, 3203168211198807973, 9817491932198370423,
                                4593380528125082431, 16408922859458223821]
    assert int(first_of_zero) == 0xE220A8397B1DCDAF


@pytest.fixture(scope="module", params=["NUMBA", "CVM"])
def dropout_setup(request):
    a, b, c = Dropout(P_DROP, seed=7), Dropout(P_DROP, seed=7), Dropout(P_DROP, seed=8)
    d = Dropout(P_DROP, seed=9)
    x = pt.matrix("x", dtype="float32")
    x64 = pt.matrix("x64", dtype="float64")
    outs = [a.output(x, train=True), b.output(x, train=True), c.output(x, train=True), a.output(x, train=False),
            d.output(x64, train=True)]
    updates = {**a.extra_updates, **b.extra_updates, **c.extra_updates, **d.extra_updates}
    fn = pytensor.function([x, x64], outs, updates=updates, mode=request.param)
    X = np.random.default_rng(30).uniform(0.5, 1.5, DROP_SHAPE).astype("float32")
    keys = [int(layer.key.get_value()) for layer in (a, b, c, d)]
    steps = [fn(X, X.astype("float64")) for _ in range(DROP_STEPS)]
    a.reseed(7)
    rewound = fn(X, X.astype("float64"))
    return X, keys, steps, rewound, fn, (a, b, c, d)


def test_dropout_equals_the_reference_mask(dropout_setup):
    """Step t's mask is the reference's exactly (x > 0, so kept <=> nonzero) and its values
    x / (1 - p) there, else 0; float32 stays float32.

    The C backend multiplies by the float32 constant 1/(1-p) in double before rounding,
    NumPy in float32: one ulp apart at most, hence rtol 2**-22 on the values.
    """
    X, (ka, kb, kc, kd), steps, _, _, _ = dropout_setup
    scale32 = np.float32(1 / (1 - P_DROP))
    for t, outs in enumerate(steps):
        for out, key in zip(outs[:3], (ka, kb, kc)):
            assert out.dtype == np.float32
            keep = reference_uniform(key, t, DROP_SHAPE) >= np.float32(P_DROP)
            np.testing.assert_array_equal(out != 0, keep)
            np.testing.assert_allclose(out, np.where(keep, X * scale32, np.float32(0)), rtol=2.0**-22, atol=0)
        keep64 = reference_uniform(kd, t, DROP_SHAPE, "float64") >= P_DROP
        assert outs[4].dtype == np.float64
        np.testing.assert_array_equal(outs[4] != 0, keep64)
        np.testing.assert_allclose(outs[4], np.where(keep64, X.astype(np.float64) / (1 - P_DROP), 0.0), rtol=1e-15)


def test_dropout_keep_fraction_and_mean(dropout_setup):
    X, _, steps, _, _, _ = dropout_setup
    out = steps[0][0]
    kept = out != 0
    # 100,000 units: the dropped fraction has s.d. sqrt(p (1 - p) / n) ~ 0.0014, the
    # mean ratio ~ 0.002; the tolerances are over four of those.
    assert 1 - kept.mean() == pytest.approx(P_DROP, abs=0.006)
    assert out.mean() / X.mean() == pytest.approx(1.0, abs=0.01)


def _corr(a, b):
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def test_dropout_masks_are_uncorrelated(dropout_setup):
    """Neighbouring units (row, column), consecutive steps and different seeds: no correlation.

    For independent masks of n units Pearson's r has s.d. 1/sqrt(n) (0.0032 at 1e5
    units, 0.0045 at the 5e4 pairs of a neighbour check); the bound 0.025 is over five of
    those. The masks are deterministic, so the check cannot flake.
    """
    _, _, steps, _, _, _ = dropout_setup
    masks = [[out != 0 for out in outs[:3]] for outs in steps]
    m = masks[0][0]
    pairs = {
        "column neighbours": (m[:, :-1], m[:, 1:]),
        "row neighbours": (m[:-1], m[1:]),
        "consecutive steps": (masks[0][0], masks[1][0]),
        "steps t and t+2": (masks[0][0], masks[2][0]),
        "seeds 7 and 8": (masks[0][0], masks[0][2]),
    }
    for what, (u, v) in pairs.items():
        assert abs(_corr(u, v)) < 0.025, what


def test_dropout_uniforms_pass_a_chi_square():
    """The compiled uniforms (before the threshold) are uniform on [0, 1) in 100 bins.

    Chi-square with 99 degrees of freedom has mean 99 and s.d. 14; the bound 170 is five
    s.d. above (p ~ 1e-6). Every u must lie in [0, 1) and on the 2**-24 grid.
    """
    from symopt._random import dropout_uniform

    key, counter = pytensor.shared(np.int64(123456789)), pytensor.shared(np.int64(41))
    x = pt.matrix("x", dtype="float32")
    fn = pytensor.function([x], dropout_uniform(key, counter, [x.shape[0], x.shape[1]], "float32"))
    u = fn(np.zeros((400, 250), np.float32))
    np.testing.assert_array_equal(u, reference_uniform(123456789, 41, (400, 250)))
    assert u.dtype == np.float32 and u.min() >= 0 and u.max() < 1
    assert np.array_equal(u * np.float32(2**24), np.floor(u * np.float32(2**24)))
    counts = np.bincount(np.floor(u.ravel() * 100).astype(int), minlength=100)
    expected = u.size / 100
    assert ((counts - expected) ** 2 / expected).sum() < 170


def test_dropout_is_deterministic_for_a_seed(dropout_setup):
    X, _, steps, rewound, _, (a, b, c, d) = dropout_setup
    first, second = steps[0], steps[1]
    np.testing.assert_array_equal(first[0], first[1])  # same seed, same mask
    assert not np.array_equal(first[0], first[2])  # another seed
    assert not np.array_equal(first[0], second[0])  # the counter update advanced the stream
    np.testing.assert_array_equal(rewound[0], first[0])  # reseed rewinds it
    # Only the reseeded layer rewound; its twin went on to its fourth mask.
    np.testing.assert_array_equal(rewound[1] != 0, reference_keep(b, X.shape, DROP_STEPS))
    assert a.counter.get_value() == 1 and b.counter.get_value() == DROP_STEPS + 1
    assert a.counter.dtype == "int64" and a.key.dtype == "int64"


def reference_keep(layer, shape, step):
    return reference_uniform(int(layer.key.get_value()), step, shape) >= np.float32(layer.p)


def test_dropout_is_the_identity_at_evaluation(dropout_setup):
    X, _, steps, *_ = dropout_setup
    assert steps[0][3].dtype == np.float32
    np.testing.assert_array_equal(steps[0][3], X)


def test_dropout_seeding():
    """Int seeds give fixed keys; layers seeded from one Generator get different keys and leave it unadvanced."""
    assert Dropout(0.1, seed=3).key.get_value() == Dropout(0.5, seed=3).key.get_value()
    assert Dropout(0.1, seed=3).key.get_value() != Dropout(0.1, seed=4).key.get_value()
    gen = np.random.default_rng(5)
    state = gen.bit_generator.state
    k1, k2 = Dropout(0.1, seed=gen).key.get_value(), Dropout(0.1, seed=gen).key.get_value()
    assert k1 != k2 and gen.bit_generator.state == state
    assert Dropout(0.1, seed=np.random.default_rng(5)).key.get_value() == k1  # reproducible
    with pytest.raises(TypeError, match="seed must be"):
        Dropout(0.1, seed=1.5)


# ---------------------------------------------------------------------- Conv2D / MaxPool2D
CONV_SPECS = [
    dict(in_channels=2, out_channels=3, kernel_size=3),
    dict(in_channels=2, out_channels=3, kernel_size=(3, 2), stride=2, padding=1),
    dict(in_channels=2, out_channels=2, kernel_size=2, padding="same"),
    dict(in_channels=2, out_channels=1, kernel_size=(2, 3), stride=(1, 2), padding=(2, 0), bias=False),
]
POOL_SPECS = [((2, 2), (2, 2)), ((3, 3), (2, 2)), ((2, 3), (2, 3)), ((2, 2), (1, 1))]


@pytest.fixture(scope="module")
def conv_run():
    rng = np.random.default_rng(40)
    # float32, so the same compiled function also shows no float64 creeps in.
    convs = [Conv2D(**spec, seed=i, dtype="float32", name=f"c{i}") for i, spec in enumerate(CONV_SPECS)]
    for conv in convs:
        if conv.b is not None:
            conv.b.set_value(rng.standard_normal(conv.out_channels).astype("float32"))
    pools = [MaxPool2D(size, stride) for size, stride in POOL_SPECS]
    x = pt.tensor4("x", dtype="float32")
    fn = pytensor.function([x], [c.output(x, False) for c in convs] + [p.output(x, False) for p in pools])
    X = rng.standard_normal((2, 2, 7, 6)).astype("float32")
    return convs, pools, X, fn(X), fn


def test_conv2d_matches_loop_reference(conv_run):
    convs, _, X, outs, fn = conv_run
    for conv, out in zip(convs, outs):
        b = np.zeros(conv.out_channels) if conv.b is None else conv.b.get_value()
        ref = np_conv2d(X.astype(np.float64), conv.W.get_value().astype(np.float64), b, conv.stride, conv.pads)
        assert out.shape == ref.shape and out.dtype == np.float32
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert outs[2].shape[2:] == X.shape[2:]  # "same"
    assert convs[2].pads == ((0, 1), (0, 1))  # an even kernel pads bottom/right


def test_maxpool2d_matches_loop_reference(conv_run):
    _, pools, X, outs, fn = conv_run
    for (size, stride), out in zip(POOL_SPECS, outs[len(CONV_SPECS) :]):
        ref = np_maxpool(X, size, stride)
        assert out.shape == ref.shape and out.dtype == np.float32
        np.testing.assert_array_equal(out, ref)
    assert outs[len(CONV_SPECS)].shape == (2, 2, 3, 3)  # 7x6 -> 3x3: the odd row is dropped


def test_float32_conv_and_pool_compile_without_float64(conv_run):
    *_, fn = conv_run
    assert float64_variables(fn) == []


# ---------------------------------------------------------------------- gradients (float64)
# check_grad verifies the symbolic gradient *graph*, which does not depend on the
# linker; running it through PyTensor's Python linker (NumPy ``perform`` methods, same
# rewrites minus elemwise fusion) saves minutes of cold Numba JIT per test. The Numba
# backend runs these layers' backward passes in the float32 train-step and training
# loop tests below.
PY_MODE = Mode(linker="py", optimizer="fast_run").excluding("fusion")


def _toy_batch(rng, shape, classes):
    return rng.standard_normal(shape), rng.integers(0, classes, shape[0]).astype("int32")


def test_mlp_gradients_with_batchnorm_and_dropout():
    model = MLP([6, 5, 4, 3], batchnorm=True, dropout=0.3, seed=3, dtype="float64")
    x, y = pt.matrix("x"), pt.ivector("y")
    loss = cross_entropy(model.output(x, train=True), y)
    X, Y = _toy_batch(np.random.default_rng(50), (8, 6), 3)
    errors = check_grad(loss, model.params, {x: X, y: Y}, mode=PY_MODE)
    assert set(errors) == {p.name for p in model.params}
    assert max(errors.values()) < 1e-4, errors


def test_cnn_gradients():
    model = Sequential(
        [
            # No bias: BatchNorm removes it, so its gradient is exactly 0 and the
            # finite difference is pure rounding noise.
            Conv2D(2, 3, 2, padding=1, bias=False, seed=1, dtype="float64"),  # (4, 2, 5, 5) -> (4, 3, 6, 6)
            BatchNorm(3, dtype="float64"),
            Tanh(),
            MaxPool2D(2),  # -> 3x3
            MaxPool2D(2, stride=1),  # -> 2x2
            Flatten(),
            Dense(12, 4, seed=2, dtype="float64"),
            Sigmoid(),
            Dropout(0.2, seed=3),
            Dense(4, 3, seed=4, dtype="float64"),
        ]
    )
    x, y = pt.tensor4("x"), pt.ivector("y")
    loss = cross_entropy(model.output(x, train=True), y)
    X, Y = _toy_batch(np.random.default_rng(51), (4, 2, 5, 5), 3)
    errors = check_grad(loss, model.params, {x: X, y: Y}, mode=PY_MODE)
    assert len(errors) == 7
    assert max(errors.values()) < 1e-4, errors


# ---------------------------------------------------------------------- float32 stays float32
def test_float32_cnn_train_step_compiles_without_float64():
    cnn = Sequential(
        [
            Conv2D(1, 2, 2, padding="same", seed=1),
            BatchNorm(2),
            ReLU(),
            MaxPool2D(2),
            Flatten(),
            Dropout(0.1, seed=2),
            Dense(8, 3, seed=3),
        ]
    )
    x, y = pt.tensor4("x", dtype="float32"), pt.ivector("y")
    loss = cross_entropy(cnn.output(x, train=True), y)
    assert all(p.dtype == "float32" for p in cnn.params)
    grads = pytensor.grad(loss, cnn.params)
    fn = pytensor.function([x, y], [loss, *grads], updates=cnn.extra_updates)
    assert float64_variables(fn) == []
    rng = np.random.default_rng(60)
    res = fn(rng.standard_normal((4, 1, 4, 4)).astype("float32"), np.array([0, 1, 2, 1], dtype="int32"))
    assert all(r.dtype == np.float32 and np.isfinite(r).all() for r in res)
    bn = cnn[1]
    assert bn.running_mean.get_value().dtype == np.float32 and bn.running_var.get_value().dtype == np.float32
    assert np.abs(bn.running_mean.get_value()).max() > 0  # the update ran, in float32


# ---------------------------------------------------------------------- the training loop
def test_training_loop_with_optimizer_and_extra_updates():
    rng = np.random.default_rng(70)
    centers = np.array([[2.0, 0.0], [-2.0, 1.0], [0.0, -2.5]])
    Y = rng.integers(0, 3, 96).astype("int32")
    X = (centers[Y] + 0.5 * rng.standard_normal((96, 2))).astype("float32")
    model = MLP([2, 16, 3], batchnorm=True, dropout=0.1, seed=1)
    x, y = pt.matrix("x", dtype="float32"), pt.ivector("y")
    out = model.output(x, train=True)
    loss = cross_entropy(out, y)
    opt = symopt.Adam(model.params, learning_rate=0.05)
    ups = opt.updates(loss)
    ups.update(model.extra_updates)
    assert set(model.extra_updates) == {model[1].running_mean, model[1].running_var, model[3].counter}
    train = pytensor.function([x, y], loss, updates=ups)
    predict = pytensor.function([x, y], accuracy(model.output(x, train=False), y))
    # A float32 model stays float32: the only float64 values are the optimiser's
    # float64 hyperparameter scalars, inputs cast to float32 where used.
    hyper = {v for group in opt.param_groups for v in group.values.values()}
    assert hyper and {_scalar_source(v) for v in float64_variables(train)} <= hyper
    assert float64_variables(predict) == []
    first = float(train(X, Y))
    for _ in range(60):
        last = float(train(X, Y))
    assert last < 0.3 * first
    # The same compiled step moved the BN running statistics and the dropout step counter.
    assert np.abs(model[1].running_mean.get_value()).max() > 0.1
    assert model[3].counter.get_value() == 61
    # Evaluation mode (running statistics, no dropout) classifies the blobs.
    assert float(predict(X, Y)) > 0.9


def test_custom_layer_hook():
    class Scale(Layer):
        def __init__(self):
            super().__init__("scale")
            self.k = pytensor.shared(np.float64(2.0), name="k")

        @property
        def params(self):
            return [self.k]

        def forward(self, x, train, updates):
            return x * self.k

    model = Sequential([Scale(), Flatten()])
    assert model.params[0].name == "k" and len(model) == 2
    with pytest.raises(TypeError, match="not a Layer"):
        Sequential([Scale(), relu])
