"""Architectures the zoo does not have (experiments/own_models.py), folded with zero spec code: the derived spec
has the expected groups and reasons, and a network widened with duplicated channels folds back losslessly to the
narrow one (same outputs, widths and parameter count), through ``fold_traced`` (linen) and ``fold_nnx`` (NNX)."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxfold
from experiments import own_models as om
from jaxfold import layout, measure, tree
from jaxfold.batch_stats import batchnorm_epsilons
from jaxfold.corrections import fold_ar

REPO = Path(__file__).resolve().parents[1]
HALF = lambda group, n: n // 2  # the plan that undoes a doubling
# Folding back a doubling: k-means finds the copies too (k-means++ never seeds at distance 0 from a chosen centre)
# but compiles once per group width, seconds each on a 2-core CPU; Ward merges the zero-distance pairs first, and
# compiles nothing. The fold, not the clusterer, is under test here; the README example runs k-means.
CLUSTERER = "ward" if importlib.util.find_spec("sklearn") else "kmeans"

# name → (builder, builder options, narrow width); the wide model is the builder at twice the width
LINEN = {
    "vit": (om.build_vit, {}, 1),
    "vit_flax_attention": (om.build_vit, {"attention": "flax", "pool": "mean", "depth": 1}, 1),
    "mobilenet": (om.build_mobilenet, {}, 1),
    "qwen_scan": (om.build_qwen_scan, {}, 2),  # 2 KV heads (at 1, the query heads of the one KV head fold instead)
}
LAYER_NORM = "reduced over by `reduce_sum` (e.g. a mean over features such as LayerNorm's or RMSNorm's)"


def _random(shapes, seed=0):
    """Random variables of the shapes of ``shapes`` (arrays or ``jax.ShapeDtypeStruct``; no init compiled): kernels
    at unit fan-in variance, perturbed scales and biases, random BN statistics, so that a mis-merged vector or
    statistic shows."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in tree.flatten(shapes).items():
        shape, name = np.shape(leaf), path.rsplit("/", 1)[-1]
        if name == "var":
            a = rng.uniform(0.5, 2.0, shape)
        elif name == "mean":
            a = rng.normal(0.0, 0.3, shape)
        elif name == "scale":
            a = 1.0 + rng.normal(0.0, 0.2, shape)
        elif name == "bias":
            a = rng.normal(0.0, 0.2, shape)
        else:
            a = rng.normal(0.0, 1.0, shape) / np.sqrt(max(1, int(np.prod(shape[:-1]))))
        out[path] = jnp.asarray(a, jnp.float32)
    return tree.unflatten(out)


def _widened(variables, spec):
    """Every group doubled: channel j and j + n are copies of channel j (consumer columns split)."""
    for group, n in spec.widths(variables).items():
        variables = jaxfold.duplicate_channels(variables, spec.group(group), np.tile(np.arange(n), 2))
    return variables


def _assert_close(a, b, what=""):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(1.0, float(np.abs(b).max()))
    assert a.shape == b.shape and float(np.abs(a - b).max()) <= 1e-5 * scale, f"{what}: max |Δ| {np.abs(a - b).max()}"


@nnx.jit
def _call(module, x):  # an NNX module called eagerly compiles each op
    return module(x)


def _folded_axes(spec):
    """(path, axis) → (group, role, block, repeat) of every axis that folds."""
    return {(m.path, m.axis): (g.name, m.role, m.block, m.repeat) for g in spec.groups for m in g.members}


@pytest.fixture(scope="module")
def linen_case():
    """``linen_case(name)``: (model, example_args, random variables, derived spec) at the narrow width, once."""
    cache = {}

    def get(name):
        if name not in cache:
            build, options, width = LINEN[name]
            model, args = build(width, **options)
            variables = _random(jax.eval_shape(model.init, jax.random.key(0), *args))
            cache[name] = model, args, variables, jaxfold.derive_spec(model.apply, variables, *args)
        return cache[name]

    return get


