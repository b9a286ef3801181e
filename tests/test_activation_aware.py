"""Activation-aware folding (act_cluster, act_merge, act_aware, act_select, act_cluster_select): the k = n
identity, lossless folds of duplicated MLP neurons, the input statistics against the model's own intermediates, the
weighted merge (equal weights = the plain merge, concentrated weights pick their channel, energies from the data),
the selected member's exact producers, and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfold import tree
from jaxfold.baselines import prune_model
from jaxfold.compress import correct, fold_model
from jaxfold.corrections.activation_aware import apply_fn, channel_energy, scale_by_input_rms, select_strongest
from jaxfold.errors import UserError
from jaxfold.input_norms import dense_input_stats
from jaxfold.merge import duplicate_channels, merge_rows
from jaxfold.models.lenet import lenet5
from jaxfold.models.llama import llama

CFG = llama(vocab_size=32, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
            max_position_embeddings=64)
SMALL = CFG.replace(intermediate_sizes=(32, 32))
CORRECTIONS = ("act_cluster", "act_merge", "act_aware", "act_select", "act_cluster_select")


@pytest.fixture(scope="module")
def windows():
    rng = np.random.default_rng(0)
    return [rng.integers(0, CFG.vocab_size, (4, 16)).astype(np.int32) for _ in range(2)]


def _mlp_only(k):
    return lambda g, n: k if g.endswith(".mlp") else n


@pytest.mark.parametrize("correction", CORRECTIONS)
def test_k_equals_n_is_the_identity(correction, windows, lm_variables):
    v = lm_variables(CFG)
    out = fold_model(CFG, v, 0.0, jax.random.key(0), correction=correction, data=lambda: windows, n_init=1)
    assert out.config == CFG
    for path, a in tree.flatten(v).items():
        np.testing.assert_array_equal(np.asarray(tree.flatten(out.variables)[path]), a, err_msg=path)


@pytest.mark.parametrize("correction", CORRECTIONS)
def test_duplicated_mlp_neurons_fold_back_losslessly(correction, windows, lm_variables, lm_logits):
    small = lm_variables(SMALL, seed=1)
    wide = small
    spec = SMALL.fold_spec()
    rng = np.random.default_rng(2)
    for i in range(SMALL.num_layers):  # every neuron twice, in a shuffled order
        wide = duplicate_channels(wide, spec.group(f"block{i}.mlp"), rng.permutation(np.tile(np.arange(32), 2)))
    assert SMALL.with_widths({"block0.mlp": 64, "block1.mlp": 64}) == CFG
    np.testing.assert_allclose(lm_logits(CFG, wide, windows[0]), lm_logits(SMALL, small, windows[0]), atol=1e-5)
    out = fold_model(CFG, wide, _mlp_only(32), jax.random.key(0), correction=correction, data=lambda: windows,
                     n_init=1)
    assert out.config == SMALL
    np.testing.assert_allclose(lm_logits(SMALL, out.variables, windows[1]), lm_logits(SMALL, small, windows[1]),
                               atol=1e-5)


def _kernel_modules(spec):
    return {m.path.removeprefix("params/").removesuffix("/kernel") for g in spec.groups for m in g.members}


def test_one_pass_reads_producer_and_consumer_inputs(windows, lm_variables):
    """gate/up see the RMSNorm'd residual, down sees h = silu(gate)·up: checked against flax's intermediates."""
    v = lm_variables(CFG)
    spec = CFG.fold_spec()
    stats = dense_input_stats(apply_fn(CFG), v, _kernel_modules(spec), windows)  # act_cluster's pass
    module = CFG.module()
    capture = jax.jit(lambda v, ids: module.apply(v, ids, capture_intermediates=True, mutable=["intermediates"])[1])
    inter = {"norm": [], "gate": [], "up": []}
    for ids in windows:
        mlp = capture(v, ids)["intermediates"]["block_1"]
        inter["norm"].append(np.asarray(mlp["mlp_norm"]["__call__"][0]).reshape(-1, 32))
        inter["gate"].append(np.asarray(mlp["mlp"]["gate"]["__call__"][0]).reshape(-1, 64))
        inter["up"].append(np.asarray(mlp["mlp"]["up"]["__call__"][0]).reshape(-1, 64))
    x = np.concatenate(inter["norm"])
    h = np.asarray(jax.nn.silu(np.concatenate(inter["gate"]))) * np.concatenate(inter["up"])
    assert stats.rows == dict.fromkeys(stats.energy, 2 * 4 * 16)
    np.testing.assert_allclose(stats.energy["block_1/mlp/gate"], (x**2).sum(0), rtol=1e-4)
    np.testing.assert_allclose(stats.energy["block_1/mlp/up"], (x**2).sum(0), rtol=1e-4)
    np.testing.assert_allclose(stats.energy["block_1/mlp/down"], (h**2).sum(0), rtol=1e-4)
    rms = stats.rms()
    np.testing.assert_allclose(rms["block_1/mlp/down"], np.sqrt((h**2).mean(0)), rtol=1e-4)
    # the clustering copy: input rows scaled, every other leaf unchanged
    scaled = tree.flatten(scale_by_input_rms(v, spec, rms))
    down = v["params"]["block_1"]["mlp"]["down"]["kernel"]
    np.testing.assert_allclose(scaled["params/block_1/mlp/down/kernel"], down * rms["block_1/mlp/down"][:, None],
                               rtol=1e-5)
    np.testing.assert_array_equal(scaled["params/embed/embedding"], v["params"]["embed"]["embedding"])


@pytest.mark.parametrize("xp", [np, jnp])
def test_weighted_merge(xp):
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(6, 3, 2)).astype(np.float32)
    labels = np.array([0, 1, 0, 2, 1, 0])
    r, lab = xp.asarray(rows), xp.asarray(labels)
    merge = merge_rows if xp is np else jax.jit(merge_rows, static_argnums=(2, 3))  # one compilation per role
    for role in ("producer", "consumer"):  # equal weights: the plain merge (consumers are always summed)
        np.testing.assert_allclose(np.asarray(merge(r, lab, 3, role, xp.full(6, 2.5))),
                                   np.asarray(merge(r, lab, 3, role)), rtol=1e-6, atol=1e-7)
    w = np.array([0.0, 1e-3, 5e4, 1.0, 0.0, 0.0])  # cluster 0 → channel 2; 1 → channel 1; 2 alone
    merged = np.asarray(merge(r, lab, 3, "producer", xp.asarray(w)))
    np.testing.assert_allclose(merged, rows[[2, 1, 3]], rtol=1e-6)
    w = np.array([1.0, 0.0, 3.0, 0.0, 0.0, 0.0])  # cluster 0: (r0 + 3·r2)/4; cluster 1 has no weight: plain mean
    merged = np.asarray(merge(r, lab, 3, "producer", xp.asarray(w)))
    np.testing.assert_allclose(merged[0], (rows[0] + 3 * rows[2]) / 4, rtol=1e-5)
    np.testing.assert_allclose(merged[1], (rows[1] + rows[4]) / 2, rtol=1e-6)


def test_act_merge_weights_producers_by_activation_energy(windows, lm_variables):
    v = lm_variables(CFG)
    plain = fold_model(CFG, v, _mlp_only(32), jax.random.key(3), correction="none", n_init=1)
    out = fold_model(CFG, v, _mlp_only(32), jax.random.key(3), correction="act_merge", data=lambda: windows,
                     n_init=1)
    lab = out.labels["block0.mlp"]
    np.testing.assert_array_equal(lab, plain.labels["block0.mlp"])  # weight-only clusters
    spec = CFG.fold_spec()
    energy = dense_input_stats(apply_fn(CFG), v, _kernel_modules(spec), windows).energy
    w = channel_energy(spec, spec.widths(v), energy)["block0.mlp"]
    gate, down = v["params"]["block_0"]["mlp"]["gate"]["kernel"], v["params"]["block_0"]["mlp"]["down"]["kernel"]
    p = out.variables["params"]["block_0"]["mlp"]
    c = int(np.argmax(np.bincount(lab)))  # the largest cluster
    members = lab == c
    np.testing.assert_allclose(p["gate"]["kernel"][:, c], gate[:, members] @ w[members] / w[members].sum(), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(p["down"]["kernel"][c], down[members].sum(0), rtol=1e-5, atol=1e-6)
    assert out.report["calibration_rows"] == 2 * 4 * 16


def test_select_strongest_marks_one_member_per_cluster():
    labels = np.array([2, 0, 2, 1, 0, 2])
    np.testing.assert_array_equal(select_strongest(labels, [5.0, 1.0, 9.0, 0.0, 3.0, 9.0]), [0, 0, 1, 1, 1, 0])


def test_act_select_keeps_the_strongest_member_of_each_cluster(windows, lm_variables):
    v = lm_variables(CFG)
    out = fold_model(CFG, v, _mlp_only(32), jax.random.key(3), correction="act_select", data=lambda: windows,
                     n_init=1)
    plain = fold_model(CFG, v, _mlp_only(32), jax.random.key(3), correction="none", n_init=1)
    lab = out.labels["block0.mlp"]
    np.testing.assert_array_equal(lab, plain.labels["block0.mlp"])  # weight-only clusters
    spec = CFG.fold_spec()
    energy = dense_input_stats(apply_fn(CFG), v, _kernel_modules(spec), windows).energy
    w = channel_energy(spec, spec.widths(v), energy)["block0.mlp"]
    mlp, p = v["params"]["block_0"]["mlp"], out.variables["params"]["block_0"]["mlp"]
    for c in range(32):
        members = np.flatnonzero(lab == c)
        strongest = members[np.argmax(w[members])]
        for name in ("gate", "up"):  # a real neuron's producers, exactly
            np.testing.assert_array_equal(p[name]["kernel"][:, c], mlp[name]["kernel"][:, strongest])
        np.testing.assert_allclose(p["down"]["kernel"][c], mlp["down"]["kernel"][members].sum(0), rtol=1e-5,
                                   atol=1e-6)


def test_errors(windows, lm_variables):
    v = lm_variables(CFG)
    data = lambda: windows
    with pytest.raises(UserError, match="needs training data"):
        fold_model(CFG, v, 0.5, jax.random.key(0), correction="act_aware", n_init=1)
    with pytest.raises(UserError, match="no calibration batches"):
        fold_model(CFG, v, 0.5, jax.random.key(0), correction="act_cluster", data=lambda: [], n_init=1)
    with pytest.raises(UserError, match="int token windows"):
        fold_model(CFG, v, 0.5, jax.random.key(0), correction="act_cluster", n_init=1,
                   data=lambda: [np.zeros((2, 8), np.float32)])
    with pytest.raises(UserError, match=r"token ids must be in \[0, 32\)"):
        fold_model(CFG, v, 0.5, jax.random.key(0), correction="act_cluster", n_init=1,
                   data=lambda: [np.full((2, 8), 32, np.int32)])
    with pytest.raises(UserError, match="takes no options"):
        fold_model(CFG, v, 0.5, jax.random.key(0), correction="act_aware", data=data, n_init=1,
                   correction_options={"alpha": 1.0})
    pruned = prune_model(CFG, v, 0.5)  # fold-only: a pruned model has no clusters
    for name in ("act_merge", "act_select"):
        with pytest.raises(UserError, match="corrects a fold"):
            correct(CFG, v, pruned, name, data=data)
    for name in ("act_cluster", "act_aware", "act_cluster_select"):
        with pytest.raises(ValueError, match="changes what is clustered"):
            correct(CFG, v, pruned, name, data=data)
    conv = lenet5(width=0.25)  # convolutional consumers
    cv = lm_variables(conv)
    images = [np.zeros((2, 28, 28, 1), np.float32)]
    with pytest.raises(UserError, match="no Dense call seen"):
        fold_model(conv, cv, 0.5, jax.random.key(0), correction="act_cluster", data=lambda: images, n_init=1)
