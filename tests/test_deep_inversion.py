"""DeepInversion: the optimisation matches BN statistics, is deterministic per key and pure, the disk cache is
reused when valid and regenerated when not, bad input fails clearly."""

import copy
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfold import models, tree
from jaxfold.batch_stats import batch_statistics
from jaxfold.corrections import deep_inversion as di

CFG = models.resnet18(in_channels=1, width=0.0625, image_size=16)
OPTS = di.DeepInversionOptions(batch_size=16, steps=40)


def _blocky_images(n, seed=0):
    """Piecewise-constant, shifted images: a 'data distribution' unlike the N(0,1) starting point."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(0.5 + 0.8 * rng.normal(size=(n, 4, 4, 1)).repeat(4, 1).repeat(4, 2), jnp.float32)


@pytest.fixture(scope="module")
def setup():
    """A model whose running statistics are those of ``data``, so a zero BN loss is reachable."""
    variables = CFG.init(jax.random.key(0))
    data = _blocky_images(64)
    stats = batch_statistics(CFG.module(), variables, data)
    bs = tree.unflatten({f"{p}/{name}": a for p, (m, v) in stats.items() for name, a in (("mean", m), ("var", v))})
    variables = {**variables, "batch_stats": bs}
    images, history = di.synthesize_with_history(CFG, variables, jax.random.key(1), OPTS)
    return variables, data, images, history


def test_bn_loss_is_zero_on_the_data_the_statistics_came_from(setup):
    variables, data, _, _ = setup
    assert di.bn_loss(CFG, variables, data) < 1e-3
    assert di.bn_loss(CFG, variables, data, bn_mode="train") < 1e-3
    assert di.bn_loss(CFG, variables, _blocky_images(64, seed=1)) > 0.1


def test_optimisation_matches_bn_statistics(setup):
    variables, _, images, history = setup
    assert images.shape == (OPTS.batch_size, *CFG.input_shape) and images.dtype == np.float32
    assert set(history) == {"loss", "bn", "ce", "tv", "l2"}
    assert all(h.shape == (OPTS.steps,) and np.all(np.isfinite(h)) for h in history.values())
    final = di.bn_loss(CFG, variables, images)
    assert final < 0.5 * history["bn"][0], (final, history["bn"][0])


def test_deterministic_per_key_and_pure(setup):
    variables, _, images, history = setup
    before = copy.deepcopy(jax.device_get(variables))
    again, history2 = di.synthesize_with_history(CFG, variables, jax.random.key(1), OPTS)
    np.testing.assert_array_equal(again, images)
    np.testing.assert_array_equal(history2["loss"], history["loss"])
    other = di.synthesize(CFG, variables, jax.random.key(2), OPTS)
    assert not np.allclose(other, images)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables), before)


def test_cache_hit_reuses_the_file(setup, tmp_path, monkeypatch):
    variables, _, images, _ = setup
    first = di.cached_synthesize(CFG, variables, jax.random.key(1), OPTS, tmp_path)
    np.testing.assert_array_equal(first, images)
    [path] = tmp_path.glob("di-*.npy")
    assert len(path.stem) == len("di-") + 16 and not list(tmp_path.glob(".*"))  # no temp file left behind
    mtime = path.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("cache hit must not recompute")

    monkeypatch.setattr(di, "synthesize", fail)
    second = di.cached_synthesize(CFG, variables, jax.random.key(1), OPTS, tmp_path)
    np.testing.assert_array_equal(second, first)
    assert path.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("damage", ["garbage", "wrong_shape"])
def test_corrupt_cache_file_is_regenerated(setup, tmp_path, damage):
    variables, _, images, _ = setup
    key = jax.random.key(1)
    path = tmp_path / f"di-{di.cache_key(CFG, variables, key, OPTS)[:16]}.npy"
    if damage == "garbage":
        path.write_bytes(b"\x93NUMPY not really")
    else:
        np.save(path, np.zeros((3, 16, 16, 1), np.float32))
    with pytest.warns(RuntimeWarning, match="regenerating"):
        out = di.cached_synthesize(CFG, variables, key, OPTS, tmp_path)
    np.testing.assert_array_equal(out, images)
    np.testing.assert_array_equal(np.load(path), images)


def test_cache_key_depends_on_everything_that_matters(setup):
    variables, _, _, _ = setup
    key = jax.random.key(1)
    base = di.cache_key(CFG, variables, key, OPTS)
    assert di.cache_key(CFG, copy.deepcopy(jax.device_get(variables)), jax.random.key(1), OPTS) == base
    changed_vars = jax.tree.map(lambda a: a, variables)
    changed_vars["params"] = {**changed_vars["params"], "fc": {**changed_vars["params"]["fc"],
                                                               "bias": changed_vars["params"]["fc"]["bias"] + 1}}
    assert di.cache_key(CFG, changed_vars, key, OPTS) != base
    assert di.cache_key(CFG, variables, jax.random.key(2), OPTS) != base
    assert di.cache_key(CFG, variables, key, dataclasses.replace(OPTS, tv_weight=0.0)) != base
    assert di.cache_key(CFG.replace(num_classes=5), variables, key, OPTS) != base


@pytest.mark.parametrize("field,value", [("steps", 0), ("batch_size", 0), ("batch_size", 2.5), ("lr", 0.0),
                                         ("bn_weight", -1.0), ("tv_weight", -1e-5), ("l2_weight", float("nan")),
                                         ("ce_weight", -1), ("first_bn_multiplier", -2.0), ("jitter", -1),
                                         ("targets", "uniform"), ("bn_mode", "both")])
def test_bad_options_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"DeepInversionOptions.{field} must be"):
        di.DeepInversionOptions(**{field: value})


def test_model_without_batchnorm_is_refused():
    cfg = models.lenet5()
    variables = cfg.init(jax.random.key(0))
    with pytest.raises(ValueError, match="no BatchNorm"):
        di.synthesize(cfg, variables, jax.random.key(0), OPTS)
