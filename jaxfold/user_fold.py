"""``jaxfold fold`` for a model of your own, named by import path — zero jaxfold code in your model.

A config whose ``model`` is a string ``"my_pkg.nets:build"`` names a function; ``build(**config.model_args)``
returns ``(model, example_args)`` or ``(model, example_args, variables)``:

* an ``nnx.Module`` (its weights inside) is folded with :func:`jaxfold.fold_nnx`;
* a linen ``nn.Module`` is folded with :func:`jaxfold.fold_traced` on ``model.apply`` and its variables: the third
  element, else ``fold.variables`` (an ``.npz`` of '/'-joined paths, as this command writes), else a random
  initialisation from ``fold.seed`` (the report says ``"variables": "random init"``).

The spec is derived by tracing (``fold.verify`` runs the permutation check). Corrections: ``none``, ``fold_ar``,
``fold_dir``, ``repair`` (with the config's ``data`` section: training images, as for the zoo). Written atomically
into the workdir: ``variables.npz`` (the folded variables), ``spec.json`` (every group with its members and
old/new width, every unfoldable axis with its reason) and ``report.json``.
"""

from __future__ import annotations

import importlib
import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxfold import tree as tree_lib
from jaxfold.errors import MissingFile, UserError
from jaxfold.files import write_bytes_atomic, write_json_atomic

VARIABLES, SPEC, REPORT = "variables.npz", "spec.json", "report.json"


def is_user_model(config: ml_collections.ConfigDict) -> bool:
    return isinstance(config.get("model"), str)


def load_builder(ref: str) -> Callable[..., Any]:
    """``"package.module:function"`` → the function."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"--config.model={ref!r}: name a function as 'package.module:function' (e.g. "
                        "'experiments.own_models:build_nnx_cnn')")
    if os.getcwd() not in sys.path:  # as `python -m` would: a package in the current directory is importable
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"--config.model={ref!r}: cannot import {module_name!r} ({e}); run from the directory that "
                        "holds it or install it") from e
    if not callable(getattr(module, attr, None)):
        raise UserError(f"--config.model={ref!r}: {module_name} has no function {attr!r}")
    return getattr(module, attr)


def build(config: ml_collections.ConfigDict) -> tuple[Any, tuple[Any, ...], Any]:
    """(model, example_args, variables or None) from the config's ``model`` and ``model_args``."""
    kwargs = dict(config.get("model_args", {}) or {})
    built = load_builder(config.model)(**kwargs)
    if not isinstance(built, tuple) or len(built) not in (2, 3):
        raise UserError(f"{config.model} must return (model, example_args) or (model, example_args, variables); "
                        f"got {type(built).__name__}")
    model, args = built[0], built[1]
    if not isinstance(args, tuple | list):
        args = (args,)
    return model, tuple(args), built[2] if len(built) == 3 else None


