"""Sweep and search configurations: load a TOML/JSON file (or a dict), validate it, expand the grid.

A configuration states everything that determines a run's numbers::

    epochs = 2                 # per run
    seeds = 4                  # seeds 0..3 (first_seed shifts them), or a list [0, 1, 7]
    batch_size = 128
    stack_size = 8             # optional, default 1: up to 8 runs of one structure per task, trained
                               # together as one seed stack (symopt sweep; symopt search stacks the runs
                               # of several trials); not part of the protocol

    [model]                    # default: symopt.mnist_runs.MODEL, the seed comparison's MLP
    sizes = [784, 100, 10]
    dropout = 0.0

    [data]                     # default: all of MNIST
    n_train = 10000            # a seeded subset (subset_seed, default 0)
    n_test = 2000
    dir = "/data/mnist"        # optional; else $SYMOPT_DATA, then the cache (not part of the protocol)

    [optimizers.sgd]           # hyperparameters; a list is a grid axis
    learning_rate = [0.01, 0.1]

    [optimizers.adam]          # {} (or `optimizers = ["sgd", "adam"]`): the rule's defaults

    [plateau]                  # optional: ReduceLROnPlateau on each run's learning rate, stepped
    factor = 0.5               # after every epoch (torch's algorithm and defaults: factor 0.1,
    patience = 2               # patience 10, threshold 1e-4, threshold_mode "rel", cooldown 0,
    metric = "test_loss"       # min_lr 0; metric test_loss, test_accuracy or train_loss; mode
                               # "min"/"max", by default the metric's direction)

    [early_stopping]           # optional: end a run once its metric has not improved for
    patience = 3               # `patience` epochs (min_delta 0, metric test_loss, mode as above)

``[plateau]`` and ``[early_stopping]`` apply to every run and are part of the protocol (a
database or study made with other settings is refused). A run then also records the epoch
its early stopping ended it at (0: it trained every epoch) and its learning rate per epoch
and at the end. In a stacked task each member has its own plateau and stopping state
(:class:`~symopt.plateau.MemberReduceLROnPlateau`, :class:`~symopt.plateau.EarlyStopping`
freezing the member), so it records what its unstacked run records.

``symopt search`` reads a ``[search]`` table instead of ``[optimizers]`` (see
:class:`SearchSpec`). Every error is a :class:`ConfigError` whose message names the
file and the offending field, raised before anything is written.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._checks import is_integer, is_real
from .._optuna import SAMPLERS as _SAMPLERS
from ..mnist_runs import MODEL as _MNIST_MLP
from ..mnist_runs import with_others

__all__ = [
    "ConfigError",
    "RunSpec",
    "SearchSpec",
    "SweepConfig",
    "load_config",
    "canonical_json",
    "DEFAULT_MODEL",
]

#: The network of the seed's MNIST comparison (784-100x4-10, ReLU, He, dropout 0.2): symopt.mnist_runs.MODEL.
DEFAULT_MODEL: dict[str, Any] = dict(_MNIST_MLP)
_TOP_KEYS = {"name", "epochs", "seeds", "first_seed", "batch_size", "model", "data", "optimizers", "search",
             "stack_size", "plateau", "early_stopping"}
_DATA_KEYS = {"n_train", "n_test", "subset_seed", "dir", "validation"}
_SEARCH_KEYS = {"optimizer", "n_trials", "sampler", "sampler_seed", "study", "metric", "space", "fixed"}
#: metric -> Optuna direction (the metric is taken at the final epoch, averaged over seeds).
METRICS = {"test_accuracy": "maximize", "test_loss": "minimize", "train_loss": "minimize"}
#: ``[plateau]`` fields and their defaults (torch's ReduceLROnPlateau; ``mode`` follows the metric).
PLATEAU_DEFAULTS: dict[str, Any] = {"factor": 0.1, "patience": 10, "threshold": 1e-4, "threshold_mode": "rel",
                                    "mode": None, "cooldown": 0, "min_lr": 0.0, "metric": "test_loss"}
#: ``[early_stopping]`` fields and their defaults.
STOPPING_DEFAULTS: dict[str, Any] = {"patience": 10, "min_delta": 0.0, "mode": None, "metric": "test_loss"}


class ConfigError(ValueError):
    """An invalid sweep or search configuration; the message names the field."""


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal text (used in keys and hashes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class RunSpec:
    """One run: what a worker needs to train it and the identity under which it is stored.

    ``hyperparameters`` is complete (the rule's defaults overridden by the config), so a
    run's numbers depend on nothing outside this object and the protocol.
    """

    optimizer: str
    hyperparameters: dict[str, Any]
    seed: int
    protocol: dict[str, Any]
    data_dir: str | None = None

    @property
    def key(self) -> str:
        """sha256 of everything that determines the run's numbers (not where the data lives)."""
        text = canonical_json({"optimizer": self.optimizer, "hyperparameters": self.hyperparameters,
                               "seed": self.seed, "protocol": self.protocol})
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def as_task(self) -> dict[str, Any]:
        """The plain-data payload sent to a worker."""
        return {"key": self.key, "optimizer": self.optimizer, "hyperparameters": dict(self.hyperparameters),
                "seed": self.seed, "protocol": self.protocol, "data_dir": self.data_dir}


@dataclass(frozen=True)
class SearchSpec:
    """The ``[search]`` table: one optimiser, a search space, Optuna's sampler and budget."""

    optimizer: str
    space: dict[str, dict[str, Any]]
    fixed: dict[str, Any]
    n_trials: int
    sampler: str = "tpe"
    sampler_seed: int = 0
    study: str = ""
    metric: str = "test_accuracy"

    @property
    def direction(self) -> str:
        return METRICS[self.metric]


@dataclass(frozen=True)
class SweepConfig:
    """A validated configuration. ``protocol`` holds what every run shares (model, data, batch, epochs).

    ``stack_size`` is how many runs of one compiled structure ``symopt sweep`` (and
    ``symopt search``, trials x seeds) trains together in one task
    (:mod:`symopt.sweep.engine`); it changes no run's numbers beyond float round-off, so it
    is not part of the protocol or of a run's key. ``protocol`` holds ``plateau`` and
    ``early_stopping`` only when the config has those tables.
    """

    source: str
    protocol: dict[str, Any]
    seeds: list[int]
    grid: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    search: SearchSpec | None = None
    data_dir: str | None = None
    name: str = "sweep"
    stack_size: int = 1

    def runs(self) -> list[RunSpec]:
        """Every run of the grid: optimisers in config order, then hyperparameter settings, then seeds."""
        return [
            RunSpec(name, hyper, seed, self.protocol, self.data_dir)
            for name, settings in self.grid.items() for hyper in settings for seed in self.seeds
        ]

    @property
    def epochs(self) -> int:
        return int(self.protocol["epochs"])


# ---------------------------------------------------------------------------- loading
def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"config {path}: cannot read it ({exc.strerror or exc})") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            return tomllib.loads(text.decode())
        if suffix == ".json":
            doc = json.loads(text)
            if not isinstance(doc, dict):
                raise ConfigError(f"config {path}: the top level must be an object, got {type(doc).__name__}")
            return doc
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {path}: not valid {suffix[1:].upper()} ({exc})") from None
    raise ConfigError(f"config {path}: unknown format {suffix or '(no suffix)'}; use .toml or .json")


