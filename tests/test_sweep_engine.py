"""The Dask sweep engine on real MNIST: equality with direct training, resume, retry, and fault tests.

A module-wide ``LocalCluster`` (2 process workers on 127.0.0.1) is the "existing
cluster" the API runs the reference sweep on (``scheduler=ADDRESS``). The fault tests run
the CLI in a subprocess with its own embedded cluster: one SIGKILLs a worker mid-sweep,
one sends SIGINT to the client; both must end with a database equal to the reference.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import symopt
from symopt.data import load_mnist, subset
from symopt.nn import MLP
from symopt.sweep import ResultStore, load_config, run_sweep
from symopt.train import Trainer

EPOCHS, SEEDS, LRS, N_TRAIN, N_TEST, BATCH = 2, 8, (0.05, 0.2), 10_000, 500, 64
MODEL = {"sizes": [784, 32, 10], "dropout": 0.1}


def _config(data_dir: Path, **change) -> dict:
    return {"epochs": EPOCHS, "seeds": SEEDS, "batch_size": BATCH, "model": MODEL,
            "data": {"n_train": N_TRAIN, "n_test": N_TEST, "dir": str(data_dir)},
            "optimizers": {"sgd": {"learning_rate": list(LRS)}}, **change}


def _comparable(db: Path) -> tuple[list, list, list]:
    """Everything in the database except the timing/placement columns."""
    conn = sqlite3.connect(db)
    try:
        meta = conn.execute("SELECT key, value FROM meta WHERE key != 'created' ORDER BY key").fetchall()
        runs = conn.execute(
            "SELECT run_key, optimizer, hyperparameters, seed, status, error, final_train_loss, final_test_loss, "
            "final_test_accuracy FROM runs ORDER BY run_key").fetchall()
        epochs = conn.execute(
            "SELECT r.run_key, e.epoch, e.train_loss, e.test_loss, e.test_accuracy FROM epochs e "
            "JOIN runs r USING (run_id) ORDER BY r.run_key, e.epoch").fetchall()
    finally:
        conn.close()
    return meta, runs, epochs


def _recorded(db: Path) -> list[tuple[int, int]]:
    """(pid, number of epoch rows) of every recorded run; [] while the database does not exist yet."""
    if not db.exists():
        return []
    try:
        conn = sqlite3.connect(db, timeout=5)
        try:
            return conn.execute("SELECT r.pid, COUNT(e.epoch) FROM runs r LEFT JOIN epochs e USING (run_id) "
                                "GROUP BY r.run_id ORDER BY r.run_id").fetchall()
        finally:
            conn.close()
    except sqlite3.OperationalError:  # schema not created yet
        return []


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status  # a zombie has exited


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "symopt.cli", *args]


def _env(data_dir: Path) -> dict[str, str]:
    return {**os.environ, "SYMOPT_DATA": str(data_dir)}


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.CRITICAL) as c:
        yield c.scheduler_address


@pytest.fixture(scope="module")
def reference(cluster, real_mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The undisturbed sweep, run through the API on the existing cluster."""
    db = tmp_path_factory.mktemp("sweep") / "reference.db"
    report = run_sweep(_config(real_mnist_dir), db, scheduler=cluster, progress=False, timeout=240)
    assert (report.total, report.done, report.failed, report.skipped, report.workers) == (16, 16, 0, 0, 2)
    return db


