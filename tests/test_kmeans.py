"""k-means: as good as sklearn's, deterministic, canonical labels, never NaN on degenerate data, Gram == direct."""

import logging

import jax
import numpy as np
import pytest

from jaxfold.kmeans import (
    KMeansResult,
    _argmin_slots,
    _core,
    _finish,
    _prepare,
    _reseed_empty,
    _trials,
    _use_gram,
    inertia,
    kmeans,
)

KEY = jax.random.key(0)


def _blobs(n, d, centers, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 10.0, (centers, d))
    return (means[rng.integers(0, centers, n)] + rng.normal(0.0, 1.0, (n, d))).astype(np.float32)


def _gaussian(n=120, d=10, seed=1):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _check(x, r, k):
    labels, centroids = np.asarray(r.labels), np.asarray(r.centroids)
    assert isinstance(r, KMeansResult)
    assert labels.dtype == np.int32 and labels.shape == (x.shape[0],)
    assert centroids.dtype == np.float32 and centroids.shape == (k, x.shape[1])
    assert r.inertia.shape == () and r.n_iter.shape == () and int(r.n_iter) >= 1
    assert labels.min() >= 0 and labels.max() < k
    assert np.all(np.isfinite(centroids)) and np.isfinite(float(r.inertia))
    # canonical: clusters numbered by first appearance
    _, first = np.unique(labels, return_index=True)
    assert labels[0] == 0 and np.all(np.diff(labels[np.sort(first)]) == 1)
    return labels, centroids


@pytest.mark.parametrize(("x", "k"), [(_blobs(200, 16, 8), 8), (_blobs(64, 300, 20), 20), (_blobs(128, 40, 30), 100),
                                      (_gaussian(), 10)], ids=["200x16k8", "64x300k20", "128x40k100", "gaussian"])
