"""Baselines: structured magnitude pruning removes the weakest channels (zero channels go losslessly, L1 and L2
rank differently, sizes equal folding's) and IFM greedily merges the closest current units (duplicates fold back
losslessly, matches a naive re-implementation, canonical and permutation-invariant labels)."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfold import models, placement, tree
from jaxfold.baselines import BASELINES, ifm, ifm_model, prune, prune_model
from jaxfold.baselines.ifm import consumer_columns, ifm_labels
from jaxfold.baselines.pruning import channel_scores, take_channels
from jaxfold.compress import fold_model
from jaxfold.merge import duplicate_channels, group_features, permute_group
from jaxfold.plans import k_for_ratio

CONFIGS = {
    "resnet18": models.resnet18(in_channels=1, width=0.0625, image_size=16),
    "vgg": models.vgg11_bn(in_channels=1, width=0.0625, image_size=16),
    "mlp": models.mlp(in_channels=1, image_size=8, width=0.03125),
}
_VARIABLES = {}


def _random_variables(name, seed=0):
    """Random weights, BN statistics and perturbed 1-D vectors (as conftest's ``random_variables``), cached."""
    if (name, seed) not in _VARIABLES:
        v = CONFIGS[name].init(jax.random.key(seed))
        rng = np.random.default_rng(seed)
        stats = {p: rng.uniform(0.5, 2.0, np.shape(a)) if p.endswith("var") else rng.normal(0, 0.3, np.shape(a))
                 for p, a in tree.flatten(v["batch_stats"]).items()}
        params = {p: a + rng.normal(0, 0.2, np.shape(a)) if np.ndim(a) == 1 else a
                  for p, a in tree.flatten(v["params"]).items()}
        _VARIABLES[name, seed] = {"params": tree.unflatten({p: jnp.asarray(a, jnp.float32) for p, a in params.items()}),
                                  "batch_stats": tree.unflatten({p: jnp.asarray(a, jnp.float32)
                                                                 for p, a in stats.items()})}
    return _VARIABLES[name, seed]


def _assert_same_arrays(a, b):
    assert tree.compare(a, b) == []
    for path, x in tree.flatten(a).items():
        np.testing.assert_array_equal(np.asarray(x), np.asarray(tree.get(b, path)), err_msg=path)


def _set_channels(variables, group, n, index, fn):
    """Apply ``fn(rows)`` to channels ``index`` of every feature member (producers, vectors, consumers)."""
    flat = tree.flatten(variables)
    for m in group.members:
        if m.in_features:
            a = np.asarray(flat[m.path])
            rows = np.array(m.channel_first(a, n))
            rows[index] = fn(rows[index])
            flat[m.path] = jnp.asarray(m.from_channel_first(rows, a.shape, n))
    return tree.unflatten(flat)


def _set_features(variables, group, n, x):
    """Write a whole feature matrix (n, d) back into the members, in :func:`group_features`' column order."""
    flat, start = tree.flatten(variables), 0
    for m in group.members:
        if m.in_features:
            a = np.asarray(flat[m.path])
            width = a.size // n
            flat[m.path] = jnp.asarray(m.from_channel_first(x[:, start:start + width].astype(a.dtype), a.shape, n))
            start += width
    assert start == x.shape[1]
    return tree.unflatten(flat)


def _permuted(variables, group, perm):
    """permute_group, jitted: one compilation instead of one per eager gather."""
    return jax.jit(lambda v: permute_group(v, group, perm))(variables)


# --- structured magnitude pruning ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
def test_prune_k_equals_n_is_the_identity(name):
    cfg, variables = CONFIGS[name], _random_variables(name)
    result = prune(variables, cfg.fold_spec(), 0.0)
    _assert_same_arrays(variables, result.variables)
    assert all(np.array_equal(m, np.arange(len(m))) for m in result.channel_map.values())
    assert result.report["param_sparsity"] == 0.0


@pytest.mark.parametrize("name", ["mlp", "vgg"])
@pytest.mark.parametrize("norm", [1, 2])
def test_pruning_all_zero_channels_keeps_the_function(name, norm, logits, assert_same_function):
    """Channels with zero producer rows, biases, BN γ/β and consumer columns output exactly 0 (γ = 0 cancels the
    running mean) and feed nothing: removing them leaves the logits unchanged, whatever the BN statistics."""
    cfg, variables = CONFIGS[name], _random_variables(name)
    spec = cfg.fold_spec()
    widths = spec.widths(variables)
    rng = np.random.default_rng(2)
    zeroed = {}
    for group in spec.groups:
        n = widths[group.name]
        zeroed[group.name] = np.sort(rng.choice(n, n // 3 + 1, replace=False))
        variables = _set_channels(variables, group, n, zeroed[group.name], np.zeros_like)
    keep = {g: widths[g] - len(z) for g, z in zeroed.items()}
    if name == "mlp":  # the zeroed neurons really are 0 after BN + ReLU
        _, state = cfg.module().apply(variables, jnp.ones((2, *cfg.input_shape)), train=False,
                                      capture_intermediates=True, mutable=["intermediates"])
        bn0 = np.asarray(state["intermediates"]["bn0"]["__call__"][0])
        alive = np.setdiff1d(np.arange(widths["hidden0"]), zeroed["hidden0"])
        assert np.all(bn0[:, zeroed["hidden0"]] == 0.0) and np.all(bn0[:, alive] != 0.0)
    pruned = prune_model(cfg, variables, lambda g, n: keep[g], norm=norm)
    for g, z in zeroed.items():
        assert np.all(pruned.channel_map[g][z] == -1)
        assert np.array_equal(np.sort(pruned.channel_map[g][pruned.channel_map[g] >= 0]), np.arange(keep[g]))
    assert_same_function(logits(pruned.config, pruned.variables), logits(cfg, variables), name)


def test_l1_and_l2_rank_differently():
    cfg = models.mlp(in_channels=1, image_size=2, width=3 / 512, depth=1)  # 4 inputs → 3 hidden → 10
    variables = cfg.init(jax.random.key(0))
    group = cfg.fold_spec().groups[0]
    d = group_features(tree.flatten(variables), group, 3).shape[1]  # 4 + 1 + 2 (BN) + 10 = 17
    spread, spike = np.ones(d), np.zeros(d)  # L1 17 / L2 4.1  vs  L1 10 / L2 10
    spike[0] = 10.0
    rows = np.stack([np.full(d, 0.1), spread, spike])
    variables = _set_features(variables, group, 3, rows)
    l1, l2 = prune_model(cfg, variables, 0.5, norm=1), prune_model(cfg, variables, 0.5, norm=2)  # k = 1
    assert l1.channel_map["hidden0"].tolist() == [-1, 0, -1]
    assert l2.channel_map["hidden0"].tolist() == [-1, -1, 0]
    assert l1.report["method"] == "sp_l1" and l2.report["method"] == "sp_l2"


def test_prune_keeps_the_largest_rows_in_order_and_only_gathers():
    cfg, variables = CONFIGS["mlp"], _random_variables("mlp")
    spec = cfg.fold_spec()
    before = copy.deepcopy(jax.tree.map(np.asarray, variables))
    result = prune(variables, spec, {"hidden1": 0.5}, norm=2)
    _assert_same_arrays(before, variables)  # input untouched
    x = np.asarray(group_features(tree.flatten(variables), spec.group("hidden1"), 16), np.float64)
    keep = np.sort(np.argsort(-np.linalg.norm(x, axis=1), kind="stable")[:8])
    cmap = result.channel_map["hidden1"]
    assert np.array_equal(np.flatnonzero(cmap >= 0), keep) and np.array_equal(cmap[keep], np.arange(8))
    p, q = variables["params"], result.variables["params"]
    np.testing.assert_array_equal(q["fc1"]["kernel"], np.asarray(p["fc1"]["kernel"])[:, keep])
    np.testing.assert_array_equal(q["bn1"]["scale"], np.asarray(p["bn1"]["scale"])[keep])
    np.testing.assert_array_equal(q["fc2"]["kernel"], np.asarray(p["fc2"]["kernel"])[keep])  # not summed
    np.testing.assert_array_equal(result.variables["batch_stats"]["bn1"]["var"],
                                  np.asarray(variables["batch_stats"]["bn1"]["var"])[keep])
    np.testing.assert_array_equal(q["fc0"]["kernel"], p["fc0"]["kernel"])  # other groups untouched
    assert result.widths == {"hidden0": 16, "hidden1": 8, "hidden2": 16}
    # the accelerator path (jax arrays are not moved to the host) selects and gathers the same
    flat_jax, group = tree.flatten(variables), spec.group("hidden1")
    np.testing.assert_allclose(channel_scores(flat_jax, group, 16), np.linalg.norm(x, axis=1), rtol=1e-5)
    taken = take_channels(flat_jax, group, keep, 16)
    assert isinstance(taken["params/fc2/kernel"], jax.Array)
    np.testing.assert_array_equal(taken["params/fc2/kernel"], q["fc2"]["kernel"])
    assert [g["k"] for g in result.report["groups"]] == [16, 8, 16]


def test_pruned_accelerator_variables_come_back_on_the_device(monkeypatch):
    """Small accelerator leaves are pruned on the host (no compilation per k) and put back: jax arrays out, the same
    values, untouched leaves the original arrays (simulated: CPU arrays taken for device ones)."""
    cfg, variables = CONFIGS["mlp"], _random_variables("mlp")
    host = prune(variables, cfg.fold_spec(), {"hidden1": 0.5})
    monkeypatch.setattr(placement, "host_resident", lambda array: False)
    device = prune(variables, cfg.fold_spec(), {"hidden1": 0.5})
    before, after = tree.flatten(variables), tree.flatten(device.variables)
    for path, x in tree.flatten(host.variables).items():
        assert isinstance(after[path], jax.Array), path
        np.testing.assert_array_equal(np.asarray(after[path]), np.asarray(x), err_msg=path)
    assert after["params/fc0/kernel"] is before["params/fc0/kernel"]  # not in the pruned group


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sizes_equal_foldings_at_the_same_ratio(name, logits):
    cfg, variables = CONFIGS[name], _random_variables(name)
    expected = cfg.with_widths({g: k_for_ratio(n, 0.5) for g, n in cfg.fold_spec().widths(variables).items()})
    folded = fold_model(cfg, variables, 0.5, jax.random.key(0), clusterer="ward")
    for method, compress in BASELINES.items():
        out = compress(cfg, variables, 0.5)
        assert out.config == expected == folded.config, method
        assert out.report["params_after"] == out.report["params_analytic"] == expected.param_count() \
            == folded.report["params_after"] == tree.count(out.variables["params"])
        assert out.report["flops_after"] == folded.report["flops_after"] < out.report["flops_before"]
        assert np.all(np.isfinite(logits(out.config, out.variables)))


@pytest.mark.parametrize("name", ["resnet18", "vgg"])
def test_pruning_is_permutation_invariant(name, logits, assert_same_function):
    cfg, variables = CONFIGS[name], _random_variables(name)
    spec = cfg.fold_spec()
    ref = prune_model(cfg, variables, 0.5, norm=1)
    rng = np.random.default_rng(3)
    for group in spec.groups[:: max(1, len(spec.groups) // 4)]:
        perm = rng.permutation(spec.widths(variables)[group.name])
        out = prune_model(cfg, _permuted(variables, group, perm), 0.5, norm=1)
        kept = lambda m: set(np.flatnonzero(m >= 0).tolist())
        assert {int(perm[j]) for j in kept(out.channel_map[group.name])} == kept(ref.channel_map[group.name])
        assert_same_function(logits(out.config, out.variables), logits(ref.config, ref.variables), group.name)


def test_prune_bad_inputs_fail_clearly():
    cfg, variables = CONFIGS["mlp"], _random_variables("mlp")
    spec = cfg.fold_spec()
    broken = tree.set_(variables, "params/fc1/kernel", variables["params"]["fc1"]["kernel"].at[0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="non-finite values.*params/fc1/kernel"):
        prune(broken, spec, 0.5)
    with pytest.raises(ValueError, match="non-finite values"):
        ifm(broken, spec, 0.5)
    with pytest.raises(ValueError, match="fold spec does not match"):
        prune(_random_variables("vgg"), spec, 0.5)
    with pytest.raises(ValueError, match="norm must be 1 or 2"):
        prune(variables, spec, 0.5, norm=3)
    with pytest.raises(ValueError, match=r"unknown groups \['conv9'\]"):
        prune(variables, spec, {"conv9": 0.5})


# --- IFM -------------------------------------------------------------------------------------------------------------
def _naive_ifm(x, consumer, k):
    """Reference: recompute every current unit's merged row and all pairwise distances at each step."""
    units = [[i] for i in range(len(x))]
    while len(units) > k:
        rows = [np.concatenate([x[u][:, ~consumer].mean(0), x[u][:, consumer].sum(0)]) for u in units]
        best = min((float(((rows[a] - rows[b]) ** 2).sum()), a, b)
                   for a in range(len(units)) for b in range(a + 1, len(units)))
        _, a, b = best
        units[a] = sorted(units[a] + units[b])
        del units[b]
    labels = np.empty(len(x), np.int64)
    for c, u in enumerate(sorted(units)):
        labels[u] = c
    return labels


@pytest.mark.parametrize("seed", range(4))
def test_ifm_labels_match_a_naive_implementation(seed):
    rng = np.random.default_rng(seed)
    n, d = 14, 9
    x = rng.normal(size=(n, d)) * rng.uniform(0.2, 3.0, size=(n, 1))
    consumer = rng.random(d) < 0.4
    for k in (1, 3, 7, 13, 14):
        np.testing.assert_array_equal(ifm_labels(x, consumer, k), _naive_ifm(x, consumer, k), err_msg=f"k={k}")


def test_ifm_consumer_parts_are_summed_when_measuring():
    """Channels 0 and 1 are equal (consumer part 1 each) and merge first. Their merged row has consumer part 2,
    equal to channel 2's, so it joins channel 2 next; with averaged consumers it would join channel 3 instead."""
    x = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 2.0], [1.0, 1.4]])
    consumer = np.array([False, True])
    assert ifm_labels(x, consumer, 3).tolist() == [0, 0, 1, 2]
    assert ifm_labels(x, consumer, 2).tolist() == [0, 0, 0, 1]
    assert ifm_labels(x, np.zeros(2, bool), 2).tolist() == [0, 0, 1, 0]  # all averaged


def test_ifm_labels_are_canonical_and_deterministic():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 12))
    consumer = np.arange(12) >= 8
    for k in (1, 5, 20, 39):
        lab = ifm_labels(x, consumer, k)
        assert lab.shape == (40,) and set(lab.tolist()) == set(range(k))
        _, first = np.unique(lab, return_index=True)
        assert np.all(np.diff(first) > 0)  # numbered by first appearance
        np.testing.assert_array_equal(lab, ifm_labels(x, consumer, k))
    ties = np.zeros((4, 3))  # all distances equal: the lowest pairs merge first
    assert ifm_labels(ties, np.zeros(3, bool), 2).tolist() == [0, 0, 0, 1]


def test_consumer_columns_follow_group_features():
    cfg, variables = CONFIGS["vgg"], _random_variables("vgg")
    flat = tree.flatten(variables)
    group = cfg.fold_spec().group("conv2")
    n = cfg.fold_spec().widths(variables)["conv2"]
    mask = consumer_columns(flat, group, n)
    assert mask.shape == (group_features(flat, group, n).shape[1],)
    consumer = np.asarray(flat["params/features_3/kernel"])  # (3, 3, n, n3): the next conv's inputs
    assert mask.sum() == consumer.size // n and mask[-(consumer.size // n):].all()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_ifm_k_equals_n_is_the_identity(name):
    cfg, variables = CONFIGS[name], _random_variables(name)
    result = ifm(variables, cfg.fold_spec(), 0.0)
    _assert_same_arrays(variables, result.variables)
    assert result.report["param_sparsity"] == 0.0


@pytest.mark.parametrize("name", ["mlp", "resnet18"])
def test_ifm_folds_duplicated_channels_back_losslessly(name, logits, assert_same_function):
    """Copies have equal producer rows and equal (split) consumer columns: distance 0, so IFM joins exactly the
    copies first, and the merge (mean of equal rows, sum of the split columns) restores the original function."""
    cfg, variables = CONFIGS[name], _random_variables(name)
    spec = cfg.fold_spec()
    widths = spec.widths(variables)
    rng = np.random.default_rng(1)
    sources = {}  # one extra copy of half the channels per group, shuffled in
    for group in spec.groups:
        n = widths[group.name]
        sources[group.name] = rng.permutation(np.concatenate([np.arange(n), rng.choice(n, n // 2, replace=False)]))

    def widen(v):
        for group in spec.groups:
            v = duplicate_channels(v, group, sources[group.name])
        return v

    wide = jax.jit(widen)(variables)  # one compilation, not one per eager gather (seconds per group on CPU)
    wide_cfg = cfg.with_widths(spec.widths(wide))
    back = ifm_model(wide_cfg, wide, lambda g, n: widths[g])
    assert back.config == cfg
    for g, source in sources.items():  # same cluster ⇔ copies of the same channel
        lab = back.channel_map[g]
        assert np.array_equal(lab[:, None] == lab[None, :], source[:, None] == source[None, :]), g
    assert all(r["inertia"] < 1e-6 * max(1.0, r["n"]) for r in back.report["groups"])
    assert_same_function(logits(cfg, back.variables), logits(cfg, variables), "folded back")


def test_ifm_partition_is_permutation_invariant():
    cfg, variables = CONFIGS["resnet18"], _random_variables("resnet18")
    spec = cfg.fold_spec()
    ref = ifm(variables, spec, 0.5)
    rng = np.random.default_rng(4)
    for group in spec.groups[::3]:
        perm = rng.permutation(spec.widths(variables)[group.name])
        lab = ifm(_permuted(variables, group, perm), spec, 0.5).labels[group.name]
        orig = ref.labels[group.name][perm]  # original label of each permuted channel
        assert np.array_equal(lab[:, None] == lab[None, :], orig[:, None] == orig[None, :]), group.name


def test_wanda_sp_scores_are_weight_times_input_norm_and_prune_dead_inputs():
    from jaxfold.baselines.wanda import consumer_input_norms, wanda_scores, wanda_sp_model
    from jaxfold.corrections.layers import capture

    cfg = models.mlp(in_channels=1, image_size=8, width=0.0625)  # 3 × 32 hidden
    v = cfg.init(jax.random.key(0))
    v = jax.tree.map(np.asarray, v)
    v["params"]["bn0"]["bias"] = v["params"]["bn0"]["bias"].copy()
    v["params"]["bn0"]["scale"] = v["params"]["bn0"]["scale"].copy()
    v["params"]["bn0"]["scale"][:4] = 0.0  # channels 0–3 of hidden0 are dead after ReLU
    v["params"]["bn0"]["bias"][:4] = -1.0
    x = np.random.default_rng(0).normal(size=(64, 8, 8, 1)).astype(np.float32)
    apply = lambda variables, x: cfg.module().apply(variables, x, train=False)
    spec = cfg.fold_spec()
    norms = consumer_input_norms(apply, v, spec, [x[:32], x[32:]])
    h = np.maximum(np.asarray(capture(cfg.module(), v, x, ["bn0"])["bn0"]), 0.0)
    np.testing.assert_allclose(norms["fc1"], np.sqrt((h**2).sum(0)), rtol=1e-5)
    scores = wanda_scores(v, spec, norms)
    np.testing.assert_allclose(scores["hidden0"], (np.abs(v["params"]["fc1"]["kernel"]) * norms["fc1"][:, None]).sum(1),
                               rtol=1e-6)
    out = wanda_sp_model(cfg, v, {"hidden0": 0.125}, [x], apply)  # keep 28 of 32
    assert sorted(np.flatnonzero(out.channel_map["hidden0"] < 0)) == [0, 1, 2, 3]
    assert out.report["method"] == "wanda_sp" and out.config.hidden_widths[0] == 28
