"""k-means for model folding: cluster channels (rows) by their weights, in pure jitted JAX.

Why not sklearn: folding runs k-means once per layer, on CPU/GPU/TPU alike, with the weights already on device;
a jitted Lloyd loop over the ``n_init`` restarts is much faster warm and needs no host copy.

Conventions follow sklearn's ``KMeans`` so results are comparable: greedy k-means++ seeding, Lloyd iterations until
the centroid shift (sum of squared moves) is ≤ ``tol`` × the mean per-feature variance of ``x``, best of ``n_init``.
The best restart's Lloyd fixed point is then refined by Hartigan's moves (the official code's solver is Hartigan's):
with k close to n, as at typical folding ratios, Lloyd alone stalls in poorer optima.

Cost: clusters are held as labels plus the statistics c_j·x_i and ||c_j||², never as centroid matrices. In Gram
mode a Lloyd step is then O(n²) (cluster sums of G's rows, not an n³ matmul), and Hartigan moves go in batches of
many rows per O(n²) round with their exact joint cost change (:func:`_batch_moves`) instead of one row per step.
Additions: empty clusters are re-seeded inside the loop (never NaN, every one of the k labels is used), labels are
canonical (numbered by first appearance), and a Gram mode runs everything on G = X Xᵀ for d ≫ n (attention heads).

Compilation is shared, since folding calls this once per layer group and again at every new ratio: k is a traced
value and the jitted core works on n cluster slots (those ≥ k masked out), so one executable serves every k ≤ n;
in Gram mode (the default) the core sees only G, so it depends on n alone. Host-resident data gets G from numpy
(BLAS syrk, no compilation); only the device path's ``_prepare`` (one matmul) and ``kmeans``'s ``_finish``
(cluster means), both quick to compile, are specialised to (n, d).
"""

from __future__ import annotations

import math
import operator
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Both modes hold (n, n) statistics per restart. On G = X Xᵀ (2·n²·d flops once) a Lloyd step is O(n²) and a
# Hartigan round reads rows of G; directly each step costs a (n, d) @ (d, n) product and each round computes its
# moved rows' rows of G. So Gram is the default for every shape (the direct mode stays for checking, gram=False).


class KMeansResult(NamedTuple):
    labels: jax.Array  # (n,) int32 in [0, k), numbered by first appearance (labels[0] == 0)
    centroids: jax.Array  # (k, d) float32: the mean of each labelled cluster
    inertia: jax.Array  # () float32: sum of squared distances of the rows to their centroid
    n_iter: jax.Array  # () int32: Lloyd iterations of the kept restart


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST)  # no TF32/bf16 passes on GPU/TPU


def _use_gram(gram: bool | None) -> bool:
    return True if gram is None else bool(gram)


def _trials(k: int) -> int:
    return 2 + int(math.log(k))  # sklearn's 2 + ln k local trials per k-means++ centre


def _kmeanspp(u: jax.Array, data: jax.Array, sq: jax.Array, k: jax.Array, trials: jax.Array,
              gram: bool) -> jax.Array:
    """Indices of k seed rows (slots ≥ k stay 0). Needs only distances between rows: a column of G (Gram) or one
    matvec (direct). k and the trial count are traced, so the loop runs over a dynamic number of centres.

    ``u`` (n, _trials(n)) holds the uniform draws: u[0, 0] picks the first centre, u[j] the candidates of centre j.
    The draws come from the host (:func:`_uniforms`), so the compiled program holds no random-number generator."""
    n = sq.shape[0]
    rows = jnp.arange(n)
    # greedy k-means++: better seeds than plain k-means++ at a cost that stays small next to the Lloyd iterations,
    # and it keeps us comparable with sklearn's inertia. The trial count is a shape, so draw the most any k ≤ n
    # needs and let only the first ``trials`` compete.
    live = jnp.arange(u.shape[1]) < trials

    def dist_to(idx: jax.Array) -> jax.Array:  # (t, n) squared distances to rows idx, exactly 0 at the rows themselves
        cross = data[idx] if gram else _dot(data[idx], data.T)  # rows of G (symmetric): a contiguous gather
        dist = jnp.maximum(sq[None, :] - 2 * cross + sq[idx][:, None], 0.0)
        return jnp.where(rows[None, :] == idx[:, None], 0.0, dist)

    first = jnp.minimum((u[0, :1] * n).astype(jnp.int32), n - 1)
    centers = jnp.zeros(n, jnp.int32).at[0].set(first[0])

    def body(j, carry):
        centers, closest = carry
        cum = jnp.cumsum(closest)
        # side="right": a row at distance 0 (already a centre, or a duplicate of one) is never drawn
        cand = jnp.searchsorted(cum, u[j] * cum[-1], side="right", method="scan")
        cand = jnp.minimum(cand, n - 1)
        new = jnp.minimum(closest[None, :], dist_to(cand))
        best = jnp.argmin(jnp.where(live, jnp.sum(new, axis=1), jnp.inf))
        return centers.at[j].set(cand[best]), new[best]

    centers, _ = jax.lax.fori_loop(1, k, body, (centers, dist_to(first)[0]))
    return centers


