"""The layers: the core imports PyTensor and NumPy only, the library never imports the
applications, a missing extra is one error naming it, and BLAS threads are limited while
symopt trains."""

from __future__ import annotations

import ast
import builtins
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import symopt
from symopt._extras import MissingExtraError
from symopt._threads import blas_info, blas_threads, limit_blas_threads

PACKAGE = Path(symopt.__file__).resolve().parent
#: What the layers above the core bring; `import symopt` must load none of it. (filelock is also a
#: dependency of PyTensor, so it is installed with the core anyway.)
OPTIONAL = ["matplotlib", "PIL", "tqdm", "dask", "distributed", "optuna", "pooch", "requests", "threadpoolctl"]
APPLICATIONS = ["symopt.experiments", "symopt.sweep", "symopt.cli", "symopt.demo", "symopt.report",
                "symopt.mnist_runs"]


def _loaded_after(statement: str) -> set[str]:
    """Top-level modules and symopt submodules in ``sys.modules`` after ``statement``, in a fresh interpreter."""
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_import_symopt_loads_no_optional_dependency_or_application() -> None:
    loaded = _loaded_after("import symopt")
    assert not {m for m in loaded if m.split(".")[0] in OPTIONAL}, "import symopt loaded optional packages"
    assert not {m for m in loaded if any(m == a or m.startswith(a + ".") for a in APPLICATIONS)}


def test_sweep_and_shared_modules_do_not_import_the_experiments() -> None:
    loaded = _loaded_after("import symopt.sweep.config, symopt.sweep.engine, symopt.sweep.store, "
                           "symopt.sweep.search, symopt.report, symopt.mnist_runs")
    assert not {m for m in loaded if m.startswith("symopt.experiments")}
    assert not {m for m in loaded if m.split(".")[0] in OPTIONAL}  # Dask, Optuna, matplotlib: when used


def _imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names; relative ones resolved against the symopt package)."""
    tree = ast.parse(path.read_text())
    package = ".".join(("symopt", *path.relative_to(PACKAGE).parent.parts))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            names.add(module)
            names |= {f"{module}.{a.name}" for a in node.names}
    return names


def test_no_library_module_imports_the_experiments() -> None:
    """Only the CLI (which dispatches to them) and the experiments themselves name symopt.experiments."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "experiments" or rel.name == "cli.py":
            continue
        if any(name.startswith("symopt.experiments") for name in _imports(path)):
            offenders.append(str(rel))
    assert offenders == []


#: The README's "Architecture" layers; every other module of the package is core.
TRAINING = {"symopt.nn", "symopt.data", "symopt.train", "symopt.seeds", "symopt.checkpoint"}


def _layer(module: str) -> int:
    if any(module == a or module.startswith(a + ".") for a in APPLICATIONS):
        return 2
    return 1 if module in TRAINING else 0


def test_each_layer_imports_only_its_own_and_lower_layers() -> None:
    """Core modules never import the training layer or the applications; training never the applications."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue  # the package facade re-exports every layer
        module = ".".join(("symopt", *rel.with_suffix("").parts)).removesuffix(".__init__")
        for name in _imports(path):
            if name.startswith("symopt.") and _layer(name) > _layer(module):
                offenders.append(f"{module} imports {name}")
    assert offenders == []


@pytest.fixture
def without(monkeypatch: pytest.MonkeyPatch):
    """``without("tqdm")``: make importing that package fail, as if it were not installed."""

    def block(*packages: str) -> None:
        real_import = builtins.__import__

        def fake(name: str, *args, **kwargs):
            if name.split(".")[0] in packages:
                raise ImportError(f"No module named {name!r}")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", fake)

    return block


def test_missing_train_extra(without, tmp_path: Path) -> None:
    from symopt import _extras, data

    without("tqdm", "pooch")
    with pytest.raises(MissingExtraError, match=r"a progress bar .* needs tqdm.*pip install 'symopt\[train\]'"):
        _extras.tqdm(range(3))
    with pytest.raises(MissingExtraError, match=r"downloading MNIST needs pooch.*pip install 'symopt\[train\]'"):
        data.download_mnist(tmp_path / "mnist", sources=("mirrors",), mirrors=["http://127.0.0.1:9/"])


def test_missing_plot_extra(without) -> None:
    from symopt import report

    without("matplotlib")
    with pytest.raises(MissingExtraError, match=r"drawing figures needs matplotlib.*pip install 'symopt\[plot\]'"):
        report.figure()


def test_missing_sweep_extra_is_one_cli_line(without, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from symopt.cli import main

    config = tmp_path / "s.toml"
    config.write_text('epochs = 1\nbatch_size = 8\n[data]\nn_train = 16\nn_test = 8\n[optimizers.sgd]\n')
    without("dask", "distributed")
    assert main(["sweep", str(config), "--no-progress", "--no-figures"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "symopt sweep needs Dask" in err[0] and "pip install 'symopt[sweep]'" in err[0]
    assert not (tmp_path / "s.db").exists()  # refused before the database was created


# ---------------------------------------------------------------------------- BLAS threads
def _blas_threads_now() -> set[int]:
    return {lib["num_threads"] for lib in blas_info()}


def test_limit_blas_threads_sets_every_loaded_blas_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    """threadpoolctl reaches NumPy's OpenBLAS however it was loaded, and the one PyTensor's C code links."""
    pytest.importorskip("threadpoolctl")
    np.dot(np.ones((4, 4)), np.ones((4, 4)))  # NumPy's BLAS is loaded
    before = [lib["num_threads"] for lib in blas_info()]
    assert before, "no BLAS library found"
    with limit_blas_threads(2):
        assert _blas_threads_now() == {2}
    assert [lib["num_threads"] for lib in blas_info()] == before
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    assert blas_threads() == 2
    with limit_blas_threads():
        assert _blas_threads_now() == {2}
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "auto")
    assert blas_threads() is None  # not a count: no limit


def test_training_runs_with_the_blas_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trainer.fit holds BLAS at $OPENBLAS_NUM_THREADS threads while it trains (read at fit time)."""
    pytest.importorskip("threadpoolctl")
    from symopt import nn
    from symopt.train import Trainer

    rng = np.random.default_rng(0)
    x, y = rng.random((16, 4), dtype=np.float32), rng.integers(0, 3, 16)
    model = nn.MLP([4, 3], seed=0)
    trainer = Trainer(model, symopt.SGD(model.params, learning_rate=0.1), x, y, x, y, batch_size=8)
    seen: list[set[int]] = []
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    trainer.fit(1, 0, progress=False, callback=lambda record: seen.append(_blas_threads_now()))
    assert seen == [{2}]
