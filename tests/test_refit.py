"""refit: transformer consumers (mlp/down, attn/o) re-solved in closed form on calibration token windows — the
identity on an uncompressed model, exact on a lossless fold, a smaller block-output error after a lossy fold or
a pruning (on the calibration tokens and on held-out ones), and clear errors for what it cannot use."""

import jax
import numpy as np
import pytest

from jaxfold import tree
from jaxfold.baselines import prune_model
from jaxfold.compress import correct, fold_model
from jaxfold.corrections.refit import block_errors, refit_consumers, token_batches
from jaxfold.errors import UserError
from jaxfold.merge import duplicate_channels
from jaxfold.models.llama import llama
from jaxfold.models.mlp import MLPConfig

CFG = llama(vocab_size=32, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
            max_position_embeddings=64)


def _assert_close(a, b, tol, what):
    diff, scale = float(np.abs(a - b).max()), max(1.0, float(np.abs(b).max()))
    assert diff <= tol * scale, f"{what}: max diff {diff:.3g} at scale {scale:.3g}"


@pytest.fixture(scope="module")
def model(lm_variables):
    rng = np.random.default_rng(0)
    calibration = rng.integers(0, CFG.vocab_size, (16, 32)).astype(np.int32)
    held_out = rng.integers(0, CFG.vocab_size, (8, 32)).astype(np.int32)
    return lm_variables(CFG), calibration, held_out


def test_uncompressed_refit_is_the_identity(model, lm_logits):
    variables, calibration, held_out = model
    new = refit_consumers(CFG, variables, CFG, variables, calibration, ridge=0.0, which="all")
    _assert_close(lm_logits(CFG, new, held_out), lm_logits(CFG, variables, held_out), 2e-4, "refit of the dense model")


def test_refit_keeps_a_lossless_fold_exact(model, lm_variables, lm_logits):
    _, calibration, held_out = model
    half = {g: n // 2 for g, n in CFG.fold_spec().widths(CFG.abstract_variables()).items()}
    small_cfg = CFG.with_widths(half)
    small = lm_variables(small_cfg, 1)
    wide = small
    for group in small_cfg.fold_spec().groups:  # every KV group and MLP neuron twice: the same function, at CFG
        wide = duplicate_channels(wide, group, np.tile(np.arange(half[group.name]), 2))
    expected = lm_logits(small_cfg, small, held_out)
    _assert_close(lm_logits(CFG, wide, held_out), expected, 2e-5, "widened")
    back = fold_model(CFG, wide, lambda g, n: half[g], jax.random.key(0), clusterer="ward")
    assert back.config == small_cfg
    out = correct(CFG, wide, back, "refit", data=lambda: (calibration[i:i + 8] for i in (0, 8)),
                  options={"ridge": 0.0})
    assert sorted(out.report["refit"]["fit"]) == [f"block_{i}/{c}" for i in range(2) for c in ("attn/o", "mlp/down")]
    _assert_close(lm_logits(small_cfg, out.variables, held_out), expected, 2e-4, "refit of a lossless fold")


@pytest.mark.parametrize("target", ["dense", "residual"])
def test_refit_reduces_the_fold_error(model, target):
    variables, calibration, held_out = model
    folded = fold_model(CFG, variables, 0.5, jax.random.key(1), clusterer="ward")
    assert folded.config.num_heads == (2, 2) and folded.config.intermediate_sizes == (32, 32)
    out = correct(CFG, variables, folded, "refit", data=lambda: (calibration[i:i + 8] for i in (0, 8)),
                  options={"target": target})
    assert out.report["correction"] == "refit" and out.report["calibration_tokens"] == calibration.size
    assert out.config == folded.config and tree.compare(folded.variables, out.variables) == []
    for fit_before, fit_after in out.report["refit"]["fit"].values():
        assert fit_after < fit_before
    for tokens in (calibration, held_out):
        before = block_errors(CFG, variables, folded.config, folded.variables, tokens)
        after = block_errors(CFG, variables, out.config, out.variables, tokens)
        assert all(a < b for a, b in zip(after, before, strict=True)), (before, after)


def test_refit_after_pruning(model):
    variables, calibration, held_out = model
    pruned = prune_model(CFG, variables, lambda g, n: n if g.startswith("block0.") else n // 2)  # block 1 only
    before = block_errors(CFG, variables, pruned.config, pruned.variables, held_out)
    assert before[0] == 0.0
    out = correct(CFG, variables, pruned, "refit", data=lambda: (calibration[i:i + 8] for i in (0, 8)))
    assert sorted(out.report["refit"]["fit"]) == ["block_1/attn/o", "block_1/mlp/down"]
    after = block_errors(CFG, variables, out.config, out.variables, held_out)
    assert after[0] == 0.0 and after[1] < before[1], (before, after)
    for m in ("embed", "block_0", "final_norm", "lm_head"):  # upstream of the pruning, and the head: untouched
        new, old = tree.flatten(out.variables["params"][m]), tree.flatten(pruned.variables["params"][m])
        assert new.keys() == old.keys() and all(np.array_equal(new[p], old[p]) for p in new)
    everything = refit_consumers(CFG, variables, pruned.config, pruned.variables, calibration, which="all")
    assert not np.array_equal(everything["params"]["block_0"]["mlp"]["down"]["kernel"],
                              pruned.variables["params"]["block_0"]["mlp"]["down"]["kernel"])


def test_refit_refuses_what_it_cannot_use(model):
    variables, calibration, _ = model
    pruned = prune_model(CFG, variables, 0.5)
    with pytest.raises(UserError, match="needs training data"):
        correct(CFG, variables, pruned, "refit")
    with pytest.raises(UserError, match="no calibration data"):
        correct(CFG, variables, pruned, "refit", data=lambda: [])
    with pytest.raises(UserError, match="int token windows"):
        correct(CFG, variables, pruned, "refit", data=lambda: [np.zeros((2, 8, 8, 3), np.float32)])
    with pytest.raises(UserError, match="token ids must be in"):
        token_batches(calibration + CFG.vocab_size, CFG.vocab_size)
    with pytest.raises(UserError, match="unknown"):
        correct(CFG, variables, pruned, "refit", data=lambda: [calibration], options={"lamda": 1.0})
    with pytest.raises(UserError, match="target"):
        refit_consumers(CFG, variables, pruned.config, pruned.variables, calibration, target="logits")
    with pytest.raises(UserError, match="LLaMA-style"):
        refit_consumers(MLPConfig(), variables, pruned.config, pruned.variables, calibration)
