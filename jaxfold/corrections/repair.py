"""``repair`` (Fold-R): re-estimate the activation statistics of a compressed model from data.

* Every BatchNorm's running statistics are reset and recomputed as the cumulative average (not an EMA) of the
  batch statistics over a train-mode pass of the data — what REPAIR reduces to for BN networks and what the
  official code does (``reset_running_stats``, ``momentum=None``).
* Producers without a BatchNorm (VGG's hidden classifier layers, LeNet) get REPAIR proper: the merged unit's
  pre-activation is rescaled so its mean and standard deviation match the average of the original units it
  replaced, measured on the same data; layers are fixed one after another in forward order.

Needs data (the upper-bound baseline); ``fold_dir`` runs the same code on DeepInversion images instead.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from jaxfold import tree as tree_lib
from jaxfold.batch_stats import batch_statistics
from jaxfold.corrections.layers import Layer, layers, moments_fn
from jaxfold.corrections.registry import Batches, CorrectionContext, register_correction
from jaxfold.errors import UserError

if TYPE_CHECKING:
    from jaxfold.models.base import ModelConfig


@functools.partial(jax.jit, static_argnums=0)
def _batch_stats(module: Any, variables: Any, x: jax.Array) -> Any:
    return batch_statistics(module, variables, x)


def recompute_bn_statistics(config: ModelConfig, variables: Mapping[str, Any], batches: Batches) -> dict[str, Any]:
    """``variables`` with every BN's running mean/var replaced by the example-weighted average of its batch
    statistics over ``batches()`` (train-mode forward passes)."""
    if "batch_stats" not in variables or not variables["batch_stats"]:
        return dict(variables)
    module = config.module()
    return averaged_statistics(variables, batches, lambda x: _batch_stats(module, variables, x), "batch_stats/")


def averaged_statistics(variables: Mapping[str, Any], batches: Batches,
                        batch_stats: Any, prefix: str = "") -> dict[str, Any]:
    """``variables`` with each running mean/var named by ``batch_stats(x)`` (``{module: (mean, var)}``, the
    variables ``{prefix}{module}/mean`` and ``…/var``) set to the example-weighted average over ``batches()``."""
    sums: dict[str, list[Any]] = {}
    count = 0
    for x in batches():
        n = x.shape[0]
        for path, (mean, var) in batch_stats(x).items():
            acc = sums.setdefault(path, [0.0, 0.0])
            acc[0], acc[1] = acc[0] + n * np.asarray(mean, np.float64), acc[1] + n * np.asarray(var, np.float64)
        count += n
    if not count:
        raise UserError("repair got no data: the batches function yielded nothing")
    flat = tree_lib.flatten(variables)
    for path, (mean_sum, var_sum) in sums.items():
        for name, value in (("mean", mean_sum), ("var", var_sum)):
            old = flat[f"{prefix}{path}/{name}"]
            flat[f"{prefix}{path}/{name}"] = np.asarray(value / count, np.asarray(old).dtype)
    return tree_lib.unflatten(flat)


def _moments(config: ModelConfig, variables: Any, batches: Batches, modules: list[str]) -> dict[str, np.ndarray]:
    """Per-channel (mean, std) of the named modules' eval-mode outputs over all batches, example-weighted."""
    fn = moments_fn(config, tuple(modules))
    sums: dict[str, list[Any]] = {}
    count = 0
    for x in batches():
        n = x.shape[0]
        for m, (mean, var) in fn(variables, x).items():
            mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
            acc = sums.setdefault(m, [0.0, 0.0])
            acc[0], acc[1] = acc[0] + n * mean, acc[1] + n * (var + mean**2)
        count += n
    out = {}
    for m, (s1, s2) in sums.items():
        mean = s1 / count
        out[m] = np.stack([mean, np.sqrt(np.maximum(s2 / count - mean**2, 0.0))])
    return out


