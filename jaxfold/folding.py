"""Folding: cluster every group's channels on their weights, then merge each cluster into one channel.

Pure: ``fold(variables, spec, plan, key)`` returns a :class:`~jaxfold.result.Compressed`: new variables (arrays
of the new widths), the widths, the cluster labels (its ``channel_map``) and a report; the input is not
modified. All clusterings are computed from the original weights first, then all merges are applied (the
official code's single pass; groups act on disjoint axes, so the merge order does not matter). The merge is
Fold-Naive: producers, per-channel vectors and running statistics are averaged within a cluster, consumers summed.
Variance corrections are separate, pluggable steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxfold import tree as tree_lib
from jaxfold.clustering import Clusterer, get_clusterer
from jaxfold.merge import group_features, merge_group
from jaxfold.placement import array_module, on_host, placed_like
from jaxfold.plans import Plan, resolve_plan
from jaxfold.reports import group_inertia, size_report, unchanged_group_report
from jaxfold.result import Compressed, CompressionReport, GroupReport
from jaxfold.spec import FoldSpec, Group


def _fill_empty_clusters(labels: np.ndarray, k: int, x: np.ndarray) -> np.ndarray:
    """Make all k clusters non-empty (possible since n ≥ k): a clusterer may leave one empty when rows tie. Each
    empty cluster takes the row farthest from its cluster's mean among clusters with more than one row."""
    labels = labels.copy()
    for empty in sorted(set(range(k)) - set(labels.tolist())):
        sizes = np.bincount(labels, minlength=k)
        candidates = np.flatnonzero(sizes[labels] > 1)
        means = np.stack([x[labels == c].mean(0) if sizes[c] else np.zeros(x.shape[1]) for c in range(k)])
        dist = ((x[candidates] - means[labels[candidates]]) ** 2).sum(1)
        labels[candidates[np.argmax(dist)]] = empty
    return labels


def _check_finite(flat: Mapping[str, Any], spec: FoldSpec) -> None:
    paths = sorted({m.path for g in spec.groups for m in g.members})
    bad = [p for p in paths if not bool(array_module(flat[p]).isfinite(flat[p]).all())]
    if bad:
        raise ValueError(f"non-finite values (NaN/inf) in {bad}: fix or re-train the model before folding")


def checked_inputs(variables: Mapping[str, Any], spec: FoldSpec, plan: Plan,
                   check: bool = True) -> tuple[dict[str, Any], dict[str, int], dict[str, int]]:
    """The common start of every compression: spec checked, flat variables in the form they are merged in
    (:func:`on_host`; the result goes through :func:`placed_like`) checked finite, every group's width and its
    target k under ``plan``."""
    if check:
        spec.check(variables)
    flat = {path: on_host(a) for path, a in tree_lib.flatten(variables).items()}
    _check_finite(flat, spec)
    widths = spec.widths(variables)
    return flat, widths, resolve_plan(plan, widths)


FoldResult = Compressed  # the former name of folding's result, kept importable


# (features (n, d), the group, the flat variables the features came from, k, group index) -> labels (n,)
Partition = Callable[[Any, Group, Mapping[str, Any], int, int], Any]