def _nnx_cnn(width):
    """The NNX CNN at ``width`` with random state (constructed abstractly: NNX's eager initialisers compile op by
    op, tens of seconds on a busy 2-core CPU), its example input and its variables."""
    x = om.example_images(2, 16, 1)  # build_nnx_cnn's
    handle, shapes = layout.to_variables(nnx.eval_shape(lambda: om.build_nnx_cnn(width)[0]))
    variables = _random(shapes, seed=width)
    return layout.from_variables(handle, variables), x, variables


@pytest.fixture(scope="module")
def nnx_case():
    """(module with random state, example input, its variables, derived spec) of the NNX CNN at width 1."""
    model, x, variables = _nnx_cnn(1)
    handle, _ = layout.to_variables(model)
    spec = jaxfold.derive_spec(lambda v, *a: layout.from_variables(handle, v)(*a), variables, x)
    return model, x, variables, spec


# --- what derives --------------------------------------------------------------------------------------------------
def test_vit_heads_and_mlp_fold_residual_stream_does_not(linen_case):
    _, _, variables, spec = linen_case("vit")
    axes = _folded_axes(spec)
    assert sorted(spec.names) == ["block0/attn/key", "block0/mlp_in", "block1/attn/key", "block1/mlp_in"]
    assert spec.widths(variables) == {"block0/attn/key": 2, "block0/mlp_in": 16, "block1/attn/key": 2,
                                      "block1/mlp_in": 16}
    for b in ("block0", "block1"):
        heads = {p: v for p, v in axes.items() if v[0] == f"{b}/attn/key"}
        assert heads == {  # one head = head_dim (4) rows of q, k, v and o, blocked
            (f"params/{b}/attn/{n}/kernel", 1): (f"{b}/attn/key", "producer", 4, 1) for n in ("query", "key", "value")
        } | {(f"params/{b}/attn/{n}/bias", 0): (f"{b}/attn/key", "vector", 4, 1) for n in ("query", "key", "value")
             } | {(f"params/{b}/attn/out/kernel", 0): (f"{b}/attn/key", "consumer", 4, 1)}
        assert axes[(f"params/{b}/mlp_in/kernel", 1)] == (f"{b}/mlp_in", "producer", 1, 1)
        assert axes[(f"params/{b}/mlp_out/kernel", 0)] == (f"{b}/mlp_in", "consumer", 1, 1)
        for path, axis in [(f"params/{b}/mlp_out/kernel", 1), (f"params/{b}/attn/out/bias", 0),
                           (f"params/{b}/ln1/scale", 0), (f"params/{b}/attn/query/kernel", 0)]:
            assert spec.reason(path, axis) == LAYER_NORM  # the residual stream: LayerNorm reduces over it
    assert spec.reason("params/patch_embed/kernel", 3) == LAYER_NORM
    assert spec.reason("params/pos_embed", 2) == LAYER_NORM
    assert spec.reason("params/patch_embed/kernel", 2) == "comes from the model's input"
    assert spec.reason("params/head/kernel", 1) == "reaches the model's output"
    assert "concatenated along" in spec.reason("params/pos_embed", 1)  # tokens: the class token is concatenated
    assert spec.norms == ()  # no BatchNorm: nothing for fold_ar to correct


def test_vit_with_flax_attention_heads_fold(linen_case):
    _, _, variables, spec = linen_case("vit_flax_attention")
    axes = _folded_axes(spec)
    assert sorted(spec.names) == ["block0/attn/key", "block0/mlp_in"]
    assert spec.widths(variables)["block0/attn/key"] == 2
    # DenseGeneral keeps heads an axis of its own: (d, heads, head_dim) in, (heads, head_dim, d) out
    for n in ("query", "key", "value"):
        assert axes[(f"params/block0/attn/{n}/kernel", 1)] == ("block0/attn/key", "producer", 1, 1)
    assert axes[("params/block0/attn/out/kernel", 0)] == ("block0/attn/key", "consumer", 1, 1)
    assert "contracted between two activations" in spec.reason("params/block0/attn/query/kernel", 2)
    assert "produces along an outer axis in another group" in spec.reason("params/block0/attn/out/kernel", 1)
    assert spec.reason("params/pos_embed", 1) == "a spatial axis of a convolution's output"  # mean pooling


