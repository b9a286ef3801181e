"""IFM, iterative feature merging (Chen, Zhou, Yan 2023): the greedy, data-free merging baseline.

Per group, every channel starts as its own unit whose feature row is its row of the folding features
(:func:`jaxfold.merge.group_features`). IFM repeatedly merges the two *current* units whose rows are closest
(Euclidean) until k remain. A merged unit's row is what the merge would make of it: producer and vector parts are
the size-weighted mean of the two units, consumer parts their sum — so distances are between the weights the
merged network would really have, not between cluster means as in k-means. The resulting partition is applied
with folding's own merge (:func:`jaxfold.merge.merge_group`: producers/vectors/statistics averaged, consumers
summed), so IFM and folding differ only in how the clusters are chosen.

Implementation: two Gram matrices (producer/vector part, consumer part) in float64 are updated in O(n) per
merge (a merged row is a linear combination of its two parts' rows), and the n×n distance matrix row of the
merged unit is recomputed from them; one merge costs O(n²) for the argmin, n = 512 takes a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxfold.compress import rebuild
from jaxfold.folding import fold_with_partition
from jaxfold.kmeans import check_k
from jaxfold.models.base import ModelConfig
from jaxfold.plans import Plan
from jaxfold.result import Compressed
from jaxfold.spec import FoldSpec, Group


def consumer_columns(flat: Mapping[str, Any], group: Group, n: int) -> np.ndarray:
    """Boolean mask over the columns of :func:`group_features`: True where a column comes from a consumer."""
    parts = [np.full(int(np.prod(np.shape(flat[m.path]))) // n, m.role == "consumer")
             for m in group.members if m.in_features]
    return np.concatenate(parts) if parts else np.zeros(0, bool)


def ifm_labels(x: Any, consumer: Any, k: int) -> np.ndarray:
    """Greedy pairwise merging of the rows of ``x`` (n, d) down to k units; returns labels (n,) in [0, k).

    ``consumer`` marks the columns that are summed when two units merge (the others are averaged, weighted by unit
    size). Deterministic: among equal distances the pair with the lowest (i, j) merges first, into unit i. Labels
    are canonical: clusters are numbered in the order of their first channel.
    """
    x = np.asarray(x, np.float64)
    consumer = np.asarray(consumer, bool)
    n = x.shape[0]
    if consumer.shape != (x.shape[1],):
        raise ValueError(f"consumer mask has shape {consumer.shape}, features have {x.shape[1]} columns")
    check_k(k, n)
    if k == n:
        return np.arange(n)
    p, c = x[:, ~consumer], x[:, consumer]
    gp, gc = p @ p.T, c @ c.T  # inner products of the averaged and of the summed parts
    gp, gc = (gp + gp.T) / 2, (gc + gc.T) / 2  # exactly symmetric, so the distance matrix is too
    sq = np.diag(gp) + np.diag(gc)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2 * (gp + gc), 0.0)  # squared distances (same argmin)
    np.fill_diagonal(dist, np.inf)
    size = np.ones(n)
    owner = np.arange(n)  # unit each channel belongs to; a unit is named by its lowest channel
    for _ in range(n - k):
        # first minimum in row-major order: on a symmetric matrix that is the lowest (i, j), and i < j
        i, j = divmod(int(np.argmin(dist)), n)
        wi, wj = size[i] / (size[i] + size[j]), size[j] / (size[i] + size[j])
        p_ii = wi * wi * gp[i, i] + 2 * wi * wj * gp[i, j] + wj * wj * gp[j, j]
        c_ii = gc[i, i] + 2 * gc[i, j] + gc[j, j]
        p_row, c_row = wi * gp[i] + wj * gp[j], gc[i] + gc[j]
        p_row[i], c_row[i] = p_ii, c_ii
        gp[i, :], gp[:, i], gc[i, :], gc[:, i] = p_row, p_row, c_row, c_row
        size[i], size[j] = size[i] + size[j], 0.0
        owner[owner == j] = i
        sq[i] = p_ii + c_ii
        row = np.maximum(sq[i] + sq - 2 * (p_row + c_row), 0.0)
        row[size == 0] = np.inf
        row[i] = np.inf
        dist[i, :], dist[:, i] = row, row
        dist[j, :], dist[:, j] = np.inf, np.inf
    return np.searchsorted(np.flatnonzero(size), owner)


def ifm(variables: Mapping[str, Any], spec: FoldSpec, plan: Plan, *, check: bool = True) -> Compressed:
    """Fold ``variables`` with IFM clusterings instead of k-means; same plan, merge and result as
    :func:`jaxfold.folding.fold` (the report's inertia is the k-means objective of IFM's partition, for comparison).

    Pure and deterministic (no PRNG key). Groups whose k equals their width are left exactly as they are.
    """
    def partition(x: Any, group: Group, flat: Mapping[str, Any], k: int, index: int) -> np.ndarray:
        n = x.shape[0]
        return ifm_labels(np.asarray(x, np.float64), consumer_columns(flat, group, n), k)

    result = fold_with_partition(variables, spec, plan, partition, check=check)
    return result.replace(report={"method": "ifm", **result.report})


def ifm_model(model_config: ModelConfig, variables: dict[str, Any], plan: Plan) -> Compressed:
    """:func:`ifm` with the architecture's fold spec, rebuilt at the new widths (channel_map = IFM's labels)."""
    result = ifm(variables, model_config.fold_spec(), plan)
    return rebuild(model_config, result.variables, result.widths, result.channel_map, result.report)