def load_config(source: str | Path | Mapping[str, Any] | SweepConfig, *, require: str | None = None) -> SweepConfig:
    """Load and validate a configuration.

    Parameters
    ----------
    source
        A ``.toml`` or ``.json`` path, a dict of the same content, or an already loaded config.
    require
        ``"optimizers"`` (a sweep) or ``"search"``: that table must be present.

    Returns
    -------
    SweepConfig

    Raises
    ------
    ConfigError
        Naming the file and the first bad field.
    """
    if isinstance(source, SweepConfig):
        cfg = source
    else:
        if isinstance(source, Mapping):
            where, raw = "(dict)", dict(source)
        else:
            where, raw = str(source), _read(Path(source))
        cfg = _validate(raw, where)
    if require == "optimizers" and not cfg.grid:
        raise ConfigError(f"config {cfg.source}: optimizers: missing; a sweep needs [optimizers.NAME] tables "
                          f"or optimizers = [\"sgd\", ...]")
    if require == "search" and cfg.search is None:
        raise ConfigError(f"config {cfg.source}: search: missing; a search needs a [search] table")
    return cfg


def _fail(where: str, field_name: str, message: str) -> ConfigError:
    return ConfigError(f"config {where}: {field_name}: {message}")


def _int(where: str, name: str, value: Any, minimum: int) -> int:
    if not is_integer(value) or value < minimum:
        raise _fail(where, name, f"must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _unknown(where: str, prefix: str, given: Mapping[str, Any], known: set[str]) -> None:
    extra = sorted(set(given) - known)
    if extra:
        raise _fail(where, f"{prefix}{extra[0]}", f"unknown field; known: {', '.join(sorted(known))}")


def _validate(raw: dict[str, Any], where: str) -> SweepConfig:
    _unknown(where, "", raw, _TOP_KEYS)
    epochs = _int(where, "epochs", raw.get("epochs", 20), 1)
    batch_size = _int(where, "batch_size", raw.get("batch_size", 128), 1)
    seeds = _seeds(where, raw.get("seeds", 1), raw.get("first_seed", 0))
    model = _model(where, raw.get("model", {}))
    data, data_dir = _data(where, raw.get("data", {}))
    n_train = _training_size(data)
    if batch_size > n_train:
        raise _fail(where, "batch_size", f"{batch_size} exceeds the {n_train} training images a run has "
                                         f"({_training_source(data)}); every run would fail")
    protocol = {"epochs": epochs, "batch_size": batch_size, "model": model, "data": data}
    # Only when given, so that the protocol (and every run key) of a config without them is unchanged.
    if "plateau" in raw:
        protocol["plateau"] = _plateau(where, raw["plateau"])
    if "early_stopping" in raw:
        protocol["early_stopping"] = _early_stopping(where, raw["early_stopping"])
    grid = _grid(where, raw["optimizers"]) if "optimizers" in raw else {}
    search = _search(where, raw["search"]) if "search" in raw else None
    if "plateau" in protocol:
        _check_plateau_rules(where, protocol["plateau"], grid, search)
    name = raw.get("name", Path(where).stem if where != "(dict)" else "sweep")
    if not isinstance(name, str) or not name:
        raise _fail(where, "name", f"must be a non-empty string, got {name!r}")
    stack_size = _int(where, "stack_size", raw.get("stack_size", 1), 1)
    return SweepConfig(where, protocol, seeds, grid, search, data_dir, name, stack_size)


def _seeds(where: str, value: Any, first: Any) -> list[int]:
    first = _int(where, "first_seed", first, 0)
    if isinstance(value, list):
        if not value:
            raise _fail(where, "seeds", "the list is empty")
        out = [_int(where, f"seeds[{i}]", s, 0) for i, s in enumerate(value)]
        if len(set(out)) != len(out):
            raise _fail(where, "seeds", f"lists a seed twice: {value}")
        return out
    if not is_integer(value) or value < 1:
        raise _fail(where, "seeds", f"must be a positive number of seeds or a list of non-negative seeds, got {value!r}")
    return list(range(first, first + value))


def _model(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, "model", f"must be a table, got {value!r}")
    _unknown(where, "model.", value, set(DEFAULT_MODEL))
    model = {**DEFAULT_MODEL, **value}
    sizes = model["sizes"]
    if (not isinstance(sizes, list) or len(sizes) < 2
            or any(not is_integer(s) or s < 1 for s in sizes)):
        raise _fail(where, "model.sizes", f"must be a list of >= 2 positive widths, got {sizes!r}")
    if sizes[0] != 784 or sizes[-1] != 10:
        raise _fail(where, "model.sizes", f"MNIST needs 784 inputs and 10 outputs, got {sizes!r}")
    from ..nn import ACTIVATIONS

    if model["activation"] not in ACTIVATIONS:
        raise _fail(where, "model.activation", f"unknown activation {model['activation']!r}; known: {', '.join(ACTIVATIONS)}")
    init = model["init"]
    if not (init in ("he", "xavier", "normal") or (is_real(init) and init > 0)):
        raise _fail(where, "model.init", f"must be he, xavier, normal or a positive standard deviation, got {init!r}")
    dropout = model["dropout"]
    if not is_real(dropout) or not 0 <= dropout < 1:
        raise _fail(where, "model.dropout", f"must be a number in [0, 1), got {dropout!r}")
    if not isinstance(model["batchnorm"], bool):
        raise _fail(where, "model.batchnorm", f"must be true or false, got {model['batchnorm']!r}")
    if model["dtype"] not in ("float32", "float64"):
        raise _fail(where, "model.dtype", f"must be float32 or float64, got {model['dtype']!r}")
    model["sizes"] = list(sizes)
    model["dropout"] = float(dropout) if dropout else dropout
    return model


def _data(where: str, value: Any) -> tuple[dict[str, Any], str | None]:
    if not isinstance(value, Mapping):
        raise _fail(where, "data", f"must be a table, got {value!r}")
    _unknown(where, "data.", value, _DATA_KEYS)
    n_train = value.get("n_train")
    n_test = value.get("n_test")
    if n_train is not None:
        n_train = _int(where, "data.n_train", n_train, 1)
        if n_train > 60_000:
            raise _fail(where, "data.n_train", f"MNIST has 60,000 training images, got {n_train}")
    if n_test is not None:
        n_test = _int(where, "data.n_test", n_test, 1)
        if n_test > 10_000:
            raise _fail(where, "data.n_test", f"MNIST has 10,000 test images, got {n_test}")
    subset_seed = _int(where, "data.subset_seed", value.get("subset_seed", 0), 0)
    validation = value.get("validation")
    if validation is not None and (not is_real(validation) or not 0 < validation < 1):
        raise _fail(where, "data.validation", f"must be a fraction in (0, 1), got {validation!r}")
    directory = value.get("dir")
    if directory is not None and (not isinstance(directory, str) or not directory):
        raise _fail(where, "data.dir", f"must be a directory path, got {directory!r}")
    data = {"name": "mnist", "n_train": n_train, "n_test": n_test,
            "subset_seed": subset_seed if (n_train is not None or n_test is not None) else None,
            "validation": validation}
    return data, directory


def _training_size(data: Mapping[str, Any]) -> int:
    """Training images a run sees: the subset (or all 60,000) less the held-out validation part."""
    n = data["n_train"] if data.get("n_train") is not None else 60_000
    if data.get("validation") is not None:
        n -= round(n * float(data["validation"]))  # as symopt.data.train_val_split
    return n


def _training_source(data: Mapping[str, Any]) -> str:
    text = f"data.n_train = {data['n_train']}" if data.get("n_train") is not None else "all of MNIST"
    if data.get("validation") is not None:
        text += f" less data.validation = {data['validation']}"
    return text


def _check_hyperparameters(where: str, prefix: str, name: str, hyper: dict[str, Any]) -> None:
    """Build the optimiser on a dummy parameter: the library's own checks, with the field named."""
    import numpy as np
    import pytensor

    from ..mnist_runs import make_optimizer

    dummy = pytensor.shared(np.zeros((2, 2), dtype="float32"), name="dummy")
    try:
        make_optimizer(name, hyper, [dummy])
    except (TypeError, ValueError) as exc:
        raise _fail(where, prefix.rstrip("."), str(exc)) from None


def _options(name: str) -> tuple[dict[str, Any], set[str]]:
    """(the rule's hyperparameter defaults, every keyword it accepts)."""
    import symopt
    from symopt.optimizer import TRANSFORM_SETTINGS

    cls = symopt.get(name)
    defaults = dict(cls.hyperparameters)
    return defaults, set(defaults) | set(TRANSFORM_SETTINGS)


def _grid(where: str, value: Any) -> dict[str, list[dict[str, Any]]]:
    import symopt

    if isinstance(value, list):
        value = {n: {} for n in value}
    if not isinstance(value, Mapping) or not value:
        raise _fail(where, "optimizers", f"must be a non-empty list of names or a table of tables, got {value!r}")
    grid: dict[str, list[dict[str, Any]]] = {}
    for raw_name, hyper in value.items():
        if not isinstance(raw_name, str):
            raise _fail(where, "optimizers", f"names must be strings, got {raw_name!r}")
        try:
            symopt.registry.get_rule(raw_name, "a sweep")  # unknown names; lbfgs is not a rule
        except (KeyError, ValueError) as exc:
            raise _fail(where, f"optimizers.{raw_name}", exc.args[0] if exc.args else str(exc)) from None
        name = raw_name.strip().lower()
        if name in grid:
            raise _fail(where, f"optimizers.{raw_name}", "listed twice")
        if not isinstance(hyper, Mapping):
            raise _fail(where, f"optimizers.{raw_name}", f"must be a table of hyperparameters, got {hyper!r}")
        defaults, accepted = _options(name)
        axes: list[tuple[str, list[Any]]] = []
        for key, values in hyper.items():
            field_name = f"optimizers.{raw_name}.{key}"
            if key not in accepted:
                raise _fail(where, field_name, f"{name} has no hyperparameter {key!r}; it has {', '.join(sorted(accepted))}")
            values = values if isinstance(values, list) else [values]
            if not values:
                raise _fail(where, field_name, "the list is empty")
            for v in values:
                ok = isinstance(v, bool) if isinstance(defaults.get(key), bool) else is_real(v) and math.isfinite(v)
                if not ok:
                    want = "true or false" if isinstance(defaults.get(key), bool) else "a finite number"
                    raise _fail(where, field_name, f"must be {want} (or a list of them), got {v!r}")
            if len(set(map(repr, values))) != len(values):
                raise _fail(where, field_name, f"lists a value twice: {values}")
            axes.append((key, [v if isinstance(v, bool) else float(v) for v in values]))
        settings = []
        for combo in itertools.product(*(vals for _, vals in axes)):
            # a rule that updates only some parameters (Muon) names the rule for the rest: see with_others
            setting = with_others(name, {**defaults, **{k: v for (k, _), v in zip(axes, combo)}})
            _check_hyperparameters(where, f"optimizers.{raw_name}.", name, setting)
            settings.append(setting)
        grid[name] = settings
    return grid


def _search(where: str, value: Any) -> SearchSpec:
    import symopt

    if not isinstance(value, Mapping):
        raise _fail(where, "search", f"must be a table, got {value!r}")
    _unknown(where, "search.", value, _SEARCH_KEYS)
    name = value.get("optimizer")
    if not isinstance(name, str):
        raise _fail(where, "search.optimizer", f"must be an optimizer name, got {name!r}")
    try:
        symopt.registry.get_rule(name, "a search")  # unknown names; lbfgs is not a rule
    except (KeyError, ValueError) as exc:
        raise _fail(where, "search.optimizer", exc.args[0] if exc.args else str(exc)) from None
    name = name.strip().lower()
    defaults, accepted = _options(name)
    n_trials = _int(where, "search.n_trials", value.get("n_trials", 20), 1)
    sampler = value.get("sampler", "tpe")
    if sampler not in _SAMPLERS:
        raise _fail(where, "search.sampler", f"must be one of {', '.join(_SAMPLERS)}, got {sampler!r}")
    sampler_seed = _int(where, "search.sampler_seed", value.get("sampler_seed", 0), 0)
    metric = value.get("metric", "test_accuracy")
    if metric not in METRICS:
        raise _fail(where, "search.metric", f"must be one of {', '.join(METRICS)}, got {metric!r}")
    fixed = value.get("fixed", {})
    if not isinstance(fixed, Mapping):
        raise _fail(where, "search.fixed", f"must be a table of hyperparameters, got {fixed!r}")
    for key in fixed:
        if key not in accepted:
            raise _fail(where, f"search.fixed.{key}", f"{name} has no hyperparameter {key!r}")
    space_raw = value.get("space")
    if not isinstance(space_raw, Mapping) or not space_raw:
        raise _fail(where, "search.space", "must be a non-empty table of NAME = {low, high, log} or {choices}")
    space: dict[str, dict[str, Any]] = {}
    for key, dist in space_raw.items():
        field_name = f"search.space.{key}"
        if key not in accepted:
            raise _fail(where, field_name, f"{name} has no hyperparameter {key!r}; it has {', '.join(sorted(accepted))}")
        if key in fixed:
            raise _fail(where, field_name, "is also in search.fixed")
        if not isinstance(dist, Mapping):
            raise _fail(where, field_name, f"must be a table {{low, high, log}} or {{choices}}, got {dist!r}")
        if "choices" in dist:
            _unknown(where, field_name + ".", dist, {"choices"})
            choices = dist["choices"]
            if not isinstance(choices, list) or not choices:
                raise _fail(where, field_name + ".choices", f"must be a non-empty list, got {choices!r}")
            want_bool = isinstance(defaults.get(key), bool)
            for i, choice in enumerate(choices):
                ok = isinstance(choice, bool) if want_bool else is_real(choice) and math.isfinite(choice)
                if not ok:
                    want = "true or false" if want_bool else "a finite number"
                    raise _fail(where, f"{field_name}.choices[{i}]", f"must be {want}, got {choice!r}")
            if len(set(map(repr, choices))) != len(choices):
                raise _fail(where, field_name + ".choices", f"lists a value twice: {choices}")
            space[key] = {"choices": list(choices)}
            continue
        _unknown(where, field_name + ".", dist, {"low", "high", "log"})
        low, high, log = dist.get("low"), dist.get("high"), dist.get("log", False)
        for label, v in (("low", low), ("high", high)):
            if not is_real(v) or not math.isfinite(v):
                raise _fail(where, f"{field_name}.{label}", f"must be a finite number, got {v!r}")
        if not low < high:
            raise _fail(where, field_name, f"needs low < high, got low={low}, high={high}")
        if not isinstance(log, bool):
            raise _fail(where, f"{field_name}.log", f"must be true or false, got {log!r}")
        if log and low <= 0:
            raise _fail(where, f"{field_name}.low", f"a log scale needs low > 0, got {low}")
        space[key] = {"low": float(low), "high": float(high), "log": log}
    # The corners of the space and every choice must be legal values (e.g. no negative learning rate).
    base = {**defaults, **fixed}
    for corner in ("low", "high"):
        trial = dict(base)
        for key, dist in space.items():
            trial[key] = dist["choices"][0] if "choices" in dist else dist[corner]
        _check_hyperparameters(where, "search.", name, trial)
    for key, dist in space.items():
        for i, choice in enumerate(dist.get("choices", [])[1:], start=1):
            trial = {**base, **{k: d["choices"][0] if "choices" in d else d["low"] for k, d in space.items()},
                     key: choice}
            _check_hyperparameters(where, f"search.space.{key}.choices[{i}].", name, trial)
    study = value.get("study", f"{name}-{sampler}")
    if not isinstance(study, str) or not study:
        raise _fail(where, "search.study", f"must be a non-empty string, got {study!r}")
    return SearchSpec(name, space, dict(fixed), n_trials, sampler, sampler_seed, study, metric)


# ---------------------------------------------------------------------------- plateau, early stopping
def _metric_and_mode(where: str, table: str, value: Mapping[str, Any]) -> tuple[str, str]:
    metric = value.get("metric", "test_loss")
    if metric not in METRICS:
        raise _fail(where, f"{table}.metric", f"must be one of {', '.join(METRICS)}, got {metric!r}")
    natural = "max" if METRICS[metric] == "maximize" else "min"
    mode = value.get("mode", natural)
    if mode not in ("min", "max"):
        raise _fail(where, f"{table}.mode", f"must be \"min\" or \"max\", got {mode!r}")
    if mode != natural:  # e.g. "min" on an accuracy: every fall of the accuracy would count as progress
        raise _fail(where, f"{table}.mode", f"{mode!r} contradicts metric {metric!r}, which improves as it "
                                           f"{'rises' if natural == 'max' else 'falls'}; use {natural!r} "
                                           f"or leave mode out")
    return metric, mode


def _number(where: str, name: str, value: Any, low: float, high: float | None = None) -> float:
    """A finite number in ``[low, high)`` (``high`` None: no upper bound)."""
    ok = is_real(value) and math.isfinite(value) and value >= low and (high is None or value < high)
    if not ok:
        span = f"in [{low:g}, {high:g})" if high is not None else f">= {low:g}"
        raise _fail(where, name, f"must be a finite number {span}, got {value!r}")
    return float(value)


def _plateau(where: str, value: Any) -> dict[str, Any]:
    """The ``[plateau]`` table, complete (defaults filled in), checked field by field."""
    if not isinstance(value, Mapping):
        raise _fail(where, "plateau", f"must be a table of ReduceLROnPlateau settings, got {value!r}")
    _unknown(where, "plateau.", value, set(PLATEAU_DEFAULTS))
    metric, mode = _metric_and_mode(where, "plateau", value)
    out = {**PLATEAU_DEFAULTS, **value, "metric": metric, "mode": mode}
    out["factor"] = _number(where, "plateau.factor", out["factor"], 0.0, 1.0)
    out["patience"] = _int(where, "plateau.patience", out["patience"], 0)
    out["threshold"] = _number(where, "plateau.threshold", out["threshold"], 0.0)
    if out["threshold_mode"] not in ("rel", "abs"):
        raise _fail(where, "plateau.threshold_mode", f"must be \"rel\" or \"abs\", got {out['threshold_mode']!r}")
    out["cooldown"] = _int(where, "plateau.cooldown", out["cooldown"], 0)
    out["min_lr"] = _number(where, "plateau.min_lr", out["min_lr"], 0.0)
    return out


def _early_stopping(where: str, value: Any) -> dict[str, Any]:
    """The ``[early_stopping]`` table, complete (defaults filled in), checked field by field."""
    if not isinstance(value, Mapping):
        raise _fail(where, "early_stopping", f"must be a table of EarlyStopping settings, got {value!r}")
    _unknown(where, "early_stopping.", value, set(STOPPING_DEFAULTS))
    metric, mode = _metric_and_mode(where, "early_stopping", value)
    out = {**STOPPING_DEFAULTS, **value, "metric": metric, "mode": mode}
    out["patience"] = _int(where, "early_stopping.patience", out["patience"], 1)
    out["min_delta"] = _number(where, "early_stopping.min_delta", out["min_delta"], 0.0)
    return out


def _check_plateau_rules(where: str, plateau: Mapping[str, Any], grid: Mapping[str, list[dict[str, Any]]],
                         search: SearchSpec | None) -> None:
    """Every optimiser setting must have a learning rate a plateau can reduce (built on a dummy parameter)."""
    import numpy as np
    import pytensor

    import symopt

    from ..mnist_runs import make_optimizer

    settings = [(f"optimizers.{name}", name, hyper) for name, hypers in grid.items() for hyper in hypers[:1]]
    if search is not None:
        defaults, _ = _options(search.optimizer)
        settings.append(("search.optimizer", search.optimizer, {**defaults, **search.fixed}))
    for field_name, name, hyper in settings:
        dummy = pytensor.shared(np.zeros((2, 2), dtype="float32"), name="dummy")
        try:
            symopt.ReduceLROnPlateau(make_optimizer(name, hyper, [dummy]), **plateau_arguments(plateau))
        except (TypeError, ValueError) as exc:
            raise _fail(where, "plateau", f"cannot reduce the learning rate of {field_name} ({exc})") from None


def plateau_arguments(plateau: Mapping[str, Any]) -> dict[str, Any]:
    """The (Member)ReduceLROnPlateau keywords of a protocol's ``plateau`` table (all but ``metric``)."""
    return {k: v for k, v in plateau.items() if k != "metric"}


def stopping_arguments(stopping: Mapping[str, Any]) -> dict[str, Any]:
    """The EarlyStopping keywords of a protocol's ``early_stopping`` table (all but ``metric``)."""
    return {k: v for k, v in stopping.items() if k != "metric"}
