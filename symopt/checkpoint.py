"""Checkpoint and resume: the whole state of a training run in one file.

One mechanism serves :class:`~symopt.train.Trainer` and :class:`~symopt.seeds.SeedTrainer`.
What a run's future depends on is exactly

* every shared variable its compiled train and eval functions read, other than the
  data: parameters, buffers (batch-norm running statistics, dropout generators),
  optimiser slots, step counters and hyperparameters, schedule parameters, EMA
  averages, Lookahead's slow weights and counter. They are found in the compiled
  functions themselves, so state a wrapper or a user-built model adds is never missed;
* the data-order generators (one per seed), as they were at the start of the current
  epoch, so an interrupted epoch is shuffled again exactly as it was;
* the position (completed epochs, steps done in the current one, the epoch's running
  tally of losses and skipped steps) and the history so far.

The file is an ``.npz`` (arrays) with a JSON ``header`` (generator states, position,
signature), written atomically. On resume everything is read and validated (format,
the run's signature, every array's shape and dtype from its header before it is
allocated, every generator state) before any variable changes; a checkpoint of another
model, optimiser, data set, batch size, data seed or run configuration is refused with
one line naming the first difference.

The signature holds the structure (the model's and optimiser's types and settings,
each variable's name, dtype and shape), the data (a digest), the batch size and data
seeds, the caller's ``config``, and the values the run *started* with of every variable
training does not update (hyperparameters, schedule parameters): resuming with another
learning rate is refused, while a value a callback changed during the run is restored.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.basic import Variable

from ._io import atomic_writer
from ._npz import NpzReader
from ._threads import limit_blas_threads

__all__ = ["TrainingInterrupted", "RunCheckpoint", "run_training", "read_header", "FORMAT", "VERSION"]

FORMAT = "symopt-checkpoint"
VERSION = 1
#: Upper bound on the JSON header (characters), checked before it is read.
MAX_HEADER_CHARS = 1 << 22
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a run after finishing its current step.

    Attributes
    ----------
    history
        The history so far, as ``fit`` would have returned it.
    epoch, step
        Completed epochs, and steps done in the next one.
    checkpoint
        The checkpoint written at that point, or ``None`` when the run had none.
    """

    def __init__(self, history: Any, epoch: int, step: int, checkpoint: Path | None):
        where = f"after epoch {epoch}" if step == 0 else f"in epoch {epoch + 1} after step {step}"
        saved = f"; checkpoint written to {checkpoint}" if checkpoint is not None else ""
        super().__init__(f"training interrupted {where}{saved}")
        self.history, self.epoch, self.step, self.checkpoint = history, epoch, step, checkpoint


