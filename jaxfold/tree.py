"""Path helpers over nested dicts of arrays (the only tree shape jaxfold's core sees).

A *path* is a '/'-joined string of dict keys, e.g. ``"params/layer1_0/conv1/kernel"``. Every function here is
pure: it returns new containers and never mutates its input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

SEP = "/"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict → flat ``{path: leaf}`` in insertion order."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{SEP}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat ``{path: leaf}`` → nested dict (inverse of :func:`flatten`)."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split(SEP)
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def get(tree: Mapping[str, Any], path: str) -> Any:
    """The leaf or subtree at ``path``; a missing key names the path and the keys that exist."""
    node: Any = tree
    walked = []
    for key in path.split(SEP):
        if not isinstance(node, Mapping) or key not in node:
            have = sorted(node) if isinstance(node, Mapping) else type(node).__name__
            raise KeyError(f"path {path!r}: no {key!r} under {SEP.join(walked) or '<root>'} (has {have})")
        node = node[key]
        walked.append(key)
    return node


def set_(tree: Mapping[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``tree`` with ``path`` replaced by ``value`` (copies only the dicts along the path)."""
    key, _, rest = path.partition(SEP)
    out = dict(tree)
    out[key] = set_(tree.get(key, {}), rest, value) if rest else value
    return out


def map_with_path(fn: Callable[[str, Any], Any], tree: Mapping[str, Any]) -> dict[str, Any]:
    """Apply ``fn(path, leaf)`` to every leaf."""
    return unflatten({p: fn(p, v) for p, v in flatten(tree).items()})


def leaves(tree: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    yield from flatten(tree).items()


def shapes(tree: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{path: (shape, dtype name)}`` — what a strict restore compares."""
    return {p: (tuple(np.shape(v)), str(np.asarray(v).dtype) if not hasattr(v, "dtype") else str(v.dtype))
            for p, v in flatten(tree).items()}


def compare(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Human-readable structural differences (paths, shapes, dtypes) between two trees; empty if they agree."""
    sa, sb = shapes(a), shapes(b)
    problems = [f"missing {p}: expected shape {sa[p][0]} {sa[p][1]}" for p in sa if p not in sb]
    problems += [f"unexpected {p}: shape {sb[p][0]} {sb[p][1]}" for p in sb if p not in sa]
    for p in sa:
        if p in sb and sa[p] != sb[p]:
            problems.append(f"{p}: expected shape {sa[p][0]} {sa[p][1]}, got {sb[p][0]} {sb[p][1]}")
    return problems


def count(tree: Mapping[str, Any]) -> int:
    """Total number of scalars in a tree."""
    return int(sum(np.prod(np.shape(v), dtype=np.int64) for v in flatten(tree).values()))
