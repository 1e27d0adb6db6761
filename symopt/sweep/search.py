"""Hyperparameter search with Optuna (TPE or random), trials trained on the Dask workers.

The client asks Optuna for a trial, submits one :func:`~symopt.sweep.engine.train_run`
task per seed, and tells Optuna the trial's value (the final-epoch ``metric``, mean over
seeds) when its tasks return; up to one trial per worker is in flight. Every trial of
a search has the same structure, so each worker compiles one function and only sets the
sampled values with ``opt.set_hyperparameter``.

The study lives in Optuna's SQLite storage and is resumable: re-running continues until
``n_trials`` trials are COMPLETE. Trials a killed client left RUNNING are marked FAIL on
resume (one client per study at a time). The sampler's seed is ``sampler_seed`` mixed with
the number of trials already stored, so a resumed search does not replay its first draws.
With more than one trial in flight, which trials TPE proposes depends on the order in
which results arrive; each trial's numbers are still a deterministic function of its
hyperparameters.

``stack_size`` > 1 (the config's, or the argument): the client asks Optuna for
``stack_size // len(seeds)`` trials at once (at least one) and trains their runs as
stacked tasks of up to ``stack_size`` members, each with its own sampled values
(:func:`~symopt.sweep.engine.plan_stacks` and :func:`~symopt.sweep.engine.train_stack`,
as ``symopt sweep`` does), then tells each trial its own value. Asking several trials
before telling any is what several workers do anyway (Optuna's samplers support it; TPE
then proposes from the trials finished so far), and each trial's value is that of its
unstacked runs to float round-off. Settings that cannot share a stack (another structure,
a rule that refuses stacks) still go one run per task.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._checks import check_integer, is_integer
from .._extras import require, tqdm
from .._optuna import completed_trials, import_optuna, make_sampler, storage_url
from ..mnist_runs import with_others
from .config import RunSpec, SweepConfig, canonical_json, load_config
from .engine import check_scheduler_address, dask_client, plan_stacks, train_run, train_stack
from .store import check_integrity, check_sqlite_file

__all__ = ["SearchReport", "run_search", "search_summary", "storage_url"]

@dataclass(frozen=True)
class SearchReport:
    """What :func:`run_search` did: trials completed/failed in this call and the study's best so far."""

    storage: Path
    study: str
    complete: int
    new_complete: int
    new_failed: int
    best_value: float | None
    best_params: dict[str, Any]
    seconds: float


def _optuna() -> Any:
    return import_optuna("symopt search", "sweep")


