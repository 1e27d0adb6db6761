"""A grid in one compiled step: per-member hyperparameters and per-member guards on a seed stack.

Member ``i`` of a stacked run (parameters with a leading seed axis, ``tag.seed_axis``) must
equal the separate single-model run with member ``i``'s own scalar hyperparameters and the
same guard, to float64 round-off. The separate runs are the independent reference: one
compiled single-model step per rule, reset to each member's initial values and state.
The model is element-wise arithmetic and small sums (no BLAS), float64 throughout.
"""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import symopt
from symopt.transforms import Transform

S, STEPS = 3, 4
N_IN, N_OUT, BATCH = 3, 2, 5
# float64 round-off of a few steps of a smooth model; nothing here depends on BLAS.
RTOL, ATOL = 1e-10, 1e-13


def _data(poison: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per member and step: inputs (STEPS, S, BATCH, N_IN) and targets; ``poison=(step, member)``
    puts a NaN into that member's batch of that step."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(STEPS, S, BATCH, N_IN))
    y = rng.normal(size=(STEPS, S, BATCH, N_OUT))
    if poison is not None:
        x[poison[0], poison[1], 0, 0] = np.nan
    return x, y


def _initial() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.normal(size=(S, N_IN, N_OUT)), rng.normal(size=(S, N_OUT)) * 0.1]


def _loss(W, b, x, y):
    """Mean squared error of tanh(x W + b), written with sums so no BLAS enters; W may be
    stacked ``(S, n_in, n_out)`` with x ``(S, B, n_in)`` (one loss per member) or single."""
    if W.ndim == 3:
        pred = (x[:, :, :, None] * W[:, None]).sum(axis=2) + b[:, None, :]
        return ((pt.tanh(pred) - y) ** 2).mean(axis=(1, 2))
    pred = (x[:, :, None] * W[None]).sum(axis=1) + b[None, :]
    return ((pt.tanh(pred) - y) ** 2).mean()


def _stacked_params() -> list:
    params = []
    for value, name in zip(_initial(), ["W", "b"]):
        var = pytensor.shared(value.copy(), name=f"{name}[seeds]")
        var.tag.seed_axis = True
        params.append(var)
    return params


def _member_values(rule: type, name: str) -> np.ndarray:
    """S distinct valid values of a numeric hyperparameter around the rule's default."""
    declaration = rule.declarations()[name]
    default = float(declaration.default)
    bounds = declaration.bounds(name)
    if bounds is not None and bounds[1] == 1.0:  # a decay factor
        values = [default, default * 0.9, default * 0.8] if default > 0 else [0.0, 0.5, 0.8]
    elif default == 0.0:
        values = [0.0, 1e-2, 1e-3]
    else:
        # The widest spread the range allows (Rprop's eta_plus lies in (1, inf)).
        for spread in (2.0, 1.1, 1.01):
            values = [default, default * spread, default / spread]
            try:
                declaration.check(rule.__name__, name, values)
                break
            except ValueError:
                continue
    return np.array(values)


def _grid(rule: type) -> dict[str, np.ndarray]:
    """Every numeric hyperparameter of the rule as a per-member vector."""
    return {name: _member_values(rule, name) for name, d in rule.declarations().items() if not d.is_option}


def _stacked_run(rule: type, hyper: dict, poison=None, set_after: dict | None = None):
    """(stacked optimiser, params, step function) after STEPS steps; ``set_after`` is applied
    with set_hyperparameter after the compile (the values the run then uses)."""
    params = _stacked_params()
    x, y = pt.tensor3("x"), pt.tensor3("y")
    opt = rule(params[: _n_params(rule)], **hyper)
    losses = _loss(*params, x, y)
    step = pytensor.function([x, y], losses, updates=opt.updates(losses))
    for name, value in (set_after or {}).items():
        opt.set_hyperparameter(name, value)
    xs, ys = _data(poison)
    for t in range(STEPS):
        step(xs[t], ys[t])
    return opt, params


class _Single:
    """One compiled single-model step of a rule, reset to member ``i`` for each separate run."""

    def __init__(self, rule: type, hyper: dict):
        first = _initial()
        self.params = [pytensor.shared(v[0].copy(), name=n) for v, n in zip(first, ["W", "b"])]
        x, y = pt.matrix("x"), pt.matrix("y")
        self.opt = rule(self.params[: _n_params(rule)], **hyper)
        self.fresh = self.opt.state_dict()
        self.step = pytensor.function([x, y], _loss(*self.params, x, y), updates=self.opt.updates(_loss(*self.params, x, y)))

    def run(self, member: int, scalars: dict[str, float], poison=None) -> dict[str, np.ndarray]:
        for var, value in zip(self.params, _initial()):
            var.set_value(value[member].copy())
        self.opt.load_state_dict(self.fresh)
        for name, value in scalars.items():
            self.opt.set_hyperparameter(name, value)
        xs, ys = _data(poison)
        for t in range(STEPS):
            self.step(xs[t, member], ys[t, member])
        return _snapshot(self.opt)


