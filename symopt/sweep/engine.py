"""Run a sweep's grid as Dask tasks; the client records each finished run in the SQLite store.

Worker side: :func:`train_run` trains one run. A worker process keeps its data set and
its compiled (model, optimiser) functions between tasks: the cache key is the model, the
data, the batch size, the optimiser and its *structure* (boolean options, enabled gradient
transforms, the slots it keeps); numeric hyperparameters are shared scalars set with
``opt.set_hyperparameter``, so one compiled function serves every value of a grid axis.
Before a run the parameters, dropout streams and optimiser state are reset to those of a
fresh seed (:func:`symopt.mnist_runs.reset_run`), so a run's numbers do not depend on which
worker trains it or what that worker trained before. Rules are set up as
:func:`symopt.mnist_runs.make_optimizer` does: a rule that updates only some parameters
(Muon) is combined with the AdamW its hyperparameters name under ``"others"``; a
Schedule-Free rule is evaluated at its evaluation point x.

Stacked tasks (``stack_size`` > 1): the client groups the pending runs of one compiled
structure (rule and structure as above, model, data, batch size, epochs; equal transform
thresholds such as ``clip_norm``) into tasks of up to ``stack_size`` members, hyperparameter
values x seeds. :func:`train_stack` trains a task's members together in one compiled step
(a :class:`~symopt.seeds.SeedStack` and :class:`~symopt.seeds.SeedTrainer`, the rule's
numeric hyperparameters as per-member vectors) and returns one result per member, which
the client records as its own run: same key, same rows, the numbers of the unstacked run
to float round-off per step (a member that diverges is recorded with its non-finite losses,
as the unstacked run is; the others are unaffected). Over many steps that round-off grows
as between any two backends: a trajectory that is bit-equal for its first ~90 Adam steps
on MNIST can differ by a few percent after an epoch. The worker's cache key then also holds the
stack size, and a stack is reset to its members' fresh models and optimiser state before
each task (:meth:`~symopt.seeds.SeedStack.reset`). A rule that refuses seed stacks (its
update reduces over whole tensors) keeps one run per task; so does a group's single
leftover run. Resume stays per run: a task only ever holds runs not yet recorded.

Plateau and early stopping (the protocol's ``plateau``/``early_stopping``, see
:mod:`symopt.sweep.config`): an unstacked run steps a
:class:`~symopt.plateau.ReduceLROnPlateau` and an :class:`~symopt.plateau.EarlyStopping`
with its configured metric after every epoch; a stacked task a
:class:`~symopt.plateau.MemberReduceLROnPlateau` and an EarlyStopping that freezes each
stopped member (the stack's optimiser is built ``stoppable``), so each member records its
unstacked run: the same learning rates, the same stop epoch, its history cut there.

``symopt bench-mnist`` trains its runs with the same tasks (:func:`run_tasks`: in its own
process, or on local Dask workers), recording them in its JSON results file instead.

Client side: :func:`run_sweep` opens the store (refusing a locked, corrupt, in-use or
other-protocol database before any work), skips runs already done, submits the rest,
and writes each result as it arrives, one transaction per run. A worker that dies is
replaced by its nanny and Dask reruns its tasks elsewhere; a run's future completes once,
so it is recorded once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._checks import is_integer
from .._extras import require, tqdm
from .._malloc import keep_freed_memory
from ._worker_setup import DASHBOARD_ENV
from .config import RunSpec, SweepConfig, canonical_json, load_config
from .store import ResultStore

__all__ = ["SweepReport", "SchedulerUnreachableError", "check_scheduler_address", "dask_client", "load_data",
           "plan_stacks", "run_sweep", "run_tasks", "train_run", "train_stack", "WORKER_ENV"]

#: Set in worker processes before they start: one BLAS thread (measured fastest here for
#: batch-128 matmuls; several threads per worker would also oversubscribe the cores).
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
#: Compiled (model, optimiser) pairs a worker keeps (least recently used dropped first).
CACHE_SIZE = 8

_DATA: dict[str, Any] = {}
_cache_limit = CACHE_SIZE
_COMPILED: OrderedDict[str, _Compiled] = OrderedDict()


class SchedulerUnreachableError(ConnectionError):
    """No Dask scheduler answered at the given address."""


@dataclass
class _Compiled:
    model: Any
    opt: Any
    trainer: Any
    initial_state: dict[str, Any]
    compile_seconds: float
    runs: int = 0


@dataclass(frozen=True)
class SweepReport:
    """What :func:`run_sweep` did.

    Attributes
    ----------
    total
        Runs in the grid.
    skipped
        Already done in the database (resumed), plus failed ones without ``retry_failed``.
    done, failed
        Runs finished or failed in this call.
    seconds
        Wall time of this call.
    workers
        Dask workers used (0 if nothing had to run).
    """

    db: Path
    total: int
    skipped: int
    done: int
    failed: int
    seconds: float
    workers: int


# ---------------------------------------------------------------------------- worker side
def load_data(data: Mapping[str, Any], data_dir: str | None = None) -> Any:
    """The data set a protocol names, loaded once per process.

    ``n_train``/``n_test`` select a subset drawn with ``subset_seed`` (as
    :func:`symopt.data.subset`); ``validation`` holds that fraction of the training
    images out and evaluates on it instead of the test set. ``data_dir`` is where the
    MNIST files are (else ``$SYMOPT_DATA``, then the cache).
    """
    from ..data import Dataset, load_mnist, subset, train_val_split

    key = canonical_json({"data": dict(data), "dir": data_dir})
    if key not in _DATA:
        dataset = load_mnist(data_dir)
        if data.get("n_train") is not None or data.get("n_test") is not None:
            n_train = data["n_train"] if data.get("n_train") is not None else len(dataset.y_train)
            dataset = subset(dataset, n_train, int(data["subset_seed"]), n_test=data.get("n_test"))
        if data.get("validation") is not None:
            split = train_val_split(dataset.x_train, dataset.y_train, float(data["validation"]),
                                    seed=int(data.get("subset_seed") or 0))
            dataset = Dataset(split.x_train, split.y_train, split.x_val, split.y_val)
        _DATA.clear()  # one data set per worker at a time: MNIST is 200 MB as float32
        _DATA[key] = dataset
    return _DATA[key]


def _remember(key: str, entry: _Compiled) -> _Compiled:
    """Keep ``entry`` in the worker's cache, dropping the least recently used beyond :data:`CACHE_SIZE`
    (one in an in-process run, :func:`run_tasks`)."""
    _COMPILED[key] = entry
    while len(_COMPILED) > _cache_limit:
        _COMPILED.popitem(last=False)
    return entry


def _structure(name: str, hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
    """What of an optimiser's settings changes its compiled graph (not its numeric values)."""
    import numpy as np
    import pytensor

    from symopt.optimizer import TRANSFORM_SETTINGS

    from ..mnist_runs import make_optimizer

    dummy = pytensor.shared(np.zeros((2, 2), dtype="float32"))
    opt = make_optimizer(name, hyperparameters, [dummy])  # builds shared scalars only, compiles nothing
    return {
        "options": {k: v for k, v in hyperparameters.items() if isinstance(v, bool)},
        "transforms": sorted(k for k in hyperparameters if k in TRANSFORM_SETTINGS),
        "slots": sorted(opt.active_slots()),
        "others": hyperparameters.get("others"),  # the rule combined with a partial one (Muon), fixed at construction
    }