# ---------------------------------------------------------------------- helpers
def _json_state(value: Any) -> Any:
    """A generator's ``bit_generator.state`` as JSON (arrays tagged, e.g. MT19937's key)."""
    if isinstance(value, Mapping):
        return {str(k): _json_state(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_json_state(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__ndarray__", "dtype"}:
            dtype = np.dtype(value["dtype"])
            if dtype.kind not in "iu":
                raise ValueError(f"generator state array of dtype {dtype}")
            return np.array(value["__ndarray__"], dtype=dtype)
        return {k: _from_json_state(v) for k, v in value.items()}
    return value


def _generator_from_state(state: Any) -> np.random.Generator:
    """A new Generator in ``state``; ValueError if it is not a valid bit-generator state."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in _BIT_GENERATORS:
        raise ValueError(f"unknown bit generator {name!r}")
    bit = getattr(np.random, name)()
    try:
        bit.state = _from_json_state(state)
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise ValueError(f"invalid {name} state ({exc})") from None
    return np.random.Generator(bit)


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    for array in arrays:
        array = np.ascontiguousarray(array)
        h.update(f"{array.dtype.str}{array.shape}".encode())
        h.update(memoryview(array).cast("B"))
    return h.hexdigest()


def _describe(obj: Any, depth: int = 0) -> Any:
    """The settings of a model or optimiser as JSON: plain attributes, recursively.

    Shared variables appear by name (their values are state, saved separately); graph
    variables, generators, arrays and maps keyed by objects are left out.
    """
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, np.generic):
        return _describe(obj.item(), depth)
    if isinstance(obj, SharedVariable):
        return f"<shared {obj.name}>"
    if isinstance(obj, (Variable, np.ndarray, np.random.Generator)):
        return None
    if isinstance(obj, (list, tuple)):
        return [_describe(v, depth + 1) for v in obj]
    if isinstance(obj, Mapping):
        if not all(isinstance(k, str) for k in obj):
            return None
        return {k: _describe(v, depth + 1) for k, v in obj.items()}
    if inspect.isroutine(obj) or inspect.isclass(obj):
        return getattr(obj, "__qualname__", repr(obj))
    if depth > 8:
        return type(obj).__qualname__
    out: dict[str, Any] = {"type": type(obj).__qualname__}
    for key, value in vars(obj).items() if hasattr(obj, "__dict__") else ():
        if key in ("extra_updates",) or key.startswith("__"):
            continue
        out[key] = _describe(value, depth + 1)
    return out


def _first_difference(saved: Any, current: Any, where: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in list(saved) + [k for k in current if k not in saved]:
            if key not in current or key not in saved:
                return (f"{where}.{key}".lstrip("."), saved.get(key, "<absent>"), current.get(key, "<absent>"))
            found = _first_difference(saved[key], current[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(saved, list) and isinstance(current, list):
        for i, (a, b) in enumerate(zip(saved, current)):
            found = _first_difference(a, b, f"{where}[{i}]")
            if found:
                return found
        if len(saved) != len(current):
            return (f"{where} (length)".lstrip("."), len(saved), len(current))
        return None
    if saved != current or type(saved) is not type(current) and not (
        isinstance(saved, (int, float)) and isinstance(current, (int, float))
    ):
        return (where.lstrip("."), saved, current)
    return None


def _short(value: Any, limit: int = 100) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------- the state of a run
#: Columns of an epoch's running tally: sum and count of the finite train losses,
#: steps the optimiser skipped as non-finite.
TALLY_WIDTH = 3
#: Columns of a history row: train loss, test loss, test accuracy, seconds, skipped steps.
HISTORY_WIDTH = 5


def new_tally(streams: int) -> np.ndarray:
    """An empty running tally of an epoch, one row per stream (seed)."""
    return np.zeros((streams, TALLY_WIDTH))


def tally_means(tally: np.ndarray) -> np.ndarray:
    """Mean train loss per stream (NaN where no step had a finite loss)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tally[:, 1] > 0, tally[:, 0] / tally[:, 1], np.nan)


@dataclass
class Position:
    """Where a run stands: ``epoch`` completed epochs and ``step`` steps of the next one."""

    epoch: int
    step: int
    tally: np.ndarray  # (S, TALLY_WIDTH) the epoch's running tally (see new_tally)
    seconds: float  # training seconds spent in the current epoch so far
    rng_states: list[dict[str, Any]]  # data-order generators at the start of the current epoch
    history: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, HISTORY_WIDTH)))  # (epochs, S, HISTORY_WIDTH)


