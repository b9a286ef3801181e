"""Measured size and FLOPs: parameter counts from the arrays equal the analytic ones on every zoo model; the traced
conv/dense count equals the analytic FLOPs; XLA's count is that of the taps off the padding plus a few flops per
activation (see jaxfold.measure); NNX models count the same as their linen twins."""

import itertools
import resource

import flax.linen as linen
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxfold import layout, measure, models

LLAMA = dict(vocab_size=96, hidden_size=32, num_layers=2, head_dim=8, intermediate_size=40)
ZOO = [
    models.mlp(in_channels=1, image_size=28, width=0.25),
    models.lenet5(),
    models.lenet5(in_channels=3, image_size=32),
    models.vgg11_bn(head="cifar", in_channels=1, width=0.125, image_size=28),
    models.vgg11_bn(head="imagenet", width=0.0625, image_size=64),
    models.resnet18(stem="cifar", in_channels=1, width=0.125, image_size=28),
    models.resnet18(stem="imagenet", num_classes=7, width=0.125, image_size=64),
    models.resnet50(stem="cifar", num_classes=100, width=0.125),
    models.resnet50(stem="imagenet", width=0.125, image_size=64),
]
LLAMAS = [models.llama(num_heads=4, num_kv_heads=kv, tie_word_embeddings=tied, **LLAMA)
          for kv in (4, 2) for tied in (False, True)]  # MHA and GQA, untied and tied


def _id(cfg):
    if cfg.arch == "llama":
        attn = "mha" if cfg.num_kv_heads == cfg.num_heads else "gqa"
        return f"llama-{attn}-{'tied' if cfg.tie_word_embeddings else 'untied'}"
    return f"{cfg.arch}-{getattr(cfg, 'stem', getattr(cfg, 'head', ''))}-{cfg.image_size}"


@pytest.mark.parametrize("cfg", ZOO + LLAMAS, ids=_id)
def test_param_count_equals_analytic(cfg):
    assert measure.param_count(cfg.abstract_variables()) == measure.config_param_count(cfg) == cfg.param_count()


def test_param_count_ignores_statistics_and_refuses_a_bare_tree():
    cfg = models.mlp(in_channels=1, image_size=8, width=0.01)
    variables = cfg.init(jax.random.key(0))  # real arrays, running statistics included
    assert "batch_stats" in variables and measure.param_count(variables) == cfg.param_count()
    assert measure.param_count({}) == 0
    with pytest.raises(ValueError, match="no 'params' collection"):
        measure.param_count(variables["params"])


@pytest.mark.parametrize("cfg", ZOO, ids=_id)
def test_traced_conv_dense_flops_equal_analytic(cfg):
    assert measure.config_flops(cfg) == cfg.flops()


@pytest.mark.parametrize("cfg", LLAMAS, ids=_id)
def test_traced_llama_flops_equal_analytic_with_context(cfg):
    # B sequences of T tokens: per token, every projection and lm_head, plus attention products over T keys
    b, t = 2, 8
    per_token = measure.matmul_flops(cfg.module().apply, cfg.abstract_variables(),
                                     jax.ShapeDtypeStruct((b, t), jnp.int32), batch_size=b * t)
    assert per_token == cfg.flops(context=t)
    assert measure.config_flops(cfg) == cfg.flops(context=1)  # forward_inputs: one token per sequence


@pytest.mark.parametrize("cfg", ZOO + LLAMAS[1:3], ids=_id)
def test_xla_flops_are_the_valid_taps_plus_elementwise(cfg):
    """XLA counts 2 flops per multiply-accumulate of the taps that land on the input, plus the elementwise ops.

    Measured on these tiny models: the unoptimised program is 1.009–1.06× the conv/dense part (bias, inference BN
    at 3 flops per element, ReLU, adds, pooling, norms, softmax), the compiled XLA:CPU program 1.009–1.11× (fusion
    may recompute an elementwise producer in two consumers). Bounds: 1.08× and 1.15×. Against the analytic count
    (padding taps included) XLA is below on padded CNNs (0.75× on the 28 px VGG, whose 3×3 convolutions on 3×3 and
    1×1 maps have 32/81 and 8/9 of their taps on padding) and above without padding (MLP, LeNet-32, LLaMA)."""
    apply_fn, args = measure.config_forward(cfg, batch_size=2)
    variables = cfg.abstract_variables()
    valid = measure.matmul_flops(apply_fn, variables, *args, padding_taps=False)
    lowered = measure.flops(apply_fn, variables, *args, compiled=False)
    compiled = measure.flops(apply_fn, variables, *args)
    assert valid <= lowered <= 1.08 * valid
    assert valid <= compiled <= 1.15 * valid
    analytic = cfg.flops(context=1) if cfg.arch == "llama" else cfg.flops()
    assert valid <= analytic
    if valid == analytic:  # no padding taps: XLA's count is the analytic one plus the elementwise ops
        assert analytic <= compiled


@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 0), (1, 3))])
@pytest.mark.parametrize(("strides", "dilation", "groups", "lhs_dilation"),
                         [(1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 1, 1), (2, 1, 2, 1), (1, 1, 1, 2)])