def _snapshot(opt, member: int | None = None) -> dict[str, np.ndarray]:
    """Parameters, slots and optimiser-wide scalars (member ``member``'s slice of a stack)."""
    out = {}
    for i, p in enumerate(opt.params):
        value = p.get_value()
        out[f"param{i}"] = value if member is None else value[member]
    for slot, arrays in opt.state_dict()["slots"].items():
        for i, a in enumerate(arrays):
            out[f"{slot}{i}"] = a if member is None else a[member]
    for gi, scalars in enumerate(opt.state_dict()["scalars"]):
        for k, v in scalars.items():
            out[f"scalar{gi}/{k}"] = v if member is None else v[member]
    return out


def _assert_member_equals(stacked, member, separate):
    got = _snapshot(stacked, member)
    assert set(got) == set(separate)
    for key, want in separate.items():
        np.testing.assert_allclose(got[key], want, rtol=RTOL, atol=ATOL, err_msg=f"member {member}: {key}")


def _stack_refused(rule: type) -> str | None:
    """Why the rule cannot run this test's stacked grid (its own refusal), or None."""
    if not getattr(rule, "stackable", True):
        return f"{rule.__name__} is not stackable: {rule.unstackable_reason}"
    if not getattr(rule, "per_member_values", True):
        return f"{rule.__name__} declares per_member_values = False (it refuses per-member vectors on a stack)"
    try:
        rule(_stacked_params()[: _n_params(rule)])
    except ValueError as exc:  # e.g. Prodigy: its distance estimate sums over all parameters
        return f"{rule.__name__} refuses seed stacks: {exc}"
    return None


def _n_params(rule: type) -> int:
    """Muon steps matrices only: it gets W (b stays fixed); the others W and b."""
    return 1 if rule.name == "muon" else 2


# ---------------------------------------------------------------- per-member hyperparameters
@pytest.fixture(scope="module", params=sorted(symopt.registry.rules()))  # lbfgs is no per-parameter rule
def grid_run(request):
    rule = symopt.get(request.param)
    reason = _stack_refused(rule)
    if reason:
        pytest.skip(reason)
    hyper = _grid(rule)
    stacked, _ = _stacked_run(rule, hyper)
    # The single run is built with the last member's values (RMSprop keeps a momentum buffer
    # only if built with momentum > 0), then set to each member's.
    single = _Single(rule, {k: v[-1] for k, v in hyper.items()})
    separate = [single.run(i, {k: v[i] for k, v in hyper.items()}) for i in range(S)]
    return rule, hyper, stacked, separate


@pytest.mark.parametrize("member", range(S))
def test_member_equals_its_separate_run(grid_run, member):
    _, _, stacked, separate = grid_run
    _assert_member_equals(stacked, member, separate[member])


def test_members_differ(grid_run):
    _, _, stacked, _ = grid_run
    W = stacked.params[0].get_value()
    W0 = _initial()[0]
    moved = [W[i] - W0[i] for i in range(S)]
    assert not np.allclose(moved[0], moved[1]) and not np.allclose(moved[1], moved[2])


def test_get_hyperparameter_returns_the_vector(grid_run):
    _, hyper, stacked, _ = grid_run
    for name, values in hyper.items():
        got = stacked.get_hyperparameter(name)
        assert isinstance(got, np.ndarray) and got.shape == (S,)
        np.testing.assert_array_equal(got, values)


def test_set_hyperparameter_vector_without_recompiling():
    """Built with one vector, set to another after compiling: the run follows the new values,
    equal to the separate runs with those values; one number sets every member."""
    rule = symopt.Adam
    built = {"learning_rate": np.array([1e-3, 1e-3, 1e-3]), "beta1": np.array([0.9, 0.9, 0.9])}
    new = {"learning_rate": [3e-2, 1e-2, 5e-3], "beta1": [0.5, 0.7, 0.95]}
    stacked, _ = _stacked_run(rule, built, set_after=new)
    single = _Single(rule, {})
    for i in range(S):
        _assert_member_equals(stacked, i, single.run(i, {k: v[i] for k, v in new.items()}))
    stacked.set_hyperparameter("learning_rate", 0.25)
    np.testing.assert_array_equal(stacked.get_hyperparameter("learning_rate"), [0.25] * S)


