"""Multi-seed MNIST comparison of update rules (the Theano seed's protocol).

Every optimiser trains the same MLP on MNIST for ``epochs`` epochs from ``seeds``
seeds; per-epoch train loss, test loss and test accuracy are stored per
``(optimizer, seed)``. The seed document averages 30 seeds of 20 epochs and gives no
network, so the model here is stated in :data:`MODEL`: 784-100-100-100-100-10, ReLU,
He initialisation, dropout 0.2 after every hidden layer.

Training is ``symopt sweep``'s: :func:`bench` builds the equivalent sweep configuration
(:func:`sweep_config`; the full protocol is ``experiments/sweeps/mnist-optimizers.toml``) and
trains its runs with the sweep engine's tasks (:mod:`symopt.sweep.engine`), in this process
or on local Dask workers (``--workers``). A rule's seeds train together as one seed stack
(``stack_size`` at a time); a compiled function serves every seed, reset before each to a
fresh ``MLP(seed=seed)`` and the optimiser state captured right after construction
(:func:`symopt.mnist_runs.reset_run`). Only the results file is bench-mnist's own.

Resumable: the results file is a JSON document whose ``runs`` are keyed
``"<optimizer>/<seed>"``; every finished run is written (atomically) right after it
finishes (a stack's runs when the stack finishes) and re-running skips finished runs.
Several processes may fill one file side by side (different optimisers): each write
re-reads it under a lock and keeps the others' runs.

Every registered rule runs (``bench-mnist --optimizers muon,adafactor,lamb``), with its
defaults (the seed's settings for the seed's rules, :data:`SEED_HYPERPARAMETERS`). As in
every sweep, a rule that updates only some parameters (``Optimizer.accepted_ndims``: Muon
takes the 2-D weight matrices) is joined by :func:`symopt.combine` to AdamW
(:data:`OTHERS_HYPERPARAMETERS`) over the rest, recorded under the rule's
``hyperparameters["others"]``; a rule that refuses seed-stacked parameters (Prodigy)
trains its seeds one after another; a Schedule-Free rule is evaluated at its evaluation
point ``x`` (``opt.eval_params()``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import check_integer
from .._io import file_lock
from ..mnist_runs import (  # noqa: F401  (MODEL, build_model, reset_run, make_optimizer, OTHERS_*: this experiment's)
    MODEL,
    OTHERS_HYPERPARAMETERS,
    OTHERS_RULE,
    SEED_OPTIMIZERS,
    adjacent_pairs,
    build_model,
    compare_document,
    make_optimizer,
    plot_document,
    reset_run,
    run_entry,
    summarize_pairs,
    summarize_rows,
    table_document,
)
from . import _common

DESCRIPTION = "Theano seed: SGD ... Adam on MNIST, 30 seeds x 20 epochs, mean +- std of test accuracy and train loss"

DEFAULT_OPTIMIZERS = list(SEED_OPTIMIZERS)
DEFAULT_SEEDS = 30
DEFAULT_EPOCHS = 20
DEFAULT_BATCH_SIZE = 128

#: Hyperparameters the Theano seed gives; any other rule runs with its defaults.
#: (The seed's SGD ignores its learning_rate argument and always uses 0.01; its
#: AdaGrad and RMSprop put epsilon inside the square root; its Adam decays beta1 by
#: gamma = 1 - 1e-8 per step; its RMSprop decay is 0.99.)
SEED_HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "sgd": {"learning_rate": 0.01},
    "momentum": {"learning_rate": 0.01, "momentum": 0.9},
    "adagrad": {"learning_rate": 0.01, "epsilon": 1e-6, "epsilon_inside_sqrt": True},
    "rmsprop": {"learning_rate": 1e-3, "rho": 0.99, "epsilon": 1e-8, "epsilon_inside_sqrt": True},
    "adadelta": {"learning_rate": 1.0, "rho": 0.95, "epsilon": 1e-6},
    "adam": {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8, "beta1_decay": 1 - 1e-8},
}

#: Whether bench-mnist stacks an optimiser's seeds into one compiled step by default
#: (benchmarks/seeds_step.py measures both ways; see experiments/README.md).
VECTORIZE_DEFAULT = True

QUICK = {"optimizers": ["sgd", "adam"], "seeds": 2, "epochs": 1, "n_train": 2000, "n_test": 1000}
EXPERIMENT = "mnist-optimizers"


def results_path(results_dir: Path, quick: bool) -> Path:
    return Path(results_dir) / (f"{EXPERIMENT}-quick.json" if quick else f"{EXPERIMENT}.json")


def run(results_dir: Path, quick: bool = False, seed: int = 0) -> Path:
    """The seed's protocol (7 rules x 30 seeds x 20 epochs); ``quick``: 2 x 2 x 1 on 2,000 images."""
    path = results_path(results_dir, quick)
    if quick:
        return bench(
            QUICK["optimizers"], QUICK["seeds"], QUICK["epochs"], DEFAULT_BATCH_SIZE, path, None, progress=False,
            first_seed=seed, n_train=QUICK["n_train"], n_test=QUICK["n_test"],
        )
    return bench(
        DEFAULT_OPTIMIZERS, DEFAULT_SEEDS, DEFAULT_EPOCHS, DEFAULT_BATCH_SIZE, path, None, progress=True, first_seed=seed
    )


