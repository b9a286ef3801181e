"""Supervised training of the image models: optax SGD + momentum, cosine schedule, weight decay (the paper's
code: lr 0.1, momentum 0.9, wd 5e-4), jitted steps, progress bar with ETA, per-epoch metrics and checkpoints.

Weight regularisation for the paper's Fig. 11 (models trained with L1 or L2): ``train.l1`` / ``train.l2`` (default
0, optional in a config) add ``l1·Σ|w| + l2·Σw²`` over the conv and dense kernels to the loss; 0 leaves the step
exactly as without them. This is on top of ``weight_decay`` (coupled L2 on every parameter); set that to 0 for a
model regularised only by the penalty (configs/regularisation_fmnist.py).

Resumable: every epoch writes ``W/train_state`` (params, BN stats, optimiser state, epoch) atomically; a rerun
continues from it. The final model goes to ``W/checkpoint`` (restorable with :func:`jaxfold.io.restore`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from jaxfold import models
from jaxfold.data import images as image_data
from jaxfold.data.pipeline import prefetch, train_batches
from jaxfold.errors import UserError
from jaxfold.eval.classification import check_model_fits_data, evaluate, inference_fn
from jaxfold.files import write_text_atomic
from jaxfold.io import checkpoint


def model_config(config: ml_collections.ConfigDict) -> models.ModelConfig:
    kwargs = dict(config.model)
    return models.build(kwargs.pop("name"), **kwargs)


def load_data(config: ml_collections.ConfigDict) -> image_data.ImageDataset:
    """The dataset a config's ``data`` section names (``path`` "" means none given). ``classes`` (optional, a
    tuple of labels; empty: all) keeps only those classes' train and test images, the class count unchanged: a
    model of one task of a label split, its other classes never targets (configs/merge_fmnist.py)."""
    data = image_data.load(config.data.name, config.data.get("path") or None, config.data.get("image_size", 224))
    classes = tuple(config.data.get("classes", None) or ())
    if not classes:
        return data
    if not all(isinstance(c, int) and 0 <= c < data.num_classes for c in classes):
        raise UserError(f"data.classes must be labels in [0, {data.num_classes}), got {classes}")
    train, test = np.isin(data.train_labels, classes), np.isin(data.test_labels, classes)
    return dataclasses.replace(data, train_images=data.train_images[train], train_labels=data.train_labels[train],
                               test_images=data.test_images[test], test_labels=data.test_labels[test])


def make_optimizer(cfg: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.get("warmup_epochs", 0) * steps_per_epoch)
    if warmup:
        schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, total)
    else:
        schedule = optax.cosine_decay_schedule(cfg.lr, total)
    # Coupled L2 on every parameter, like torch.optim.SGD(weight_decay=…), which the paper's models used.
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                       optax.sgd(schedule, momentum=cfg.momentum, nesterov=cfg.get("nesterov", False)))


def _is_kernel(path: tuple) -> bool:
    last = path[-1] if path else None
    return getattr(last, "key", getattr(last, "name", None)) == "kernel"


def weight_penalty(params: Any, l1: float = 0.0, l2: float = 0.0) -> jax.Array:
    """``l1·Σ|w| + l2·Σw²`` over every ``kernel`` leaf (conv and dense weights; biases, BN scales and embeddings are
    not penalised, as in the usual L1/L2-regularised training of the paper's Fig. 11)."""
    leaves = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0] if _is_kernel(path)]
    total = jnp.zeros((), jnp.float32)
    for w in leaves:
        if l1:
            total = total + l1 * jnp.sum(jnp.abs(w))
        if l2:
            total = total + l2 * jnp.sum(jnp.square(w))
    return total


def check_regularisation(cfg: ml_collections.ConfigDict) -> tuple[float, float]:
    """``(train.l1, train.l2)``, 0 where absent; negative coefficients are a mistake."""
    l1, l2 = float(cfg.get("l1", 0.0)), float(cfg.get("l2", 0.0))
    if l1 < 0 or l2 < 0:
        raise UserError(f"train.l1 and train.l2 are penalty coefficients ≥ 0; got l1={l1}, l2={l2}")
    return l1, l2


def make_train_step(module: Any, tx: optax.GradientTransformation, l1: float = 0.0, l2: float = 0.0):
    """The jitted SGD step; ``l1``/``l2`` > 0 add :func:`weight_penalty` to the minimised loss (the reported
    ``loss`` includes it); both 0 trace exactly the step without a penalty."""
    def loss_fn(params, batch_stats, x, y, dropout_key):
        logits, updates = module.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                       mutable=["batch_stats"], rngs={"dropout": dropout_key})
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        if l1 or l2:
            loss = loss + weight_penalty(params, l1, l2)
        return loss, (updates.get("batch_stats", batch_stats), jnp.mean(jnp.argmax(logits, -1) == y))

    @jax.jit
    def step(state, x, y, key):
        (loss, (batch_stats, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], state["batch_stats"], x, y, jax.random.fold_in(key, state["step"]))
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new = {"params": optax.apply_updates(state["params"], updates), "batch_stats": batch_stats,
               "opt_state": opt_state, "step": state["step"] + 1}
        return new, {"loss": loss, "accuracy": acc}

    return step


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:  # one short line per write: appends are atomic on POSIX local filesystems
        f.write(json.dumps(record) + "\n")


