"""All-or-nothing file writes, used for every file symopt writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one writer at a time is then the user's job
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_writer", "file_lock"]


@contextlib.contextmanager
def atomic_writer(dest: str | os.PathLike[str], mode: str = "wb", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Write ``dest`` all-or-nothing.

    Yields a file object on a temporary file next to ``dest``; when the ``with`` block
    completes it is flushed, fsynced and renamed over ``dest``. If the block raises (or
    the process is interrupted) the temporary file is removed and ``dest`` is left as
    it was (absent, or its previous content).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive advisory lock for read-modify-write of ``path``.

    For a results file that several processes update: without it, two writers that both
    read before either renames lose the first one's additions. The lock is taken on the
    file's folder (``path`` itself is replaced by every atomic write, and a sidecar lock
    file would be left behind), so it serialises writers of every file in that folder;
    it blocks until free. Without ``fcntl`` (Windows) it does nothing.
    """
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
