"""symopt._denormals and Trainer.flush_denormals: subnormal floats flushed to zero in training loops.

References: IEEE 754 float32 (the smallest normal number is ``np.finfo(np.float32).tiny``,
2**-126; half of it is subnormal) and the x86 MXCSR bits FTZ (1 << 15) and DAZ (1 << 6).
"""

from __future__ import annotations

import platform

import numpy as np
import pytest

import symopt
from symopt import nn
from symopt._denormals import flush_denormals, mxcsr
from symopt.train import Trainer

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                reason="MXCSR is x86-64's")

TINY = np.finfo(np.float32).tiny  # 2**-126, the smallest normal float32
FTZ, DAZ = 1 << 15, 1 << 6


def _halve(x: np.ndarray) -> np.ndarray:
    return x * np.float32(0.5)


def test_the_register_is_set_in_the_block_and_restored_after() -> None:
    before = mxcsr()
    with flush_denormals() as on:
        assert on and mxcsr() & (FTZ | DAZ) == FTZ | DAZ
    assert mxcsr() == before
    with flush_denormals(enabled=False) as on:
        assert not on and mxcsr() == before


def test_restored_after_an_exception() -> None:
    before = mxcsr()
    with pytest.raises(RuntimeError), flush_denormals():
        raise RuntimeError("inside")
    assert mxcsr() == before


def test_subnormal_results_and_inputs_become_zero_only_inside() -> None:
    x = np.array([TINY, 3 * TINY, 1.0], dtype=np.float32)
    sub = np.array([TINY / 4], dtype=np.float32)  # stored subnormal, made outside the block
    outside, grown = _halve(x), sub * np.float32(8)
    # the negative controls: IEEE arithmetic keeps the subnormal result and reads the subnormal input
    assert 0 < outside[0] < TINY and grown[0] == 2 * TINY
    with flush_denormals():
        inside = _halve(x)  # FTZ: the subnormal result is written as zero
        read = sub * np.float32(8)  # DAZ: the subnormal input is read as zero (the result would be normal)
    assert inside[0] == 0 and inside[1] == np.float32(1.5) * TINY and inside[2] == 0.5
    assert read[0] == 0


@pytest.fixture(scope="module")
def trainer() -> Trainer:
    rng = np.random.default_rng(0)
    x = rng.random((64, 6), dtype=np.float32)
    y = rng.integers(0, 3, 64)
    model = nn.MLP([6, 5, 3], seed=0)
    return Trainer(model, symopt.SGD(model.params, learning_rate=0.1), x, y, x[:16], y[:16], batch_size=16)


def test_trainer_loop_runs_flushed_and_restores(trainer: Trainer) -> None:
    before = mxcsr()
    seen: list[int | None] = []
    trainer.epoch_tally(np.random.default_rng(0), after_step=lambda i, tally: seen.append(mxcsr()))
    assert len(seen) == trainer.steps_per_epoch and all(v & (FTZ | DAZ) == FTZ | DAZ for v in seen)
    assert mxcsr() == before
    trainer.flush_denormals = False
    try:
        seen.clear()
        trainer.epoch_tally(np.random.default_rng(0), after_step=lambda i, tally: seen.append(mxcsr()))
        assert seen and all(v == before for v in seen)
    finally:
        trainer.flush_denormals = True


def test_compiled_code_honours_the_flags() -> None:
    """The compiled step's arithmetic (symopt's default backend) flushes, as NumPy's does."""
    import pytensor.tensor as pt

    v = pt.vector("v", dtype="float32")
    halve = symopt.function([v], v * np.float32(0.5))
    x = np.array([TINY, 1.0], dtype=np.float32)
    assert 0 < halve(x)[0] < TINY
    with flush_denormals():
        assert halve(x)[0] == 0 and halve(x)[1] == 0.5
