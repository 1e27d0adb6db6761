"""The ``symopt`` command line.

``symopt train`` trains an MLP on MNIST (or any IDX-layout data set) with any registered
optimiser; ``symopt optimizers`` lists the rules and their hyperparameters; ``symopt sweep``
and ``symopt search`` run grids and Optuna searches on Dask (:mod:`symopt.sweep`). Errors in
flags or data print one line on stderr and exit with status 2, without a traceback; output
paths are checked before any data is loaded or compiled. A training run whose loss turns NaN
or infinite stops with one line naming the epoch and step and exit status 1 (unless
``--skip-nonfinite``).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._checks import integer_words
from ._io import atomic_writer, check_writable, dump_json, json_ready

__all__ = ["main"]


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def _number(convert: Any, minimum: float, expected: str, *, strict: bool = False) -> Any:
    """An argparse type: ``convert(text)`` >= ``minimum`` (> with ``strict``); the error says what was ``expected``."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not (value > minimum if strict else value >= minimum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, 1, integer_words(1))
_nonnegative_int = _number(int, 0, integer_words(0))
_positive_seconds = _number(float, 0.0, "a positive number of seconds", strict=True)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer widths like 100,100, got {text!r}") from None
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected positive layer widths like 100,100, got {text!r}")
    return sizes


def _hyperparameter(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return name.strip(), lowered == "true"
    try:  # integers stay integers: options such as accumulate=4 take only integers
        return name.strip(), int(raw)
    except ValueError:
        pass
    try:
        return name.strip(), float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"hyperparameter {name.strip()!r} needs a number or true/false, got {raw!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="symopt", description="Train PyTensor models with symopt's optimisers.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train an MLP on MNIST or another IDX data set")
    train.add_argument("--optimizer", default="adam", help="registry name (see `symopt optimizers`); default adam")
    train.add_argument("--lr", type=float, default=None, help="learning rate (default: the rule's)")
    train.add_argument("--weight-decay", type=float, default=None, help="weight decay (default: the rule's)")
    train.add_argument(
        "--hp", type=_hyperparameter, action="append", default=[], metavar="NAME=VALUE",
        help="any other hyperparameter, repeatable: --hp beta2=0.99 --hp amsgrad=true",
    )
    train.add_argument("--epochs", type=_positive_int, default=20)
    train.add_argument("--batch-size", type=_positive_int, default=128)
    train.add_argument("--hidden", type=_sizes, default=[100, 100, 100, 100], help="hidden widths, e.g. 100,100")
    train.add_argument("--activation", default="relu", choices=["relu", "sigmoid", "tanh"])
    train.add_argument("--init", default="he", help="he, xavier, normal, or a standard deviation such as 0.01")
    train.add_argument("--batchnorm", action="store_true", help="batch normalisation after each hidden Dense")
    train.add_argument("--dropout", type=float, default=0.0, help="dropout probability on hidden layers")
    train.add_argument("--seed", type=_nonnegative_int, default=0, help="seeds initialisation, data order and dropout")
    train.add_argument("--data-dir", type=Path, default=None, help="directory of IDX files (default: MNIST, fetched if missing)")
    train.add_argument("--classes", type=_positive_int, default=None,
                       help="number of classes (default: largest training label + 1; labels are checked)")
    train.add_argument("--skip-nonfinite", action="store_true",
                       help="skip steps whose loss or gradients are NaN/Inf (counted per epoch) instead of stopping")
    train.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    train.add_argument("--out", type=Path, default=None, help="write config and per-epoch history as JSON")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--checkpoint", type=Path, default=None, metavar="PATH",
                       help="write the run's whole state to PATH after every epoch (and on Ctrl-C)")
    train.add_argument("--checkpoint-every", type=_positive_int, default=None, metavar="N",
                       help="with --checkpoint: also write it every N steps")
    train.add_argument("--resume", type=Path, default=None, metavar="PATH",
                       help="continue the run checkpointed in PATH (same flags; --epochs may grow); "
                            "keeps checkpointing to PATH unless --checkpoint is given")

    sub.add_parser("optimizers", help="list registered optimisers, the implementation each matches, and their defaults")

    from .experiments import EXPERIMENTS

    exp = sub.add_parser("experiment", help="reproduce a seed experiment: raw results, figures, stated result")
    exp.add_argument("name", choices=list(EXPERIMENTS))
    exp.add_argument("--quick", action="store_true", help="a seconds-long version (as in the test suite)")
    exp.add_argument("--seed", type=_nonnegative_int, default=0)
    exp.add_argument("--results-dir", type=Path, default=Path("experiments/results"))
    exp.add_argument("--figures-dir", type=Path, default=Path("experiments/figures"))
    exp.add_argument("--plot-only", action="store_true", help="redraw figures from existing results")

    bench = sub.add_parser("bench-mnist", help="multi-seed MNIST comparison of optimisers (resumable)")
    bench.add_argument("--optimizers", default="sgd,momentum,nesterov,adagrad,rmsprop,adadelta,adam",
                       help="comma-separated registry names (any registered rule, at its defaults; Muon trains the "
                            "weight matrices and AdamW the biases, joined by symopt.combine)")
    bench.add_argument("--seeds", type=_positive_int, default=30)
    bench.add_argument("--epochs", type=_positive_int, default=20)
    bench.add_argument("--batch-size", type=_positive_int, default=128)
    bench.add_argument("--results", type=Path, default=Path("experiments/results/mnist-optimizers.json"),
                       help="results file; finished (optimizer, seed) runs in it are skipped")
    bench.add_argument("--figures-dir", type=Path, default=Path("experiments/figures"))
    bench.add_argument("--no-progress", action="store_true")
    bench.add_argument("--vectorize", action=argparse.BooleanOptionalAction, default=None,
                       help="train an optimiser's seeds together in one compiled step (symopt.seeds; "
                            "default: on, measured faster)")
    bench.add_argument("--stack-size", type=_positive_int, default=None,
                       help="with --vectorize: seeds per compiled step (default: all of an optimiser's)")
    bench.add_argument("--workers", type=_positive_int, default=None,
                       help="train on this many local Dask worker processes, as `symopt sweep` does (needs the "
                            "sweep extra; default: in this process)")
    _add_sweep_parsers(sub)
    return parser


