"""Merges: a group's channel features, and a partition of its channels applied to every member (producers,
per-channel vectors and running statistics averaged within a cluster, consumers summed). Also the inverse direction
(permuting and duplicating channels), used to test folding and to build wide models with known redundancy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse

from jaxfold import tree as tree_lib
from jaxfold.kmeans import host_resident
from jaxfold.placement import array_module
from jaxfold.spec import Group, Member


def group_features(flat: Mapping[str, Any], group: Group, n: int) -> Any:
    """Row i = every feature member's slice for channel i, concatenated (raw weights, no scaling)."""
    parts = [m.channel_first(flat[m.path], n) for m in group.members if m.in_features]
    xp = array_module(*parts)
    return xp.concatenate([xp.asarray(p, xp.float32) for p in parts], axis=1)


def merge_rows(rows: Any, labels: Any, k: int, role: str, weights: Any = None) -> Any:
    """(n, …) → (k, …): the sum over each cluster for consumers, the mean otherwise.

    ``weights`` (n,) ≥ 0 make the mean a weighted one, Σ w_i·r_i / Σ w_i per cluster (consumers are still summed):
    the activation-aware merge (:mod:`jaxfold.corrections.activation_aware`). A cluster whose weights are all 0
    gets the plain mean. None: the plain mean, unchanged."""
    if weights is not None and role != "consumer":
        return _weighted_mean(rows, labels, k, weights)
    if array_module(rows) is np:  # a sparse (k, n) one-hot: O(n·m), 3–10× faster than the dense BLAS product here
        n, labels = rows.shape[0], np.asarray(labels)
        onehot = scipy.sparse.csr_matrix((np.ones(n, rows.dtype), (labels, np.arange(n))), shape=(k, n))
        summed = np.asarray(onehot @ rows.reshape(n, -1)).reshape(k, *rows.shape[1:])
        counts = np.bincount(labels, minlength=k).astype(rows.dtype)
    else:  # exact f32 sums on accelerators (a matmul could run in TF32 there)
        summed = jax.ops.segment_sum(rows, labels, num_segments=k)
        counts = jax.ops.segment_sum(jnp.ones(rows.shape[0], rows.dtype), labels, num_segments=k)
    if role == "consumer":
        return summed
    return summed / counts.reshape(-1, *([1] * (rows.ndim - 1)))


def _weighted_mean(rows: Any, labels: Any, k: int, weights: Any) -> Any:
    """merge_rows' weighted mean; weights are scaled by their maximum first (energies can be large)."""
    xp = array_module(rows)
    if xp is np:  # float64 on the host: weights spanning many orders of magnitude lose nothing
        w = np.asarray(weights, np.float64)
        labels = np.asarray(labels)
        totals = np.bincount(labels, weights=w, minlength=k)
        w = np.where(totals[labels] > 0, w / max(w.max(initial=0.0), np.finfo(np.float64).tiny), 1.0)
        n = rows.shape[0]
        onehot = scipy.sparse.csr_matrix((w, (labels, np.arange(n))), shape=(k, n))
        summed = np.asarray(onehot @ rows.reshape(n, -1).astype(np.float64))
        totals = np.bincount(labels, weights=w, minlength=k)
        return (summed / totals[:, None]).reshape(k, *rows.shape[1:]).astype(rows.dtype)
    w = jnp.asarray(weights, jnp.float32)
    totals = jax.ops.segment_sum(w, labels, num_segments=k)
    w = jnp.where(totals[labels] > 0, w / jnp.maximum(jnp.max(w), jnp.finfo(jnp.float32).tiny), 1.0)
    totals = jax.ops.segment_sum(w, labels, num_segments=k)
    summed = jax.ops.segment_sum(rows * w.reshape(-1, *([1] * (rows.ndim - 1))).astype(rows.dtype), labels,
                                 num_segments=k)
    return summed / totals.reshape(-1, *([1] * (rows.ndim - 1))).astype(rows.dtype)


def merge_group(flat: dict[str, Any], group: Group, labels: Any, n: int, k: int,
                weights: Any = None) -> dict[str, Any]:
    """Apply one group's clustering to every member; returns the updated flat dict (a new dict). ``weights``
    (n,): averaged members take weighted means (:func:`merge_rows`)."""
    out = dict(flat)
    for m in group.members:
        array = out[m.path]  # a variable may hold the group on two axes (a conv from a stream onto itself)
        if isinstance(array, np.ndarray):
            out[m.path] = _merge_member(array, labels, weights, member=m, n=n, k=k)
        else:
            # keyed on the layout, not the path: same-shaped leaves of a group share the executable
            layout = dataclasses.replace(m, path="")
            out[m.path] = _merge_member_on_device(array, jnp.asarray(labels),
                                                  None if weights is None else jnp.asarray(weights, jnp.float32),
                                                  member=layout, n=n, k=k)
    return out


def _merge_member(array: Any, labels: Any, weights: Any = None, *, member: Member, n: int, k: int) -> Any:
    rows = member.channel_first(array, n)
    merged = merge_rows(rows.astype(np.float32), labels, k, member.role, weights).astype(array.dtype)
    return member.from_channel_first(merged, array.shape, k)


# A device leaf's merge as one executable per (shape, k): op by op it compiles five or so small ones.
_merge_member_on_device = jax.jit(_merge_member, static_argnames=("member", "n", "k"))


# --- the inverse direction: used to test folding and to build wide models with known redundancy ---------------------
def _gather_channels(variables: Mapping[str, Any], group: Group, index: np.ndarray,
                     consumer_divisor: np.ndarray | None = None) -> dict[str, Any]:
    """New channel j = old channel ``index[j]`` in every member; consumer rows are divided by
    ``consumer_divisor[j]`` when given."""
    flat = tree_lib.flatten(variables)
    n = group.members[0].width(np.shape(flat[group.members[0].path]))
    out = dict(flat)
    # host leaves in numpy: eager jax.numpy would compile a gather per leaf shape
    xp = np if all(host_resident(flat[m.path]) for m in group.members) else jnp
    for m in group.members:
        array = xp.asarray(out[m.path])  # out: a variable may hold the group on two axes
        rows = m.channel_first(array, n)[xp.asarray(index)]
        if m.role == "consumer" and consumer_divisor is not None:
            rows = rows / xp.asarray(consumer_divisor, rows.dtype).reshape(-1, *([1] * (rows.ndim - 1)))
        out[m.path] = m.from_channel_first(rows, array.shape, len(index))
    return tree_lib.unflatten(out)


def permute_group(variables: Mapping[str, Any], group: Group, perm: Any) -> dict[str, Any]:
    """Reorder a group's channels (every member along its axis). A correct spec leaves the function unchanged."""
    return _gather_channels(variables, group, np.asarray(perm))


def duplicate_channels(variables: Mapping[str, Any], group: Group, source: Any) -> dict[str, Any]:
    """Widen a group: new channel j copies channel ``source[j]``. Producers, vectors and statistics are copied;
    consumer columns are split evenly among the copies, so the network computes exactly the same function and
    folding the copies back together (mean of equal rows, sum of the split columns) is lossless."""
    source = np.asarray(source)
    n = group.members[0].width(np.shape(tree_lib.get(variables, group.members[0].path)))
    if source.min() < 0 or source.max() >= n or len(np.unique(source)) != n:
        raise ValueError(f"source must name every channel of group {group.name!r} (0..{n - 1}) at least once")
    copies = np.bincount(source, minlength=n).astype(np.float32)
    return _gather_channels(variables, group, source, copies[source])
