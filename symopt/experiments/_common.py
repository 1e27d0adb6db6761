"""Helpers shared by the experiments: atomic result files, data subsets, plotting setup."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_writer, dump_json

__all__ = ["write_json", "read_json", "machine_info", "figure", "save_png", "mnist_subset"]


def write_json(path: Path, payload: Any) -> Path:
    """Write JSON atomically: a crash never leaves a half-written results file.

    Always valid JSON: NaN and infinities (a diverged run) are written as ``null``.
    """
    with atomic_writer(path, "w") as f:
        dump_json(payload, f, indent=1)
    return Path(path)


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no results file {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"results file {path} is not valid JSON ({exc})") from None


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Where and when a result was measured."""
    import pytensor

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "pytensor": pytensor.__version__,
        "numpy": np.__version__,
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def figure(*args: Any, **kwargs: Any) -> Any:
    """``plt.subplots`` with the non-interactive backend (experiments run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_png(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Save ``fig`` as a 256-colour PNG (a third of matplotlib's RGBA size: committed figures stay small)."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image  # a dependency of matplotlib

    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    plt.close(fig)
    buf.seek(0)
    with atomic_writer(path) as f:
        Image.open(buf).convert("RGB").quantize(256).save(f, format="png", optimize=True)
    return Path(path)


def mnist_subset(n_train: int, n_test: int | None, seed: int) -> Any:
    """A seeded random subset of real MNIST (``n_test=None`` keeps the full test set)."""
    from ..data import load_mnist, subset

    return subset(load_mnist(), n_train, seed, n_test=n_test)