def test_inertia_matches_sklearn(x, k):
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    r = kmeans(x, k, key=KEY)
    labels, centroids = _check(x, r, k)
    # as good as sklearn: means over 10 seeds on both sides. One seed is a lottery on data without clear clusters:
    # on the gaussian case about half of all keys, before and after k became traced, land above 1.01 × sklearn's
    # random_state=0 (both sides' restarts have the same inertia distribution, 722 ± 14 there).
    ours = np.mean([float(kmeans(x, k, key=jax.random.key(s)).inertia) for s in range(10)])
    ref = np.mean([sklearn_cluster.KMeans(n_clusters=k, n_init=10, random_state=s).fit(x.astype(np.float64)).inertia_
                   for s in range(10)])
    assert ours <= 1.01 * ref
    # the reported inertia is the cost of the returned labels, and the centroids are their cluster means
    np.testing.assert_allclose(float(inertia(x, labels)), float(r.inertia), rtol=1e-6)
    direct = sum(np.sum((x[labels == j] - x[labels == j].mean(0)) ** 2, dtype=np.float64) for j in range(k))
    np.testing.assert_allclose(float(r.inertia), direct, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(centroids, [x[labels == j].mean(0) for j in range(k)], rtol=1e-4, atol=1e-4)


def test_deterministic():
    x = _gaussian()
    a, b = kmeans(x, 10, key=KEY), kmeans(x, 10, key=jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(a.labels), np.asarray(b.labels))
    np.testing.assert_array_equal(np.asarray(a.centroids), np.asarray(b.centroids))
    assert float(a.inertia) == float(b.inertia)
    # a single restart depends on its key; legacy uint32 keys are accepted too
    runs = {tuple(np.asarray(kmeans(x, 10, key=jax.random.PRNGKey(s), n_init=1).labels)) for s in range(4)}
    assert len(runs) > 1


def test_k1_and_kn():
    x = _gaussian(20, 6)
    r = kmeans(x, 1, key=KEY)
    _check(x, r, 1)
    assert np.all(np.asarray(r.labels) == 0)
    np.testing.assert_allclose(np.asarray(r.centroids)[0], x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(r.inertia), np.sum((x - x.mean(0)) ** 2), rtol=1e-5)
    r = kmeans(x, 20, key=KEY)
    labels, centroids = _check(x, r, 20)
    np.testing.assert_array_equal(labels, np.arange(20))  # each row its own cluster, canonical = identity
    np.testing.assert_allclose(centroids, x, atol=1e-5)
    assert float(r.inertia) == 0.0


@pytest.mark.parametrize("gram", [False, True])
def test_duplicates_zeros_and_k_above_distinct(gram):
    rng = np.random.default_rng(0)
    base = np.concatenate([np.zeros((1, 7)), rng.standard_normal((4, 7))]).astype(np.float32)  # one all-zero row
    pick = rng.integers(0, 5, 40)
    pick[:5] = np.arange(5)
    x = base[pick]
    scale = float(np.sum(x**2))
    r = kmeans(x, 5, key=KEY, gram=gram)  # k = number of distinct rows: exact duplicates share a cluster
    labels, _ = _check(x, r, 5)
    np.testing.assert_array_equal(labels, pick)  # rows 0..4 are the distinct ones, in order
    assert abs(float(r.inertia)) <= 1e-6 * scale
    r = kmeans(x, 9, key=KEY, gram=gram)  # k > distinct rows: duplicates get split, all k clusters used
    labels, _ = _check(x, r, 9)
    assert len(np.unique(labels)) == 9
    assert abs(float(r.inertia)) <= 1e-6 * scale
    r = kmeans(np.zeros_like(x), 9, key=KEY, gram=gram)  # all zero: nothing to separate, still no NaN
    labels, centroids = _check(x, r, 9)
    assert len(np.unique(labels)) == 9 and float(r.inertia) == 0.0 and np.all(centroids == 0)


def test_argmin_slots_equals_argmin_with_ties_and_inf_columns():
    """The two-reduction argmin picks the first slot at the minimum, as jnp.argmin does, also for tied values and
    for columns that are +inf throughout (a row with no other live cluster)."""
    rng = np.random.default_rng(0)
    d = rng.integers(0, 4, (37, 23)).astype(np.float32)  # many ties
    d[:, 3] = np.inf
    d[5:, 7] = np.inf
    d[:, 11] = d[20, 11] = -1.0
    np.testing.assert_array_equal(np.asarray(jax.jit(_argmin_slots)(d)), np.argmin(d, axis=0))


def test_reseed_empty_moves_farthest_movable_rows():
    labels = jax.numpy.array([0, 0, 0, 1, 1, 0], jax.numpy.int32)  # clusters 2 and 3 empty
    dmin = jax.numpy.array([5.0, 0.5, 9.0, 7.0, 1.0, 3.0])
    out = np.asarray(_reseed_empty(labels, dmin, 4))
    # the two farthest rows (2, then 3) move; row 4 is cluster 1's closest row so cluster 1 is never emptied; slots
    # 4 and 5 (capacity n = 6) are beyond k = 4: dead, never re-seeded
    np.testing.assert_array_equal(out, [0, 0, 2, 3, 1, 0])
    # only one row per cluster: the remaining movable rows are still distinct and no donor empties
    out = np.asarray(_reseed_empty(jax.numpy.array([0, 0, 0, 0], jax.numpy.int32), jax.numpy.zeros(4), 4))
    assert sorted(out.tolist()) == [0, 1, 2, 3]


def test_empty_clusters_reseeded_in_loop():
    # 60 copies of one row plus 3 far-apart rows (4 distinct). With k = 6 the seeds must coincide, so the very first
    # assignment leaves clusters empty: max_iter=1 shows the re-seeding happens inside the loop.
    rng = np.random.default_rng(3)
    x = np.concatenate([np.repeat(rng.standard_normal((1, 5)), 60, 0), 50 * rng.standard_normal((3, 5))])
    x = x.astype(np.float32)
    r = kmeans(x, 6, key=KEY, n_init=1, max_iter=1)
    labels, _ = _check(x, r, 6)
    assert len(np.unique(labels)) == 6 and int(r.n_iter) == 1
    # with distinct rows ≥ k the duplicates stay together and the optimum (cost 0) is found
    r = kmeans(x, 4, key=KEY, n_init=3)
    labels, _ = _check(x, r, 4)
    np.testing.assert_array_equal(labels, [0] * 60 + [1, 2, 3])
    assert float(r.inertia) <= 1e-6 * float(np.sum(x**2))


def test_gram_matches_direct():
    x = _blobs(32, 20000, 6, seed=2) + _gaussian(32, 20000, seed=3) * 3  # d ≫ n, overlapping clusters
    assert _use_gram(None) and _use_gram(True) and not _use_gram(False)
    direct, gram, auto = (kmeans(x, 6, key=KEY, gram=g) for g in (False, True, None))
    np.testing.assert_array_equal(np.asarray(direct.labels), np.asarray(gram.labels))
    np.testing.assert_array_equal(np.asarray(auto.labels), np.asarray(gram.labels))
    np.testing.assert_allclose(float(gram.inertia), float(direct.inertia), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(gram.centroids), np.asarray(direct.centroids), rtol=1e-5, atol=1e-5)
    assert int(gram.n_iter) == int(direct.n_iter)


def test_bad_inputs():
    x = _gaussian(10, 3)
    with pytest.raises(ValueError, match="2-D"):
        kmeans(x[None], 2, key=KEY)
    bad = x.copy()
    bad[3, 1], bad[7, 0] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"rows \[3, 7\]"):
        kmeans(bad, 2, key=KEY)
    for k in (0, 11):
        with pytest.raises(ValueError, match="1 <= k <= n"):
            kmeans(x, k, key=KEY)
    with pytest.raises(ValueError, match="n_init"):
        kmeans(x, 2, key=KEY, n_init=0)


