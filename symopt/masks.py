"""Ready-made parameter masks for ``weight_decay_mask`` and ``max_norm_mask``.

A mask is a callable ``param -> bool`` (or a list of the parameters it selects).
"""

from __future__ import annotations

from pytensor.compile.sharedvalue import SharedVariable

__all__ = ["exclude_bias_and_norm", "only_matrices"]


def exclude_bias_and_norm(param: SharedVariable) -> bool:
    """True for weights; False for biases and normalisation scales/shifts (``ndim < 2``).

    Decaying those pulls them towards zero for no regularisation benefit, the usual
    reason to exclude them (as in AdamW recipes and optax's masks).
    """
    return _ndim(param) >= 2


def only_matrices(param: SharedVariable) -> bool:
    """True for 2-d parameters only (dense weight matrices)."""
    return _ndim(param) == 2


def _ndim(param: SharedVariable) -> int:
    # A parameter stacked over seeds (symopt.seeds) has one extra leading axis.
    return param.ndim - (1 if getattr(param.tag, "seed_axis", False) else 0)
