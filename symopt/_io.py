"""All-or-nothing file writes, output-path checks and strict JSON, used for every file symopt writes."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_writer", "file_lock", "check_writable", "json_ready", "dump_json"]


def _create_temp(folder: Path, name: str) -> tuple[int, Path]:
    """Create a new empty file next to ``name`` with mode 0666 less the umask.

    ``tempfile.mkstemp`` always makes 0600 files; created through ``os.open`` with 0666
    the kernel applies the process's umask, as for any other tool's output.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(4)}.part"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temporary name for {name} in {folder}")


@contextlib.contextmanager
def atomic_writer(dest: str | os.PathLike[str], mode: str = "wb", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Write ``dest`` all-or-nothing.

    Yields a file object on a temporary file next to ``dest``; when the ``with`` block
    completes it is flushed, fsynced and renamed over ``dest``. If the block raises (or
    the process is interrupted) the temporary file is removed and ``dest`` is left as
    it was (absent, or its previous content).

    A new file gets mode ``0666`` less the umask, like any other tool's output; a
    replaced file keeps its permission bits (a ``0600`` file stays private).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(dest.parent, dest.name)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(os.stat(dest).st_mode))
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock for read-modify-write of ``path``, blocking until it is free.

    For a results file that several processes update: without it, two writers that both
    read before either renames lose the first one's additions. The lock is filelock's
    native lock (``flock`` on Unix) on the file's *folder*: ``path`` itself is replaced by
    every atomic write, and a sidecar lock file would be left among the results. So it
    serialises the writers of every file in that folder. Where a folder cannot be opened
    (Windows), a lock file in the temporary directory, named after the folder, stands in.
    """
    from ._extras import require

    filelock = require("filelock", "a lock on a shared results file")
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        digest = hashlib.sha256(os.fsencode(folder.resolve())).hexdigest()[:16]
        with filelock.FileLock(Path(tempfile.gettempdir()) / f"symopt-{digest}.lock"):
            yield
        return
    try:
        filelock.lock_descriptor(fd)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _probe(folder: Path) -> None:
    """Create and remove a file in ``folder``: the only test that also holds for root and
    for read-only file systems (``os.access`` answers yes to root everywhere)."""
    fd, tmp = _create_temp(folder, "symopt-write-test")
    os.close(fd)
    os.unlink(tmp)


def check_writable(path: str | os.PathLike[str], what: str, *, directory: bool = False) -> Path:
    """Check, before any work, that symopt will be able to write ``path``.

    Parameters
    ----------
    path
        A file symopt will write (atomically: a temporary file in its folder, then a
        rename), or with ``directory=True`` a folder it will write files into. Missing
        folders are fine when the nearest existing one is writable (they are created
        at write time, as :func:`atomic_writer` does); nothing is created here.
    what
        How the user named it, e.g. ``"--out"``; starts every error message.
    directory
        Whether ``path`` is a folder.

    Returns
    -------
    Path
        ``path`` as a :class:`~pathlib.Path`.

    Raises
    ------
    IsADirectoryError, NotADirectoryError, PermissionError, OSError
        One line naming ``what``, the path and the reason.
    """
    path = Path(path)
    if not directory and path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a directory; give a file path")
    if not directory and path.exists() and not os.access(path, os.W_OK):
        raise PermissionError(f"{what} {path}: the existing file is not writable")
    folder = path if directory else path.parent
    existing = folder
    while not existing.exists():
        if existing.is_symlink():  # a dangling link: mkdir would fail on it
            raise NotADirectoryError(f"{what} {path}: {existing} is a broken symbolic link")
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{what} {path}: {existing} is not a directory")
    try:
        _probe(existing)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise PermissionError(f"{what} {path}: cannot write in {existing} ({reason.lower()})") from None
    return path


def json_ready(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays made plain and non-finite floats made ``None``.

    JSON has no NaN or infinity (Python's ``json`` writes the non-standard ``NaN``,
    which other readers reject); symopt writes them as ``null``.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # NumPy arrays and scalars
        return json_ready(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dump_json(value: Any, f: IO[str], **kwargs: Any) -> None:
    """``json.dump`` of :func:`json_ready` ``(value)``: always valid JSON (non-finite as null)."""
    json.dump(json_ready(value), f, allow_nan=False, **kwargs)
