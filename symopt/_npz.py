"""Reading ``.npz`` files whose content is not trusted.

``numpy.load`` allocates each array from the shape its ``.npy`` header declares before
reading a byte of data, so a few-byte member claiming ``shape=(10**10,)`` costs 80 GB
(MemoryError) instead of an error naming the file. :class:`NpzReader` reads the
headers first and lets the caller refuse a shape or dtype before anything is allocated.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

__all__ = ["NpzReader", "StateFile"]


class _Refused(ValueError):
    """A finished message about the file (not to be wrapped again)."""


class NpzReader:
    """The arrays of one ``.npz`` file, each read only after its header has been checked.

    Parameters
    ----------
    path
        The file.
    what
        What the file should be, for error messages ("optimiser state file", "checkpoint").

    Every problem (unreadable file, missing member, unexpected shape or dtype, short
    data) raises ``ValueError`` naming ``path``; a missing file raises ``FileNotFoundError``.
    """

    def __init__(self, path: str | os.PathLike[str], what: str):
        self.path, self.what = Path(path), what
        try:
            self._zip = zipfile.ZipFile(self.path)
        except FileNotFoundError:
            raise FileNotFoundError(f"no {what} {str(self.path)!r}") from None
        except IsADirectoryError:
            raise ValueError(f"{str(self.path)!r} is a directory, not a {what}") from None
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ValueError(f"{str(self.path)!r} is not a readable {what} ({exc})") from None
        self._members = {n[: -len(".npy")]: n for n in self._zip.namelist() if n.endswith(".npy")}

    def __enter__(self) -> NpzReader:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    @property
    def names(self) -> list[str]:
        """Array names, in the file's order."""
        return list(self._members)

    def _fail(self, message: str) -> ValueError:
        return _Refused(f"{str(self.path)!r} is not a valid {self.what}: {message}")

    def _unreadable(self, name: str, exc: BaseException) -> ValueError:
        return _Refused(f"{str(self.path)!r} is not a readable {self.what} ({name!r}: {exc})")

    def _missing(self, name: str) -> ValueError:
        article = "an" if self.what[:1] in "aeiou" else "a"
        return _Refused(f"{str(self.path)!r} is not {article} {self.what} (it has no {name!r})")

    def header(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """Declared shape and dtype of array ``name``; reads only its header."""
        if name not in self._members:
            raise self._missing(name)
        try:
            with self._zip.open(self._members[name]) as f:
                return self._read_header(f)[:2]
        except _Refused:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise self._unreadable(name, exc) from None

    @staticmethod
    def _read_header(f: Any) -> tuple[tuple[int, ...], np.dtype, bool]:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
        return tuple(int(n) for n in shape), np.dtype(dtype), bool(fortran)

    def read(
        self,
        name: str,
        shape: tuple[int, ...] | None = None,
        dtype: Any = None,
        kinds: str | None = None,
        max_size: int | None = None,
        max_itemsize: int | None = None,
    ) -> np.ndarray:
        """Array ``name``, refused (before allocation) unless its header matches.

        Parameters
        ----------
        shape, dtype
            Exact shape and dtype required (``None``: any).
        kinds
            Allowed ``dtype.kind`` letters, e.g. ``"iu"`` for integers.
        max_size, max_itemsize
            Upper bounds on the element count and the bytes per element.
        """
        if name not in self._members:
            raise self._missing(name)
        try:
            with self._zip.open(self._members[name]) as f:
                got_shape, got_dtype, _ = self._read_header(f)
                if got_dtype.hasobject:
                    raise self._fail(f"{name!r} holds Python objects")
                if shape is not None and got_shape != tuple(shape):
                    raise self._fail(f"{name!r} has shape {list(got_shape)}, expected {list(shape)}")
                if dtype is not None and got_dtype != np.dtype(dtype):
                    raise self._fail(f"{name!r} is {got_dtype}, expected {np.dtype(dtype)}")
                if kinds is not None and got_dtype.kind not in kinds:
                    raise self._fail(f"{name!r} has dtype {got_dtype}")
                size = int(np.prod(got_shape, dtype=object))
                if max_size is not None and size > max_size:
                    raise self._fail(f"{name!r} declares {size} elements, more than the {max_size} it can hold")
                if max_itemsize is not None and got_dtype.itemsize > max_itemsize:
                    raise self._fail(f"{name!r} declares {got_dtype.itemsize} bytes per element, at most {max_itemsize} allowed")
            with self._zip.open(self._members[name]) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except _Refused:
            raise
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise self._unreadable(name, exc) from None


class StateFile:
    """The ``.npz`` file behind every ``save``/``load`` of optimiser state.

    :class:`~symopt.optimizer.Optimizer`, :class:`~symopt.wrappers.EMA` and
    :class:`~symopt.wrappers.Lookahead` flatten their ``state_dict`` to ``name -> array``
    and call :meth:`write`; :meth:`read` gives the arrays back without trusting the file:
    every array's header is checked (numbers only, at most ``largest`` elements; the named
    ``strings`` as short scalar strings) before it is allocated.

    Parameters
    ----------
    owner
        Prefix of every error message (the class name).
    what
        What the file is, for messages.
    """

    def __init__(self, owner: str, what: str = "optimiser state file"):
        self.owner, self.what = owner, what

    def write(self, path: str | os.PathLike[str], flat: dict[str, np.ndarray]) -> None:
        """All arrays, atomically (no partial file on failure)."""
        from ._io import atomic_writer  # _io imports nothing of ours, but keep _npz importable alone

        with atomic_writer(path) as f:
            np.savez(f, **flat)

    def read(
        self,
        path: str | os.PathLike[str],
        largest: int,
        strings: tuple[str, ...] = (),
        expect: dict[str, int] | None = None,
    ) -> dict[str, np.ndarray]:
        """Every array of the file, checked before allocation.

        ``expect`` maps names of integer scalars to the value they must have (a group
        count), read and compared before anything else.
        """
        path = Path(path)
        owner = self.owner
        flat: dict[str, np.ndarray] = {}
        try:
            with NpzReader(path, self.what) as npz:
                for name, want in (expect or {}).items():
                    got = npz.read(name, shape=(), kinds="iu")
                    if int(got) != want:
                        label = "param groups" if name.endswith("groups") else name
                        raise ValueError(f"{owner}: {str(path)!r} holds {int(got)} {label}, this optimiser has {want}")
                    flat[name] = got
                for name in npz.names:
                    if name in flat:
                        continue
                    if name in strings:
                        flat[name] = npz.read(name, shape=(), kinds="U", max_itemsize=4 * 256)
                    else:
                        flat[name] = npz.read(name, kinds="biuf", max_size=largest)
        except FileNotFoundError:
            raise FileNotFoundError(f"{owner}: no {self.what} {str(path)!r}") from None
        except ValueError as exc:
            message = str(exc)
            raise ValueError(message if message.startswith(owner) else f"{owner}: {message}") from None
        return flat