def _cluster_sums(labels: jax.Array, m: jax.Array) -> jax.Array:
    """(n slots, …) sums of the rows of ``m`` per cluster. A scatter-add on CPU (O(n·width), sequential, so
    deterministic) and a one-hot matmul elsewhere (GPU scatter-adds are atomic, so their float sums vary by run;
    a matmul is fast there and bit-reproducible)."""
    n = labels.shape[0]

    def scatter(labels, m):
        return jax.ops.segment_sum(m, labels, num_segments=n)

    def matmul(labels, m):
        onehot = (labels[None, :] == jnp.arange(n)[:, None]).astype(m.dtype)
        return _dot(onehot, m) if m.ndim == 2 else _dot(onehot, m[:, None])[:, 0]

    return jax.lax.platform_dependent(labels, m, cpu=scatter, default=matmul)


def _stats(labels: jax.Array, data: jax.Array, gram: bool):
    """Cluster sizes, c_j·x_i (slots, n) and ||c_j||² (slots,) of the labelling's centroids.

    Gram mode needs no centroid matrix: c_j·x_i is the mean of G[l, i] over the members l of j, one O(n²) pass of
    cluster sums (not an n³ matmul), and ||c_j||² the mean of c_j·x_l over those members."""
    counts = _cluster_sums(labels, jnp.ones(labels.shape, jnp.float32))
    inv = 1.0 / jnp.maximum(counts, 1.0)  # dead or empty slots: zero centroid
    if gram:
        cx = _cluster_sums(labels, data) * inv[:, None]
        return counts, cx, _cluster_sums(labels, _own(cx, labels)) * inv
    c = _cluster_sums(labels, data) * inv[:, None]
    return counts, _dot(c, data.T), jnp.sum(c * c, axis=1)


def _own(cx: jax.Array, labels: jax.Array) -> jax.Array:
    """(n,) entry of every row in its own cluster's row of a (slots, n) matrix."""
    return jnp.take_along_axis(cx, labels[None, :], axis=0)[0]


def _argmin_slots(d: jax.Array) -> jax.Array:
    """``jnp.argmin(d, axis=0)`` (the first slot at each column's minimum) for NaN-free d, as two plain reductions:
    XLA:CPU compiles a (value, index) argmin over an axis to scalar code, ≈ 3× slower on (1,536 × 1,536) than a
    min followed by a min over the indices where d equals it (float indices: exact below 2²⁴ slots)."""
    n = d.shape[0]
    low = jnp.min(d, axis=0)
    slots = jnp.arange(n, dtype=jnp.float32)[:, None]
    first = jnp.min(jnp.where(d == low[None, :], slots, jnp.float32(n)), axis=0)
    return jnp.minimum(first, n - 1).astype(jnp.int32)


def _distances(sq, cx, cc, alive):
    """(slots, n) squared distances; dead slots at +inf."""
    return jnp.where(alive[:, None], jnp.maximum(sq[None, :] - 2 * cx + cc[:, None], 0.0), jnp.inf)


def _pair_dist(sq, cx, cc, clusters, rows):
    """Squared distances of the given rows to the given clusters' centroids (elementwise pairs)."""
    return jnp.maximum(sq[rows] - 2 * cx[clusters, rows] + cc[clusters], 0.0)