def fold_with_partition(variables: Mapping[str, Any], spec: FoldSpec, plan: Plan, partition: Partition, *,
                        check: bool = True, cluster_on: tuple[Mapping[str, Any], FoldSpec] | None = None
                        ) -> Compressed:
    """The folding pipeline for any way of partitioning a group's channels (k-means, IFM, …): checked inputs, one
    partition per group from the original weights, labels validated, every merge, the report. Groups whose k
    equals their width are left exactly as they are (the k = n identity). ``cluster_on`` = (variables, spec)
    whose features are partitioned instead of those being merged (groups matched by name; a correction that
    re-parametrises the weights may still want the clusters of the original ones)."""
    t_start = time.perf_counter()
    flat, widths, ks = checked_inputs(variables, spec, plan, check)
    feature_flat, feature_spec = flat, spec
    if cluster_on is not None:
        feature_flat = {p: on_host(a) for p, a in tree_lib.flatten(cluster_on[0]).items()}
        feature_spec = cluster_on[1]
        if cluster_on[1].widths(cluster_on[0]) != widths:
            raise ValueError("cluster_on variables have other group widths than the variables being folded")

    labels: dict[str, np.ndarray] = {}
    reports: dict[str, GroupReport] = {}

    def collect(name: str, n: int, k: int, x: Any, raw: Any, own_seconds: float) -> None:
        t0 = time.perf_counter()
        lab = np.asarray(raw).astype(np.int64).reshape(-1)  # waits for an asynchronous (device) clusterer
        if lab.shape != (n,) or lab.min() < 0 or lab.max() >= k:
            raise ValueError(f"clusterer returned labels of shape {lab.shape} in [{lab.min()}, {lab.max()}] for group "
                             f"{name!r}; need shape ({n},) with values in [0, {k})")
        x_np = np.asarray(x, np.float32)
        lab = _fill_empty_clusters(lab, k, x_np)
        labels[name] = lab
        reports[name] = {"group": name, "n": n, "k": k, "channel_ratio": 1.0 - k / n,
                         "inertia": group_inertia(x_np, lab, k),
                         "seconds": round(own_seconds + time.perf_counter() - t0, 4)}

    # One group in flight: the next group's clustering is dispatched before this one's labels are collected, so
    # host work (features, checks, the report's inertia) overlaps device work, and at most two groups' features
    # and clustering buffers are alive at once (block by block for LLMs). A group's "seconds" count its own host
    # work plus the wait for its labels, so the groups' seconds add up to the clustering phase's time.
    pending = None
    for index, group in enumerate(spec.groups):
        n, k = widths[group.name], ks[group.name]
        if k == n:
            labels[group.name] = np.arange(n)
            reports[group.name] = unchanged_group_report(group.name, n)
            continue
        t0 = time.perf_counter()
        feature_group = feature_spec.group(group.name)
        x = group_features(feature_flat, feature_group, n)
        raw = partition(x, feature_group, feature_flat, k, index)
        own_seconds = time.perf_counter() - t0
        if pending is not None:
            collect(*pending)
        pending = (group.name, n, k, x, raw, own_seconds)
    if pending is not None:
        collect(*pending)
    groups_report = [reports[g.name] for g in spec.groups]

    new_flat = dict(flat)
    for group in spec.groups:
        n, k = widths[group.name], ks[group.name]
        if k != n:
            new_flat = merge_group(new_flat, group, labels[group.name], n, k)
    new_variables = placed_like(variables, new_flat, flat)
    report: CompressionReport = {"groups": groups_report, **size_report(variables, new_variables),
                                 "seconds": round(time.perf_counter() - t_start, 4)}
    return Compressed(variables=new_variables, widths=ks, channel_map=labels, report=report)


def fold(variables: Mapping[str, Any], spec: FoldSpec, plan: Plan, key: jax.Array, *,
         clusterer: str | Clusterer = "kmeans", n_init: int = 10, max_iter: int = 300,
         check: bool = True, cluster_on: tuple[Mapping[str, Any], FoldSpec] | None = None) -> Compressed:
    """Fold ``variables`` (``{'params': …, 'batch_stats': …}``) to the widths ``plan`` asks for.

    ``clusterer`` is 'kmeans' (default), 'ward', or any function (features, k, key) -> labels; group i clusters
    with ``fold_in(key, i)``. See :func:`fold_with_partition` for ``cluster_on`` and the k = n identity.
    """
    cluster = get_clusterer(clusterer, n_init=n_init, max_iter=max_iter)  # only k-means uses them
    group_keys = _group_keys(key, len(spec.groups))

    def partition(x: Any, group: Group, flat: Mapping[str, Any], k: int, index: int) -> Any:
        return cluster(x, k, group_keys[index])

    return fold_with_partition(variables, spec, plan, partition, check=check, cluster_on=cluster_on)


def _group_keys(key: jax.Array, count: int) -> list[Any]:
    """``fold_in(key, i)`` for every group, derived before the first clustering and rebuilt from host data: a key
    derived inside the loop is a computation queued behind the previous group's running k-means, so reading it
    (k-means seeds on the host) would stall the loop until that group finished."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(count, dtype=jnp.uint32))
    if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(key)
        return [jax.random.wrap_key_data(d, impl=impl) for d in np.asarray(jax.random.key_data(keys))]
    return list(np.asarray(keys))  # legacy raw uint32 keys