# ---------------------------------------------------------------------------- running
def sweep_config(
    optimizers: list[str], seeds: int, epochs: int, batch_size: int, *, first_seed: int = 0,
    n_train: int | None = None, n_test: int | None = None, stack_size: int | None = None,
) -> dict[str, Any]:
    """The sweep configuration (``symopt sweep``'s TOML, as a dict) that trains what :func:`bench` trains.

    The seed's hyperparameters where it gives them (:data:`SEED_HYPERPARAMETERS`), else
    the rule's defaults; the mnist-optimizers model (the sweep's default); all of MNIST,
    or the seeded subset of ``n_train`` training and ``n_test`` test images (``n_test``
    alone keeps the full data, as the results file's protocol has always meant).
    ``stack_size`` seeds of a rule train as one seed stack (default: all of them).
    ``experiments/sweeps/mnist-optimizers.toml`` is the full protocol written out.
    """
    config: dict[str, Any] = {
        "epochs": epochs, "seeds": seeds, "first_seed": first_seed, "batch_size": batch_size,
        "stack_size": seeds if stack_size is None else stack_size,
        "optimizers": {name: dict(SEED_HYPERPARAMETERS.get(name, {})) for name in optimizers},
    }
    if n_train is not None:  # (load_config validates every value, naming the field)
        config["data"] = {"n_train": n_train, **({"n_test": n_test} if n_test is not None else {})}
    return config


def _protocol(epochs: int, batch_size: int, n_train: int | None, n_test: int | None) -> dict[str, Any]:
    return {
        "epochs": int(epochs),
        "batch_size": int(batch_size),
        "model": dict(MODEL),
        "data": {"name": "mnist", "n_train": n_train, "n_test": n_test, "subset_seed": 0 if n_train else None},
        "loss": "softmax cross-entropy (train loss: mean over the epoch's mini-batches, dropout on)",
    }


def _new_document(protocol: dict[str, Any]) -> dict[str, Any]:
    return {"experiment": EXPERIMENT, "protocol": protocol, "machine": _common.machine_info(),
            "hyperparameters": {}, "compile_seconds": {}, "runs": {}}


def _load_document(path: Path, protocol: dict[str, Any]) -> dict[str, Any]:
    if not path.exists():
        return _new_document(protocol)
    doc = _common.read_json(path)
    if not isinstance(doc, dict) or doc.get("experiment") != EXPERIMENT or "runs" not in doc:
        raise ValueError(f"{path} is not a {EXPERIMENT} results file; choose another --results path")
    if doc.get("protocol") != protocol:
        old = doc.get("protocol", {})
        diff = [
            f"{key}: file has {old.get(key)!r}, this run {protocol[key]!r}"
            for key in protocol if old.get(key) != protocol[key]
        ]
        raise ValueError(
            f"{path} was made with a different protocol ({'; '.join(diff)}); runs made under different protocols "
            f"cannot be mixed: use another --results path or the same settings"
        )
    return doc


def _key(name: str, seed: int) -> str:
    return f"{name}/{seed}"


