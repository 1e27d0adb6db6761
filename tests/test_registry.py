"""Tests of the rule registry: built-in names, ``get``, ``register`` and entry-point plug-ins.

Every test that adds a name removes it again, so the registry other test files see is the
built-in one.
"""

from __future__ import annotations

import inspect
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import symopt

BUILT_INS = {
    "sgd": symopt.SGD,
    "momentum": symopt.Momentum,
    "nesterov": symopt.Nesterov,
    "adagrad": symopt.AdaGrad,
    "rmsprop": symopt.RMSprop,
    "adadelta": symopt.AdaDelta,
    "adam": symopt.Adam,
    "adamw": symopt.AdamW,
    "amsgrad": symopt.AMSGrad,
    "adamax": symopt.Adamax,
    "nadam": symopt.NAdam,
    "radam": symopt.RAdam,
    "lion": symopt.Lion,
}


@pytest.fixture
def clean_registry() -> Iterator[None]:
    """Removes whatever a test registered, and restores any built-in it replaced."""
    before = dict(symopt.OPTIMIZERS)
    try:
        yield
    finally:
        for name in set(symopt.OPTIMIZERS) - set(before):
            del symopt.OPTIMIZERS[name]
        for name, cls in before.items():
            if symopt.OPTIMIZERS.get(name) is not cls:
                symopt.OPTIMIZERS[name] = cls
        assert dict(symopt.OPTIMIZERS) == before


# --------------------------------------------------------------------------- built-ins and get()


def test_all_built_in_rules_are_registered() -> None:
    assert set(BUILT_INS) <= set(symopt.OPTIMIZERS)
    for name, cls in BUILT_INS.items():
        assert symopt.OPTIMIZERS[name] is cls
        assert symopt.get(name) is cls
        assert cls.name == name


@pytest.mark.parametrize("spelling", ["Adam", "ADAM", "adam", " aDaM "])
def test_get_is_case_insensitive(spelling: str) -> None:
    assert symopt.get(spelling) is symopt.Adam


def test_unknown_name_lists_known_names_and_suggests_a_close_one() -> None:
    with pytest.raises(symopt.UnknownOptimizerError) as info:
        symopt.get("adm")
    message = str(info.value)
    assert "unknown optimizer 'adm'" in message
    assert "Did you mean 'adam'?" in message
    for name in BUILT_INS:
        assert name in message
    assert isinstance(info.value, KeyError)  # dict-style callers can catch it as such

    with pytest.raises(symopt.UnknownOptimizerError, match="Known optimizers: ") as info:
        symopt.get("qqqqqqqq")
    assert "Did you mean" not in str(info.value)


def test_get_rejects_a_non_string() -> None:
    with pytest.raises(TypeError, match="expected an optimizer name"):
        symopt.get(symopt.Adam)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- register()


@pytest.fixture
def signsgd(clean_registry: None) -> type[symopt.Optimizer]:
    @symopt.register("signsgd")
    class SignSGD(symopt.Optimizer):
        """p <- p - lr * sign(g)"""

        hyperparameters = {"learning_rate": 0.01}
        slots: dict[str, float] = {}

        def update_param(self, param, grad, state):
            return param - self.learning_rate * pt.sign(grad), {}

    return SignSGD


def test_custom_rule_in_a_few_lines_registers_and_trains(signsgd: type[symopt.Optimizer]) -> None:
    assert len(inspect.getsource(signsgd).strip().splitlines()) <= 15
    assert symopt.get("SignSGD") is signsgd
    assert symopt.OPTIMIZERS["signsgd"] is signsgd and signsgd.name == "signsgd"
    assert signsgd.hyperparameters == {"learning_rate": 0.01, "weight_decay": 0.0}

    # minimise sum((p - c)^2) from a start 2.5 steps away in the widest coordinate
    c = np.array([1.0, 1.0, 1.0])
    p = pytensor.shared(np.array([3.0, -0.25, 1.05]), name="p")
    loss = ((p - c) ** 2).sum()
    opt = symopt.get("signsgd")([p], learning_rate=0.1)
    step = pytensor.function([], loss, updates=opt.updates(loss))

    expected = p.get_value()
    losses = []
    for _ in range(30):
        losses.append(float(step()))
        expected = expected - 0.1 * np.sign(2 * (expected - c))  # SignSGD written from its equation
    np.testing.assert_allclose(p.get_value(), expected, rtol=0, atol=1e-12)
    assert np.all(np.abs(p.get_value() - c) <= 0.1 + 1e-12)  # within one step of the minimum
    assert losses[-1] < 1e-2 * losses[0]
    assert opt.iterations.get_value() == 30


def test_registering_a_taken_name(signsgd: type[symopt.Optimizer]) -> None:
    class Other(symopt.Optimizer):
        hyperparameters = {"learning_rate": 0.1}

        def update_param(self, param, grad, state):
            return param - self.learning_rate * grad, {}

    with pytest.raises(ValueError, match=r"'signsgd' is taken by .*SignSGD; pass replace=True"):
        symopt.register("SignSGD")(Other)
    assert symopt.get("signsgd") is signsgd

    with pytest.raises(ValueError, match="'adam' is taken"):
        symopt.register("Adam")(Other)
    assert symopt.get("adam") is symopt.Adam

    symopt.register("signsgd")(signsgd)  # the same class again is not a clash
    assert symopt.register("signsgd", replace=True)(Other) is Other
    assert symopt.get("signsgd") is Other