def _add_sweep_parsers(sub: Any) -> None:
    """``symopt sweep`` and ``symopt search`` (Dask, SQLite, Optuna)."""
    sweep = sub.add_parser("sweep", help="run a grid of runs on Dask into a resumable SQLite database")
    sweep.add_argument("config", type=Path, help="TOML or JSON sweep configuration (see README, 'Sweeps on Dask')")
    sweep.add_argument("--db", type=Path, default=None, help="results database (default: CONFIG with suffix .db)")
    sweep.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="a running Dask scheduler, e.g. tcp://host:8786 (default: a local cluster)")
    sweep.add_argument("--workers", type=_positive_int, default=None,
                       help="local cluster workers (default: one per core)")
    sweep.add_argument("--retry-failed", action="store_true", help="run again the runs recorded as failed")
    sweep.add_argument("--figures-dir", type=Path, default=None, help="where the figure goes (default: next to --db)")
    sweep.add_argument("--no-figures", action="store_true", help="no figure, only the summary table")
    sweep.add_argument("--report-only", action="store_true", help="summary and figure from the database; run nothing")
    sweep.add_argument("--connect-timeout", type=_positive_seconds, default=10.0, metavar="SECONDS")
    sweep.add_argument("--lock-timeout", type=_positive_seconds, default=10.0, metavar="SECONDS",
                       help="how long to wait for another process's lock on the database")
    sweep.add_argument("--no-progress", action="store_true")
    sweep.add_argument("--dashboard", action="store_true",
                       help="serve Dask's dashboard from the local cluster on 127.0.0.1:8787 (default: no HTTP port)")
    sweep.add_argument("--stack-size", type=_positive_int, default=None, metavar="N",
                       help="train up to N runs of one structure together per task, as one seed stack "
                            "(default: the config's stack_size, else 1); each run is still recorded on its own")

    search = sub.add_parser("search", help="Optuna search (TPE or random) over Dask workers, resumable")
    search.add_argument("config", type=Path, help="TOML or JSON configuration with a [search] table")
    search.add_argument("--storage", type=Path, default=None,
                        help="Optuna SQLite storage (default: CONFIG with suffix .optuna.db)")
    search.add_argument("--scheduler", default=None, metavar="ADDRESS")
    search.add_argument("--workers", type=_positive_int, default=None)
    search.add_argument("--trials", type=_positive_int, default=None, help="override search.n_trials")
    search.add_argument("--connect-timeout", type=_positive_seconds, default=10.0, metavar="SECONDS")
    search.add_argument("--lock-timeout", type=_positive_seconds, default=10.0, metavar="SECONDS")
    search.add_argument("--no-progress", action="store_true")
    search.add_argument("--dashboard", action="store_true",
                        help="serve Dask's dashboard from the local cluster on 127.0.0.1:8787 (default: no HTTP port)")
    search.add_argument("--stack-size", type=_positive_int, default=None, metavar="N",
                        help="train up to N runs (trials x seeds) together per task, each trial with its own values "
                             "(default: the config's stack_size, else 1)")


