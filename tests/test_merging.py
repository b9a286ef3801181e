"""Model merging (jaxfold/merging.py): the stacked network is the ensemble exactly; weight matching recovers a
permuted copy exactly; folding, weight matching and ZipIt! merge a model with (a permuted copy of) itself back
into its own function; the experiment runner end to end on a tiny dataset.

Kept fast by compiling little: random variables drawn from the configs' shapes (no initialiser), logits compiled
once per config for the session (the ``logits`` fixture), one k-means executable (the MLP's 32 stacked channels
into 16, ``N_INIT`` restarts) shared by every test that clusters, and endpoints saved rather than trained
(training is jaxfold/train.py's, tested in tests/test_train.py)."""

import functools
import json

import jax
import numpy as np
import pytest

from jaxfold import merge_run, merging, models
from jaxfold import tree as tree_lib
from jaxfold.errors import UserError
from jaxfold.eval.classification import inference_fn
from jaxfold.io import checkpoint
from jaxfold.merge import permute_group

# the MLP of the end-to-end test (configs/merge_fmnist.py on the tiny CIFAR-10 directory): k-means compiles once;
# one input shape for all three, so the ``logits`` fixture draws its random batch with one executable
MLP = models.mlp(in_channels=3, num_classes=10, image_size=32, width=0.03125)
RESNET = models.resnet18(in_channels=3, num_classes=4, width=0.0625, image_size=32)
LENET = models.lenet5(in_channels=3, num_classes=4, width=0.25, image_size=32)  # conv2 → fc1 interleaved (flatten)
N_INIT = 1  # k-means restarts in every test (and the end-to-end config): one restart compiles fastest


def _permuted(cfg, variables, seed):
    """``variables`` with every group's channels randomly permuted: the same function."""
    rng = np.random.default_rng(seed)
    spec = cfg.fold_spec()
    for group, n in spec.widths(variables).items():
        variables = permute_group(variables, spec.group(group), rng.permutation(n))
    return variables


@functools.cache
def _shapes(cfg):
    return cfg.abstract_variables()  # traces the initialiser: once per config


