"""Smoke test of the step-time benchmark harness (``benchmarks/step_time.py``).

Correctness of the harness only, on a tiny configuration, and no time thresholds:
the hand-written NumPy rules agree with the independent references in
:mod:`tests.reference`, the NumPy gradients with finite differences, the matmul floor
does exactly the products a train step needs, and a tiny end-to-end run gives every
contender the same parameters after the check steps and a well-formed JSON and
markdown report. torch and JAX parts run only when the ``bench`` extra is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytensor.tensor as pt
import pytest

import symopt

from ._scripts import load_benchmark
from .reference import REFERENCES

ROOT = Path(__file__).resolve().parents[1]
TINY_SIZES = [12, 8, 8, 8, 8, 10]  # five dense layers and 10 classes: the benchmark graph, small
TINY_BATCH = 8


st = load_benchmark("step_time")
HAS_TORCH = st.available("torch")
HAS_JAX = st.available("jax") and st.available("optax")


def test_benchmark_tables_name_registered_rules() -> None:
    """The NumPy, torch and optax tables cover rules that exist (a rule missing from them is skipped)."""
    for table in (st.NUMPY_SLOTS, st.TORCH_RULES, st.OPTAX_RULES, st.STEP_FLOOR_RULES, st.NOT_FUSED,
                  st.TORCH_NOT_COMPARED, st.OPTAX_NOT_COMPARED):
        assert set(table) <= set(symopt.registry.rules())


def test_every_builtin_rule_has_a_step_floor_or_the_reason_it_has_none() -> None:
    """A fused Numba pass for every built-in rule whose update is element-wise; the others say why."""
    builtin = {n for n in symopt.registry.rules() if symopt.get(n).__module__.startswith("symopt.")}
    assert builtin - set(st.STEP_FLOOR_RULES) - set(st.NOT_FUSED) == set()
    assert set(st.STEP_FLOOR_RULES) & set(st.NOT_FUSED) == set()
    assert set(st.TORCH_RULES) & set(st.TORCH_NOT_COMPARED) == set() == set(st.OPTAX_RULES) & set(st.OPTAX_NOT_COMPARED)
    assert "Newton-Schulz" in st.NOT_FUSED["muon"] and st.NOT_FUSED["muon"].startswith("not a fused pass")
    skipped = st.skipped_contenders("muon", with_torch=False, with_jax=False)
    assert skipped["step-floor"] == f"no step floor for 'muon': {st.NOT_FUSED['muon']}"


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("name", sorted(st.NUMPY_SLOTS))
def test_numpy_rule_matches_reference(name: str, weight_decay: float) -> None:
    """The benchmark's in-place NumPy rule equals tests/reference.py over 12 steps (float32), without and
    with weight decay (coupled, decoupled or the rule's own, as each rule applies it)."""
    rng = np.random.default_rng(1)
    params = [rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal(5).astype(np.float32)]
    h = {**st.hyperparameters(name), "weight_decay": weight_decay}
    mine = [p.copy() for p in params]
    rule = st.NumpyRule(name, mine, h)
    ref = REFERENCES[name](params, **h)
    for _ in range(12):
        grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
        ref.step([g.copy() for g in grads])
        rule.step(mine, [g.copy() for g in grads])
    for a, b in zip(mine, ref.params):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(st.STEP_FLOOR_RULES))
