"""The SQLite results store of a sweep: one row per run, one per epoch, one transaction per run.

Schema (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`)::

    meta(key PRIMARY KEY, value)            -- kind, schema, protocol (JSON), created
    runs(run_id, run_key UNIQUE, optimizer, hyperparameters (JSON), seed, status 'done'|'failed',
         error, final_train_loss, final_test_loss, final_test_accuracy,
         worker, pid, compile_seconds, train_seconds, finished,
         stopped_epoch, final_learning_rate)                  -- schema 2
    epochs(run_id -> runs, epoch, train_loss, test_loss, test_accuracy, seconds,
           learning_rate)                                     -- schema 2

``stopped_epoch`` is the epoch early stopping ended the run at (0: it trained every epoch;
NULL: the protocol has no early stopping), ``final_learning_rate`` the learning rate after
the last epoch's plateau step and ``epochs.learning_rate`` the rate each epoch trained
with (NULL without a plateau). A schema-1 database (before these columns) is upgraded in
place when a sweep opens it for writing, and read as it is.

``run_key`` hashes everything that determines a run's numbers (see
:attr:`~symopt.sweep.config.RunSpec.key`), so resuming is "skip the keys already done".
The columns ``run_id``, ``worker``, ``pid``, ``compile_seconds``, ``train_seconds``,
``finished`` and ``epochs.seconds`` (:data:`TIMING_COLUMNS`) describe where and how fast a
run went; every other column is a deterministic function of the run.

Only the client process writes, and one client per database at a time: a writer holds an
advisory lock (``flock``) on the file while it is open, and a second ``symopt sweep`` on the
same database is refused at once (the kernel drops the lock of a process that dies, so a
killed sweep never leaves a stale claim behind). Before anything is changed, an existing
file is checked with ``PRAGMA quick_check``: a corrupt database is refused, untouched, before
any run trains. The database is in WAL mode (readers, e.g. a progress
query or a plot, never block the writer) with ``synchronous=FULL``; a run's rows are
written in one transaction, with SIGINT held back until it ends, so a run is either
fully recorded or not at all. A database holds the runs of one protocol (model, data,
batch size, epochs); another protocol is refused rather than mixed in. SQLite stores a
NaN as NULL: a diverged run reads back with NaN metrics.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .config import RunSpec, canonical_json

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one sweep per database is then the user's job
    fcntl = None  # type: ignore[assignment]

__all__ = ["ResultStore", "StoreError", "SCHEMA_VERSION", "TIMING_COLUMNS", "check_integrity", "check_sqlite_file"]

SCHEMA_VERSION = 2
#: Schemas this version reads (older ones are upgraded when opened for writing).
_READABLE = ("1", "2")
KIND = "symopt-sweep"
TIMING_COLUMNS = ("run_id", "worker", "pid", "compile_seconds", "train_seconds", "finished", "seconds")
_SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    run_id INTEGER PRIMARY KEY,
    run_key TEXT NOT NULL UNIQUE,
    optimizer TEXT NOT NULL,
    hyperparameters TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    error TEXT,
    final_train_loss REAL,
    final_test_loss REAL,
    final_test_accuracy REAL,
    worker TEXT,
    pid INTEGER,
    compile_seconds REAL,
    train_seconds REAL,
    finished TEXT NOT NULL,
    stopped_epoch INTEGER,
    final_learning_rate REAL
);
CREATE TABLE epochs (
    run_id INTEGER NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    train_loss REAL,
    test_loss REAL,
    test_accuracy REAL,
    seconds REAL,
    learning_rate REAL,
    PRIMARY KEY (run_id, epoch)
);
CREATE INDEX runs_by_optimizer ON runs (optimizer, seed);
"""


class StoreError(ValueError):
    """The results database cannot be used (locked, corrupt, another protocol); nothing was changed."""


