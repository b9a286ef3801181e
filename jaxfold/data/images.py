"""Image classification datasets as in-memory uint8 NHWC arrays, with their per-channel normalisation.

Sources: MNIST / Fashion-MNIST from the fetched cache (IDX), CIFAR-10/100 from a user directory in the standard
python-pickle batch format, and an ImageNet-style class-folder tree (``train/<class>/*.jpg``, ``val/<class>/…``).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import numpy as np

from jaxfold.data.fetch import DatasetMissing, dataset_dir, is_fetched
from jaxfold.data.idx import read_idx
from jaxfold.errors import UserError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_STATS = {  # per-channel mean/std of the training images in [0, 1]
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": (IMAGENET_MEAN, IMAGENET_STD),
}
# Horizontal flips preserve the label for clothes, objects and scenes, not for digits.
_HFLIP = {"mnist": False, "fashion_mnist": True, "cifar10": True, "cifar100": True, "imagefolder": True}
DATASETS = tuple(_STATS)


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    name: str
    train_images: np.ndarray  # (N, H, W, C) uint8
    train_labels: np.ndarray  # (N,) int32
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool
    class_names: tuple[str, ...] = ()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]


def _mnist_like(name: str) -> ImageDataset:
    if not is_fetched(name):
        raise DatasetMissing(f"{name} is not in the data cache ({dataset_dir(name)}): run `jaxfold data fetch {name}`")
    d = dataset_dir(name)
    arrays = [read_idx(d / f"{f}.gz") for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                   "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]
    xtr, ytr, xte, yte = arrays
    mean, std = _STATS[name]
    return ImageDataset(name, xtr[..., None], ytr.astype(np.int32), xte[..., None], yte.astype(np.int32), 10,
                        mean, std, _HFLIP[name])


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _cifar(name: str, path: str | os.PathLike | None) -> ImageDataset:
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    if path is None:
        raise DatasetMissing(f"{name} is not fetchable here: download and extract the python version "
                             f"({folder}) and pass its directory with `--config.data.path=DIR` "
                             "(`jaxfold eval`: `--data-path DIR`)")
    root = Path(path)
    if (root / folder).is_dir():
        root = root / folder
    if name == "cifar10":
        train_files, test_files, key = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"
    else:
        train_files, test_files, key = ["train"], ["test"], b"fine_labels"
    missing = [f for f in train_files + test_files if not (root / f).is_file()]
    if missing:
        raise DatasetMissing(f"{name}: {root} lacks {missing}; expected the extracted {folder} directory")

    def load(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        batches = [_unpickle(root / f) for f in files]
        x = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        y = np.concatenate([np.asarray(b[key]) for b in batches]).astype(np.int32)
        return np.ascontiguousarray(x, dtype=np.uint8), y

    (xtr, ytr), (xte, yte) = load(train_files), load(test_files)
    mean, std = _STATS[name]
    return ImageDataset(name, xtr, ytr, xte, yte, 10 if name == "cifar10" else 100, mean, std, True)


_IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def _read_image(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = size / min(w, h)  # resize the short side, then centre-crop (the usual eval transform)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _imagefolder(path: str | os.PathLike | None, image_size: int) -> ImageDataset:
    if path is None:
        raise DatasetMissing("imagefolder needs a directory with train/<class>/… and val/<class>/… (or test/): "
                             "pass it with `--config.data.path=DIR` (`jaxfold eval`: `--data-path DIR`)")
    root = Path(path)
    test_split = next((s for s in ("val", "test") if (root / s).is_dir()), None)
    if not (root / "train").is_dir() or test_split is None:
        raise DatasetMissing(f"imagefolder: {root} needs train/ and val/ (or test/) subdirectories of class folders")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise DatasetMissing(f"imagefolder: {root / 'train'} has no class folders")
    index = {c: i for i, c in enumerate(classes)}

    def load(split: str) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for c in sorted(p.name for p in (root / split).iterdir() if p.is_dir()):
            if c not in index:
                raise UserError(f"imagefolder: class {c!r} in {split}/ does not exist in train/ ({classes})")
            for f in sorted((root / split / c).iterdir()):
                if f.suffix.lower() in _IMAGE_EXTS:
                    xs.append(_read_image(f, image_size))
                    ys.append(index[c])
        if not xs:
            raise DatasetMissing(f"imagefolder: no images under {root / split}")
        return np.stack(xs), np.asarray(ys, np.int32)

    (xtr, ytr), (xte, yte) = load("train"), load(test_split)
    return ImageDataset("imagefolder", xtr, ytr, xte, yte, len(classes), IMAGENET_MEAN, IMAGENET_STD, True,
                        tuple(classes))


def load(name: str, path: str | os.PathLike | None = None, image_size: int = 224) -> ImageDataset:
    """Load a dataset by name: ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100`` or ``imagefolder``."""
    if name in ("mnist", "fashion_mnist"):
        return _mnist_like(name)
    if name in ("cifar10", "cifar100"):
        return _cifar(name, path)
    if name == "imagefolder":
        return _imagefolder(path, image_size)
    raise UserError(f"unknown dataset {name!r}; known: {list(DATASETS)}")