def test_one_core_executable_for_every_k(caplog):
    """Folding calls kmeans per layer group and again at every ratio: k is traced, so a new k compiles nothing at all,
    and in Gram mode the core only sees G (n × n), so another feature count reuses it too."""
    x = _gaussian(48, 7, seed=5)  # shapes that no other test uses
    kmeans(x, 3, key=KEY, n_init=2)
    sizes = _core._cache_size(), _prepare._cache_size(), _finish._cache_size()
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        for k in (5, 7, 48):
            _check(x, kmeans(x, k, key=KEY, n_init=2), k)
    assert (_core._cache_size(), _prepare._cache_size(), _finish._cache_size()) == sizes
    assert not [m for m in caplog.messages if "Finished XLA compilation" in m]

    kmeans(_gaussian(48, 100, seed=6), 4, key=KEY, n_init=2)  # d > n: Gram mode
    core = _core._cache_size()
    for d, k in ((300, 6), (1000, 2)):
        xg = _gaussian(48, d, seed=d)
        _check(xg, kmeans(xg, k, key=KEY, n_init=2), k)
    assert _core._cache_size() == core  # only the cheap _prepare/_finish compiled for the new (n, d)


def test_hartigan_round_updates_statistics_in_place():
    """A Hartigan round rewrites a few rows of the (n, n) matrix c·x; if XLA cannot do that in place it copies the
    matrix every round (twice, found in the compiled program; 10–15 % of a SmolLM2 fold, more at LLaMA-7B sizes). The
    compiled core may hold one (n, n) copy (in the Lloyd step), none in Hartigan's loop."""
    import re

    import jax.numpy as jnp

    n = 40  # a size no other test compiles
    args = (jnp.zeros((n, n)), jnp.zeros(n), jnp.float32(1), jnp.float32(1e-4),
            jnp.zeros((1, n, _trials(n)), jnp.float32), jnp.int32(10), jnp.int32(_trials(10)))
    hlo = _core.lower(*args, max_iter=300, gram=True).compile().as_text()
    copies = re.findall(rf"= f32\[{n},{n}\]\S* copy\(", hlo)
    assert len(copies) <= 1, f"{len(copies)} copies of an (n, n) matrix in the compiled k-means core"


def _best_hartigan_gain(x, labels):
    """Largest cost decrease any single-row move could still achieve (Hartigan's criterion), in float64."""
    x = np.asarray(x, np.float64)
    labels = np.asarray(labels)
    k = labels.max() + 1
    sizes = np.bincount(labels, minlength=k)
    cents = np.stack([x[labels == j].mean(0) for j in range(k)])
    d = ((x[:, None, :] - cents[None]) ** 2).sum(-1)
    best = -np.inf
    for i, a in enumerate(labels):
        if sizes[a] > 1:
            gains = sizes[a] / (sizes[a] - 1) * d[i, a] - sizes / (sizes + 1) * d[i]
            gains[a] = -np.inf
            best = max(best, gains.max())
    return best, float(((x - cents[labels]) ** 2).sum())


@pytest.mark.parametrize(("n", "d", "k"), [(40, 30, 30), (64, 200, 48), (24, 6, 12)])
def test_result_is_hartigan_stable(n, d, k):
    """No single row can move to another cluster and lower the cost: the refinement ran to a Hartigan optimum
    (stronger than Lloyd's fixed point, which k close to n leaves far from it)."""
    x = np.random.default_rng(n).standard_normal((n, d)).astype(np.float32)
    for gram in (False, True):
        labels = kmeans(x, k, key=jax.random.key(0), gram=gram).labels
        gain, cost = _best_hartigan_gain(x, labels)
        assert gain <= 1e-5 * cost / n, (gram, gain)