def test_step_floor_kernel_matches_reference(name: str) -> None:
    """The step floor's fused Numba loop does the rule's update: tests/reference.py over 12 steps (float32).

    A (6, 5) weight and a bias, flattened as the step floor passes them; 12 steps cover
    RAdam's switch to the rectified update (step 6 with beta2 = 0.999) and NAdam's
    momentum product. With weight decay on, so the coupled and decoupled forms are used.
    """
    rng = np.random.default_rng(2)
    h = {**st.hyperparameters(name), "weight_decay": 0.1}
    rounded = st._rounded(h)
    kernel, slots, names = st.fused_update_kernel(name, weight_decay=True)
    params = [rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal(5).astype(np.float32)]
    ref = REFERENCES[name](params, **h)
    mine = [p.copy().reshape(-1) for p in params]
    state = [[np.zeros(p.size, np.float32) for _ in slots] for p in params]
    carry: dict[str, float] = {}
    for t in range(1, 13):
        grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
        ref.step([g.copy() for g in grads])
        lr, wd = rounded["learning_rate"], rounded["weight_decay"]
        scalars = {"lr": lr, "wd": wd, "dec": 1.0 - lr * wd, **st.STEP_FLOOR_RULES[name][2](rounded, t, carry)}
        args = [np.float32(scalars[n]) for n in names]
        for p, g, slot in zip(mine, grads, state, strict=True):
            kernel(p, g.reshape(-1).copy(), *slot, *args)
    for a, b in zip(mine, ref.params, strict=True):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b.reshape(-1), rtol=2e-5, atol=1e-6)


def test_step_floor_is_the_products_plus_one_update_pass() -> None:
    """The step floor runs the step's products and updates every parameter and slot once per step."""
    problem = st.make_problem(TINY_SIZES, TINY_BATCH, n_batches=2)
    floor = st.StepFloor("adam", problem)
    before = [p.copy() for p in floor.params]
    for i in range(3):
        floor.step(i)
    assert floor.matmuls.calls == 3 * len(st.floor_shapes(TINY_SIZES, TINY_BATCH)) and floor.t == 3
    assert all(np.all(p != b) for p, b in zip(floor.params, before, strict=True))  # every element moved
    assert all(np.all(m != 0) and np.all(v > 0) for _, _, (m, v) in floor.flat)
    # The products read the parameters being updated, and the update reads their gradients.
    assert all(w is p for w, p in zip(floor.matmuls.Ws, floor.params[0::2], strict=True))
    assert all(g.base is gw or g is gw for (_, g, _), gw in zip(floor.flat[0::2], floor.matmuls.out_gW, strict=True))


def test_numpy_gradients_match_finite_differences() -> None:
    """The hand-written backward pass against central differences, in float64."""
    problem = st.make_problem([5, 4, 3], batch=6, n_batches=1, seed=3)
    params = [p.astype(np.float64) for p in problem.init]
    params[1] += 0.1  # non-zero biases, so their gradients are exercised too
    x, y = problem.xs[0].astype(np.float64), problem.ys[0]
    _, grads = st.numpy_forward_backward(params, x, y)
    eps = 1e-6
    for p, g in zip(params, grads):
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + eps
            up = st.numpy_forward_backward(params, x, y)[0]
            p[idx] = old - eps
            down = st.numpy_forward_backward(params, x, y)[0]
            p[idx] = old
            assert g[idx] == pytest.approx((up - down) / (2 * eps), abs=1e-7)


def test_floor_does_exactly_the_step_matmuls() -> None:
    """5 forward + 5 weight-gradient + 4 input-gradient products for the 5-layer MLP."""
    shapes = st.floor_shapes(st.SIZES, st.BATCH)
    kinds = [k for k, _, _ in shapes]
    assert len(shapes) == 14
    assert (kinds.count("forward"), kinds.count("weight-gradient"), kinds.count("input-gradient")) == (5, 5, 4)
    for _, (m, k1), (k2, n) in shapes:
        assert k1 == k2 and min(m, n) > 0
    floor = st.MatmulFloor(st.make_problem(TINY_SIZES, TINY_BATCH, n_batches=2))
    for i in range(3):
        floor.step(i)
    assert floor.calls == 3 * len(st.floor_shapes(TINY_SIZES, TINY_BATCH)) == 42


