"""Offline datasets: shapes, dtypes, fixed splits, and the file loaders on tiny files."""

import gzip
import random

import numpy as np
import pytest
import torch

from bncore.data import (
    IDX_FILES,
    SYNTHETIC_TEST,
    SYNTHETIC_TRAIN,
    load_data,
    read_idx,
    resolve_data_path,
)
from bncore.spec import JobSpec


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    """Gzipped IDX files are cached after decoding: into the test's folder, not ~/.cache."""
    monkeypatch.setenv("BNLAB_CACHE_DIR", str(tmp_path / "cache"))


def _check(data, shape, n_train=None, n_test=None):
    assert data.example_shape == shape
    assert data.x_train.dtype == data.x_test.dtype == torch.float32
    assert data.y_train.dtype == data.y_test.dtype == torch.int64
    assert data.x_test.shape[1:] == shape
    assert len(data.x_train) == len(data.y_train) and len(data.x_test) == len(data.y_test)
    if n_train is not None:
        assert (len(data.y_train), len(data.y_test)) == (n_train, n_test)


def test_digits():
    data = load_data(JobSpec(dataset="digits"))
    _check(data, (1, 8, 8))
    assert len(data.y_train) + len(data.y_test) == 1797
    assert data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0
    assert data.classes == 10 and set(data.y_test.tolist()) == set(range(10))
    again = load_data(JobSpec(dataset="digits", seed=7))  # the split ignores the job seed
    assert torch.equal(again.x_test, data.x_test) and torch.equal(again.y_train, data.y_train)


def test_mnist1d_is_generated_cached_and_leaves_global_rngs_alone():
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    data = load_data(JobSpec(dataset="mnist1d"))
    assert (np.random.rand(), random.random()) == (expected_np, expected_py)
    _check(data, (1, 40), 4000, 1000)
    assert data.classes == 10
    again = load_data(JobSpec(dataset="mnist1d"))
    assert torch.equal(again.x_train, data.x_train)
    again.x_train.zero_()  # a caller mutating its tensors does not touch the cache
    assert torch.equal(load_data(JobSpec(dataset="mnist1d")).x_train, data.x_train)


def test_synthetic():
    data = load_data(JobSpec(dataset="synthetic", synthetic_features=12))
    _check(data, (1, 12), SYNTHETIC_TRAIN, SYNTHETIC_TEST)
    assert set(data.y_train.tolist()) == set(range(10)) and data.classes == 10
    # Not degenerate: no class holds more than half the examples.
    assert torch.bincount(data.y_train).max() < SYNTHETIC_TRAIN / 2
    again = load_data(JobSpec(dataset="synthetic", synthetic_features=12, seed=3))
    assert torch.equal(again.x_train, data.x_train)


def test_train_size_keeps_a_fixed_subset():
    full = load_data(JobSpec(dataset="digits"))
    a = load_data(JobSpec(dataset="digits", train_size=100))
    b = load_data(JobSpec(dataset="digits", train_size=100, seed=5))
    assert len(a.y_train) == 100 and torch.equal(a.x_train, b.x_train)
    assert torch.equal(a.x_test, full.x_test)  # the test set is untouched
    assert load_data(JobSpec(dataset="digits", train_size=10**6)).x_train.shape == (
        full.x_train.shape
    )


# --- IDX -------------------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(folder, n_train=12, n_test=5, compress=False):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28)),
        "y_train": rng.integers(0, 10, n_train),
        "x_test": rng.integers(0, 256, (n_test, 28, 28)),
        "y_test": rng.integers(0, 10, n_test),
    }
    folder.mkdir(parents=True)
    for key, name in IDX_FILES.items():
        raw = _idx_bytes(arrays[key])
        if compress:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx(tmp_path, compress):
    arrays = _write_mnist(tmp_path / "mnist", compress=compress)
    data = load_data(JobSpec(dataset="mnist_idx", data_path="mnist"), data_dir=tmp_path)
    _check(data, (1, 28, 28), 12, 5)
    assert data.classes == 10
    torch.testing.assert_close(data.x_train[:, 0], torch.tensor(arrays["x_train"] / 255.0).float())
    assert data.y_test.tolist() == arrays["y_test"].tolist()


