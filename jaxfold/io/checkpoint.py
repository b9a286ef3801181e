"""Model checkpoints: orbax arrays + a JSON sidecar (model config with every width, jaxfold version, shapes).

``restore`` rebuilds the model config from the sidecar, derives the expected variable shapes with
``jax.eval_shape`` and refuses any disagreement, naming the path and both shapes. Saves are atomic: the new
checkpoint is written beside the old one and swapped in by renames, so a save killed at any moment leaves the
previous checkpoint readable (a kill between the two renames is recovered from the ``.old`` copy).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxfold import tree as tree_lib
from jaxfold.errors import MissingFile, UserError
from jaxfold.models.base import ModelConfig, config_from_dict

SIDECAR = "jaxfold.json"
_ARRAYS = "arrays"


class CheckpointMismatch(UserError):
    """The stored variables do not match what the model config (or caller) expects."""


def _version() -> str:
    from jaxfold import __version__

    return __version__


def _old(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path).absolute()
    if not (path / SIDECAR).is_file() and (_old(path) / SIDECAR).is_file():
        return _old(path)  # a save was killed between its two renames
    return path


def exists(path: str | os.PathLike) -> bool:
    return (_resolve(path) / SIDECAR).is_file()


@contextlib.contextmanager
def _atomic_dir(path: Path) -> Iterator[Path]:
    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = _old(path)
    if old.exists() and (path / SIDECAR).is_file():
        shutil.rmtree(old)  # stale leftover of an earlier interrupted swap; `path` is complete
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _write_arrays(directory: Path, variables: Any) -> None:
    import orbax.checkpoint as ocp

    ckptr = ocp.StandardCheckpointer()
    ckptr.save(directory / _ARRAYS, variables)
    ckptr.wait_until_finished()


def _read_arrays(directory: Path, target: Any) -> Any:
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), target)
    return ocp.StandardCheckpointer().restore(directory / _ARRAYS, abstract)


def _check(expected: dict, stored: dict, where: str) -> None:
    problems = tree_lib.compare(expected, stored)
    if problems:
        head = "\n  ".join(problems[:20]) + (f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise CheckpointMismatch(f"checkpoint {where} does not match the expected variables:\n  {head}")


def _shape_table(variables: Any) -> dict[str, list]:
    return {p: [list(s), d] for p, (s, d) in tree_lib.shapes(variables).items()}


def _from_table(table: dict[str, list]) -> dict:
    return tree_lib.unflatten({p: jax.ShapeDtypeStruct(tuple(s), jnp.dtype(d)) for p, (s, d) in table.items()})


def save(path: str | os.PathLike, variables: dict, model_config: ModelConfig, *,
         metadata: dict | None = None) -> Path:
    """Save ``{'params': …, 'batch_stats': …}`` of a model built from ``model_config``.

    The variables must match the config's shapes exactly; saving a mismatched pair is refused here rather than
    discovered at restore time.
    """
    variables = {k: v for k, v in variables.items() if v or k == "params"}
    expected = {k: v for k, v in model_config.abstract_variables().items() if k in variables}
    _check(expected, variables, f"being saved to {path}")
    path = Path(path)
    with _atomic_dir(path) as tmp:
        _write_arrays(tmp, variables)
        sidecar = {"format": "jaxfold-checkpoint/1", "jaxfold_version": _version(),
                   "model": model_config.to_dict(), "variables": _shape_table(variables),
                   "metadata": metadata or {}}
        (tmp / SIDECAR).write_text(json.dumps(sidecar, indent=2, sort_keys=True, default=str))
    return path


def read_sidecar(path: str | os.PathLike) -> dict:
    path = _resolve(path)
    if not (path / SIDECAR).is_file():
        raise MissingFile(f"no jaxfold checkpoint at {path} (missing {SIDECAR}); train or fold a model "
                          "first, e.g. `jaxfold train --config configs/resnet18_fmnist.py --workdir W`")
    return json.loads((path / SIDECAR).read_text())


def restore(path: str | os.PathLike, expected_config: ModelConfig | None = None
            ) -> tuple[dict, ModelConfig, dict]:
    """``(variables, model_config, metadata)``; the model config is rebuilt from the sidecar.

    If ``expected_config`` is given, the checkpoint must be of exactly that model (same arch and widths).
    """
    path = _resolve(path)
    sidecar = read_sidecar(path)
    model_config = config_from_dict(sidecar["model"])
    if expected_config is not None and expected_config != model_config:
        a, b = expected_config.to_dict(), model_config.to_dict()
        diffs = [f"{k}: expected {a.get(k)}, checkpoint has {b.get(k)}" for k in sorted(set(a) | set(b))
                 if a.get(k) != b.get(k)]
        raise CheckpointMismatch(f"checkpoint {path} holds a different model:\n  " + "\n  ".join(diffs))
    stored = _from_table(sidecar["variables"])
    expected = {k: v for k, v in model_config.abstract_variables().items() if k in stored}
    _check(expected, stored, str(path))
    variables = _read_arrays(path, stored)
    return variables, model_config, sidecar.get("metadata", {})


def save_tree(path: str | os.PathLike, tree: Any) -> Path:
    """Save any pytree (e.g. a training state with optimiser state) atomically, by flattened leaf index."""
    leaves = jax.tree.leaves(tree)
    arrays = {f"{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
    path = Path(path)
    with _atomic_dir(path) as tmp:
        _write_arrays(tmp, arrays)
        sidecar = {"format": "jaxfold-tree/1", "jaxfold_version": _version(), "treedef": str(jax.tree.structure(tree)),
                   "variables": _shape_table(arrays)}
        (tmp / SIDECAR).write_text(json.dumps(sidecar, indent=2))
    return path


def restore_tree(path: str | os.PathLike, target: Any) -> tuple[Any, dict]:
    """Restore a :func:`save_tree` checkpoint into the structure of ``target`` (shapes checked strictly)."""
    path = _resolve(path)
    sidecar = read_sidecar(path)
    leaves, treedef = jax.tree.flatten(target)
    if sidecar.get("treedef") != str(treedef):
        raise CheckpointMismatch(f"checkpoint {path} has tree structure\n  {sidecar.get('treedef')}\n"
                                 f"but the target has\n  {treedef}")
    expected = {f"{i:05d}": jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype) for i, x in enumerate(leaves)}
    _check(expected, _from_table(sidecar["variables"]), str(path))
    arrays = _read_arrays(path, expected)
    return jax.tree.unflatten(treedef, [arrays[k] for k in sorted(arrays)]), sidecar
