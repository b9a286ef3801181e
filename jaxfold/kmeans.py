"""k-means for model folding: cluster channels (rows) by their weights, in pure jitted JAX.

Why not sklearn: folding runs k-means once per layer, on CPU/GPU/TPU alike, with the weights already on device;
a jitted Lloyd loop with the ``n_init`` restarts batched by ``vmap`` is much faster warm and needs no host copy.

Conventions follow sklearn's ``KMeans`` so results are comparable: greedy k-means++ seeding, Lloyd iterations until
the centroid shift (sum of squared moves) is ≤ ``tol`` × the mean per-feature variance of ``x``, best of ``n_init``.
Each restart's Lloyd fixed point is then refined by Hartigan's single-row moves (the official code's solver is
Hartigan's): with k close to n, as at typical folding ratios, Lloyd alone stalls in poorer optima.
Additions: empty clusters are re-seeded inside the loop (never NaN, every one of the k labels is used), labels are
canonical (numbered by first appearance), and a Gram mode runs everything on G = X Xᵀ for d ≫ n (attention heads).

Compilation is shared, since folding calls this once per layer group and again at every new ratio: k is a traced
value and the jitted core works on n cluster slots (those ≥ k masked out), so one executable serves every k ≤ n;
in Gram mode (the usual case for folding features, d > n) the core sees only G, so it depends on n alone. Only
``_prepare`` (one matmul) and ``_finish`` (cluster means), both quick to compile, are specialised to (n, d).
"""

from __future__ import annotations

import math
import operator
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# With n cluster slots a Lloyd step costs ~2·n²·d flops directly and ~2·n³ on the Gram matrix (plus 2·n²·d once to
# form it), so the Gram mode wins as soon as d > n; its memory is n² instead of n·d per restart as well.
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


def _trials(k: int) -> int:
    return 2 + int(math.log(k))  # sklearn's 2 + ln k local trials per k-means++ centre


def _kmeanspp(u: jax.Array, data: jax.Array, sq: jax.Array, k: jax.Array, trials: jax.Array,
              gram: bool) -> jax.Array:
    """Indices of k seed rows (slots ≥ k stay 0). Needs only distances between rows: a column of G (Gram) or one
    matvec (direct). k and the trial count are traced, so the loop runs over a dynamic number of centres.

    ``u`` (n, _trials(n)) holds the uniform draws: u[0, 0] picks the first centre, u[j] the candidates of centre j.
    Drawing them all at once outside the loop keeps a single threefry in the program (each one is slow to compile)."""
    n = sq.shape[0]
    rows = jnp.arange(n)
    # greedy k-means++: better seeds than plain k-means++ at a cost that stays small next to the Lloyd iterations,
    # and it keeps us comparable with sklearn's inertia. The trial count is a shape, so draw the most any k ≤ n
    # needs and let only the first ``trials`` compete.
    live = jnp.arange(u.shape[1]) < trials

    def dist_to(idx: jax.Array) -> jax.Array:  # (n, t) squared distances to rows idx, exactly 0 at the rows themselves
        cross = data[:, idx] if gram else _dot(data, data[idx].T)
        dist = jnp.maximum(sq[:, None] - 2 * cross + sq[idx][None, :], 0.0)
        return jnp.where(rows[:, None] == idx[None, :], 0.0, dist)

    first = jnp.minimum((u[0, :1] * n).astype(jnp.int32), n - 1)
    centers = jnp.zeros(n, jnp.int32).at[0].set(first[0])

    def body(j, carry):
        centers, closest = carry
        cum = jnp.cumsum(closest)
        # side="right": a row at distance 0 (already a centre, or a duplicate of one) is never drawn
        cand = jnp.searchsorted(cum, u[j] * cum[-1], side="right", method="compare_all")
        cand = jnp.minimum(cand, n - 1)
        new = jnp.minimum(closest[:, None], dist_to(cand))
        best = jnp.argmin(jnp.where(live, jnp.sum(new, axis=0), jnp.inf))
        return centers.at[j].set(cand[best]), new[:, best]

    centers, _ = jax.lax.fori_loop(1, k, body, (centers, dist_to(first)[:, 0]))
    return centers