def test_idx_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(_idx_bytes(np.zeros((3, 2, 2)))[:-1])
    with pytest.raises(ValueError, match="size"):
        read_idx(tmp_path / "short")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not found"):
        load_data(JobSpec(dataset="mnist_idx", data_path="empty"), data_dir=tmp_path)


# --- npz -------------------------------------------------------------------------------------


def test_npz_layouts_and_scaling(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "flat.npz",
        x_train=rng.normal(size=(20, 6)),
        y_train=np.arange(20) % 3,
        x_test=rng.normal(size=(4, 6)),
        y_test=np.array([0, 1, 2, 1]),
    )
    data = load_data(JobSpec(dataset="npz", data_path="flat.npz"), data_dir=tmp_path)
    _check(data, (1, 6), 20, 4)
    assert data.classes == 3

    img = rng.integers(0, 256, (5, 4, 4)).astype(np.uint8)
    np.savez(
        tmp_path / "img.npz", x_train=img, y_train=np.arange(5), x_test=img, y_test=np.zeros(5, int)
    )
    data = load_data(JobSpec(dataset="npz", data_path="img.npz"), data_dir=tmp_path)
    _check(data, (1, 4, 4), 5, 5)
    assert data.x_train.max() <= 1.0 and data.classes == 5

    chw = rng.normal(size=(3, 2, 4, 4))
    np.savez(
        tmp_path / "chw.npz", x_train=chw, y_train=np.arange(3), x_test=chw, y_test=np.arange(3)
    )
    assert load_data(JobSpec(dataset="npz", data_path="chw.npz"), tmp_path).example_shape == (
        2,
        4,
        4,
    )


def test_npz_errors(tmp_path):
    x = np.zeros((4, 3))
    np.savez(tmp_path / "missing.npz", x_train=x, y_train=np.zeros(4, int), x_test=x)
    np.savez(tmp_path / "floaty.npz", x_train=x, y_train=np.zeros(4), x_test=x, y_test=np.zeros(4))
    objects = np.array([{"a": 1}] * 4, dtype=object)
    np.savez(
        tmp_path / "pickle.npz",
        x_train=objects,
        y_train=np.zeros(4, int),
        x_test=x,
        y_test=np.zeros(4, int),
    )
    for name, match in [
        ("missing.npz", "lacks y_test"),
        ("floaty.npz", "integer"),
        ("nothere.npz", "must be a .npz file"),
    ]:
        with pytest.raises(ValueError, match=match):
            load_data(JobSpec(dataset="npz", data_path=name), data_dir=tmp_path)
    with pytest.raises(ValueError):  # object arrays need pickle, which is refused
        load_data(JobSpec(dataset="npz", data_path="pickle.npz"), data_dir=tmp_path)


# --- paths -----------------------------------------------------------------------------------


def test_paths_may_not_escape_the_data_dir(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (tmp_path / "secret.npz").write_bytes(b"")
    (root / "link.npz").symlink_to(tmp_path / "secret.npz")
    assert resolve_data_path("sub/../x.npz", root) == root.resolve() / "x.npz"
    for bad in ["../secret.npz", "/etc/passwd", "sub/../../secret.npz", "link.npz"]:
        with pytest.raises(ValueError, match="outside the data directory"):
            resolve_data_path(bad, root)
        # The spec refuses most of these up front; the trainer must hold on its own (a spec
        # that skipped validation, or a symlink the API cannot see).
        spec = JobSpec(dataset="npz", data_path="x.npz").model_copy(update={"data_path": bad})
        with pytest.raises(ValueError, match="outside the data directory"):
            load_data(spec, data_dir=root)


def test_data_dir_from_environment(tmp_path, monkeypatch):
    _write_mnist(tmp_path / "m")
    monkeypatch.setenv("BNLAB_DATA_DIR", str(tmp_path))
    assert resolve_data_path("m") == (tmp_path / "m").resolve()
    assert len(load_data(JobSpec(dataset="mnist_idx", data_path="m")).y_train) == 12
