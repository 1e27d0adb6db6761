"""Number checks for arguments and configuration values: one definition of "an integer" and
"a number" (Python or NumPy, never a bool), so every error says the same thing alike."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["is_integer", "is_real", "integer_words", "check_integer"]


def is_integer(value: Any) -> bool:
    """A Python or NumPy integer; ``True``/``False`` are not (``isinstance(True, int)`` is)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value: Any) -> bool:
    """A Python or NumPy integer or float, not a bool (finite or not)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def integer_words(minimum: int) -> str:
    """``"a positive integer"`` (1), ``"a non-negative integer"`` (0), else ``"an integer >= N"``."""
    return {1: "a positive integer", 0: "a non-negative integer"}.get(minimum, f"an integer >= {minimum}")


def check_integer(name: str, value: Any, minimum: int) -> int:
    """``value`` as an ``int`` if it is an integer >= ``minimum``.

    Raises
    ------
    ValueError
        ``"{name} must be a positive integer, got 0"`` (see :func:`integer_words`).
    """
    if not is_integer(value) or value < minimum:
        raise ValueError(f"{name} must be {integer_words(minimum)}, got {value!r}")
    return int(value)
