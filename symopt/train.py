"""The compiled training loop.

One train function and one eval function per (model, optimiser). The data set lives in
shared variables; each epoch the shuffled order is written once into a shared index
vector and a step receives only its batch number, so no batch crosses from Python into
the graph per step (``givens`` slices the shared data inside the compiled function).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable

from . import _denormals
from .checkpoint import TALLY_WIDTH, new_tally, run_training, tally_means
from .function import function
from .hyperparameter import member_view
from .nn import accuracy, cross_entropy

__all__ = ["EpochRecord", "NonFiniteLossError", "Trainer", "ModelStep", "StepBuilder", "OptimizerLike", "fit", "warm_up", "Model"]

#: What :class:`Trainer` does when a training step's loss is NaN or infinite.
NONFINITE_POLICIES = ("raise", "continue")


class Model(Protocol):
    """What :func:`fit` needs of a model (``symopt.nn`` models satisfy it)."""

    params: list[SharedVariable]

    def output(self, x: Any, train: bool) -> Any: ...


class NonFiniteLossError(FloatingPointError):
    """A training step returned a NaN or infinite loss: the run diverged.

    Attributes
    ----------
    epoch
        1-based epoch (``None`` when :meth:`Trainer.run_epoch` was called without one).
    step
        1-based step within the epoch.
    loss
        The loss value (``nan``, ``inf`` or ``-inf``).
    """

    def __init__(self, epoch: int | None, step: int, loss: float):
        self.epoch, self.step, self.loss = epoch, step, loss
        #: The epochs completed before, as ``fit`` returns them (set by ``fit``).
        self.history: Any = []
        where = f"epoch {epoch}, step {step}" if epoch is not None else f"step {step}"
        super().__init__(
            f"training diverged: the loss is {loss} at {where}; lower the learning rate, clip gradients "
            f"(clip_global_norm) or skip such steps (skip_nonfinite=True)"
        )


@dataclass(frozen=True)
class EpochRecord:
    """One line of a training history.

    ``skipped`` counts the steps of the epoch that changed nothing because their loss or
    gradients were not finite (optimisers built with ``skip_nonfinite=True``); their
    losses are left out of ``train_loss``.
    """

    epoch: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    seconds: float
    skipped: int = 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_row(cls, epoch: int, row: np.ndarray) -> EpochRecord:
        """From one stream's row of a :func:`~symopt.checkpoint.run_training` history."""
        train_loss, test_loss, test_accuracy, seconds, skipped = (float(v) for v in row)
        return cls(epoch, train_loss, test_loss, test_accuracy, seconds, int(skipped))


