"""L1/L2 training (the paper's Fig. 11): the penalty covers the kernels only, is in the loss and its gradient, and
coefficients of 0 give exactly the step without a penalty."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxfold import models
from jaxfold.errors import UserError
from jaxfold.train import check_regularisation, make_train_step, weight_penalty


def _setup():
    cfg = models.mlp(in_channels=1, image_size=8, width=0.125)
    v = cfg.init(jax.random.key(0))
    tx = optax.sgd(0.1)
    state = {"params": v["params"], "batch_stats": v["batch_stats"], "opt_state": tx.init(v["params"]),
             "step": jnp.zeros((), jnp.int32)}
    x = jax.random.normal(jax.random.key(1), (16, 8, 8, 1))
    return cfg, tx, state, x, jnp.arange(16) % 10


def _kernels(params):
    return [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0] if path[-1].key == "kernel"]


def test_penalty_is_over_kernels_only():
    params = {"Dense_0": {"kernel": jnp.array([[1.0, -2.0]]), "bias": jnp.array([5.0, 5.0])},
              "bn": {"scale": jnp.array([3.0])}}
    assert float(weight_penalty(params, l1=0.5)) == pytest.approx(1.5)
    assert float(weight_penalty(params, l2=0.5)) == pytest.approx(2.5)
    assert float(weight_penalty(params, 0.5, 0.5)) == pytest.approx(4.0)
    assert float(weight_penalty(params)) == 0.0
    with pytest.raises(UserError, match="≥ 0"):
        check_regularisation(ml_collections.ConfigDict(dict(l1=-1.0)))
    assert check_regularisation(ml_collections.ConfigDict(dict(epochs=1))) == (0.0, 0.0)


def test_zero_coefficients_are_todays_step_and_the_penalty_is_in_the_gradient():
    cfg, tx, state, x, y = _setup()
    key = jax.random.key(2)
    plain, m_plain = make_train_step(cfg.module(), tx)(state, x, y, key)
    zero, m_zero = make_train_step(cfg.module(), tx, 0.0, 0.0)(state, x, y, key)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(zero), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(m_plain["loss"]) == float(m_zero["loss"])
    l1, l2 = 1e-3, 1e-2
    for coeffs, grad in (((l1, 0.0), lambda w: l1 * jnp.sign(w)), ((0.0, l2), lambda w: 2 * l2 * w)):
        new, m = make_train_step(cfg.module(), tx, *coeffs)(state, x, y, key)
        assert float(m["loss"]) == pytest.approx(float(m_plain["loss"]) + float(weight_penalty(state["params"],
                                                                                              *coeffs)), rel=1e-5)
        # SGD, lr 0.1: each kernel moves by an extra −0.1·∂penalty/∂w; biases move exactly as without it
        for w, a, b in zip(_kernels(state["params"]), _kernels(plain["params"]), _kernels(new["params"]),
                           strict=True):
            np.testing.assert_allclose(np.asarray(b - a), np.asarray(-0.1 * grad(w)), atol=1e-6)
        biases = lambda p: [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(p)[0]
                            if path[-1].key == "bias"]
        for a, b in zip(biases(plain["params"]), biases(new["params"]), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-7)


def test_regularisation_config_trains_end_to_end(tmp_path, cifar_dir):
    from jaxfold.config import load_with_overrides
    from jaxfold.train import train

    c = load_with_overrides("configs/regularisation_fmnist.py:l1", [
        "--config.train.epochs=1", "--config.train.batch_size=32", "--config.train.eval_every=1"])
    assert c.train.weight_decay == 0.0 and c.train.l1 > 0 and c.train.l2 == 0.0
    with c.unlocked():
        c.model = dict(name="mlp", in_channels=3, num_classes=10, width=0.0625, image_size=32)
        c.data = dict(name="cifar10", path=str(cifar_dir), crop_padding=0, hflip=False)
    metrics = train(c, tmp_path / "wd")
    assert 0.0 <= metrics["accuracy"] <= 1.0
    with pytest.raises(UserError, match="≥ 0"):
        train(load_with_overrides("configs/regularisation_fmnist.py:l2", ["--config.train.l2=-1.0"]), tmp_path / "x")