def test_mobilenet_expansions_and_residual_streams_fold(linen_case):
    _, _, variables, spec = linen_case("mobilenet")
    axes = _folded_axes(spec)
    group = lambda path, axis: axes[(f"params/{path}/kernel", axis)][0]
    for b in (1, 2, 3, 4):  # expansion width: expand conv, depthwise conv, project conv's input, two BNs
        g = group(f"block{b}/expand", 3)
        assert g == group(f"block{b}/depthwise", 3) == group(f"block{b}/project", 2)
        assert axes[(f"params/block{b}/depthwise/kernel", 3)][1] == "producer"
        assert {p for (p, _), v in axes.items() if v[0] == g} == {
            f"params/block{b}/{c}/kernel" for c in ("expand", "depthwise", "project")} | {
            f"{c}/block{b}/{bn}_bn/{leaf}" for c, leaves in (("params", ("scale", "bias")),
                                                             ("batch_stats", ("mean", "var")))
            for leaf in leaves for bn in ("expand", "depthwise")}
        assert spec.reason(f"params/block{b}/depthwise/kernel", 2) == "size 1"
        assert spec.reason(f"params/block{b}/depthwise/kernel", 0) == "a convolution kernel's window"
    # block 0 (expansion 1) has no expand conv: its depthwise conv runs on the stem's channels
    assert group("stem", 3) == group("block0/depthwise", 3) == group("block0/project", 2)
    # residual streams: a stage's blocks add onto one stream, which the next stage's expand conv reads
    assert group("block0/project", 3) == group("block1/expand", 2)
    assert group("block1/project", 3) == group("block2/project", 3) == group("block2/expand", 2) \
        == group("block3/expand", 2)
    assert group("block3/project", 3) == group("block4/project", 3) == group("block4/expand", 2) == group("last", 2)
    assert axes[("params/classifier/kernel", 0)] == (group("last", 3), "consumer", 1, 1)
    assert len(spec.groups) == 9 and len(set(spec.widths(variables).values())) > 1
    assert spec.reason("params/stem/kernel", 2) == "comes from the model's input"
    assert spec.reason("params/classifier/kernel", 1) == "reaches the model's output"
    assert ("block2/depthwise", "block2/depthwise_bn") in spec.norms and len(spec.norms) == 16


def test_qwen_scan_kv_groups_and_mlp_fold_across_the_stack(linen_case):
    _, _, variables, spec = linen_case("qwen_scan")
    axes = _folded_axes(spec)
    assert sorted(spec.names) == ["layers/gate_proj", "layers/k_proj"]
    # one group per kind for all scanned layers: the variables are stacked (layer, …) and fold on a later axis
    assert spec.widths(variables) == {"layers/k_proj": 2, "layers/gate_proj": 16}
    heads = {p: v[1:] for p, v in axes.items() if v[0] == "layers/k_proj"}
    assert heads == {  # a unit is one KV group: its k/v head (4 rows) and its 2 query heads (8 rows)
        ("params/layers/k_proj/kernel", 2): ("producer", 4, 1), ("params/layers/k_proj/bias", 1): ("vector", 4, 1),
        ("params/layers/v_proj/kernel", 2): ("producer", 4, 1), ("params/layers/v_proj/bias", 1): ("vector", 4, 1),
        ("params/layers/q_proj/kernel", 2): ("producer", 8, 1), ("params/layers/q_proj/bias", 1): ("vector", 8, 1),
        ("params/layers/o_proj/kernel", 1): ("consumer", 8, 1)}
    assert {p: v[1] for p, v in axes.items() if v[0] == "layers/gate_proj"} == {
        ("params/layers/gate_proj/kernel", 2): "producer", ("params/layers/up_proj/kernel", 2): "producer",
        ("params/layers/down_proj/kernel", 1): "consumer"}
    for path in ("layers/q_proj/kernel", "layers/q_proj/bias", "layers/down_proj/kernel", "layers/input_norm/scale"):
        assert spec.reason(f"params/{path}", 0) == "the axis a scan iterates over"
    assert spec.reason("params/layers/down_proj/kernel", 2) == LAYER_NORM  # RMSNorm
    assert spec.reason("params/embed_tokens/embedding", 0).startswith("indexed (gather")
    assert spec.reason("params/lm_head/kernel", 1) == "reaches the model's output"
    assert spec.norms == ()


