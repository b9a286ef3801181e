"""Models: analytic parameter counts equal real ones (and the published references), widths rebuild models."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfold import models, tree

REFERENCE_COUNTS = [
    # torchvision's published numbers, and the CIFAR ResNet18 of the paper's code.
    ("resnet18", dict(stem="imagenet", num_classes=1000), 11_689_512),
    ("resnet18", dict(stem="cifar", num_classes=10), 11_173_962),
    ("resnet50", dict(stem="imagenet", num_classes=1000), 25_557_032),
    ("vgg11_bn", dict(head="imagenet", num_classes=1000), 132_868_840),
]


@pytest.mark.parametrize(("name", "kwargs", "expected"), REFERENCE_COUNTS)
def test_reference_param_counts(name, kwargs, expected):
    cfg = models.build(name, **kwargs)
    assert cfg.param_count() == expected
    assert tree.count(cfg.abstract_variables()["params"]) == expected


def _irregular(cfg):
    """Unequal widths everywhere, as a fold would leave them."""
    if isinstance(cfg, models.ResNetConfig):
        inner = tuple(tuple(max(1, w - 1 - i % 3) for w in ws) for i, ws in enumerate(cfg.inner_widths))
        streams = tuple(w - s for s, w in enumerate(cfg.stream_widths))
        stem = streams[0] if not cfg.projections[0] else cfg.stem_width - 3
        return cfg.replace(inner_widths=inner, stream_widths=streams, stem_width=stem)
    if isinstance(cfg, models.VGGConfig):
        return cfg.replace(conv_widths=[w - i for i, w in enumerate(cfg.conv_widths)],
                           classifier_widths=[w - 3 for w in cfg.classifier_widths])
    if isinstance(cfg, models.MLPConfig):
        return cfg.replace(hidden_widths=(17, 9, 30))
    return cfg.replace(conv_widths=(5, 11), fc_widths=(33, 20))


CONFIGS = [
    models.resnet18(stem="cifar", in_channels=1, width=0.125, image_size=28),
    models.resnet18(stem="imagenet", num_classes=7, width=0.125, image_size=64),
    models.resnet50(stem="cifar", num_classes=100, width=0.125),
    models.resnet50(stem="imagenet", width=0.125, image_size=64),
    models.vgg11_bn(head="cifar", in_channels=1, width=0.125, image_size=28),
    models.vgg11_bn(head="imagenet", width=0.0625, image_size=64),
    models.mlp(in_channels=1, image_size=28, width=0.25),
    models.lenet5(),
    models.lenet5(in_channels=3, image_size=32),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.arch}-{c.image_size}")
@pytest.mark.parametrize("irregular", [False, True])
def test_analytic_count_equals_real_and_forward_runs(cfg, irregular):
    if irregular:
        cfg = _irregular(cfg)
    variables = cfg.init(jax.random.key(0), batch_size=2)
    assert tree.count(variables["params"]) == cfg.param_count()
    logits = cfg.module().apply(variables, jnp.ones((2, *cfg.input_shape)), train=False)
    assert logits.shape == (2, cfg.num_classes)
    assert np.all(np.isfinite(np.asarray(logits)))


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.arch}-{c.image_size}")
def test_config_json_round_trip(cfg):
    import json

    back = models.config_from_dict(json.loads(cfg.to_json()))
    assert back == cfg and hash(back) == hash(cfg)


def test_every_width_is_a_field():
    cfg = models.resnet18(width=0.25)
    assert cfg.stream_widths == (16, 32, 64, 128) and cfg.stem_width == 16
    assert cfg.inner_widths == ((16,),) * 2 + ((32,),) * 2 + ((64,),) * 2 + ((128,),) * 2
    r50 = models.resnet50()
    assert r50.stream_widths == (256, 512, 1024, 2048) and r50.inner_widths[0] == (64, 64)
    assert r50.projections == (True, False, False, True, False, False, False, True) + (False,) * 5 + (True, False,
                                                                                                      False)


def test_projection_structure_survives_equal_widths():
    # A ResNet50 stage-1 block keeps its projection even if folding made stem and stream widths equal.
    cfg = models.resnet50(width=0.125).replace(stem_width=32)
    assert cfg.stream_widths[0] == 32 and cfg.projections[0]
    assert "shortcut_conv" in cfg.abstract_variables()["params"]["layer1_0"]


def test_bad_configs_fail_clearly():
    with pytest.raises(ValueError, match="identity shortcut but input width 8 != output width 9"):
        models.resnet18(width=0.125).replace(stream_widths=(9, 16, 32, 64))
    with pytest.raises(ValueError, match="inner_widths needs 8 tuples"):
        models.resnet18().replace(inner_widths=((64,),))
    with pytest.raises(ValueError, match="unknown model 'resnet19'"):
        models.build("resnet19")
    with pytest.raises(ValueError, match="valid:"):
        models.build("resnet18", depth=3)
    with pytest.raises(ValueError, match="unknown fields"):
        models.config_from_dict({"arch": "mlp", "hidden": 3})
    with pytest.raises(ValueError, match="unknown model arch"):
        models.config_from_dict({"arch": "transformer"})


def test_width_multiplier():
    assert models.vgg11_bn(width=0.5).conv_widths == (32, 64, 128, 128, 256, 256, 256, 256)
    assert models.mlp(width=3).hidden_widths == (1536,) * 3
    assert dataclasses.replace(models.lenet5(), conv_widths=(3, 4)).param_count() < models.lenet5().param_count()


def test_vgg_adaptive_pool_matches_definition():
    from jaxfold.models.vgg import adaptive_avg_pool

    x = jnp.arange(2 * 5 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 5, 3)
    y = adaptive_avg_pool(x, 3)
    # torch bins for 5 → 3: [0,2), [1,4), [3,5)
    np.testing.assert_allclose(y[:, 1, 2], x[:, 1:4, 3:5].mean(axis=(1, 2)), rtol=1e-6)
    assert adaptive_avg_pool(jnp.ones((1, 1, 1, 4)), 7).shape == (1, 7, 7, 4)


def _measured_flops(cfg):
    """2 × MACs of every Conv/Dense call, read off the actual forward pass (shapes only, via eval_shape)."""
    import flax.linen as nn

    total = []

    def count(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and isinstance(context.module, nn.Conv | nn.Dense):
            kernel = context.module.variables["params"]["kernel"]
            total.append(2 * (out.size // out.shape[0]) * int(np.prod(kernel.shape[:-1])))
        return out

    variables = cfg.abstract_variables()
    with nn.intercept_methods(count):
        jax.eval_shape(lambda v, x: cfg.module().apply(v, x, train=False), variables,
                       jax.ShapeDtypeStruct((2, *cfg.input_shape), jnp.float32))
    return sum(total)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.arch}-{c.image_size}")
@pytest.mark.parametrize("irregular", [False, True])
def test_analytic_flops_equal_the_forward_pass(cfg, irregular):
    cfg = _irregular(cfg) if irregular else cfg
    assert cfg.flops() == _measured_flops(cfg)

