"""The named clusterers of the clustering ablation (the paper's Fig. 3): each returns a partition into exactly k
non-empty clusters, agrees with the others on k = 1 and k = n, recovers well-separated blobs, is deterministic for
a key, folds a widened network with duplicated channels back losslessly, and fails clearly when misused."""

import sys

import jax
import numpy as np
import pytest

from jaxfold import clustering, models
from jaxfold.folding import fold

pytest.importorskip("sklearn")
NAMES = sorted(clustering.CLUSTERERS)


def _blobs(seed=0, centres=5, per=6, d=12):
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(centres), per)
    x = 10.0 * rng.standard_normal((centres, d))[truth] + 0.01 * rng.standard_normal((centres * per, d))
    perm = rng.permutation(len(truth))
    return x[perm].astype(np.float32), truth[perm]


def _same_partition(a, b):
    a, b = np.asarray(a), np.asarray(b)
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("name", NAMES)
def test_partition_into_exactly_k_and_blobs_recovered(name):
    x, truth = _blobs()
    cluster = clustering.get_clusterer(name)
    labels = np.asarray(cluster(x, 5, jax.random.key(0)))
    assert labels.shape == (30,) and _same_partition(labels, truth), labels
    for k in (1, 2, 11, 29, 30):
        labels = np.asarray(cluster(x, k, jax.random.key(1)))
        assert sorted(set(labels.tolist())) == list(range(k)), (k, labels)
    np.testing.assert_array_equal(cluster(x, 30, jax.random.key(2)), np.arange(30))
    with pytest.raises(ValueError, match="1 <= k <= n"):
        cluster(x, 31, jax.random.key(0))


def test_spectral_is_deterministic_for_a_key_and_scale_free():
    x, _ = _blobs(seed=3)
    a = clustering.spectral_clusterer(x, 8, jax.random.key(4))
    np.testing.assert_array_equal(a, clustering.spectral_clusterer(x, 8, jax.random.key(4)))
    # the affinity's width follows the data: scaling every row by 1e4 (or 1e-4) leaves the partition unchanged,
    # where a fixed width (sklearn's default gamma = 1) would see only ones or only the identity
    for scale in (1e-4, 1e4):
        assert _same_partition(a, clustering.spectral_clusterer(x * scale, 8, jax.random.key(4)))
    legacy = clustering.spectral_clusterer(x, 8, jax.random.PRNGKey(4))  # raw uint32 keys work too
    assert sorted(set(np.asarray(legacy).tolist())) == list(range(8))


@pytest.mark.parametrize("name", ["kmeans", "ward", "single", "complete", "average", "spectral"])
def test_duplicated_channels_fold_back_losslessly_with_every_clusterer(name, random_variables, logits,
                                                                      assert_same_function):
    from jaxfold.merge import duplicate_channels

    cfg = models.mlp(in_channels=1, image_size=8, width=0.0625)
    variables = random_variables(cfg)
    spec = cfg.fold_spec()
    widths = spec.widths(variables)
    rng = np.random.default_rng(1)
    wide = variables
    for group in spec.groups:
        n = widths[group.name]
        wide = duplicate_channels(wide, group, np.concatenate([np.arange(n), rng.integers(0, n, n // 2)]))
    wide_cfg = cfg.with_widths(spec.widths(wide))
    back = fold(wide, wide_cfg.fold_spec(), lambda g, n: widths[g], jax.random.key(0), clusterer=name)
    assert back.widths == widths
    assert all(r["inertia"] < 1e-6 * r["n"] for r in back.report["groups"]), back.report["groups"]
    assert_same_function(logits(cfg, back.variables), logits(cfg, variables), f"folded back with {name}")


def test_unknown_name_and_missing_sklearn_are_clear(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown clusterer 'dbscan'; known: \['average', 'complete'"):
        clustering.get_clusterer("dbscan")
    monkeypatch.setitem(sys.modules, "sklearn.cluster", None)  # as if scikit-learn were not installed
    x, _ = _blobs()
    for name in ("ward", "spectral"):
        with pytest.raises(ImportError, match=r"pip install 'jaxfold\[clustering\]'"):
            clustering.get_clusterer(name)(x, 3, jax.random.key(0))