def _sweep(args: argparse.Namespace) -> int:
    from .sweep import ResultStore, load_config, run_sweep
    from .sweep.engine import check_scheduler_address

    cfg = load_config(args.config, require="optimizers")
    db = args.db if args.db is not None else args.config.with_suffix(".db")
    figures = args.figures_dir if args.figures_dir is not None else db.parent
    # Every output is checked before a cluster starts or a run trains.
    if not args.report_only:
        check_writable(db, "--db")
        if args.scheduler is not None:
            check_scheduler_address(args.scheduler)
    if not args.no_figures:
        check_writable(figures, "--figures-dir", directory=True)
    if not args.report_only:
        try:
            report = run_sweep(cfg, db, scheduler=args.scheduler, n_workers=args.workers,
                               retry_failed=args.retry_failed, progress=not args.no_progress,
                               connect_timeout=args.connect_timeout, lock_timeout=args.lock_timeout,
                               dashboard=args.dashboard, stack_size=args.stack_size)
        except KeyboardInterrupt:
            print(f"symopt: interrupted; finished runs are recorded in {db}; run the same command again to resume",
                  file=sys.stderr)
            return 130
        print(f"{report.done} run(s) finished, {report.failed} failed, {report.skipped} skipped as recorded "
              f"({report.total} in the grid, {report.workers} worker(s), {report.seconds:.1f} s)")
    with ResultStore(db, lock_timeout=args.lock_timeout) as store:
        print(store.summary())
        if not args.no_figures and store.counts()["done"]:
            print(f"figure: {store.plot(figures, name=cfg.name)}")
        failed = store.counts()["failed"]
    return 1 if failed and not args.report_only else 0


def _search(args: argparse.Namespace) -> int:
    from .sweep import load_config
    from .sweep.engine import check_scheduler_address
    from .sweep.search import run_search, search_summary

    cfg = load_config(args.config, require="search")
    storage = args.storage if args.storage is not None else args.config.with_suffix(".optuna.db")
    check_writable(storage, "--storage")
    if args.scheduler is not None:
        check_scheduler_address(args.scheduler)
    try:
        report = run_search(cfg, storage, scheduler=args.scheduler, n_workers=args.workers, n_trials=args.trials,
                            progress=not args.no_progress, connect_timeout=args.connect_timeout,
                            lock_timeout=args.lock_timeout, dashboard=args.dashboard, stack_size=args.stack_size)
    except KeyboardInterrupt:
        print(f"symopt: interrupted; finished trials are stored in {storage}; run the same command again to resume",
              file=sys.stderr)
        return 130
    except RuntimeError as exc:  # too many failed trials
        raise CLIError(str(exc)) from None
    print(f"{report.new_complete} trial(s) completed, {report.new_failed} failed in {report.seconds:.1f} s; "
          f"study {report.study!r} has {report.complete}")
    print(search_summary(storage, report.study))
    return 0