def test_database_holds_every_run_once_with_the_numbers_of_direct_training(reference, real_mnist_dir) -> None:
    meta, runs, epochs = _comparable(reference)
    assert len(runs) == 16 and len(epochs) == 16 * EPOCHS
    assert {r[4] for r in runs} == {"done"}
    assert sorted((json.loads(r[2])["learning_rate"], r[3]) for r in runs) == sorted(
        (lr, s) for lr in LRS for s in range(SEEDS))
    # two runs trained here directly, each on a freshly built model, optimizer and compiled function
    data = subset(load_mnist(real_mnist_dir), N_TRAIN, 0, n_test=N_TEST)
    with ResultStore(reference) as store:
        stored = {(r["hyperparameters"]["learning_rate"], r["seed"]): r for r in store.runs()}
    for lr, seed in ((0.2, 5), (0.05, 2)):
        model = MLP([784, 32, 10], dropout=0.1, seed=seed)
        trainer = Trainer(model, symopt.SGD(model.params, learning_rate=lr), data.x_train, data.y_train,
                          data.x_test, data.y_test, batch_size=BATCH)
        history = trainer.fit(EPOCHS, seed, progress=False)
        run = stored[(lr, seed)]
        assert run["train_loss"] == [h.train_loss for h in history]
        assert run["test_loss"] == [h.test_loss for h in history]
        assert run["test_accuracy"] == [h.test_accuracy for h in history]
        assert run["final_test_accuracy"] == history[-1].test_accuracy
    # the learning rate matters: same seed, other rate, other numbers
    assert stored[(0.2, 5)]["train_loss"] != stored[(0.05, 5)]["train_loss"]
    # every run was trained on a worker; each worker compiled once (one structure) and reused it
    conn = sqlite3.connect(reference)
    per_worker = conn.execute("SELECT worker, SUM(compile_seconds > 0), COUNT(*) FROM runs GROUP BY worker").fetchall()
    conn.close()
    assert len(per_worker) == 2 and all(compiled == 1 for _, compiled, _ in per_worker)
    with ResultStore(reference) as store:
        assert "| sgd learning_rate=0.2 | 8 |" in store.summary()


def test_resume_skips_finished_runs_and_retry_failed_reruns(reference, cluster, real_mnist_dir, tmp_path) -> None:
    db = tmp_path / "resume.db"
    shutil.copy(reference, db)
    report = run_sweep(_config(real_mnist_dir), db, scheduler=cluster, progress=False, timeout=60)
    assert (report.skipped, report.done, report.workers) == (16, 0, 0)  # nothing to run: no cluster contacted
    assert _comparable(db) == _comparable(reference)

    # one run lost (deleted) and one recorded as failed
    cfg = load_config(_config(real_mnist_dir))
    lost, failed = cfg.runs()[3], cfg.runs()[12]
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("DELETE FROM runs WHERE run_key IN (?, ?)", (lost.key, failed.key))
    conn.commit()
    conn.close()
    with ResultStore(db, cfg.protocol) as store:
        store.record(failed, error="RuntimeError: the worker ran out of memory")
    report = run_sweep(cfg, db, scheduler=cluster, progress=False, timeout=120)
    assert (report.skipped, report.done, report.failed) == (15, 1, 0)
    with ResultStore(db) as store:
        assert store.status()[failed.key] == "failed"
    report = run_sweep(cfg, db, scheduler=cluster, progress=False, retry_failed=True, timeout=120)
    assert (report.skipped, report.done) == (15, 1)
    assert _comparable(db) == _comparable(reference)

    # more seeds: only the new runs are trained, the old ones are untouched
    report = run_sweep(_config(real_mnist_dir, seeds=[0, 1, 8]), db, scheduler=cluster, progress=False, timeout=120)
    assert (report.total, report.skipped, report.done) == (6, 4, 2)
    with ResultStore(db) as store:
        assert store.counts() == {"done": 18, "failed": 0}


def test_placement_keeps_each_compiled_function_on_few_workers() -> None:
    from symopt.sweep.engine import _placement

    cfg = load_config({"epochs": 1, "seeds": 3, "optimizers": {
        "sgd": {"learning_rate": [0.1, 0.2]}, "adam": {"amsgrad": [False, True]}}})
    runs = cfg.runs()
    assert _placement(runs, ["tcp://a"]) == {}
    placement = _placement(runs, ["tcp://a", "tcp://b"])
    by_worker: dict[str, set] = {}
    for spec in runs:
        by_worker.setdefault(placement[spec.key], set()).add((spec.optimizer, spec.hyperparameters.get("amsgrad")))
    # the learning-rate grid is one compiled function; amsgrad true/false are two
    assert by_worker == {"tcp://a": {("adam", False), ("adam", True)}, "tcp://b": {("sgd", None)}}
    assert sorted(list(placement.values()).count(w) for w in ("tcp://a", "tcp://b")) == [6, 6]


