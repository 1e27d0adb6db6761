"""``symopt.function``: ``pytensor.function`` with symopt's backend choice and a real BLAS.

Backends
--------
``symopt.function(inputs, outputs, updates=..., givens=..., mode=None)`` compiles with
``mode`` if given, else ``$SYMOPT_MODE`` (one of :data:`MODES`, case-insensitive; any
other value is a ValueError naming SYMOPT_MODE and the allowed values), else
:data:`DEFAULT_MODE`. The C-family modes (``C``: one C module per graph; ``CVM``: per-op
C thunks run by PyTensor's C VM; ``CVM_NOGC``: the same without freeing intermediates)
get two things PyTensor's pip install lacks:

* **A real BLAS.** PyTensor's pip package finds no BLAS (``blas__ldflags`` empty:
  "severely degraded", and ``mode="C"`` fails in Gemm's C code). At import, unless the
  user set ``blas__ldflags`` (PYTENSOR_FLAGS, .pytensorrc, code), symopt points it at
  the PyPI wheel ``scipy-openblas32`` (a dependency): ``-L<wheel>/lib
  -lscipy_openblas`` plus one ``-D<name>_=scipy_<name>_`` per Fortran BLAS routine
  PyTensor's C code declares, because the wheel prefixes its symbols. No compiler call
  at import; the Numba path is untouched. Without the wheel, PyTensor's own library
  search runs when a C mode is first requested; without a compiler or any BLAS, a C
  mode falls back to ``NUMBA`` with one RuntimeWarning.
  OpenBLAS's runtime CPU detection (DYNAMIC_ARCH) reports ``Haswell`` on this AMD EPYC
  (Zen 1, family 23 model 1): OpenBLAS's Zen target uses the Haswell kernels, so
  ``OPENBLAS_CORETYPE=Zen`` changes nothing; NumPy's and SciPy's bundled OpenBLAS
  detect the same. ``SkylakeX`` crashes (no AVX-512). :func:`blas_info` reports it.
* **A vectorisable elementwise loop** (``symopt._elemwise``): PyTensor's C loop for a
  fused update addresses each operand through a runtime stride, so Adam's update of a
  784x100 weight ran as scalar ``sqrtss``/``divss`` (0.7-0.9 ms); symopt's rewrite gives
  such loops a flat, contiguous path GCC vectorises (0.3 ms, same numbers).

Measurements (2-core AMD EPYC, OpenBLAS 1 thread, MLP 784-100-100-100-100-10 ReLU,
batch 128, float32, Adam; ``benchmarks/backends.py``; the machine was shared and
loaded, ``uptime`` load 3-9, so single numbers are noisy):

* per step at load ~3, before the flat-loop rewrite: Numba 5.08 ms, CVM 4.39 ms; the
  parts: forward only Numba 2.59 / CVM 1.89 ms, forward+backward+SGD 4.49 / 3.07 ms.
  Earlier run (load ~2): NumPy matmul floor 2.97 ms; Numba 4.73 (1.59x), C 4.94,
  CVM 4.92, CVM_NOGC 4.56 ms. The rewrite takes about 0.6 ms more off CVM's Adam.
* compiling the train step (fresh process), at load 6-9: Numba first (empty
  compiledir) 75 s, cached 6.4 s; CVM first 202 s, cached 11.6 s. g++ builds ~40 C
  modules on a cold cache.

Default: ``NUMBA``. On a quiet machine (``benchmarks/step_time.py``, 2026-12-01) CVM's
step is 0-10 % faster than Numba's for 12 of the 13 rules (Adam 3.09 vs 3.11 ms) and
faster with the generator dropout masks used then (the counter-based masks of
symopt._random now cost Numba nothing extra), and one Adam step compiles
in about the same time (46 s vs 44 s cold, 2.4 vs 2.6 s cached). The loaded-machine
runs above had CVM's cold compile at 2.7x Numba's, and the test suite and sweeps
compile many small distinct graphs, where g++ runs once per new op: that workload has
not been re-measured quietly, so the default stays; ``SYMOPT_MODE=CVM`` for long runs.

``JAX`` is PyTensor's JAX mode with two fixes from ``symopt._jax``: a rewrite (PyTensor's
JAX reductions returned float64 for float32 sums, which made every float32 train step
float64 from its second call on, 2.5-2.8x slower than the same step in hand-written JAX) and
a linker that keeps shared tensors on the device (PyTensor's copied every NumPy shared
value, a whole training set included, to the device at every call) and donates the
buffers of updated shared variables to XLA (in-place updates; an array taken with
``get_value(borrow=True)`` is invalid after the next call). Measured in
``benchmarks/jax_backend.py``: the XLA program equals hand-written JAX + optax; what is
left is PyTensor's ``Function`` call and the NumPy batch's transfer.

First compilation: before the first compilation on a machine whose PyTensor cache for
the backend (Numba's, or the C modules') is empty, :func:`function` prints one line to
stderr, since that compilation takes about a minute; a marker file in
``pytensor.config.compiledir`` records that the cache is warm. ``SYMOPT_QUIET_FIRST_COMPILE=1``
hides the line.

C modes also swap two PyTensor rewrites for symopt's: the flat elementwise loop above
and ``symopt._blas`` (a scalar is folded into a matrix product only when the product
has no other consumer; PyTensor's rewrite computed AdamW's and Lion's weight gradients
once per use).
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import pytensor
from pytensor.compile.mode import Mode, get_mode
from pytensor.graph.rewriting.db import RewriteDatabaseQuery

from . import _batched, _blas, _elemwise, _jax

__all__ = ["function", "default_mode", "backend_name", "resolve_mode", "configure_blas", "blas_info", "MODES", "DEFAULT_MODE"]

#: What ``SYMOPT_MODE`` (and ``mode=`` given as a string) may name. The C-family modes
#: need a C++ compiler and a BLAS; without them symopt falls back to ``NUMBA``.
MODES = ("C", "CVM", "CVM_NOGC", "NUMBA", "JAX", "PYTORCH", "FAST_RUN", "FAST_COMPILE")
_C_MODES = frozenset({"C", "CVM", "CVM_NOGC"})

#: The backend symopt compiles with when neither ``mode=`` nor ``SYMOPT_MODE`` says.
DEFAULT_MODE = "NUMBA"

# The 124 Fortran-BLAS entry points PyTensor's C code declares (tensor/blas_headers.py).
# scipy-openblas32 exports them as ``scipy_<name>``; a -D define per name points
# PyTensor's declarations and calls at the prefixed symbols.
_BLAS_ROUTINES = {
    "sd": "axpy copy dot gbmv gemm gemv ger rot rotg rotm rotmg sbmv scal spmv spr spr2 swap symm symv syr syr2 "
    "syr2k syrk tbmv tbsv tpmv tpsv trmm trmv trsm trsv",
    "cz": "axpy copy gbmv gemm gemv hbmv hemm hemv her her2 her2k herk hpmv hpr hpr2 scal swap symm syr2k syrk tbmv "
    "tbsv tpmv tpsv trmm trmv trsm trsv",
}
_BLAS_EXTRA = ("cgerc", "cgeru", "csscal", "zgerc", "zgeru", "zdscal")


def _blas_symbols() -> list[str]:
    names = [p + r for prefixes, routines in _BLAS_ROUTINES.items() for p in prefixes for r in routines.split()]
    return sorted(n + "_" for n in (*names, *_BLAS_EXTRA))


def _scipy_openblas32_flags() -> str | None:
    """``blas__ldflags`` linking the PyPI wheel ``scipy-openblas32``, or None without it."""
    try:
        import scipy_openblas32
    except ImportError:
        return None
    lib_dir = scipy_openblas32.get_lib_dir()
    try:
        library = scipy_openblas32.get_library()
    except (IndexError, OSError):
        return None
    if not os.path.isdir(lib_dir) or " " in lib_dir:
        return None
    defines = [f"-D{name}=scipy_{name}" for name in _blas_symbols()]
    # -L also becomes -Wl,-rpath in PyTensor, so compiled modules find the library at load.
    return " ".join([f"-L{lib_dir}", f"-l{library}", *defines])


def _user_set_blas_flags() -> bool:
    """Whether PYTENSOR_FLAGS, a .pytensorrc or code already chose ``blas__ldflags``."""
    param = type(pytensor.config).__dict__.get("blas__ldflags") or pytensor.config._config_var_dict["blas__ldflags"]
    if hasattr(param, "val"):
        # Already resolved: by the user (or to a found BLAS) unless it is PyTensor's empty default.
        return not (param.is_default and not param.val)
    try:
        pytensor.config.fetch_val_for_key("blas__ldflags")
    except KeyError:
        return False
    return True


_blas_source: str = "unconfigured"


def configure_blas() -> str:
    """Point PyTensor's C backend at a real BLAS unless the user chose ``blas__ldflags``.

    Returns where the flags come from: ``"user"``, ``"scipy-openblas32"`` or ``"none"``
    (then PyTensor's own library search runs when a C mode is first asked for).
    Runs at ``import symopt``; cheap (no compiler call, no library search).
    """
    global _blas_source
    if _user_set_blas_flags():
        _blas_source = "user"
    elif not pytensor.config.cxx:
        _blas_source = "none"
    else:
        flags = _scipy_openblas32_flags()
        if flags is None:
            _blas_source = "none"
        else:
            pytensor.config.blas__ldflags = flags
            _blas_source = "scipy-openblas32"
    return _blas_source


def blas_info() -> dict[str, Any]:
    """What the C backend links: source of the flags, library, OpenBLAS's detected core."""
    info: dict[str, Any] = {"source": _blas_source, "cxx": pytensor.config.cxx or None}
    if _blas_source == "scipy-openblas32":
        import ctypes

        import scipy_openblas32

        path = os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(fullname=True))
        lib = ctypes.CDLL(path)
        for key, symbol in (("corename", "scipy_openblas_get_corename"), ("config", "scipy_openblas_get_config")):
            fn = getattr(lib, symbol)
            fn.restype = ctypes.c_char_p
            info[key] = fn().decode()
        info["num_threads"] = int(lib.scipy_openblas_get_num_threads())
        info["library"] = path
    return info