def _reseed_empty(labels: jax.Array, dmin: jax.Array, k) -> jax.Array:
    """Move one distinct row into each empty cluster: the rows farthest from their centroid, as sklearn does, but
    never the closest row of its cluster (so no donor empties; k ≤ n guarantees enough movable rows).

    Cluster slots run to capacity n (labels.shape[0]) so that k can be traced; only the k live slots are re-seeded."""
    n = labels.shape[0]
    slots = jnp.arange(n)
    member = labels[:, None] == slots[None, :]
    used = jnp.any(member, axis=0)
    empty = ~used & (slots < k)
    anchor = jnp.argmin(jnp.where(member, dmin[:, None], jnp.inf), axis=0)  # closest row of each cluster stays
    is_anchor = jnp.zeros(n, bool).at[jnp.where(used, anchor, n)].set(True, mode="drop")
    far = jnp.argsort(jnp.where(is_anchor, -1.0, dmin), descending=True, stable=True)  # ties by index: deterministic
    src = far[jnp.maximum(jnp.cumsum(empty) - 1, 0)]  # r-th empty cluster takes the r-th farthest movable row
    return labels.at[jnp.where(empty, src, n)].set(slots.astype(labels.dtype), mode="drop")


def _restart(u, data, sq, tol_abs, k, trials, *, max_iter: int, gram: bool):
    """One k-means++ seeding + Lloyd run. Centroids are (n, d) points (direct) or (n, n) row weights W with
    c = W X (Gram), so the inner product x_i·c_j is ``data @ c.T`` in both modes. Slots j ≥ k are dead: zero
    centroids that never move, at distance +inf so no row joins them."""
    n = sq.shape[0]
    alive = jnp.arange(n) < k
    seeds = _kmeanspp(u, data, sq, k, trials, gram)
    c0 = jnp.where(alive[:, None], jax.nn.one_hot(seeds, n, dtype=jnp.float32) if gram else data[seeds], 0.0)

    def cross(c):  # (n, n) x_i·c_j and (n,) ||c_j||²
        gc = _dot(data, c.T)
        return gc, (jnp.sum(c * gc.T, axis=1) if gram else jnp.sum(c * c, axis=1))

    if gram:  # c0 is one-hot: G c0ᵀ is a column gather, bit for bit what the matmul gives
        gc0, cc0 = jnp.where(alive[None, :], data[:, seeds], 0.0), jnp.where(alive, sq[seeds], 0.0)
    else:
        gc0, cc0 = cross(c0)

    def step(state):
        it, c, gc, cc, prev, _ = state
        dist = jnp.where(alive[None, :], jnp.maximum(sq[:, None] - 2 * gc + cc[None, :], 0.0), jnp.inf)
        dmin = jnp.min(dist, axis=1)
        labels = jnp.argmin(dist, axis=1).astype(jnp.int32)
        # ties keep the previous label: coincident centroids (k > distinct rows) then settle instead of swapping
        own = jnp.take_along_axis(dist, jnp.maximum(prev, 0)[:, None], axis=1)[:, 0]
        labels = jnp.where((prev >= 0) & (own <= dmin), prev, labels)
        labels = _reseed_empty(labels, dmin, k)
        onehot = (labels[:, None] == jnp.arange(n)[None, :]).astype(jnp.float32)
        w = onehot.T / jnp.maximum(jnp.sum(onehot, axis=0), 1.0)[:, None]  # live counts ≥ 1; dead rows stay 0
        new = w if gram else _dot(w, data)  # one-hot matmul rather than a scatter-add: deterministic on GPU
        gc_new, cc_new = cross(new)
        delta = new - c
        # Σ_j ||c_j' − c_j||², exactly 0 if unchanged. Gram: δ·(G δᵀ) with G δᵀ = gc' − gc, which saves a second n³
        # matmul per step (checked against float64: as accurate as the matmul form, ~1e-6 relative)
        shift = jnp.sum(delta * (gc_new - gc).T) if gram else jnp.sum(delta * delta)
        return it + 1, new, gc_new, cc_new, labels, shift

    init = (jnp.int32(0), c0, gc0, cc0, jnp.full(n, -1, jnp.int32), jnp.float32(jnp.inf))
    it, c, gc, cc, labels, _ = jax.lax.while_loop(lambda s: (s[0] < max_iter) & (s[5] > tol_abs), step, init)
    labels, gc, cc = _hartigan(labels, c, gc, cc, data, sq, alive, gram)
    # cost to pick the best restart; the reported inertia is recomputed exactly from x for the kept one
    dist = sq - 2 * jnp.take_along_axis(gc, labels[:, None], axis=1)[:, 0] + cc[labels]
    return labels, jnp.sum(jnp.maximum(dist, 0.0)), it