def test_qwen_scan_with_one_kv_head_folds_its_query_heads():
    model, args = om.build_qwen_scan(1)
    variables = _random(jax.eval_shape(model.init, jax.random.key(0), *args))
    spec = jaxfold.derive_spec(model.apply, variables, *args)
    assert spec.widths(variables) == {"layers/q_proj": 2, "layers/gate_proj": 8}
    assert {(m.path, m.axis, m.block) for m in spec.group("layers/q_proj").members} == {
        ("params/layers/q_proj/kernel", 2, 4), ("params/layers/q_proj/bias", 1, 4),
        ("params/layers/o_proj/kernel", 1, 4)}
    assert "concatenated along" in spec.reason("params/layers/k_proj/kernel", 2)  # head_dim only (RoPE's halves)


def test_nnx_cnn_groups(nnx_case):
    _, _, variables, spec = nnx_case
    axes = _folded_axes(spec)
    assert spec.widths(variables) == {"conv1": 4, "conv2": 8, "fc1": 16}
    assert {p for (p, _), v in axes.items() if v[0] == "conv1"} == {
        "params/conv1/kernel", "params/conv1/bias", "params/bn1/scale", "params/bn1/bias", "batch_stats/bn1/mean",
        "batch_stats/bn1/var", "params/conv2/kernel"}
    assert axes[("params/fc1/kernel", 0)] == ("conv2", "consumer", 1, 16)  # NHWC flatten: 4×4 positions interleaved
    assert axes[("params/fc2/kernel", 0)] == ("fc1", "consumer", 1, 1)
    assert spec.reason("params/fc2/kernel", 1) == "reaches the model's output"
    assert spec.norms == (("conv1", "bn1"), ("conv2", "bn2"))


# --- duplicated channels fold back losslessly ----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(LINEN))
def test_linen_widened_model_folds_back_losslessly(linen_case, name):
    model, args, variables, spec = linen_case(name)
    build, options, width = LINEN[name]
    wide_model, _ = build(2 * width, **options)
    widened = _widened(variables, spec)
    assert tree.compare(jax.eval_shape(wide_model.init, jax.random.key(0), *args), widened) == []
    reference = jax.jit(model.apply)(variables, *args)
    _assert_close(jax.jit(wide_model.apply)(widened, *args), reference, "widened model")

    # verify=False: the narrow spec passed the permutation check, and folding back losslessly is the stronger test
    result = jaxfold.fold_traced(wide_model.apply, widened, HALF, jax.random.key(1), *args, verify=False,
                                 clusterer=CLUSTERER)
    assert result.widths == spec.widths(variables)
    assert tree.compare(variables, result.variables) == []
    _assert_close(result.apply_fn(result.variables, *args), reference, "folded model")
    assert measure.param_count(result.variables) == measure.param_count(variables)
    assert result.report["param_sparsity"] > 0


def test_nnx_widened_module_folds_back_to_a_new_module(nnx_case):
    model, x, variables, spec = nnx_case
    widened = _widened(variables, spec)
    wide, _, wide_variables = _nnx_cnn(2)
    assert tree.compare(wide_variables, widened) == []
    wide = layout.from_variables(layout.to_variables(wide)[0], widened)
    reference = _call(model, x)
    _assert_close(_call(wide, x), reference, "widened module")

    result = jaxfold.fold_nnx(wide, HALF, jax.random.key(1), x, clusterer=CLUSTERER)
    assert result.widths == spec.widths(variables)
    new = result.module
    assert new is not None, result.module_note
    assert (new.conv1.out_features, new.bn1.num_features, new.conv2.in_features, new.conv2.out_features,
            new.bn2.num_features, new.fc1.in_features, new.fc1.out_features, new.fc2.in_features) == (
        4, 4, 4, 8, 8, 8 * 16, 16, 16)
    _assert_close(_call(new, x), reference, "folded module")
    _assert_close(result.apply_fn(result.variables, x), reference, "folded function")
    assert measure.param_count(new) == measure.param_count(model) == measure.param_count(result.variables)
    _assert_close(_call(wide, x), reference, "the input module after folding")  # untouched