class OptimizerLike(Protocol):
    """What :class:`Trainer` needs of an optimiser: an :class:`~symopt.optimizer.Optimizer`,
    a :class:`~symopt.combine.Combined`, a :class:`~symopt.wrappers.Lookahead` or any
    object with these members (an :class:`~symopt.wrappers.EMA` goes in ``Trainer(ema=)``:
    it averages an optimiser's updates). The trainer itself uses ``params`` and ``updates``;
    ``state_dict`` / ``load_state_dict`` restart a run (experiments), ``iterations``
    counts the applied steps."""

    params: list[SharedVariable]
    iterations: SharedVariable

    def updates(self, loss: Any) -> Mapping[SharedVariable, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class StepBuilder(Protocol):
    """Builds the graphs a :class:`Trainer` compiles: how its model turns data into losses.

    ``streams`` runs train together (one per seed of a stack). The data and the shuffled
    ``order`` are the trainer's shared variables; ``order`` has the shape of
    :meth:`initial_order`, each row of the streams' permutations in it.
    """

    streams: int
    model: Any

    def check(self, optimizer: OptimizerLike) -> None:
        """Refuse (ValueError) an optimiser this step cannot train."""

    def initial_order(self, n_train: int) -> np.ndarray: ...

    def train(self, data: tuple[Any, Any], order: Any, batch: Any, batch_size: int) -> tuple[Any, Any, Mapping[Any, Any], Mapping[Any, Any]]:
        """(loss to differentiate, per-stream losses returned per step, extra updates, givens)."""

    def evaluate(self, data: tuple[Any, Any], start: Any, stop: Any) -> tuple[list[Any], Mapping[Any, Any]]:
        """([per-stream loss sums, per-stream correct counts] of rows ``start:stop``, givens)."""


class ModelStep:
    """The step of one ``model`` (as :class:`Trainer` takes it): the mean ``loss`` of a
    mini-batch of its rows of ``order``, and the sums of test loss and correct answers."""

    streams = 1

    def __init__(self, model: Model, loss: Callable[[Any, Any], Any] = cross_entropy):
        self.model, self.loss = model, loss

    def check(self, optimizer: OptimizerLike) -> None:
        missing = [p for p in optimizer.params if not any(p is q for q in self.model.params)]
        if missing:
            raise ValueError(f"the optimiser holds parameters that are not the model's: {[p.name for p in missing]}")

    def initial_order(self, n_train: int) -> np.ndarray:
        return np.arange(n_train, dtype=np.int64)

    def _inputs(self) -> tuple[Any, Any]:
        return pt.matrix("x", dtype=self.model.params[0].dtype), pt.vector("y", dtype="int64")

    def train(self, data: tuple[Any, Any], order: Any, batch: Any, batch_size: int) -> tuple[Any, Any, Mapping[Any, Any], Mapping[Any, Any]]:
        x, y = self._inputs()
        train_loss = self.loss(self.model.output(x, train=True), y)
        extra = dict(getattr(self.model, "extra_updates", {}))  # batch-norm statistics, dropout RNGs
        rows = order[batch * batch_size : (batch + 1) * batch_size]
        return train_loss, train_loss, extra, {x: data[0][rows], y: data[1][rows]}

    def evaluate(self, data: tuple[Any, Any], start: Any, stop: Any) -> tuple[list[Any], Mapping[Any, Any]]:
        x, y = self._inputs()
        # Sums, so the last partial eval batch is weighted correctly.
        logits = self.model.output(x, train=False)
        sums = [cross_entropy(logits, y, reduction="sum"), accuracy(logits, y, reduction="sum")]
        return sums, {x: data[0][start:stop], y: data[1][start:stop]}


class Trainer:
    """Compiles the train and eval functions of one (model, optimiser) pair once.

    Parameters
    ----------
    model
        Exposes ``params``, ``output(x, train)`` and optionally ``extra_updates``.
    optimizer
        An :class:`~symopt.optimizer.Optimizer` over ``model.params``, or any
        :class:`OptimizerLike` (:func:`symopt.combine`, :class:`~symopt.wrappers.Lookahead`).
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
    on_nonfinite
        A step whose loss is NaN or infinite: ``"raise"`` (default) stops the run with
        :class:`NonFiniteLossError` naming the epoch and step; ``"continue"`` records the
        non-finite loss (a diverged run is then a result, as in a sweep). An optimiser
        built with ``skip_nonfinite=True`` skips such steps instead: they are counted in
        :attr:`EpochRecord.skipped` and never raise.
    step
        The :class:`StepBuilder` the compiled functions come from; by default
        ``ModelStep(model, loss)``. :class:`~symopt.seeds.SeedTrainer` passes a
        :class:`~symopt.seeds.StackedStep`.
    ema
        A :class:`~symopt.wrappers.EMA` whose averages move in the train step, after the
        optimiser's update (only on steps the optimiser applies); checkpoints hold them.
    """

    #: Flush subnormal floats to zero while the training loop runs (x86-64's FTZ and DAZ
    #: flags, as XLA's CPU backend does; :mod:`symopt._denormals`): a value below float32's
    #: 1.2e-38 becomes 0 instead of slowing the step down. Set to ``False`` on an instance
    #: for IEEE subnormals.
    flush_denormals: bool = True

    def __init__(
        self,
        model: Model,
        optimizer: OptimizerLike,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_test: np.ndarray,
        y_test: np.ndarray,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        loss: Callable[[Any, Any], Any] = cross_entropy,
        mode: Any = None,
        on_nonfinite: str = "raise",
        *,
        step: StepBuilder | None = None,
        ema: Any = None,
    ):
        if on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"on_nonfinite must be one of {NONFINITE_POLICIES}, got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        #: Steps skipped as non-finite in the last :meth:`run_epoch`.
        self.last_skipped = 0
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if len(x_train) != len(y_train) or len(x_test) != len(y_test):
            raise ValueError(
                f"images and labels differ in length: train {len(x_train)} vs {len(y_train)}, "
                f"test {len(x_test)} vs {len(y_test)}"
            )
        if batch_size > len(x_train):
            raise ValueError(f"batch_size {batch_size} exceeds the {len(x_train)} training samples")
        self.step = ModelStep(model, loss) if step is None else step
        self.step.check(optimizer)
        dtype = model.params[0].dtype
        self.model, self.optimizer, self.batch_size = model, optimizer, int(batch_size)
        self.n_train = len(x_train)
        self.steps_per_epoch = self.n_train // self.batch_size
        self.x_train = pytensor.shared(np.asarray(x_train, dtype=dtype), name="x_train")
        self.y_train = pytensor.shared(np.asarray(y_train, dtype=np.int64), name="y_train")
        self.x_test = pytensor.shared(np.asarray(x_test, dtype=dtype), name="x_test")
        self.y_test = pytensor.shared(np.asarray(y_test, dtype=np.int64), name="y_test")
        self.order = pytensor.shared(self.step.initial_order(self.n_train), name="order")
        self.n_test, self.eval_batch_size = len(x_test), int(eval_batch_size)

        i = pt.scalar("batch", dtype="int64")
        objective, losses, extra, givens = self.step.train((self.x_train, self.y_train), self.order, i, self.batch_size)
        updates = optimizer.updates(objective)
        if ema is not None:
            updates = ema.updates(updates)
        self.ema = ema
        extra = dict(extra)
        if getattr(optimizer, "skip_nonfinite", False):
            # A skipped step changes nothing: nor the batch-norm statistics of a non-finite
            # forward pass (dropout generators still advance, like the data order).
            finite = pt.isfinite(objective)
            extra = {var: pt.switch(finite, new, var) if isinstance(var.type, pt.TensorType) else new
                     for var, new in extra.items()}
        gate = getattr(optimizer, "member_active", None)
        if gate is not None:
            # stoppable=True: a frozen member's buffers (batch-norm statistics, dropout
            # counters of a vectorised stack) stop with its parameters.
            active = pt.neq(gate, 0)
            extra = {var: pt.switch(member_view(active, var.ndim), new, var)
                     if getattr(var.tag, "seed_axis", False) and isinstance(var.type, pt.TensorType) else new
                     for var, new in extra.items()}
        updates.update(extra)
        self.train_step = function([i], losses, updates=updates, givens=givens, mode=mode)

        start, stop = i * self.eval_batch_size, (i + 1) * self.eval_batch_size
        sums, givens = self.step.evaluate((self.x_test, self.y_test), start, stop)
        self.eval_step = function([i], sums, givens=givens, mode=mode)

    def warm_up(self) -> None:
        """Run the JIT compilation now, leaving every variable as it was.

        PyTensor's Numba backend compiles on the first call; doing it here keeps the
        compile time out of the first epoch's seconds.
        """
        warm_up(self.train_step, self.eval_step)

    def _evaluate(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean test loss and accuracy per stream, arrays of shape ``(streams,)``."""
        streams = self.step.streams
        total_loss, total_correct = np.zeros(streams), np.zeros(streams)
        for i in range(-(-self.n_test // self.eval_batch_size)):
            batch_loss, batch_correct = self.eval_step(i)
            total_loss += batch_loss
            total_correct += batch_correct
        return total_loss / self.n_test, total_correct / self.n_test

    def evaluate(self) -> tuple[float, float]:
        """Mean test loss and accuracy."""
        test_loss, test_accuracy = self._evaluate()
        return float(test_loss[0]), float(test_accuracy[0])

    def run_epoch(
        self, rng: np.random.Generator, progress: bool = False, desc: str = "", *, epoch: int | None = None
    ) -> float:
        """One shuffled pass over the training set; returns the mean train loss (see :meth:`epoch_tally`)."""
        return float(tally_means(self.epoch_tally(rng, progress, desc, epoch=epoch))[0])

    def epoch_tally(self, rng: np.random.Generator, progress: bool = False, desc: str = "", **position: Any) -> np.ndarray:
        """One shuffled pass over the training set; returns its tally, shape ``(1, 3)``:
        the sum and count of the finite train losses, and the steps the optimiser skipped.

        A NaN or infinite step loss raises :class:`NonFiniteLossError` (naming ``epoch``
        and the step) unless ``on_nonfinite="continue"`` or the optimiser skips
        non-finite steps; such losses are left out of the mean, and the steps the
        optimiser skipped are counted in :attr:`last_skipped`.

        ``start``, ``tally``: resume the epoch at step ``start`` (the order is drawn from
        ``rng`` as always, so ``rng`` must be in its state at the epoch's start), with
        ``tally`` the epoch's running :func:`~symopt.checkpoint.new_tally` at that step.
        ``after_step(steps_done, tally)`` runs after every step (checkpoints, Ctrl-C).
        These (and ``epoch``) are keywords of :meth:`_tally`.
        """
        return self._tally([rng], progress, desc, **position)

    def _tally(
        self,
        rngs: Sequence[np.random.Generator],
        progress: bool = False,
        desc: str = "",
        *,
        epoch: int | None = None,
        start: int = 0,
        tally: np.ndarray | None = None,
        after_step: Callable[[int, np.ndarray], None] | None = None,
    ) -> np.ndarray:
        """:meth:`epoch_tally` of every stream, stream ``s`` shuffled by ``rngs[s]``: one tally row each."""
        shape = self.order.get_value(borrow=True).shape
        order = np.stack([rng.permutation(self.n_train) for rng in rngs]).astype(np.int64).reshape(shape)
        self.order.set_value(order, borrow=True)
        steps: Any = range(int(start), self.steps_per_epoch)
        if progress:
            from ._extras import tqdm

            steps = tqdm(steps, desc=desc, leave=False, unit="step", initial=int(start), total=self.steps_per_epoch)
        streams = self.step.streams
        tally = new_tally(streams) if tally is None else np.array(tally, dtype=np.float64).reshape(streams, TALLY_WIDTH)
        skipping = bool(getattr(self.optimizer, "skip_nonfinite", False))
        counter = getattr(self.optimizer, "skipped", None) if skipping else None
        # A seed stack skips per seed (symopt.transforms.SkipNonFinite): each stream its own count.
        member_counter = getattr(self.optimizer, "member_skipped", None)
        if skipping and member_counter is not None:
            counter = member_counter
        # The optimiser's own count also holds steps with a finite loss but non-finite gradients.
        skipped_base = counter.get_value() - tally[:, 2] if counter is not None else 0
        with _denormals.flush_denormals(self.flush_denormals):
            for i in steps:
                losses = np.asarray(self.train_step(i), dtype=np.float64).reshape(streams)
                if math.isfinite(losses.sum()):  # the common case, kept cheap: a few microseconds a step
                    tally[:, 0] += losses
                    tally[:, 1] += 1
                else:
                    finite = np.isfinite(losses)
                    if not skipping and self.on_nonfinite == "raise" and not finite.all():
                        raise NonFiniteLossError(epoch, i + 1, float(losses[~finite][0]))
                    counted = finite | (not skipping)
                    tally[counted, 0] += losses[counted]
                    tally[counted, 1] += 1
                if counter is not None:
                    tally[:, 2] = counter.get_value() - skipped_base
                if after_step is not None:
                    after_step(i + 1, tally)
        self.last_skipped = int(tally[0, 2])
        return tally

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
        plateau: Any = None,
        early_stopping: Any = None,
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
        plateau
            A :class:`~symopt.plateau.ReduceLROnPlateau`, stepped with each epoch's test
            loss after the callback; its state goes in the checkpoint.
        early_stopping
            A :class:`~symopt.plateau.EarlyStopping`, stepped with each epoch's test loss
            after the plateau: the run ends (the history is shorter than ``epochs``) at the
            epoch it stops, recorded in ``early_stopping.stopped_epoch``; its state goes in
            the checkpoint, and resuming a stopped run trains no further.

        In the main thread, Ctrl-C lets the current step finish, writes the checkpoint
        (if any) and raises :class:`~symopt.checkpoint.TrainingInterrupted` (a
        ``KeyboardInterrupt``) holding the history so far.
        """
        on_epoch = None if callback is None else (lambda records: callback(records[0]))
        return self._fit(epochs, [seed], progress, on_epoch, per_stream=False, checkpoint=checkpoint,
                         checkpoint_every=checkpoint_every, resume=resume, config=config, plateau=plateau,
                         early_stopping=early_stopping)

    def _fit(
        self,
        epochs: int,
        data_seeds: Sequence[int],
        progress: bool,
        on_epoch: Callable[[list[EpochRecord]], None] | None,
        *,
        per_stream: bool,
        **options: Any,
    ) -> Any:
        """The epoch loop of every stream (:func:`~symopt.checkpoint.run_training`).

        Returns one history per stream (``per_stream``) or the one stream's history;
        ``on_epoch`` receives each epoch's records, one per stream.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
        streams = self.step.streams
        if len(data_seeds) != streams:
            raise ValueError(f"got {len(data_seeds)} data seeds for {streams} models")

        def row_records(epoch: int, row: np.ndarray) -> list[EpochRecord]:
            return [EpochRecord.from_row(epoch, row[s]) for s in range(streams)]

        def histories(history: np.ndarray) -> list[list[EpochRecord]]:
            per_epoch = [row_records(e + 1, row) for e, row in enumerate(history)]
            return [[records[s] for records in per_epoch] for s in range(streams)]

        def each_epoch(epoch: int, row: np.ndarray) -> None:
            if on_epoch is not None:
                on_epoch(row_records(epoch, row))

        history = run_training(
            self, model=self.model, optimizer=self.optimizer, epochs=int(epochs),
            data_seeds=[int(s) for s in data_seeds], run_epoch=self._tally, evaluate=self._evaluate,
            progress=progress, seconds_divisor=streams, on_epoch=each_epoch,
            to_history=histories if per_stream else (lambda h: histories(h)[0]), **options,
        )
        return histories(history) if per_stream else histories(history)[0]


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
    optimizer: OptimizerLike,
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
    plateau: Any = None,
    early_stopping: Any = None,
) -> list[EpochRecord]:
    """Train ``model`` with ``optimizer`` on ``data`` (``x_train``, ``y_train``, ``x_test``, ``y_test``).

    Returns one :class:`EpochRecord` per epoch (train loss, test loss, test accuracy,
    seconds of training). The same seed, model and optimiser state give the same history.
    ``checkpoint="run.ckpt"`` writes the run's state after every epoch (and every
    ``checkpoint_every`` steps); ``resume=True`` continues from it (see :meth:`Trainer.fit`).
    ``plateau=symopt.ReduceLROnPlateau(optimizer, ...)`` is stepped with each epoch's test loss,
    then ``early_stopping=symopt.EarlyStopping(patience=...)``, which ends the run early.
    """
    trainer = Trainer(
        model, optimizer, data.x_train, data.y_train, data.x_test, data.y_test, batch_size=batch_size, mode=mode
    )
    return trainer.fit(epochs, seed, progress=progress, callback=callback, checkpoint=checkpoint,
                       checkpoint_every=checkpoint_every, resume=resume, plateau=plateau,
                       early_stopping=early_stopping)