def _c_available() -> bool:
    """A C++ compiler and a BLAS to link; without scipy-openblas32, PyTensor's own search."""
    global _blas_source
    if not pytensor.config.cxx:
        return False
    if _blas_source == "none":
        with warnings.catch_warnings():  # its "severely degraded" warning: we fall back instead
            warnings.simplefilter("ignore")
            found = pytensor.config.blas__ldflags
        _blas_source = "pytensor" if found else "no-blas"
    if _blas_source in ("user", "pytensor"):
        return bool(pytensor.config.blas__ldflags)
    return _blas_source == "scipy-openblas32"


@functools.cache
def _fallback_warning(name: str, reason: str) -> None:
    warnings.warn(
        f"symopt: the {name} backend is unavailable ({reason}); compiling with NUMBA instead. "
        f"Install a C++ compiler and symopt's BLAS dependency (pip install scipy-openblas32), "
        f"or set SYMOPT_MODE=NUMBA to choose Numba explicitly.",
        RuntimeWarning,
        stacklevel=4,
    )


def _build(name: str) -> Mode:
    if name in _C_MODES and not _c_available():
        reason = "no C++ compiler (pytensor.config.cxx is empty)" if not pytensor.config.cxx else "no BLAS to link"
        _fallback_warning(name, reason)
        name = "NUMBA"
    if name in _C_MODES:
        linker = {"C": "c", "CVM": "cvm", "CVM_NOGC": "cvm_nogc"}[name]
        return Mode(
            linker=linker,
            optimizer=RewriteDatabaseQuery(include=["fast_run", _elemwise.TAG], exclude=[_blas.REPLACED]),
        )
    if name not in _C_MODES:
        # BatchedGemm's Numba/JAX implementations (PyTensor's FAST_RUN is Numba too):
        # registered here, not at import, which would import numba or jax.
        _batched.register_backends("JAX" if name == "JAX" else "NUMBA")
    if name == "JAX":
        return Mode(linker=_jax.DeviceSharedJAXLinker(), optimizer=get_mode("JAX").provided_optimizer.including(_jax.TAG))
    return get_mode(name)


