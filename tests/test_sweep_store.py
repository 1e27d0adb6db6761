"""The SQLite results store: WAL, one transaction per run, exactly-once, refusals that change nothing."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from symopt.sweep import ResultStore, StoreError, load_config

CONFIG = {"epochs": 2, "seeds": 2, "batch_size": 64, "model": {"sizes": [784, 16, 10], "dropout": 0.0},
          "data": {"n_train": 500, "n_test": 100}, "optimizers": {"sgd": {"learning_rate": [0.01, 0.1]}, "adam": {}}}


def _result(key: str, scale: float = 1.0, epochs: int = 2) -> dict:
    history = [{"epoch": e, "train_loss": scale / e, "test_loss": 2 * scale / e, "test_accuracy": 0.1 * e,
                "seconds": 0.5} for e in range(1, epochs + 1)]
    return {"key": key, "history": history, "compile_seconds": 1.5, "train_seconds": 1.0, "worker": "w", "pid": 1}


@pytest.fixture
def cfg():
    return load_config(CONFIG)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_runs_are_written_once_in_wal_mode(tmp_path: Path, cfg) -> None:
    specs = cfg.runs()
    with ResultStore(tmp_path / "s.db", cfg.protocol) as store:
        assert store.record(specs[0], result=_result(specs[0].key))
        assert not store.record(specs[0], result=_result(specs[0].key, scale=9.0))  # already done: kept as is
        assert store.record(specs[1], error="ValueError: boom")
        assert store.status() == {specs[0].key: "done", specs[1].key: "failed"}
        # a failed run is replaced by its retry, in the same transaction
        assert store.record(specs[1], result=_result(specs[1].key, scale=3.0))
        assert store.counts() == {"done": 2, "failed": 0}
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = conn.execute("SELECT r.seed, e.epoch, e.train_loss, e.test_accuracy FROM epochs e JOIN runs r USING (run_id) "
                        "ORDER BY r.run_id, e.epoch").fetchall()
    assert rows == [(0, 1, 1.0, 0.1), (0, 2, 0.5, 0.2), (1, 1, 3.0, 0.1), (1, 2, 1.5, 0.2)]
    assert conn.execute("SELECT final_train_loss, status, error FROM runs WHERE seed = 1").fetchone() == (1.5, "done", None)


def test_a_run_that_fails_mid_transaction_leaves_nothing(tmp_path: Path, cfg) -> None:
    spec = cfg.runs()[0]
    with ResultStore(tmp_path / "s.db", cfg.protocol) as store:
        broken = _result(spec.key)
        broken["history"][1]["epoch"] = 1  # duplicate (run_id, epoch): the second INSERT fails after the first ones
        with pytest.raises(StoreError, match="UNIQUE constraint failed"):
            store.record(spec, result=broken)
        assert store.status() == {}
        assert store.record(spec, result=_result(spec.key))
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM epochs").fetchone()[0] == 2


def test_nan_reads_back_as_nan_and_reports_from_the_database(tmp_path: Path, cfg) -> None:
    specs = cfg.runs()
    with ResultStore(tmp_path / "s.db", cfg.protocol) as store:
        for i, spec in enumerate(specs):
            store.record(spec, result=_result(spec.key, scale=1.0 + i))
        diverged = _result(specs[0].key)
        diverged["history"][1]["train_loss"] = math.nan
    with ResultStore(tmp_path / "n.db", cfg.protocol) as store:
        store.record(specs[0], result=diverged)
        assert math.isnan(store.runs()[0]["train_loss"][1])
    with ResultStore(tmp_path / "s.db") as store:  # read-only
        doc = store.document()
        # labels name only what varies within an optimiser
        assert sorted({r["optimizer"] for r in doc["runs"].values()}) == [
            "adam", "sgd learning_rate=0.01", "sgd learning_rate=0.1"]
        assert doc["runs"]["sgd learning_rate=0.1/1"]["train_loss"] == [4.0, 2.0]  # 4th run: scale 4
        text = store.summary()
        assert "| sgd learning_rate=0.1 | 2 |" in text and "6 run(s) done, 0 failed" in text
        png = store.plot(tmp_path / "fig")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with pytest.raises(StoreError, match="read-only"):
            store.record(specs[0], result=_result(specs[0].key))


def test_other_protocol_is_refused_and_nothing_changes(tmp_path: Path, cfg) -> None:
    spec = cfg.runs()[0]
    with ResultStore(tmp_path / "s.db", cfg.protocol) as store:
        store.record(spec, result=_result(spec.key))
    before = _files(tmp_path)
    other = load_config({**CONFIG, "epochs": 3})
    with pytest.raises(StoreError, match="different protocol .*epochs: database has 2, this config 3"):
        ResultStore(tmp_path / "s.db", other.protocol)
    assert _files(tmp_path) == before


def test_corrupt_and_foreign_files_are_left_untouched(tmp_path: Path, cfg) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(StoreError, match="corrupt.db is not an SQLite database .* left untouched"):
        ResultStore(corrupt, cfg.protocol)
    # a real SQLite file whose pages are damaged after the header
    damaged = tmp_path / "damaged.db"
    with ResultStore(damaged, cfg.protocol):
        pass
    raw = bytearray(damaged.read_bytes())
    raw[100:] = b"\xff" * (len(raw) - 100)
    damaged.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="damaged.db"):
        ResultStore(damaged, cfg.protocol)
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE accounts (id INTEGER)")
    conn.commit()
    conn.close()
    before = _files(tmp_path)
    with pytest.raises(StoreError, match="not a symopt sweep database"):
        ResultStore(foreign, cfg.protocol)
    with pytest.raises(StoreError, match="is a directory"):
        ResultStore(tmp_path, cfg.protocol)
    assert _files(tmp_path) == before


def test_a_database_locked_by_another_process_is_refused(tmp_path: Path, cfg) -> None:
    path = tmp_path / "s.db"
    spec = cfg.runs()[0]
    with ResultStore(path, cfg.protocol) as store:
        store.record(spec, result=_result(spec.key))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
         "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(30)", str(path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError, match="s.db is locked by another process"):
            ResultStore(path, cfg.protocol, lock_timeout=0.3)
    finally:
        holder.kill()
        holder.wait(timeout=10)
    with ResultStore(path) as store:
        assert store.status() == {spec.key: "done"}


def _journal_database(path: Path, cfg) -> list[tuple[str, int]]:
    """A real sweep database with enough runs for multi-level b-trees, switched to a rollback journal."""
    big = load_config({**CONFIG, "seeds": 60})
    with ResultStore(path, big.protocol) as store:
        for i, spec in enumerate(big.runs()):
            store.record(spec, result=_result(spec.key, scale=1.0 + i, epochs=20))
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0] == "delete"
    roots = conn.execute("SELECT name, rootpage FROM sqlite_master WHERE type = 'table'").fetchall()
    conn.close()
    return roots


@pytest.mark.parametrize("table", ["runs", "epochs"])
def test_damaged_interior_page_is_found_before_any_work(tmp_path: Path, cfg, table: str) -> None:
    """One b-tree page overwritten: refused at open with one message, the file byte-identical.

    Without the integrity check the open succeeds (header and meta table are intact) and the
    damage surfaces as a sqlite3.DatabaseError at the first query reaching the page: for
    ``epochs`` that is only when a finished run is written or the report is drawn.
    """
    path = tmp_path / "s.db"
    roots = dict(_journal_database(path, cfg))
    page_size = 4096
    raw = bytearray(path.read_bytes())
    assert len(raw) % page_size == 0 and len(raw) // page_size > 20
    page = roots[table]
    # the table's root is an interior page (type 0x05) over several leaves
    assert raw[(page - 1) * page_size] == 0x05
    garbage = bytes((i * 151 + 7) % 256 for i in range(page_size))
    raw[(page - 1) * page_size:page * page_size] = garbage
    path.write_bytes(bytes(raw))
    before = _files(tmp_path)
    with pytest.raises(StoreError, match=r"s.db is corrupt \(quick_check: .*\); it was left untouched"):
        ResultStore(path, load_config({**CONFIG, "seeds": 60}).protocol)
    with pytest.raises(StoreError, match=r"s.db is corrupt"):
        ResultStore(path)  # the read-only report path too
    assert _files(tmp_path) == before


def _holder(path: Path, protocol: dict) -> subprocess.Popen:
    """Another process with the database open for writing, as a running sweep has it."""
    code = ("import json, sys, time\nfrom symopt.sweep import ResultStore\n"
            "store = ResultStore(sys.argv[1], json.loads(sys.argv[2]))\nprint('open', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), json.dumps(protocol)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "open"
    return proc


def test_one_writer_per_database_and_a_dead_writer_leaves_no_claim(tmp_path: Path, cfg) -> None:
    path = tmp_path / "s.db"
    spec = cfg.runs()[0]
    with ResultStore(path, cfg.protocol) as store:
        # a second writer, even in this process, is refused at once; readers are not
        with pytest.raises(StoreError, match="s.db is in use by another sweep .*nothing was changed"):
            ResultStore(path, cfg.protocol)
        store.record(spec, result=_result(spec.key))
        with ResultStore(path) as reader:
            assert reader.status() == {spec.key: "done"}
    holder = _holder(path, cfg.protocol)
    try:
        before = _files(tmp_path)
        with pytest.raises(StoreError, match="s.db is in use by another sweep"):
            ResultStore(path, cfg.protocol)
        assert _files(tmp_path) == before
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs in the holder
        holder.wait(timeout=10)
    with ResultStore(path, cfg.protocol) as store:  # the kernel released the dead process's lock
        assert store.status() == {spec.key: "done"}
        assert store.record(cfg.runs()[1], result=_result(cfg.runs()[1].key))
