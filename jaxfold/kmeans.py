"""k-means for model folding: cluster channels (rows) by their weights, in pure jitted JAX.

Why not sklearn: folding runs k-means once per layer, on CPU/GPU/TPU alike, with the weights already on device;
a jitted Lloyd loop with the ``n_init`` restarts batched by ``vmap`` is much faster warm and needs no host copy.

Conventions follow sklearn's ``KMeans`` so results are comparable: greedy k-means++ seeding, Lloyd iterations until
the centroid shift (sum of squared moves) is ≤ ``tol`` × the mean per-feature variance of ``x``, best of ``n_init``.
Additions: empty clusters are re-seeded inside the loop (never NaN, every one of the k labels is used), labels are
canonical (numbered by first appearance), and a Gram mode runs everything on G = X Xᵀ for d ≫ n (attention heads).
"""

from __future__ import annotations

import math
import operator
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# A Lloyd step costs ~2·n·d·k flops directly and ~2·n²·k on the Gram matrix (plus n²·d once to form it), so the
# Gram mode wins as soon as d > n; its memory is n² instead of n·d per restart as well.
GRAM_RATIO = 1


class KMeansResult(NamedTuple):
    labels: jax.Array  # (n,) int32 in [0, k), numbered by first appearance (labels[0] == 0)
    centroids: jax.Array  # (k, d) float32: the mean of each labelled cluster
    inertia: jax.Array  # () float32: sum of squared distances of the rows to their centroid
    n_iter: jax.Array  # () int32: Lloyd iterations of the kept restart


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST)  # no TF32/bf16 passes on GPU/TPU


def _use_gram(n: int, d: int, gram: bool | None) -> bool:
    return d > GRAM_RATIO * n if gram is None else bool(gram)


def _kmeanspp(key: jax.Array, data: jax.Array, sq: jax.Array, k: int, gram: bool) -> jax.Array:
    """Indices of k seed rows. Needs only distances between rows: a column of G (Gram) or one matvec (direct)."""
    n = sq.shape[0]
    rows = jnp.arange(n)
    # greedy k-means++ (sklearn's 2 + ln k local trials per centre): better seeds than plain k-means++ at a cost
    # that stays small next to the Lloyd iterations, and it keeps us comparable with sklearn's inertia.
    trials = 2 + int(math.log(k))

    def dist_to(idx: jax.Array) -> jax.Array:  # (n, t) squared distances to rows idx, exactly 0 at the rows themselves
        cross = data[:, idx] if gram else _dot(data, data[idx].T)
        dist = jnp.maximum(sq[:, None] - 2 * cross + sq[idx][None, :], 0.0)
        return jnp.where(rows[:, None] == idx[None, :], 0.0, dist)

    key, sub = jax.random.split(key)
    first = jax.random.randint(sub, (1,), 0, n)
    centers = jnp.zeros(k, jnp.int32).at[0].set(first[0])

    def body(j, carry):
        centers, closest, key = carry
        key, sub = jax.random.split(key)
        cum = jnp.cumsum(closest)
        # side="right": a row at distance 0 (already a centre, or a duplicate of one) is never drawn
        cand = jnp.searchsorted(cum, jax.random.uniform(sub, (trials,)) * cum[-1], side="right")
        cand = jnp.minimum(cand, n - 1)
        new = jnp.minimum(closest[:, None], dist_to(cand))
        best = jnp.argmin(jnp.sum(new, axis=0))
        return centers.at[j].set(cand[best]), new[:, best], key

    centers, _, _ = jax.lax.fori_loop(1, k, body, (centers, dist_to(first)[:, 0], key))
    return centers


def _reseed_empty(labels: jax.Array, dmin: jax.Array, k: int) -> jax.Array:
    """Move one distinct row into each empty cluster: the rows farthest from their centroid, as sklearn does, but
    never the closest row of its cluster (so no donor empties; k ≤ n guarantees enough movable rows)."""
    n = labels.shape[0]
    member = labels[:, None] == jnp.arange(k)[None, :]
    empty = ~jnp.any(member, axis=0)
    anchor = jnp.argmin(jnp.where(member, dmin[:, None], jnp.inf), axis=0)  # closest row of each cluster stays
    is_anchor = jnp.zeros(n, bool).at[jnp.where(empty, n, anchor)].set(True, mode="drop")
    _, far = jax.lax.top_k(jnp.where(is_anchor, -1.0, dmin), k)  # top_k breaks ties by index: deterministic
    src = far[jnp.maximum(jnp.cumsum(empty) - 1, 0)]  # r-th empty cluster takes the r-th farthest movable row
    return labels.at[jnp.where(empty, src, n)].set(jnp.arange(k, dtype=labels.dtype), mode="drop")


