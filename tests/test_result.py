"""Every compression returns the one :class:`jaxfold.Compressed`: fold, IFM, magnitude pruning, Wanda-sp,
within-group folding, the zoo's fold/correct, traced (linen, NNX) folds and merges of two models; its report
writes only the keys :class:`jaxfold.CompressionReport` documents, and the former type names are aliases of it."""

import functools

import jax
import numpy as np
import pytest
from flax import nnx

import jaxfold
from jaxfold import Compressed, CompressionReport, GroupReport, merging, models
from jaxfold.baselines import ifm, ifm_model, prune, prune_model, wanda_sp_model
from jaxfold.errors import UserError
from jaxfold.models.llama import fold_within_groups

MLP = models.mlp(in_channels=1, image_size=8, width=0.03125)  # 3 hidden layers of 16


def _round_robin(features, k, key):
    """Channel i → cluster i mod k: nothing to compile (k-means is tested in test_fold)."""
    return np.arange(features.shape[0]) % k


FAST = {"clusterer": _round_robin}


@functools.cache
def _mlp():
    variables = jax.tree.map(np.asarray, MLP.init(jax.random.key(0)))
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 1)).astype(np.float32)
    return variables, x


def _apply(variables, x):
    return MLP.module().apply(variables, x, train=False)


def _check(result, widths_before):
    """The one type, labels = channel_map, every group mapped, and a plain-dict report of documented keys."""
    assert type(result) is Compressed
    assert result.labels is result.channel_map
    assert type(result.report) is dict
    undocumented = set(result.report) - set(CompressionReport.__annotations__)
    assert not undocumented, f"report keys missing from CompressionReport: {sorted(undocumented)}"
    for entry in result.report["groups"]:
        assert set(entry) <= set(GroupReport.__annotations__), sorted(set(entry) - set(GroupReport.__annotations__))
    for name, n in widths_before.items():
        cmap = np.asarray(result.channel_map[name])
        assert cmap.shape == (n,) and cmap.max() == result.widths[name] - 1


def test_every_producer_returns_one_type_with_a_documented_report():
    variables, x = _mlp()
    spec = MLP.fold_spec()
    before = spec.widths(variables)
    half = {name: n // 2 for name, n in before.items()}
    results = {
        "fold": jaxfold.fold(variables, spec, 0.5, jax.random.key(1), **FAST),
        "prune": prune(variables, spec, 0.5, norm=1),
        "ifm": ifm(variables, spec, 0.5),
        "prune_model": prune_model(MLP, variables, 0.5),
        "ifm_model": ifm_model(MLP, variables, 0.5),
        "wanda_sp_model": wanda_sp_model(MLP, variables, 0.5, [x], _apply),
        "fold_model": jaxfold.fold_model(MLP, variables, 0.5, jax.random.key(1), correction="fold_ar", **FAST),
        "fold_traced": jaxfold.fold_traced(_apply, variables, 0.5, jax.random.key(1), x, correction="fold_ar",
                                           verify=False, **FAST),
    }
    results["correct"] = jaxfold.correct(MLP, variables, results["prune_model"], "repair", data=lambda: [x])
    for name, result in results.items():
        group_widths = result.spec.widths(variables) if result.spec is not None else before  # traced: derived names
        _check(result, group_widths)
        assert result.widths == {g: n // 2 for g, n in group_widths.items()}, name
    for name in ("prune_model", "ifm_model", "wanda_sp_model", "fold_model", "correct"):  # zoo: a rebuilt config
        assert results[name].config == MLP.with_widths(half) and results[name].config_widths() == half, name
    assert results["prune"].report["method"] == "sp_l1" and results["ifm"].report["method"] == "ifm"
    assert results["correct"].report["correction"] == "repair" and results["correct"].report["method"] == "sp_l2"
    traced = results["fold_traced"]
    assert traced.config is None and traced.spec is not None and traced.module is None
    zoo = results["fold_model"]
    np.testing.assert_allclose(traced.apply_fn(traced.variables, x),
                               zoo.config.module().apply(zoo.variables, x, train=False), rtol=1e-5, atol=1e-5)
    assert np.all(results["prune"].channel_map["hidden0"] >= -1) and (results["prune"].channel_map["hidden0"] < 0).any()
    with pytest.raises(UserError, match="zoo model"):
        jaxfold.correct(MLP, variables, results["fold"], "none")
    with pytest.raises(UserError, match="config"):
        results["fold"].config_widths()


def test_merges_return_it_too():
    """A merge maps the stacked network's 2n channels (both models') to the n of the merged model."""
    variables, _ = _mlp()
    spec = MLP.fold_spec()
    widths = spec.widths(variables)
    stacked = {g: 2 * n for g, n in widths.items()}
    merges = {
        "merge_by_folding": merging.merge_by_folding(variables, variables, spec, jax.random.key(0), **FAST),
        "merge_by_weight_matching": merging.merge_by_weight_matching(variables, variables, spec),
        "merge_models": merging.merge_models(MLP, variables, variables, "weight_matching", jax.random.key(0),
                                             repair=False),
    }
    for name, result in merges.items():
        _check(result, stacked)
        assert result.widths == widths, name
    assert merges["merge_by_weight_matching"].report["sweeps"] >= 1
    assert merges["merge_models"].config == MLP and merges["merge_models"].config_widths() == widths


def test_nnx_and_within_group_folds_return_it_too():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.a, self.b = nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x):
            return self.b(nnx.relu(self.a(x)))

    x = np.ones((2, 4), np.float32)
    out = jaxfold.fold_nnx(Net(nnx.Rngs(0)), 0.5, jax.random.key(0), x, **FAST)
    _check(out, {"a": 8})
    assert out.module is not None and out.module.a.out_features == 4, out.module_note

    cfg = models.build("llama", vocab_size=32, hidden_size=16, num_layers=1, num_heads=4, num_kv_heads=2,
                       intermediate_size=16)
    variables = cfg.init(jax.random.key(0))
    new_cfg, result = fold_within_groups(cfg, variables, 0.5, jax.random.key(1), **FAST)
    _check(result, {"block0.mlp": 16})
    assert result.config == new_cfg and result.widths["block0.attn"] == 1  # one query head per KV group
    assert result.channel_map["block0.attn"].tolist() == [0, 0, 1, 1]  # new head of every original query head


def test_former_names_are_aliases_and_copies_leave_the_original():
    from jaxfold.baselines.pruning import PruneResult
    from jaxfold.compress import CompressedModel, FoldedModel
    from jaxfold.folding import FoldResult
    from jaxfold.trace.traced_fold import TracedFold

    assert FoldResult is PruneResult is CompressedModel is FoldedModel is TracedFold is Compressed
    result = Compressed(variables={}, widths={"g": 1}, channel_map={"g": np.zeros(2, int)}, report={"seconds": 1.0})
    with pytest.raises(TypeError):  # keyword-only: the former types had different field orders
        Compressed({}, {"g": 1}, {"g": np.zeros(2, int)}, {})
    more = result.with_report(correction="none")
    assert more.report == {"seconds": 1.0, "correction": "none"} and result.report == {"seconds": 1.0}
    assert result.replace(widths={"g": 2}).widths == {"g": 2} and result.widths == {"g": 1}
