"""Fashion-MNIST: where it is read from, the decode-once cache, the missing-package error, and
(where Debian's package is installed, always in CI) the real files."""

import gzip
import os
import time

import numpy as np
import pytest
import torch

from bncore.data import (
    FASHION_MNIST_PACKAGE,
    FASHION_MNIST_SYSTEM_DIR,
    IDX_FILES,
    fashion_mnist_folder,
    load_data,
)
from bncore.spec import JobSpec


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    """Every test caches into its own folder, never the user's ~/.cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("BNLAB_CACHE_DIR", str(cache))
    return cache


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_gz_idx(folder, n_train=20, n_test=7, seed=0):
    """The four gzipped IDX files, as the Debian package ships them, with random content."""
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28)),
        "y_train": rng.integers(0, 10, n_train),
        "x_test": rng.integers(0, 256, (n_test, 28, 28)),
        "y_test": rng.integers(0, 10, n_test),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in IDX_FILES.items():
        (folder / (name + ".gz")).write_bytes(gzip.compress(_idx_bytes(arrays[key])))
    return arrays


def _spec(**overrides) -> JobSpec:
    return JobSpec(dataset="fashion_mnist", **overrides)


def test_data_dir_folder_with_official_split_dtypes_and_range(tmp_path):
    arrays = _write_gz_idx(tmp_path / "data" / "fashion-mnist")
    data = load_data(_spec(), data_dir=tmp_path / "data")
    assert (len(data.y_train), len(data.y_test)) == (20, 7)  # train-* and t10k-*, as shipped
    assert data.example_shape == (1, 28, 28) and data.classes == 10
    assert data.x_train.dtype == data.x_test.dtype == torch.float32
    assert data.y_train.dtype == torch.int64
    assert data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0
    expected = torch.tensor(arrays["x_test"] / 255.0, dtype=torch.float32)
    torch.testing.assert_close(data.x_test[:, 0], expected)
    assert data.y_train.tolist() == arrays["y_train"].tolist()


def test_where_it_is_read_from(tmp_path, monkeypatch):
    # No folder in the data dir: Debian's package folder.
    assert fashion_mnist_folder(None, tmp_path) == FASHION_MNIST_SYSTEM_DIR
    # A fashion-mnist folder in the data dir wins (also through BNLAB_DATA_DIR).
    (tmp_path / "fashion-mnist").mkdir()
    assert fashion_mnist_folder(None, tmp_path) == (tmp_path / "fashion-mnist").resolve()
    monkeypatch.setenv("BNLAB_DATA_DIR", str(tmp_path))
    assert fashion_mnist_folder(None) == (tmp_path / "fashion-mnist").resolve()
    # data_path names any other folder inside the data dir, and may not leave it.
    _write_gz_idx(tmp_path / "elsewhere", n_train=3, n_test=2)
    data = load_data(_spec(data_path="elsewhere"), data_dir=tmp_path)
    assert (len(data.y_train), len(data.y_test)) == (3, 2)
    with pytest.raises(ValueError, match="outside the data directory"):
        fashion_mnist_folder("sub/../../x", tmp_path)


def test_gzipped_files_are_decoded_once_and_cached(tmp_path, _cache_dir):
    folder = tmp_path / "fashion-mnist"
    _write_gz_idx(folder)
    first = load_data(_spec(), data_dir=tmp_path)
    entries = list(_cache_dir.iterdir())
    assert len(entries) == 1 and entries[0].suffix == ".npz"  # no temporary file left behind

    # The second load reads the cache, not the .gz files: plant a marker in the cache entry.
    with np.load(entries[0]) as cached:
        planted = {key: cached[key].copy() for key in IDX_FILES}
    planted["y_test"][0] = 9 - planted["y_test"][0]
    np.savez(entries[0], **planted)
    second = load_data(_spec(), data_dir=tmp_path)
    assert second.y_test[0] == planted["y_test"][0] != first.y_test[0]
    assert torch.equal(second.x_train, first.x_train)

    # Replacing a file (new size/mtime) makes a fresh entry: never a stale hit.
    new = _write_gz_idx(folder, seed=1)
    stamp = time.time() + 10
    for name in IDX_FILES.values():
        os.utime(folder / (name + ".gz"), (stamp, stamp))
    third = load_data(_spec(), data_dir=tmp_path)
    assert third.y_test.tolist() == new["y_test"].tolist()
    assert len(list(_cache_dir.iterdir())) == 2


def test_a_damaged_or_unwritable_cache_only_costs_a_decode(tmp_path, _cache_dir, monkeypatch):
    arrays = _write_gz_idx(tmp_path / "fashion-mnist")
    load_data(_spec(), data_dir=tmp_path)
    (entry,) = _cache_dir.iterdir()
    entry.write_bytes(b"not an npz")
    assert load_data(_spec(), data_dir=tmp_path).y_test.tolist() == arrays["y_test"].tolist()
    # A cache dir that cannot be created (its parent is a file): decode, train anyway.
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("BNLAB_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    assert load_data(_spec(), data_dir=tmp_path).y_test.tolist() == arrays["y_test"].tolist()


def test_missing_files_name_the_package_to_install(tmp_path):
    folder = tmp_path / "fashion-mnist"
    _write_gz_idx(folder)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ValueError, match=f"t10k-labels.*apt-get install {FASHION_MNIST_PACKAGE}"):
        load_data(_spec(), data_dir=tmp_path)
    with pytest.raises(ValueError, match=f"not a folder.*apt-get install {FASHION_MNIST_PACKAGE}"):
        load_data(_spec(data_path="nothere"), data_dir=tmp_path)


def test_spec_accepts_an_optional_data_path():
    assert _spec().input_shape() == ((1, 28, 28), 10)
    assert _spec(data_path="fm").data_path == "fm"
    with pytest.raises(ValueError, match="data_path is only used by"):
        JobSpec(dataset="digits", data_path="x")


# Runs where Debian's package is installed; in CI (which installs it) a missing package fails
# here with the install hint instead of skipping.
REAL_FILES = FASHION_MNIST_SYSTEM_DIR.is_dir() or os.environ.get("CI") == "true"


@pytest.mark.skipif(not REAL_FILES, reason=f"{FASHION_MNIST_PACKAGE} is not installed")
def test_the_real_files(tmp_path):
    data = load_data(_spec(), data_dir=tmp_path)  # an empty data dir: the package's folder
    assert (len(data.y_train), len(data.y_test)) == (60_000, 10_000)
    assert data.example_shape == (1, 28, 28) and data.classes == 10
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0
    # Fashion-MNIST is balanced: 6,000 train and 1,000 test images per class.
    assert torch.bincount(data.y_train).tolist() == [6000] * 10
    assert torch.bincount(data.y_test).tolist() == [1000] * 10
    cached = load_data(_spec(), data_dir=tmp_path)  # from the cache now
    assert torch.equal(cached.x_test, data.x_test)