def _per_member_names(name: str, hyperparameters: Mapping[str, Any]) -> list[str]:
    """The hyperparameters a stack takes as per-member vectors: the rule's numeric ones.

    Booleans are structure; transform thresholds (``clip_norm``, ...) are one shared
    scalar for all members; a rule whose state is not shaped like its parameters
    (``per_member_values = False``, Adafactor) takes no vectors at all. Members of one
    stack must agree on everything else.
    """
    import symopt

    from .._checks import is_real

    cls = symopt.get(name)
    if not getattr(cls, "per_member_values", True):
        return []
    declared = cls.declarations()
    return sorted(k for k, v in hyperparameters.items()
                  if k in declared and not declared[k].is_option and is_real(v))


def _stack_signature(spec: RunSpec) -> str:
    """What the runs of one stacked task must share: rule, structure, every value not per member."""
    vary = set(_per_member_names(spec.optimizer, spec.hyperparameters))
    fixed = {k: v for k, v in spec.hyperparameters.items() if k not in vary}
    return canonical_json([spec.optimizer, _structure(spec.optimizer, spec.hyperparameters), fixed])


def _stacked_hyperparameters(name: str, hyperparameters: Mapping[str, Any], size: int) -> dict[str, Any]:
    """The constructor's keywords for a stack of ``size``: per-member names as vectors."""
    import numpy as np

    vary = set(_per_member_names(name, hyperparameters))
    return {k: np.full(size, float(v)) if k in vary else v for k, v in hyperparameters.items()}