def _log(progress: bool, text: str) -> None:
    """One line per compiled optimiser and finished run (``progress`` only adds the bar over runs)."""
    print(text, file=sys.stderr, flush=True)


def bench(
    optimizers: list[str],
    seeds: int,
    epochs: int,
    batch_size: int,
    results: Path,
    figures_dir: Path | None,
    progress: bool,
    *,
    first_seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    vectorize: bool | None = None,
    stack_size: int | None = None,
    workers: int | None = None,
) -> Path:
    """Train every ``optimizer`` from seeds ``first_seed .. first_seed + seeds - 1``; resumable.

    The runs of :func:`sweep_config`, trained by the sweep engine's own tasks
    (:func:`symopt.sweep.engine.train_run`, :func:`~symopt.sweep.engine.train_stack`):
    in this process, or with ``workers`` on that many local Dask workers (the ``sweep``
    extra). Runs already in ``results`` are skipped; each finished run is written to it at
    once (atomically). ``n_train``/``n_test`` restrict MNIST to a seeded subset (for quick
    runs). With ``figures_dir`` the figures are drawn afterwards. Returns ``results``.

    ``vectorize`` trains an optimiser's seeds together in one compiled step
    (:mod:`symopt.seeds`; the same results up to float round-off), ``stack_size`` seeds
    at a time (default: all of them); ``None`` means :data:`VECTORIZE_DEFAULT`. A rule
    that refuses seed stacks (Prodigy) trains seed by seed. Runs of a stack are written
    when the stack finishes.
    """
    import symopt
    from symopt.sweep.config import load_config
    from symopt.sweep.engine import plan_stacks, run_tasks

    if not optimizers:
        raise ValueError("no optimizers given")
    names: list[str] = []
    for name in optimizers:
        # validates the name: UnknownOptimizerError (a KeyError) names the known rules, and a
        # full-batch optimiser (lbfgs) is refused with NotARuleError (a ValueError) saying why
        symopt.registry.get_rule(name, "bench-mnist")
        key = name.strip().lower()
        if key not in names:
            names.append(key)
    vectorize = VECTORIZE_DEFAULT if vectorize is None else bool(vectorize)
    checks = [("seeds", seeds), ("epochs", epochs), ("batch_size", batch_size)]
    if stack_size is not None:
        checks.append(("stack_size", stack_size))
    if workers is not None:
        checks.append(("workers", workers))
    for label, value in checks:
        check_integer(label, value, 1)
    cfg = load_config(sweep_config(names, seeds, epochs, batch_size, first_seed=first_seed, n_train=n_train,
                                   n_test=n_test, stack_size=stack_size if vectorize else 1))
    results = Path(results)
    protocol = _protocol(epochs, batch_size, n_train, n_test)
    doc = _load_document(results, protocol)
    wanted = {name: cfg.grid[name][0] for name in names}
    for name, hyper in wanted.items():
        stored = doc["hyperparameters"].get(name)
        if stored is not None and stored != hyper:
            raise ValueError(
                f"{results} holds {name} runs with hyperparameters {stored}, this run would use {hyper}; "
                f"use another --results path"
            )
    specs = cfg.runs()
    todo = [spec for spec in specs if _key(spec.optimizer, spec.seed) not in doc["runs"]]
    if len(todo) < len(specs):
        _log(progress, f"{results}: {len(specs) - len(todo)} finished run(s) found, skipping them")
    if todo:
        tasks, refused = plan_stacks(todo, cfg.stack_size)
        for name, reason in refused.items():
            _log(progress, f"{name}: training seed by seed ({reason})")
        run_tasks(tasks, _ResultsFile(results, protocol, progress), workers=workers, total=len(specs),
                  skipped=len(specs) - len(todo), progress=progress)
    elif not results.exists():
        _common.write_json(results, doc)
    if figures_dir is not None:
        for path in plot(results, Path(figures_dir)):
            _log(progress, f"figure: {path}")
        _log(progress, summarize(results))
    return results