def _hartigan(labels, c, gc, cc, data, sq, alive, gram: bool):
    """Refine a Lloyd fixed point with Hartigan's single-row moves: move row i from cluster a to b when
    N_a/(N_a−1)·d(i,a) > N_b/(N_b+1)·d(i,b), i.e. when the move lowers the total cost counting that both centroids
    shift. Lloyd's fixed points include many of Hartigan's non-optima; with k close to n (typical folding ratios)
    they are common, and the official code's solver is Hartigan's. One best move per step; each move recomputes
    two centroid columns (O(n²) in Gram mode), at most n moves. Singletons never move, so no cluster empties."""
    n = sq.shape[0]
    slots = jnp.arange(n)
    counts = jnp.sum(labels[:, None] == slots[None, :], axis=0).astype(jnp.float32)

    def refresh(j, labels, counts, c, gc, cc):
        member = (labels == j).astype(jnp.float32)
        w = member / jnp.maximum(counts[j], 1.0)
        row = w if gram else _dot(w, data)
        col = _dot(data, row)
        return c.at[j].set(row), gc.at[:, j].set(col), cc.at[j].set(jnp.dot(row, col) if gram else jnp.dot(row, row))

    def body(state):
        moves, _, labels, counts, c, gc, cc = state
        dist = jnp.where(alive[None, :], jnp.maximum(sq[:, None] - 2 * gc + cc[None, :], 0.0), jnp.inf)
        own = jnp.take_along_axis(dist, labels[:, None], axis=1)[:, 0]
        n_own = counts[labels]
        remove = jnp.where(n_own > 1, n_own / jnp.maximum(n_own - 1, 1.0) * own, -jnp.inf)
        blocked = (slots[None, :] == labels[:, None]) | ~alive[None, :]  # dead slots: 0·inf would be NaN
        add = jnp.where(blocked, jnp.inf, counts[None, :] / (counts[None, :] + 1) * dist)
        gain = remove[:, None] - add
        best = jnp.argmax(gain)
        i, b = best // n, best % n
        # ignore gains at float32 noise level (they could cycle)
        improve = gain[i, b] > 1e-6 * (jnp.sum(own) / n + jnp.finfo(jnp.float32).tiny)
        a = labels[i]
        new_labels = labels.at[i].set(jnp.where(improve, b, a).astype(labels.dtype))
        new_counts = counts.at[a].add(jnp.where(improve, -1.0, 0.0)).at[b].add(jnp.where(improve, 1.0, 0.0))
        c2, gc2, cc2 = refresh(a, new_labels, new_counts, c, gc, cc)
        c2, gc2, cc2 = refresh(b, new_labels, new_counts, c2, gc2, cc2)
        keep = lambda old, new: jnp.where(improve, new, old)
        return moves + 1, improve, new_labels, new_counts, keep(c, c2), keep(gc, gc2), keep(cc, cc2)

    init = (jnp.int32(0), jnp.bool_(True), labels, counts, c, gc, cc)
    _, _, labels, _, _, gc, cc = jax.lax.while_loop(lambda s: (s[0] < n) & s[1], body, init)
    return labels, gc, cc


@partial(jax.jit, static_argnames=("gram",))
def _prepare(x, *, gram: bool):
    """Centred data for the core (G = Xc Xcᵀ in Gram mode, else Xc), squared row norms, the mean per-feature variance
    (sklearn's tolerance unit) and which rows are finite (checked on the host before the core runs).

    Kept out of ``_core`` so that in Gram mode the core's signature holds only n: this one matmul is all that
    compiles per (n, d)."""
    n, d = x.shape
    xc = x - jnp.mean(x, axis=0, keepdims=True)  # centring keeps the optimum and avoids cancellation in ||x||² − 2x·c
    sq = jnp.sum(xc * xc, axis=1)
    var = jnp.sum(sq) / (n * d)
    finite = jnp.min(jnp.isfinite(x).astype(jnp.float32), axis=1) > 0  # not jnp.all: ~5× slower to compile on CPU
    if not gram:
        return xc, sq, var, finite
    g = _dot(xc, xc.T)
    return g, jnp.diagonal(g), var, finite


def _canonical(labels: jax.Array) -> jax.Array:
    """Renumber clusters by first appearance (labels[0] == 0), over n slots: any label range below n works."""
    n = labels.shape[0]
    slots = jnp.arange(n, dtype=jnp.int32)
    first = jnp.full(n, n, jnp.int32).at[labels].min(slots)  # unused slots (n) sort last
    rank = jnp.zeros(n, jnp.int32).at[jnp.argsort(first, stable=True)].set(slots)
    return rank[labels]


