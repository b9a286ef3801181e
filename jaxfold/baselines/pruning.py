"""Structured magnitude pruning (SP-L1 / SP-L2): the data-free baseline folding is compared against.

Per group it keeps the k channels whose feature rows (the rows folding clusters: producer rows ‖ vectors ‖
consumer columns; running statistics are not features) have the largest L1 or L2 norm and *removes* the others
from every member. Removing rather than zeroing gives arrays of the same shapes as folding at the same k, so the
two are compared at equal parameter count and FLOPs. The plan means what it means for folding
(:func:`jaxfold.plans.resolve_plan`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxfold.compress import rebuild
from jaxfold.folding import checked_inputs
from jaxfold.merge import group_features
from jaxfold.models.base import ModelConfig
from jaxfold.placement import placed_like
from jaxfold.plans import Plan
from jaxfold.reports import size_report
from jaxfold.result import Compressed, CompressionReport, GroupReport
from jaxfold.spec import FoldSpec, Group

PruneResult = Compressed  # the former name of pruning's result, kept importable


def channel_scores(flat: Mapping[str, Any], group: Group, n: int, norm: int = 2) -> np.ndarray:
    """L1 or L2 norm of every channel's feature row (float64 on the host; float32 where the weights live on an
    accelerator, so only n numbers cross to the host)."""
    x = group_features(flat, group, n)
    if isinstance(x, np.ndarray):
        x = x.astype(np.float64)
        return np.abs(x).sum(1) if norm == 1 else np.sqrt((x * x).sum(1))
    import jax.numpy as jnp

    return np.asarray(jnp.abs(x).sum(1) if norm == 1 else jnp.sqrt((x * x).sum(1)), np.float64)


def keep_top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, ties to the lower index, returned in ascending (original) order."""
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores)))  # primary: score desc, then index asc
    return np.sort(order[:k])


def take_channels(flat: Mapping[str, Any], group: Group, keep: np.ndarray, n: int) -> dict[str, Any]:
    """Keep only channels ``keep`` of one group in every member (a plain gather: consumers are not summed).
    Host arrays are indexed with numpy, so no per-shape XLA compilation (as in :func:`jaxfold.merge.merge_group`)."""
    out = dict(flat)
    for m in group.members:
        array = flat[m.path]
        out[m.path] = m.from_channel_first(m.channel_first(array, n)[keep], array.shape, len(keep))
    return out


def prune(variables: Mapping[str, Any], spec: FoldSpec, plan: Plan, *, norm: int = 2,
          check: bool = True, scores: Mapping[str, np.ndarray] | None = None) -> Compressed:
    """Prune ``variables`` to the widths ``plan`` asks for, keeping the channels of largest L``norm`` feature norm
    (or of largest ``scores[group]`` when given, e.g. Wanda-sp's data-aware scores).

    Pure: the input is not modified. Groups whose k equals their width are left exactly as they are.
    """
    if norm not in (1, 2):
        raise ValueError(f"norm must be 1 or 2, got {norm!r}")
    t_start = time.perf_counter()
    flat, widths, ks = checked_inputs(variables, spec, plan, check)

    # all selections from the original weights first (as folding does), then all removals
    keeps: dict[str, np.ndarray] = {}
    channel_map: dict[str, np.ndarray] = {}
    groups_report: list[GroupReport] = []
    for group in spec.groups:
        n, k = widths[group.name], ks[group.name]
        t0 = time.perf_counter()
        if k == n:
            keep = np.arange(n)
        else:
            score = channel_scores(flat, group, n, norm) if scores is None else np.asarray(scores[group.name])
            keep = keep_top(score, k)
        keeps[group.name] = keep
        cmap = np.full(n, -1, np.int64)
        cmap[keep] = np.arange(k)
        channel_map[group.name] = cmap
        groups_report.append({"group": group.name, "n": n, "k": k, "channel_ratio": 1.0 - k / n,
                              "seconds": round(time.perf_counter() - t0, 4)})

    new_flat = dict(flat)
    for group in spec.groups:
        n, k = widths[group.name], ks[group.name]
        if k != n:
            new_flat = take_channels(new_flat, group, keeps[group.name], n)
    new_variables = placed_like(variables, new_flat, flat)
    report: CompressionReport = {"method": f"sp_l{norm}", "groups": groups_report,
                                 **size_report(variables, new_variables),
                                 "seconds": round(time.perf_counter() - t_start, 4)}
    return Compressed(variables=new_variables, widths=ks, channel_map=channel_map, report=report)


def prune_model(model_config: ModelConfig, variables: dict[str, Any], plan: Plan, *,
                norm: int = 2) -> Compressed:
    """:func:`prune` with the architecture's fold spec, rebuilt at the new widths (params/FLOPs in the report)."""
    result = prune(variables, model_config.fold_spec(), plan, norm=norm)
    return rebuild(model_config, result.variables, result.widths, result.channel_map, result.report)