def _optimizer_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of the optimiser: every --hp, --lr, --weight-decay, --skip-nonfinite."""
    hyper = dict(args.hp)
    flags = [(args.lr, "learning_rate", "--lr"), (args.weight_decay, "weight_decay", "--weight-decay")]
    if args.skip_nonfinite:
        flags.append((True, "skip_nonfinite", "--skip-nonfinite"))
    for value, name, flag in flags:
        if value is not None:
            if name in hyper:
                raise CLIError(f"{name} given twice ({flag} and --hp {name}=...)")
            hyper[name] = value
    return hyper


def _build_optimizer(args: argparse.Namespace, params: list) -> Any:
    import symopt

    return symopt.registry.get_rule(args.optimizer, "symopt train")(params, **_optimizer_arguments(args))


def _settings_in_force(optimizer: Any) -> dict[str, Any]:
    """Everything besides the rule's hyperparameters that changes the numbers of a step."""
    from .optimizer import TRANSFORM_SETTINGS

    settings: dict[str, Any] = {
        key: float(optimizer.settings[key].get_value()) if key in optimizer.settings else None
        for key in TRANSFORM_SETTINGS
    }
    settings["accumulate"] = optimizer.accumulate
    settings["skip_nonfinite"] = optimizer.skip_nonfinite
    return settings


def _environment() -> dict[str, Any]:
    """Backend and versions: the run record's answer to "what computed these numbers"."""
    import numpy
    import pytensor

    import symopt

    from .function import backend_name

    versions = {"symopt": symopt.__version__, "pytensor": pytensor.__version__, "numpy": numpy.__version__,
                "python": platform.python_version()}
    backend = backend_name()
    if backend == "NUMBA":
        try:
            import numba

            versions["numba"] = numba.__version__
        except ImportError:
            pass
    return {"backend": backend, "versions": versions,
            "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"), "platform": platform.platform()}


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def estimate_training_bytes(
    layers: Sequence[int], dtype: str, slots: int, batch_size: int, eval_batch_size: int = 1000
) -> tuple[int, int]:
    """Rough memory of training an MLP: ``(parameter count, bytes)``.

    Each parameter is held as itself, its gradient, its new value and ``slots`` state
    variables; activations for a train batch (forward and backward) and an eval batch.
    A lower bound (PyTensor's temporaries come on top), used to refuse hopeless sizes
    before anything is allocated.
    """
    itemsize = 8 if dtype == "float64" else 4
    n_params = sum(a * b + b for a, b in zip(layers[:-1], layers[1:]))
    units = sum(layers)
    values = n_params * (3 + slots) + units * (2 * batch_size + eval_batch_size)
    return n_params, values * itemsize


def _check_memory(layers: list[int], args: argparse.Namespace, cls: type) -> None:
    available = _available_memory()
    if available is None:
        return
    slots = len(getattr(cls, "slots", {})) + (1 if dict(args.hp).get("accumulate", 1) != 1 else 0)
    n_params, needed = estimate_training_bytes(layers, args.dtype, slots, args.batch_size)
    if needed > available:
        raise CLIError(
            f"--hidden {','.join(map(str, args.hidden))}: layers {layers} have {n_params:,} parameters; training them "
            f"with {cls.__name__} needs at least {needed / 2**30:,.1f} GiB, more than the "
            f"{available / 2**30:,.1f} GiB of memory available"
        )


def _finite(x: float) -> str:
    return f"{x:.4f}" if math.isfinite(x) else str(x)