class RunCheckpoint:
    """Saves and restores every piece of state of one trainer's run.

    Parameters
    ----------
    trainer
        A :class:`~symopt.train.Trainer` or :class:`~symopt.seeds.SeedTrainer` (compiled
        ``train_step``/``eval_step``, data in ``x_train``, ``y_train``, ``x_test``,
        ``y_test``, shuffled ``order``).
    model, optimizer
        Described (types and settings) in the signature.
    data_seeds
        The data-order seed of each stream (one for a Trainer, one per seed for a SeedTrainer).
    config
        Further JSON-able run settings that must match on resume (the CLI's flags).
    """

    #: A :class:`~symopt.plateau.ReduceLROnPlateau` whose state rides along (set by run_training).
    plateau: Any = None
    #: A :class:`~symopt.plateau.EarlyStopping` whose state rides along (set by run_training).
    early_stopping: Any = None

    def __init__(
        self, trainer: Any, model: Any, optimizer: Any, data_seeds: Sequence[int], config: Mapping[str, Any] | None
    ):
        data = [trainer.x_train, trainer.y_train, trainer.x_test, trainer.y_test, trainer.order]
        excluded = {id(v) for v in data}
        self.variables: list[SharedVariable] = []
        self.updated: list[bool] = []
        index: dict[int, int] = {}
        for fn in (trainer.train_step, trainer.eval_step):
            for inp in fn.maker.inputs:
                var = inp.variable
                if not isinstance(var, SharedVariable) or id(var) in excluded:
                    continue
                if id(var) in index:
                    self.updated[index[id(var)]] |= inp.update is not None
                    continue
                index[id(var)] = len(self.variables)
                self.variables.append(var)
                self.updated.append(inp.update is not None)
        kinds = []
        for var in self.variables:
            value = var.get_value(borrow=True)
            if isinstance(value, np.random.Generator):
                kinds.append(["generator", None, None])
            elif isinstance(value, np.ndarray):
                kinds.append(["array", value.dtype.str, list(value.shape)])
            else:
                raise TypeError(f"cannot checkpoint shared variable {var.name!r}: its value is a {type(value).__name__}")
        self.n_streams = len(data_seeds)
        self.steps_per_epoch = int(trainer.steps_per_epoch)
        self.signature: dict[str, Any] = json.loads(json.dumps({
            "trainer": type(trainer).__name__,
            "batch_size": int(trainer.batch_size),
            "n_train": int(trainer.n_train),
            "n_test": int(trainer.n_test),
            "data": _digest(*(v.get_value(borrow=True) for v in data[:4])),
            "data_seeds": [int(s) for s in data_seeds],
            "config": dict(config) if config is not None else None,
            "model": _describe(model),
            "optimizer": _describe(optimizer),
            "variables": [[var.name, *kind] for var, kind in zip(self.variables, kinds)],
        }))
        self.start = self._start_values()

    def _start_values(self) -> dict[str, list[Any]]:
        """Digest (and, for scalars, the value) of every variable training does not update."""
        out = {}
        for i, (var, updated) in enumerate(zip(self.variables, self.updated)):
            value = var.get_value(borrow=True)
            if updated or not isinstance(value, np.ndarray):
                continue
            shown = value.item() if value.size == 1 else f"{value.dtype}{list(value.shape)}"
            out[str(i)] = [_digest(value), _describe(shown)]
        return out

    # ------------------------------------------------------------------ save
    def save(self, path: Path, position: Position) -> None:
        """Write the current state at ``position`` to ``path`` atomically."""
        arrays: dict[str, np.ndarray] = {}
        generators: dict[str, Any] = {}
        for i, var in enumerate(self.variables):
            value = var.get_value(borrow=True)
            if isinstance(value, np.random.Generator):
                generators[str(i)] = _json_state(value.bit_generator.state)
            else:
                arrays[f"var/{i}"] = value
        header = {
            "format": FORMAT,
            "version": VERSION,
            "signature": self.signature,
            "start": self.start,
            "position": {"epoch": position.epoch, "step": position.step, "seconds": float(position.seconds)},
            "data_rngs": [_json_state(s) for s in position.rng_states],
            "generators": generators,
        }
        if self.plateau is not None:  # ReduceLROnPlateau hook; _describe writes non-finite floats as text
            header["plateau"] = _describe(self.plateau.state_dict())
        if self.early_stopping is not None:
            header["early_stopping"] = _describe(self.early_stopping.state_dict())
        arrays["header"] = np.array(json.dumps(header))
        arrays["history"] = np.asarray(position.history, dtype=np.float64)
        arrays["tally"] = np.asarray(position.tally, dtype=np.float64)
        with atomic_writer(path) as f:
            np.savez(f, **arrays)

    # ------------------------------------------------------------------ load
    def load(self, path: Path, max_epochs: int) -> Position:
        """Validate the checkpoint at ``path`` against this run, then restore every variable.

        Returns the position (with the data-order generator states and the history);
        raises ``ValueError`` (``FileNotFoundError`` for a missing file) naming the first
        problem, with nothing changed.
        """
        where = f"checkpoint {str(path)!r}"
        with NpzReader(path, "checkpoint") as npz:
            header = _header(npz, where)
            _compare(where, header["signature"], self.signature)
            start = header["start"]
            if not isinstance(start, dict) or set(start) != set(self.start):
                raise ValueError(f"{where} has a malformed 'start' record")
            for key, (digest, shown) in self.start.items():
                if start[key] != [digest, shown]:
                    name = self.variables[int(key)].name
                    saved_shown = start[key][1] if isinstance(start[key], list) and len(start[key]) == 2 else "?"
                    raise ValueError(
                        f"{where} is from a different run: {name} started at {_short(saved_shown)} there, "
                        f"{_short(shown)} here"
                    )
            position = self._position(header, where, max_epochs)
            plateau = self._hook_state(header, where, "plateau", self.plateau, "a ReduceLROnPlateau")
            stopping = self._hook_state(header, where, "early_stopping", self.early_stopping, "an EarlyStopping")
            S = self.n_streams
            position.history = npz.read("history", shape=(position.epoch, S, HISTORY_WIDTH), dtype=np.float64)
            position.tally = npz.read("tally", shape=(S, TALLY_WIDTH), dtype=np.float64)
            values: list[Any] = []
            generators = header["generators"]
            if not isinstance(generators, dict):
                raise ValueError(f"{where} has a malformed 'generators' record")
            for i, var in enumerate(self.variables):
                current = var.get_value(borrow=True)
                if isinstance(current, np.random.Generator):
                    if str(i) not in generators:
                        raise ValueError(f"{where} has no state for the generator {var.name!r}")
                    try:
                        values.append(_generator_from_state(generators[str(i)]))
                    except ValueError as exc:
                        raise ValueError(f"{where}: generator {var.name!r}: {exc}") from None
                else:
                    values.append(npz.read(f"var/{i}", shape=current.shape, dtype=current.dtype))
        for var, value in zip(self.variables, values):
            var.set_value(value, borrow=True)
        if plateau is not None:
            self.plateau.load_checked(plateau)
        if stopping is not None:
            self.early_stopping.load_checked(stopping)
        return position

    @staticmethod
    def _hook_state(header: dict[str, Any], where: str, key: str, hook: Any, label: str) -> dict[str, Any] | None:
        """A plateau's or EarlyStopping's saved state, validated by ``hook`` (None when the run has
        none); ``label`` names it in the message ("a ReduceLROnPlateau")."""
        saved = header.get(key)
        if (saved is None) != (hook is None):
            article, name = label.split(" ", 1)
            had, has = (article, "none") if saved is not None else ("no", "one")
            raise ValueError(f"{where} is from a different run: it has {had} {name}, this run {has}")
        if saved is None:
            return None
        try:
            return hook.checked_state(saved)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None

    def _position(self, header: dict[str, Any], where: str, max_epochs: int) -> Position:
        pos = header["position"]
        if not isinstance(pos, dict):
            raise ValueError(f"{where} has a malformed 'position' record")
        epoch, step, seconds = pos.get("epoch"), pos.get("step"), pos.get("seconds")
        for name, value, high in (("epoch", epoch, max_epochs), ("step", step, self.steps_per_epoch)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
                if name == "epoch" and isinstance(value, int) and value > max_epochs:
                    raise ValueError(f"{where} has trained {value} epochs, more than the {max_epochs} asked for")
                raise ValueError(f"{where} has an invalid {name} {value!r} (expected an integer in [0, {high}])")
        if epoch == max_epochs and step:
            raise ValueError(f"{where} is inside epoch {epoch + 1}, beyond the {max_epochs} asked for")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"{where} has an invalid seconds {seconds!r}")
        rng_states = header["data_rngs"]
        if not isinstance(rng_states, list) or len(rng_states) != self.n_streams:
            raise ValueError(f"{where} has a malformed 'data_rngs' record")
        for state in rng_states:
            try:
                _generator_from_state(state)
            except ValueError as exc:
                raise ValueError(f"{where}: data-order generator: {exc}") from None
        return Position(int(epoch), int(step), np.zeros(self.n_streams), float(seconds),
                        [_from_json_state(s) for s in rng_states])


