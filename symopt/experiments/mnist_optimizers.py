"""Multi-seed MNIST comparison of update rules (the Theano seed's protocol).

Every optimiser trains the same MLP on MNIST for ``epochs`` epochs from ``seeds``
seeds; per-epoch train loss, test loss and test accuracy are stored per
``(optimizer, seed)``. The seed document averages 30 seeds of 20 epochs and gives no
network, so the model here is stated in :data:`MODEL`: 784-100-100-100-100-10, ReLU,
He initialisation, dropout 0.2 after every hidden layer.

Resumable: the results file is a JSON document whose ``runs`` are keyed
``"<optimizer>/<seed>"``; every finished run is written (atomically) right after it
finishes and re-running skips finished runs. Several processes may fill one file side
by side (different optimisers): each write re-reads it under a lock and keeps the
others' runs. One train and one eval function is compiled per optimiser and reused for
all its seeds: before each seed the parameters and dropout streams are set to those of
a fresh ``MLP(seed=seed)`` and the optimiser state (slots, step counter) to the state
captured right after construction.

Every registered rule runs (``bench-mnist --optimizers muon,adafactor,lamb``), with its
defaults. A rule that updates only some parameters (``Optimizer.accepted_ndims``: Muon
takes the 2-D weight matrices) is joined by :func:`symopt.combine` to AdamW
(:data:`OTHERS_HYPERPARAMETERS`) over the rest; the results file records that under the
rule's ``hyperparameters["others"]``. A rule whose constructor refuses seed-stacked
parameters (Prodigy) trains its seeds one after another; a Schedule-Free rule is
evaluated at its evaluation point ``x`` (``opt.eval_params()``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import check_integer
from .._io import file_lock
from ..mnist_runs import (  # noqa: F401  (MODEL, build_model, reset_run: this experiment's names for them)
    MODEL,
    SEED_OPTIMIZERS,
    adjacent_pairs,
    build_model,
    compare_document,
    plot_document,
    reset_run,
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

#: The rule for the parameters a rule does not accept (``Optimizer.accepted_ndims``; Muon
#: updates the weight matrices only): AdamW with torch.optim.AdamW's defaults, joined to the
#: rule by ``symopt.combine``. Stored with the rule's hyperparameters under ``"others"``.
OTHERS_RULE = "adamw"
OTHERS_HYPERPARAMETERS: dict[str, Any] = {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8,
                                          "weight_decay": 0.01}

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
def _hyperparameters(cls: type, name: str) -> dict[str, Any]:
    """Explicit hyperparameters for rule ``name``: the seed's where it gives them, else the defaults.

    A rule that accepts only some parameters (``cls.accepted_ndims``) also records, under
    ``"others"``, the rule training the rest (:data:`OTHERS_RULE`) and its settings.
    """
    values = {k: v for k, v in cls.hyperparameters.items()}
    values.update(SEED_HYPERPARAMETERS.get(name, {}))
    if cls.accepted_ndims is not None:
        values["others"] = {
            "rule": OTHERS_RULE,
            "parameters": f"those with ndim not in {list(cls.accepted_ndims)}",
            "hyperparameters": dict(OTHERS_HYPERPARAMETERS),
        }
    return values


def make_optimizer(name: str, hyper: dict[str, Any], params: list[Any]) -> Any:
    """Rule ``name`` over ``params``, or over those it accepts ``combine``-d with AdamW over the rest.

    ``hyper`` as :func:`_hyperparameters` gives it. The split follows the rule's declared
    ``accepted_ndims`` (a seed axis, ``tag.seed_axis``, not counted).
    """
    import symopt
    from symopt.seeds import seed_axis_ndim

    cls = symopt.get(name)
    own = {k: v for k, v in hyper.items() if k != "others"}
    if cls.accepted_ndims is None:
        return cls(params, **own)
    accepted = [p for p in params if seed_axis_ndim(p) in cls.accepted_ndims]
    rest = [p for p in params if seed_axis_ndim(p) not in cls.accepted_ndims]
    if not accepted:
        raise ValueError(f"{name} updates parameters with ndim in {list(cls.accepted_ndims)} only; the model has none")
    if not rest:
        return cls(params, **own)
    others = hyper["others"]
    return symopt.combine(**{name: cls(accepted, **own),
                             others["rule"]: symopt.get(others["rule"])(rest, **others["hyperparameters"])})


def _evaluate_at_eval_params(trainer: Any, opt: Any) -> None:
    """Schedule-Free rules are evaluated at their evaluation point x (``opt.eval_params()``),
    not at the point y where the gradients are taken, as optax and the paper evaluate them."""
    if not hasattr(opt, "eval_params"):
        return
    evaluate = trainer._evaluate

    def at_eval_params() -> Any:
        with opt.eval_params():
            return evaluate()

    trainer._evaluate = at_eval_params


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
    """One line per compiled optimiser and finished run (``progress`` only adds the tqdm bars)."""
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
) -> Path:
    """Train every ``optimizer`` from seeds ``first_seed .. first_seed + seeds - 1``; resumable.

    Runs already in ``results`` are skipped; each finished run is written to it at once
    (atomically). ``n_train``/``n_test`` restrict MNIST to a seeded subset (for quick
    runs). With ``figures_dir`` the figures are drawn afterwards. Returns ``results``.

    ``vectorize`` trains an optimiser's seeds together in one compiled step
    (:mod:`symopt.seeds`; the same results up to float round-off), ``stack_size`` seeds
    at a time (default: all of them); ``None`` means :data:`VECTORIZE_DEFAULT`. Runs of
    a stack are written when the stack finishes.
    """
    import symopt
    from symopt.nn import MLP

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
    for label, value in checks:
        check_integer(label, value, 1)
    results = Path(results)
    protocol = _protocol(epochs, batch_size, n_train, n_test)
    doc = _load_document(results, protocol)
    wanted = {name: _hyperparameters(symopt.get(name), name) for name in names}
    for name, hyper in wanted.items():
        stored = doc["hyperparameters"].get(name)
        if stored is not None and stored != hyper:
            raise ValueError(
                f"{results} holds {name} runs with hyperparameters {stored}, this run would use {hyper}; "
                f"use another --results path"
            )
    seed_list = list(range(int(first_seed), int(first_seed) + int(seeds)))
    todo = {name: [s for s in seed_list if _key(name, s) not in doc["runs"]] for name in names}
    skipped = sum(len(seed_list) - len(v) for v in todo.values())
    if skipped:
        _log(progress, f"{results}: {skipped} finished run(s) found, skipping them")
    if any(todo.values()):
        data = _data(n_train, n_test)
        for name in names:
            if not todo[name]:
                continue
            if vectorize and not symopt.get(name).stackable:
                _log(progress, f"{name}: the rule refuses seed stacks (stackable=False); training seed by seed")
                doc = _bench_optimizer(name, wanted[name], todo[name], data, protocol, doc, results, progress, MLP)
            elif vectorize:
                size = len(todo[name]) if stack_size is None else int(stack_size)
                for at in range(0, len(todo[name]), size):
                    chunk = todo[name][at:at + size]
                    stacked = _bench_stacked(name, wanted[name], chunk, data, protocol, results, progress, MLP)
                    if stacked is None:  # the rule's constructor refused the stack: seed by seed
                        doc = _bench_optimizer(name, wanted[name], todo[name][at:], data, protocol, doc, results,
                                               progress, MLP)
                        break
                    doc = stacked
            else:
                doc = _bench_optimizer(name, wanted[name], todo[name], data, protocol, doc, results, progress, MLP)
    elif not results.exists():
        _common.write_json(results, doc)
    if figures_dir is not None:
        for path in plot(results, Path(figures_dir)):
            _log(progress, f"figure: {path}")
        _log(progress, summarize(results))
    return results


def _data(n_train: int | None, n_test: int | None) -> Any:
    if n_train is None:
        from symopt.data import load_mnist

        return load_mnist()
    return _common.mnist_subset(n_train, n_test, seed=0)


def _bench_optimizer(
    name: str, hyper: dict[str, Any], seeds: list[int], data: Any, protocol: dict[str, Any],
    doc: dict[str, Any], results: Path, progress: bool, mlp_cls: type,
) -> dict[str, Any]:
    import symopt
    from symopt.train import Trainer

    model = build_model(mlp_cls, seeds[0])
    opt = make_optimizer(name, hyper, model.params)
    initial_state = opt.state_dict()
    start = time.perf_counter()
    trainer = Trainer(model, opt, data.x_train, data.y_train, data.x_test, data.y_test,
                      batch_size=protocol["batch_size"], on_nonfinite="continue")  # as the stacked seeds
    _evaluate_at_eval_params(trainer, opt)
    trainer.warm_up()
    compile_seconds = time.perf_counter() - start
    _log(progress, f"{name}: compiled in {compile_seconds:.1f} s; seeds {seeds[0]}..{seeds[-1]}")
    for seed in seeds:
        reset_run(model, opt, initial_state, seed, mlp_cls)
        history = trainer.fit(protocol["epochs"], seed, progress=progress)
        record = _run_record(name, seed, history)
        doc = _record(results, protocol, name, hyper, compile_seconds, [record], progress)
    return doc


def _run_record(name: str, seed: int, history: list[Any], **extra: Any) -> dict[str, Any]:
    return {
        "optimizer": name,
        "seed": seed,
        "epoch": [r.epoch for r in history],
        "train_loss": [r.train_loss for r in history],
        "test_loss": [r.test_loss for r in history],
        "test_accuracy": [r.test_accuracy for r in history],
        "seconds": [r.seconds for r in history],
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        **extra,
    }


def _record(
    results: Path, protocol: dict[str, Any], name: str, hyper: dict[str, Any], compile_seconds: float,
    records: list[dict[str, Any]], progress: bool,
) -> dict[str, Any]:
    """Add finished runs to the results file (one atomic write) and log them."""
    # Re-read under the lock so runs another process (bench-mnist side by side) wrote are kept.
    with file_lock(results):
        doc = _load_document(results, protocol) if results.exists() else _new_document(protocol)
        doc["hyperparameters"][name] = hyper
        doc["compile_seconds"].setdefault(name, compile_seconds)
        for record in records:
            doc["runs"][_key(name, record["seed"])] = record
        _common.write_json(results, doc)
    for record in records:
        _log(progress, f"{name} seed {record['seed']}: test accuracy {record['test_accuracy'][-1]:.4f}, "
                       f"train loss {record['train_loss'][-1]:.4f}, {np.mean(record['seconds']):.2f} s/epoch")
    return doc


def _bench_stacked(
    name: str, hyper: dict[str, Any], seeds: list[int], data: Any, protocol: dict[str, Any],
    results: Path, progress: bool, mlp_cls: type,
) -> dict[str, Any] | None:
    """All ``seeds`` of one optimiser in one compiled step (``symopt.seeds``).

    ``None`` when the rule refuses seed-stacked parameters (its reductions would mix the
    seeds, e.g. Prodigy's distance estimate): the caller then trains them seed by seed.
    """
    from symopt.seeds import SeedStack, SeedTrainer

    start = time.perf_counter()
    stack = SeedStack(lambda seed: build_model(mlp_cls, seed), seeds)
    try:
        opt = make_optimizer(name, hyper, stack.params)
    except ValueError as exc:
        if "seed stack" not in str(exc):
            raise
        _log(progress, f"{name}: refuses seed stacks ({exc}); training seed by seed")
        return None
    trainer = SeedTrainer(stack, opt, data.x_train, data.y_train, data.x_test,
                          data.y_test, batch_size=protocol["batch_size"])
    _evaluate_at_eval_params(trainer, opt)
    trainer.warm_up()
    compile_seconds = time.perf_counter() - start
    _log(progress, f"{name}: {len(seeds)} seeds stacked, compiled in {compile_seconds:.1f} s; "
                   f"seeds {seeds[0]}..{seeds[-1]}")
    histories = trainer.fit(protocol["epochs"], seeds, progress=progress)
    # seconds: the stacked epoch's wall time divided by the number of seeds.
    records = [_run_record(name, seed, history, stacked_seeds=len(seeds)) for seed, history in zip(seeds, histories)]
    return _record(results, protocol, name, hyper, compile_seconds, records, progress)


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