def test_valid_taps_are_what_xla_counts(padding, strides, dilation, groups, lhs_dilation):
    """A lone convolution has no elementwise ops: XLA's count is exactly 2 × MACs of the taps off the padding."""
    x, w = jax.ShapeDtypeStruct((2, 9, 7, 4), jnp.float32), jax.ShapeDtypeStruct((3, 3, 4 // groups, 6), jnp.float32)
    pads = padding if not isinstance(padding, str) else jax.lax.padtype_to_pads((9, 7), (3, 3), (strides,) * 2,
                                                                                  padding)

    def conv(w, x):
        return jax.lax.conv_general_dilated(x, w, (strides,) * 2, pads, lhs_dilation=(lhs_dilation,) * 2,
                                            rhs_dilation=(dilation,) * 2, feature_group_count=groups,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    out = jax.eval_shape(conv, w, x)
    every_tap = 2 * out.size * 3 * 3 * (4 // groups) / 2
    assert measure.matmul_flops(conv, w, x) == every_tap
    assert measure.matmul_flops(conv, w, x, padding_taps=False) == measure.flops(conv, w, x)
    assert measure.flops(conv, w, x) == measure.flops(conv, w, x, compiled=False)


def test_loops_and_branches():
    def fn(w, x):
        y = jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=3)[0]
        return jax.lax.cond(y.sum() > 0, lambda y: y @ w @ w, lambda y: y @ w, y)

    w, x = jax.ShapeDtypeStruct((5, 5), jnp.float32), jax.ShapeDtypeStruct((4, 5), jnp.float32)
    assert measure.matmul_flops(fn, w, x) == 2 * 5 * 5 * (3 + 2)  # per example (batch 4): 3 scan steps, costlier branch
    assert measure.matmul_flops(fn, w, x, batch_size=1) == 4 * 2 * 5 * 5 * 5


def test_cost_analysis_formats():
    assert measure.cost_flops({"flops": 6.0, "transcendentals": 2.0}) == 6.0
    assert measure.cost_flops([{"flops": 6.0}, {"flops": 1.0}]) == 7.0  # older JAX: one dict per program
    assert measure.cost_flops({"bytes accessed": 8.0}) == 0.0  # XLA omits zero properties
    with pytest.raises(NotImplementedError):
        measure.cost_flops(None)


def test_big_model_needs_no_memory():
    """A 4.3-billion-parameter dense layer (17 GB of float32) is counted from its shapes alone."""
    n = 1 << 16
    dense, x = linen.Dense(n, use_bias=False), jax.ShapeDtypeStruct((4, n), jnp.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    variables = jax.eval_shape(dense.init, jax.random.key(0), x)
    assert measure.param_count(variables) == n * n
    assert measure.flops(dense.apply, variables, x) == measure.matmul_flops(dense.apply, variables, x) == 2 * n * n
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1_000_000  # KiB: under 1 GB grew


# --- NNX twins of zoo models ------------------------------------------------------------------------------------
class NNXMLP(nnx.Module):
    """models.MLP in NNX: Linear → BatchNorm → ReLU per hidden layer, then the classifier."""

    def __init__(self, cfg: models.MLPConfig, rngs: nnx.Rngs) -> None:
        widths = (cfg.image_size**2 * cfg.in_channels, *cfg.hidden_widths)
        self.fc = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(widths)])
        self.bn = nnx.List([nnx.BatchNorm(w, use_running_average=True, momentum=0.9, epsilon=1e-5, rngs=rngs)
                            for w in cfg.hidden_widths])
        self.classifier = nnx.Linear(widths[-1], cfg.num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for fc, bn in zip(self.fc, self.bn, strict=True):
            x = nnx.relu(bn(fc(x)))
        return self.classifier(x)


class NNXLeNet(nnx.Module):
    """models.LeNet5 in NNX."""

    def __init__(self, cfg: models.LeNetConfig, rngs: nnx.Rngs) -> None:
        (c1, c2), (f1, f2) = cfg.conv_widths, cfg.fc_widths
        pad = (32 - cfg.image_size) // 2
        self.conv1 = nnx.Conv(cfg.in_channels, c1, (5, 5), padding=((pad, pad), (pad, pad)), rngs=rngs)
        self.conv2 = nnx.Conv(c1, c2, (5, 5), padding="VALID", rngs=rngs)
        self.fc1, self.fc2 = nnx.Linear(c2 * 25, f1, rngs=rngs), nnx.Linear(f1, f2, rngs=rngs)
        self.fc3 = nnx.Linear(f2, cfg.num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), (2, 2))
        x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), (2, 2)).reshape(x.shape[0], -1)
        return self.fc3(nnx.relu(self.fc2(nnx.relu(self.fc1(x)))))


@pytest.mark.parametrize(("cfg", "twin"), [(models.mlp(in_channels=1, image_size=28, width=0.25), NNXMLP),
                                           (models.lenet5(), NNXLeNet)], ids=["mlp", "lenet5"])
def test_nnx_counts_equal_linen(cfg, twin):
    model = nnx.eval_shape(lambda: twin(cfg, nnx.Rngs(0)))  # abstract: nothing allocated
    assert measure.param_count(model) == measure.param_count(nnx.state(model)) == cfg.param_count()
    assert measure.param_count(nnx.state(model, nnx.BatchStat)) == 0
    handle, variables = layout.to_variables(model)

    def forward(v, x):
        return layout.from_variables(handle, v)(x)

    linen_fn, args = measure.config_forward(cfg, batch_size=2)
    linen_vars = cfg.abstract_variables()
    assert measure.matmul_flops(forward, variables, *args) == measure.matmul_flops(linen_fn, linen_vars, *args) \
        == cfg.flops()
    assert measure.flops(forward, variables, *args) == measure.flops(linen_fn, linen_vars, *args)