def _random(cfg, seed=0):
    """Random variables from the config's shapes alone (no initialiser to compile): kernels N(0, 1/fan-in), other
    parameters and BN statistics spread around their usual values, so a mis-merged vector shows."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        shape = leaf.shape
        if path.endswith("kernel"):
            return rng.normal(0, 1 / np.sqrt(np.prod(shape[:-1])), shape)
        if path.endswith("var"):
            return rng.uniform(0.5, 2.0, shape)
        return (1.0 if path.endswith("scale") else 0.0) + rng.normal(0, 0.2, shape)

    return tree_lib.map_with_path(lambda p, x: draw(p, x).astype(np.float32), _shapes(cfg))


@pytest.fixture(scope="module")
def pair():
    """``pair(cfg)``: (a, b), two different models of ``cfg`` — b is a permuted copy of a with every weight scaled
    by a random factor in [0.5, 1.5]."""
    cache = {}

    def pair(cfg):
        if cfg not in cache:
            a = _random(cfg)
            rng = np.random.default_rng(1)
            b = tree_lib.map_with_path(lambda p, x: np.asarray(x) * rng.uniform(0.5, 1.5, np.shape(x)).astype(
                np.float32), _permuted(cfg, a, 2))
            cache[cfg] = a, b
        return cache[cfg]

    return pair


def _pair_identical_rows(x, k, key):
    """A clusterer for duplicated channels: each distinct row (exact) is one cluster."""
    _, labels = np.unique(np.asarray(x), axis=0, return_inverse=True)
    assert labels.max() + 1 == k
    return labels.reshape(-1)


@pytest.mark.parametrize("cfg", [MLP, RESNET, LENET], ids=["mlp", "resnet18 (residual streams)", "lenet (interleaved)"])
def test_stacked_network_computes_the_average_of_the_two_models(cfg, pair, logits, assert_same_function):
    a, b = pair(cfg)
    stacked_cfg, stacked = merging.ensemble(cfg, a, b)
    assert stacked_cfg.fold_spec().widths(stacked) == {g: 2 * n for g, n in cfg.fold_spec().widths(a).items()}
    assert_same_function(logits(stacked_cfg, stacked), (logits(cfg, a) + logits(cfg, b)) / 2, "stacked")


def test_stacked_network_with_output_weights_joins_the_heads_by_task(pair, logits, assert_same_function):
    a, b = pair(MLP)
    wa = (np.arange(10) < 4).astype(np.float32)
    stacked_cfg, stacked = merging.ensemble(MLP, a, b, output_weights=(wa, 1 - wa))
    assert_same_function(logits(stacked_cfg, stacked), wa * logits(MLP, a) + (1 - wa) * logits(MLP, b), "by task")
    with pytest.raises(UserError, match="one weight per output unit"):
        merging.stack_models(a, b, MLP.fold_spec(), output_weights=(wa[:5], wa[:5]))


def test_weight_matching_recovers_a_permuted_copy_exactly(pair, logits, assert_same_function):
    cfg = RESNET  # residual streams couple the groups' permutations (the MLP's chain: the test below)
    a, _ = pair(cfg)
    matching = merging.weight_matching(a, _permuted(cfg, a, 3), cfg.fold_spec(), jax.random.key(0))
    flat_a, flat_m = tree_lib.flatten(a), tree_lib.flatten(matching.variables)
    assert all(np.array_equal(np.asarray(flat_a[p]), flat_m[p]) for p in flat_a)
    merged = merging.merge_by_weight_matching(a, _permuted(cfg, a, 3), cfg.fold_spec(), jax.random.key(0))
    assert_same_function(logits(cfg, merged.variables), logits(cfg, a), "weight-matched merge")
    assert all(g["inertia"] == 0.0 for g in merged.report["groups"])


def test_weight_matching_merge_is_the_average_of_a_and_the_aligned_b(pair):
    a, b = pair(MLP)
    spec = MLP.fold_spec()
    aligned = merging.weight_matching(a, b, spec, jax.random.key(0)).variables
    merged = merging.merge_by_weight_matching(a, b, spec, jax.random.key(0))
    flat_a, flat_b, flat_m = (tree_lib.flatten(v) for v in (a, aligned, merged.variables))
    for p in flat_a:
        np.testing.assert_allclose(flat_m[p], (np.asarray(flat_a[p]) + flat_b[p]) / 2, rtol=1e-6, atol=1e-6,
                                   err_msg=p)
    assert merged.report["sweeps"] >= 1
    assert all(g["mixed_clusters"] == g["k"] for g in merged.report["groups"])  # one channel of each model


@pytest.mark.parametrize("cfg", [MLP, RESNET], ids=["mlp (k-means)", "resnet18"])
def test_folding_a_model_with_itself_gives_it_back(cfg, pair, logits, assert_same_function):
    a, _ = pair(cfg)
    # k-means on the MLP; on ResNet18 (12 group shapes to compile k-means for) a clusterer pairing equal rows
    clusterer = "kmeans" if cfg is MLP else _pair_identical_rows
    merged = merging.merge_by_folding(a, a, cfg.fold_spec(), jax.random.key(0), clusterer=clusterer,
                                      n_init=N_INIT)
    assert tree_lib.compare(a, merged.variables) == []
    assert_same_function(logits(cfg, merged.variables), logits(cfg, a), "folded with itself")
    assert all(g["inertia"] == 0.0 and g["mixed_clusters"] == g["k"] for g in merged.report["groups"])


def test_zipit_of_a_model_and_its_permuted_copy_gives_it_back(pair, logits, assert_same_function):
    a, _ = pair(MLP)
    dead = np.where(np.arange(16) == 3, -100.0, 0.0).astype(np.float32)  # hidden unit 3 never fires
    a = tree_lib.map_with_path(lambda p, v: v + dead if p == "params/bn0/bias" else v, a)
    x = np.random.default_rng(5).normal(size=(64, *MLP.input_shape)).astype(np.float32)
    # merge_models' apply function and batch shape: the correlations compile once for every zipit test
    apply_fn, batches = inference_fn(MLP.module()), (lambda: iter([x[:32], x[32:]]))
    corr = merging.feature_correlations(a, a, MLP.fold_spec(), apply_fn, batches)["hidden0"]
    assert corr[3, 16 + 3] == 1.0 and np.all(corr[3, np.r_[0:3, 4:19, 20:32]] == 0.0)  # constant: alike its twin
    merged = merging.merge_by_zipit(a, _permuted(MLP, a, 4), MLP.fold_spec(), apply_fn, batches)
    assert_same_function(logits(MLP, merged.variables), logits(MLP, a), "zipit with a permuted copy")


def test_greedy_pairs_take_the_most_correlated_free_pair_first():
    corr = np.array([[1.0, 0.9, 0.8, 0.1],
                     [0.9, 1.0, 0.95, 0.2],
                     [0.8, 0.95, 1.0, 0.3],
                     [0.1, 0.2, 0.3, 1.0]])
    labels = merging.greedy_pairs(corr)
    assert labels.tolist() == [1, 0, 0, 1]  # (1, 2) first, then the rest pair up: (0, 3)


def test_merging_refuses_models_of_different_widths(pair):
    a, _ = pair(MLP)
    b = tree_lib.map_with_path(lambda p, x: x[:10] if p.startswith("params/fc1") else x, a)  # 16 → 10 wide
    with pytest.raises(UserError, match="differ in structure"):
        merging.merge_by_folding(a, b, MLP.fold_spec(), jax.random.key(0))
    with pytest.raises(UserError, match="unknown merge method"):
        merging.merge_models(MLP, a, a, "average", jax.random.key(0), repair=False)
    with pytest.raises(UserError, match="needs data"):
        merging.merge_models(MLP, a, a, "zipit", jax.random.key(0), repair=False)


def test_merge_models_repairs_the_batchnorm_statistics(pair):
    a, b = pair(MLP)
    x = np.random.default_rng(5).normal(size=(32, *MLP.input_shape)).astype(np.float32)
    for method in merging.METHODS:
        plain = merging.merge_models(MLP, a, b, method, jax.random.key(0), data=lambda: iter([x]), repair=False,
                                     n_init=N_INIT)
        fixed = merging.merge_models(MLP, a, b, method, jax.random.key(0), data=lambda: iter([x]), n_init=N_INIT)
        assert tree_lib.compare(a, fixed.variables) == []
        np.testing.assert_array_equal(fixed.variables["params"]["fc1"]["kernel"],
                                      plain.variables["params"]["fc1"]["kernel"])
        h = np.asarray(x).reshape(32, -1) @ fixed.variables["params"]["fc0"]["kernel"] \
            + fixed.variables["params"]["fc0"]["bias"]
        np.testing.assert_allclose(fixed.variables["batch_stats"]["bn0"]["mean"], h.mean(0), rtol=1e-4, atol=1e-4)
        assert fixed.report["repair"] and fixed.report["method"] == method


def test_merge_experiment_end_to_end_and_cached(cifar_dir, tmp_path, monkeypatch, capsys):
    from jaxfold import config as config_lib
    from jaxfold.cli import main
    from jaxfold.eval.classification import check_model_fits_data
    from jaxfold.train import load_data, model_config

    trained = []

    def save_endpoint(config, workdir):
        """Training's part of the contract: the endpoint's config is read as training reads it (its model, its data
        reduced to its classes) and a checkpoint of that model is written where training writes it."""
        cfg, data = model_config(config), load_data(config)
        check_model_fits_data(cfg, data)
        trained.append((config.train.seed, tuple(config.data.classes), sorted(set(data.train_labels.tolist()))))
        checkpoint.save(workdir / "checkpoint", _random(cfg, seed=len(trained)), cfg)

    monkeypatch.setattr("jaxfold.train.train", save_endpoint)
    overrides = ["--config.data.name=cifar10", f"--config.data.path={cifar_dir}", "--config.model.in_channels=3",
                 "--config.model.image_size=32", "--config.model.width=0.03125", f"--config.merge.n_init={N_INIT}",
                 "--config.merge.repair_examples=32",  # the batch shape of the tests above: nothing compiles anew
                 "--config.merge.settings=split_by_task"]  # `same`: the split's code with every class
    args = ["merge", "--config", "configs/merge_fmnist.py", "--workdir", str(tmp_path / "w"), *overrides]
    assert main(args) == 0
    results = json.loads((tmp_path / "w" / "results.json").read_text())
    by_task = results["settings"]["split_by_task"]
    rows = by_task["results"]
    assert set(rows) == {"model_a", "model_b", "ensemble", *merging.METHODS}
    assert all(0.0 <= rows[m]["accuracy"] <= 1.0 and 0.0 <= rows[m]["accuracy_no_repair"] <= 1.0
               for m in merging.METHODS)
    assert "accuracy_task_a" in rows["folding"]
    assert by_task["classes"] == {"a": [0, 1, 2, 3, 4], "b": [5, 6, 7, 8, 9]}
    assert "| split_by_task |" in capsys.readouterr().out
    split = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
    assert [(seed, classes) for seed, classes, _ in trained] == [(0, split[0]), (1, split[1])]
    assert all(set(seen) <= set(classes) for _, classes, seen in trained)  # each endpoint sees its task only

    def no_training(*_args, **_kwargs):
        raise AssertionError("the endpoints are cached: nothing should train again")

    monkeypatch.setattr("jaxfold.train.train", no_training)
    config = config_lib.load_with_overrides("configs/merge_fmnist.py", [*overrides, "--config.merge.methods=zipit",
                                                                         "--config.merge.settings=split"])
    again = merge_run.run_merge(config, tmp_path / "w")["settings"]["split"]  # the heads averaged this time
    assert again["endpoints"] == by_task["endpoints"] and again["results"]["model_a"] == rows["model_a"]


def test_merge_config_mistakes_are_user_errors():
    from jaxfold import config as config_lib

    for override, message in [("--config.merge.methods=average", "unknown merge methods"),
                              ("--config.merge.settings=mixed", "unknown merge settings"),
                              ("--config.merge.split=((0, 1), (1, 2))", "disjoint")]:
        config = config_lib.load_with_overrides("configs/merge_fmnist.py", [override])
        with pytest.raises(UserError, match=message):
            merge_run.check_merge_config(config)


def test_merge_fmnist_vgg11_is_the_vgg11_fmnist_model_and_bad_arguments_are_named():
    from jaxfold import config as config_lib
    from jaxfold.train import model_config

    vgg, reference = config_lib.load("configs/merge_fmnist.py:vgg11"), config_lib.load("configs/vgg11_fmnist.py")
    assert model_config(vgg) == model_config(reference)
    assert vgg.data.crop_padding == reference.data.crop_padding and vgg.train.epochs == 5
    with pytest.raises(UserError, match=":resnet18 or :vgg11"):
        config_lib.load("configs/merge_fmnist.py:vgg16")