def _run_cli_until(db: Path, args: list[str], data_dir: Path, log: Path, want: int, deadline_s: float,
                   own_group: bool = False):
    """Start the CLI; return (process, recorded runs) once ``want`` runs are recorded.

    ``own_group``: in a new session, so that a signal can go to its whole process group
    (client and local-cluster workers) as a terminal's Ctrl-C does.
    """
    # A process started in the background (`make test &`, nohup, some CI runners) inherits SIGINT
    # ignored, and so would the CLI: give it the disposition a terminal's Ctrl-C meets.
    proc = subprocess.Popen(_cli(args), env=_env(data_dir), stdout=log.open("w"), stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            start_new_session=own_group)
    deadline = time.monotonic() + deadline_s
    rows: list = []
    while time.monotonic() < deadline and proc.poll() is None:
        rows = _recorded(db)
        if len(rows) >= want:
            return proc, rows
        time.sleep(0.02)
    proc.kill()
    proc.wait(timeout=30)
    pytest.fail(f"the sweep recorded {len(rows)} run(s) before the deadline; log:\n{log.read_text()[-3000:]}")


def test_client_interrupted_then_resumed(reference, cluster, real_mnist_dir, tmp_path) -> None:
    """SIGINT to the CLI running its own cluster (1 worker); the re-run completes the database.

    The interrupted grid has 4x the reference's seeds, so work is always left when the
    signal lands however fast the runs go; its first 8 seeds are compared with the reference.
    """
    seeds = 4 * SEEDS
    total = 2 * seeds
    config = tmp_path / "sweep.toml"
    data_dir = str(real_mnist_dir).replace("\\", "/")
    config.write_text(
        f"epochs = {EPOCHS}\nseeds = {seeds}\nbatch_size = {BATCH}\n"
        f"[model]\nsizes = [784, 32, 10]\ndropout = 0.1\n"
        f"[data]\nn_train = {N_TRAIN}\nn_test = {N_TEST}\ndir = \"{data_dir}\"\n"
        f"[optimizers.sgd]\nlearning_rate = [{LRS[0]}, {LRS[1]}]\n")
    db, log = tmp_path / "interrupted.db", tmp_path / "interrupted.log"
    args = ["sweep", str(config), "--db", str(db), "--workers", "1", "--no-progress", "--no-figures"]
    proc, rows = _run_cli_until(db, args, real_mnist_dir, log, want=1, deadline_s=120)
    try:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert log.read_text().splitlines() == [
        f"symopt: interrupted; finished runs are recorded in {db}; run the same command again to resume"]
    partial = _recorded(db)
    assert 1 <= len(partial) < total and all(n == EPOCHS for _, n in partial)  # no half-recorded run
    # the client took its cluster down with it: its worker is gone
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid, _ in partial) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid, _ in partial)

    # resumed on the existing cluster (its workers have the function compiled already)
    resume = ["sweep", str(config), "--db", str(db), "--scheduler", cluster, "--no-progress", "--no-figures"]
    done = subprocess.run(_cli(resume), env=_env(real_mnist_dir),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{len(partial)} of {total} run(s) already recorded, skipping them" in done.stderr
    assert f"{total - len(partial)} run(s) finished, 0 failed, {len(partial)} skipped" in done.stdout
    _, runs, epochs = _comparable(db)
    _, want_runs, want_epochs = _comparable(reference)
    keys = {r[0] for r in want_runs}
    assert len(runs) == total
    assert [r for r in runs if r[0] in keys] == want_runs
    assert [e for e in epochs if e[0] in keys] == want_epochs


def test_worker_killed_mid_sweep(reference, cluster, real_mnist_dir, tmp_path) -> None:
    """The CLI on the existing cluster; the worker that recorded the first run is SIGKILLed right after.

    Its nanny starts a replacement and Dask reruns the task it held elsewhere. (Last in
    this module: the replacement worker has nothing compiled.)
    """
    config = tmp_path / "sweep.json"
    config.write_text(json.dumps(_config(real_mnist_dir)))
    db, log = tmp_path / "killed.db", tmp_path / "killed.log"
    args = ["sweep", str(config), "--db", str(db), "--scheduler", cluster, "--no-progress", "--no-figures"]
    proc, rows = _run_cli_until(db, args, real_mnist_dir, log, want=1, deadline_s=120)
    try:
        victim = rows[0][0]
        os.kill(victim, signal.SIGKILL)
        killed_after = len(_recorded(db))
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert not _alive(victim)
    assert killed_after < 16  # it was mid-sweep: runs were still to come
    after = _recorded(db)
    assert len(after) == 16 and all(n == EPOCHS for _, n in after)  # every run exactly once, complete
    assert _comparable(db) == _comparable(reference)
    assert "16 run(s) finished, 0 failed" in log.read_text()


def test_ctrl_c_to_the_process_group_is_one_line(real_mnist_dir, tmp_path) -> None:
    """SIGINT to the whole process group (client and its workers), as a terminal's Ctrl-C sends it.

    Before, each worker printed its KeyboardInterrupt traceback (~70 lines for 2 workers).
    """
    config = tmp_path / "sweep.json"
    config.write_text(json.dumps(_config(real_mnist_dir, seeds=4 * SEEDS)))
    db, log = tmp_path / "group.db", tmp_path / "group.log"
    args = ["sweep", str(config), "--db", str(db), "--workers", "2", "--no-progress", "--no-figures"]
    proc, _ = _run_cli_until(db, args, real_mnist_dir, log, want=1, deadline_s=120, own_group=True)
    try:
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 130, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert log.read_text().splitlines() == [
        f"symopt: interrupted; finished runs are recorded in {db}; run the same command again to resume"]
    partial = _recorded(db)
    assert 1 <= len(partial) < 2 * 4 * SEEDS and all(n == EPOCHS for _, n in partial)  # no half-recorded run


def test_second_sweep_on_the_same_database_is_refused(reference, real_mnist_dir, tmp_path) -> None:
    """Two real `symopt sweep` processes, one database: the second refuses in one line and trains nothing.

    The first is stopped (SIGSTOP) once it has recorded a run, so it certainly holds the
    database when the second starts; resumed, it completes the grid with every run once.
    """
    config = tmp_path / "sweep.json"
    config.write_text(json.dumps(_config(real_mnist_dir)))
    db, log = tmp_path / "shared.db", tmp_path / "first.log"
    args = ["sweep", str(config), "--db", str(db), "--workers", "1", "--no-progress", "--no-figures"]
    first, _ = _run_cli_until(db, args, real_mnist_dir, log, want=1, deadline_s=120)
    try:
        first.send_signal(signal.SIGSTOP)
        second = subprocess.run(_cli(args), env=_env(real_mnist_dir), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr[-3000:]
        assert second.stderr.strip().splitlines() == [
            f"symopt: error: results database {db} is in use by another sweep (one sweep per database at a time, "
            f"so that no run is trained twice); nothing was changed: wait for it to finish, then run again to add "
            f"what is missing"]
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=180) == 0, log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()
            first.wait(timeout=30)
    assert "16 run(s) finished, 0 failed, 0 skipped" in log.read_text()
    assert len({pid for pid, _ in _recorded(db)}) == 1  # all trained by the first sweep's one worker
    assert _comparable(db) == _comparable(reference)  # every run once, with the reference's numbers


_CLUSTER_SCRIPT = """
import os, sys
from symopt.sweep.engine import dask_client
if __name__ == "__main__":
    with dask_client(None, 2, dashboard=sys.argv[1] == "dashboard"):
        print("up", flush=True)
        sys.stdin.readline()
"""


def _listening(pid: int) -> list[int]:
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return sorted({c.laddr.port for p in procs for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN})


def _answers_http(port: int) -> bool:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/health")
        conn.getresponse()
        return True
    except (http.client.HTTPException, OSError):
        return False  # a Dask comm port: not HTTP
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["default", "dashboard"])
def test_local_cluster_opens_no_http_port_unless_asked(tmp_path, mode: str) -> None:
    """Every port the client and its workers listen on is probed with an HTTP request.

    Dask starts an HTTP server in the scheduler (port 8787) and in each worker even
    with ``dashboard_address=None``; by default none may be left. ``--dashboard`` is the
    positive control: then the scheduler answers HTTP.
    """
    script = tmp_path / "cluster.py"
    script.write_text(_CLUSTER_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up", proc.stderr.read()
        ports = _listening(proc.pid)
        http = [p for p in ports if _answers_http(p)]
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert len(ports) >= 4  # scheduler, 2 nannies, 2 workers (comm ports)
    if mode == "default":
        assert http == [] and 8787 not in ports
    else:
        assert len(http) >= 1