@partial(jax.jit, static_argnames=("n_init", "max_iter", "gram"))
def _core(data, sq, var, tol, key, k, trials, *, n_init: int, max_iter: int, gram: bool):
    """Canonical labels and Lloyd iterations of the best of n_init restarts.

    k (and its trial count) are traced: one executable serves every k ≤ n, and in Gram mode every d as well."""
    n = sq.shape[0]
    run = partial(_restart, data=data, sq=sq, tol_abs=tol * var, k=k, trials=trials, max_iter=max_iter, gram=gram)
    shape = (n_init, n, _trials(n))  # n: the most trials any k ≤ n needs
    u = jax.random.uniform(key, (math.prod(shape),)).reshape(shape)  # flat: a 1-D threefry compiles ~3× faster
    labels, cost, n_iter = jax.vmap(run)(u)
    best = jnp.argmin(cost)
    return _canonical(labels[best]), n_iter[best]


@jax.jit
def _finish(x, labels):
    """Cluster means and the exact cost from x, over n cluster slots (unused ones get the mean of x): compiles once
    per shape of x, whatever k; the caller keeps the first k centroids."""
    n = labels.shape[0]
    mean = jnp.mean(x, axis=0, keepdims=True)
    xc = x - mean
    onehot = (labels[:, None] == jnp.arange(n)[None, :]).astype(jnp.float32)
    centroids = _dot(onehot.T, xc) / jnp.maximum(jnp.sum(onehot, axis=0), 1.0)[:, None]
    cost = jnp.sum(jnp.square(xc - centroids[labels]))
    return centroids + mean, cost


def _as_matrix(x) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D (rows, features) matrix, got shape {x.shape}")
    return x


def _check_finite(finite: np.ndarray) -> None:
    if not finite.all():
        bad = np.flatnonzero(~finite)
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        raise ValueError(f"x has NaN/inf values (as float32) in rows {bad[:10].tolist()}{more}")


def _cluster(x, k: int, key: jax.Array, n_init: int, max_iter: int, tol: float, gram: bool | None):
    """Validate, then run the restarts; returns (x as float32, canonical labels, n_iter)."""
    x = _as_matrix(x)
    n, d = x.shape
    use_gram = _use_gram(n, d, gram)
    data, sq, var, finite = _prepare(x, gram=use_gram)
    _check_finite(np.asarray(finite))
    k, n_init, max_iter = operator.index(k), operator.index(n_init), operator.index(max_iter)
    if not 1 <= k <= n:
        raise ValueError(f"k must satisfy 1 <= k <= n (number of rows = {n}), got k={k}")
    if n_init < 1:
        raise ValueError(f"n_init must be >= 1, got {n_init}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    # k and its trial count go in as traced values: a new k (another folding ratio) compiles nothing
    labels, n_iter = _core(data, sq, var, np.float32(tol), key, np.int32(k), np.int32(_trials(k)),
                           n_init=n_init, max_iter=max_iter, gram=use_gram)
    return x, labels, n_iter


def kmeans(x, k: int, *, key: jax.Array, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4,
           gram: bool | None = None) -> KMeansResult:
    """Cluster the rows of ``x`` (n, d) into k clusters; best of ``n_init`` greedy-k-means++/Lloyd restarts.

    ``gram``: True runs on G = X Xᵀ (memory n², for d ≫ n), False on x directly, None picks by shape (d > n).
    Same key → identical labels. Call outside ``jit``: the inputs are validated on the host.
    """
    x, labels, n_iter = _cluster(x, k, key, n_init, max_iter, tol, gram)
    n = x.shape[0]
    centroids, cost = _finish(x, labels)
    if k < n:  # sliced on the host: a device-side slice would compile once per k
        centroids = jax.device_put(np.asarray(centroids)[:k], centroids.sharding)
    return KMeansResult(labels, centroids, cost, n_iter)


def kmeans_labels(x, k: int, *, key: jax.Array, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4,
                  gram: bool | None = None) -> jax.Array:
    """Only the labels of :func:`kmeans` (identical for the same arguments), skipping the centroid/inertia pass —
    what folding needs, one compiled executable fewer per feature shape."""
    return _cluster(x, k, key, n_init, max_iter, tol, gram)[1]


def inertia(x, labels) -> jax.Array:
    """k-means cost Σ_i ||x_i − mean of i's cluster||² of a labelling, computed exactly as ``kmeans`` reports it."""
    x = _as_matrix(x)
    _check_finite(np.all(np.isfinite(np.asarray(x)), axis=1))
    labels = np.asarray(labels).astype(np.int32)
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},) to match x, got {labels.shape}")
    if labels.min() < 0:
        raise ValueError("labels must be >= 0")
    _, dense = np.unique(labels, return_inverse=True)  # into [0, n): the slots _finish has
    return _finish(x, jnp.asarray(dense.reshape(-1), jnp.int32))[1]
