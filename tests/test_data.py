"""Datasets: IDX parser, fetch cache/verification, CIFAR pickle batches and class-folder trees in their real formats."""

import gzip
import hashlib
import pickle

import numpy as np
import pytest
from PIL import Image

from jaxfold.data import fetch, images
from jaxfold.data.idx import parse_idx, read_idx


def _idx(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def test_idx_round_trip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx(arr)))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    (tmp_path / "b").write_bytes(_idx(arr))
    np.testing.assert_array_equal(read_idx(tmp_path / "b"), arr)


def test_idx_rejects_bad_data():
    with pytest.raises(ValueError, match="not an IDX file"):
        parse_idx(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="bytes follow"):
        parse_idx(_idx(np.zeros((2, 2)))[:-1])


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch):
    """Four small IDX files and their hashes registered as if they were MNIST."""
    rng = np.random.default_rng(1)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, 20),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (8, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, 8)}
    src = tmp_path / "src"
    src.mkdir()
    hashes = {}
    for name, arr in arrays.items():
        raw = _idx(arr)
        (src / f"{name}.gz").write_bytes(gzip.compress(raw))
        hashes[name] = hashlib.sha256(raw).hexdigest()
    monkeypatch.setenv("JAXFOLD_DATA", str(tmp_path / "cache"))
    monkeypatch.setitem(fetch.SHA256, "mnist", hashes)
    return src, arrays


def test_fetch_from_directory_verifies_and_loads(fake_mnist):
    src, arrays = fake_mnist
    with pytest.raises(fetch.DatasetMissing, match="jaxfold data fetch mnist"):
        images.load("mnist")
    path = fetch.fetch("mnist", source=src)
    assert fetch.is_fetched("mnist") and path == fetch.dataset_dir("mnist")
    ds = images.load("mnist")
    assert ds.train_images.shape == (20, 28, 28, 1) and ds.train_images.dtype == np.uint8
    np.testing.assert_array_equal(ds.test_labels, arrays["t10k-labels-idx1-ubyte"])
    assert not ds.hflip  # digits are not flipped


def test_fetch_rejects_corrupt_files_and_keeps_cache_clean(fake_mnist):
    src, arrays = fake_mnist
    bad = arrays["train-labels-idx1-ubyte"].copy()
    bad[0] = (bad[0] + 1) % 10
    (src / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(bad)))
    with pytest.raises(ValueError, match="SHA-256"):
        fetch.fetch("mnist", source=src)
    assert not fetch.dataset_dir("mnist").exists()  # nothing half-written


def test_fetch_unknown_and_missing_source(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXFOLD_DATA", str(tmp_path))
    with pytest.raises(ValueError, match="fetchable"):
        fetch.fetch("cifar10")
    with pytest.raises(fetch.DatasetMissing, match="lacks train-images-idx3-ubyte.gz"):
        fetch.fetch("fashion_mnist", source=tmp_path)


def test_fashion_mnist_without_apt_says_how(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXFOLD_DATA", str(tmp_path))
    monkeypatch.setattr(fetch, "_FMNIST_SYSTEM_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    with pytest.raises(fetch.DatasetMissing, match="apt-get/dpkg-deb are not available.*--from DIR"):
        fetch.fetch("fashion_mnist")


def _write_cifar(root, name, n_per_batch=6):
    rng = np.random.default_rng(2)
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        folder, key = root / "cifar-10-batches-py", b"labels"
    else:
        folder, files, key = root / "cifar-100-python", ["train", "test"], b"fine_labels"
    folder.mkdir(parents=True)
    written = {}
    for f in files:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10 if name == "cifar10" else 100, n_per_batch).tolist()
        with open(folder / f, "wb") as fh:
            pickle.dump({b"data": data, key: labels, b"batch_label": f.encode()}, fh)
        written[f] = (data, labels)
    return written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickle_batches(tmp_path, name):
    written = _write_cifar(tmp_path, name)
    ds = images.load(name, tmp_path)
    n_train = 30 if name == "cifar10" else 6
    assert ds.train_images.shape == (n_train, 32, 32, 3) and ds.test_images.shape == (6, 32, 32, 3)
    first = "data_batch_1" if name == "cifar10" else "train"
    data, labels = written[first]
    # CIFAR rows are 1024 R, then G, then B values, each row-major 32×32.
    np.testing.assert_array_equal(ds.train_images[0, :, :, 1], data[0, 1024:2048].reshape(32, 32))
    assert ds.train_labels[: len(labels)].tolist() == labels
    assert ds.num_classes == (10 if name == "cifar10" else 100) and len(ds.mean) == 3


def test_cifar_missing_files_name_the_problem(tmp_path):
    with pytest.raises(fetch.DatasetMissing, match="config.data.path"):
        images.load("cifar10")
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(fetch.DatasetMissing, match="data_batch_1"):
        images.load("cifar10", tmp_path)


def test_imagefolder_tree(tmp_path):
    rng = np.random.default_rng(3)
    for split, n in (("train", 3), ("val", 2)):
        for c, cls in enumerate(["cat", "dog"]):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = np.full((40, 50, 3), 40 * c + i, np.uint8)
                ext = "png" if i % 2 else "jpg"
                Image.fromarray(arr).save(d / f"{i}.{ext}")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    ds = images.load("imagefolder", tmp_path, image_size=16)
    assert ds.class_names == ("cat", "dog")
    assert ds.train_images.shape == (6, 16, 16, 3) and ds.test_images.shape == (4, 16, 16, 3)
    assert ds.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert abs(int(ds.train_images[4, 8, 8, 0]) - 41) <= 2  # dog #1 (PNG): constant 41, JPEG/resize-tolerant
    del rng


def test_imagefolder_errors(tmp_path):
    with pytest.raises(fetch.DatasetMissing, match="train/ and val/"):
        images.load("imagefolder", tmp_path)
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "val" / "b").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "train" / "a" / "x.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "val" / "b" / "x.png")
    with pytest.raises(ValueError, match="class 'b' in val/ does not exist in train/"):
        images.load("imagefolder", tmp_path, image_size=4)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="known:"):
        images.load("svhn")


@pytest.mark.skipif(not fetch.is_fetched("fashion_mnist"),
                    reason="run `jaxfold data fetch fashion_mnist` (make test does)")
def test_real_fashion_mnist():
    ds = images.load("fashion_mnist")
    assert ds.train_images.shape == (60000, 28, 28, 1) and ds.test_images.shape == (10000, 28, 28, 1)
    assert np.bincount(ds.train_labels).tolist() == [6000] * 10
    mean = ds.train_images.mean() / 255
    std = ds.train_images.std() / 255
    assert abs(mean - ds.mean[0]) < 1e-3 and abs(std - ds.std[0]) < 1e-3
