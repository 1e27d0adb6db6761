"""Hyperparameter search: learning rate and weight decay of SGD on a 500-image MNIST subset.

The seed's protocol: 500 training images, 20 % of them held out for validation, an MLP
784-100x6-10 (ReLU, He initialisation) trained with plain SGD (mini-batch 100, 50 epochs)
and an L2 weight decay on the weight matrices; 100 trials with the learning rate drawn
log-uniformly from 1e-6..1e-2 and the weight decay from 1e-8..1e-4; trials ranked by their
final validation accuracy. The seed reads off that learning rates of 1e-3..1e-2 and weight
decays of 1e-8..1e-6 "train well".

Here the trials run through Optuna in an SQLite database, twice: once with random
search (``RandomSampler``, the seed's method) and once with TPE (``TPESampler``), both
seeded, as two studies in the same file. Re-running continues both studies up to the
requested number of trials (``load_if_exists``), so an interrupted search resumes.

Every trial reuses ONE compiled train function and ONE compiled eval function: the
learning rate and the weight decay are shared scalars of the optimiser, changed with
``opt.set_hyperparameter``, and the parameters and the optimiser state are reset with
``set_value`` / ``load_state_dict`` before each trial. Every trial starts from the same
initial weights and sees the same mini-batch order (common random numbers), so trials
differ only in their hyperparameters and a trial is reproducible exactly from them.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._extras import MissingExtraError, install_hint
from .._optuna import completed_trials, import_optuna, make_sampler, storage_url
from . import _common

DESCRIPTION = "random search vs TPE (Optuna, SQLite, resumable) of SGD learning rate and weight decay"

NAME = "hyperparameter-search"
SAMPLERS = ("random", "tpe")
INSTALL_HINT = install_hint("experiments")

#: Raised when Optuna, which this experiment needs, is not installed (a ModuleNotFoundError).
OptunaMissingError = MissingExtraError


def _optuna() -> Any:
    """Import Optuna, or fail with one message saying how to install it."""
    return import_optuna(f"the {NAME!r} experiment", "experiments")


@dataclass(frozen=True)
class Config:
    """The protocol of one search; stored in the database and checked on resume."""

    n_samples: int = 500  # the seed: x_train[:500]
    val_fraction: float = 0.2  # the seed: validation_rate = 0.20
    sizes: tuple[int, ...] = (784, 100, 100, 100, 100, 100, 100, 10)  # the seed: hidden_size_list = [100] * 6
    epochs: int = 50  # the seed: epocs = 50
    batch_size: int = 100  # the seed: mini_batch_size = 100
    n_trials: int = 100  # the seed: optimization_trial = 100
    lr_range: tuple[float, float] = (1e-6, 1e-2)  # the seed: 10 ** uniform(-6, -2)
    wd_range: tuple[float, float] = (1e-8, 1e-4)  # the seed: 10 ** uniform(-8, -4)
    samplers: tuple[str, ...] = field(default=SAMPLERS)

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


FULL = Config()
# Quick: a 2-hidden-layer MLP (compiles in seconds, the 6-hidden-layer one takes ~20 s here).
QUICK = Config(n_samples=200, sizes=(784, 50, 50, 10), epochs=4, n_trials=4)


def results_path(results_dir: Path, quick: bool) -> Path:
    return Path(results_dir) / (f"{NAME}-quick.db" if quick else f"{NAME}.db")


def study_name(sampler: str, seed: int) -> str:
    return f"{sampler}-seed{seed}"


# ------------------------------------------------------------------------ the compiled search
class Search:
    """One model, one SGD optimiser, one compiled train and one compiled eval function.

    ``train(lr, wd)`` resets the parameters and the optimiser state to the values they had
    at construction, sets the two hyperparameters and trains ``config.epochs`` epochs;
    it returns the validation and training accuracy after every epoch (index 0: before
    training). Nothing is compiled after ``__init__``.
    """

    def __init__(self, config: Config, seed: int):
        from .. import SGD
        from ..data import train_val_split
        from ..nn import MLP
        from ..train import Trainer

        self.config, self.seed = config, int(seed)
        data = _common.mnist_subset(config.n_samples, n_test=1, seed=seed)
        split = train_val_split(data.x_train, data.y_train, config.val_fraction, seed=seed)
        self.split = split
        self.n_val, self.n_fit = len(split.y_val), len(split.y_train)
        self.model = MLP(list(config.sizes), activation="relu", init="he", seed=seed)
        # The seed's weight decay acts on the weight matrices only (0.5 * lambda * sum W^2).
        self.opt = SGD(
            self.model.params, learning_rate=config.lr_range[1], weight_decay=0.0,
            weight_decay_mask=lambda p: p.ndim >= 2,
        )
        # The eval function sees validation rows then training rows; with eval batches of
        # n_val rows, batch 0 is the validation set and batches 1.. the training set.
        x_eval = np.concatenate([split.x_val, split.x_train])
        y_eval = np.concatenate([split.y_val, split.y_train])
        self.batch_size = min(config.batch_size, self.n_fit)
        self.trainer = Trainer(
            self.model, self.opt, split.x_train, split.y_train, x_eval, y_eval,
            batch_size=self.batch_size, eval_batch_size=self.n_val,
            on_nonfinite="continue",  # a diverging learning rate is a result (scored 0), not an error
        )
        self.trainer.warm_up()  # JIT-compile now (restores every variable it touched)
        self.initial_params = [p.get_value(borrow=False) for p in self.model.params]
        self.initial_state = self.opt.state_dict()

    def accuracies(self) -> tuple[float, float]:
        """(validation accuracy, training accuracy) of the current parameters."""
        val = float(self.trainer.eval_step(0)[1]) / self.n_val
        correct, seen = 0.0, 0
        i = 1
        while seen < self.n_fit:
            correct += float(self.trainer.eval_step(i)[1])
            seen += self.n_val
            i += 1
        return val, correct / self.n_fit

    def train(self, lr: float, wd: float) -> dict[str, Any]:
        for param, value in zip(self.model.params, self.initial_params):
            param.set_value(value.copy())
        self.opt.load_state_dict(self.initial_state)
        self.opt.set_hyperparameter("learning_rate", float(lr))
        self.opt.set_hyperparameter("weight_decay", float(wd))
        rng = np.random.default_rng(self.seed)
        start = time.perf_counter()
        val, tr = self.accuracies()
        val_acc, train_acc, train_loss = [val], [tr], []
        for _ in range(self.config.epochs):
            train_loss.append(self.trainer.run_epoch(rng))
            val, tr = self.accuracies()
            val_acc.append(val)
            train_acc.append(tr)
        return {
            "val_accuracy": val_acc, "train_accuracy": train_acc, "train_loss": train_loss,
            "seconds": time.perf_counter() - start,
        }


# ------------------------------------------------------------------------ run
def _study(optuna: Any, path: Path, sampler: str, seed: int, n_done: int) -> Any:
    return optuna.create_study(
        study_name=study_name(sampler, seed), storage=storage_url(path),
        sampler=make_sampler(optuna, sampler, seed, n_done), direction="maximize", load_if_exists=True,
    )


def _completed(study: Any) -> list[Any]:
    return completed_trials(_optuna(), study)


def run(results_dir: Path, quick: bool = False, seed: int = 0, progress: bool = True) -> Path:
    optuna = _optuna()
    config = QUICK if quick else FULL
    path = results_path(results_dir, quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    search: Search | None = None
    compile_seconds = 0.0
    for sampler in config.samplers:
        study = _study(optuna, path, sampler, seed, 0)
        stored = study.user_attrs.get("config")
        if stored is None:
            study.set_user_attr("config", config.as_dict())
            study.set_user_attr("seed", seed)
            study.set_user_attr("sampler", sampler)
            study.set_user_attr("machine", _common.machine_info())
            study.set_user_attr("optuna", optuna.__version__)
        elif stored != config.as_dict():
            raise ValueError(
                f"{path} holds study {study.study_name!r} run with a different protocol ({stored}); "
                f"delete the file or use another --results-dir"
            )
        n_done = len(_completed(study))
        if n_done >= config.n_trials:
            continue
        study = _study(optuna, path, sampler, seed, n_done)
        if search is None:
            start = time.perf_counter()
            search = Search(config, seed)
            compile_seconds = time.perf_counter() - start
            study.set_user_attr("compile_seconds", compile_seconds)

        def objective(trial: Any) -> float:
            lr = trial.suggest_float("learning_rate", *config.lr_range, log=True)
            wd = trial.suggest_float("weight_decay", *config.wd_range, log=True)
            out = search.train(lr, wd)
            for epoch, acc in enumerate(out["val_accuracy"]):
                trial.report(acc, epoch)
            trial.set_user_attr("train_accuracy", out["train_accuracy"])
            trial.set_user_attr("train_loss", out["train_loss"])
            trial.set_user_attr("seconds", out["seconds"])
            if progress:
                print(
                    f"[{NAME}] {sampler} trial {trial.number + 1}/{config.n_trials}: lr {lr:.2e}, wd {wd:.2e} "
                    f"-> val acc {out['val_accuracy'][-1]:.3f} ({out['seconds']:.2f} s)", flush=True,
                )
            value = out["val_accuracy"][-1]
            return value if math.isfinite(value) else 0.0

        # Count only completed trials: a trial left RUNNING by a killed process is not redone
        # under its number but replaced by a new one.
        while len(_completed(study)) < config.n_trials:
            study.optimize(objective, n_trials=config.n_trials - len(_completed(study)))
    return path


# ------------------------------------------------------------------------ reading results
def load(path: Path) -> dict[str, Any]:
    """Every study in the database as plain data: {study name: {attrs, trials}}."""
    optuna = _optuna()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no results file {path}")
    storage = storage_url(path)
    out: dict[str, Any] = {}
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = []
        for t in _completed(study):
            curve = [t.intermediate_values[e] for e in sorted(t.intermediate_values)]
            trials.append({
                "number": t.number,
                "learning_rate": t.params["learning_rate"],
                "weight_decay": t.params["weight_decay"],
                "val_accuracy": curve,
                "final_val_accuracy": t.value,
                **t.user_attrs,
            })
        trials.sort(key=lambda t: t["number"])
        out[summary.study_name] = {"attrs": dict(study.user_attrs), "trials": trials}
    if not out:
        raise ValueError(f"{path} holds no studies")
    return out


def export_json(path: Path, out: Path) -> Path:
    """The database's trials as JSON (for readers without Optuna)."""
    return _common.write_json(out, load(path))


