"""The compiled training loop.

One train function and one eval function per (model, optimiser). The data set lives in
shared variables; each epoch the shuffled order is written once into a shared index
vector and a step receives only its batch number, so no batch crosses from Python into
the graph per step (``givens`` slices the shared data inside the compiled function).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable

from .checkpoint import run_training
from .function import function
from .nn import cross_entropy
from .optimizer import Optimizer

__all__ = ["EpochRecord", "Trainer", "fit", "warm_up", "Model"]


class Model(Protocol):
    """What :func:`fit` needs of a model (``symopt.nn`` models satisfy it)."""

    params: list[SharedVariable]

    def output(self, x: Any, train: bool) -> Any: ...


@dataclass(frozen=True)
class EpochRecord:
    """One line of a training history."""

    epoch: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class Trainer:
    """Compiles the train and eval functions of one (model, optimiser) pair once.

    Parameters
    ----------
    model
        Exposes ``params``, ``output(x, train)`` and optionally ``extra_updates``.
    optimizer
        An :class:`~symopt.optimizer.Optimizer` over ``model.params``.
    x_train, y_train, x_test, y_test
        float images ``(N, D)`` and integer labels.
    batch_size
        Mini-batch size; the last partial batch of an epoch is dropped so every step
        sees the same batch size (the shuffle changes which samples are left out).
    eval_batch_size
        Rows per call of the eval function.
    loss
        ``loss(logits, labels)``; softmax cross-entropy by default.
    mode
        PyTensor compilation mode (``None``: PyTensor's default).
    """

    def __init__(
        self,
        model: Model,
        optimizer: Optimizer,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_test: np.ndarray,
        y_test: np.ndarray,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        loss: Callable[[Any, Any], Any] = cross_entropy,
        mode: Any = None,
    ):
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if len(x_train) != len(y_train) or len(x_test) != len(y_test):
            raise ValueError(
                f"images and labels differ in length: train {len(x_train)} vs {len(y_train)}, "
                f"test {len(x_test)} vs {len(y_test)}"
            )
        if batch_size > len(x_train):
            raise ValueError(f"batch_size {batch_size} exceeds the {len(x_train)} training samples")
        missing = [p for p in optimizer.params if not any(p is q for q in model.params)]
        if missing:
            raise ValueError(f"the optimiser holds parameters that are not the model's: {[p.name for p in missing]}")
        dtype = model.params[0].dtype
        self.model, self.optimizer, self.batch_size = model, optimizer, int(batch_size)
        self.n_train = len(x_train)
        self.steps_per_epoch = self.n_train // self.batch_size
        self.x_train = pytensor.shared(np.asarray(x_train, dtype=dtype), name="x_train")
        self.y_train = pytensor.shared(np.asarray(y_train, dtype=np.int64), name="y_train")
        self.x_test = pytensor.shared(np.asarray(x_test, dtype=dtype), name="x_test")
        self.y_test = pytensor.shared(np.asarray(y_test, dtype=np.int64), name="y_test")
        self.order = pytensor.shared(np.arange(self.n_train, dtype=np.int64), name="order")
        self.n_test, self.eval_batch_size = len(x_test), int(eval_batch_size)

        x = pt.matrix("x", dtype=dtype)
        y = pt.vector("y", dtype="int64")
        i = pt.scalar("batch", dtype="int64")

        train_loss = loss(model.output(x, train=True), y)
        updates = optimizer.updates(train_loss)
        updates.update(getattr(model, "extra_updates", {}))  # batch-norm statistics, dropout RNGs
        rows = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        self.train_step = function(
            [i], train_loss, updates=updates, givens={x: self.x_train[rows], y: self.y_train[rows]}, mode=mode
        )

        # Sums, so the last partial eval batch is weighted correctly.
        logits = model.output(x, train=False)
        loss_sum = cross_entropy(logits, y, reduction="sum")
        correct = pt.eq(pt.argmax(logits, axis=1), y).sum()
        start, stop = i * self.eval_batch_size, (i + 1) * self.eval_batch_size
        self.eval_step = function(
            [i], [loss_sum, correct], givens={x: self.x_test[start:stop], y: self.y_test[start:stop]}, mode=mode
        )

    def warm_up(self) -> None:
        """Run the JIT compilation now, leaving every variable as it was.

        PyTensor's Numba backend compiles on the first call; doing it here keeps the
        compile time out of the first epoch's seconds.
        """
        warm_up(self.train_step, self.eval_step)

    def evaluate(self) -> tuple[float, float]:
        """Mean test loss and accuracy."""
        total_loss = total_correct = 0.0
        for i in range(-(-self.n_test // self.eval_batch_size)):
            batch_loss, batch_correct = self.eval_step(i)
            total_loss += float(batch_loss)
            total_correct += float(batch_correct)
        return total_loss / self.n_test, total_correct / self.n_test

    def run_epoch(
        self,
        rng: np.random.Generator,
        progress: bool = False,
        desc: str = "",
        *,
        start: int = 0,
        total: float = 0.0,
        after_step: Callable[[int, float], None] | None = None,
    ) -> float:
        """One shuffled pass over the training set; returns the mean train loss.

        ``start``, ``total``: resume the epoch at step ``start`` (the order is drawn from
        ``rng`` as always, so ``rng`` must be in its state at the epoch's start), with
        ``total`` the sum of the losses of the steps before. ``after_step(steps_done,
        loss_sum)`` runs after every step (checkpoints, Ctrl-C).
        """
        self.order.set_value(rng.permutation(self.n_train).astype(np.int64), borrow=True)
        steps: Any = range(int(start), self.steps_per_epoch)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc=desc, leave=False, unit="step", initial=int(start), total=self.steps_per_epoch)
        total = float(np.asarray(total, dtype=np.float64).reshape(-1)[0])
        for i in steps:
            total += float(self.train_step(i))
            if after_step is not None:
                after_step(i + 1, total)
        return total / self.steps_per_epoch

    def fit(
        self,
        epochs: int,
        seed: int,
        progress: bool = True,
        callback: Callable[[EpochRecord], None] | None = None,
        *,
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_every: int | None = None,
        resume: bool | str | os.PathLike[str] = False,
        config: Mapping[str, Any] | None = None,
    ) -> list[EpochRecord]:
        """Train ``epochs`` epochs with data order from ``seed``; returns the history.

        Parameters
        ----------
        checkpoint
            File to write the run's whole state to (atomically) after every epoch: model
            parameters and buffers, optimiser state, dropout and data-order generators,
            position and history (:mod:`symopt.checkpoint`).
        checkpoint_every
            Also write it after every N-th step.
        resume
            ``True``: continue from ``checkpoint``; a path: continue from that file. The
            run then ends exactly (bit for bit) as the uninterrupted run would, and the
            returned history includes the epochs before the interruption. A checkpoint of
            another model, optimiser, data set, batch size, seed or ``config`` is refused
            (ValueError naming the difference) before anything changes.
        config
            JSON-able settings recorded in the checkpoint that must match on resume.

        In the main thread, Ctrl-C lets the current step finish, writes the checkpoint
        (if any) and raises :class:`~symopt.checkpoint.TrainingInterrupted` (a
        ``KeyboardInterrupt``) holding the history so far.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")

        def records(history: np.ndarray) -> list[EpochRecord]:
            return [EpochRecord(e + 1, *(float(v) for v in row[0])) for e, row in enumerate(history)]

        def on_epoch(epoch: int, row: np.ndarray) -> None:
            if callback is not None:
                callback(EpochRecord(epoch, *(float(v) for v in row[0])))

        history = run_training(
            self, model=self.model, optimizer=self.optimizer, epochs=int(epochs), data_seeds=[int(seed)],
            run_epoch=lambda rngs, progress, desc, **kw: self.run_epoch(rngs[0], progress, desc, **kw),
            evaluate=self.evaluate, progress=progress, seconds_divisor=1, on_epoch=on_epoch, to_history=records,
            checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume, config=config,
        )
        return records(history)


def warm_up(train_step: Any, eval_step: Any) -> None:
    """Call both compiled functions once on batch 0 and restore every variable the train
    step updates, so the JIT compilation happens now and changes nothing."""
    touched = [inp.variable for inp in train_step.maker.inputs if inp.update is not None]
    saved = [var.get_value(borrow=False) for var in touched]
    train_step(0)
    for var, value in zip(touched, saved):
        var.set_value(value, borrow=True)
    eval_step(0)


def fit(
    model: Model,
    optimizer: Optimizer,
    data: Any,
    epochs: int,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[EpochRecord], None] | None = None,
    mode: Any = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    resume: bool | str | os.PathLike[str] = False,
) -> list[EpochRecord]:
    """Train ``model`` with ``optimizer`` on ``data`` (``x_train``, ``y_train``, ``x_test``, ``y_test``).

    Returns one :class:`EpochRecord` per epoch (train loss, test loss, test accuracy,
    seconds of training). The same seed, model and optimiser state give the same history.
    ``checkpoint="run.ckpt"`` writes the run's state after every epoch (and every
    ``checkpoint_every`` steps); ``resume=True`` continues from it (see :meth:`Trainer.fit`).
    """
    trainer = Trainer(
        model, optimizer, data.x_train, data.y_train, data.x_test, data.y_test, batch_size=batch_size, mode=mode
    )
    return trainer.fit(epochs, seed, progress=progress, callback=callback, checkpoint=checkpoint,
                       checkpoint_every=checkpoint_every, resume=resume)