def _reseed_empty(labels: jax.Array, dmin: jax.Array, k) -> jax.Array:
    """Move one distinct row into each empty cluster: the rows farthest from their centroid, as sklearn does, but
    never the closest row of its cluster (so no donor empties; k ≤ n guarantees enough movable rows).

    Cluster slots run to capacity n (labels.shape[0]) so that k can be traced; only the k live slots are re-seeded."""
    n = labels.shape[0]
    slots = jnp.arange(n)
    counts = _cluster_sums(labels, jnp.ones(n, jnp.float32))
    empty = (counts == 0) & (slots < k)
    # the closest row of each cluster stays: the lowest (distance, index) per cluster, by two scatter-mins (a
    # lexsort compiles slower)
    closest = jnp.full(n, jnp.inf, dmin.dtype).at[labels].min(dmin)
    anchor = jnp.full(n, n, jnp.int32).at[labels].min(jnp.where(dmin == closest[labels], slots, n))
    is_anchor = anchor[labels] == slots
    far = jnp.argsort(jnp.where(is_anchor, -1.0, dmin), descending=True, stable=True)  # ties by index: deterministic
    src = far[jnp.maximum(jnp.cumsum(empty) - 1, 0)]  # r-th empty cluster takes the r-th farthest movable row
    return labels.at[jnp.where(empty, src, n)].set(slots.astype(labels.dtype), mode="drop")


def _lloyd(seeds, data, sq, tol_abs, k, *, max_iter: int, gram: bool):
    """Lloyd iterations from one restart's k-means++ seeds (k row indices); returns labels, cost, iterations.

    Clusters live in n slots (j ≥ k dead: at distance +inf, so no row joins them) and are represented by their
    labels alone: every Lloyd step recomputes the centroid statistics from the labels (:func:`_stats`)."""
    n = sq.shape[0]
    rows = jnp.arange(n)
    alive = rows < k
    rows0 = data[seeds] if gram else _dot(data[seeds], data.T)  # seed_j·x_i: a row of G
    cx0, cc0 = jnp.where(alive[:, None], rows0, 0.0), jnp.where(alive, sq[seeds], 0.0)

    def step(state):
        it, cx, cc, prev, _ = state
        labels = _argmin_slots(_distances(sq, cx, cc, alive))  # fused passes, not stored
        dmin = _pair_dist(sq, cx, cc, labels, rows)
        # ties keep the previous label: coincident centroids (k > distinct rows) then settle instead of swapping
        own = _pair_dist(sq, cx, cc, jnp.maximum(prev, 0), rows)
        labels = jnp.where((prev >= 0) & (own <= dmin), prev, labels)
        labels = _reseed_empty(labels, dmin, k)
        counts, cx_new, cc_new = _stats(labels, data, gram)
        # sklearn's stopping rule, Σ_j ||c_j' − c_j||², from the statistics alone: c_j'·c_j is the mean of c_j·x_l
        # over the new members l of j
        cross = _cluster_sums(labels, _own(cx, labels)) / jnp.maximum(counts, 1)
        shift = jnp.sum(jnp.where(alive, jnp.maximum(cc_new - 2 * cross + cc, 0.0), 0.0))
        return it + 1, cx_new, cc_new, labels, jnp.where(jnp.all(labels == prev), 0.0, shift)

    init = (jnp.int32(0), cx0, cc0, jnp.full(n, -1, jnp.int32), jnp.float32(jnp.inf))
    it, cx, cc, labels, _ = jax.lax.while_loop(lambda s: (s[0] < max_iter) & (s[4] > tol_abs), step, init)
    # cost to pick the best restart, from the final labels' statistics; the reported inertia is recomputed from x
    return labels, jnp.sum(jnp.maximum(sq - 2 * _own(cx, labels) + cc[labels], 0.0)), it