def _rescale(flat: dict[str, Any], layer: Layer, k: int, scale: np.ndarray, shift: np.ndarray) -> None:
    """Producer output ``y`` → ``scale·y + shift`` per channel, by editing its kernel and bias in ``flat``."""
    m = layer.producer
    kernel = flat[m.path]
    rows = np.asarray(m.channel_first(np.asarray(kernel), k)) * scale[:, None]
    flat[m.path] = m.from_channel_first(rows, np.shape(kernel), k).astype(np.asarray(kernel).dtype)
    bias_path = f"params/{layer.producer_module}/bias"
    if bias_path not in flat:
        raise UserError(f"REPAIR needs a bias on {layer.producer_module} to shift its mean (no BatchNorm follows)")
    bias = np.asarray(flat[bias_path])
    flat[bias_path] = (bias * scale + shift).astype(bias.dtype)


def repair_unnormalized(config: ModelConfig, variables: Mapping[str, Any], new_config: ModelConfig,
                        new_variables: Mapping[str, Any], channel_map: Mapping[str, np.ndarray],
                        batches: Batches) -> dict[str, Any]:
    """REPAIR proper on the compressed groups' BN-free producers: each kept/merged channel's mean and std are
    set to the average of those of the original channels mapped to it, one layer at a time."""
    todo = _bn_free_compressed(config, channel_map)
    if not todo:
        return dict(new_variables)
    original = _moments(config, variables, batches, [layer.module for layer in todo])
    flat = tree_lib.flatten(new_variables)
    for layer in todo:
        current = _moments(new_config, tree_lib.unflatten(flat), batches, [layer.module])[layer.module]
        target_mean, target_std = _cluster_average(original[layer.module], channel_map[layer.group],
                                                   current.shape[1])
        mean, std = current
        scale = np.where(std > 1e-12, target_std / np.maximum(std, 1e-12), 1.0)
        _rescale(flat, layer, current.shape[1], scale, target_mean - scale * mean)
    return tree_lib.unflatten(flat)


def _bn_free_compressed(config: ModelConfig, channel_map: Mapping[str, np.ndarray]) -> list[Layer]:
    return [layer for layer in layers(config.fold_spec()) if not layer.normalized
            and not np.array_equal(channel_map[layer.group], np.arange(len(channel_map[layer.group])))]


def _cluster_average(stats: np.ndarray, channel_map: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Average (mean, std) of the original channels mapped to each new channel (removed ones, -1, skipped)."""
    keep = channel_map >= 0
    counts = np.bincount(channel_map[keep], minlength=k)
    sums = np.stack([np.bincount(channel_map[keep], weights=s[keep], minlength=k) for s in stats])
    return sums[0] / np.maximum(counts, 1), sums[1] / np.maximum(counts, 1)


def repair_variables(config: ModelConfig, variables: Mapping[str, Any], new_config: ModelConfig,
                     new_variables: Mapping[str, Any], channel_map: Mapping[str, np.ndarray],
                     batches: Batches) -> dict[str, Any]:
    """Full REPAIR of a compressed model (folded or pruned): BN statistics, then BN-free layers; BN statistics
    are recomputed once more when both kinds exist, so they see the repaired BN-free layers."""
    out = recompute_bn_statistics(new_config, new_variables, batches)
    if not _bn_free_compressed(config, channel_map):
        return out
    out = repair_unnormalized(config, variables, new_config, out, channel_map, batches)
    return recompute_bn_statistics(new_config, out, batches) if new_variables.get("batch_stats") else out


@register_correction("repair", inputs="images", data_free=False,
                     description="Fold-R: recompute BN statistics (and REPAIR BN-free layers) from training data")
def repair(ctx: CorrectionContext) -> dict[str, Any]:
    return repair_variables(ctx.config, ctx.variables, ctx.folded_config, ctx.folded, ctx.labels,
                            ctx.require_data("repair"))
