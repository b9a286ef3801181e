"""norm_restore (data-free, LLM): the k = n identity, lossless folds of duplicated MLP neurons, merged rows at
their cluster's mean norm, the Fold-AR factor for unit rows, only the named producers touched, clear errors."""

import jax
import numpy as np
import pytest

from jaxfold import tree
from jaxfold.baselines import prune_model
from jaxfold.compress import correct_chain, fold_and_correct, fold_model
from jaxfold.corrections.fold_ar import cluster_factors
from jaxfold.corrections.norm_restore import restore_factors
from jaxfold.errors import UserError
from jaxfold.merge import duplicate_channels
from jaxfold.models.llama import llama

CFG = llama(vocab_size=32, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
            max_position_embeddings=64)
SMALL = CFG.replace(intermediate_sizes=(32, 32))


def _mlp_only(k):
    return lambda g, n: k if g.endswith(".mlp") else n


def test_k_equals_n_is_the_identity(lm_variables):
    v = lm_variables(CFG)
    out = fold_model(CFG, v, 0.0, jax.random.key(0), correction="norm_restore", n_init=1)
    for path, a in tree.flatten(v).items():
        np.testing.assert_array_equal(np.asarray(tree.flatten(out.variables)[path]), a, err_msg=path)


def test_duplicated_mlp_neurons_fold_back_losslessly(lm_variables, lm_logits):
    small = lm_variables(SMALL, seed=1)
    wide = small
    rng = np.random.default_rng(2)
    for i in range(SMALL.num_layers):
        wide = duplicate_channels(wide, SMALL.fold_spec().group(f"block{i}.mlp"),
                                  rng.permutation(np.tile(np.arange(32), 2)))
    out = fold_model(CFG, wide, _mlp_only(32), jax.random.key(0), correction="norm_restore", n_init=1)
    ids = rng.integers(0, 32, (2, 16)).astype(np.int32)
    np.testing.assert_allclose(lm_logits(SMALL, out.variables, ids), lm_logits(SMALL, small, ids), atol=1e-5)


def test_merged_rows_get_their_clusters_mean_norm(lm_variables):
    v = lm_variables(CFG)
    key = jax.random.key(0)
    plain = fold_model(CFG, v, _mlp_only(16), key, n_init=1)
    out = fold_model(CFG, v, _mlp_only(16), key, correction="norm_restore", n_init=1)
    flat, before, orig = tree.flatten(out.variables), tree.flatten(plain.variables), tree.flatten(v)
    lab = np.asarray(out.labels["block0.mlp"])
    sizes = np.bincount(lab, minlength=16)
    assert sizes.max() > 1
    for module in ("gate", "up"):
        path = f"params/block_0/mlp/{module}/kernel"
        norms = np.linalg.norm(np.asarray(flat[path]), axis=0)
        want = np.bincount(lab, weights=np.linalg.norm(orig[path], axis=0), minlength=16) / sizes
        np.testing.assert_allclose(norms, want, rtol=1e-5)
        assert np.all(norms[sizes > 1] > np.linalg.norm(np.asarray(before[path]), axis=0)[sizes > 1])
    # consumers are the fold's own
    down = "params/block_0/mlp/down/kernel"
    np.testing.assert_array_equal(np.asarray(flat[down]), np.asarray(before[down]))
    assert out.report["norm_restore_factor"]["median"] > 1


def test_unit_rows_give_fold_ars_factor():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(12, 8))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    labels = rng.permutation(np.arange(12) % 4)
    merged = np.stack([rows[labels == c].mean(0) for c in range(4)])
    np.testing.assert_allclose(restore_factors(rows, merged, labels), cluster_factors(rows, labels, 4), rtol=1e-10)


def test_only_the_named_producers_change(lm_variables):
    v = lm_variables(CFG)
    key = jax.random.key(0)
    plain = fold_and_correct(CFG, v, _mlp_only(16), key, [], n_init=1)
    out = fold_and_correct(CFG, v, _mlp_only(16), key, ["norm_restore"], n_init=1,
                           options={"norm_restore": {"producers": ["mlp/up"]}})
    flat, before = tree.flatten(out.variables), tree.flatten(plain.variables)
    changed = {p for p in flat if not np.array_equal(np.asarray(flat[p]), np.asarray(before[p]))}
    assert changed == {"params/block_0/mlp/up/kernel", "params/block_1/mlp/up/kernel"}


def test_bad_inputs_are_refused(lm_variables):
    v = lm_variables(CFG)
    key = jax.random.key(0)
    with pytest.raises(UserError, match="no producer of a folded group matches"):
        fold_and_correct(CFG, v, _mlp_only(16), key, ["norm_restore"], n_init=1,
                         options={"norm_restore": {"producers": ["mlp/upp"]}})
    with pytest.raises(UserError, match="list of module names"):
        fold_and_correct(CFG, v, _mlp_only(16), key, ["norm_restore"], n_init=1,
                         options={"norm_restore": {"producers": "mlp/up"}})
    pruned = prune_model(CFG, v, _mlp_only(16))
    with pytest.raises(UserError, match="corrects a fold"):
        correct_chain(CFG, v, pruned, ["norm_restore"])


def test_its_report_keys_are_documented(lm_variables):
    from jaxfold.result import CompressionReport

    out = fold_model(CFG, lm_variables(CFG), _mlp_only(16), jax.random.key(0), correction="norm_restore", n_init=1)
    assert set(out.report) <= set(CompressionReport.__annotations__)