@pytest.mark.parametrize("gram", [False, True])
def test_batched_moves_exact(gram):
    """A round moves many rows at once, several leaving or entering the same cluster: the cost change and the
    incrementally updated centroid statistics it computes must equal a recomputation from the new labels."""
    import jax.numpy as jnp

    from jaxfold.kmeans import _batch_moves, _stats

    n, d, k = 48, 40 if gram else 12, 10
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, d)).astype(np.float32)
    data, sq, _, _ = _prepare(x, gram=gram)
    labels = jnp.asarray(np.arange(n) % k, jnp.int32)  # 4–5 rows per cluster
    target = jnp.asarray(rng.integers(0, k, n), jnp.int32)
    target = jnp.where(target == labels, (labels + 1) % k, target)
    # rows 0..9 leave clusters 0..9 (row 10 also leaves cluster 0), entering clusters that also lose rows
    picked = jnp.asarray([0, 1, 2, 3, 10, 5, 7, n, n, n, n], jnp.int32)  # n = padding
    counts, cx, cc = _stats(labels, data, gram)
    delta, fits, new_labels, new_counts, dst, rows_cx, rows_cc = _batch_moves(
        picked, labels, target, counts, sq, cx, cc, data, gram)
    new_cx, new_cc = cx.at[dst].set(rows_cx, mode="drop"), cc.at[dst].set(rows_cc, mode="drop")
    expect_labels = np.asarray(labels).copy()
    for i in np.asarray(picked):
        if i < n:
            expect_labels[i] = int(target[i])
    np.testing.assert_array_equal(np.asarray(new_labels), expect_labels)
    assert bool(fits)
    cost = lambda lab: float(inertia(x, lab))
    np.testing.assert_allclose(float(delta), cost(expect_labels) - cost(np.asarray(labels)), rtol=1e-4, atol=1e-4)
    ref_counts, ref_cx, ref_cc = _stats(jnp.asarray(expect_labels), data, gram)
    np.testing.assert_array_equal(np.asarray(new_counts), np.asarray(ref_counts))
    np.testing.assert_allclose(np.asarray(new_cx)[:k], np.asarray(ref_cx)[:k], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(new_cc)[:k], np.asarray(ref_cc)[:k], rtol=1e-4, atol=1e-4)
    # a batch that would empty a cluster is refused
    singleton = jnp.asarray(np.where(np.arange(n) == 0, 0, 1 + np.arange(n) % (k - 1)), jnp.int32)
    counts1, cx1, cc1 = _stats(singleton, data, gram)
    assert not bool(_batch_moves(jnp.asarray([0], jnp.int32), singleton, jnp.full(n, 1, jnp.int32), counts1, sq,
                                 cx1, cc1, data, gram)[1])


def test_same_cluster_sums_scatter_equals_matmul():
    """The CPU (scatter-add) and accelerator (matmul) forms of a batch's per-cluster row sums agree, with parts
    sharing clusters in every pattern and parts off the batch."""
    import jax.numpy as jnp

    from jaxfold.kmeans import _same_cluster_sums_matmul, _same_cluster_sums_scatter

    rng = np.random.default_rng(5)
    m, n = 12, 30
    part = jnp.asarray(rng.integers(0, 5, 2 * m), jnp.int32)  # 24 parts in 5 clusters
    on = jnp.asarray(np.tile(np.arange(m) < 9, 2))  # the last 3 moves are padding
    same = (part[:, None] == part[None, :]) & on[:, None] & on[None, :]
    sign = jnp.concatenate([-jnp.ones(m), jnp.ones(m)])
    gi = jnp.asarray(rng.standard_normal((m, n)), jnp.float32)
    slot = jnp.asarray([min(np.flatnonzero(row)) if row.any() else 2 * m for row in np.asarray(same)])
    a = np.asarray(_same_cluster_sums_scatter(same, slot, sign, gi))[np.asarray(on)]
    b = np.asarray(_same_cluster_sums_matmul(same, slot, sign, gi))[np.asarray(on)]
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    g2, s = np.concatenate([np.asarray(gi)] * 2), np.asarray(sign)
    p0 = int(np.flatnonzero(np.asarray(on))[0])
    expect = sum(s[q] * g2[q] for q in range(2 * m) if bool(same[p0, q]))
    np.testing.assert_allclose(a[0], expect, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("x", "k"), [(_gaussian(80, 12), 57), (_blobs(64, 300, 20), 5)], ids=["80x12k57", "64x300k5"])
def test_accelerator_branches_cluster_like_the_cpu_ones(monkeypatch, x, k):
    """The accelerator forms (one-hot matmuls instead of scatter-adds, the jitted Gram product instead of numpy's),
    which CPU runs never take, give the CPU path's clustering: every `platform_dependent` forced to its default
    branch and the data treated as device-resident."""
    import importlib

    km = importlib.import_module("jaxfold.kmeans")  # the module (the package's `kmeans` is the function)
    cpu = km.kmeans(x, k, key=KEY, n_init=4)

    def default_branch(*args, default, **branches):
        del branches
        return default(*args)

    monkeypatch.setattr(jax.lax, "platform_dependent", default_branch)
    monkeypatch.setattr(km, "host_resident", lambda x: False)
    jax.clear_caches()  # traces are cached per function: re-trace with the default branches ...
    try:
        forced = km.kmeans(x, k, key=KEY, n_init=4)
    finally:
        jax.clear_caches()  # ... and drop them, so no later test runs them on CPU
    np.testing.assert_array_equal(np.asarray(forced.labels), np.asarray(cpu.labels))
    np.testing.assert_allclose(float(forced.inertia), float(cpu.inertia), rtol=1e-5)
