"""``symopt.function``: ``pytensor.function`` with the measured-fastest backend by default.

(Skeleton: backend/BLAS selection is being worked on; today it passes ``mode`` through,
defaulting to ``$SYMOPT_MODE`` or PyTensor's own default.)
"""

from __future__ import annotations

import os
from typing import Any

import pytensor

__all__ = ["function", "default_mode"]


def default_mode() -> str | None:
    """The mode ``symopt.function`` compiles with when none is given."""
    return os.environ.get("SYMOPT_MODE") or None


def function(inputs: Any, outputs: Any = None, *, updates: Any = None, givens: Any = None, mode: Any = None, **kwargs: Any):
    """Compile like :func:`pytensor.function`; ``mode=None`` means :func:`default_mode`."""
    if mode is None:
        mode = default_mode()
    return pytensor.function(inputs, outputs, updates=updates, givens=givens, mode=mode, **kwargs)
