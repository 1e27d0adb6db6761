"""Train S independently initialised copies of one model in one compiled step.

Multi-seed comparisons train the same network from many seeds. Compiling one step
per seed and calling them in turn pays the per-call overhead S times and leaves the
matmuls small; :class:`SeedStack` instead stacks the S models' parameters along a
new leading *seed axis* and :class:`SeedTrainer` compiles one step that trains all
of them:

* every parameter ``p`` of shape ``shape`` becomes one shared variable of shape
  ``(S, *shape)`` whose slice ``s`` starts as seed ``s``'s model's value;
* dense layers are batched matmuls ``(S, B, n_in) @ (S, n_in, n_out)``;
* seed ``s`` sees its own mini-batches (its own shuffle of the training set,
  ``numpy.random.default_rng(data_seed_s)``, exactly as :meth:`Trainer.fit` draws
  them) and its own dropout masks (those its own model draws: its key, the same step counter);
* the loss differentiated is the *sum* of the per-seed mean losses, so the gradient
  with respect to slice ``s`` is seed ``s``'s own gradient, and every update rule
  (all are element-wise) keeps all optimiser state per seed.

The result is the same as S separate :class:`~symopt.train.Trainer` runs, up to
float round-off of the batched matmuls (tested in ``tests/test_seeds.py``).

Optimiser settings that reduce over a whole tensor or over all parameters
(``clip_norm``, ``clip_global_norm``, ``max_norm``, ``skip_nonfinite``) would couple
the seeds and are refused.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.tensor.variable import TensorVariable

from .checkpoint import TALLY_WIDTH, new_tally, run_training, tally_means
from .function import function
from .nn import Activation, Dense, Dropout, Layer, Sequential, cross_entropy, dropout_mask
from .optimizer import Optimizer
from .transforms import BUILTIN_ORDER, SETTING_KEYWORDS, coupling_transforms
from .train import EpochRecord, warm_up

__all__ = ["SeedStack", "SeedTrainer", "seed_axis_ndim", "seed_cross_entropy", "coupling_transforms", "COUPLING_SETTINGS",
           "STACKED_MODE"]

#: Keywords of the built-in transforms computed over whole tensors or all parameters
#: (``Transform.reduces``): with a seed axis they would mix the seeds, so a SeedTrainer
#: refuses them. Derived from :data:`symopt.transforms.BUILTIN_ORDER`; an optimiser's
#: own list, user transforms included, is :func:`coupling_transforms`.
COUPLING_SETTINGS = tuple(t.keyword for t in BUILTIN_ORDER if t.reduces is not None and t.keyword in SETTING_KEYWORDS)


#: The backend a SeedTrainer compiles with by default. Measured before the counter-based
#: dropout masks (S = 30, mnist-optimizers MLP with dropout, Adam; benchmarks/seeds_step.py):
#: CVM compiled the stacked step in 19 s against Numba's 178 s and stepped no slower. With
#: the counter masks (benchmarks/dropout_cost.py, quiet Zen 4) Numba's cold compile fell to
#: 54 s and its stacked dropout step costs 1.00x the step without dropout against CVM's
#: 1.76x (the C loop does not vectorise the hash); the default is to be re-measured.
#: Falls back to Numba, with a warning, where no C compiler is found.
STACKED_MODE = "CVM"


def seed_axis_ndim(param: Any) -> int:
    """Dimensions of ``param`` without the seed axis (masks use it to tell weights from biases)."""
    return param.ndim - (1 if getattr(param.tag, "seed_axis", False) else 0)


class SeedStack:
    """S models of identical structure, stacked along a leading seed axis.

    Parameters
    ----------
    make_model
        ``make_model(seed) -> Sequential``: builds seed ``seed``'s model, e.g.
        ``lambda s: symopt.nn.MLP([784, 100, 10], dropout=0.2, seed=s)``. The models
        are built once; their initial values and dropout keys are those of S
        separate runs.
    seeds
        The model seeds, one per copy (distinct, at least one).

    Notes
    -----
    Supported layers: :class:`~symopt.nn.Dense`, activations and
    :class:`~symopt.nn.Dropout` (inside :class:`~symopt.nn.Sequential`, e.g. an
    :class:`~symopt.nn.MLP` without batch norm).
    """

    def __init__(self, make_model: Callable[[int], Sequential], seeds: Sequence[int]):
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("SeedStack: seeds is empty; give at least one seed")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"SeedStack: seeds must be distinct, got {seeds}")
        self.seeds = seeds
        self.models = [make_model(s) for s in seeds]
        first = self.models[0]
        if not isinstance(first, Sequential):
            raise TypeError(f"SeedStack: make_model must return a Sequential model, got {type(first).__name__}")
        for layer in first.layers:
            if not isinstance(layer, (Dense, Activation, Dropout)):
                raise ValueError(
                    f"SeedStack supports Dense, activation and Dropout layers; {type(layer).__name__} "
                    f"{layer.name!r} has no seed-stacked version"
                )
        signature = _structure(first)
        for seed, model in zip(seeds[1:], self.models[1:]):
            if _structure(model) != signature:
                raise ValueError(f"SeedStack: the model for seed {seed} differs in structure from seed {seeds[0]}'s")
        self.layers: list[Layer] = first.layers
        #: Stacked parameters, in the order of the single model's ``params``.
        self.params: list[SharedVariable] = []
        self._stacked: dict[int, SharedVariable] = {}
        for j, param in enumerate(first.params):
            value = np.stack([m.params[j].get_value() for m in self.models])
            stacked = pytensor.shared(value, name=f"{param.name}[seeds]")
            stacked.tag.seed_axis = True
            self.params.append(stacked)
            self._stacked[id(param)] = stacked
        #: Per dropout layer index: the S seeds' mask keys (an int64 vector) and the step
        #: counter, shared by the seeds (they step together; seed s's slice is what its own
        #: run draws: its key, the same counter and the same element indices).
        self._dropout: dict[int, tuple[SharedVariable, SharedVariable]] = {}
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Dropout):
                counters = {int(m.layers[i].counter.get_value()) for m in self.models}
                if len(counters) != 1:
                    raise ValueError(f"SeedStack: the models' {layer.name!r} step counters differ: {sorted(counters)}")
                keys = np.array([m.layers[i].key.get_value() for m in self.models], dtype=np.int64)
                self._dropout[i] = (
                    pytensor.shared(keys, name=f"{layer.name}.key[seeds]"),
                    pytensor.shared(np.int64(counters.pop()), name=f"{layer.name}.counter[seeds]"),
                )
        self.extra_updates: OrderedDict[SharedVariable, Any] = OrderedDict()

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    @property
    def buffers(self) -> list[SharedVariable]:
        """The dropout keys (one vector per layer) and step counters."""
        return [var for pair in self._dropout.values() for var in pair]

    def output(self, x: Any, train: bool) -> TensorVariable:
        """Logits ``(S, B, classes)`` for inputs ``(S, B, features)`` (one batch per seed) or
        ``(B, features)`` (the same batch for every seed). In train mode ``extra_updates``
        afterwards holds the dropout step-counter updates of this call.
        """
        x = pt.as_tensor_variable(x)
        if x.ndim not in (2, 3):
            raise ValueError(f"SeedStack expects (S, batch, features) or (batch, features) inputs, got {x.ndim}-d")
        updates: OrderedDict[SharedVariable, Any] = OrderedDict()
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Dense):
                W = self._stacked[id(layer.W)]
                # A batch shared by all seeds is one (B, n_in) @ (n_in, S * n_out) product.
                out = pt.tensordot(x, W, axes=[[1], [1]]).dimshuffle(1, 0, 2) if x.ndim == 2 else pt.matmul(x, W)
                x = out if layer.b is None else out + self._stacked[id(layer.b)][:, None, :]
            elif isinstance(layer, Dropout):
                if not train or layer.p == 0.0:
                    continue
                if x.ndim == 2:
                    x = pt.broadcast_to(x[None], (self.n_seeds, *x.shape))
                # Seed s's slice: seed s's key (broadcast along the seed axis), the shared
                # counter and the element indices of its own run's (B, n) tensor.
                keys, counter = self._dropout[i]
                updates[counter] = counter + np.int64(1)
                x = dropout_mask(x, keys[:, None, None], counter, layer.p, x.dtype, lead=1)
            else:
                x = layer.output(x, train)
        if train:
            self.extra_updates = updates
        return x

    def values(self, index: int) -> list[np.ndarray]:
        """Seed ``seeds[index]``'s current parameter values, in the single model's order."""
        return [p.get_value()[index].copy() for p in self.params]


def _structure(model: Sequential) -> list[tuple[str, tuple[int, ...], str]]:
    layers = [(type(layer).__name__, (), getattr(layer, "name", "")) for layer in model.layers]
    params = [("param", tuple(p.get_value(borrow=True).shape), str(p.dtype)) for p in model.params]
    return layers + params


def seed_cross_entropy(logits: TensorVariable, labels: TensorVariable) -> TensorVariable:
    """Per-seed mean softmax cross-entropy: logits ``(S, B, C)``, labels ``(S, B)`` -> ``(S,)``."""
    s, b, c = logits.shape
    losses = cross_entropy(logits.reshape((s * b, c)), labels.reshape((s * b,)), reduction="none")
    return losses.reshape((s, b)).mean(axis=1)


class SeedTrainer:
    """One compiled train step and one eval step for all seeds of a :class:`SeedStack`.

    The counterpart of :class:`~symopt.train.Trainer`: data in shared variables, each
    step receives only its batch number; seed ``s``'s rows of batch ``i`` are
    ``order[s, i * batch_size:(i + 1) * batch_size]``.

    Parameters
    ----------
    stack
        The models.
    optimizer
        An :class:`~symopt.optimizer.Optimizer` over ``stack.params``; its hyperparameters
        are shared by the seeds, its state is per seed.
    x_train, y_train, x_test, y_test
        As for :class:`~symopt.train.Trainer` (one copy, shared by the seeds).
    batch_size, eval_batch_size
        As for :class:`~symopt.train.Trainer`.
    mode
        Compilation mode; ``None``: ``$SYMOPT_MODE`` if set, else :data:`STACKED_MODE`.
    """

    def __init__(
        self,
        stack: SeedStack,
        optimizer: Optimizer,
        x_train: Any,
        y_train: Any,
        x_test: Any,
        y_test: Any,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        mode: Any = None,
    ):
        if [id(p) for p in optimizer.params] != [id(p) for p in stack.params]:
            raise ValueError("SeedTrainer: the optimizer must be built over stack.params, in that order")
        coupled = coupling_transforms(optimizer)
        if coupled:
            raise ValueError(
                f"SeedTrainer: {', '.join(coupled)} would couple the seeds (computed over whole tensors); "
                f"train seeds separately with symopt.Trainer to use it"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.stack, self.optimizer = stack, optimizer
        self.batch_size = int(batch_size)
        self.n_train = len(x_train)
        if self.batch_size > self.n_train:
            raise ValueError(f"batch_size {batch_size} exceeds the {self.n_train} training examples")
        self.steps_per_epoch = self.n_train // self.batch_size
        dtype = stack.params[0].dtype
        S = stack.n_seeds
        self.x_train = pytensor.shared(np.asarray(x_train, dtype=dtype), name="x_train")
        self.y_train = pytensor.shared(np.asarray(y_train, dtype=np.int64), name="y_train")
        self.x_test = pytensor.shared(np.asarray(x_test, dtype=dtype), name="x_test")
        self.y_test = pytensor.shared(np.asarray(y_test, dtype=np.int64), name="y_test")
        self.order = pytensor.shared(np.tile(np.arange(self.n_train, dtype=np.int64), (S, 1)), name="order")
        self.n_test, self.eval_batch_size = len(x_test), int(eval_batch_size)

        i = pt.scalar("batch", dtype="int64")
        rows = self.order[:, i * self.batch_size : (i + 1) * self.batch_size]  # (S, B)
        per_seed = seed_cross_entropy(stack.output(self.x_train[rows], train=True), self.y_train[rows])
        # d(sum_s L_s)/d(slice s) = dL_s/d(slice s): each seed gets its own gradient.
        updates = optimizer.updates(per_seed.sum())
        updates.update(stack.extra_updates)
        if mode is None and not os.environ.get("SYMOPT_MODE"):
            mode = STACKED_MODE
        self.train_step = function([i], per_seed, updates=updates, mode=mode)

        start, stop = i * self.eval_batch_size, (i + 1) * self.eval_batch_size
        x, y = self.x_test[start:stop], self.y_test[start:stop]
        logits = stack.output(x, train=False)  # (S, b, C)
        n = logits.shape[1]
        losses = cross_entropy(logits.reshape((S * n, logits.shape[2])), pt.tile(y, S), reduction="none")
        loss_sums = losses.reshape((S, n)).sum(axis=1)
        correct = pt.eq(pt.argmax(logits, axis=2), y[None, :]).sum(axis=1)
        self.eval_step = function([i], [loss_sums, correct], mode=mode)

    def warm_up(self) -> None:
        """Run the JIT compilation now, leaving every variable as it was."""
        warm_up(self.train_step, self.eval_step)

    def evaluate(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-seed mean test loss and accuracy, arrays of shape ``(S,)``."""
        S = self.stack.n_seeds
        total_loss, total_correct = np.zeros(S), np.zeros(S)
        for i in range(-(-self.n_test // self.eval_batch_size)):
            batch_loss, batch_correct = self.eval_step(i)
            total_loss += batch_loss
            total_correct += batch_correct
        return total_loss / self.n_test, total_correct / self.n_test

    def run_epoch(
        self, rngs: Sequence[np.random.Generator], progress: bool = False, desc: str = "", *, epoch: int | None = None
    ) -> np.ndarray:
        """One pass; seed ``s`` follows ``rngs[s].permutation``. Returns per-seed mean train losses."""
        return tally_means(self.epoch_tally(rngs, progress, desc, epoch=epoch))

    def epoch_tally(
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
        """One pass, as :meth:`~symopt.train.Trainer.epoch_tally` with one tally row per seed
        (no step is skipped: ``skip_nonfinite`` is refused for stacks)."""
        order = np.stack([rng.permutation(self.n_train) for rng in rngs]).astype(np.int64)
        self.order.set_value(order, borrow=True)
        steps: Any = range(int(start), self.steps_per_epoch)
        if progress:
            from ._extras import tqdm

            steps = tqdm(steps, desc=desc, leave=False, unit="step", initial=int(start), total=self.steps_per_epoch)
        S = self.stack.n_seeds
        tally = new_tally(S) if tally is None else np.array(tally, dtype=np.float64).reshape(S, TALLY_WIDTH)
        for i in steps:
            tally[:, 0] += self.train_step(i)
            tally[:, 1] += 1
            if after_step is not None:
                after_step(i + 1, tally)
        return tally

    def fit(
        self,
        epochs: int,
        data_seeds: Sequence[int] | None = None,
        progress: bool = True,
        callback: Callable[[int, list[EpochRecord]], None] | None = None,
        *,
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_every: int | None = None,
        resume: bool | str | os.PathLike[str] = False,
        config: Mapping[str, Any] | None = None,
    ) -> list[list[EpochRecord]]:
        """Train ``epochs`` epochs; returns one history per seed (as :meth:`Trainer.fit` would).

        ``data_seeds`` gives each seed's data-order seed (default: the model seeds).
        ``seconds`` of an epoch is the wall time of the joint epoch divided by S.
        ``checkpoint``, ``checkpoint_every``, ``resume``, ``config`` and Ctrl-C: as for
        :meth:`Trainer.fit` (one checkpoint holds every seed's state).
        """
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
        data_seeds = list(self.stack.seeds if data_seeds is None else data_seeds)
        if len(data_seeds) != self.stack.n_seeds:
            raise ValueError(f"got {len(data_seeds)} data seeds for {self.stack.n_seeds} models")
        S = self.stack.n_seeds

        def row_records(epoch: int, row: np.ndarray) -> list[EpochRecord]:
            return [EpochRecord.from_row(epoch, row[s]) for s in range(S)]

        def histories(history: np.ndarray) -> list[list[EpochRecord]]:
            per_epoch = [row_records(e + 1, row) for e, row in enumerate(history)]
            return [[records[s] for records in per_epoch] for s in range(S)]

        def on_epoch(epoch: int, row: np.ndarray) -> None:
            if callback is not None:
                callback(epoch, row_records(epoch, row))

        history = run_training(
            self, model=self.stack, optimizer=self.optimizer, epochs=int(epochs), data_seeds=[int(s) for s in data_seeds],
            run_epoch=self.epoch_tally, evaluate=self.evaluate, progress=progress, seconds_divisor=S, on_epoch=on_epoch,
            to_history=histories, checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume, config=config,
        )
        return histories(history)
