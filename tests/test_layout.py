"""Layout: linen collections and NNX variable types read as one {collection: dict} form, and back."""

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxfold import layout, tree


class Counter(nnx.Variable):
    """A variable type Flax has no collection name for."""


class Tiny(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, use_running_average=True, rngs=rngs)
        self.heads = nnx.List([nnx.Linear(4, 5, rngs=rngs), nnx.Linear(5, 2, use_bias=False, rngs=rngs)])
        self.calls = Counter(jnp.zeros((), jnp.int32))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn(self.conv(x))).mean(axis=(1, 2))
        return self.heads[1](self.heads[0](x))


class TinyLinen(linen.Module):
    @linen.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = linen.Conv(4, (3, 3), name="conv")(x)
        x = linen.relu(linen.BatchNorm(use_running_average=True, name="bn")(x)).mean(axis=(1, 2))
        return linen.Dense(2, use_bias=False, name="head")(linen.Dense(5, name="fc")(x))


X = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, 3)), jnp.float32)


def _shapes(variables):
    return {p: s for p, (s, _) in tree.shapes(variables).items()}


def test_nnx_variables_by_collection():
    handle, variables = layout.to_variables(Tiny(nnx.Rngs(0)))
    assert _shapes(variables) == {
        "params/bn/bias": (4,), "params/bn/scale": (4,), "params/conv/bias": (4,), "params/conv/kernel": (3, 3, 3, 4),
        "params/heads/0/bias": (5,), "params/heads/0/kernel": (4, 5), "params/heads/1/kernel": (5, 2),
        "batch_stats/bn/mean": (4,), "batch_stats/bn/var": (4,), "counter/calls": ()}
    assert isinstance(handle, layout.NNXHandle)
    assert set(layout.trainable(Tiny(nnx.Rngs(0)))) == {"bn", "conv", "heads"}
    stats = layout.statistics(Tiny(nnx.Rngs(0)))
    assert set(stats) == {"batch_stats", "counter"} and set(stats["batch_stats"]["bn"]) == {"mean", "var"}


def test_collection_names():
    assert layout.collection_of(nnx.Param) == layout.collection_of(nnx.LoRAParam) == "params"
    assert layout.collection_of(nnx.BatchStat) == "batch_stats"
    assert layout.collection_of(nnx.Cache) == "cache"
    assert layout.collection_of(nnx.RngKey) == "rng_key" and layout.collection_of(Counter) == "counter"


def test_nnx_round_trip_carries_new_arrays():
    model = Tiny(nnx.Rngs(0))
    handle, variables = layout.to_variables(model)
    same = layout.from_variables(handle, variables)
    np.testing.assert_array_equal(same(X), model(X))
    # a pure rewrite on the dict form (here: scale every weight, shift the running mean) shows in the module
    scaled = {**variables, "params": jax.tree.map(lambda a: 2 * a, variables["params"]),
              "batch_stats": tree.set_(variables["batch_stats"], "bn/mean", variables["batch_stats"]["bn"]["mean"] + 1)}
    rebuilt = layout.from_variables(handle, scaled)
    assert isinstance(rebuilt.heads[1].kernel, nnx.Param) and isinstance(rebuilt.bn.mean, nnx.BatchStat)
    np.testing.assert_array_equal(rebuilt.heads[1].kernel[...], 2 * model.heads[1].kernel[...])
    np.testing.assert_array_equal(rebuilt.bn.mean[...], model.bn.mean[...] + 1)
    np.testing.assert_array_equal(model.bn.mean[...], np.zeros(4))  # the input model is untouched
    # traceable: the dict form is what a jitted function takes
    out = jax.jit(lambda v, x: layout.from_variables(handle, v)(x))(variables, X)
    np.testing.assert_allclose(out, model(X), rtol=1e-6)


def test_nnx_state_round_trip():
    state = nnx.state(Tiny(nnx.Rngs(0)))
    handle, variables = layout.to_variables(state)
    assert handle.graphdef is None
    back = layout.from_variables(handle, variables)
    assert isinstance(back, nnx.State)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), nnx.to_pure_dict(back),
                                     nnx.to_pure_dict(state)))


def test_from_variables_refuses_a_mismatch():
    handle, variables = layout.to_variables(Tiny(nnx.Rngs(0)))
    with pytest.raises(ValueError, match="missing.*batch_stats/bn/var"):
        layout.from_variables(handle, {**variables, "batch_stats": {"bn": {"mean": jnp.zeros(4)}}})
    with pytest.raises(ValueError, match="unexpected.*params/extra"):
        layout.from_variables(handle, {**variables, "params": {**variables["params"], "extra": jnp.zeros(1)}})


def test_linen_variables_pass_through():
    variables = TinyLinen().init(jax.random.key(0), X)
    handle, same = layout.to_variables(variables)
    assert handle is None and same == dict(variables) and layout.from_variables(None, same) == same
    assert layout.trainable(variables) == variables["params"]  # the same arrays (dict equality checks identity first)
    assert layout.statistics(variables) == {"batch_stats": variables["batch_stats"]}
    with pytest.raises(TypeError, match="nnx.Module"):
        layout.to_variables([1, 2])


def test_nnx_and_linen_agree():
    """The same network in both APIs has the same collections and shapes (Conv/Linear/BatchNorm names aside)."""
    nnx_vars = layout.variables_of(nnx.eval_shape(lambda: Tiny(nnx.Rngs(0))))
    linen_vars = jax.eval_shape(TinyLinen().init, jax.random.key(0), X)
    rename = {"heads/0": "fc", "heads/1": "head"}

    def renamed(shapes):
        return sorted((next((p.replace(a, b) for a, b in rename.items() if a in p), p), s) for p, s in shapes.items())

    nnx_shapes = {p: s for p, s in _shapes(nnx_vars).items() if not p.startswith("counter/")}
    assert renamed(nnx_shapes) == sorted(_shapes(dict(linen_vars)).items())
