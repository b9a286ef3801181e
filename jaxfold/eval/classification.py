"""Jitted classification evaluation (accuracy, mean cross-entropy) for any variables pytree.

The per-batch reduction is compiled once per (apply function, variable shapes, batch shape): evaluating many
folded models of the same widths reuses one executable.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfold.data.pipeline import eval_batches, prefetch
from jaxfold.errors import UserError

ApplyFn = Callable[[Any, jax.Array], jax.Array]


@functools.partial(jax.jit, static_argnums=0)
def _batch_sums(apply_fn: ApplyFn, variables: Any, x: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
    logits = apply_fn(variables, x).astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    return jnp.stack([jnp.sum(correct * mask), jnp.sum(loss * mask), jnp.sum(mask)])


def evaluate(apply_fn: ApplyFn, variables: Any, images: np.ndarray, labels: np.ndarray, *,
             mean: tuple[float, ...], std: tuple[float, ...], batch_size: int = 500) -> dict[str, float]:
    """``{'accuracy', 'loss', 'examples'}`` over uint8 images; ``apply_fn(variables, x) -> logits``.

    ``apply_fn`` should be a stable object (e.g. a module's bound method stored once) so the cache hits.
    """
    variables = jax.device_put(variables)  # once, not with every batch (numpy leaves would be copied each call)
    totals = jnp.zeros(3)
    for x, y, mask in prefetch(eval_batches(images, labels, batch_size, mean=mean, std=std)):
        totals = totals + _batch_sums(apply_fn, variables, x, y, mask)
    correct, loss, n = (float(t) for t in totals)
    return {"accuracy": correct / n, "loss": loss / n, "examples": int(n)}


def check_model_fits_data(model_config: Any, data: Any) -> None:
    """Refuse a model/dataset pair whose input shape or class count differ, saying which field to change."""
    if data.image_shape != model_config.input_shape:
        raise UserError(f"dataset {data.name} gives images of shape {data.image_shape} but the model expects "
                        f"{model_config.input_shape}; set --config.model.image_size / in_channels to match")
    if data.num_classes != model_config.num_classes:
        raise UserError(f"dataset {data.name} has {data.num_classes} classes, the model has "
                        f"{model_config.num_classes}: set --config.model.num_classes={data.num_classes}")


def evaluate_model(model_config: Any, variables: Any, data: Any, batch_size: int = 500) -> dict[str, float]:
    """Test-set metrics of a model (config + variables) on an :class:`~jaxfold.data.images.ImageDataset`, after
    checking that the two fit together."""
    check_model_fits_data(model_config, data)
    return evaluate(inference_fn(model_config.module()), variables, data.test_images, data.test_labels,
                    mean=data.mean, std=data.std, batch_size=batch_size)


@functools.cache
def inference_fn(module: Any) -> ApplyFn:
    """A cached eval-mode apply function for a (hashable) Flax module, so jit caches hit across calls."""
    return lambda variables, x: module.apply(variables, x, train=False)