def _moves_per_round(n: int) -> int:
    """Most Hartigan moves one round applies: a round costs one O(n²) distance pass plus O(moves·n) updates."""
    return min(n, max(32, n // 16))


def _hartigan(labels, data, sq, alive, gram: bool):
    """Refine a Lloyd fixed point with Hartigan's moves: row i goes from cluster a to b when
    N_a/(N_a−1)·d(i,a) > N_b/(N_b+1)·d(i,b), i.e. when the move lowers the total cost counting that both centroids
    shift. Lloyd's fixed points include many of Hartigan's non-optima; with k close to n (typical folding ratios)
    they are common, and the official code's solver is Hartigan's. Rounds of moves (:func:`_hartigan_round`) until
    none improves, at most n rounds; each round lowers the cost. Singletons never move, so no cluster empties."""
    init = (jnp.int32(0), jnp.bool_(True), labels, *_stats(labels, data, gram))
    body = partial(_hartigan_round, data=data, sq=sq, alive=alive, gram=gram)
    return jax.lax.while_loop(lambda s: (s[0] < sq.shape[0]) & s[1], body, init)[2]


def _pick(take: jax.Array, order: jax.Array, moves: int) -> jax.Array:
    """The first ``moves`` rows with ``take`` in ``order``, padded with n (dropped by every update)."""
    picked = order[jnp.argsort(~take[order], stable=True)[:moves]]
    return jnp.where(take[picked], picked, take.shape[0])


def _same_cluster_sums_scatter(same: jax.Array, slot: jax.Array, sign: jax.Array, gi: jax.Array) -> jax.Array:
    """:func:`_same_cluster_sums` as a scatter-add into one slot per touched cluster (its first part), O(m·n)."""
    m2 = same.shape[0]
    sums = jax.ops.segment_sum(sign[:, None] * jnp.concatenate([gi, gi]), slot, num_segments=m2)  # slot 2m: dropped
    return sums[jnp.minimum(slot, m2 - 1)]


def _same_cluster_sums_matmul(same: jax.Array, slot: jax.Array, sign: jax.Array, gi: jax.Array) -> jax.Array:
    """:func:`_same_cluster_sums` as the (2m, 2m) same-cluster matrix times the parts' rows, O(m²·n)."""
    del slot  # same[p, q] already says which parts share a cluster (False whenever p or q is off the batch)
    return _dot(jnp.where(same, sign[None, :], 0.0), jnp.concatenate([gi, gi]))


def _same_cluster_sums(same: jax.Array, slot: jax.Array, sign: jax.Array, gi: jax.Array) -> jax.Array:
    """(2m, n): for every part p, Σ sign_q·x_q·x_l over the parts q that touch p's cluster (``same[p, q]``; ``slot[p]``
    is the first such part, 2m for parts off the batch); ``gi`` holds the m moved rows' rows of G, shared by their
    leaving and entering parts.

    A scatter-add on CPU: the matmul is O(m²·n), 41 GFLOP a round at n = 11,008 (a LLaMA-7B MLP group), most of
    the round's time there. The matmul elsewhere: fast on accelerators, and bit-reproducible (GPU scatter-adds are
    atomic)."""
    return jax.lax.platform_dependent(same, slot, sign, gi, cpu=_same_cluster_sums_scatter,
                                      default=_same_cluster_sums_matmul)


def _batch_moves(picked, labels, target, counts, sq, cx, cc, data, gram: bool):
    """Exact effect of moving every picked row i from its cluster a to its proposed cluster b at once.

    For a cluster j that loses the rows R and gains the rows S (y = x − c_j, d = ||y||²), the cost changes by
    Σ_S d − Σ_R d − ||Σ_S y − Σ_R y||² / N_j', and its centroid moves by (Σ_S y − Σ_R y) / N_j'. Every picked move
    plays two parts (leaving a, entering b); the sums run over the pairs of parts that touch the same cluster, all
    from rows of G and the current c·x, in O(moves² + moves·n).

    Returns (cost change, no cluster empties, new labels, counts, and the touched clusters' slots (n: none)
    with their new c·x rows and ||c||²; the caller writes them)."""
    n = labels.shape[0]
    m = picked.shape[0]
    live = picked < n
    i = jnp.minimum(picked, n - 1)
    part = jnp.concatenate([labels[i], target[i]])  # (2m,) cluster of each part: m leavings, then m entries
    sign = jnp.concatenate([-jnp.ones(m), jnp.ones(m)])
    on = jnp.concatenate([live, live])
    rows = jnp.concatenate([i, i])
    gi = data[i] if gram else _dot(data[i], data.T)  # (m, n): x_i·x_l
    same = (part[:, None] == part[None, :]) & on[:, None] & on[None, :]  # parts touching the same cluster
    cxp = cx[part[:, None], rows[None, :]]  # c_{cluster of p}·x_{row of q}
    # y_p·y_q relative to part p's cluster (for pairs in the same cluster): G_pq − c·x_p − c·x_q + ||c||²
    yy = jnp.tile(gi[:, i], (2, 2)) - jnp.diagonal(cxp)[:, None] - cxp + cc[part][:, None]
    signed = jnp.where(same, sign[:, None] * sign[None, :] * yy, 0.0)
    pair = jnp.sum(signed, axis=1)  # summed over a cluster's parts: ||Σ_S y − Σ_R y||²
    new_counts = counts.at[jnp.where(on, part, n)].add(sign, mode="drop")
    left = jnp.maximum(new_counts[part], 1.0)
    delta = jnp.sum(jnp.where(on, sign * _pair_dist(sq, cx, cc, part, rows), 0.0)) - jnp.sum(pair / left)
    fits = jnp.all(~on | (new_counts[part] >= 1))
    # the touched clusters' new statistics, written by the first part of each (the others would write the same)
    first = jnp.argmax(same, axis=1)  # the first part touching p's cluster: p itself for that first part
    writer = on & (first == jnp.arange(2 * m))
    shift = _same_cluster_sums(same, jnp.where(on, first, 2 * m), sign, gi)  # Σ_S x·x_l − Σ_R x·x_l
    new_cx = (counts[part][:, None] * cx[part] + shift) / left[:, None]
    cy = jnp.sum(jnp.where(same, sign[None, :] * (cxp - cc[part][:, None]), 0.0), axis=1)  # c·(Σ_S y − Σ_R y)
    norm = jnp.sum(jnp.where(same, pair[None, :], 0.0), axis=1)
    new_cc = cc[part] + 2 * cy / left + norm / jnp.square(left)
    dst = jnp.where(writer, part, n)
    labels = labels.at[picked].set(target[i], mode="drop")
    return delta, fits, labels, new_counts, dst, new_cx, new_cc


def _hartigan_round(state, data, sq, alive, gram: bool):
    """One round of Hartigan moves; state = (rounds, any moved, labels, counts, c·x (slots, n), ||c||² (slots,)).

    Every row proposes its best move, and the best-gain proposals (up to :func:`_moves_per_round`) are tried
    together, with their exact joint cost change (:func:`_batch_moves`): proposals crowd into a few large clusters
    that trade rows, so moves sharing no cluster are few per round. If the joint change is not a decrease (or a
    cluster would empty), the round takes only proposals that share no cluster, whose gains are exact and add up.
    Statistics are updated in place, O(moves·n); the caller recomputes the final cost exactly."""
    n = sq.shape[0]
    slots = jnp.arange(n)
    rounds, _, labels, counts, cx, cc = state
    own = _pair_dist(sq, cx, cc, labels, slots)
    n_own = counts[labels]
    remove = jnp.where(n_own > 1, n_own / jnp.maximum(n_own - 1, 1.0) * own, -jnp.inf)
    # cost of adding each row to each other live cluster; one fused pass over (slots, n), never stored
    blocked = (slots[:, None] == labels[None, :]) | ~alive[:, None]  # dead slots: 0·inf would be NaN
    add = jnp.where(blocked, jnp.inf, counts[:, None] / (counts[:, None] + 1) * _distances(sq, cx, cc, alive))
    target = _argmin_slots(add).astype(labels.dtype)
    add_best = counts[target] / (counts[target] + 1) * _pair_dist(sq, cx, cc, target, slots)
    gain = remove - add_best
    scale = jnp.sum(own) / n + jnp.finfo(jnp.float32).tiny
    ok = gain > 1e-6 * scale  # ignore gains at float32 noise level (they could cycle)
    order = jnp.argsort(jnp.where(ok, -gain, jnp.inf), stable=True)
    rank = jnp.where(ok, jnp.zeros(n, jnp.int32).at[order].set(slots), n)
    best = jnp.full(n, n, jnp.int32).at[labels].min(rank).at[target].min(rank)
    disjoint = ok & (best[labels] == rank) & (best[target] == rank)  # non-empty whenever ok is
    moves = partial(_batch_moves, labels=labels, target=target, counts=counts, sq=sq, cx=cx, cc=cc, data=data,
                    gram=gram)
    greedy = _pick(ok, order, _moves_per_round(n))
    delta, fits = moves(greedy)[:2]  # the rest of this call is dead code to XLA
    use_greedy = fits & (delta < -1e-6 * scale)
    picked = jnp.where(use_greedy, greedy, _pick(disjoint, order, _moves_per_round(n)))
    labels, counts, dst, new_cx, new_cc = moves(picked)[2:]
    # XLA updates c·x in place only if every value read from it feeds that update; `moved` and new_cc are read from
    # it but feed other outputs, so without this (always true) condition on them it copies the (n, n) matrix twice
    # a round (10–15 % of a SmolLM2 fold)
    moved = jnp.any(ok)
    dst_cx = jnp.where(moved & ~jnp.isnan(new_cc), dst, n)
    cx, cc = cx.at[dst_cx].set(new_cx, mode="drop"), cc.at[dst].set(new_cc, mode="drop")
    return rounds + 1, moved, labels, counts, cx, cc


@partial(jax.jit, static_argnames=("gram",))
def _prepare(x, *, gram: bool):
    """Centred data for the core (G = Xc Xcᵀ in Gram mode, else Xc), squared row norms, the mean per-feature variance
    (sklearn's tolerance unit) and which rows are finite (checked on the host before the core runs).

    Kept out of ``_core`` so that in Gram mode the core's signature holds only n: for device-resident data this one
    matmul is all that compiles per (n, d); host-resident data takes :func:`_prepare_host` (nothing compiles)."""
    n, d = x.shape
    xc = x - jnp.mean(x, axis=0, keepdims=True)  # centring keeps the optimum and avoids cancellation in ||x||² − 2x·c
    sq = jnp.sum(xc * xc, axis=1)
    var = jnp.sum(sq) / (n * d)
    finite = jnp.min(jnp.isfinite(x).astype(jnp.float32), axis=1) > 0  # not jnp.all: ~5× slower to compile on CPU
    if not gram:
        return xc, sq, var, finite
    g = _dot(xc, xc.T)
    return g, jnp.diagonal(g), var, finite


def _prepare_host(x: np.ndarray):
    """:func:`_prepare` in Gram mode for host-resident data, in numpy: ``x @ x.T`` runs as a BLAS syrk (half the
    flops of the GEMM XLA:CPU emits, ~3× faster here) and nothing compiles per (n, d). Returns None for the data
    when a row is not finite (the caller raises)."""
    n, d = x.shape
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        return None, None, None, finite
    xc = x - x.mean(axis=0, keepdims=True)
    g = np.dot(xc, xc.T)
    sq = np.ascontiguousarray(np.diagonal(g))
    return g, sq, np.float32(sq.sum(dtype=np.float64) / (n * d)), finite


def host_resident(x) -> bool:
    """Whether ``x`` lives in host memory: a numpy (or other non-JAX) array, or a JAX array on CPU devices. A tracer
    (inside jit) has no placement yet, so it is not."""
    if isinstance(x, jax.core.Tracer):
        return False
    return not isinstance(x, jax.Array) or all(device.platform == "cpu" for device in x.devices())


def _canonical(labels: jax.Array) -> jax.Array:
    """Renumber clusters by first appearance (labels[0] == 0), over n slots: any label range below n works."""
    n = labels.shape[0]
    slots = jnp.arange(n, dtype=jnp.int32)
    first = jnp.full(n, n, jnp.int32).at[labels].min(slots)  # unused slots (n) sort last
    rank = jnp.zeros(n, jnp.int32).at[jnp.argsort(first, stable=True)].set(slots)
    return rank[labels]


@partial(jax.jit, static_argnames=("max_iter", "gram"))
def _core(data, sq, var, tol, u, k, trials, *, max_iter: int, gram: bool):
    """Canonical labels and Lloyd iterations of the best of n_init restarts, refined; ``u`` holds each restart's
    k-means++ draws, (n_init, n, _trials(n)).

    Seeding is vmapped over the restarts (every restart runs exactly k steps, so batching only saves loop
    overhead); Lloyd runs restart after restart (lax.map): a vmapped while loop would run every restart for as many
    steps as the slowest. Only the restart with the lowest Lloyd cost gets Hartigan's refinement: refining all of
    them cost half the time and gave the same inertia on the ResNet18 groups (docs/benchmarks.md).
    k (and its trial count) are traced: one executable serves every k ≤ n, and in Gram mode every d as well."""
    seeds = jax.vmap(lambda draws: _kmeanspp(draws, data, sq, k, trials, gram))(u)
    run = partial(_lloyd, data=data, sq=sq, tol_abs=tol * var, k=k, max_iter=max_iter, gram=gram)
    labels, cost, n_iter = jax.lax.map(run, seeds)
    best = jnp.argmin(cost)
    refined = _hartigan(labels[best], data, sq, jnp.arange(sq.shape[0]) < k, gram)
    return _canonical(refined), n_iter[best]


def host_rng(key) -> np.random.Generator:
    """A numpy generator seeded with a JAX key's bits (typed keys of any impl, or raw uint32 keys): host-side
    randomness that is a function of the key, with nothing to compile."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def _uniforms(key: jax.Array, n_init: int, n: int) -> np.ndarray:
    """The k-means++ draws of every restart, (n_init, n, _trials(n)) in [0, 1), from the key on the host: a JAX
    generator inside the core would add ~0.8 s of compilation for every group width, for ~10⁴ numbers."""
    return host_rng(key).random((n_init, n, _trials(n)), dtype=np.float32)


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


def _check_shape(x) -> None:
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D (rows, features) matrix, got shape {x.shape}")


def _as_matrix(x) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    _check_shape(x)
    return x


def _check_finite(finite: np.ndarray) -> None:
    if not finite.all():
        bad = np.flatnonzero(~finite)
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        raise ValueError(f"x has NaN/inf values (as float32) in rows {bad[:10].tolist()}{more}")


def check_k(k: int, n: int) -> None:
    """Any clustering of n rows into k clusters needs 1 <= k <= n."""
    if not 1 <= k <= n:
        raise ValueError(f"k must satisfy 1 <= k <= n (number of rows = {n}), got k={k}")


def _cluster(x, k: int, key: jax.Array, n_init: int, max_iter: int, tol: float, gram: bool | None):
    """Validate, then run the restarts; returns (x as float32, canonical labels, n_iter)."""
    use_gram = _use_gram(gram)
    if use_gram and host_resident(x):
        x = np.asarray(x, np.float32)
        _check_shape(x)
        data, sq, var, finite = _prepare_host(x)
    else:
        x = _as_matrix(x)
        data, sq, var, finite = _prepare(x, gram=use_gram)
    n = x.shape[0]
    _check_finite(np.asarray(finite))
    k, n_init, max_iter = operator.index(k), operator.index(n_init), operator.index(max_iter)
    check_k(k, n)
    if n_init < 1:
        raise ValueError(f"n_init must be >= 1, got {n_init}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    # k and its trial count go in as traced values: a new k (another folding ratio) compiles nothing
    labels, n_iter = _core(data, sq, var, np.float32(tol), _uniforms(key, n_init, n), np.int32(k),
                           np.int32(_trials(k)), max_iter=max_iter, gram=use_gram)
    return x, labels, n_iter


def kmeans(x, k: int, *, key: jax.Array, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4,
           gram: bool | None = None) -> KMeansResult:
    """Cluster the rows of ``x`` (n, d) into k clusters; best of ``n_init`` greedy-k-means++/Lloyd restarts.

    ``gram``: True or None runs on G = X Xᵀ (the fast path), False on x directly (same results; kept for checking).
    Same key, inputs, machine type and jax/XLA build → bit-identical labels; across CPU types XLA may sum in another
    order, which can flip near-ties (README, "What reproduces exactly"). Call outside ``jit``: the inputs are
    validated on the host.
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