@contextmanager
def _sigint_held() -> Iterator[None]:
    """Hold SIGINT back while a run's transaction is written, then deliver it.

    sqlite3 rolls back a transaction a KeyboardInterrupt cuts short, so a run is never
    half-written anyway; holding the signal also spares the finished run from being lost
    to a Ctrl-C that lands between its INSERTs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(signal.SIGINT, None)
        elif received and previous == signal.SIG_DFL:
            raise KeyboardInterrupt


def check_sqlite_file(path: Path, what: str) -> None:
    """Refuse a file that exists but is not an SQLite database, naming it and leaving it untouched.

    sqlite3 would also refuse it, but only at the first statement; this names the problem
    before any connection exists.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except IsADirectoryError:
        raise StoreError(f"{what} {path} is a directory; give a file path such as sweep.db") from None
    except OSError as exc:
        raise StoreError(f"{what} {path} cannot be read ({exc.strerror or exc})") from None
    if head and head != _SQLITE_MAGIC:
        raise StoreError(
            f"{what} {path} is not an SQLite database (corrupt, or another kind of file); "
            f"it was left untouched: move it away or choose another path"
        )


def check_integrity(path: Path, what: str) -> None:
    """Refuse an SQLite file whose pages are damaged (``PRAGMA quick_check``), reading it read-only.

    The header check above only sees the first 16 bytes; a damaged b-tree page elsewhere
    would otherwise surface as a ``sqlite3.DatabaseError`` at the first query that reaches
    it, possibly only when a finished run is written.
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
    except sqlite3.Error as exc:
        raise StoreError(f"{what} {path} cannot be opened ({exc}); it was left untouched") from None
    try:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if not any(word in text for word in ("malformed", "not a database", "corrupt")):
            return  # locked, or unreadable read-only: the open that follows reports it
        problems = [text]
    finally:
        conn.close()
    if problems != ["ok"]:
        # one line: quick_check's rows may hold several newline-separated findings
        lines = [ln.strip() for row in problems for ln in str(row).splitlines()
                 if ln.strip() and not ln.startswith("***")]
        first = lines[0] if lines else "damaged"
        more = f" and {len(lines) - 1} more finding(s)" if len(lines) > 1 else ""
        raise StoreError(f"{what} {path} is corrupt (quick_check: {first}{more}); it was left untouched: "
                         f"move it away (its intact runs may still be read with the sqlite3 .recover command) "
                         f"or choose another path")


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


class ResultStore:
    """A sweep's SQLite database.

    Parameters
    ----------
    path
        The database file; created (with its directory) if missing.
    protocol
        The protocol every run in it shares. A new database stores it; an existing one
        must hold the same, else :class:`StoreError`. ``None``: open an existing database
        read-only (for reports).
    lock_timeout
        Seconds to wait for another process's write lock before giving up.

    Raises
    ------
    StoreError
        The file is not a sweep database (corrupt, another application's), is locked by
        another process, is held by another writer (another sweep), or holds another
        protocol. The file is left as it was.
    """

    def __init__(self, path: str | Path, protocol: dict[str, Any] | None = None, *, lock_timeout: float = 10.0):
        self.path = Path(path)
        self.readonly = protocol is None
        self._lock_fd: int | None = None
        self._check_header()
        check_integrity(self.path, "results database")
        if self.readonly:
            if not self.path.exists():
                raise StoreError(f"no results database {self.path}; run the sweep first")
            self._conn = self._connect(f"file:{self.path}?mode=ro", lock_timeout, uri=True)
            self.protocol = self._read_meta()["protocol"]
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._claim()
        try:
            self._conn = self._connect(str(self.path), lock_timeout)
        except BaseException:
            self._release()
            raise
        try:
            self._init(protocol)
        except BaseException:
            self.close()
            raise
        self.protocol = protocol

    # ------------------------------------------------------------------ opening
    def _check_header(self) -> None:
        check_sqlite_file(self.path, "results database")

    def _claim(self) -> int | None:
        """Take the one-writer lock on the database file; refuse if another process (or store) holds it.

        ``flock`` on the file itself: no lock file is left behind, the kernel releases it when
        the holder dies (also on SIGKILL), and it is independent of SQLite's own POSIX
        byte-range locks. The descriptor stays open until the connection is closed: closing
        any descriptor of the file would drop SQLite's POSIX locks of this process.
        """
        if fcntl is None:
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o666)
        except OSError as exc:
            raise StoreError(f"results database {self.path} cannot be opened ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(
                f"results database {self.path} is in use by another sweep (one sweep per database at a time, "
                f"so that no run is trained twice); nothing was changed: wait for it to finish, then run again "
                f"to add what is missing"
            ) from None
        return fd

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _connect(self, target: str, lock_timeout: float, uri: bool = False) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(target, timeout=lock_timeout, isolation_level=None, uri=uri,
                                   check_same_thread=False)
            conn.execute("PRAGMA foreign_keys = ON")
            return conn
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def _error(self, exc: sqlite3.Error) -> StoreError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return StoreError(
                f"results database {self.path} is locked by another process (another sweep writing to it?); "
                f"nothing was changed: wait for it to finish or use another path"
            )
        if isinstance(exc, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text):
            return StoreError(f"results database {self.path} is corrupt ({text}); it was left untouched")
        return StoreError(f"results database {self.path}: {text}")

    def _init(self, protocol: dict[str, Any]) -> None:
        conn = self._conn
        try:
            # Check what the file holds before anything (even the journal mode) is changed in it.
            if conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                self._read_meta()
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"results database {self.path}: cannot switch to WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            with self._transaction():
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if not tables:
                    # Statement by statement: executescript() would commit the open transaction first.
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [
                        ("kind", KIND), ("schema", str(SCHEMA_VERSION)), ("protocol", canonical_json(protocol)),
                        ("created", time.strftime("%Y-%m-%d %H:%M:%S")),
                    ])
                else:
                    meta = self._read_meta()
                    if meta["protocol"] != json.loads(canonical_json(protocol)):
                        raise StoreError(self._protocol_diff(meta["protocol"], protocol))
                    if meta["schema"] == "1":
                        self._upgrade_from_1()
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def _upgrade_from_1(self) -> None:
        """Add schema 2's columns (NULL for the runs already recorded), inside the open transaction."""
        conn = self._conn
        conn.execute("ALTER TABLE runs ADD COLUMN stopped_epoch INTEGER")
        conn.execute("ALTER TABLE runs ADD COLUMN final_learning_rate REAL")
        conn.execute("ALTER TABLE epochs ADD COLUMN learning_rate REAL")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),))
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """A write transaction: committed if the block ends normally, rolled back otherwise.

        BEGIN IMMEDIATE takes the write lock at once, so a locked database fails before any work.
        """
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            if conn.in_transaction:
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _read_meta(self) -> dict[str, Any]:
        try:
            rows = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                raise StoreError(
                    f"{self.path} is an SQLite database but not a symopt sweep database (no meta table); "
                    f"it was left untouched: choose another path"
                ) from None
            raise self._error(exc) from None
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        if rows.get("kind") != KIND or "protocol" not in rows:
            raise StoreError(f"{self.path} is not a symopt sweep database; it was left untouched")
        if rows.get("schema") not in _READABLE:
            raise StoreError(f"{self.path} has sweep schema {rows.get('schema')}, this symopt reads "
                             f"{' and '.join(_READABLE)}")
        return {"kind": rows["kind"], "protocol": json.loads(rows["protocol"]), "created": rows.get("created"),
                "schema": rows["schema"]}

    def _protocol_diff(self, stored: dict[str, Any], protocol: dict[str, Any]) -> str:
        diff = [f"{k}: database has {stored.get(k)!r}, this config {protocol.get(k)!r}"
                for k in sorted(set(stored) | set(protocol)) if stored.get(k) != protocol.get(k)]
        return (f"results database {self.path} was made with a different protocol ({'; '.join(diff)}); runs of "
                f"different protocols are not mixed: use another database or the same settings")

    # ------------------------------------------------------------------ queries
    def status(self) -> dict[str, str]:
        """run_key -> 'done' | 'failed' for every recorded run."""
        return dict(self._conn.execute("SELECT run_key, status FROM runs").fetchall())

    def counts(self) -> dict[str, int]:
        out = {"done": 0, "failed": 0}
        out.update(dict(self._conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall()))
        return out

    def runs(self, status: str = "done") -> list[dict[str, Any]]:
        """Recorded runs with their per-epoch metrics, in (optimizer, hyperparameters, seed) order."""
        conn = self._conn
        cols = [d[1] for d in conn.execute("PRAGMA table_info(runs)")]
        rows = [dict(zip(cols, r)) for r in conn.execute(
            "SELECT * FROM runs WHERE status = ? ORDER BY optimizer, hyperparameters, seed", (status,))]
        by_id = {r["run_id"]: r for r in rows}
        for r in rows:
            r["hyperparameters"] = json.loads(r["hyperparameters"])
            r.setdefault("stopped_epoch", None)  # a schema-1 database read as it is
            r.setdefault("final_learning_rate", None)
            for m in ("epoch", "train_loss", "test_loss", "test_accuracy", "seconds", "learning_rate"):
                r[m] = []
        rate = "learning_rate" if "learning_rate" in {d[1] for d in conn.execute("PRAGMA table_info(epochs)")} \
            else "NULL"
        for run_id, epoch, tl, sl, sa, sec, lr in conn.execute(
                f"SELECT run_id, epoch, train_loss, test_loss, test_accuracy, seconds, {rate} FROM epochs "
                f"ORDER BY run_id, epoch"):
            r = by_id.get(run_id)
            if r is not None:
                r["epoch"].append(epoch)
                r["train_loss"].append(_nan(tl))
                r["test_loss"].append(_nan(sl))
                r["test_accuracy"].append(_nan(sa))
                r["seconds"].append(_nan(sec))
                r["learning_rate"].append(lr)
        return rows

    # ------------------------------------------------------------------ writing
    def record(self, spec: RunSpec, result: dict[str, Any] | None = None, error: str | None = None) -> bool:
        """Write one finished (``result``) or failed (``error``) run in one transaction.

        A failed run recorded earlier is replaced; a run already done is left alone and
        ``False`` returned (so a run is never recorded twice).
        """
        if self.readonly:
            raise StoreError(f"{self.path} was opened read-only")
        if (result is None) == (error is None):
            raise ValueError("record() needs exactly one of result and error")
        history = result["history"] if result is not None else []
        last = history[-1] if history else {}
        finished = time.strftime("%Y-%m-%d %H:%M:%S")
        conn = self._conn
        with _sigint_held():
            try:
                with self._transaction():
                    row = conn.execute("SELECT status FROM runs WHERE run_key = ?", (spec.key,)).fetchone()
                    if row is not None and row[0] == "done":
                        conn.execute("ROLLBACK")
                        return False
                    if row is not None:
                        conn.execute("DELETE FROM runs WHERE run_key = ?", (spec.key,))
                    cur = conn.execute(
                        "INSERT INTO runs (run_key, optimizer, hyperparameters, seed, status, error, final_train_loss, "
                        "final_test_loss, final_test_accuracy, worker, pid, compile_seconds, train_seconds, finished, "
                        "stopped_epoch, final_learning_rate) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (spec.key, spec.optimizer, canonical_json(spec.hyperparameters), spec.seed,
                         "done" if result is not None else "failed", error,
                         last.get("train_loss"), last.get("test_loss"), last.get("test_accuracy"),
                         (result or {}).get("worker"), (result or {}).get("pid"),
                         (result or {}).get("compile_seconds"), (result or {}).get("train_seconds"), finished,
                         (result or {}).get("stopped_epoch"), (result or {}).get("final_learning_rate")),
                    )
                    conn.executemany(
                        "INSERT INTO epochs (run_id, epoch, train_loss, test_loss, test_accuracy, seconds, "
                        "learning_rate) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [(cur.lastrowid, h["epoch"], h["train_loss"], h["test_loss"], h["test_accuracy"], h["seconds"],
                          h.get("learning_rate")) for h in history],
                    )
            except sqlite3.Error as exc:
                raise self._error(exc) from None
        return True

    def close(self) -> None:
        try:
            self._conn.close()
        finally:
            self._release()  # after the connection: see _claim

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ reports
    def document(self) -> dict[str, Any]:
        """The finished runs as a mnist-optimizers results document (what its plot and table read).

        An optimiser swept over several hyperparameter settings appears once per setting,
        labelled with the values that differ (``"adam learning_rate=0.003"``).
        """
        from ..mnist_runs import RUN_METRICS, run_entry

        runs = self.runs("done")
        labels = _labels(runs)
        doc: dict[str, Any] = {"experiment": "sweep", "protocol": self.protocol, "hyperparameters": {},
                               "compile_seconds": {}, "runs": {}}
        for r in runs:
            label = labels[(r["optimizer"], canonical_json(r["hyperparameters"]))]
            doc["hyperparameters"][label] = r["hyperparameters"]
            if r["compile_seconds"]:
                doc["compile_seconds"][label] = max(doc["compile_seconds"].get(label, 0.0), r["compile_seconds"])
            history = [dict(zip(RUN_METRICS, row)) for row in zip(*(r[m] for m in RUN_METRICS))]
            run = doc["runs"][f"{label}/{r['seed']}"] = run_entry(label, r["seed"], history)
            # Plateau and early stopping (when the protocol has them): rates per epoch, where it stopped.
            if r["final_learning_rate"] is not None:
                run["learning_rate"] = r["learning_rate"]
                run["final_learning_rate"] = r["final_learning_rate"]
            if r["stopped_epoch"] is not None:
                run["stopped_epoch"] = r["stopped_epoch"]
        return doc

    def summary(self) -> str:
        """The mnist-optimizers summary table of the finished runs, and the run counts."""
        from ..mnist_runs import summarize_rows, table_document

        counts = self.counts()
        doc = self.document()
        text = summarize_rows(table_document(doc), str(self.path))
        fates = _fates_table(doc)
        if fates:
            text = f"{text}\n\n{fates}"
        line = f"{self.path}: {counts['done']} run(s) done, {counts['failed']} failed"
        if counts["failed"]:
            line += " (--retry-failed runs them again)"
        return f"{text}\n{line}"

    def plot(self, figures_dir: str | Path, name: str | None = None) -> Path:
        """The mnist-optimizers figure (mean +- std over seeds per epoch) from the database."""
        from ..mnist_runs import plot_document

        out = Path(figures_dir) / f"{name or self.path.stem}.png"
        return plot_document(self.document(), out, source=str(self.path))