def resolve_mode(mode: Any = None) -> Any:
    """The PyTensor mode ``symopt.function`` compiles with.

    ``mode`` may be a name from :data:`MODES` (case-insensitive; the C-family names get
    symopt's BLAS and flat-loop rewrite), a :class:`pytensor.compile.mode.Mode` or any
    other name PyTensor knows (both passed through), or None: then ``$SYMOPT_MODE``
    (which must name one of :data:`MODES`), else :data:`DEFAULT_MODE`.
    """
    if mode is not None:
        if isinstance(mode, str) and mode.strip().upper() in MODES:
            return _build(mode.strip().upper())
        return mode  # a Mode object, or another name PyTensor knows ("DebugMode", ...)
    env = os.environ.get("SYMOPT_MODE", "").strip()
    if not env:
        return _build(DEFAULT_MODE)
    if env.upper() not in MODES:
        raise ValueError(f"SYMOPT_MODE={env!r} is not a symopt backend; allowed values: {', '.join(MODES)}")
    return _build(env.upper())


def default_mode() -> Any:
    """The mode ``symopt.function`` compiles with when none is given."""
    return resolve_mode(None)


def backend_name(mode: Any = None) -> str:
    """The name of the backend :func:`function` compiles with for ``mode`` (as
    :func:`resolve_mode` reads it): ``"NUMBA"``, ``"CVM"``, ...; a C-family name that
    falls back to Numba (no compiler or BLAS) reports ``"NUMBA"``. For run records."""
    if mode is None:
        mode = os.environ.get("SYMOPT_MODE", "").strip() or DEFAULT_MODE
    if not isinstance(mode, str):
        return f"{type(mode).__name__}({type(getattr(mode, 'linker', None)).__name__})"
    name = mode.strip().upper()
    if name in _C_MODES and not _c_available():
        return "NUMBA"
    return name if name in MODES else mode