def _restart(key, data, sq, tol_abs, *, k: int, max_iter: int, gram: bool):
    """One k-means++ seeding + Lloyd run. Centroids are (k, d) points (direct) or (k, n) row weights W with
    c = W X (Gram), so the inner product x_i·c_j is ``data @ c.T`` in both modes."""
    n = sq.shape[0]
    seeds = _kmeanspp(key, data, sq, k, gram)
    c0 = jax.nn.one_hot(seeds, n, dtype=jnp.float32) if gram else data[seeds]

    def cross(c):  # (n, k) x_i·c_j and (k,) ||c_j||²
        gc = _dot(data, c.T)
        return gc, (jnp.sum(c * gc.T, axis=1) if gram else jnp.sum(c * c, axis=1))

    def step(state):
        it, c, gc, cc, prev, _ = state
        dist = jnp.maximum(sq[:, None] - 2 * gc + cc[None, :], 0.0)
        dmin = jnp.min(dist, axis=1)
        labels = jnp.argmin(dist, axis=1).astype(jnp.int32)
        # ties keep the previous label: coincident centroids (k > distinct rows) then settle instead of swapping
        own = jnp.take_along_axis(dist, jnp.maximum(prev, 0)[:, None], axis=1)[:, 0]
        labels = jnp.where((prev >= 0) & (own <= dmin), prev, labels)
        labels = _reseed_empty(labels, dmin, k)
        onehot = (labels[:, None] == jnp.arange(k)[None, :]).astype(jnp.float32)
        w = onehot.T / jnp.sum(onehot, axis=0)[:, None]  # every count ≥ 1 after re-seeding
        new = w if gram else _dot(w, data)  # one-hot matmul rather than a scatter-add: deterministic on GPU
        delta = new - c
        shift = jnp.sum(delta * _dot(delta, data)) if gram else jnp.sum(delta * delta)  # exactly 0 if unchanged
        return (it + 1, new, *cross(new), labels, shift)

    init = (jnp.int32(0), c0, *cross(c0), jnp.full(n, -1, jnp.int32), jnp.float32(jnp.inf))
    it, _, gc, cc, labels, _ = jax.lax.while_loop(lambda s: (s[0] < max_iter) & (s[5] > tol_abs), step, init)
    # cost to pick the best restart; the reported inertia is recomputed exactly from x for the kept one
    dist = sq - 2 * jnp.take_along_axis(gc, labels[:, None], axis=1)[:, 0] + cc[labels]
    return labels, jnp.sum(jnp.maximum(dist, 0.0)), it


@partial(jax.jit, static_argnames=("k", "n_init", "max_iter", "gram"))
def _fit(x, key, tol, *, k: int, n_init: int, max_iter: int, gram: bool):
    n, d = x.shape
    xc = x - jnp.mean(x, axis=0, keepdims=True)  # centring keeps the optimum and avoids cancellation in ||x||² − 2x·c
    sq = jnp.sum(xc * xc, axis=1)
    tol_abs = tol * jnp.sum(sq) / (n * d)  # tol × mean per-feature variance (sklearn)
    data = _dot(xc, xc.T) if gram else xc
    if gram:
        sq = jnp.diagonal(data)
    run = partial(_restart, data=data, sq=sq, tol_abs=tol_abs, k=k, max_iter=max_iter, gram=gram)
    labels, cost, n_iter = jax.vmap(run)(jax.random.split(key, n_init))
    best = jnp.argmin(cost)
    return labels[best], n_iter[best]


@partial(jax.jit, static_argnames=("k",))
def _finish(x, labels, k: int):
    """Canonical relabelling (by first appearance), cluster means and the exact cost, in one pass over x."""
    n = labels.shape[0]
    first = jnp.full(k, n, jnp.int32).at[labels].min(jnp.arange(n, dtype=jnp.int32))
    rank = jnp.zeros(k, jnp.int32).at[jnp.argsort(first)].set(jnp.arange(k, dtype=jnp.int32))
    labels = rank[labels]
    mean = jnp.mean(x, axis=0, keepdims=True)
    xc = x - mean
    onehot = (labels[:, None] == jnp.arange(k)[None, :]).astype(jnp.float32)
    centroids = _dot(onehot.T, xc) / jnp.maximum(jnp.sum(onehot, axis=0), 1.0)[:, None]
    cost = jnp.sum(jnp.square(xc - centroids[labels]))
    return labels, centroids + mean, cost


def _as_matrix(x) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D (rows, features) matrix, got shape {x.shape}")
    finite = np.asarray(jnp.all(jnp.isfinite(x), axis=1))
    if not finite.all():
        bad = np.flatnonzero(~finite)
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        raise ValueError(f"x has NaN/inf values (as float32) in rows {bad[:10].tolist()}{more}")
    return x


def kmeans(x, k: int, *, key: jax.Array, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4,
           gram: bool | None = None) -> KMeansResult:
    """Cluster the rows of ``x`` (n, d) into k clusters; best of ``n_init`` greedy-k-means++/Lloyd restarts.

    ``gram``: True runs on G = X Xᵀ (memory n², for d ≫ n), False on x directly, None picks by shape (d > n).
    Same key → identical labels. Call outside ``jit``: the inputs are validated on the host.
    """
    x = _as_matrix(x)
    n, d = x.shape
    k, n_init, max_iter = operator.index(k), operator.index(n_init), operator.index(max_iter)
    if not 1 <= k <= n:
        raise ValueError(f"k must satisfy 1 <= k <= n (number of rows = {n}), got k={k}")
    if n_init < 1:
        raise ValueError(f"n_init must be >= 1, got {n_init}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    labels, n_iter = _fit(x, key, jnp.float32(tol), k=k, n_init=n_init, max_iter=max_iter,
                          gram=_use_gram(n, d, gram))
    labels, centroids, cost = _finish(x, labels, k)
    return KMeansResult(labels, centroids, cost, n_iter)


def inertia(x, labels) -> jax.Array:
    """k-means cost Σ_i ||x_i − mean of i's cluster||² of a labelling, computed exactly as ``kmeans`` reports it."""
    x = _as_matrix(x)
    labels = jnp.asarray(labels, jnp.int32)
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},) to match x, got {labels.shape}")
    if int(labels.min()) < 0:
        raise ValueError("labels must be >= 0")
    return _finish(x, labels, int(labels.max()) + 1)[2]