class _ResultsFile:
    """The results file as the sweep engine's store: each finished run written at once, atomically.

    Several processes may fill one file side by side: each write re-reads it under a lock
    and keeps the others' runs. A failed run is raised, not recorded.
    """

    def __init__(self, path: Path, protocol: dict[str, Any], progress: bool):
        self.path, self.protocol, self.progress = path, protocol, progress

    def record(self, spec: Any, result: dict[str, Any] | None = None, error: str | None = None) -> bool:
        if result is None:
            raise RuntimeError(f"{spec.optimizer} seed {spec.seed} failed: {error}")
        extra = {"stacked_seeds": result["stack_size"]} if result.get("stack_size") else {}
        # where the run's time went (benchmarks/protocol_time.py adds them up): the compile is
        # 0 when the worker reused its compiled step
        extra.update({k: result[k] for k in ("compile_seconds", "train_seconds", "worker") if k in result})
        run = run_entry(spec.optimizer, spec.seed, result["history"], finished=time.strftime("%Y-%m-%d %H:%M:%S"),
                        **extra)
        _record(self.path, self.protocol, spec.optimizer, spec.hyperparameters, result["compile_seconds"], [run],
                self.progress)
        return True


def _record(
    results: Path, protocol: dict[str, Any], name: str, hyper: dict[str, Any], compile_seconds: float,
    records: list[dict[str, Any]], progress: bool,
) -> dict[str, Any]:
    """Add finished runs to the results file (one atomic write) and log them.

    ``compile_seconds`` (0: the compiled function was reused) is kept for the rule's first
    compilation recorded in the file.
    """
    # Re-read under the lock so runs another process (bench-mnist side by side) wrote are kept.
    with file_lock(results):
        doc = _load_document(results, protocol) if results.exists() else _new_document(protocol)
        doc["hyperparameters"][name] = hyper
        if compile_seconds:
            doc["compile_seconds"].setdefault(name, compile_seconds)
        for record in records:
            doc["runs"][_key(name, record["seed"])] = record
        _common.write_json(results, doc)
    if compile_seconds:
        _log(progress, f"{name}: compiled in {compile_seconds:.1f} s")
    for record in records:
        stacked = f" (stack of {record['stacked_seeds']})" if "stacked_seeds" in record else ""
        _log(progress, f"{name} seed {record['seed']}: test accuracy {record['test_accuracy'][-1]:.4f}, "
                       f"train loss {record['train_loss'][-1]:.4f}, {np.mean(record['seconds']):.2f} s/epoch{stacked}")
    return doc


# ---------------------------------------------------------------------------- reading
def plot(results: Path, figures_dir: Path) -> list[Path]:
    """Mean +- std (over seeds) of test accuracy (full and zoomed) and train loss per epoch."""
    quick = "quick" in Path(results).stem
    # Named after the results file (mnist-optimizers.json -> mnist-optimizers.png), so a
    # comparison kept in another file does not overwrite the seed's figure.
    out = Path(figures_dir) / f"{Path(results).stem}.png"
    return [plot_document(_common.read_json(results), out, quick=quick, source=str(results))]


def table(results: Path) -> list[dict[str, Any]]:
    """One row per optimiser: final-epoch metrics mean and std over seeds, seconds per epoch."""
    return table_document(_common.read_json(results))


#: Up to this many rules the summary compares every pair; beyond, the pairs adjacent in the ranking.
ALL_PAIRS_UP_TO = 8


def compare(results: Path, metric: str = "test_accuracy") -> list[dict[str, Any]]:
    """Every pair of rules on the final epoch's ``metric``: Welch's t and, matched by seed
    (seed s of every rule shares initial weights, data order and dropout seed), the paired t
    (:func:`symopt.mnist_runs.compare_document`)."""
    return compare_document(_common.read_json(results), metric)


def summarize(results: Path) -> str:
    """The summary table, then the pairwise comparisons of final test accuracy (every pair
    up to :data:`ALL_PAIRS_UP_TO` rules, else the rules adjacent in the ranking)."""
    doc = _common.read_json(results)
    rows = table_document(doc)
    text = summarize_rows(rows, str(results))
    pairs = compare_document(doc)
    if not pairs:
        return text
    if len(rows) > ALL_PAIRS_UP_TO:
        pairs = adjacent_pairs(pairs, rows)
        text += "\n\nAdjacent rules in the ranking:"
    return f"{text}\n\n{summarize_pairs(pairs)}"