#: Set to 1 to hide the one-line notice before the first compilation on a machine.
QUIET_ENV = "SYMOPT_QUIET_FIRST_COMPILE"
_MARKER = "symopt-cache-warm-{family}"
_noticed: set[str] = set()  # families this process has checked (and told about, if cold)
_marked: set[str] = set()  # families whose marker this process has seen or written


def _cache_family(mode: Any) -> str | None:
    """``"numba"`` or ``"c"``: which persistent PyTensor cache ``mode`` fills; else None."""
    from pytensor.link.c.basic import CLinker
    from pytensor.link.numba.linker import NumbaLinker
    from pytensor.link.vm import VMLinker

    linker = getattr(get_mode(mode), "linker", None)
    if isinstance(linker, NumbaLinker):
        return "numba"
    if isinstance(linker, CLinker) or (isinstance(linker, VMLinker) and linker.c_thunks is not False):
        return "c"
    return None


def _cache_paths(family: str) -> tuple[Path, Path]:
    """(marker file, cache directory) of ``family`` in PyTensor's compile directory."""
    compiledir = Path(pytensor.config.compiledir)
    cache = Path(pytensor.config.base_compiledir) / "numba" if family == "numba" else compiledir
    return compiledir / _MARKER.format(family=family), cache


def _cache_is_cold(marker: Path, cache: Path) -> bool:
    """No marker and nothing cached yet (a cache filled before symopt wrote markers is warm)."""
    if marker.exists():
        return False
    try:
        entries = [e for e in os.scandir(cache) if e.name != "__init__.py" and not e.name.startswith("symopt-")]
    except OSError:  # not created yet: PyTensor makes it on first use
        return True
    return not entries


def _first_compile_notice(mode: Any) -> tuple[str, Path] | None:
    """Print one line to stderr before the first compilation on a machine whose PyTensor
    cache for ``mode``'s backend is cold; return (family, marker) to write once it succeeded.

    Cheap: a stat per compilation until the marker exists, one directory scan per
    backend family and process. Hidden with ``SYMOPT_QUIET_FIRST_COMPILE=1``.
    """
    try:
        family = _cache_family(mode)
    except Exception:  # a mode PyTensor cannot resolve fails in pytensor.function with its own error
        return None
    if family is None or family in _marked:
        return None
    marker, cache = _cache_paths(family)
    if family not in _noticed:
        _noticed.add(family)
        if _cache_is_cold(marker, cache) and os.environ.get(QUIET_ENV, "").strip() not in ("1", "true", "yes"):
            print(
                f"symopt: first {'Numba' if family == 'numba' else 'C'} compilation on this machine: filling "
                f"PyTensor's cache in {cache} (about a minute, once; {QUIET_ENV}=1 hides this)",
                file=sys.stderr,
                flush=True,
            )
    if marker.exists():
        _marked.add(family)
        return None
    return family, marker


def function(inputs: Any, outputs: Any = None, *, updates: Any = None, givens: Any = None, mode: Any = None, **kwargs: Any):
    """Compile like :func:`pytensor.function`; ``mode=None`` means :func:`default_mode`.

    Before the first compilation on a machine whose PyTensor cache is cold (no symopt
    marker in ``pytensor.config.compiledir`` and an empty cache), prints one line to
    stderr saying so, instead of a silent wait of about a minute; never once warm.
    """
    resolved = resolve_mode(mode)
    pending = _first_compile_notice(resolved)
    compiled = pytensor.function(inputs, outputs, updates=updates, givens=givens, mode=resolved, **kwargs)
    if pending is not None:  # the marker is written only once a compilation succeeded
        family, marker = pending
        try:
            marker.touch()
            _marked.add(family)
        except OSError:  # a read-only compiledir: the notice may show again, nothing worse
            pass
    return compiled


configure_blas()
