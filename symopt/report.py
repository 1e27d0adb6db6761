"""What the applications (experiments, sweeps, benchmarks) share to record and show results.

* :func:`machine_info`: where and when a number was measured (CPU, cores, BLAS and its
  threads, versions, date): one description for every results file;
* :func:`write_json` / :func:`read_json`: atomic, always-valid JSON results files;
* :func:`figure` / :func:`save_png`: headless matplotlib (the ``plot`` extra), compact PNGs.

Nothing in the core or the training layer imports this module.
"""

from __future__ import annotations

import io
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from ._extras import require
from ._io import atomic_writer, dump_json
from ._threads import blas_info

__all__ = ["cpu_model", "machine_info", "write_json", "read_json", "figure", "save_png"]


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
    """Where and when a result was measured.

    Returns
    -------
    dict
        ``cpu_model``, ``logical_cores``, ``usable_cores`` (this process's CPU affinity),
        ``openblas_threads`` (the environment variable), ``blas`` (every loaded BLAS
        library with its thread count, from threadpoolctl), ``platform``, the versions of
        Python, NumPy and PyTensor, and ``date``.
    """
    import numpy
    import pytensor

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "blas": [{k: lib[k] for k in ("prefix", "version", "num_threads")} for lib in blas_info()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "pytensor": pytensor.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write JSON atomically: a crash never leaves a half-written results file.

    Always valid JSON: NaN and infinities (a diverged run) are written as ``null``.
    """
    with atomic_writer(path, "w") as f:
        dump_json(payload, f, indent=1)
    return Path(path)


def read_json(path: str | os.PathLike[str]) -> Any:
    """A results file's content; a missing or invalid file is one error naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no results file {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"results file {path} is not valid JSON ({exc})") from None


def _pyplot() -> Any:
    require("matplotlib", "drawing figures", "plot").use("Agg")  # headless: experiments run without a display
    return require("matplotlib.pyplot", "drawing figures", "plot")


def figure(*args: Any, **kwargs: Any) -> Any:
    """``plt.subplots`` with the non-interactive backend (the ``plot`` extra)."""
    return _pyplot().subplots(*args, **kwargs)


def save_png(fig: Any, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Save ``fig`` as a 256-colour PNG (a third of matplotlib's RGBA size: committed figures stay small)."""
    image = require("PIL.Image", "drawing figures", "plot")  # Pillow: a dependency of matplotlib
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    _pyplot().close(fig)
    buf.seek(0)
    with atomic_writer(path) as f:
        image.open(buf).convert("RGB").quantize(256).save(f, format="png", optimize=True)
    return Path(path)