def _distributions(optuna: Any, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    out = {}
    for key, dist in space.items():
        if "choices" in dist:
            out[key] = optuna.distributions.CategoricalDistribution(dist["choices"])
        else:
            out[key] = optuna.distributions.FloatDistribution(dist["low"], dist["high"], log=dist["log"])
    return out


def _open_study(optuna: Any, cfg: SweepConfig, path: Path, lock_timeout: float) -> Any:
    spec = cfg.search
    check_sqlite_file(path, "Optuna storage")
    check_integrity(path, "Optuna storage")
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(storage_url(path), engine_kwargs={"connect_args": {"timeout": lock_timeout}})
    probe = optuna.create_study(study_name=spec.study, storage=storage, direction=spec.direction,
                                load_if_exists=True)
    identity = {"protocol": cfg.protocol, "seeds": cfg.seeds, "optimizer": spec.optimizer, "space": spec.space,
                "fixed": spec.fixed, "metric": spec.metric, "sampler": spec.sampler}
    stored = probe.user_attrs.get("search")
    if stored is None:
        probe.set_user_attr("search", identity)
    elif canonical_json(stored) != canonical_json(identity):
        diff = [k for k in identity if canonical_json(stored.get(k)) != canonical_json(identity[k])]
        raise ValueError(f"{path} holds study {spec.study!r} made with a different {' and '.join(diff)}; "
                         f"use another storage file or search.study name")
    trials = probe.get_trials(deepcopy=False)
    for t in trials:
        if t.state == optuna.trial.TrialState.RUNNING:  # left by a client that was killed
            probe.set_user_attr(f"abandoned_trial_{t.number}", True)
            probe.tell(t.number, state=optuna.trial.TrialState.FAIL)
    sampler = make_sampler(optuna, spec.sampler, spec.sampler_seed, len(trials))
    return optuna.load_study(study_name=spec.study, storage=storage, sampler=sampler)


def run_search(
    config: str | Path | Mapping[str, Any] | SweepConfig,
    storage: str | Path,
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    n_trials: int | None = None,
    progress: bool = True,
    connect_timeout: float = 10.0,
    lock_timeout: float = 10.0,
    timeout: float | None = None,
    dashboard: bool = False,
    stack_size: int | None = None,
) -> SearchReport:
    """Run ``config``'s ``[search]`` until its study has ``n_trials`` complete trials.

    Parameters
    ----------
    config
        A TOML/JSON path or dict with a ``[search]`` table (see :mod:`symopt.sweep.config`).
    storage
        Optuna's SQLite file (created if missing); the study inside is resumed.
    scheduler, n_workers, connect_timeout, timeout, dashboard
        As for :func:`~symopt.sweep.engine.run_sweep`.
    n_trials
        Overrides ``search.n_trials``.
    progress
        A tqdm bar over trials on stderr.
    stack_size
        Train up to this many runs (trials x seeds) together per task, each trial with its
        own values (see the module notes); overrides the config's ``stack_size``.

    Returns
    -------
    SearchReport
    """
    start = time.perf_counter()
    cfg = load_config(config, require="search")
    spec = cfg.search
    assert spec is not None
    target = check_integer("n_trials", n_trials if n_trials is not None else spec.n_trials, 1)
    if stack_size is None:
        stack_size = cfg.stack_size
    elif not is_integer(stack_size) or stack_size < 1:
        raise ValueError(f"stack_size must be a positive integer (runs per stacked task), got {stack_size!r}; "
                         f"nothing was run")
    stack_size = int(stack_size)
    optuna = _optuna()
    require("distributed", "symopt search", "sweep")  # before the storage is created
    if scheduler is not None:
        check_scheduler_address(scheduler)
    path = Path(storage)
    study = _open_study(optuna, cfg, path, lock_timeout)

    def n_complete() -> int:
        return len(completed_trials(optuna, study))

    before = n_complete()
    new_complete = new_failed = 0
    if before < target:
        import symopt

        as_completed = require("distributed", "symopt search", "sweep").as_completed

        defaults = dict(symopt.get(spec.optimizer).hyperparameters)
        distributions = _distributions(optuna, spec.space)
        per_group = max(1, stack_size // len(cfg.seeds))  # trials asked (and stacked) together
        workers = n_workers or min(os.cpu_count() or 1, -(-(target - before) // per_group))
        with dask_client(scheduler, workers, connect_timeout, dashboard) as client:
            parallel = max(1, len(client.scheduler_info().get("workers", {})) or workers)
            bar = tqdm(total=target, initial=before, unit="trial", desc=f"search {spec.study}",
                       disable=not progress, file=sys.stderr, dynamic_ncols=True)
            pending: dict[int, dict[str, Any]] = {}  # trial number -> trial, results per seed, error, runs left
            queue = as_completed(loop=client.loop, timeout=timeout)  # timeout: from now, for all trials
            owner: dict[Any, list[tuple[int, int]]] = {}  # future -> (trial number, seed) of each member
            groups: dict[int, int] = {}  # trials asked together -> how many of them are still pending
            refusals: set[str] = set()

            def launch(group: int) -> None:
                room = target - before - new_complete - len(pending)
                runs, who = [], {}
                for _ in range(min(per_group, room)):
                    trial = study.ask(distributions)
                    hyper = with_others(spec.optimizer, {**defaults, **spec.fixed, **trial.params})
                    for seed in cfg.seeds:
                        run = RunSpec(spec.optimizer, hyper, seed, cfg.protocol, cfg.data_dir)
                        runs.append(run)
                        who[id(run)] = (trial.number, seed)
                    pending[trial.number] = {"trial": trial, "results": {}, "error": None, "left": len(cfg.seeds),
                                             "group": group}
                    groups[group] = groups.get(group, 0) + 1
                tasks, refused = plan_stacks(runs, stack_size)
                for name, reason in refused.items():
                    if name not in refusals:
                        refusals.add(name)
                        _log(f"{name}: trials not stacked, one run per task ({reason})")
                for task in tasks:
                    if len(task) == 1:
                        future = client.submit(train_run, task[0].as_task(), pure=False)
                    else:
                        future = client.submit(train_stack, {"members": [r.as_task() for r in task]}, pure=False)
                    owner[future] = [who[id(r)] for r in task]
                    queue.add(future)

            group = 0
            try:
                while before + new_complete < target:
                    while len(groups) < parallel and before + new_complete + len(pending) < target:
                        launch(group)
                        group += 1
                    try:
                        future = next(queue)
                    except TimeoutError:
                        raise TimeoutError(f"the search did not finish within {timeout:g} s; finished trials are "
                                           f"stored, re-run to resume") from None
                    members = owner.pop(future)
                    try:
                        value, error = future.result(), None
                    except Exception as exc:
                        value, error = None, f"{type(exc).__name__}: {exc}"
                    results = value if isinstance(value, list) else [value] * len(members)
                    for (number, seed), result in zip(members, results):
                        entry = pending[number]
                        if error is None:
                            entry["results"][seed] = result
                        else:
                            entry["error"] = error
                        entry["left"] -= 1
                        if entry["left"]:
                            continue
                        del pending[number]
                        groups[entry["group"]] -= 1
                        if not groups[entry["group"]]:
                            del groups[entry["group"]]
                        ok = _tell(optuna, study, entry, cfg, spec.metric)
                        new_complete += ok
                        new_failed += not ok
                        bar.update(int(ok))
                        if new_failed > target:
                            raise RuntimeError(f"{new_failed} trials of study {spec.study!r} failed "
                                               f"(last: {entry['error'] or 'non-finite value'}); stopping")
            finally:
                bar.close()
                for entry in pending.values():  # interrupted: record what was in flight as failed
                    study.tell(entry["trial"], state=optuna.trial.TrialState.FAIL)
    best_value, best_params = None, {}
    try:
        best = study.best_trial
        best_value, best_params = best.value, dict(best.params)
    except ValueError:
        pass
    return SearchReport(path, spec.study, before + new_complete, new_complete, new_failed, best_value, best_params,
                        time.perf_counter() - start)


def _tell(optuna: Any, study: Any, entry: dict[str, Any], cfg: SweepConfig, metric: str) -> bool:
    """Tell Optuna one trial's outcome; True if it is COMPLETE."""
    trial = entry["trial"]
    if entry["error"] is not None:
        trial.set_user_attr("error", entry["error"][-1000:])
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return False
    results = [entry["results"][s] for s in cfg.seeds]
    curves = [[h[metric] for h in r["history"]] for r in results]
    for epoch in range(max(len(c) for c in curves)):
        # Early stopping may end seeds at different epochs: the mean over the seeds still training.
        reached = [c[epoch] for c in curves if len(c) > epoch]
        trial.report(float(sum(reached) / len(reached)), epoch + 1)
    trial.set_user_attr("seeds", cfg.seeds)
    trial.set_user_attr(metric, curves)
    trial.set_user_attr("train_seconds", [r["train_seconds"] for r in results])
    trial.set_user_attr("workers", [r["worker"] for r in results])
    for fate in ("stopped_epoch", "final_learning_rate"):  # with early stopping / a plateau
        if fate in results[0]:
            trial.set_user_attr(fate, [r[fate] for r in results])
    value = float(sum(c[-1] for c in curves) / len(curves))
    if not math.isfinite(value):
        trial.set_user_attr("error", f"non-finite {metric}: {value}")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return False
    study.tell(trial, value)
    return True


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def search_summary(storage: str | Path, study_name: str, top: int = 5) -> str:
    """The best ``top`` complete trials of a stored study as a Markdown table."""
    optuna = _optuna()
    path = Path(storage)
    if not path.exists():
        raise FileNotFoundError(f"no Optuna storage {path}")
    check_sqlite_file(path, "Optuna storage")
    study = optuna.load_study(study_name=study_name, storage=storage_url(path))
    trials = completed_trials(optuna, study)
    failed = sum(t.state == optuna.trial.TrialState.FAIL for t in study.get_trials(deepcopy=False))
    metric = study.user_attrs.get("search", {}).get("metric", "value")
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    trials.sort(key=lambda t: t.value, reverse=reverse)
    names = sorted({k for t in trials for k in t.params})
    lines = [f"| trial | {metric} | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for t in trials[:top]:
        values = [f"{t.params[k]:.4g}" if isinstance(t.params.get(k), float) else str(t.params.get(k)) for k in names]
        lines.append(f"| {t.number} | {t.value:.4f} | " + " | ".join(values) + " |")
    lines.append(f"study {study_name!r} in {path}: {len(trials)} complete trial(s), {failed} failed")
    return "\n".join(lines)
