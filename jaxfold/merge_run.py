"""`jaxfold merge`: the paper's model-merging experiment (Tables 1–2) on a config's model and dataset.

For every setting of the config's ``merge`` section, two endpoints are trained with the config's ``train`` section
(:func:`jaxfold.train.train`) and cached under ``W/endpoints/<setting>_<a|b>-<hash of what trains it>/``:

* ``same`` — both on every class, with the training seeds ``merge.seeds`` (a, b);
* ``split`` — a on the classes ``merge.split[0]``, b on ``merge.split[1]`` (same seeds). Both keep the full
  classifier head; a model's other classes are never targets, so training pushes their logits down. The heads are
  joined as in the same-task case, by averaging the two models' logits (the stacked network's output; the
  ensemble is this average too): no method needs to know the split, and each model's logits for classes it never
  saw are low, so the average mostly ranks each model's own classes by its own scores — unless one model's
  scores run higher than the other's, which then wins most inputs;
* ``split_by_task`` — the same endpoints, the heads joined by task instead: class c's logit is the one of the
  model trained on c (output weights 1 and 0, :func:`jaxfold.merging.stack_models`), the split's own head for
  every method and the ensemble; a class in neither list is averaged.

Each setting's endpoints are merged by every method of ``merge.methods`` (:mod:`jaxfold.merging`), then repaired
with REPAIR on ``merge.repair_examples`` training images of every class (ZipIt! correlates the same images), and
everything is evaluated on the full test set: model a, model b, the ensemble (averaged logits), each merge with
and without REPAIR; for a split, also the accuracy on each task's test images. ``W/results.json`` is rewritten
(atomically) after every setting.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxfold.errors import UserError
from jaxfold.files import write_json_atomic
from jaxfold.io import checkpoint
from jaxfold.merging import METHODS, ensemble, merge_models, repair_merged

RESULTS = "results.json"
SETTINGS = ("same", "split", "split_by_task")


def merge_section(**changes: Any) -> dict[str, Any]:
    """The ``merge`` section: the settings, the endpoints' training seeds, the label split, the methods, REPAIR
    and its training images (ZipIt! reads them too), the merge seed, k-means' restarts, weight matching's sweeps."""
    section = dict(settings=SETTINGS, seeds=(0, 1), split=((0, 1, 2, 3, 4), (5, 6, 7, 8, 9)), methods=METHODS,
                   repair=True, repair_examples=10_000, seed=0, n_init=10, max_iter=300, max_sweeps=100)
    section.update(changes)
    return section


def check_merge_config(config: ml_collections.ConfigDict) -> None:
    """Every name and value of the ``merge`` section, checked before anything is trained."""
    for name in ("merge", "model", "data", "train"):
        if name not in config:
            raise UserError(f"the config has no `{name}` section (see configs/merge_fmnist.py)")
    mc = config.merge
    unknown = sorted(set(mc.settings) - set(SETTINGS))
    if unknown or not mc.settings:
        raise UserError(f"unknown merge settings {unknown or '(none given)'}; --config.merge.settings takes "
                        f"{list(SETTINGS)}")
    unknown = sorted(set(mc.methods) - set(METHODS))
    if unknown:
        raise UserError(f"unknown merge methods {unknown}; --config.merge.methods takes {list(METHODS)}")
    if len(mc.seeds) != 2:
        raise UserError(f"--config.merge.seeds needs the two endpoints' training seeds, got {mc.seeds}")
    if {"split", "split_by_task"} & set(mc.settings):
        a, b = (tuple(s) for s in mc.split)
        if not a or not b or set(a) & set(b):
            raise UserError(f"--config.merge.split needs two disjoint, non-empty class lists, got {mc.split}")
    if "classes" not in config.data:
        raise UserError("the config's data section needs a `classes` field (an empty tuple: every class)")


def endpoint_config(config: ml_collections.ConfigDict, seed: int, classes: tuple[int, ...]
                    ) -> ml_collections.ConfigDict:
    """The training config of one endpoint: the config's model, data (only ``classes``) and train sections."""
    out = ml_collections.ConfigDict({k: config[k].to_dict() for k in ("model", "data", "train")})
    out.train.seed = int(seed)
    out.data.classes = tuple(int(c) for c in classes)
    return out


def _endpoint(config: ml_collections.ConfigDict, directory: Path) -> Path:
    """The endpoint's checkpoint, trained into ``directory`` unless it is there already."""
    from jaxfold.train import train

    if not checkpoint.exists(directory / "checkpoint"):
        print(f"training endpoint {directory.name} ({config.train.epochs} epochs, seed {config.train.seed}, "
              f"classes {list(config.data.classes) or 'all'})", flush=True)
        train(config, directory)
    return directory / "checkpoint"


def endpoint_dir(workdir: Path, setting: str, which: str, config: ml_collections.ConfigDict) -> Path:
    """``W/endpoints/<setting>_<which>-<hash>``: the hash of the endpoint's training config, so a changed config
    trains anew instead of reusing a checkpoint trained otherwise."""
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:10]
    return workdir / "endpoints" / f"{setting}_{which}-{digest}"