def test_vector_state_round_trip(tmp_path):
    params = _stacked_params()
    opt = symopt.Adam(params, learning_rate=[1e-3, 2e-3, 3e-3])
    path = tmp_path / "adam.npz"
    opt.save(path)
    state = opt.state_dict()
    np.testing.assert_array_equal(state["hyperparameters"][0]["learning_rate"], [1e-3, 2e-3, 3e-3])
    opt.set_hyperparameter("learning_rate", [5e-3, 6e-3, 7e-3])
    opt.load(path)
    np.testing.assert_array_equal(opt.get_hyperparameter("learning_rate"), [1e-3, 2e-3, 3e-3])
    bad = opt.state_dict()
    bad["hyperparameters"][0]["learning_rate"] = np.array([1e-3, 2e-3])
    with pytest.raises(ValueError, match="learning_rate.*3 values"):
        opt.load_state_dict(bad)
    bad["hyperparameters"][0]["learning_rate"] = np.array([1e-3, -2e-3, 1e-3])
    with pytest.raises(ValueError, match="learning_rate"):
        opt.load_state_dict(bad)
    np.testing.assert_array_equal(opt.get_hyperparameter("learning_rate"), [1e-3, 2e-3, 3e-3])


def test_bad_vectors_refused():
    params = _stacked_params()
    with pytest.raises(ValueError, match=r"'learning_rate' has 2 values but the stack has 3 members"):
        symopt.Adam(params, learning_rate=[1e-3, 2e-3])
    with pytest.raises(ValueError, match=r"'beta1\[2\]' must lie in \[0, 1\)"):
        symopt.Adam(params, beta1=[0.9, 0.9, 1.5])
    with pytest.raises(ValueError, match="not stacked"):
        symopt.Adam([pytensor.shared(np.zeros(3), name="w")], learning_rate=[1e-3, 2e-3, 3e-3])
    opt = symopt.Adam(params)
    with pytest.raises(ValueError, match="one value for all stack members"):
        opt.set_hyperparameter("learning_rate", [1e-3, 2e-3, 3e-3])
    opt = symopt.Adam(params, learning_rate=[1e-3, 2e-3, 3e-3])
    with pytest.raises(ValueError, match=r"'learning_rate' has 4 values"):
        opt.set_hyperparameter("learning_rate", [1e-3] * 4)
    with pytest.raises(ValueError, match=r"learning_rate\[0\]"):
        opt.set_hyperparameter("learning_rate", [-1.0, 1e-3, 1e-3])
    np.testing.assert_array_equal(opt.get_hyperparameter("learning_rate"), [1e-3, 2e-3, 3e-3])
    adafactor = symopt.get("adafactor")  # per_member_values = False: its row/column state drops an axis
    with pytest.raises(ValueError, match="'learning_rate' cannot be a per-member vector"):
        adafactor(params, learning_rate=[1e-3, 2e-3, 3e-3])
    with pytest.raises(ValueError, match="skip_nonfinite on a seed stack"):
        adafactor(params, skip_nonfinite=True)


# ---------------------------------------------------------------- per-member guards
GUARDS = {
    "clip_norm": {"clip_norm": 0.05},
    "clip_global_norm": {"clip_global_norm": 0.08},
    "max_norm": {"max_norm": 1.2},
    "skip_nonfinite": {"skip_nonfinite": True},
    "all": {"clip_norm": 0.2, "clip_global_norm": 0.1, "max_norm": 1.2, "skip_nonfinite": True},
}
# Member 1's batch of step 2 holds a NaN: with skip_nonfinite that member skips one step
# (its separate run skips it too); the others step on.
POISON = (1, 1)


def _guard_stacked(guard, poison):
    hyper = {"learning_rate": np.array([5e-2, 2e-2, 1e-1]), **guard}
    return _stacked_run(symopt.Adam, hyper, poison=poison)[0]


@pytest.fixture(scope="module", params=list(GUARDS))
def guarded(request):
    guard = GUARDS[request.param]
    poison = POISON if guard.get("skip_nonfinite") else None
    stacked = _guard_stacked(guard, poison)
    single = _Single(symopt.Adam, guard)
    separate, counters = [], []
    for i in range(S):
        separate.append(single.run(i, {"learning_rate": [5e-2, 2e-2, 1e-1][i]}, poison=poison))
        counters.append((int(single.opt.iterations.get_value()), int(single.opt.skipped.get_value())))
    return request.param, stacked, separate, counters


@pytest.mark.parametrize("member", range(S))
def test_guarded_member_equals_its_separate_run(guarded, member):
    _, stacked, separate, _ = guarded
    _assert_member_equals(stacked, member, separate[member])


@pytest.fixture(scope="module")
def unguarded():
    return _Single(symopt.Adam, {})


def test_guard_is_active(guarded, unguarded):
    """The guard binds: the guarded separate run differs from an unguarded one (else the
    equality above would not test the guard); the poisoned member diverges without skipping."""
    name, stacked, separate, _ = guarded
    if GUARDS[name].get("skip_nonfinite"):
        free = unguarded.run(POISON[1], {"learning_rate": 2e-2}, poison=POISON)
        assert np.isnan(free["param0"]).all() and np.isfinite(separate[POISON[1]]["param0"]).all()
    if name != "skip_nonfinite":
        free = unguarded.run(0, {"learning_rate": 5e-2})
        assert not np.allclose(free["param0"], separate[0]["param0"], rtol=1e-6)


