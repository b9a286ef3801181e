"""Folding: cluster every group's channels on their weights, then merge each cluster into one channel.

Pure: ``fold(variables, spec, plan, key)`` returns new variables (arrays of the new widths), the widths, the
cluster labels and a report; the input is not modified. All clusterings are computed from the original weights
first, then all merges are applied (the official code's single pass; groups act on disjoint axes, so the merge
order does not matter). The merge is Fold-Naive: producers, per-channel vectors and running statistics are
averaged within a cluster, consumers summed. Variance corrections are separate, pluggable steps.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse

from jaxfold import tree as tree_lib
from jaxfold.clustering import Clusterer, get_clusterer
from jaxfold.kmeans import host_resident
from jaxfold.spec import FoldSpec, Group, Member

Plan = float | Mapping[str, float] | Callable[[str, int], int]


# --- plans --------------------------------------------------------------------------------------------------------
def k_for_ratio(n: int, ratio: float) -> int:
    """Channels kept at channel ratio ``ratio``: floor(n·(1 − ratio)), at least 1 (the paper's convention)."""
    if not 0.0 <= ratio < 1.0 or math.isnan(ratio):
        raise ValueError(f"channel ratio must be in [0, 1), got {ratio}")
    return max(1, math.floor(n * (1.0 - ratio) + 1e-9))


def resolve_plan(plan: Plan, widths: Mapping[str, int]) -> dict[str, int]:
    """Target k for every group: a uniform ratio, a {group: ratio} dict (others untouched), or f(group, n) -> k."""
    if isinstance(plan, int | float) and not isinstance(plan, bool):
        return {g: k_for_ratio(n, float(plan)) for g, n in widths.items()}
    if isinstance(plan, Mapping):
        unknown = sorted(set(plan) - set(widths))
        if unknown:
            raise ValueError(f"plan names unknown groups {unknown}; groups: {list(widths)}")
        return {g: k_for_ratio(n, float(plan[g])) if g in plan else n for g, n in widths.items()}
    if callable(plan):
        ks = {}
        for g, n in widths.items():
            k = plan(g, n)
            if not isinstance(k, int | np.integer) or not 1 <= k <= n:
                raise ValueError(f"plan function gave k={k!r} for group {g!r} of width {n}; need an int in [1, {n}]")
            ks[g] = int(k)
        return ks
    raise TypeError(f"plan must be a ratio, a dict of ratios or a function (group, n) -> k; got {type(plan)}")


# --- features and merges -----------------------------------------------------------------------------------------
# Accelerator-resident leaves up to this size are merged on the host (see _on_host), larger ones on their device:
# every CNN leaf of the zoo is below it (ResNet18's largest, 9.4 MB), LLaMA-7B's attention (32 MiB in bf16) and
# MLP matrices above it, where same-shaped leaves of many layers share one compiled merge.
HOST_STAGING_BYTES = 16 * 2**20


def _on_host(array: Any) -> Any:
    """The form a leaf is merged in. CPU-resident arrays become numpy (zero-copy). Accelerator-resident ones up to
    :data:`HOST_STAGING_BYTES` (not sharded) are copied to the host too: every device-side merge produces a new
    (k, …) shape, so each new ratio compiles a handful of small executables per leaf (≈ 170 for a ResNet18 fold,
    seconds) where the host merges in milliseconds; :func:`placed_like` puts them back. Larger or sharded leaves
    (LLM weights) stay on their device, where merging them is worth a compilation."""
    if not isinstance(array, jax.Array):
        return array
    if host_resident(array) or (array.sharding.is_fully_replicated and array.nbytes <= HOST_STAGING_BYTES):
        return np.asarray(array)
    return array


def placed_like(variables: Mapping[str, Any], new_flat: Mapping[str, Any], staged: Mapping[str, Any]
                ) -> dict[str, Any]:
    """The compressed variables (nested) from their flat leaves, placed like ``variables``: leaves that
    :func:`_on_host` copied off an accelerator (``staged``) go back to its devices, untouched ones as the original
    arrays, merged ones by a transfer to the original sharding (no compilation). CPU leaves stay numpy."""
    original = tree_lib.flatten(variables)
    out = dict(new_flat)
    for path, value in new_flat.items():
        before = original.get(path)
        if isinstance(value, np.ndarray) and isinstance(before, jax.Array) and not host_resident(before):
            out[path] = before if value is staged[path] else jax.device_put(value, before.sharding)
    return tree_lib.unflatten(out)


def _xp(*arrays: Any) -> Any:
    """numpy if every array is a numpy array, else jax.numpy."""
    return np if all(isinstance(a, np.ndarray) for a in arrays) else jnp


def group_features(flat: Mapping[str, Any], group: Group, n: int) -> Any:
    """Row i = every feature member's slice for channel i, concatenated (raw weights, no scaling)."""
    parts = [m.channel_first(flat[m.path], n) for m in group.members if m.in_features]
    xp = _xp(*parts)
    return xp.concatenate([xp.asarray(p, xp.float32) for p in parts], axis=1)


def merge_rows(rows: Any, labels: Any, k: int, role: str) -> Any:
    """(n, …) → (k, …): the sum over each cluster for consumers, the mean otherwise."""
    if _xp(rows) is np:  # a sparse (k, n) one-hot: O(n·m), 3–10× faster than the dense BLAS product here
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


def merge_group(flat: dict[str, Any], group: Group, labels: Any, n: int, k: int) -> dict[str, Any]:
    """Apply one group's clustering to every member; returns the updated flat dict (a new dict)."""
    out = dict(flat)
    for m in group.members:
        array = flat[m.path]
        if isinstance(array, np.ndarray):
            out[m.path] = _merge_member(array, labels, member=m, n=n, k=k)
        else:
            # keyed on the layout, not the path: same-shaped leaves of a group share the executable
            layout = dataclasses.replace(m, path="")
            out[m.path] = _merge_member_on_device(array, jnp.asarray(labels), member=layout, n=n, k=k)
    return out


def _merge_member(array: Any, labels: Any, *, member: Member, n: int, k: int) -> Any:
    rows = member.channel_first(array, n)
    merged = merge_rows(rows.astype(np.float32), labels, k, member.role).astype(array.dtype)
    return member.from_channel_first(merged, array.shape, k)


# A device leaf's merge as one executable per (shape, k): op by op it compiles five or so small ones.
_merge_member_on_device = jax.jit(_merge_member, static_argnames=("member", "n", "k"))


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
    bad = [p for p in paths if not bool(_xp(flat[p]).isfinite(flat[p]).all())]
    if bad:
        raise ValueError(f"non-finite values (NaN/inf) in {bad}: fix or re-train the model before folding")


def checked_inputs(variables: Mapping[str, Any], spec: FoldSpec, plan: Plan,
                   check: bool = True) -> tuple[dict[str, Any], dict[str, int], dict[str, int]]:
    """The common start of every compression: spec checked, flat variables in the form they are merged in
    (:func:`_on_host`; the result goes through :func:`placed_like`) checked finite, every group's width and its
    target k under ``plan``."""
    if check:
        spec.check(variables)
    flat = {path: _on_host(a) for path, a in tree_lib.flatten(variables).items()}
    _check_finite(flat, spec)
    widths = spec.widths(variables)
    return flat, widths, resolve_plan(plan, widths)


def unchanged_group_report(name: str, n: int) -> dict[str, Any]:
    """The report entry of a group left at its width (k = n: the identity)."""
    return {"group": name, "n": n, "k": n, "channel_ratio": 0.0, "inertia": 0.0, "seconds": 0.0}


def size_report(variables: Mapping[str, Any], new_variables: Mapping[str, Any]) -> dict[str, Any]:
    """Parameter counts before/after (weights, biases, BN scale/bias; no running stats) and the sparsity."""
    before, after = tree_lib.count(variables.get("params", {})), tree_lib.count(new_variables.get("params", {}))
    return {"params_before": before, "params_after": after, "param_sparsity": 1.0 - after / before if before else 0.0}


@dataclasses.dataclass(frozen=True)
class FoldResult:
    variables: dict[str, Any]
    widths: dict[str, int]  # new width per group
    labels: dict[str, np.ndarray]  # cluster of every original channel, per group
    report: dict[str, Any]


# (features (n, d), the group, the flat variables the features came from, k, group index) -> labels (n,)
Partition = Callable[[Any, Group, Mapping[str, Any], int, int], Any]


def fold_with_partition(variables: Mapping[str, Any], spec: FoldSpec, plan: Plan, partition: Partition, *,
                        check: bool = True, cluster_on: tuple[Mapping[str, Any], FoldSpec] | None = None
                        ) -> FoldResult:
    """The folding pipeline for any way of partitioning a group's channels (k-means, IFM, …): checked inputs, one
    partition per group from the original weights, labels validated, every merge, the report. Groups whose k
    equals their width are left exactly as they are (the k = n identity). ``cluster_on`` = (variables, spec)
    whose features are partitioned instead of those being merged (groups matched by name; a correction that
    re-parametrises the weights may still want the clusters of the original ones)."""
    t_start = time.perf_counter()
    flat, widths, ks = checked_inputs(variables, spec, plan, check)
    feature_flat, feature_spec = flat, spec
    if cluster_on is not None:
        feature_flat = {p: _on_host(a) for p, a in tree_lib.flatten(cluster_on[0]).items()}
        feature_spec = cluster_on[1]
        if cluster_on[1].widths(cluster_on[0]) != widths:
            raise ValueError("cluster_on variables have other group widths than the variables being folded")

    labels: dict[str, np.ndarray] = {}
    reports: dict[str, dict[str, Any]] = {}

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
                         "inertia": _inertia(x_np, lab, k),
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
    report = {"groups": groups_report, **size_report(variables, new_variables),
              "seconds": round(time.perf_counter() - t_start, 4)}
    return FoldResult(new_variables, ks, labels, report)


def fold(variables: Mapping[str, Any], spec: FoldSpec, plan: Plan, key: jax.Array, *,
         clusterer: str | Clusterer = "kmeans", n_init: int = 10, max_iter: int = 300,
         check: bool = True, cluster_on: tuple[Mapping[str, Any], FoldSpec] | None = None) -> FoldResult:
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


def _inertia(x: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Σ_i ||x_i − mean of its cluster||² on the host (the report's number, clusterer-independent): cluster means as
    the merge computes them (:func:`merge_rows`; every cluster is non-empty by now), residuals taken before squaring
    (no cancellation), summed in float64."""
    residual = x - merge_rows(x, labels, k, "producer")[labels]
    return float(np.einsum("ij,ij->", residual, residual, dtype=np.float64))


# --- the inverse direction: used to test folding and to build wide models with known redundancy ---------------------
def _gather_channels(variables: Mapping[str, Any], group: Group, index: np.ndarray,
                     consumer_divisor: np.ndarray | None = None) -> dict[str, Any]:
    """New channel j = old channel ``index[j]`` in every member; consumer rows are divided by
    ``consumer_divisor[j]`` when given."""
    flat = tree_lib.flatten(variables)
    n = group.members[0].width(np.shape(flat[group.members[0].path]))
    out = dict(flat)
    for m in group.members:
        array = jnp.asarray(flat[m.path])
        rows = m.channel_first(array, n)[jnp.asarray(index)]
        if m.role == "consumer" and consumer_divisor is not None:
            rows = rows / jnp.asarray(consumer_divisor, rows.dtype).reshape(-1, *([1] * (rows.ndim - 1)))
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
