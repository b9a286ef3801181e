"""Variance corrections: Fold-AR's factor and BN fusion, REPAIR's statistics, the registry, the variance-ratio
diagnostic."""

import re
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxfold import models, tree
from jaxfold.batch_stats import batchnorm_epsilons
from jaxfold.compress import fold_model
from jaxfold.corrections import CORRECTIONS, get_correction
from jaxfold.corrections.fold_ar import cluster_factors, fuse_batchnorm
from jaxfold.corrections.layers import capture, channel_moments
from jaxfold.corrections.repair import recompute_bn_statistics
from jaxfold.diagnostics import variance_ratios

RESNET = models.resnet18(in_channels=1, width=0.125, image_size=16)
MLP = models.mlp(in_channels=1, image_size=8, width=0.0625)  # 3 × 32 hidden units, BN
VGG = models.vgg11_bn(in_channels=1, width=0.0625, image_size=16)  # BN convs + BN-free hidden classifier


def _logits(cfg, v, x):
    return np.asarray(cfg.module().apply(v, x, train=False))


def _x(cfg, n=64, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *cfg.input_shape)).astype(np.float32)


# --- Fold-AR ---------------------------------------------------------------------------------------------------
def test_fold_ar_factor_singletons_identical_and_orthogonal_rows():
    rng = np.random.default_rng(0)
    row = rng.normal(size=16)
    eye = np.eye(16)
    rows = np.stack([row, 2 * row, 0.5 * row, eye[0], eye[1], eye[2], eye[3], rng.normal(size=16)])
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 2])
    f = cluster_factors(rows, labels, 3)
    np.testing.assert_allclose(f, [1.0, 2.0, 1.0], rtol=1e-12)  # identical directions, 4 orthogonal rows, singleton
    # anti-correlated pair: 1 + (2 − 1)·(−1) = 0 is clamped, not divided by
    assert np.isfinite(cluster_factors(np.stack([row, -row]), np.array([0, 0]), 1)).all()


@pytest.mark.parametrize("cfg", [RESNET, VGG, MLP], ids=["resnet", "vgg", "mlp"])
def test_fuse_batchnorm_keeps_the_function(cfg, random_variables):
    v = random_variables(cfg)
    x = _x(cfg, 8)
    eps = batchnorm_epsilons(cfg.module(), v, cfg.input_shape)
    assert set(eps) == {bn for _, bn in cfg.fold_spec().norms} and set(eps.values()) == {1e-5}
    np.testing.assert_allclose(_logits(cfg, fuse_batchnorm(v, cfg.fold_spec(), eps), x), _logits(cfg, v, x),
                               rtol=1e-4, atol=1e-4)


def test_fold_ar_at_k_equals_n_is_the_identity_and_input_untouched(random_variables):
    v = random_variables(RESNET)
    before = jax.tree.map(np.array, v)
    out = fold_model(RESNET, v, 0.0, jax.random.key(0), correction="fold_ar")
    x = _x(RESNET, 4)
    np.testing.assert_allclose(_logits(out.config, out.variables, x), _logits(RESNET, v, x), rtol=1e-4, atol=1e-4)
    jax.tree.map(np.testing.assert_array_equal, v, before)


def test_fold_ar_restores_unit_variance_for_uncorrelated_inputs(random_variables):
    """The factor is exact when the layer's inputs are uncorrelated: the first MLP layer fed white noise."""
    v = random_variables(MLP)
    v["params"]["bn0"]["scale"] = np.ones_like(v["params"]["bn0"]["scale"])  # else the ratio is (mean γ)²/γ_i²
    x = _x(MLP, 4096, seed=1)
    v = recompute_bn_statistics(MLP, v, lambda: [x])  # BN stats of this input distribution: outputs have var 1
    first = {"hidden0": 0.5, "hidden1": 0.0, "hidden2": 0.0}
    ratios = {c: variance_ratios(MLP, v, m.config, m.variables, m.labels, x)[0]["ratio"]
              for c in ("none", "fold_ar")
              for m in [fold_model(MLP, v, first, jax.random.key(0), correction=c)]}
    assert ratios["none"] < 0.8
    assert abs(ratios["fold_ar"] - 1.0) < 0.05, ratios


def test_fold_ar_clusters_the_raw_weights_and_fold_ar_fused_the_fused_ones(random_variables):
    v = random_variables(RESNET)
    naive = fold_model(RESNET, v, 0.5, jax.random.key(3))
    ar = fold_model(RESNET, v, 0.5, jax.random.key(3), correction="fold_ar")
    fused = fold_model(RESNET, v, 0.5, jax.random.key(3), correction="fold_ar_fused")
    for g in naive.labels:
        np.testing.assert_array_equal(ar.labels[g], naive.labels[g])
    assert any(not np.array_equal(fused.labels[g], naive.labels[g]) for g in naive.labels)
    # same clusters, different merge: Fold-AR changed the BN scales
    assert not np.allclose(ar.variables["params"]["bn1"]["scale"], naive.variables["params"]["bn1"]["scale"])