def test_skipped_member_counts_its_own_steps(guarded):
    name, stacked, _, counters = guarded
    if not GUARDS[name].get("skip_nonfinite"):
        pytest.skip("no skip_nonfinite in this guard")
    np.testing.assert_array_equal(stacked.member_steps.get_value(), [c[0] for c in counters])
    np.testing.assert_array_equal(stacked.member_skipped.get_value(), [c[1] for c in counters])
    assert [c[1] for c in counters] == [0, 1, 0]
    assert int(stacked.iterations.get_value()) == STEPS  # some member stepped on every call
    assert int(stacked.skipped.get_value()) == 1
    state = stacked.state_dict()
    np.testing.assert_array_equal(state["counters"]["member_steps"], [STEPS, STEPS - 1, STEPS])


class _PerTensorScale(Transform):
    """A user's transform that reduces over whole tensors without declaring per_member."""

    name = "per_tensor"
    reduces = "tensor"

    def gradients(self, grads, applied, step):
        return [None if g is None else g / (1 + pt.sum(abs(g))) for g in grads], applied


def test_seed_coupling_transforms():
    from symopt.transforms import seed_coupling_transforms

    params = _stacked_params()
    assert seed_coupling_transforms(symopt.Adam(params, **GUARDS["all"])) == []
    assert seed_coupling_transforms(symopt.Adam(params, transforms=[_PerTensorScale()])) == ["per_tensor"]
    wrapped = symopt.EMA(symopt.Adam(params, skip_nonfinite=True))
    assert seed_coupling_transforms(wrapped) == ["skip_nonfinite (under EMA)"]


def test_clip_global_norm_needs_all_params_stacked():
    stacked = _stacked_params()
    with pytest.raises(ValueError, match="clip_global_norm"):
        symopt.Adam([stacked[0], pytensor.shared(np.zeros(3), name="plain")], clip_global_norm=1.0)


# ---------------------------------------------------------------- a diverging seed in a SeedTrainer
def test_diverging_seed_is_frozen_and_the_others_equal_their_separate_runs():
    """One seed's learning rate makes it diverge: with skip_nonfinite it is frozen (its steps
    with a non-finite loss change nothing, counted per seed), the others train on; every seed
    equals its separate Trainer run with its own learning rate (float32 round-off of the
    batched matmuls), the diverged one included."""
    from symopt.nn import MLP
    from symopt.seeds import SeedStack, SeedTrainer
    from symopt.train import Trainer

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 12))
    y_train, y_test = rng.integers(0, 4, 120), rng.integers(0, 4, 40)
    x_train = (centers[y_train] + rng.normal(size=(120, 12))).astype(np.float32)
    x_test = (centers[y_test] + rng.normal(size=(40, 12))).astype(np.float32)
    seeds, rates = [5, 6, 7], [0.1, 1e30, 0.05]

    def make(seed):
        return MLP([12, 8, 4], seed=seed, dtype="float32")

    stack = SeedStack(make, seeds)
    opt = symopt.SGD(stack.params, learning_rate=rates, skip_nonfinite=True)
    trainer = SeedTrainer(stack, opt, x_train, y_train, x_test, y_test, batch_size=30, eval_batch_size=40)
    histories = trainer.fit(2, progress=False)

    model = make(seeds[0])
    single_opt = symopt.SGD(model.params, skip_nonfinite=True)
    initial = single_opt.state_dict()
    single = Trainer(model, single_opt, x_train, y_train, x_test, y_test, batch_size=30, eval_batch_size=40)
    skipped = []
    for s, seed in enumerate(seeds):
        fresh = make(seed)
        for var, new in zip(model.params, fresh.params):
            var.set_value(new.get_value())
        single_opt.load_state_dict(initial)
        single_opt.set_hyperparameter("learning_rate", rates[s])
        history = single.fit(2, seed, progress=False)
        skipped.append(int(single_opt.skipped.get_value()))
        for got, want in zip(stack.values(s), [p.get_value() for p in model.params]):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6, err_msg=f"seed {seed}")
        assert [r.skipped for r in histories[s]] == [r.skipped for r in history]
        if s != 1:
            np.testing.assert_allclose([r.train_loss for r in histories[s]], [r.train_loss for r in history], rtol=1e-5)
    assert skipped[0] == skipped[2] == 0 and skipped[1] > 0
    np.testing.assert_array_equal(opt.member_skipped.get_value(), skipped)
    np.testing.assert_array_equal(opt.member_steps.get_value(), [8, 8 - skipped[1], 8])