def _train(args: argparse.Namespace) -> int:
    import symopt

    from . import data as data_mod
    from . import nn
    from .train import NonFiniteLossError, Trainer

    # Every output path first: a run is never lost at the end for want of a writable file.
    if args.out is not None:
        check_writable(args.out, "--out")
    if not 0.0 <= args.dropout < 1.0:
        raise CLIError(f"--dropout must be in [0, 1), got {args.dropout}")
    try:
        init: Any = float(args.init)
    except ValueError:
        init = args.init
    # unknown names, and full-batch optimisers (lbfgs), fail before the data is read
    cls = symopt.registry.get_rule(args.optimizer, "symopt train")
    _optimizer_arguments(args)

    checkpoint = _checkpoint_paths(args)

    if args.data_dir is not None:
        dataset = data_mod.load_idx_dataset(args.data_dir, classes=args.classes)
        names = {"train_name": "train labels", "test_name": "test labels"}
    else:
        dataset = data_mod.load_mnist()
        names = {"train_name": "MNIST train labels", "test_name": "MNIST test labels"}
    n_in = int(dataset.x_train.shape[1])
    n_out = data_mod.count_classes(dataset.y_train, dataset.y_test, args.classes, **names)
    layers = [n_in, *args.hidden, n_out]
    _check_memory(layers, args, cls)
    model = nn.MLP(
        layers, activation=args.activation, init=init, batchnorm=args.batchnorm,
        dropout=args.dropout, seed=args.seed, dtype=args.dtype,
    )
    optimizer = _build_optimizer(args, model.params)
    environment = _environment()
    config = {
        "optimizer": optimizer.name or type(optimizer).__name__,
        "hyperparameters": optimizer.hyperparameters,
        "settings": _settings_in_force(optimizer),
        "hp": dict(args.hp),
        "epochs": args.epochs, "batch_size": args.batch_size, "hidden": args.hidden, "layers": layers,
        "classes": n_out, "activation": args.activation, "init": args.init, "batchnorm": args.batchnorm,
        "dropout": args.dropout, "seed": args.seed, "dtype": args.dtype,
        "data": str(args.data_dir) if args.data_dir is not None else "mnist",
        "n_train": len(dataset.x_train), "n_test": len(dataset.x_test),
        **environment,
        "argv": list(args.argv),
    }
    # What must match on resume: every setting that changes the numbers, but not the number of
    # epochs (a run may be extended), the data path (the checkpoint holds a digest of the data),
    # the command line or the environment (versions, backend: recorded, not enforced).
    unchecked = {"epochs", "data", "argv", *environment}
    run_config = {k: v for k, v in config.items() if k not in unchecked}
    if args.resume is not None:
        print(_resume_check(args.resume, run_config, args.epochs), flush=True)  # before the compilation
    trainer = Trainer(
        model, optimizer, dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, batch_size=args.batch_size
    )
    versions = "  ".join(f"{k} {v}" for k, v in config["versions"].items())
    print(f"{config['optimizer']} {optimizer.hyperparameters}  {config['settings']}", flush=True)
    print(f"layers {layers}  {n_out} classes  {len(dataset.x_train)} train / {len(dataset.x_test)} test samples  "
          f"{args.dtype}  batch {args.batch_size}  seed {args.seed}", flush=True)
    print(f"backend {config['backend']}  {versions}", flush=True)

    def report(record: Any) -> None:
        skipped = f"  skipped {record.skipped} step(s)" if args.skip_nonfinite else ""
        print(
            f"epoch {record.epoch:3d}  train_loss {_finite(record.train_loss)}  test_loss {_finite(record.test_loss)}  "
            f"test_accuracy {record.test_accuracy:.4f}  {record.seconds:.2f}s{skipped}",
            flush=True,
        )

    def write(records: list[Any], **extra: Any) -> None:
        if args.out is not None:
            with atomic_writer(args.out, "w") as f:
                dump_json({"config": config, "history": [r.as_dict() for r in records], **extra}, f, indent=2)
            print(f"wrote {args.out}", flush=True)

    from .checkpoint import TrainingInterrupted

    try:
        history = trainer.fit(args.epochs, args.seed, progress=not args.no_progress, callback=report,
                              checkpoint=checkpoint, checkpoint_every=args.checkpoint_every,
                              resume=args.resume if args.resume is not None else False, config=run_config)
    except NonFiniteLossError as exc:
        message = (f"training diverged: the loss is {exc.loss} at epoch {exc.epoch}, step {exc.step}; lower --lr, "
                   f"clip gradients (--hp clip_global_norm=1) or skip such steps (--skip-nonfinite)")
        write(exc.history, error=message, diverged={"epoch": exc.epoch, "step": exc.step})
        print(f"symopt: error: {message}", file=sys.stderr)
        return 1
    except TrainingInterrupted as stop:  # Ctrl-C: the step finished, the checkpoint is written
        write(stop.history, interrupted={"epoch": stop.epoch, "step": stop.step,
                                         "checkpoint": None if checkpoint is None else str(checkpoint)})
        if checkpoint is not None:
            print(f"symopt: {stop}; continue with the same flags and --resume {checkpoint}", file=sys.stderr)
        raise
    write(history)
    return 0


