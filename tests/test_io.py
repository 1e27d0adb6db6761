"""symopt._io: all-or-nothing writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from symopt._io import atomic_writer


def test_atomic_writer_leaves_no_partial_file(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_writer(dest) as f:
        f.write(b"x" * 100_000)
        raise RuntimeError("disk on fire")
    assert list(tmp_path.iterdir()) == []


def test_atomic_writer_keeps_old_content_on_failure_and_replaces_on_success(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_writer(dest) as f:
        f.write(b"new but partial")
        raise KeyboardInterrupt
    assert dest.read_bytes() == b"old" and list(tmp_path.iterdir()) == [dest]
    with atomic_writer(dest) as f:
        f.write(b"new")
    assert dest.read_bytes() == b"new" and list(tmp_path.iterdir()) == [dest]


def test_atomic_writer_files_are_readable_by_others(tmp_path: Path) -> None:
    # mkstemp creates 0600 files; results and state files are meant to be shared (umask 022)
    dest = tmp_path / "results.json"
    old = os.umask(0o022)
    try:
        with atomic_writer(dest, "w") as f:
            f.write("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644
