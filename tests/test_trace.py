"""Fold specs derived by tracing: equal to the hand-written ones on the zoo, reasons for what cannot fold, escape
hatches, the permutation check, and the folded forward rebuilt from the program."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxfold import derive_spec, fold_nnx, fold_traced, models
from jaxfold.spec import Member
from jaxfold.trace import TraceError, rules


def _round_robin(features, k, key):
    """A clusterer that compiles nothing (channel i → cluster i mod k): these tests are about the spec and the
    rebuilt program, k-means is tested elsewhere."""
    return np.arange(features.shape[0]) % k


def _equal_rows(features, k, key):
    """Channels with identical features share a cluster (what k-means finds on exact duplicates, without its
    compilation; k-means' own lossless fold is tested in test_fold)."""
    labels = np.unique(np.asarray(features), axis=0, return_inverse=True)[1].reshape(-1)
    assert labels.max() + 1 == k
    return labels


FAST = {"clusterer": _round_robin}

ZOO = {
    "mlp": dict(name="mlp", in_channels=1, image_size=8, width=0.05),
    "lenet5": dict(name="lenet5", in_channels=1),
    "vgg11_bn": dict(name="vgg11_bn", in_channels=1, image_size=32, width=0.0625),
    "vgg11_bn_imagenet_head": dict(name="vgg11_bn", head="imagenet", in_channels=1, image_size=32, width=0.0625),
    "resnet18_cifar": dict(name="resnet18", in_channels=1, image_size=8, width=0.125),
    "resnet18_imagenet": dict(name="resnet18", stem="imagenet", in_channels=3, image_size=32, width=0.125),
    "resnet50_cifar": dict(name="resnet50", in_channels=1, image_size=8, width=0.0625),
    "resnet50_imagenet": dict(name="resnet50", stem="imagenet", in_channels=3, image_size=32, width=0.0625),
    "llama_mha_tied": dict(name="llama", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=4,
                           intermediate_size=48, tie_word_embeddings=True),
    "llama_gqa_tied": dict(name="llama", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                           intermediate_size=48, tie_word_embeddings=True),
    "llama_gqa_untied": dict(name="llama", vocab_size=64, hidden_size=32, num_layers=2, num_heads=6, num_kv_heads=2,
                             head_dim=8, intermediate_size=48),
}


def _zoo(name):
    kwargs = dict(ZOO[name])
    cfg = models.build(kwargs.pop("name"), **kwargs)
    module = cfg.module()
    if cfg.arch == "llama":
        return cfg, module.apply, (jnp.arange(16, dtype=jnp.int32).reshape(2, 8) % cfg.vocab_size,)
    x = jax.random.normal(jax.random.key(3), (2, *cfg.input_shape))
    return cfg, functools.partial(module.apply, train=False), (x,)


def _canonical(spec):
    return {frozenset((m.path, m.axis % 8, m.role, m.block, m.repeat) for m in g.members) for g in spec.groups}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_derived_spec_equals_the_handwritten_one(name):
    """Group for group (members, axes, roles, blocks), the same unfoldable axes and BatchNorm pairs, up to names —
    derived from abstract variables (nothing allocated)."""
    cfg, apply_fn, args = _zoo(name)
    derived = derive_spec(apply_fn, cfg.abstract_variables(), *args)
    written = cfg.fold_spec()
    assert _canonical(derived) == _canonical(written)
    assert set(derived.unfoldable) == set(written.unfoldable)
    assert set(derived.norms) == set(written.norms)
    assert {(p, a) for p, a, _ in derived.reasons} == set(derived.unfoldable)  # a reason for every one
    derived.check(cfg.abstract_variables())


def test_reasons_name_what_stops_a_group():
    cfg, apply_fn, args = _zoo("llama_gqa_untied")
    spec = derive_spec(apply_fn, cfg.abstract_variables(), *args)
    assert "reduced over" in spec.reason("params/block_0/attn_norm/scale", 0)  # the residual stream (RMSNorm)
    assert "indexed" in spec.reason("params/embed/embedding", 0)
    assert "output" in spec.reason("params/lm_head/kernel", 1)
    # q = [KV group, head in group, head_dim]: the KV group folds as a block; head_dim meets the other activation
    q = next(m for g in spec.groups for m in g.members if m.path == "params/block_0/attn/q/kernel")
    assert (q.axis, q.role, q.block) == (1, "producer", 3 * 8)
    cnn, cnn_apply, cnn_args = _zoo("resnet18_imagenet")
    cnn_spec = derive_spec(cnn_apply, cnn.abstract_variables(), *cnn_args)
    assert "input" in cnn_spec.reason("params/conv1/kernel", 2)
    assert "window" in cnn_spec.reason("params/conv1/kernel", 0)


def test_permutation_check_passes_on_the_zoo_and_catches_a_wrong_rule():
    cfg, apply_fn, args = _zoo("mlp")
    variables = cfg.init(jax.random.key(0))
    assert len(derive_spec(apply_fn, variables, *args, verify=True).groups) == len(cfg.fold_spec().groups)

    def reversed_mlp(v, x):  # a channel reversal between two layers: rev is not element-wise
        h = jax.nn.relu(x @ v["params"]["w1"])
        return jnp.flip(h, axis=-1) @ v["params"]["w2"]

    v = {"params": {"w1": jax.random.normal(jax.random.key(1), (4, 6)),
                    "w2": jax.random.normal(jax.random.key(2), (6, 3))}}
    x = jax.random.normal(jax.random.key(3), (5, 4))
    assert "reversed" in derive_spec(reversed_mlp, v, x).reason("params/w1", 1)
    wrong = derive_spec(reversed_mlp, v, x, rules={"rev": rules.unary}, verify=False)
    assert len(wrong.groups) == 1  # the wrong rule makes a group …
    checked = derive_spec(reversed_mlp, v, x, rules={"rev": rules.unary})
    assert not checked.groups and "permuting its channels changed the outputs" in checked.reason("params/w1", 1)


class _LayerNormMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(8, name="embed")(x)
        h = nn.Dense(12, name="up")(nn.LayerNorm(name="norm")(x))
        return nn.Dense(3, name="head")(x + nn.Dense(8, name="down")(nn.gelu(h)))


def test_escape_hatches_override_drop_and_mark_unfoldable():
    module = _LayerNormMLP()
    x = jnp.ones((2, 5))
    variables = module.init(jax.random.key(0), x)
    spec = derive_spec(module.apply, variables, x)
    assert spec.names == ("up",)
    assert "LayerNorm" in spec.reason("params/embed/kernel", 1)
    dropped = derive_spec(module.apply, variables, x, overrides={"up": None}, verify=False)
    assert not dropped.groups and "dropped by overrides" in dropped.reason("params/up/kernel", 1)
    marked = derive_spec(module.apply, variables, x, unfoldable=[("params/down/kernel", 0)], verify=False)
    assert not marked.groups and "marked unfoldable" in marked.reason("params/up/bias", 0)
    with pytest.raises(ValueError, match="does not have"):
        derive_spec(module.apply, variables, x, overrides={"nope": None}, verify=False)
    with pytest.raises(ValueError, match="not a variable axis"):
        derive_spec(module.apply, variables, x, unfoldable=[("params/nope/kernel", 0)], verify=False)
    # replace a group by your own: the down projection's bias-free consumer only, up's kernel as producer
    own = spec.group("up").__class__("mine", (Member("params/up/kernel", 1, "producer"),
                                              Member("params/up/bias", 0, "vector"),
                                              Member("params/down/kernel", 0, "consumer")))
    assert derive_spec(module.apply, variables, x, overrides={"up": own}, verify=False).names == ("mine",)


# a user primitive: an element-wise op the tracer has no rule for
_square_p = jax.extend.core.Primitive("my_square")
_square_p.def_impl(lambda x: x * x)
_square_p.def_abstract_eval(lambda x: jax.core.ShapedArray(x.shape, x.dtype))
jax.interpreters.mlir.register_lowering(_square_p, jax.interpreters.mlir.lower_fun(lambda x: x * x, False))


def test_a_user_primitive_poisons_until_given_a_rule_then_folds():
    def net(v, x):
        return _square_p.bind(x @ v["params"]["w1"]) @ v["params"]["w2"]

    v = {"params": {"w1": jax.random.normal(jax.random.key(1), (4, 6)),
                    "w2": jax.random.normal(jax.random.key(2), (6, 3))}}
    x = jax.random.normal(jax.random.key(3), (5, 4))
    assert "my_square" in derive_spec(net, v, x).reason("params/w1", 1)
    folded = fold_traced(net, v, 0.5, jax.random.key(0), x, rules={"my_square": rules.unary}, **FAST)
    assert folded.widths == {"w1": 3}
    out = folded.apply_fn(folded.variables, x)
    np.testing.assert_allclose(out, net(folded.variables, x), rtol=1e-5)  # the plain function runs it too
    again = fold_traced(net, v, 0.5, jax.random.key(0), x, rules={"my_square": rules.unary}, spec=folded.spec,
                        **FAST)  # the spec derived once, reused: nothing traced until the first call
    np.testing.assert_array_equal(again.variables["params"]["w1"], folded.variables["params"]["w1"])
    np.testing.assert_allclose(again.apply_fn(again.variables, x), out, rtol=1e-6)


def test_bad_inputs_get_clear_errors():
    cfg, apply_fn, _ = _zoo("mlp")
    variables = cfg.init(jax.random.key(0))
    with pytest.raises(TraceError, match="example inputs"):
        derive_spec(apply_fn, variables, jnp.ones((2, 3, 3, 7)))
    with pytest.raises(ValueError, match="unknown groups"):
        fold_traced(apply_fn, variables, {"nope": 0.5}, jax.random.key(0), jnp.ones((2, *cfg.input_shape)))
    with pytest.raises(ValueError, match="concrete"):
        derive_spec(apply_fn, cfg.abstract_variables(), jnp.ones((2, *cfg.input_shape)), verify=True)


@pytest.mark.parametrize("name", ["mlp", "lenet5", "resnet18_cifar", "llama_gqa_untied"])
def test_folded_function_equals_the_config_rebuilt_model(name):
    """The re-evaluated program at the folded widths computes what the zoo's rebuilt module computes."""
    cfg, apply_fn, args = _zoo(name)
    variables = cfg.init(jax.random.key(0))
    folded = fold_traced(apply_fn, variables, 0.5, jax.random.key(1), *args, verify=False, **FAST)
    by_members = {frozenset((m.path, m.axis) for m in g.members): g.name for g in cfg.fold_spec().groups}
    widths = {by_members[frozenset((m.path, m.axis) for m in g.members)]: folded.widths[g.name]
              for g in folded.spec.groups}
    rebuilt = cfg.with_widths(widths)
    kwargs = {} if cfg.arch == "llama" else {"train": False}
    expected = rebuilt.module().apply(folded.variables, *args, **kwargs)
    np.testing.assert_allclose(folded.apply_fn(folded.variables, *args), expected, rtol=1e-5, atol=1e-5)
    assert folded.report["params_after"] == rebuilt.param_count()
    if cfg.arch == "mlp":  # another batch size: traced again for that shape
        x = jnp.concatenate([args[0], args[0], args[0]])
        np.testing.assert_allclose(folded.apply_fn(folded.variables, x),
                                   rebuilt.module().apply(folded.variables, x, **kwargs), rtol=1e-5, atol=1e-5)


def test_duplicated_channels_fold_back_losslessly_through_the_trace():
    from jaxfold import duplicate_channels

    cfg, apply_fn, args = _zoo("lenet5")
    narrow = cfg.init(jax.random.key(0))
    wide, spec = narrow, cfg.fold_spec()
    for group in spec.groups:
        n = spec.widths(narrow)[group.name]
        wide = duplicate_channels(wide, group, np.concatenate([np.arange(n), np.arange(n)]))
    wide_cfg = cfg.with_widths({g.name: 2 * n for g, n in zip(spec.groups, spec.widths(narrow).values(),
                                                               strict=True)})
    wide_apply = functools.partial(wide_cfg.module().apply, train=False)
    folded = fold_traced(wide_apply, wide, lambda g, n: n // 2, jax.random.key(1), *args, clusterer=_equal_rows)
    np.testing.assert_allclose(folded.apply_fn(folded.variables, *args), apply_fn(narrow, *args),
                               rtol=1e-4, atol=1e-4)
    assert all(r["inertia"] < 1e-6 for r in folded.report["groups"])


def test_scan_and_cond_programs_fold_and_rebuild():
    """A functional layer stack under lax.scan (one group spans the stacked layers) inside a lax.cond."""
    def net(v, x):
        def layer(h, w):
            return h + jax.nn.relu(h @ w["up"] + w["b"][None]) @ w["down"], None

        y = jax.lax.scan(layer, x @ v["params"]["embed"], v["params"]["stack"])[0]
        y = jax.lax.cond(x.sum() > 0, lambda a: a, lambda a: -a, y)
        return jnp.tanh(y) @ v["params"]["head"]

    k = jax.random.split(jax.random.key(0), 5)
    v = {"params": {"embed": jax.random.normal(k[0], (4, 6)), "head": jax.random.normal(k[1], (6, 2)),
                    "stack": {"up": jax.random.normal(k[2], (3, 6, 10)), "b": jax.random.normal(k[3], (3, 10)),
                              "down": jax.random.normal(k[4], (3, 10, 6)) * 0.1}}}
    x = jax.random.normal(jax.random.key(5), (5, 4))
    spec = derive_spec(net, v, x)
    hidden = {(m.path, m.axis, m.role) for m in spec.group("stack").members}
    assert hidden == {("params/stack/up", 2, "producer"), ("params/stack/b", 1, "vector"),
                      ("params/stack/down", 1, "consumer")}
    assert "scan iterates" in spec.reason("params/stack/up", 0)
    folded = fold_traced(net, v, 0.5, jax.random.key(1), x, **FAST)
    stream = spec.names[0]  # the residual stream is a group too (the model's output is tanh(·) @ head)
    assert folded.widths == {stream: 3, "stack": 5}
    assert folded.variables["params"]["stack"]["up"].shape == (3, 3, 5)
    np.testing.assert_allclose(folded.apply_fn(folded.variables, x), net(folded.variables, x), rtol=1e-5)


class _Attention(nnx.Module):
    def __init__(self, rngs, heads=4, width=16):
        self.embed = nnx.Linear(4, width, rngs=rngs)
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(num_heads=heads, in_features=width, decode=False, rngs=rngs)
        self.head = nnx.Linear(width, 3, rngs=rngs)

    def __call__(self, x):
        h = self.embed(x)
        return self.head(h + self.attention(self.norm(h)))


def test_fold_nnx_returns_a_module_at_the_new_widths():
    model = _Attention(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 5, 4))
    before = model(x)
    folded = fold_nnx(model, 0.5, jax.random.key(2), x, **FAST)
    assert folded.module is not None, folded.module_note
    assert folded.module.attention.num_heads == 2 and model.attention.num_heads == 4  # the input is untouched
    assert folded.module.attention.query.kernel[...].shape == (16, 2, 4)
    np.testing.assert_allclose(folded.module(x), folded.apply_fn(folded.variables, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model(x), before)
    assert "reduced over" in folded.spec.reason("params/embed/kernel", 1)  # the stream meets LayerNorm
    assert "activations" in folded.spec.reason("params/attention/query/kernel", 2)  # head_dim: q·k
    with pytest.raises(TypeError, match="nnx.Module"):
        fold_nnx({"params": {}}, 0.5, jax.random.key(0), x)


def test_fold_ar_on_a_traced_model_equals_the_zoo_correction():
    """Fold-AR needs only the spec and each BatchNorm's ε, read off the program: on ResNet18 the traced fold with
    the correction computes what fold_model's does; BN-free models and training-mode corrections get clear errors."""
    from jaxfold import fold_model, tree

    cfg, apply_fn, args = _zoo("resnet18_cifar")
    flat, rng = tree.flatten(cfg.init(jax.random.key(0))), np.random.default_rng(0)
    for path in flat:  # running statistics away from (0, 1), so the fusion matters
        if path.endswith("/var"):
            flat[path] = rng.uniform(0.5, 2.0, flat[path].shape).astype(np.float32)
        elif path.endswith("/mean"):
            flat[path] = rng.normal(0.0, 0.3, flat[path].shape).astype(np.float32)
    variables = tree.unflatten(flat)
    zoo = fold_model(cfg, variables, 0.5, jax.random.key(2), correction="fold_ar", **FAST)
    traced = fold_traced(apply_fn, variables, 0.5, jax.random.key(2), *args, correction="fold_ar", verify=False,
                         **FAST)
    assert traced.report["correction"] == "fold_ar" and traced.report["uncorrected_groups"] == []
    np.testing.assert_allclose(traced.apply_fn(traced.variables, *args),
                               zoo.config.module().apply(zoo.variables, *args, train=False), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="not available on a traced model"):
        fold_traced(apply_fn, variables, 0.5, jax.random.key(2), *args, correction="refit", **FAST)
    with pytest.raises(ValueError, match="needs data"):
        fold_traced(apply_fn, variables, 0.5, jax.random.key(2), *args, correction="repair", **FAST)
    module, x = _LayerNormMLP(), jnp.ones((2, 5))
    with pytest.raises(ValueError, match="needs BatchNorm"):
        fold_traced(module.apply, module.init(jax.random.key(0), x), 0.5, jax.random.key(0), x,
                    correction="fold_ar", **FAST)


def test_repair_on_a_traced_model_equals_the_zoo_correction():
    """REPAIR from the inference program (each BatchNorm's running statistics replaced by its input's batch
    statistics, in an order where that input comes first) recomputes what the training-mode module does."""
    from jaxfold import fold_model, tree

    cfg, apply_fn, args = _zoo("resnet18_cifar")
    variables = cfg.init(jax.random.key(0))
    batches = [np.asarray(jax.random.normal(jax.random.key(i), (16, *cfg.input_shape))) for i in range(3)]
    zoo = fold_model(cfg, variables, 0.5, jax.random.key(2), correction="repair", data=lambda: batches, **FAST)
    traced = fold_traced(apply_fn, variables, 0.5, jax.random.key(2), *args, correction="repair",
                         data=lambda: batches, verify=False, **FAST)
    expected, got = tree.flatten(zoo.variables), tree.flatten(traced.variables)
    assert set(expected) == set(got)
    for path in expected:
        np.testing.assert_allclose(got[path], expected[path], rtol=1e-4, atol=1e-5, err_msg=path)
    assert traced.report["uncorrected_groups"] == []


def test_fold_dir_on_a_traced_model_equals_the_zoo_correction(tmp_path):
    """Fold-DIR through the program: DeepInversion matches each BatchNorm input's statistics (read off the program)
    to its running ones, then REPAIR runs on that batch. On the MLP (Linear-BN-ReLU) the synthetic batch and the
    folded model are the zoo correction's; the batch is cached (a second fold reads it); a BN-free model gets a
    clear error."""
    from jaxfold import fold_model

    cfg, apply_fn, args = _zoo("mlp")
    variables = cfg.init(jax.random.key(0))
    options = dict(di_steps=3, di_batch_size=4, cache_dir=str(tmp_path / "zoo"))
    zoo = fold_model(cfg, variables, 0.5, jax.random.key(2), correction="fold_dir", correction_options=options,
                     **FAST)
    traced_options = dict(options, cache_dir=str(tmp_path / "traced"))
    traced = fold_traced(apply_fn, variables, 0.5, jax.random.key(2), *args, correction="fold_dir", verify=False,
                         correction_options=traced_options, **FAST)
    (zoo_file,), (traced_file,) = (tmp_path / "zoo").iterdir(), (tmp_path / "traced").iterdir()
    np.testing.assert_allclose(np.load(traced_file), np.load(zoo_file), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(traced.apply_fn(traced.variables, *args),
                               zoo.config.module().apply(zoo.variables, *args, train=False), rtol=2e-3, atol=2e-3)
    again = fold_traced(apply_fn, variables, 0.25, jax.random.key(2), *args, correction="fold_dir", verify=False,
                        spec=traced.spec, correction_options=traced_options, **FAST)
    assert again.report["correction"] == "fold_dir" and len(list((tmp_path / "traced").iterdir())) == 1
    module, x = _LayerNormMLP(), jnp.ones((2, 5))
    with pytest.raises(ValueError, match="no BatchNorm"):
        fold_traced(module.apply, module.init(jax.random.key(0), x), 0.5, jax.random.key(0), x,
                    correction="fold_dir", correction_options=traced_options, **FAST)
