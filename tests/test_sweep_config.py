"""Sweep configuration: loading TOML/JSON, the grid it expands to, one clear error per bad field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import symopt
from symopt.sweep import ConfigError, load_config
from symopt.sweep.config import DEFAULT_MODEL, RunSpec

TOML = """
epochs = 2
seeds = 3
first_seed = 5
batch_size = 64

[model]
sizes = [784, 32, 10]
dropout = 0.1

[data]
n_train = 1000
n_test = 200

[optimizers.sgd]
learning_rate = [0.01, 0.1]

[optimizers.Adam]
amsgrad = [false, true]
"""


def test_toml_grid_expands_in_order(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(TOML)
    cfg = load_config(path, require="optimizers")
    assert cfg.name == "s" and cfg.seeds == [5, 6, 7]
    assert cfg.protocol == {
        "epochs": 2, "batch_size": 64,
        "model": {**DEFAULT_MODEL, "sizes": [784, 32, 10], "dropout": 0.1},
        "data": {"name": "mnist", "n_train": 1000, "n_test": 200, "subset_seed": 0, "validation": None},
    }
    runs = cfg.runs()
    assert len(runs) == 2 * 3 + 2 * 3
    assert [(r.optimizer, r.hyperparameters["learning_rate"], r.seed) for r in runs[:6]] == [
        ("sgd", 0.01, 5), ("sgd", 0.01, 6), ("sgd", 0.01, 7), ("sgd", 0.1, 5), ("sgd", 0.1, 6), ("sgd", 0.1, 7)]
    # complete hyperparameters: the rule's defaults, overridden by the grid
    assert runs[0].hyperparameters == {"learning_rate": 0.01, "weight_decay": 0.0}
    assert runs[6].hyperparameters == {**symopt.Adam.hyperparameters, "amsgrad": False}
    assert runs[9].hyperparameters["amsgrad"] is True
    assert len({r.key for r in runs}) == len(runs)


def test_json_and_dict_give_the_same_keys(tmp_path: Path) -> None:
    raw = {"epochs": 1, "seeds": [0, 3], "optimizers": ["sgd", "momentum"], "data": {"n_train": 500}}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(raw))
    a, b = load_config(path).runs(), load_config(raw).runs()
    assert [r.key for r in a] == [r.key for r in b]
    assert [r.seed for r in a] == [0, 3, 0, 3]
    # the key hashes what determines the numbers: not where the data lives
    spec = a[0]
    moved = RunSpec(spec.optimizer, spec.hyperparameters, spec.seed, spec.protocol, data_dir="/elsewhere")
    assert moved.key == spec.key
    other = RunSpec(spec.optimizer, spec.hyperparameters, spec.seed + 1, spec.protocol)
    assert other.key != spec.key


@pytest.mark.parametrize(
    "change, message",
    [
        ({"seeds": -3}, "seeds: must be a positive number of seeds or a list of non-negative seeds, got -3"),
        ({"seeds": [0, -1]}, r"seeds\[1\]: must be an integer >= 0, got -1"),
        ({"seeds": [1, 1]}, "seeds: lists a seed twice"),
        ({"epochs": 0}, "epochs: must be an integer >= 1, got 0"),
        ({"batch_size": 2.5}, "batch_size: must be an integer >= 1, got 2.5"),
        ({"optimizers": {"adamm": {}}}, "optimizers.adamm: unknown optimizer 'adamm'. Did you mean 'adam'"),
        ({"optimizers": {"lbfgs": {}}}, r"optimizers.lbfgs: a sweep: 'lbfgs' \(symopt.LBFGS\) is not a per-parameter "
                                        r"rule \(its kind: full-batch, needs loss\)"),
        ({"optimizers": {"sgd": {"lr": 0.1}}}, "optimizers.sgd.lr: sgd has no hyperparameter 'lr'"),
        ({"optimizers": {"sgd": {"learning_rate": [-1.0]}}}, "optimizers.sgd: SGD: hyperparameter 'learning_rate'"),
        ({"optimizers": {"sgd": {"learning_rate": "fast"}}}, "optimizers.sgd.learning_rate: must be a finite number"),
        ({"optimizers": {"adam": {"amsgrad": 1}}}, "optimizers.adam.amsgrad: must be true or false"),
        ({"optimizers": []}, "optimizers: must be a non-empty list"),
        ({"model": {"sizes": [784, 10, 3]}}, "model.sizes: MNIST needs 784 inputs and 10 outputs"),
        ({"model": {"dropout": 1.0}}, r"model.dropout: must be a number in \[0, 1\)"),
        ({"model": {"width": 3}}, "model.width: unknown field"),
        ({"data": {"n_train": 70000}}, "data.n_train: MNIST has 60,000 training images"),
        ({"data": {"validation": 1.5}}, r"data.validation: must be a fraction in \(0, 1\)"),
        ({"epoch": 3}, "epoch: unknown field"),
    ],
)
def test_bad_field_is_named(change: dict, message: str) -> None:
    raw = {"epochs": 1, "seeds": 2, "optimizers": {"sgd": {}}, **change}
    with pytest.raises(ConfigError, match=r"^config \(dict\): " + message):
        load_config(raw)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config .*missing.toml: no such file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 1")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(bad)
    yaml = tmp_path / "s.yaml"
    yaml.write_text("epochs: 1")
    with pytest.raises(ConfigError, match="unknown format .yaml"):
        load_config(yaml)
    with pytest.raises(ConfigError, match="optimizers: missing"):
        load_config({"epochs": 1}, require="optimizers")
    with pytest.raises(ConfigError, match="search: missing"):
        load_config({"epochs": 1, "optimizers": ["sgd"]}, require="search")


def test_search_table() -> None:
    raw = {"epochs": 1, "search": {"optimizer": "sgd", "n_trials": 5, "sampler": "random",
                                   "space": {"learning_rate": {"low": 1e-3, "high": 0.5, "log": True}},
                                   "fixed": {"weight_decay": 1e-4}}}
    spec = load_config(raw, require="search").search
    assert spec.optimizer == "sgd" and spec.n_trials == 5 and spec.direction == "maximize"
    assert spec.space == {"learning_rate": {"low": 1e-3, "high": 0.5, "log": True}}
    assert spec.study == "sgd-random"
    for bad, message in [
        ({"space": {"learning_rate": {"low": 0.5, "high": 0.1}}}, "search.space.learning_rate: needs low < high"),
        ({"space": {"learning_rate": {"low": 0.0, "high": 0.1, "log": True}}}, "search.space.learning_rate.low: a log"),
        ({"space": {"learning_rate": {"low": -1.0, "high": 0.1}}}, "search: SGD: hyperparameter 'learning_rate'"),
        ({"space": {"lr": {"low": 0.1, "high": 1.0}}}, "search.space.lr: sgd has no hyperparameter 'lr'"),
        ({"sampler": "grid"}, "search.sampler: must be one of tpe, random"),
        ({"metric": "accuracy"}, "search.metric: must be one of"),
        ({"optimizer": "sgdd"}, "search.optimizer: unknown optimizer 'sgdd'"),
        ({"optimizer": "LBFGS"}, "search.optimizer: a search: 'lbfgs' .* is not a per-parameter rule"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config({"epochs": 1, "search": {**raw["search"], **bad}})


@pytest.mark.parametrize(
    "choices, message",
    [
        ([0.1, "a", -5], r"search.space.learning_rate.choices\[1\]: must be a finite number, got 'a'"),
        ([0.1, 0.2, -5], r"search.space.learning_rate.choices\[2\]: SGD: hyperparameter 'learning_rate' must lie"),
        ([0.1, True], r"search.space.learning_rate.choices\[1\]: must be a finite number, got True"),
        ([0.1, float("nan")], r"search.space.learning_rate.choices\[1\]: must be a finite number, got nan"),
        ([0.1, 0.1], r"search.space.learning_rate.choices: lists a value twice"),
    ],
)
def test_every_search_choice_is_validated(choices: list, message: str) -> None:
    raw = {"epochs": 1, "search": {"optimizer": "sgd", "space": {"learning_rate": {"choices": choices}}}}
    with pytest.raises(ConfigError, match=r"^config \(dict\): " + message):
        load_config(raw)
    # boolean options take booleans only, each of them checked
    raw = {"epochs": 1, "search": {"optimizer": "adam", "space": {"amsgrad": {"choices": [False, 1]}}}}
    with pytest.raises(ConfigError, match=r"search.space.amsgrad.choices\[1\]: must be true or false, got 1"):
        load_config(raw)
    good = {"epochs": 1, "search": {"optimizer": "sgd", "space": {"learning_rate": {"choices": [0.1, 3, 0.01]}}}}
    assert load_config(good).search.space == {"learning_rate": {"choices": [0.1, 3, 0.01]}}


@pytest.mark.parametrize(
    "data, batch_size, message",
    [
        ({"n_train": 100}, 128, r"batch_size: 128 exceeds the 100 training images a run has \(data.n_train = 100\)"),
        ({"n_train": 200, "validation": 0.5}, 128,
         r"batch_size: 128 exceeds the 100 training images a run has \(data.n_train = 200 less data.validation"),
        ({}, 60_001, r"batch_size: 60001 exceeds the 60000 training images a run has \(all of MNIST\)"),
    ],
)
def test_batch_larger_than_the_training_set_is_refused(data: dict, batch_size: int, message: str) -> None:
    raw = {"epochs": 1, "batch_size": batch_size, "data": data, "optimizers": ["sgd"]}
    with pytest.raises(ConfigError, match=r"^config \(dict\): " + message):
        load_config(raw)


def test_batch_equal_to_the_training_set_is_accepted() -> None:
    # the boundary, with the split done as symopt.data.train_val_split does it: round(200 * 0.3) = 60 held out
    import numpy as np

    from symopt.data import train_val_split

    split = train_val_split(np.zeros((200, 1)), np.zeros(200), 0.3, seed=0)
    n = len(split.x_train)
    cfg = load_config({"epochs": 1, "batch_size": n, "data": {"n_train": 200, "validation": 0.3}, "optimizers": ["sgd"]})
    assert cfg.protocol["batch_size"] == n == 140
    with pytest.raises(ConfigError, match=f"batch_size: {n + 1} exceeds the {n} training images"):
        load_config({"epochs": 1, "batch_size": n + 1, "data": {"n_train": 200, "validation": 0.3},
                     "optimizers": ["sgd"]})


def test_shipped_sweep_configurations_are_valid() -> None:
    """Every configuration in experiments/sweeps/ loads; the sensitivity grid is what its section says."""
    folder = Path(__file__).resolve().parent.parent / "experiments" / "sweeps"
    configs = sorted(folder.glob("*.toml"))
    assert configs
    for path in configs:
        load_config(path)
    cfg = load_config(folder / "lr-sensitivity.toml")
    assert cfg.stack_size == 15 and len(cfg.runs()) == 7 * 5 * 3
