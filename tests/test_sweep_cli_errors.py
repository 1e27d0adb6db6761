"""``symopt sweep``/``search`` on bad input: one line on stderr, exit 2, nothing created or overwritten.

No training happens here: every refusal comes before a cluster is started.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from symopt.cli import main

GOOD = """epochs = 1
seeds = 2
[model]
sizes = [784, 16, 10]
[data]
n_train = 500
n_test = 100
[optimizers.sgd]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on exit: nothing listens there


def _one_line_error(capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("symopt: error: ") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize(
    "text, fragment",
    [
        (GOOD.replace("[optimizers.sgd]", "[optimizers.sgdd]"), "optimizers.sgdd: unknown optimizer 'sgdd'"),
        (GOOD.replace("seeds = 2", "seeds = -2"), "seeds: must be a positive number of seeds"),
        (GOOD.replace("seeds = 2", "seeds = [0, -1]"), "seeds[1]: must be an integer >= 0, got -1"),
        (GOOD + "learning_rate = -0.1\n", "hyperparameter 'learning_rate' must lie in [0, inf)"),
        (GOOD.replace("epochs = 1", "epochs = = 1"), "not valid TOML"),
    ],
)
def test_bad_config(tmp_path: Path, capsys, text: str, fragment: str) -> None:
    config = tmp_path / "s.toml"
    config.write_text(text)
    assert main(["sweep", str(config), "--no-progress"]) == 2
    _one_line_error(capsys, f"config {config}", fragment)
    assert [p.name for p in tmp_path.iterdir()] == ["s.toml"]  # no database created


def test_corrupt_database_is_not_overwritten(tmp_path: Path, capsys) -> None:
    config = tmp_path / "s.toml"
    config.write_text(GOOD)
    (tmp_path / "s.db").write_bytes(bytes(range(256)) * 64)
    before = _snapshot(tmp_path)
    assert main(["sweep", str(config), "--no-progress"]) == 2
    _one_line_error(capsys, "s.db is not an SQLite database", "left untouched")
    assert _snapshot(tmp_path) == before


def test_locked_database(tmp_path: Path, capsys) -> None:
    config = tmp_path / "s.toml"
    config.write_text(GOOD)
    db = tmp_path / "s.db"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
         "c.execute('CREATE TABLE t (x)'); c.execute('BEGIN EXCLUSIVE'); c.execute('INSERT INTO t VALUES (1)'); "
         "print('locked', flush=True); time.sleep(30)", str(db)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _snapshot(tmp_path)
        assert main(["sweep", str(config), "--no-progress", "--lock-timeout", "0.3"]) == 2
        _one_line_error(capsys, "s.db is locked by another process", "nothing was changed")
        assert _snapshot(tmp_path) == before
    finally:
        holder.kill()
        holder.wait(timeout=10)
    # the holder died without committing: the database is as it was before its transaction
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM t").fetchone()[0] == 0


def test_unreachable_scheduler(tmp_path: Path, capsys) -> None:
    config = tmp_path / "s.toml"
    config.write_text(GOOD)
    address = f"tcp://127.0.0.1:{_free_port()}"
    assert main(["sweep", str(config), "--scheduler", address, "--connect-timeout", "1", "--no-progress"]) == 2
    _one_line_error(capsys, f"cannot reach the Dask scheduler at {address} within 1 s")
    assert [p.name for p in tmp_path.iterdir()] == ["s.toml"]  # the database it would have used is not left behind


def test_search_bad_config_and_corrupt_storage(tmp_path: Path, capsys) -> None:
    config = tmp_path / "s.toml"
    config.write_text(GOOD)
    assert main(["search", str(config)]) == 2
    _one_line_error(capsys, "search: missing")
    config.write_text(GOOD + '[search]\noptimizer = "sgd"\n[search.space.learning_rate]\nlow = 0.1\nhigh = 0.01\n')
    assert main(["search", str(config)]) == 2
    _one_line_error(capsys, "search.space.learning_rate: needs low < high")
    pytest.importorskip("optuna")
    config.write_text(GOOD + '[search]\noptimizer = "sgd"\n[search.space.learning_rate]\nlow = 0.01\nhigh = 0.1\n')
    storage = tmp_path / "s.optuna.db"
    storage.write_bytes(b"\x00garbage" * 100)
    before = _snapshot(tmp_path)
    assert main(["search", str(config), "--no-progress"]) == 2
    _one_line_error(capsys, "Optuna storage", "is not an SQLite database")
    assert _snapshot(tmp_path) == before


def test_damaged_page_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    """A real database in rollback-journal mode with one b-tree page overwritten: one line, exit 2, untouched."""
    from symopt.sweep import ResultStore, load_config

    config = tmp_path / "s.toml"
    config.write_text(GOOD.replace("seeds = 2", "seeds = 200"))
    cfg = load_config(config)
    db = tmp_path / "s.db"
    history = [{"epoch": 1, "train_loss": 0.5, "test_loss": 0.6, "test_accuracy": 0.8, "seconds": 0.1}]
    with ResultStore(db, cfg.protocol) as store:
        for spec in cfg.runs()[:150]:  # the other 50 are still to do: a sweep would start training
            store.record(spec, result={"history": history, "worker": "w", "pid": 1})
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = DELETE")
    page = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'epochs'").fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    raw = bytearray(db.read_bytes())
    raw[(page - 1) * page_size:page * page_size] = b"\xa5" * page_size
    db.write_bytes(bytes(raw))
    before = _snapshot(tmp_path)
    assert main(["sweep", str(config), "--no-progress"]) == 2
    _one_line_error(capsys, "s.db is corrupt (quick_check: ", "it was left untouched")
    assert _snapshot(tmp_path) == before
    assert main(["sweep", str(config), "--report-only", "--no-figures"]) == 2
    _one_line_error(capsys, "s.db is corrupt")
    assert _snapshot(tmp_path) == before


def test_malformed_scheduler_address_is_one_line(tmp_path: Path) -> None:
    """`--scheduler notaurl` in a real process: one line and exit 2; no Client finaliser traceback at exit."""
    config = tmp_path / "s.toml"
    config.write_text(GOOD)
    for command in ("sweep", "search"):
        if command == "search":
            pytest.importorskip("optuna")
            config.write_text(GOOD + '[search]\noptimizer = "sgd"\n[search.space.learning_rate]\nlow = 0.01\nhigh = 0.1\n')
        done = subprocess.run([sys.executable, "-m", "symopt.cli", command, str(config), "--scheduler", "notaurl",
                               "--no-progress"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [
            "symopt: error: scheduler address 'notaurl' is not a Dask address (missing port number in address "
            "'notaurl'); expected e.g. tcp://HOST:8786; nothing was run"], done.stderr
        assert [p.name for p in tmp_path.iterdir()] == ["s.toml"]


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--db", "{blocker}/sub/s.db"], "--db {blocker}/sub/s.db: {blocker} is not a directory"),
        (["--figures-dir", "{blocker}/figs"], "--figures-dir {blocker}/figs: {blocker} is not a directory"),
        (["--figures-dir", "{blocker}"], "--figures-dir {blocker}: {blocker} is not a directory"),
    ],
)
def test_unwritable_output_is_refused_before_any_work(tmp_path: Path, capsys, flags: list, fragment: str) -> None:
    """Without the check the figure path failed only after every run had trained."""
    config = tmp_path / "s.toml"
    config.write_text(GOOD)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory is needed")
    flags = [f.format(blocker=blocker) for f in flags]
    assert main(["sweep", str(config), "--no-progress", *flags]) == 2
    _one_line_error(capsys, fragment.format(blocker=blocker))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "s.toml"]  # no database, nothing trained


def test_unwritable_search_storage_is_refused(tmp_path: Path, capsys) -> None:
    config = tmp_path / "s.toml"
    config.write_text(GOOD + '[search]\noptimizer = "sgd"\n[search.space.learning_rate]\nlow = 0.01\nhigh = 0.1\n')
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    assert main(["search", str(config), "--storage", str(blocker / "s.optuna.db"), "--no-progress"]) == 2
    _one_line_error(capsys, f"--storage {blocker}/s.optuna.db: {blocker} is not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "s.toml"]