def _header(npz: NpzReader, where: str) -> dict[str, Any]:
    text = str(npz.read("header", shape=(), kinds="U", max_itemsize=4 * MAX_HEADER_CHARS))
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{where} has an unreadable header ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{where} is not a symopt checkpoint")
    if header.get("version") != VERSION:
        raise ValueError(f"{where} has format version {header.get('version')!r}; this symopt reads {VERSION}")
    missing = {"signature", "start", "position", "data_rngs", "generators"} - set(header)
    if missing:
        raise ValueError(f"{where} has no {sorted(missing)}")
    if not isinstance(header["signature"], dict) or not isinstance(header["position"], dict):
        raise ValueError(f"{where} has a malformed header")
    return header


def _compare(where: str, saved: Any, current: Any) -> None:
    found = _first_difference(saved, current)
    if found:
        what, was, now = found
        raise ValueError(f"{where} is from a different run: {what} is {_short(was)} there, {_short(now)} here")


def read_header(path: str | os.PathLike[str], config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON header of a checkpoint (signature, position, ...), read without its arrays.

    With ``config``, a checkpoint whose run had other settings is refused (ValueError
    naming the first difference): a quick check before anything is compiled. The full
    validation happens when a trainer resumes from it.
    """
    where = f"checkpoint {str(path)!r}"
    with NpzReader(path, "checkpoint") as npz:
        header = _header(npz, where)
    if config is not None:
        _compare(where, {"config": header["signature"].get("config")}, {"config": dict(config)})
    return header


# ---------------------------------------------------------------------- Ctrl-C
@contextlib.contextmanager
def _finish_step_on_sigint() -> Iterator[Callable[[], bool]]:
    """Within the block, SIGINT only sets a flag (a second one interrupts at once).

    Only in the main thread and only when SIGINT has Python's default handler: a user's
    own handler, or a run in a worker thread, keeps its behaviour.
    """
    flag = [False]
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield lambda: False
        return

    def handler(signum: int, frame: Any) -> None:
        flag[0] = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: flag[0]
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# ---------------------------------------------------------------------- the loop
def _check_options(checkpoint: Any, checkpoint_every: Any, resume: Any) -> tuple[Path | None, int | None, Path | None]:
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file path, got {checkpoint!r}")
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.is_dir():
        raise ValueError(f"checkpoint {str(path)!r} is a directory; give a file path such as run.ckpt")
    if checkpoint_every is not None:
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, (int, np.integer)) or checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
        if path is None:
            raise ValueError("checkpoint_every needs checkpoint=PATH")
    if resume is True:
        if path is None:
            raise ValueError("resume=True needs checkpoint=PATH (the checkpoint to continue from)")
        source: Path | None = path
    elif resume is False or resume is None:
        source = None
    elif isinstance(resume, (str, os.PathLike)):
        source = Path(resume)
    else:
        raise TypeError(f"resume must be True, False or a checkpoint path, got {resume!r}")
    if source is not None and not source.exists():
        raise FileNotFoundError(f"no checkpoint {str(source)!r} to resume from")
    return path, None if checkpoint_every is None else int(checkpoint_every), source


@limit_blas_threads()  # every training loop: BLAS held at $OPENBLAS_NUM_THREADS threads (default 1)
def run_training(
    trainer: Any,
    *,
    model: Any,
    optimizer: Any,
    epochs: int,
    data_seeds: Sequence[int],
    run_epoch: Callable[..., np.ndarray],
    evaluate: Callable[[], tuple[Any, Any]],
    progress: bool,
    seconds_divisor: int,
    on_epoch: Callable[[int, np.ndarray], None] | None,
    to_history: Callable[[np.ndarray], Any],
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    resume: bool | str | os.PathLike[str] = False,
    config: Mapping[str, Any] | None = None,
    plateau: Any = None,
    early_stopping: Any = None,
) -> np.ndarray:
    """The epoch loop of both trainers, with checkpoints, resume and Ctrl-C.

    ``run_epoch(rngs, progress, desc, epoch=, start=, tally=, after_step=)`` trains one
    epoch (from step ``start``, with ``tally`` the running :func:`new_tally` of the steps
    before) and returns its final tally; ``evaluate()`` the test losses and accuracies.
    Returns the history, shape ``(epochs, streams, HISTORY_WIDTH)``: train loss, test
    loss, test accuracy, seconds, skipped steps. A checkpoint is written after every epoch and, with
    ``checkpoint_every=N``, after every N-th step of the run. Ctrl-C lets the current
    step finish, writes the checkpoint and raises :class:`TrainingInterrupted`.
    ``plateau`` (a :class:`~symopt.plateau.ReduceLROnPlateau`, or for several streams a
    :class:`~symopt.plateau.MemberReduceLROnPlateau`) is stepped with each epoch's test
    loss(es), then ``early_stopping`` (a :class:`~symopt.plateau.EarlyStopping`); their
    state goes in the checkpoint. Stopped streams are frozen by the optimiser's per-member
    gate; the run ends, with a shorter history, once every stream has stopped.
    """
    path, every, source = _check_options(checkpoint, checkpoint_every, resume)
    S = len(data_seeds)
    # -- ReduceLROnPlateau hook (1/3): the test loss(es) step it, one per stream
    if plateau is not None:
        from .plateau import MemberReduceLROnPlateau, ReduceLROnPlateau

        if not isinstance(plateau, ReduceLROnPlateau):
            raise TypeError(f"plateau must be a symopt.ReduceLROnPlateau, got {type(plateau).__name__}")
        per_member = isinstance(plateau, MemberReduceLROnPlateau)
        if S != 1 and not per_member:
            raise ValueError(f"plateau: ReduceLROnPlateau steps one run's learning rate; this trainer runs {S} seeds: "
                             f"use symopt.MemberReduceLROnPlateau (each seed's own rate from its own test loss)")
        if per_member and plateau.members != S:
            raise ValueError(f"plateau: the MemberReduceLROnPlateau is for {plateau.members} members, this trainer runs {S}")
        if plateau.optimizer is not getattr(optimizer, "inner", optimizer):  # a Lookahead's inner rule counts
            raise ValueError("plateau: the ReduceLROnPlateau was built on another optimiser than this run's")
    if early_stopping is not None:
        from .plateau import EarlyStopping

        if not isinstance(early_stopping, EarlyStopping):
            raise TypeError(f"early_stopping must be a symopt.EarlyStopping, got {type(early_stopping).__name__}")
        early_stopping.attach(optimizer, S)
    rngs = [np.random.default_rng(int(s)) for s in data_seeds]
    store = RunCheckpoint(trainer, model, optimizer, data_seeds, config) if path or source else None
    if store is not None:
        store.plateau = plateau  # -- ReduceLROnPlateau hook (2/3): its state in the checkpoint
        store.early_stopping = early_stopping
    position = Position(0, 0, new_tally(S), 0.0, [], np.zeros((0, S, HISTORY_WIDTH)))
    if source is not None:
        assert store is not None
        # Validates everything (including that the start record equals this run's), then
        # restores the variables.
        position = store.load(source, int(epochs))
        for rng, state in zip(rngs, position.rng_states):
            rng.bit_generator.state = state
    trainer.warm_up()
    history = position.history
    spe = int(trainer.steps_per_epoch)
    with _finish_step_on_sigint() as interrupted:
        for epoch in range(position.epoch + 1, int(epochs) + 1):
            if early_stopping is not None and early_stopping.all_stopped:
                break  # every stream has stopped (also when resuming such a run)
            resuming = epoch == position.epoch + 1 and position.step > 0
            start_step = position.step if resuming else 0
            tally = position.tally.copy() if resuming else new_tally(S)
            began = time.perf_counter() - (position.seconds if resuming else 0.0)
            start_states = [rng.bit_generator.state for rng in rngs]

            def after_step(done: int, running: np.ndarray, epoch: int = epoch, began: float = began,
                           start_states: list[dict[str, Any]] = start_states) -> None:
                if done >= spe:  # the epoch's end writes its own checkpoint
                    return
                stop = interrupted()
                if path is not None and (stop or (every is not None and ((epoch - 1) * spe + done) % every == 0)):
                    assert store is not None
                    store.save(path, Position(epoch - 1, done, np.array(running, dtype=np.float64),
                                              time.perf_counter() - began, start_states, history))
                if stop:
                    raise TrainingInterrupted(to_history(history), epoch - 1, done, path)

            try:
                tally = run_epoch(rngs, progress, f"epoch {epoch}/{epochs}", epoch=epoch, start=start_step,
                                  tally=tally, after_step=after_step)
            except FloatingPointError as exc:  # a diverged run (train.NonFiniteLossError): the epochs it did
                exc.history = to_history(history)  # type: ignore[attr-defined]
                raise
            seconds = (time.perf_counter() - began) / seconds_divisor
            test_loss, test_accuracy = evaluate()
            row = np.stack([np.broadcast_to(np.asarray(v, dtype=np.float64), (S,))
                            for v in (tally_means(tally), test_loss, test_accuracy, seconds, tally[:, 2])], axis=1)
            history = np.concatenate([history, row[None]])
            if on_epoch is not None:
                on_epoch(epoch, row)
            if plateau is not None:  # -- ReduceLROnPlateau hook (3/3), before the epoch's checkpoint
                if not per_member:
                    plateau.step(row[0, 1])
                else:  # streams stopped before this epoch keep their plateau state
                    plateau.step(row[:, 1], active=None if early_stopping is None else early_stopping.active)
            if early_stopping is not None:
                early_stopping.step(row[:, 1])
            if path is not None:
                assert store is not None
                store.save(path, Position(epoch, 0, new_tally(S), 0.0, [rng.bit_generator.state for rng in rngs], history))
            if interrupted():
                raise TrainingInterrupted(to_history(history), epoch, 0, path)
    return history