def _numeric(hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
    """The values a compiled function takes as shared scalars, set before each run.

    Not the booleans (structure, fixed at construction) nor ``"others"`` (the rule combined
    with a partial one, part of the structure: see :func:`_structure`).
    """
    return {k: v for k, v in hyperparameters.items() if k != "others" and not isinstance(v, bool)}


def _stack_refusal(name: str, hyperparameters: Mapping[str, Any],
                   protocol: Mapping[str, Any] | None = None) -> str | None:
    """Why runs of this rule and setting cannot share a seed stack (``None``: they can).

    The rule's constructor on a small stacked dummy parameter, with its per-member
    vectors (and ``stoppable`` for early stopping), and the seed-coupling check a
    SeedTrainer makes: compiles nothing. A plateau needs the learning rate per member.
    """
    import numpy as np
    import pytensor

    from symopt.transforms import seed_coupling_transforms

    from ..mnist_runs import make_optimizer

    # A weight matrix and a bias per member, as the MLP has: a rule taking only matrices
    # (Muon) is then combined with its "others" rule, as in the real stack.
    dummies = [pytensor.shared(np.zeros(shape, dtype="float32"), name="dummy[seeds]")
               for shape in ((2, 2, 2), (2, 2))]
    for dummy in dummies:
        dummy.tag.seed_axis = True
    try:
        opt = make_optimizer(name, _stacked_hyperparameters(name, hyperparameters, 2), dummies,
                             **_stack_options(protocol or {}))
    except (TypeError, ValueError) as exc:
        return str(exc)
    coupled = seed_coupling_transforms(opt)
    if coupled:
        return f"{', '.join(coupled)} would couple the members of a stack"
    if (protocol or {}).get("plateau") and "learning_rate" not in _per_member_names(name, hyperparameters):
        return "a plateau reduces each member's own learning rate, which this rule keeps as one value for the stack"
    return None


def plan_stacks(todo: list[RunSpec], stack_size: int) -> tuple[list[list[RunSpec]], dict[str, str]]:
    """Cut the pending runs into tasks: (tasks of 1 to ``stack_size`` runs, refusals).

    Runs are grouped by :func:`_stack_signature` in the order of ``todo`` (the config's:
    hyperparameter settings, then seeds) and each group is cut into consecutive tasks of
    ``stack_size`` runs, the last one shorter. A rule and setting that refuses seed stacks
    gives one task per run; ``refusals`` maps its optimizer name to the reason.
    """
    if stack_size <= 1:
        return [[spec] for spec in todo], {}
    groups: dict[str, list[RunSpec]] = {}
    refused: dict[str, str] = {}
    known: dict[str, tuple[str | None, str]] = {}  # setting -> (refusal, signature): each built once
    tasks: list[list[RunSpec]] = []
    for spec in todo:
        setting = canonical_json([spec.optimizer, spec.hyperparameters, spec.protocol])
        if setting not in known:
            reason = _stack_refusal(spec.optimizer, spec.hyperparameters, spec.protocol)
            known[setting] = (reason, "" if reason is not None else _stack_signature(spec))
        reason, signature = known[setting]
        if reason is not None:
            refused.setdefault(spec.optimizer, reason)
            tasks.append([spec])
            continue
        groups.setdefault(signature, []).append(spec)
    for members in groups.values():
        tasks += [members[at:at + stack_size] for at in range(0, len(members), stack_size)]
    return tasks, refused


def _compiled(task: Mapping[str, Any], data: Any) -> tuple[_Compiled, bool]:
    """The worker's compiled function for this run's structure; (entry, was it cached)."""
    from symopt.nn import MLP
    from symopt.train import Trainer

    from ..mnist_runs import build_model, evaluate_at_eval_params, make_optimizer

    protocol, name, hyper = task["protocol"], task["optimizer"], task["hyperparameters"]
    key = canonical_json({"model": protocol["model"], "data": protocol["data"], "data_dir": task.get("data_dir"),
                          "batch_size": protocol["batch_size"], "optimizer": name,
                          "structure": _structure(name, hyper)})
    if key in _COMPILED:
        _COMPILED.move_to_end(key)
        return _COMPILED[key], True
    start = time.perf_counter()
    model = build_model(MLP, int(task["seed"]), protocol["model"])
    opt = make_optimizer(name, hyper, model.params)
    trainer = Trainer(model, opt, data.x_train, data.y_train, data.x_test, data.y_test,
                      batch_size=protocol["batch_size"], on_nonfinite="continue")  # diverged runs are results
    evaluate_at_eval_params(trainer, opt)
    trainer.warm_up()
    return _remember(key, _Compiled(model, opt, trainer, opt.state_dict(), time.perf_counter() - start)), False


# ---------------------------------------------------------------------------- plateau, early stopping
def _stack_options(protocol: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor options a stack needs for the protocol: ``stoppable`` to freeze stopped members."""
    return {"stoppable": True} if protocol.get("early_stopping") else {}


@lru_cache(maxsize=1)
def _fed_classes() -> tuple[type, type, type]:
    """ReduceLROnPlateau, MemberReduceLROnPlateau and EarlyStopping stepped with the protocol's metric.

    ``fit`` steps its plateau and early stopping with each epoch's test loss; these take
    the value the sweep's epoch callback (which runs just before) put in ``feed`` instead,
    one per member: the configured metric of that epoch.
    """
    from symopt.plateau import EarlyStopping, MemberReduceLROnPlateau, ReduceLROnPlateau

    class Fed:
        feed: Any = None

        def step(self, metric: Any, *args: Any, **kwargs: Any) -> Any:
            return super().step(self.feed, *args, **kwargs)  # type: ignore[misc]

    return (type("SweepPlateau", (Fed, ReduceLROnPlateau), {}),
            type("SweepMemberPlateau", (Fed, MemberReduceLROnPlateau), {}),
            type("SweepEarlyStopping", (Fed, EarlyStopping), {}))


#: Per-epoch progress bars: only for tasks run in the caller's process (bench-mnist without
#: workers), where a stacked task of many epochs would otherwise show nothing for a long time.
_epoch_bars = False


def _fit(trainer: Any, opt: Any, protocol: Mapping[str, Any], seeds: list[int],
         stacked: bool) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Train ``protocol["epochs"]`` epochs with the protocol's plateau and early stopping, if any.

    Returns per member its history rows and what the run's result adds: with a plateau
    ``learning_rate`` in every row (the rate the epoch trained with) and
    ``final_learning_rate`` (after the last epoch's plateau step); with early stopping
    ``stopped_epoch`` (0: trained every epoch). A stacked member's rows end at its stop
    epoch, as its unstacked run's history does (the stack trains on while others are left).
    """
    import numpy as np

    from .config import plateau_arguments, stopping_arguments

    epochs = int(protocol["epochs"])
    plateau_cfg, stop_cfg = protocol.get("plateau"), protocol.get("early_stopping")
    if not plateau_cfg and not stop_cfg:
        history = trainer.fit(epochs, seeds if stacked else seeds[0], progress=_epoch_bars)
        histories = history if stacked else [history]
        return [[r.as_dict() for r in h] for h in histories], [{} for _ in histories]
    size = len(seeds)
    single, member, stopping_cls = _fed_classes()
    plateau = None
    if plateau_cfg:
        plateau = (member if stacked else single)(opt, **plateau_arguments(plateau_cfg))
    stopping = stopping_cls(**stopping_arguments(stop_cfg)) if stop_cfg else None
    rates: list[np.ndarray] = []

    def learning_rates() -> np.ndarray:
        return np.broadcast_to(np.asarray(opt.get_hyperparameter("learning_rate"), dtype=np.float64), (size,)).copy()

    def on_epoch(records: list[Any]) -> None:
        for hook, cfg in ((plateau, plateau_cfg), (stopping, stop_cfg)):
            if hook is not None:
                hook.feed = np.array([getattr(r, cfg["metric"]) for r in records], dtype=np.float64)
        if plateau is not None:
            rates.append(learning_rates())

    if stacked:
        histories = trainer.fit(epochs, seeds, progress=_epoch_bars, callback=lambda _, records: on_epoch(records),
                                plateau=plateau, early_stopping=stopping)
    else:
        histories = [trainer.fit(epochs, seeds[0], progress=_epoch_bars, callback=lambda record: on_epoch([record]),
                                 plateau=plateau, early_stopping=stopping)]
    final = learning_rates() if plateau is not None else None
    rows, fates = [], []
    for i, history in enumerate(histories):
        stop = int(stopping.stopped_epoch[i]) if stopping is not None else 0
        member_rows = [r.as_dict() for r in (history[:stop] if stop else history)]
        fate: dict[str, Any] = {}
        if plateau is not None:
            for row, rate in zip(member_rows, rates):
                row["learning_rate"] = float(rate[i])
            fate["final_learning_rate"] = float(final[i])
        if stopping is not None:
            fate["stopped_epoch"] = stop
        rows.append(member_rows)
        fates.append(fate)
    return rows, fates


def _worker() -> Any:
    """The Dask worker this task runs in, or None (the caller's own process)."""
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _where() -> str:
    worker = _worker()
    return worker.address if worker is not None else f"local:{socket.gethostname()}"


def _in_worker() -> bool:
    """Whether this task runs in a Dask worker (not in the caller's process)."""
    return _worker() is not None


def _prepare_process() -> None:
    """In a Dask worker: keep freed memory for reuse (its nanny's malloc setting makes every
    step fault its temporaries in again, 1.5x slower; :mod:`symopt._malloc`). The caller's own
    process is left as it is."""
    if _in_worker():
        keep_freed_memory()


def train_run(task: Mapping[str, Any]) -> dict[str, Any]:
    """Train one run (a :meth:`RunSpec.as_task` payload) and return its per-epoch history.

    Runs in a Dask worker, or in-process (the benchmarks' baseline). Returns plain data:
    ``key``, ``history`` (one dict per epoch: ``epoch``, ``train_loss``, ``test_loss``,
    ``test_accuracy``, ``seconds``), ``compile_seconds`` (0 when the compiled function
    was reused), ``train_seconds``, ``worker``, ``pid``; with the protocol's plateau also
    ``learning_rate`` per epoch and ``final_learning_rate``, with its early stopping
    ``stopped_epoch`` (see :func:`_fit`).
    """
    from symopt.nn import MLP

    from ..mnist_runs import reset_run, set_rule_hyperparameter

    _prepare_process()
    protocol = task["protocol"]
    data = load_data(protocol["data"], task.get("data_dir"))
    entry, cached = _compiled(task, data)
    seed = int(task["seed"])
    reset_run(entry.model, entry.opt, entry.initial_state, seed, MLP, protocol["model"])
    for name, value in _numeric(task["hyperparameters"]).items():
        set_rule_hyperparameter(entry.opt, task["optimizer"], name, value)
    start = time.perf_counter()
    histories, fates = _fit(entry.trainer, entry.opt, protocol, [seed], stacked=False)
    entry.runs += 1
    return {
        "key": task["key"],
        "history": histories[0],
        "compile_seconds": 0.0 if cached else entry.compile_seconds,
        "train_seconds": time.perf_counter() - start,
        "worker": _where(),
        "pid": os.getpid(),
        **fates[0],
    }


def _compiled_stack(task: Mapping[str, Any], data: Any, size: int) -> tuple[_Compiled, bool]:
    """The worker's compiled stacked step for ``size`` members of this structure; (entry, was it cached)."""
    from symopt.nn import MLP
    from symopt.seeds import SeedStack, SeedTrainer

    from ..mnist_runs import build_model, evaluate_at_eval_params, make_optimizer

    protocol, name, hyper = task["protocol"], task["optimizer"], task["hyperparameters"]
    key = canonical_json({"model": protocol["model"], "data": protocol["data"], "data_dir": task.get("data_dir"),
                          "batch_size": protocol["batch_size"], "optimizer": name,
                          "structure": _structure(name, hyper), "per_member": _per_member_names(name, hyper),
                          "stack_size": size, **_stack_options(protocol)})
    if key in _COMPILED:
        _COMPILED.move_to_end(key)
        return _COMPILED[key], True
    start = time.perf_counter()
    # Placeholder seeds: each task loads its own members (SeedStack.reset).
    stack = SeedStack(lambda seed: build_model(MLP, seed, protocol["model"]), list(range(size)))
    opt = make_optimizer(name, _stacked_hyperparameters(name, hyper, size), stack.params, **_stack_options(protocol))
    trainer = SeedTrainer(stack, opt, data.x_train, data.y_train, data.x_test, data.y_test,
                          batch_size=protocol["batch_size"], on_nonfinite="continue")  # as train_run
    evaluate_at_eval_params(trainer, opt)
    trainer.warm_up()
    return _remember(key, _Compiled(stack, opt, trainer, opt.state_dict(), time.perf_counter() - start)), False


def train_stack(task: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Train a stacked task's members together; one :func:`train_run`-like result per member.

    ``task["members"]`` are :meth:`RunSpec.as_task` payloads of one optimizer, structure
    and protocol (:func:`plan_stacks`). Member ``i`` starts from the fresh model of its
    seed, the optimiser state right after construction and its own hyperparameter values,
    and follows its seed's data order and dropout stream, as its unstacked run does.
    ``seconds`` of an epoch is the stacked epoch's wall time divided by the members;
    ``train_seconds`` likewise; ``compile_seconds`` is given to the first member only (the
    column then still sums to the time spent compiling); ``stack_size`` is the number of members.
    """
    from symopt.nn import MLP

    from ..mnist_runs import build_model, set_rule_hyperparameter

    members = list(task["members"])
    if not members:
        raise ValueError("train_stack: the task has no members")
    _prepare_process()
    first = members[0]
    name, protocol = first["optimizer"], first["protocol"]
    for m in members[1:]:
        if m["optimizer"] != name or m["protocol"] != protocol or m.get("data_dir") != first.get("data_dir"):
            raise ValueError("train_stack: the members differ in optimizer, protocol or data directory")
    data = load_data(protocol["data"], first.get("data_dir"))
    size = len(members)
    entry, cached = _compiled_stack(first, data, size)
    seeds = [int(m["seed"]) for m in members]
    entry.model.reset(lambda seed: build_model(MLP, seed, protocol["model"]), seeds)
    entry.opt.load_state_dict(entry.initial_state)
    vary = set(_per_member_names(name, first["hyperparameters"]))
    for key, value in _numeric(first["hyperparameters"]).items():
        if key in vary:
            set_rule_hyperparameter(entry.opt, name, key, [float(m["hyperparameters"][key]) for m in members])
        else:
            if any(m["hyperparameters"].get(key) != value for m in members[1:]):
                raise ValueError(f"train_stack: the members differ in {key!r}, which a stack shares")
            set_rule_hyperparameter(entry.opt, name, key, value)
    start = time.perf_counter()
    histories, fates = _fit(entry.trainer, entry.opt, protocol, seeds, stacked=True)
    train_seconds = (time.perf_counter() - start) / size
    entry.runs += size
    where, pid = _where(), os.getpid()
    return [{
        "key": m["key"],
        "history": history,
        "compile_seconds": 0.0 if cached or i else entry.compile_seconds,
        "train_seconds": train_seconds,
        "worker": where,
        "pid": pid,
        "stack_size": size,
        **fate,
    } for i, (m, history, fate) in enumerate(zip(members, histories, fates))]


# ---------------------------------------------------------------------------- client side
@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    # Dask's nannies read these when they are created and set them before spawning each
    # worker process (also the replacement of a killed one), i.e. before NumPy loads BLAS.
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_scheduler_address(scheduler: str) -> None:
    """Refuse a scheduler address Dask cannot parse (``notaurl``), before anything is started.

    ``distributed.Client`` raises on it only after starting its event loop, and its
    finaliser then hangs for its close timeout and prints a traceback at exit.
    """
    addressing = require("distributed.comm.addressing", "symopt sweep", "sweep")
    get_address_host_port, parse_address = addressing.get_address_host_port, addressing.parse_address

    try:
        parse_address(scheduler)
        host, _ = get_address_host_port(scheduler)
    except ValueError as exc:
        if "don't know how to extract host and port" in str(exc):
            return  # a transport without host:port (e.g. inproc://); Client checks it itself
        raise ValueError(f"scheduler address {scheduler!r} is not a Dask address ({exc}); "
                         f"expected e.g. tcp://HOST:8786; nothing was run") from None
    if not host:
        raise ValueError(f"scheduler address {scheduler!r} names no host; expected e.g. tcp://HOST:8786; "
                         f"nothing was run")


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread while the local cluster starts; a Ctrl-C is delivered afterwards.

    Threads started meanwhile (Dask's event loop, the nannies' process watchers) and the
    worker processes they spawn inherit the blocked signal, so a Ctrl-C sent to the whole
    process group reaches only the client. (The worker preload also ignores SIGINT, for
    workers started otherwise.)
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _stop_http(server: Any) -> None:
    http = getattr(server, "http_server", None)
    if http is not None:
        http.stop()


@contextmanager
def dask_client(scheduler: str | None = None, n_workers: int | None = None,
                connect_timeout: float = 10.0, dashboard: bool = False) -> Iterator[Any]:
    """A ``distributed.Client``: on ``scheduler`` if given, else on an embedded ``LocalCluster``.

    The local cluster has ``n_workers`` process workers (default: one per core) of one
    thread each, listening on 127.0.0.1 only. Without ``dashboard`` no HTTP server is left
    listening (Dask starts one per scheduler and worker, the scheduler's on port 8787: they
    are stopped once up); with it the scheduler serves Dask's dashboard on 127.0.0.1:8787
    (another free port if that one is taken), printed on stderr. The workers ignore SIGINT
    (the client handles Ctrl-C). Cluster and client are closed on exit, also on an
    exception or Ctrl-C.

    Raises
    ------
    ValueError
        ``scheduler`` is not a Dask address.
    SchedulerUnreachableError
        Nothing answered at ``scheduler`` within ``connect_timeout`` seconds.
    """
    dask = require("dask", "symopt sweep", "sweep")
    distributed = require("distributed", "symopt sweep", "sweep")
    Client, LocalCluster = distributed.Client, distributed.LocalCluster

    if scheduler is not None:
        check_scheduler_address(scheduler)
        try:
            client = Client(scheduler, timeout=connect_timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise SchedulerUnreachableError(
                f"cannot reach the Dask scheduler at {scheduler} within {connect_timeout:g} s "
                f"({type(exc).__name__}: {exc}); is `dask scheduler` running there? nothing was run"
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    n = int(n_workers or os.cpu_count() or 1)
    env = dict(WORKER_ENV)
    if os.environ.get("SYMOPT_DATA"):
        env["SYMOPT_DATA"] = os.environ["SYMOPT_DATA"]
    if dashboard:
        env[DASHBOARD_ENV] = "1"
    preload = [*dask.config.get("distributed.worker.preload", []), "symopt.sweep._worker_setup"]
    settings: dict[str, Any] = {"distributed.worker.preload": preload}
    if not dashboard:  # nothing to serve even in the moment before the servers are stopped
        settings.update({"distributed.scheduler.http.routes": [], "distributed.worker.http.routes": []})
    cluster = None
    try:
        with _sigint_blocked(), _environment(env), dask.config.set(settings), warnings.catch_warnings():
            # "Port 8787 is already in use ... on port N instead": the dashboard moves, as said above
            warnings.filterwarnings("ignore", message="Port 8787 is already in use")
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address="127.0.0.1:8787" if dashboard else "127.0.0.1:0",
                                   silence_logs=logging.CRITICAL, env=env)
            if dashboard:
                _log(f"Dask dashboard: {cluster.dashboard_link}")
            else:
                cluster.sync(_async(_stop_http), cluster.scheduler)
        client = Client(cluster, set_as_default=False)
        try:
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


def _async(fn: Any) -> Any:
    async def run(*args: Any) -> Any:  # runs on the cluster's event loop, where its servers live
        return fn(*args)

    return run


def _error_text(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    return "".join(lines).strip()[-2000:]


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_sweep(
    config: str | Path | Mapping[str, Any] | SweepConfig,
    db_path: str | Path,
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    connect_timeout: float = 10.0,
    lock_timeout: float = 10.0,
    timeout: float | None = None,
    dashboard: bool = False,
    stack_size: int | None = None,
) -> SweepReport:
    """Run every run of ``config``'s grid not yet done in ``db_path``, on Dask.

    Parameters
    ----------
    config
        A TOML/JSON path, a dict or a :class:`~symopt.sweep.config.SweepConfig`.
    db_path
        The SQLite results database (created if missing; see :mod:`symopt.sweep.store`).
    scheduler
        Address of a running Dask scheduler (``tcp://host:8786``); ``None`` starts a
        ``LocalCluster`` for this call.
    n_workers
        Workers of the local cluster (default: one per core, at most one per run).
    retry_failed
        Run again the runs recorded as failed (else they are skipped).
    progress
        A tqdm bar over runs on stderr.
    connect_timeout, lock_timeout
        Seconds to wait for the scheduler, and for another process's database lock.
    timeout
        Give up (``TimeoutError``) if the sweep has not finished after this many seconds;
        finished runs stay recorded.
    dashboard
        Serve Dask's dashboard from the local cluster (see :func:`dask_client`); off by
        default, when no HTTP port is opened.
    stack_size
        Train up to this many pending runs of one compiled structure together in one task
        (a seed stack; see the module notes); overrides the config's ``stack_size``
        (default 1: one run per task). Each run is still recorded on its own, with the
        numbers of its unstacked run to float round-off.

    Returns
    -------
    SweepReport

    Raises
    ------
    StoreError
        The database is corrupt, foreign, locked, of another protocol, or in use by
        another sweep (one sweep per database at a time); raised before any work.
    """
    start = time.perf_counter()
    cfg = load_config(config, require="optimizers")
    if stack_size is None:
        stack_size = cfg.stack_size
    elif not is_integer(stack_size) or stack_size < 1:
        raise ValueError(f"stack_size must be a positive integer (runs per stacked task), got {stack_size!r}; "
                         f"nothing was run")
    specs = cfg.runs()
    require("distributed", "symopt sweep", "sweep")  # before the database is created
    if scheduler is not None:
        check_scheduler_address(scheduler)
    created = not Path(db_path).exists()
    try:
        return _run(cfg, specs, db_path, scheduler, n_workers, retry_failed, progress, connect_timeout,
                    lock_timeout, timeout, start, dashboard, int(stack_size))
    except SchedulerUnreachableError:
        if created:  # leave no empty database behind for a sweep that never started
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db_path}{suffix}").unlink(missing_ok=True)
        raise


def _run(cfg: SweepConfig, specs: list[RunSpec], db_path: str | Path, scheduler: str | None, n_workers: int | None,
         retry_failed: bool, progress: bool, connect_timeout: float, lock_timeout: float, timeout: float | None,
         start: float, dashboard: bool, stack_size: int = 1) -> SweepReport:
    with ResultStore(db_path, cfg.protocol, lock_timeout=lock_timeout) as store:
        status = store.status()
        todo = [s for s in specs if status.get(s.key) is None or (retry_failed and status[s.key] == "failed")]
        failed_before = sum(status.get(s.key) == "failed" for s in specs)
        skipped = len(specs) - len(todo)
        if skipped:
            _log(f"{store.path}: {skipped} of {len(specs)} run(s) already recorded, skipping them"
                 + (f" ({failed_before} failed; --retry-failed runs them again)"
                    if failed_before and not retry_failed else ""))
        done = failed = workers = 0
        if todo:
            tasks, refused = plan_stacks(todo, stack_size)
            for name, reason in refused.items():
                _log(f"{name}: runs not stacked, one per task ({reason})")
            with dask_client(scheduler, n_workers or min(os.cpu_count() or 1, len(tasks)), connect_timeout,
                             dashboard) as client:
                workers = len(client.scheduler_info().get("workers", {}))
                if scheduler is not None and workers == 0:
                    _log(f"{scheduler} has no workers yet; the runs wait for `dask worker {scheduler}`")
                done, failed = _collect(client, tasks, store, len(specs), skipped, progress, timeout)
    return SweepReport(Path(db_path), len(specs), skipped, done, failed, time.perf_counter() - start, workers)


def _placement(todo: list[RunSpec] | list[list[RunSpec]], workers: list[str]) -> dict[str, str]:
    """task -> preferred worker, so that each worker compiles as few functions as possible.

    ``todo`` holds runs, or tasks of runs (:func:`plan_stacks`); a task is named by its
    first run's key. Tasks are sorted by what they compile (optimiser, structure and stack
    size; numeric values share a function) and cut into one contiguous, equal-sized chunk
    per worker. Without this the scheduler hands runs out in order and every worker ends
    up compiling every optimiser: on a cold 2-worker sweep of 2 optimisers that doubles
    the compilations.
    """
    if len(workers) < 2:
        return {}
    tasks = [t if isinstance(t, list) else [t] for t in todo]
    groups: dict[str, str] = {}
    for task in tasks:
        spec = task[0]
        sig = canonical_json([spec.optimizer, spec.hyperparameters])
        if sig not in groups:
            groups[sig] = canonical_json([spec.optimizer, _structure(spec.optimizer, spec.hyperparameters)])

    def compiles(i: int) -> tuple[str, int]:
        spec = tasks[i][0]
        return groups[canonical_json([spec.optimizer, spec.hyperparameters])], len(tasks[i])

    order = sorted(range(len(tasks)), key=lambda i: (*compiles(i), i))
    chunk = -(-len(tasks) // len(workers))
    return {tasks[i][0].key: workers[rank // chunk] for rank, i in enumerate(order)}


def _submission(task: list[RunSpec]) -> tuple[Any, dict[str, Any], str]:
    """(worker function, its payload, a Dask key) of a task of one run or of a stack of runs."""
    if len(task) == 1:
        return train_run, task[0].as_task(), f"symopt-run-{task[0].key}"
    name = hashlib.sha256(" ".join(s.key for s in task).encode()).hexdigest()[:32]
    return train_stack, {"members": [s.as_task() for s in task]}, f"symopt-stack-{name}"


def _record_task(task: list[RunSpec], value: Any, error: str | None, store: Any, bar: Any) -> tuple[int, int]:
    """Record a finished (``value``) or failed (``error``) task's runs, each on its own; (done, failed).

    ``store`` is anything with :meth:`ResultStore.record`'s signature (``symopt bench-mnist``
    gives its JSON results file).
    """
    done = failed = 0
    # A stacked task returns one result per member; if it fails, each member failed.
    results = value if isinstance(value, list) else [value] * len(task)
    for spec, result in zip(task, results):
        if result is not None and result["key"] != spec.key:
            raise RuntimeError(f"a worker returned run {result['key']} for run {spec.key}")
        if store.record(spec, result=result, error=error):
            if error is None:
                done += 1
            else:
                failed += 1
                _log(f"run {spec.optimizer} seed {spec.seed} failed: {error.splitlines()[-1]}")
        bar.update()
    return done, failed


def run_tasks(tasks: list[list[RunSpec]], store: Any, *, workers: int | None = None, total: int | None = None,
              skipped: int = 0, progress: bool = False) -> int:
    """Train ``tasks`` (:func:`plan_stacks`), recording each run in ``store`` as soon as its task finishes.

    The tasks are the ones a sweep's Dask workers run (:func:`train_run`,
    :func:`train_stack`); ``store`` is anything with :meth:`ResultStore.record`'s signature.
    With ``workers`` they run on a local Dask cluster of that many workers (the ``sweep``
    extra), as ``symopt sweep`` runs them; without, one after another in this process. In
    this process an exception (a run's error, Ctrl-C) ends the loop, what was recorded
    stays; and since it is not a worker, it keeps one compiled function at a time and drops
    it, and the data set, at the end. ``total`` and ``skipped`` size the progress bar.
    Returns the number of runs recorded.
    """
    global _cache_limit, _epoch_bars

    total = sum(map(len, tasks)) + skipped if total is None else total
    if workers is not None:
        with dask_client(None, workers) as client:
            return _collect(client, tasks, store, total, skipped, progress, None)[0]
    bar = tqdm(total=total, initial=skipped, unit="run", desc="runs", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    done, _cache_limit, _epoch_bars = 0, 1, bool(progress)
    try:
        for task in tasks:
            fn, payload, _ = _submission(task)
            done += _record_task(task, fn(payload), None, store, bar)[0]
    finally:
        bar.close()
        _cache_limit, _epoch_bars = CACHE_SIZE, False
        _COMPILED.clear()
        _DATA.clear()
    return done


def _collect(client: Any, tasks: list[list[RunSpec]], store: Any, total: int, skipped: int,
             progress: bool, timeout: float | None) -> tuple[int, int]:
    as_completed = require("distributed", "symopt sweep", "sweep").as_completed
    placement = _placement(tasks, sorted(client.scheduler_info().get("workers", {})))
    futures = {}
    for task in tasks:
        where = placement.get(task[0].key)
        # A preference, not a pin: the run goes elsewhere if its worker dies, and idle workers steal.
        fn, payload, key = _submission(task)
        futures[client.submit(fn, payload, key=key, pure=False, workers=[where] if where else None,
                              allow_other_workers=bool(where))] = task
    done = failed = 0
    bar = tqdm(total=total, initial=skipped, unit="run", desc="sweep", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    try:
        try:
            for future in as_completed(futures, loop=client.loop, timeout=timeout):
                task = futures[future]
                try:
                    value, error = future.result(), None
                except Exception as exc:  # the run's own error, or KilledWorker after repeated worker deaths
                    value, error = None, _error_text(exc)
                d, f = _record_task(task, value, error, store, bar)
                done, failed = done + d, failed + f
        except TimeoutError:
            raise TimeoutError(f"the sweep did not finish within {timeout:g} s; {done} run(s) recorded, "
                               f"re-run to resume") from None
    finally:
        bar.close()
    return done, failed
