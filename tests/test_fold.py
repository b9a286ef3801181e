"""Folding properties: specs are complete and permutation invariant, k = n is the identity, duplicated channels
fold back losslessly, results are deterministic and pure, folded models rebuild at the analytic size, bad input
fails clearly."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfold import models, placement, tree
from jaxfold.folding import fold
from jaxfold.merge import duplicate_channels, merge_group, permute_group
from jaxfold.plans import k_for_ratio, resolve_plan

CONFIGS = {
    "resnet18": models.resnet18(in_channels=1, width=0.125, image_size=16),
    "resnet50": models.resnet50(stem="imagenet", width=0.0625, image_size=32),
    "vgg_cifar": models.vgg11_bn(in_channels=1, width=0.0625, image_size=28),
    "vgg_imagenet": models.vgg11_bn(head="imagenet", width=0.03125, image_size=32),
    "mlp": models.mlp(in_channels=1, image_size=8, width=0.0625),
    "lenet": models.lenet5(),
}


# k-means compiles once per (rows, features, k) shape, so the tests that cluster every group use the smaller
# architectures; the spec-only properties (coverage, permutation invariance, identity) cover all of them.
CLUSTERED = ["resnet18", "vgg_cifar", "mlp", "lenet"]


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request, random_variables):
    cfg = CONFIGS[request.param]
    return cfg, random_variables(cfg)


@pytest.fixture(scope="module", params=CLUSTERED)
def small_model(request, random_variables):
    cfg = CONFIGS[request.param]
    return cfg, random_variables(cfg)


def test_spec_covers_every_axis(model):
    cfg, variables = model
    cfg.fold_spec().check(variables)


def test_resnet18_has_the_papers_12_groups():
    spec = models.resnet18().fold_spec()
    assert len(spec.groups) == 12
    assert [g.name for g in spec.groups if g.name.startswith("stream")] == [f"stream{i}" for i in range(1, 5)]
    assert len(models.resnet50().fold_spec().groups) == 1 + 4 + 2 * 16


def test_every_group_is_permutation_invariant(model, logits, assert_same_function):
    cfg, variables = model
    ref = logits(cfg, variables)
    rng = np.random.default_rng(0)
    for group in cfg.fold_spec().groups:
        n = cfg.fold_spec().widths(variables)[group.name]
        permuted = permute_group(variables, group, rng.permutation(n))
        assert_same_function(logits(cfg, permuted), ref, group.name)


def test_k_equals_n_is_the_exact_identity(model):
    cfg, variables = model
    result = fold(variables, cfg.fold_spec(), 0.0, jax.random.key(0))
    assert tree.compare(variables, result.variables) == []
    for path, a in tree.flatten(variables).items():
        np.testing.assert_array_equal(np.asarray(a), np.asarray(tree.get(result.variables, path)))
    assert result.report["param_sparsity"] == 0.0


def test_duplicated_channels_fold_back_losslessly(small_model, logits, assert_same_function):
    cfg, variables = small_model
    spec = cfg.fold_spec()
    widths = spec.widths(variables)
    rng = np.random.default_rng(1)
    wide = variables
    for group in spec.groups:  # widen every group by ~50 % with copies of random channels
        n = widths[group.name]
        source = np.concatenate([np.arange(n), rng.integers(0, n, max(1, n // 2))])
        wide = duplicate_channels(wide, group, source)
    wide_cfg = cfg.with_widths(spec.widths(wide))
    wide_spec = wide_cfg.fold_spec()
    wide_spec.check(wide)
    assert_same_function(logits(wide_cfg, wide), logits(cfg, variables), "widened")
    back = fold(wide, wide_spec, lambda g, n: widths[g], jax.random.key(0))
    assert back.widths == widths
    assert all(r["inertia"] < 1e-6 * max(1.0, r["n"]) for r in back.report["groups"])
    assert_same_function(logits(cfg, back.variables), logits(cfg, variables), "folded back")


def test_fold_is_deterministic_pure_and_rebuilds(small_model, logits):
    cfg, variables = small_model
    spec = cfg.fold_spec()
    before = copy.deepcopy(jax.tree.map(np.asarray, variables))
    a = fold(variables, spec, 0.5, jax.random.key(3))
    b = fold(variables, spec, 0.5, jax.random.key(3))
    for path, x in tree.flatten(a.variables).items():
        np.testing.assert_array_equal(np.asarray(x), np.asarray(tree.get(b.variables, path)))
    for path, x in tree.flatten(before).items():  # input untouched
        np.testing.assert_array_equal(x, np.asarray(tree.get(variables, path)))
    folded_cfg = cfg.with_widths(a.widths)
    assert folded_cfg.param_count() == tree.count(a.variables["params"]) == a.report["params_after"]
    assert tree.compare(folded_cfg.abstract_variables(), a.variables) == []
    widths = spec.widths(variables)
    assert a.widths == {g: max(1, int(n * 0.5)) for g, n in widths.items()}
    assert np.all(np.isfinite(logits(folded_cfg, a.variables)))
    assert 0.0 < a.report["param_sparsity"] < 1.0
    # the groups' clocks are disjoint parts of the fold (host work + the wait for its labels), not overlapping spans
    group_seconds = [g["seconds"] for g in b.report["groups"]]
    assert all(t >= 0 for t in group_seconds) and sum(group_seconds) <= b.report["seconds"] + 1e-3


@pytest.mark.parametrize("staging_bytes", [0, None], ids=["merged-on-device", "staged-on-host"])
def test_accelerator_variables_fold_like_host_ones_and_stay_on_device(monkeypatch, caplog, staging_bytes,
                                                                      random_variables):
    """Variables on an accelerator (simulated: CPU arrays taken for device ones) fold to the host fold's values and
    come back as device arrays. Leaves up to HOST_STAGING_BYTES are merged on the host and put back, so a fold at a
    new ratio compiles nothing; larger ones are merged on the device (jax.numpy features, segment-sum merges)."""
    import logging

    cfg = CONFIGS["resnet18"]
    variables = random_variables(cfg)
    host = fold(variables, cfg.fold_spec(), 0.5, jax.random.key(3), n_init=2)
    monkeypatch.setattr(placement, "host_resident", lambda array: False)
    if staging_bytes is not None:
        monkeypatch.setattr(placement, "HOST_STAGING_BYTES", staging_bytes)
    device = fold(variables, cfg.fold_spec(), 0.5, jax.random.key(3), n_init=2)
    assert device.widths == host.widths
    flat_before = tree.flatten(variables)
    for path, x in tree.flatten(host.variables).items():
        y = tree.get(device.variables, path)
        assert isinstance(y, jax.Array), path
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6, err_msg=path)
        if staging_bytes is None:
            np.testing.assert_array_equal(np.asarray(y), np.asarray(x), err_msg=path)  # the same host merge
            if x.shape == flat_before[path].shape:  # left alone (k = n or not folded): the original array
                assert y is flat_before[path], path
    inertia = lambda result: [g["inertia"] for g in result.report["groups"]]
    assert inertia(device) == pytest.approx(inertia(host), rel=1e-5)
    with caplog.at_level(logging.WARNING), jax.log_compiles():  # another ratio
        fold(variables, cfg.fold_spec(), 0.25, jax.random.key(3), n_init=2)
    compiled = [m for m in caplog.messages if "Finished XLA compilation" in m]
    assert (len(compiled) == 0) == (staging_bytes is None), compiled[:3]


@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey, lambda s: jax.random.key(s, impl="rbg")])
def test_group_i_clusters_with_fold_in_key_i(make_key):
    """The documented keys (group i: fold_in(key, i)), built up front from host data for typed, legacy and rbg keys."""
    from jaxfold.folding import _group_keys

    key = make_key(11)
    bits = lambda k: np.asarray(jax.random.key_data(k) if jnp.issubdtype(k.dtype, jax.dtypes.prng_key) else k)
    for i, k in enumerate(_group_keys(key, 4)):
        np.testing.assert_array_equal(bits(k), bits(jax.random.fold_in(key, i)))


def test_merge_is_mean_for_producers_and_sum_for_consumers(random_variables):
    cfg = models.mlp(in_channels=1, image_size=2, width=3 / 512, depth=1)  # 4 inputs → 3 hidden → 10
    variables = random_variables(cfg)
    group = cfg.fold_spec().groups[0]
    labels = jnp.asarray([0, 1, 0])
    merged = tree.unflatten(merge_group(tree.flatten(variables), group, labels, 3, 2))
    w_in, w_out = variables["params"]["fc0"]["kernel"], variables["params"]["classifier"]["kernel"]
    np.testing.assert_allclose(merged["params"]["fc0"]["kernel"][:, 0], (w_in[:, 0] + w_in[:, 2]) / 2, rtol=1e-6)
    np.testing.assert_allclose(merged["params"]["classifier"]["kernel"][0], w_out[0] + w_out[2], rtol=1e-6)
    var = variables["batch_stats"]["bn0"]["var"]
    np.testing.assert_allclose(merged["batch_stats"]["bn0"]["var"][0], (var[0] + var[2]) / 2, rtol=1e-6)


def test_plans():
    widths = {"a": 64, "b": 10}
    assert resolve_plan(0.25, widths) == {"a": 48, "b": 7}
    assert resolve_plan({"a": 0.5}, widths) == {"a": 32, "b": 10}
    assert resolve_plan(lambda g, n: n // 2, widths) == {"a": 32, "b": 5}
    assert resolve_plan(0.99, widths) == {"a": 1, "b": 1}  # k ≥ 1
    assert k_for_ratio(64, 0.1) == 57  # floor(57.6), the paper's int(n·(1−r))


@pytest.mark.parametrize("plan", [1.0, -0.1, float("nan")])
def test_bad_ratios(plan):
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        resolve_plan(plan, {"a": 4})


def test_bad_inputs_fail_clearly(random_variables):
    cfg = CONFIGS["lenet"]
    variables = random_variables(cfg)
    spec = cfg.fold_spec()
    with pytest.raises(ValueError, match=r"unknown groups \['conv9'\]"):
        fold(variables, spec, {"conv9": 0.5}, jax.random.key(0))
    with pytest.raises(ValueError, match="need an int in"):
        fold(variables, spec, lambda g, n: n + 1, jax.random.key(0))
    other = random_variables(CONFIGS["mlp"])
    with pytest.raises(ValueError, match="fold spec does not match"):
        fold(other, spec, 0.5, jax.random.key(0))
    broken = tree.set_(variables, "params/fc1/kernel", variables["params"]["fc1"]["kernel"].at[0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="non-finite values.*params/fc1/kernel"):
        fold(broken, spec, 0.5, jax.random.key(0))
    with pytest.raises(ValueError, match="unknown clusterer"):
        fold(variables, spec, 0.5, jax.random.key(0), clusterer="dbscan")


def test_spec_checker_finds_gaps_and_double_claims(random_variables):
    from jaxfold.spec import FoldSpec

    cfg = CONFIGS["lenet"]
    variables = random_variables(cfg)
    spec = cfg.fold_spec()
    with pytest.raises(ValueError, match="params/fc3/bias axis 0 .* is in no group"):
        FoldSpec(spec.groups, spec.unfoldable[:-5] + spec.unfoldable[-4:]).check(variables)
    with pytest.raises(ValueError, match="claimed by both"):
        FoldSpec(spec.groups, (*spec.unfoldable, ("params/fc1/kernel", 1))).check(variables)


def test_pluggable_clusterers(random_variables):
    cfg = CONFIGS["mlp"]
    variables = random_variables(cfg)
    spec = cfg.fold_spec()
    calls = []

    def first_k(x, k, key):  # a user's clusterer: (features, k, key) -> labels
        calls.append((x.shape, k))
        return np.minimum(np.arange(x.shape[0]), k - 1)

    result = fold(variables, spec, 0.5, jax.random.key(0), clusterer=first_k)
    assert len(calls) == 3 and result.widths == {g: 16 for g in spec.names}
    pytest.importorskip("sklearn")
    ward = fold(variables, spec, 0.5, jax.random.key(0), clusterer="ward")
    assert ward.widths == result.widths
    for group in spec.groups:  # Ward's labels are a genuine partition into k non-empty clusters
        assert sorted(set(ward.labels[group.name].tolist())) == list(range(16))


def test_cluster_on_other_variables_uses_their_features_and_checks_widths(random_variables):
    cfg = CONFIGS["mlp"]
    v = random_variables(cfg)
    spec = cfg.fold_spec()
    plain = fold(v, spec, 0.5, jax.random.key(0), n_init=2)
    same = fold(v, spec, 0.5, jax.random.key(0), n_init=2, cluster_on=(v, spec))
    for g in plain.labels:
        np.testing.assert_array_equal(plain.labels[g], same.labels[g])
    other = random_variables(cfg, seed=5)
    moved = fold(v, spec, 0.5, jax.random.key(0), n_init=2, cluster_on=(other, spec))
    assert any(not np.array_equal(plain.labels[g], moved.labels[g]) for g in plain.labels)
    narrow = fold(v, spec, 0.5, jax.random.key(0), n_init=2).variables
    with pytest.raises(ValueError, match="other group widths"):
        fold(v, spec, 0.5, jax.random.key(0), cluster_on=(narrow, spec))


def test_at_most_two_groups_of_features_alive(random_variables):
    """Groups fold one after another with one clustering in flight: when group i is clustered, the features of
    groups before i − 1 are already freed (peak memory ≈ two groups' features beyond the weights, block by block
    for LLMs), and the report keeps the spec's group order."""
    import gc
    import weakref

    cfg = CONFIGS["resnet18"]
    variables = random_variables(cfg)
    spec = cfg.fold_spec()
    alive_at_call = []
    refs = []

    def tracking(x, k, key):
        gc.collect()
        alive_at_call.append(sum(r() is not None for r in refs))
        refs.append(weakref.ref(x))
        return np.arange(x.shape[0]) % k

    result = fold(variables, spec, 0.5, jax.random.key(0), clusterer=tracking)
    assert len(alive_at_call) == len(spec.groups) == 12
    assert alive_at_call[0] == 0 and max(alive_at_call) == 1  # the one pending group, never more
    assert [g["group"] for g in result.report["groups"]] == list(spec.names)
