"""norm_tune: only the RMSNorm scales of a compressed tiny LLaMA move, the calibration loss drops, the result is
deterministic per key, a model distilled from itself stays put, and users' mistakes are UserErrors."""

import jax
import numpy as np
import pytest

from jaxfold import tree
from jaxfold.baselines import prune_model, wanda_sp_model
from jaxfold.compress import correct, fold_model
from jaxfold.corrections.norm_tune import NORM_PATH, NormTuneOptions, tune_norms, tune_norms_with_history
from jaxfold.errors import UserError
from jaxfold.llm import logits_fn
from jaxfold.models.llama import llama
from jaxfold.models.mlp import mlp

CFG = llama(vocab_size=32, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
            max_position_embeddings=64)


@pytest.fixture(scope="module")
def dense():
    return CFG.init(jax.random.key(0))


@pytest.fixture(scope="module")
def pruned(dense):
    return prune_model(CFG, dense, 0.5)


def _windows(n=8, t=16, seed=0):
    """Learnable text: each window counts up by a random stride mod 32 from a random start."""
    rng = np.random.default_rng(seed)
    start, stride = rng.integers(0, 32, (n, 1)), rng.integers(1, 4, (n, 1))
    return ((start + stride * np.arange(t)[None]) % 32).astype(np.int32)


def _assert_only_norms_changed(before, after):
    a, b = tree.flatten(before), tree.flatten(after)
    assert a.keys() == b.keys()
    changed = [p for p in a if not np.array_equal(np.asarray(a[p]), np.asarray(b[p]))]
    assert changed and all(NORM_PATH.match(p) for p in changed), changed
    for p in a:
        assert np.asarray(a[p]).dtype == np.asarray(b[p]).dtype and np.shape(a[p]) == np.shape(b[p])


@pytest.mark.parametrize("method", ["fold", "prune", "wanda_sp"])
def test_correct_changes_only_norm_scales(dense, pruned, method):
    windows = _windows()
    if method == "fold":  # ward: no k-means compilation; every compressed model here has the same widths
        compressed = fold_model(CFG, dense, 0.5, jax.random.key(1), clusterer="ward")
    elif method == "prune":
        compressed = pruned
    else:
        compressed = wanda_sp_model(CFG, dense, 0.5, [windows[:4]], logits_fn(CFG))
    snapshot = jax.tree.map(np.array, compressed.variables)
    out = correct(CFG, dense, compressed, "norm_tune", data=lambda: [windows[:4], windows[4:]],
                  options={"steps": 3, "lr": 1e-2, "batch_size": 4, "progress": False})
    _assert_only_norms_changed(compressed.variables, out.variables)
    assert out.config == compressed.config and out.report["correction"] == "norm_tune"
    for p, a in tree.flatten(snapshot).items():  # the input is untouched
        np.testing.assert_array_equal(a, np.asarray(tree.flatten(compressed.variables)[p]))


@pytest.mark.parametrize("loss", ["lm", "distill"])
def test_loss_decreases_on_calibration_data(dense, pruned, loss):
    windows = _windows(n=4)  # one full batch: the loss of step i is the calibration loss after i updates
    _, history = tune_norms_with_history(pruned.config, pruned.variables, windows, jax.random.key(0),
                                         NormTuneOptions(steps=30, lr=3e-2, batch_size=4, loss=loss),
                                         teacher=(CFG, dense), progress=False)
    assert history["loss"].shape == (30,) and np.all(np.isfinite(history["loss"]))
    # a random tiny LLaMA's next-token loss sits near log 32 whatever its norms; its KL to the dense one can go
    margin = {"lm": 0.05, "distill": 0.1 * history["loss"][0]}[loss]
    assert history["loss"][-1] < history["loss"][0] - margin, history["loss"]


def test_deterministic_per_key(pruned):
    windows = _windows()
    kw = dict(steps=3, lr=1e-2, batch_size=4, loss="lm", progress=False)
    a = tune_norms(pruned.config, pruned.variables, windows, jax.random.key(3), **kw)
    b = tune_norms(pruned.config, pruned.variables, windows, jax.random.key(3), **kw)
    c = tune_norms(pruned.config, pruned.variables, windows, jax.random.key(4), **kw)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c), strict=True))


def test_distill_from_itself_keeps_scales(dense):
    tuned, history = tune_norms_with_history(CFG, dense, _windows(), jax.random.key(0),
                                             NormTuneOptions(steps=5, lr=1e-2, batch_size=4),
                                             teacher=(CFG, dense), progress=False)
    assert np.abs(history["loss"]).max() < 1e-6 and history["grad_norm"].max() < 1e-7
    for p, a in tree.flatten(dense).items():
        np.testing.assert_allclose(np.asarray(tree.flatten(tuned)[p]), np.asarray(a), atol=1e-5, err_msg=p)


def test_user_errors(dense, pruned):
    windows = _windows()
    with pytest.raises(UserError, match="needs training data"):
        correct(CFG, dense, pruned, "norm_tune")
    with pytest.raises(UserError, match="unknown"):
        correct(CFG, dense, pruned, "norm_tune", data=lambda: [windows], options={"step": 3})
    with pytest.raises(UserError, match="LLaMA"):
        tune_norms(mlp(), {}, windows, jax.random.key(0), progress=False)
    bad = [dict(loss="ce"), dict(steps=0), dict(lr=-1.0), dict(batch_size=1.5), dict(warmup=1.0)]
    for kw in bad:
        with pytest.raises(UserError, match="norm_tune option"):
            tune_norms(CFG, dense, windows, jax.random.key(0), teacher=(CFG, dense), progress=False, **kw)
    with pytest.raises(UserError, match="teacher"):
        tune_norms(CFG, dense, windows, jax.random.key(0), loss="distill", progress=False)
    for data, match in [([], "no calibration windows"), ([windows[0]], "shape"), ([windows + 32], "vocabulary"),
                        ([windows, windows[:, :8]], "one length"), ([windows.astype(np.float32)], "integer")]:
        with pytest.raises(UserError, match=match):
            tune_norms(CFG, dense, data, jax.random.key(0), loss="lm", progress=False)