def best_so_far(values: list[float]) -> list[float]:
    return list(np.maximum.accumulate(np.asarray(values, dtype=float)))


# ------------------------------------------------------------------------ plots
def plot(results: Path, figures_dir: Path) -> list[Path]:
    studies = load(results)
    figures_dir = Path(figures_dir)
    quick = Path(results).name.endswith("-quick.db")
    prefix = f"{NAME}-quick" if quick else NAME
    names = sorted(studies)
    seeds = sorted({studies[n]["attrs"].get("seed", 0) for n in names})
    seed = seeds[0]
    config = next(iter(studies.values()))["attrs"]["config"]
    paths = []

    # 1. Top-20 validation curves of random search (the seed's figure), train accuracy dashed.
    random_trials = studies.get(study_name("random", seed), studies[names[0]])["trials"]
    top = sorted(random_trials, key=lambda t: -t["final_val_accuracy"])[:20]
    cols = 5
    rows = max(1, math.ceil(len(top) / cols))
    fig, axes = _common.figure(rows, cols, figsize=(11, 2.15 * rows + 0.8), sharex=True, sharey=True, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(top):
            ax.axis("off")
            continue
        t = top[k]
        x = np.arange(len(t["val_accuracy"]))
        ax.plot(x, t["val_accuracy"], color="C0", label="validation")
        ax.plot(x, t["train_accuracy"], "--", color="C1", label="training")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.set_title(
            f"#{k + 1}: val {t['final_val_accuracy']:.2f}\nlr {t['learning_rate']:.1e}, wd {t['weight_decay']:.1e}",
            fontsize=8.5,
        )
        if k % cols == 0:
            ax.set_ylabel("accuracy")
        if k // cols == rows - 1 or k + cols >= len(top):
            ax.set_xlabel("epoch")
    axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"Random search, best {len(top)} of {len(random_trials)} trials by final validation accuracy "
        f"(SGD, MLP {'-'.join(map(str, config['sizes'][:2]))}x{len(config['sizes']) - 2}-10, "
        f"{config['n_samples']} MNIST images, 20% validation)",
        fontsize=10,
    )
    fig.tight_layout()
    paths.append(_common.save_png(fig, figures_dir / f"{prefix}-top20.png", dpi=85))

    # 2. lr vs weight decay coloured by final validation accuracy, one panel per sampler.
    import matplotlib.pyplot as plt

    fig, axes = _common.figure(1, len(config["samplers"]), figsize=(11, 4.6), sharex=True, sharey=True, squeeze=False)
    norm = plt.Normalize(0.0, 1.0)
    sc = None
    for ax, sampler in zip(axes.flat, config["samplers"]):
        trials = studies.get(study_name(sampler, seed), {"trials": []})["trials"]
        if trials:
            lr = [t["learning_rate"] for t in trials]
            wd = [t["weight_decay"] for t in trials]
            acc = [t["final_val_accuracy"] for t in trials]
            sc = ax.scatter(lr, wd, c=acc, cmap="viridis", norm=norm, s=28, edgecolors="k", linewidths=0.3)
            best = max(trials, key=lambda t: t["final_val_accuracy"])
            ax.scatter([best["learning_rate"]], [best["weight_decay"]], marker="*", s=250, facecolors="none",
                       edgecolors="red", linewidths=1.3, label=f"best: val {best['final_val_accuracy']:.2f}")
            ax.legend(loc="upper left", fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(config["lr_range"][0] / 1.6, config["lr_range"][1] * 1.6)  # room for edge points
        ax.set_ylim(config["wd_range"][0] / 1.6, config["wd_range"][1] * 1.6)
        ax.set_xlabel("learning rate (log scale)")
        ax.set_title(f"{'random search' if sampler == 'random' else 'TPE'} ({len(trials)} trials)")
        ax.grid(alpha=0.3, which="major")
    axes.flat[0].set_ylabel("weight decay λ (log scale)")
    if sc is not None:
        fig.colorbar(sc, ax=list(axes.flat), label="final validation accuracy")
    fig.suptitle("Sampled hyperparameters, coloured by final validation accuracy", fontsize=11)
    paths.append(_common.save_png(fig, figures_dir / f"{prefix}-scatter.png"))

    # 3. Best-so-far validation accuracy vs trial number, both samplers, every seed.
    fig, ax = _common.figure(figsize=(7, 4.2))
    styles = {"random": ("C0", "random search (RandomSampler)"), "tpe": ("C3", "TPE (TPESampler)")}
    for sampler in config["samplers"]:
        color, label = styles.get(sampler, ("C2", sampler))
        for i, s in enumerate(seeds):
            trials = studies.get(study_name(sampler, s), {"trials": []})["trials"]
            if not trials:
                continue
            curve = best_so_far([t["final_val_accuracy"] for t in trials])
            ax.step(np.arange(1, len(curve) + 1), curve, where="post", color=color,
                    label=label + (f", seed {s}" if len(seeds) > 1 else ""), alpha=1.0 if i == 0 else 0.6,
                    lw=3.0 if sampler == "random" else 1.5)
    startup = 10  # TPESampler's default n_startup_trials: random draws from the same seed as RandomSampler
    if len(config["samplers"]) > 1 and config["n_trials"] > startup:
        ax.axvline(startup + 0.5, color="gray", ls=":", lw=1)
        ax.text(startup + 1, ax.get_ylim()[0] + 0.02, "TPE's random start-up ends\n(trials 1-10 identical)",
                fontsize=8, color="gray", va="bottom")
    ax.set_xlabel("trial")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title("Random search vs TPE: best final validation accuracy after n trials")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    paths.append(_common.save_png(fig, figures_dir / f"{prefix}-best-so-far.png"))
    return paths



# ------------------------------------------------------------------------ summary
def _region(trials: list[dict[str, Any]], top: int = 10) -> str:
    good = sorted(trials, key=lambda t: -t["final_val_accuracy"])[:top]
    lr = [t["learning_rate"] for t in good]
    wd = [t["weight_decay"] for t in good]
    return (
        f"best {len(good)} trials (val acc {good[-1]['final_val_accuracy']:.2f}..{good[0]['final_val_accuracy']:.2f}): "
        f"lr {min(lr):.1e}..{max(lr):.1e}, wd {min(wd):.1e}..{max(wd):.1e}"
    )


def summarize(results: Path) -> str:
    studies = load(results)
    lines = [f"{NAME} ({Path(results).name}):"]
    compiles = [s["attrs"]["compile_seconds"] for s in studies.values() if "compile_seconds" in s["attrs"]]
    for name in sorted(studies):
        trials = studies[name]["trials"]
        if not trials:
            lines.append(f"  {name}: no completed trials")
            continue
        best = max(trials, key=lambda t: t["final_val_accuracy"])
        curve = best_so_far([t["final_val_accuracy"] for t in trials])
        target = 0.95 * best["final_val_accuracy"]
        first = next(i + 1 for i, v in enumerate(curve) if v >= target)
        seconds = [t.get("seconds", float("nan")) for t in trials]
        lines.append(
            f"  {name}: {len(trials)} trials; best val acc {best['final_val_accuracy']:.3f} "
            f"(trial {best['number']}, lr {best['learning_rate']:.2e}, wd {best['weight_decay']:.2e}); "
            f"best-so-far after 10/25/50 trials: "
            + "/".join(f"{curve[min(n, len(curve)) - 1]:.3f}" for n in (10, 25, 50))
            + f"; 95% of the best first reached at trial {first}; "
            f"median val acc {np.median([t['final_val_accuracy'] for t in trials]):.3f}; "
            f"{np.mean(seconds):.2f} s per trial"
        )
        lines.append(f"    {_region(trials)}")
        in_seed_box = [t for t in trials if 1e-3 <= t["learning_rate"] <= 1e-2 and t["weight_decay"] <= 1e-6]
        outside = [t for t in trials if t["learning_rate"] < 1e-3]
        if in_seed_box or outside:
            lines.append(
                f"    seed's region (lr 1e-3..1e-2, wd 1e-8..1e-6): {len(in_seed_box)} trials, median val acc "
                f"{np.median([t['final_val_accuracy'] for t in in_seed_box]) if in_seed_box else float('nan'):.3f}; "
                f"lr < 1e-3: {len(outside)} trials, median "
                f"{np.median([t['final_val_accuracy'] for t in outside]) if outside else float('nan'):.3f}"
            )
    if compiles:
        lines.append(f"  one train + one eval function compiled for all studies of a session: {max(compiles):.1f} s")
    return "\n".join(lines)


def sqlite_trial_count(path: Path) -> dict[str, int]:
    """Completed trials per study, read with the sqlite3 module alone (no Optuna)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        rows = con.execute(
            "SELECT s.study_name, COUNT(t.trial_id) FROM studies s LEFT JOIN trials t "
            "ON t.study_id = s.study_id AND t.state = 'COMPLETE' GROUP BY s.study_name"
        ).fetchall()
    return dict(rows)