def test_tiny_run_same_work_and_report(tmp_path: Path) -> None:
    """A tiny end-to-end run: every contender agrees with NumPy; the JSON and markdown are complete."""
    cfg = st.Config(optimizers=["adam"], backends=[], steps=3, rounds=2, warmup=1, sizes=TINY_SIZES,
                    batch=TINY_BATCH, n_batches=4, compile_optimizers=[], seeds=2 if HAS_JAX else 0,
                    verbose=False)
    result = st.run_benchmark(cfg)
    out = result["optimizers"]["adam"]
    expected = {"symopt[default]", "numpy", "floor", "step-floor"}
    expected |= {"torch", "torch-foreach"} if HAS_TORCH else set()
    expected |= {"jax-optax"} if HAS_JAX else set()
    assert set(out["contenders"]) == expected
    for name, c in out["contenders"].items():
        assert "error" not in c, (name, c)
        assert c["n"] == cfg.rounds * cfg.steps and c["median_ms"] > 0
    assert set(out["check"]) == expected - {"numpy", "floor", "step-floor"}
    for name, check in out["check"].items():
        assert check["passed"], (name, check)
        assert check["elements"] == sum(p.size for p in st.make_problem(TINY_SIZES, TINY_BATCH).init)
    # The floor ran exactly 14 products per step it took.
    assert out["floor_matmuls_per_step"] == 14
    assert out["floor_calls_total"] == 14 * out["floor_steps_total"]
    assert out["ratios"]["default_over_floor"] > 0 and out["ratios"]["default_over_step_floor"] > 0
    assert set(result["targets"]) == set(st.TARGETS)
    for key in ("cpu_model", "usable_cores", "threads", "blas", "loadavg_before", "loadavg_after"):
        assert key in result["machine"]
    assert out["check_reference"] == "numpy" and out["skipped"] == {k: v for k, v in out["skipped"].items()
                                                                     if "not installed" in v}
    assert result["versions"]["numpy"] == np.__version__
    if HAS_JAX:
        vmap = result["jax_vmap"]["adam"]
        assert vmap["seeds"] == 2 and vmap["per_seed_step_ms_median"] > 0

    json_path, md_path = st.write_outputs(result, tmp_path / "step_time.json")
    assert json.loads(json_path.read_text())["optimizers"]["adam"]["check"] == out["check"]
    markdown = md_path.read_text()
    assert "| adam |" in markdown and "default / step floor" in markdown and "Targets" in markdown

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{st.README_BEGIN}\nPREVIOUS-TABLE\n{st.README_END}\noutro\n")
    assert st.update_readme(st.render_markdown(result), readme)
    text = readme.read_text()
    assert "PREVIOUS-TABLE" not in text and "| adam |" in text and text.startswith("intro") and text.endswith("outro\n")
    begin, end = st.README_SECTIONS["target3"]
    readme.write_text(f"{st.README_BEGIN}\nKEEP\n{st.README_END}\n{begin}\nOLD\n{end}\n")
    assert st.update_readme("NEW\n", readme, section="target3")
    assert readme.read_text() == f"{st.README_BEGIN}\nKEEP\n{st.README_END}\n{begin}\nNEW\n{end}\n"


@pytest.fixture
def new_rule():
    """A rule registered only for this test (sign descent), which no benchmark table knows."""
    name = "benchsign"

    @symopt.register(name)
    class BenchSign(symopt.Optimizer):
        """p <- p - lr * sign(g)"""

        hyperparameters = {"learning_rate": 0.01}
        slots: dict = {}

        def update_param(self, param, grad, state):
            return param - self.learning_rate * pt.sign(grad), {}

    try:
        yield name
    finally:
        del symopt.OPTIMIZERS[name]


def test_new_rule_needs_no_numpy_torch_or_optax_step(new_rule: str) -> None:
    """A rule without a NumPy (or torch, optax) counterpart is benchmarked without them, saying why."""
    cfg = st.Config(optimizers=[new_rule], backends=[], steps=2, rounds=1, warmup=1, sizes=TINY_SIZES,
                    batch=TINY_BATCH, n_batches=2, compile_optimizers=[], verbose=False)
    result = st.run_benchmark(cfg)
    out = result["optimizers"][new_rule]
    assert set(out["contenders"]) == {"symopt[default]", "floor"}
    assert all("error" not in c for c in out["contenders"].values())
    assert "no hand-written NumPy step for 'benchsign'" in out["skipped"]["numpy"]
    assert "no fused update kernel for 'benchsign'" in out["skipped"]["step-floor"]
    if HAS_TORCH:
        assert "no torch counterpart for 'benchsign'" in out["skipped"]["torch"]
    if HAS_JAX:
        assert "no optax counterpart for 'benchsign'" in out["skipped"]["jax-optax"]
    assert out["check_reference"] == "symopt[default]" and out["check"] == {}
    markdown = st.render_markdown(result)
    assert "`numpy` skipped for benchsign: no hand-written NumPy step" in markdown
    assert "against `symopt[default]` instead (no NumPy step): benchsign" in markdown


