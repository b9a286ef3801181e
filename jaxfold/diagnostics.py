"""Per-layer variance ratio (paper Def. 3.1): how much of each layer's activation variance a compressed model
keeps, measured on a batch against the original.

For every layer (a BatchNorm output, or a BN-free producer's output; see :mod:`jaxfold.corrections.layers`)
and every original channel i that survives as compressed channel ``channel_map[g][i]`` (its cluster for
folding, its kept index for pruning), the ratio Var(x̃_{map(i)}) / Var(x_i) is averaged over i. ≈ 1 is healthy,
< 1 is variance collapse (Fold-Naive), > 1 overshoot.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxfold.corrections.layers import layers, moments_fn
from jaxfold.models.base import ModelConfig


def _variances(config: ModelConfig, variables: Any, x: np.ndarray, modules: list[str]) -> dict[str, np.ndarray]:
    out = moments_fn(config, tuple(modules))(variables, x)
    return {m: np.asarray(var, np.float64) for m, (_, var) in out.items()}


def variance_ratios(config: ModelConfig, variables: Any, new_config: ModelConfig, new_variables: Any,
                    channel_map: Mapping[str, np.ndarray], x: np.ndarray, *, min_relative_variance: float = 1e-3
                    ) -> list[dict[str, Any]]:
    """``[{'layer', 'group', 'ratio', 'median', 'channels'}]`` in forward order for the normalised batch ``x``.

    Channels whose original variance is below ``min_relative_variance`` × the layer's mean variance (near-dead
    channels, e.g. a BN scale ≈ 0) are skipped: one of them merged with a live channel gives a ratio of 10³ and
    swamps the mean."""
    found = layers(config.fold_spec())
    modules = [layer.module for layer in found]
    before = _variances(config, variables, x, modules)
    after = _variances(new_config, new_variables, x, modules)
    rows = []
    for layer in found:
        mapping = np.asarray(channel_map[layer.group])
        var = before[layer.module]
        alive = (mapping >= 0) & (var > max(min_relative_variance * var.mean(), 1e-12))
        ratios = after[layer.module][mapping[alive]] / var[alive]
        empty = not alive.any()
        rows.append({"layer": layer.module, "group": layer.group, "channels": int(alive.sum()),
                     "ratio": float("nan") if empty else float(ratios.mean()),
                     "median": float("nan") if empty else float(np.median(ratios))})
    return rows