# --- REPAIR -----------------------------------------------------------------------------------------------------
def test_recompute_bn_statistics_is_a_cumulative_average_of_batch_statistics(random_variables):
    v = random_variables(MLP)
    a, b = _x(MLP, 32, seed=2), 3.0 + 2.0 * _x(MLP, 32, seed=3)
    both = recompute_bn_statistics(MLP, v, lambda: [a, b])
    one_a = recompute_bn_statistics(MLP, v, lambda: [a])
    one_b = recompute_bn_statistics(MLP, v, lambda: [b])
    for path in ("bn0/mean", "bn0/var"):
        np.testing.assert_allclose(tree.get(both["batch_stats"], path),
                                   (tree.get(one_a["batch_stats"], path) + tree.get(one_b["batch_stats"], path)) / 2,
                                   rtol=1e-5, atol=1e-6)
    # the first BN sees fc0's output directly: its statistics are that output's moments
    pre = capture(MLP.module(), v, a, ["fc0"])["fc0"]
    mean, var = channel_moments(pre)
    np.testing.assert_allclose(one_a["batch_stats"]["bn0"]["mean"], mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(one_a["batch_stats"]["bn0"]["var"], var, rtol=1e-4, atol=1e-6)


def test_repair_restores_the_original_statistics_when_k_equals_n(random_variables):
    v = random_variables(RESNET)
    x = _x(RESNET, 64)
    data = lambda: [x[:32], x[32:]]
    v = recompute_bn_statistics(RESNET, v, data)  # the "trained" statistics of this data
    out = fold_model(RESNET, v, 0.0, jax.random.key(0), correction="repair", data=data)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 out.variables["batch_stats"], v["batch_stats"])


def test_repair_matches_bn_free_layers_to_the_cluster_average_of_the_original(random_variables):
    v = random_variables(VGG)
    x = _x(VGG, 256)
    v = recompute_bn_statistics(VGG, v, lambda: [x])
    out = fold_model(VGG, v, 0.5, jax.random.key(0), correction="repair", data=lambda: [x])
    orig = np.stack(channel_moments(capture(VGG.module(), v, x, ["classifier_0"])["classifier_0"]))
    new = np.stack(channel_moments(capture(out.config.module(), out.variables, x, ["classifier_0"])["classifier_0"]))
    labels = out.labels["fc0"]
    for c in range(new.shape[1]):
        members = labels == c
        np.testing.assert_allclose(new[0, c], orig[0, members].mean(), rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(np.sqrt(new[1, c]), np.sqrt(orig[1, members]).mean(), rtol=1e-3, atol=1e-3)


def test_repair_without_data_is_a_clear_error(random_variables):
    v = random_variables(MLP)
    with pytest.raises(ValueError, match="needs training data"):
        fold_model(MLP, v, 0.5, jax.random.key(0), correction="repair")


# --- registry ---------------------------------------------------------------------------------------------------
def test_unknown_correction_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown correction 'fold_xx'.*fold_ar.*none.*repair"):
        get_correction("fold_xx")
    assert {"none", "repair", "fold_ar", "fold_ar_fused", "fold_dir"} <= set(CORRECTIONS)


def test_fold_ar_refuses_a_network_without_batchnorm():
    cfg = models.lenet5()
    with pytest.raises(ValueError, match="fold_ar needs BatchNorm"):
        fold_model(cfg, cfg.init(jax.random.key(0)), 0.5, jax.random.key(0), correction="fold_ar")


def test_user_correction_from_the_docs_runs(random_variables):
    """The example in docs/corrections.md registers a correction from user code; it must run as written."""
    text = (Path(__file__).parents[1] / "docs" / "corrections.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert len(code.strip().splitlines()) <= 30
    namespace: dict = {}
    try:
        exec(compile(code, "docs/corrections.md", "exec"), namespace)
        v = random_variables(RESNET)
        out = fold_model(RESNET, v, 0.5, jax.random.key(0), correction="shrink_to_norm")
        assert out.config.stream_widths == (4, 8, 16, 32)
        naive = fold_model(RESNET, v, 0.5, jax.random.key(0))
        assert not np.allclose(out.variables["params"]["bn1"]["scale"], naive.variables["params"]["bn1"]["scale"])
    finally:
        CORRECTIONS.pop("shrink_to_norm", None)


# --- diagnostics ------------------------------------------------------------------------------------------------
def test_variance_ratio_is_one_for_the_identity_and_ordered_forward(random_variables):
    v = random_variables(RESNET)
    out = fold_model(RESNET, v, 0.0, jax.random.key(0))
    rows = variance_ratios(RESNET, v, out.config, out.variables, out.labels, _x(RESNET, 16))
    assert [r["layer"] for r in rows][:3] == ["bn1", "layer1_0/bn1", "layer1_0/bn2"]
    np.testing.assert_allclose([r["ratio"] for r in rows], 1.0, rtol=1e-4)