def test_conv_from_a_stream_onto_itself_folds():
    """MobileNetV2 with equal stem and first-block widths: block 0's project conv reads and writes the stem's stream,
    so both its kernel axes are in one group, and permute_group / duplicate_channels / fold apply both."""
    model = om.MobileNetV2(stem=4, stages=((1, 4, 1, 1),), last=8)
    x = om.example_images(2, 8, 3)
    variables = _random(jax.eval_shape(model.init, jax.random.key(0), x))
    members = [("params/stem/kernel", 3), ("params/block0/project/kernel", 2), ("params/block0/project/kernel", 3)]
    unverified = jaxfold.derive_spec(model.apply, variables, x, verify=False)
    group = unverified.group(_folded_axes(unverified)[members[0]][0])
    assert {(m.path, m.axis) for m in group.members} >= set(members)
    # the group is right: its permutation, done by hand on each member's own axis in turn, changes nothing
    perm, flat = np.array([2, 0, 3, 1]), tree.flatten(variables)
    for m in group.members:
        flat[m.path] = np.take(np.asarray(flat[m.path]), perm, axis=m.axis)
    apply = jax.jit(model.apply)
    _assert_close(apply(tree.unflatten(flat), x), apply(variables, x), "permuted by hand")

    spec = jaxfold.derive_spec(model.apply, variables, x)  # with the permutation check
    folded = _folded_axes(spec)
    assert all(m in folded for m in members), spec.reason(*members[0])
    wide = om.MobileNetV2(stem=8, stages=((1, 8, 1, 1),), last=16)
    widened = _widened(variables, spec)
    _assert_close(jax.jit(wide.apply)(widened, x), apply(variables, x), "widened model")
    result = jaxfold.fold_traced(wide.apply, widened, HALF, jax.random.key(1), x, clusterer=CLUSTERER)
    assert tree.compare(variables, result.variables) == []


# --- corrections on a derived spec ---------------------------------------------------------------------------------
def _fuse_preserves_function(apply_fn, variables, spec, epsilons, *args):
    fused = fold_ar.fuse_batchnorm(variables, spec, epsilons)
    assert tree.compare(variables, fused) == []
    _assert_close(apply_fn(fused, *args), apply_fn(variables, *args), "BN fused into its producer")


def test_derived_norms_fuse_exactly_mobilenet(linen_case):
    """Fold-AR's spec-level step (BN fused into the producer the derived ``norms`` pair it with) is exact. The
    registered correction itself needs a ModelConfig (``config.module()`` and ``config.input_shape`` for the BN
    epsilons), which a traced model has not."""
    model, args, variables, spec = linen_case("mobilenet")
    epsilons = batchnorm_epsilons(model, variables, args[0].shape[1:])  # takes the linen module, not a config
    _fuse_preserves_function(jax.jit(model.apply), variables, spec, epsilons, *args)


def test_derived_norms_fuse_exactly_nnx(nnx_case):
    model, x, variables, spec = nnx_case
    epsilons = {"/".join(map(str, path)): m.epsilon for path, m in nnx.iter_modules(model)
                if isinstance(m, nnx.BatchNorm)}
    handle, _ = layout.to_variables(model)
    _fuse_preserves_function(lambda v, a: layout.from_variables(handle, v)(a), variables, spec, epsilons, x)


# --- the README example ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_readme_example_runs_as_written():
    readme = (REPO / "README.md").read_text()
    text = readme.split("## Fold your own model", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1 and len(blocks[0].splitlines()) <= 30
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", blocks[0]], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "param_sparsity" in run.stdout and "widths" in run.stdout, run.stdout