def _by_task(classes: tuple[tuple[int, ...], tuple[int, ...]], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Output weights joining the heads by task: 1 for the model trained on a class, 0 for the other; a class in
    neither split 0.5 each."""
    wa, wb = (np.isin(np.arange(num_classes), c).astype(np.float32) for c in classes)
    neither = (wa + wb) == 0
    return np.where(neither, 0.5, wa), np.where(neither, 0.5, wb)


@functools.partial(jax.jit, static_argnums=0)
def _predict(apply_fn: Any, variables: Any, x: jax.Array) -> jax.Array:
    return jnp.argmax(apply_fn(variables, x).astype(jnp.float32), -1)


def _scores(model_cfg: Any, variables: Any, data: Any, tasks: dict[str, tuple[int, ...]],
            batch_size: int) -> dict[str, float]:
    """Accuracy on the full test set, and for a split on each task's test images: one pass over the test set (in
    fixed-shape batches of ``batch_size``, so one executable per architecture and width)."""
    from jaxfold.data.pipeline import eval_batches
    from jaxfold.eval.classification import inference_fn

    apply_fn, variables = inference_fn(model_cfg.module()), jax.device_put(variables)
    predicted = np.concatenate([np.asarray(_predict(apply_fn, variables, x))[mask > 0] for x, _, mask in
                                eval_batches(data.test_images, data.test_labels, batch_size, mean=data.mean,
                                             std=data.std)])
    correct = predicted == data.test_labels
    out = {"accuracy": round(float(correct.mean()), 6)}
    for name, classes in tasks.items():
        out[f"accuracy_{name}"] = round(float(correct[np.isin(data.test_labels, classes)].mean()), 6)
    return out


def run_setting(config: ml_collections.ConfigDict, workdir: Path, setting: str, data: Any) -> dict[str, Any]:
    """Train (or reuse) one setting's endpoints, merge them by every method, evaluate everything."""
    from jaxfold.data.pipeline import subset_batches

    mc = config.merge
    all_classes: tuple[int, ...] = ()
    classes = (all_classes, all_classes) if setting == "same" else tuple(tuple(int(c) for c in s) for s in mc.split)
    tasks = {} if setting == "same" else {"task_a": classes[0], "task_b": classes[1]}
    variables, dirs = [], {}
    trained_as = "same" if setting == "same" else "split"  # split and split_by_task share their endpoints
    for which, seed, cls in zip(("a", "b"), mc.seeds, classes, strict=True):
        cfg = endpoint_config(config, seed, cls)
        path = _endpoint(cfg, endpoint_dir(workdir, trained_as, which, cfg))
        v, model_cfg, _ = checkpoint.restore(path)
        variables.append(v)
        dirs[which] = str(path)
    a, b = variables
    weights = _by_task(classes, data.num_classes) if setting == "split_by_task" else None
    batches = subset_batches(data, mc.repair_examples, seed=0)
    eval_batch = int(config.train.get("eval_batch_size", 500))
    rows: dict[str, Any] = {"model_a": _scores(model_cfg, a, data, tasks, eval_batch),
                            "model_b": _scores(model_cfg, b, data, tasks, eval_batch)}
    stacked_cfg, stacked = ensemble(model_cfg, a, b, output_weights=weights)
    rows["ensemble"] = _scores(stacked_cfg, stacked, data, tasks, eval_batch)
    reports = {}
    for method in mc.methods:
        t0 = time.perf_counter()
        merged = merge_models(model_cfg, a, b, method, jax.random.key(mc.seed), data=batches, repair=False,
                              n_init=mc.n_init, max_iter=mc.max_iter, max_sweeps=mc.max_sweeps,
                              output_weights=weights)
        plain = _scores(model_cfg, merged.variables, data, tasks, eval_batch)
        row = {f"{k}_no_repair": v for k, v in plain.items()}
        if mc.repair:
            repaired = repair_merged(model_cfg, a, b, merged, batches, output_weights=weights)
            row.update(_scores(model_cfg, repaired, data, tasks, eval_batch))
        rows[method] = row
        reports[method] = {**merged.report, "total_seconds": round(time.perf_counter() - t0, 3)}
        print(f"{setting} {method}: {json.dumps(row)}", flush=True)
    return {"endpoints": dirs, "classes": {"a": list(classes[0]), "b": list(classes[1])}, "results": rows,
            "reports": reports}


def run_merge(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Run every setting of the config's ``merge`` section into ``workdir``; returns (and writes) the results."""
    from jaxfold.eval.classification import check_model_fits_data
    from jaxfold.train import load_data, model_config

    check_merge_config(config)
    workdir = Path(workdir)
    full = ml_collections.ConfigDict(config.to_dict())
    full.data.classes = ()
    data = load_data(full)  # the full dataset: every class, for REPAIR and the test accuracies
    check_model_fits_data(model_config(config), data)
    out: dict[str, Any] = {"dataset": data.name, "model": config.model.to_dict(), "train": config.train.to_dict(),
                           "merge": config.merge.to_dict(), "repair": bool(config.merge.repair), "settings": {}}
    for setting in config.merge.settings:
        out["settings"][setting] = run_setting(config, workdir, setting, data)
        write_json_atomic(workdir / RESULTS, out)
    return out


def summary(results: dict[str, Any]) -> str:
    """The results as a markdown table: one row per setting, one column per model or merge; a merge's cell is its
    accuracy with REPAIR and, in parentheses, without."""
    names = ["model_a", "model_b", "ensemble", *results["merge"]["methods"]]
    lines = ["| setting | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for setting, s in results["settings"].items():
        cells = []
        for name in names:
            row = s["results"][name]
            repaired, plain = row.get("accuracy"), row.get("accuracy_no_repair")
            cells.append(f"{plain:.4f}" if repaired is None else
                         f"{repaired:.4f}" + (f" ({plain:.4f})" if plain is not None else ""))
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