def _checkpoint_paths(args: argparse.Namespace) -> Path | None:
    """Check --checkpoint, --checkpoint-every and --resume before any data is loaded;
    returns the checkpoint to write (--resume's file unless --checkpoint is given)."""
    if args.resume is not None and not args.resume.is_file():
        raise CLIError(f"--resume {args.resume}: no such checkpoint file")
    checkpoint = args.checkpoint if args.checkpoint is not None else args.resume
    if args.checkpoint_every is not None and checkpoint is None:
        raise CLIError("--checkpoint-every needs --checkpoint PATH (or --resume PATH)")
    if checkpoint is not None:
        check_writable(checkpoint, "--checkpoint" if args.checkpoint is not None else "--resume")
    return checkpoint


def _resume_check(path: Path, run_config: dict[str, Any], epochs: int) -> str:
    """Refuse a checkpoint of other settings (from its header, before compiling); says where it resumes."""
    from .checkpoint import read_header

    try:
        header = read_header(path, config=json_ready(run_config))
    except ValueError as exc:
        raise CLIError(f"--resume: {exc}") from None
    position = header["position"]
    done = position.get("epoch") if isinstance(position.get("epoch"), int) else 0
    if done > epochs or (done == epochs and position.get("step")):
        raise CLIError(f"--resume: checkpoint {str(path)!r} has trained {done} epochs, more than --epochs {epochs}")
    step = f", {position['step']} step(s) into epoch {position['epoch'] + 1}" if position["step"] else ""
    return f"resuming from {path}: {position['epoch']} epoch(s) done{step}"


def _list_optimizers() -> None:
    """One line per registered name: name, class, the implementation its numbers match, defaults.

    A name that is not a per-parameter rule (``lbfgs``) says its kind after the reference.
    """
    import symopt
    from symopt.registry import RULE, kind

    rows = []
    for name, cls in sorted(symopt.OPTIMIZERS.items()):
        # A plug-in rule need not declare a reference; its module says where it comes from.
        reference = getattr(cls, "reference", None) or f"(no reference declared; {cls.__module__})"
        if kind(cls) != RULE:
            reference = f"{reference} [{kind(cls)}]"
        defaults = ", ".join(f"{k}={v}" for k, v in cls.hyperparameters.items())
        rows.append((name, cls.__name__, reference, defaults))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for name, cls_name, reference, defaults in rows:
        print(f"{name:<{widths[0]}}  {cls_name:<{widths[1]}}  {reference:<{widths[2]}}  {defaults}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``symopt`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "train":
            return _train(args)
        elif args.command == "optimizers":
            _list_optimizers()
        elif args.command == "experiment":
            from .experiments import run_experiment

            if not args.plot_only:
                check_writable(args.results_dir, "--results-dir", directory=True)
            check_writable(args.figures_dir, "--figures-dir", directory=True)
            results, figures, summary = run_experiment(
                args.name, quick=args.quick, seed=args.seed, results_dir=args.results_dir,
                figures_dir=args.figures_dir, plot_only=args.plot_only,
            )
            print(summary)
            print(f"results: {results}")
            for path in figures:
                print(f"figure:  {path}")
        elif args.command == "bench-mnist":
            from .experiments import get_experiment

            check_writable(args.results, "--results")
            check_writable(args.figures_dir, "--figures-dir", directory=True)
            get_experiment("mnist-optimizers").bench(
                optimizers=[name.strip() for name in args.optimizers.split(",") if name.strip()],
                seeds=args.seeds, epochs=args.epochs, batch_size=args.batch_size, results=args.results,
                figures_dir=args.figures_dir, progress=not args.no_progress, vectorize=args.vectorize,
                stack_size=args.stack_size, workers=args.workers,
            )
        elif args.command == "sweep":
            return _sweep(args)
        elif args.command == "search":
            return _search(args)
    except KeyboardInterrupt:
        print("symopt: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("symopt: error: out of memory; try a smaller model (--hidden) or batch (--batch-size)", file=sys.stderr)
        return 2
    except (CLIError, ValueError, TypeError, KeyError, ImportError, OSError) as exc:
        print(f"symopt: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