def _drop_records_after(path: Path, epoch: int) -> None:
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if json.loads(line)["epoch"] <= epoch]
        write_text_atomic(path, "".join(f"{line}\n" for line in lines))


def train(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, float]:
    """Train ``config.model`` on ``config.data``; returns the final test metrics."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = config.train
    l1, l2 = check_regularisation(cfg)  # before the data is loaded
    model_cfg = model_config(config)
    data = load_data(config)
    check_model_fits_data(model_cfg, data)
    module = model_cfg.module()
    steps_per_epoch = len(data.train_images) // cfg.batch_size
    if steps_per_epoch == 0:
        raise UserError(f"batch_size {cfg.batch_size} exceeds the {len(data.train_images)} training images of "
                        f"{data.name}: lower --config.train.batch_size")
    tx = make_optimizer(cfg, steps_per_epoch)
    key = jax.random.key(cfg.seed)
    init_key, dropout_key = jax.random.split(key)
    variables = model_cfg.init(init_key)
    state = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {}),
             "opt_state": tx.init(variables["params"]), "step": jnp.zeros((), jnp.int32)}
    state_dir, metrics_path = workdir / "train_state", workdir / "metrics.jsonl"
    start_epoch = 0
    if checkpoint.exists(state_dir):
        restored, _ = checkpoint.restore_tree(state_dir, {**state, "epoch": np.zeros((), np.int32)})
        start_epoch = int(restored.pop("epoch"))
        state = restored
        print(f"resuming from {state_dir} at epoch {start_epoch}/{cfg.epochs}")
        _drop_records_after(metrics_path, start_epoch)  # an epoch logged but killed before its state was saved
    write_text_atomic(workdir / "config.json", config.to_json_best_effort(indent=2, sort_keys=True))

    step = make_train_step(module, tx, l1, l2)
    apply_fn = inference_fn(module)
    test = {}
    t_start = time.time()
    bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch, unit="step",
               dynamic_ncols=True, mininterval=2.0)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        loss_sum = jnp.zeros(())  # accumulated on the device: no host sync per step
        batches = train_batches(data.train_images, data.train_labels, cfg.batch_size, seed=cfg.seed, epoch=epoch,
                                mean=data.mean, std=data.std, crop_padding=config.data.get("crop_padding", 0),
                                hflip=data.hflip and config.data.get("hflip", True))
        for x, y in prefetch(batches):
            state, m = step(state, x, y, dropout_key)
            loss_sum = loss_sum + m["loss"]
            bar.update(1)
            if bar.n % 50 == 0:
                bar.set_postfix(epoch=epoch + 1, loss=f"{float(m['loss']):.3f}")
        train_seconds = time.time() - t0
        eval_vars = {"params": state["params"], "batch_stats": state["batch_stats"]}
        if (epoch + 1) % cfg.get("eval_every", 1) == 0 or epoch + 1 == cfg.epochs:
            test = evaluate(apply_fn, eval_vars, data.test_images, data.test_labels, mean=data.mean, std=data.std,
                            batch_size=cfg.get("eval_batch_size", 500))
        record = {"epoch": epoch + 1, "step": int(state["step"]), "train_loss": float(loss_sum) / steps_per_epoch,
                  "test_accuracy": test.get("accuracy"), "test_loss": test.get("loss"),
                  "epoch_seconds": round(train_seconds, 2), "elapsed_seconds": round(time.time() - t_start, 2)}
        _append_jsonl(metrics_path, record)
        bar.write(json.dumps(record))
        checkpoint.save_tree(state_dir, {**state, "epoch": np.asarray(epoch + 1, np.int32)})
    bar.close()
    if not test:  # resumed after the last epoch: nothing trained in this call
        test = evaluate(apply_fn, {"params": state["params"], "batch_stats": state["batch_stats"]},
                        data.test_images, data.test_labels, mean=data.mean, std=data.std)
    final = {"params": state["params"], "batch_stats": state["batch_stats"]}
    checkpoint.save(workdir / "checkpoint", final, model_cfg,
                    metadata={"test_accuracy": test.get("accuracy"), "dataset": data.name, "epochs": cfg.epochs})
    return test