def test_register_rejects_bad_arguments(clean_registry: None) -> None:
    with pytest.raises(TypeError, match="not an Optimizer subclass"):
        symopt.register("thing")(dict)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty string"):
        symopt.register("  ")
    assert "thing" not in symopt.OPTIMIZERS


def test_register_takes_a_full_batch_class_with_the_protocol(clean_registry: None) -> None:
    """A class that is no Optimizer registers when it declares the full-batch kind and has the protocol;
    rules() leaves it out and get_rule() refuses it, naming where."""
    from symopt.registry import FULL_BATCH, rules

    class Newton:
        kind = FULL_BATCH

        def updates(self, loss): ...
        def state_dict(self): ...
        def load_state_dict(self, state): ...
        def save(self, path): ...
        def load(self, path): ...

    symopt.register("newton")(Newton)
    assert symopt.get("newton") is Newton and "newton" not in rules()
    with pytest.raises(symopt.NotARuleError, match=r"^a sweep: 'newton' \(tests.Newton\) is not a per-parameter rule"):
        symopt.get_rule("newton", "a sweep")

    class Half:  # declares the kind, lacks save/load
        kind = FULL_BATCH

        def updates(self, loss): ...

    with pytest.raises(TypeError, match="not an Optimizer subclass .*full-batch, needs loss"):
        symopt.register("half")(Half)
    assert "half" not in symopt.OPTIMIZERS


# --------------------------------------------------------------------------- entry points

PLUGIN_MODULE = "symopt_testplugin_signum"
# A third party's sign-descent rule (the same maths as SignSGD above, so the compiled
# graph of the quadratic below is already in Numba's cache).
PLUGIN_SOURCE = '''
import pytensor.tensor as pt
import symopt


class Signum(symopt.Optimizer):
    """p <- p - lr * sign(g)"""

    hyperparameters = {"learning_rate": 0.1}

    def update_param(self, param, grad, state):
        return param - self.learning_rate * pt.sign(grad), {}
'''


def _install_distribution(root: Path, dist: str, entry_points: str, module_source: str | None = None) -> None:
    """A minimal installed distribution: what pip leaves in site-packages, minus RECORD."""
    if module_source is not None:
        (root / f"{PLUGIN_MODULE}.py").write_text(module_source)
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_registry: None) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        yield tmp_path
    finally:
        monkeypatch.undo()  # sys.path first, so the reload below sees no plug-in
        sys.modules.pop(PLUGIN_MODULE, None)
        symopt.OPTIMIZERS.reload_entry_points()


def test_entry_point_plugin_is_discovered(plugin_path: Path) -> None:
    assert "signum" not in symopt.OPTIMIZERS
    _install_distribution(
        plugin_path,
        "symopt_testplugin",
        f"""\
        [symopt.optimizers]
        Signum = {PLUGIN_MODULE}:Signum
        adam = {PLUGIN_MODULE}:Signum
        """,
        PLUGIN_SOURCE,
    )
    symopt.OPTIMIZERS.reload_entry_points()

    rule = symopt.get("SIGNUM")
    assert rule is sys.modules[PLUGIN_MODULE].Signum
    assert rule.name == "signum"
    assert "signum" in symopt.OPTIMIZERS
    assert symopt.get("adam") is symopt.Adam  # a plug-in cannot shadow a built-in

    # it works: two steps on the quadratic of the SignSGD test
    c = np.array([1.0, 1.0, 1.0])
    p = pytensor.shared(np.array([3.0, -0.25, 1.05]), name="p")
    loss = ((p - c) ** 2).sum()
    step = pytensor.function([], loss, updates=rule([p], learning_rate=0.25).updates(loss))
    step()
    step()
    np.testing.assert_allclose(p.get_value(), [2.5, 0.25, 1.05], rtol=0, atol=1e-12)


def test_entry_point_that_is_not_an_optimizer(plugin_path: Path) -> None:
    _install_distribution(
        plugin_path,
        "symopt_testplugin_bad",
        """\
        [symopt.optimizers]
        notarule = collections:OrderedDict
        """,
    )
    with pytest.warns(RuntimeWarning, match=r"entry point 'notarule' \(collections:OrderedDict\) is not an Optimizer"):
        symopt.OPTIMIZERS.reload_entry_points()
    assert "notarule" not in symopt.OPTIMIZERS
    assert symopt.get("adam") is symopt.Adam  # the built-ins keep working


def test_broken_entry_point_is_reported_by_name(plugin_path: Path) -> None:
    _install_distribution(
        plugin_path,
        "symopt_testplugin_broken",
        """\
        [symopt.optimizers]
        broken = symopt_no_such_module_xyz:Rule
        """,
    )
    with pytest.warns(RuntimeWarning, match=r"entry point 'broken' \(symopt_no_such_module_xyz:Rule\) failed to load"):
        symopt.OPTIMIZERS.reload_entry_points()
    assert "broken" not in symopt.OPTIMIZERS
    assert symopt.get("adam") is symopt.Adam