def _labels(runs: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(optimizer, hyperparameters JSON) -> a label naming only the hyperparameters that vary."""
    settings: dict[str, dict[str, dict[str, Any]]] = {}
    for r in runs:
        settings.setdefault(r["optimizer"], {})[canonical_json(r["hyperparameters"])] = r["hyperparameters"]
    out = {}
    for name, by_json in settings.items():
        values = list(by_json.values())
        varying = sorted(k for k in values[0] if len({canonical_json(v.get(k)) for v in values}) > 1)
        for text, hyper in by_json.items():
            parts = [f"{k}={hyper[k]:g}" if isinstance(hyper[k], float) else f"{k}={hyper[k]}" for k in varying]
            out[(name, text)] = " ".join([name, *parts])
    return out


def _fates_table(doc: dict[str, Any]) -> str:
    """Per setting: how many runs early stopping ended and at which epochs, the final learning rates.

    Empty when the protocol has neither a plateau nor early stopping.
    """
    by_label: dict[str, list[dict[str, Any]]] = {}
    for run in doc["runs"].values():
        if "stopped_epoch" in run or "final_learning_rate" in run:
            by_label.setdefault(run["optimizer"], []).append(run)
    if not by_label:
        return ""
    lines = ["| run | stopped early | stop epochs (0: none) | final learning rate |", "|---|---|---|---|"]
    for label, runs in by_label.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        stops = [r["stopped_epoch"] for r in runs if "stopped_epoch" in r]
        rates = [r["final_learning_rate"] for r in runs if "final_learning_rate" in r]
        stopped = f"{sum(s > 0 for s in stops)} of {len(stops)}" if stops else "-"
        epochs = ", ".join(str(s) for s in stops) if stops else "-"
        rate = "-" if not rates else (f"{min(rates):.3g}" if min(rates) == max(rates)
                                      else f"{min(rates):.3g} .. {max(rates):.3g}")
        lines.append(f"| {label} | {stopped} | {epochs} | {rate} |")
    return "\n".join(lines)
