"""Matched channel correlations (jaxfold.correlations; the paper's Figs. 2/8): duplicated channels match each other
at correlation 1, the measurement does not depend on the channels' order, constant channels are left out."""

import jax
import numpy as np
import pytest

from jaxfold import models
from jaxfold.correlations import _combine, correlation_matrix, greedy_matching, matched_correlations
from jaxfold.merge import duplicate_channels, permute_group
from jaxfold.tree import flatten, unflatten


@pytest.fixture(scope="module")
def mlp(random_variables):
    cfg = models.build("mlp", in_channels=1, num_classes=3, image_size=4, hidden=6, depth=2)
    return cfg, random_variables(cfg, seed=0)


def _batches(n=2, seed=5):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(64, 4, 4, 1)).astype(np.float32) for _ in range(n)]


def test_greedy_matching_takes_the_best_free_pair_first():
    corr = np.array([[1.0, 0.9, 0.8, 0.1, 0.0],
                     [0.9, 1.0, 0.95, 0.2, 0.0],
                     [0.8, 0.95, 1.0, 0.3, 0.0],
                     [0.1, 0.2, 0.3, 1.0, 0.5],
                     [0.0, 0.0, 0.0, 0.5, 1.0]])
    pairs, values = greedy_matching(corr)  # (1,2) first; 0's best free partner is then 3 (0.1) not 4 (0.0)
    assert pairs.tolist() == [[1, 2], [3, 4]] and values.tolist() == [0.95, 0.5]  # odd count: 0 unmatched
    pairs, values = greedy_matching(corr, live=np.array([True, True, False, True, True]))
    assert pairs.tolist() == [[0, 1], [3, 4]] and values.tolist() == [0.9, 0.5]
    with pytest.raises(ValueError):
        greedy_matching(np.zeros((3, 2)))


def test_correlation_matrix_is_pearson_and_flags_constants():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4))
    x[:, 3] = 2.0  # constant
    corr, live = correlation_matrix(np.cov(x.T))
    assert live.tolist() == [True, True, True, False]
    np.testing.assert_allclose(corr[:3, :3], np.corrcoef(x[:, :3].T), atol=1e-10)
    assert np.all(corr[3] == 0) and np.all(corr[:, 3] == 0)
    parts = [(len(c), c.mean(0), (c - c.mean(0)).T @ (c - c.mean(0))) for c in (x[:200], x[200:])]
    n, mean, m2 = _combine(*parts)  # batches joined: the whole set's moments
    assert n == 500
    np.testing.assert_allclose(mean, x.mean(0), atol=1e-12)
    np.testing.assert_allclose(m2 / (n - 1), np.cov(x.T), atol=1e-12)


def test_duplicated_channels_match_at_correlation_one(mlp):
    cfg, variables = mlp
    spec = cfg.fold_spec()
    wide = duplicate_channels(variables, spec.group("hidden0"), np.array([0, 1, 2, 3, 4, 5, 4, 0, 2]))
    wide_cfg = cfg.with_widths(spec.widths(wide))
    rows = matched_correlations(wide_cfg, wide, _batches())
    assert [r["layer"] for r in rows] == ["bn0", "bn1"] and [r["channels"] for r in rows] == [9, 6]
    first = rows[0]
    assert sorted(map(sorted, first["pairs"][:3].tolist())) == [[0, 7], [2, 8], [4, 6]]
    np.testing.assert_allclose(first["correlations"][:3], 1.0, atol=1e-5)
    assert first["correlations"][3] < 0.999 and first["constant"] == 0 and len(first["pairs"]) == 4
    assert first["mean"] == pytest.approx(first["correlations"].mean())


def test_invariant_under_channel_permutation(mlp):
    cfg, variables = mlp
    spec = cfg.fold_spec()
    perm = np.random.default_rng(3).permutation(6)
    permuted = permute_group(variables, spec.group("hidden0"), perm)
    base, moved = (matched_correlations(cfg, v, _batches()) for v in (variables, permuted))
    for a, b in zip(base, moved, strict=True):
        np.testing.assert_allclose(b["correlations"], a["correlations"], atol=1e-5)
    # the permuted model's channel j is the original's perm[j]: the same pairs, renamed
    renamed = sorted(sorted(p) for p in perm[moved[0]["pairs"]].tolist())
    assert renamed == sorted(sorted(p) for p in base[0]["pairs"].tolist())


def test_constant_channel_left_out_and_relu(mlp):
    cfg, variables = mlp
    flat = flatten(variables)
    scale = np.asarray(flat["params/bn1/scale"]).copy()
    scale[2] = 0.0  # channel 2 of bn1 outputs its bias alone
    flat["params/bn1/scale"] = scale
    dead = unflatten(flat)
    rows = matched_correlations(cfg, dead, _batches(1))
    assert rows[1]["constant"] == 1 and 2 not in rows[1]["pairs"] and len(rows[1]["pairs"]) == 2
    relu = matched_correlations(cfg, variables, _batches(1), nonlinearity=jax.nn.relu)
    assert all(np.all(np.abs(r["correlations"]) <= 1.0) for r in relu)
    assert all(np.all(np.diff(r["correlations"]) <= 1e-12) for r in relu)  # best first


def test_conv_maps_count_every_position_and_no_data_is_an_error(random_variables):
    from jaxfold.errors import UserError

    cfg = models.build("lenet5", width=0.5, image_size=28)
    variables = random_variables(cfg)
    rows = matched_correlations(cfg, variables, [np.random.default_rng(0).normal(size=(4, 28, 28, 1))])
    assert [r["channels"] for r in rows] == [3, 8, 60, 42]
    assert all(len(r["pairs"]) == (r["channels"] - r["constant"]) // 2 for r in rows)
    with pytest.raises(UserError, match="no data"):
        matched_correlations(cfg, variables, [])