def test_lbfgs_is_refused_by_name_and_left_out_of_all(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """lbfgs (the registry's full-batch kind) has no mini-batch train step to time: named, it is one
    clear error before anything runs; ``--optimizers all`` takes the per-parameter rules only."""
    with pytest.raises(SystemExit) as exit_info:
        st.main(["--optimizers", "adam,lbfgs", "--out", str(tmp_path / "t.json")])
    assert exit_info.value.code == 2
    assert "step_time.py: 'lbfgs' (symopt.LBFGS) is not a per-parameter rule" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()
    seen: list[list[str]] = []

    class Stop(Exception):
        pass

    def record(cfg: st.Config) -> None:  # what would be run, without running it
        seen.append(list(cfg.optimizers))
        raise Stop

    monkeypatch.setattr(st, "run_benchmark", record)
    with pytest.raises(Stop):
        st.main(["--optimizers", "all", "--out", str(tmp_path / "t.json")])
    assert seen == [symopt.registry.rules()] and "lbfgs" not in seen[0]


def test_failing_backend_is_recorded_not_raised() -> None:
    """A contender that cannot be built is reported with its error; the others still run."""
    problem = st.make_problem(TINY_SIZES, TINY_BATCH, n_batches=2)

    def broken() -> st.Contender:
        raise NotImplementedError("no BLAS here")

    contenders, info = st.build_contenders({"numpy": lambda: st.numpy_contender("sgd", problem), "bad": broken})
    assert list(contenders) == ["numpy"]
    assert info["bad"]["error"] == "NotImplementedError: no BLAS here"


def test_worker_subprocess_reports_time_and_memory() -> None:
    """The compile/memory worker runs in a fresh interpreter and reports its figures."""
    cfg = st.Config(optimizers=["sgd"], sizes=TINY_SIZES, batch=TINY_BATCH, worker_steps=2, verbose=False)
    report = st.run_worker("numpy", "sgd", cfg, {}, timeout=120)
    assert "error" not in report, report
    assert report["build_compile_first_call_s"] >= 0 and report["maxrss_mib"] >= report["maxrss_after_imports_mib"] > 0


@pytest.mark.skipif(not HAS_JAX, reason="jax/optax not installed (pip install -e '.[bench]')")
def test_jax_vmap_step_returns_per_seed_seconds() -> None:
    """``jax_vmap_step`` times S independent seeds in one vmapped step."""
    seconds = st.jax_vmap_step("sgd", 3, steps=2, rounds=1, warmup=1, sizes=[12, 8, 4], batch=4, n_batches=2)
    assert 0 < seconds < 10



@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_pin_cores_restricts_a_script_process() -> None:
    """The one-thread scripts hold their process to one core (JAX sizes its pool from the
    affinity and ignores the XLA flags); the test's own process is left alone."""
    import os
    import subprocess
    import sys

    before = os.sched_getaffinity(0)
    code = ("import json, os, sys; sys.path.insert(0, %r); from pinning import pin_cores, thread_env; "
            "cores = pin_cores(1); print(json.dumps([cores, sorted(os.sched_getaffinity(0)), thread_env(1)]))"
            % str(ROOT / "benchmarks"))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    cores, allowed, env = json.loads(run.stdout)
    assert cores == allowed == [min(before)]
    assert env["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=false" and env["OPENBLAS_NUM_THREADS"] == "1"
    assert os.sched_getaffinity(0) == before