def save_variables(path: str | os.PathLike, variables: Any) -> Path:
    """Variables as an ``.npz`` of '/'-joined paths (atomic)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{p: np.asarray(a) for p, a in tree_lib.flatten(variables).items()})
    return write_bytes_atomic(path, buffer.getvalue())


def load_variables(path: str | os.PathLike) -> dict[str, Any]:
    if not Path(path).is_file():
        raise MissingFile(f"no variables file {path} (--config.fold.variables): an .npz written by jaxfold fold or "
                          "jaxfold.user_fold.save_variables")
    with np.load(path) as data:
        return tree_lib.unflatten({k: data[k] for k in data.files})


def _spec_json(spec: Any, before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    return {"groups": [{"name": g.name, "width_before": before[g.name], "width_after": after[g.name],
                        "members": [{"path": m.path, "axis": m.axis, "role": m.role, "block": m.block,
                                     "repeat": m.repeat} for m in g.members]} for g in spec.groups],
            "unfoldable": [{"path": p, "axis": a, "reason": why} for p, a, why in spec.reasons],
            "norms": [list(pair) for pair in spec.norms]}


def _functional(config: ml_collections.ConfigDict, model: Any, args: tuple[Any, ...], variables: Any,
                key: jax.Array) -> tuple[Any, dict[str, Any], str]:
    """``(apply_fn, variables, where the variables came from)`` for a linen or NNX model (NNX through
    :mod:`jaxfold.layout`'s linen-style view)."""
    from flax import nnx

    from jaxfold import layout

    fc = config.get("fold") or ml_collections.ConfigDict()
    if isinstance(model, nnx.Module):
        handle, variables = layout.to_variables(model)
        return (lambda v, *a: layout.from_variables(handle, v)(*a)), variables, "module"
    if not (hasattr(model, "apply") and hasattr(model, "init")):
        raise UserError(f"{config.model} returned a {type(model).__name__}; expected a flax linen or nnx Module")
    if variables is not None:
        return model.apply, variables, "returned by the builder"
    if fc.get("variables"):
        return model.apply, load_variables(fc.variables), str(fc.variables)
    return model.apply, dict(jax.jit(model.init)(key, *args)), "random init"


def _repair_data(config: ml_collections.ConfigDict, section: ml_collections.ConfigDict) -> Any:
    """REPAIR's batches from the config's ``data`` section (training images, as for the zoo)."""
    if "data" not in config:
        raise UserError("correction 'repair' needs training data: the config needs a `data` section")
    from jaxfold.fold_run import correction_inputs
    from jaxfold.train import load_data

    return correction_inputs(section, load_data(config))[0]


def run_user_fold(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Fold the user's model a config names into ``workdir`` (see the module docstring); returns the report."""
    from flax import nnx

    from jaxfold.trace import fold_nnx, fold_traced

    fc = config.get("fold") or ml_collections.ConfigDict()
    ratio, correction = float(fc.get("ratio", 0.25)), fc.get("correction", "none")
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"channel ratio must be in [0, 1), got {ratio} (--config.fold.ratio)")
    data = _repair_data(config, fc) if correction == "repair" else None
    model, args, variables = build(config)
    key = jax.random.key(int(fc.get("seed", 0)))
    options = dict(clusterer=fc.get("clusterer", "kmeans"), n_init=int(fc.get("n_init", 10)),
                   max_iter=int(fc.get("max_iter", 300)), correction=correction, data=data,
                   verify=fc.get("verify", None))
    if isinstance(model, nnx.Module):
        result, source = fold_nnx(model, ratio, key, *args, **options), "module"
    else:
        apply_fn, variables, source = _functional(config, model, args, variables, key)
        result = fold_traced(apply_fn, variables, ratio, key, *args, **options)
    workdir = Path(workdir)
    before = {r["group"]: r["n"] for r in result.report["groups"]}
    write_json_atomic(workdir / SPEC, _spec_json(result.spec, before, result.widths))
    report = {"model": config.model, "model_args": dict(config.get("model_args", {}) or {}), "variables": source,
              "ratio": ratio, **result.report,
              "module_rebuilt": result.module is not None if isinstance(model, nnx.Module) else None,
              "module_note": result.module_note,
              "output_shapes": [list(np.shape(o)) for o in jax.tree_util.tree_leaves(
                  result.apply_fn(result.variables, *args))]}
    report["checkpoint"] = str(save_variables(workdir / VARIABLES, result.variables))
    write_json_atomic(workdir / REPORT, report)
    return report


class UserSweepRunner:
    """``jaxfold sweep`` points for a model named by import path: the spec is derived once and reused by every
    point (folded with :func:`jaxfold.fold_traced`). With a ``data`` section the metric is test accuracy (the
    model's first example argument is the image batch); without one it is the folded outputs' relative error
    against the dense ones on the example input (``output_error``: 0 = the same function)."""

    def __init__(self, config: ml_collections.ConfigDict) -> None:
        from jaxfold.trace import derive_spec
        from jaxfold.trace.traced_fold import TRACED_CORRECTIONS

        for variant in config.sweep.variants:  # before any work
            method, _, correction = str(variant).partition(":")
            if method != "fold" or correction not in TRACED_CORRECTIONS:
                raise UserError(f"sweep variant {variant!r}: a model named by import path is folded only (the "
                                "baselines need a zoo config), with a correction in "
                                f"{list(TRACED_CORRECTIONS)}: use fold:<correction>")
        self.config, self.sweep = config, config.sweep
        model, self.args, variables = build(config)
        key = jax.random.key(int(self.sweep.get("seed", 0)))
        self.apply_fn, self.variables, self.source = _functional(config, model, self.args, variables, key)
        self.spec = derive_spec(self.apply_fn, self.variables, *self.args, verify=self.sweep.get("verify", None))
        self.data = self.batches = None
        if "data" in config:
            from jaxfold.train import load_data

            self.data = load_data(config)
        if any(str(v).endswith(":repair") for v in self.sweep.variants):
            self.batches = _repair_data(config, self.sweep)
        self.dense_outputs = jax.tree_util.tree_leaves(self.apply_fn(self.variables, *self.args))

    def _metrics(self, apply_fn: Any, variables: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        if self.data is not None:
            from jaxfold.eval.classification import evaluate

            m = evaluate(lambda v, x: apply_fn(v, x), variables, self.data.test_images, self.data.test_labels,
                         mean=self.data.mean, std=self.data.std)
            return {"metric": "accuracy", "value": m["accuracy"], "loss": m["loss"],
                    "eval_seconds": round(time.perf_counter() - t0, 4)}
        outputs = jax.tree_util.tree_leaves(apply_fn(variables, *self.args))
        num = sum(float(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
                  for a, b in zip(outputs, self.dense_outputs, strict=True))
        den = sum(float(np.sum(np.asarray(b, np.float64) ** 2)) for b in self.dense_outputs)
        return {"metric": "output_error", "value": float(np.sqrt(num / max(den, 1e-30))), "loss": None,
                "eval_seconds": round(time.perf_counter() - t0, 4)}

    def _record(self, point_id: str, method: str, correction: str, ratio: float, seed: int, params: int,
                metrics: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
        from jaxfold import measure

        before = measure.param_count(self.variables)
        return {"id": point_id, "model": self.config.model, "dataset": self.data.name if self.data else "example",
                "method": method, "correction": correction, "ratio": ratio, "seed": seed,
                "param_sparsity": 1.0 - params / before, "params": params, "params_before": before,
                "variables": self.source, **metrics, "fold_seconds": report.get("fold_seconds", 0.0),
                "correction_seconds": report.get("correction_seconds", 0.0),
                "uncorrected_groups": report.get("uncorrected_groups", [])}

    def run(self, p: Any) -> dict[str, Any]:
        from jaxfold import measure
        from jaxfold.trace import fold_traced

        result = fold_traced(self.apply_fn, self.variables, p.ratio, jax.random.key(p.seed), *self.args,
                             spec=self.spec, correction=p.correction, data=self.batches,
                             n_init=int(self.sweep.get("n_init", 10)), max_iter=int(self.sweep.get("max_iter", 300)),
                             clusterer=self.sweep.get("clusterer", "kmeans"))
        return self._record(p.id, p.method, p.correction, p.ratio, p.seed, measure.param_count(result.variables),
                            self._metrics(result.apply_fn, result.variables), result.report)

    def dense(self) -> dict[str, Any]:
        from jaxfold import measure

        return self._record("dense", "dense", "none", 0.0, 0, measure.param_count(self.variables),
                            self._metrics(self.apply_fn, self.variables), {})
