"""Language-model evaluation on a bigram model whose answers are known in closed form: perplexity by Wanda's
protocol (windows, tail dropped, seqlen − 1 predictions per window) and lm-eval style multiple choice."""

import itertools
import json
import math

import numpy as np
import pytest

from jaxfold.eval.multiple_choice import evaluate_multiple_choice, read_jsonl
from jaxfold.eval.perplexity import perplexity, windows
from jaxfold.eval.token_logprob import logsumexp_last, next_token_logprobs

V = 16


def bigram_logits(table, ids):  # a module-level function: a stable jit cache key
    return table[ids]


def _table(seed=0):
    return np.random.default_rng(seed).normal(size=(V, V)).astype(np.float32)


def _reference_nll(table, w):
    logp = table - np.log(np.exp(table).sum(1, keepdims=True))
    return -np.mean([logp[a, b] for row in w for a, b in itertools.pairwise(row)])


@pytest.mark.parametrize("batch_size", [1, 3])
def test_perplexity_matches_the_closed_form_and_drops_the_tail(batch_size):
    table = _table()
    ids = np.random.default_rng(1).integers(0, V, 103)
    out = perplexity(bigram_logits, table, ids, seqlen=10, batch_size=batch_size)
    w = ids[:100].reshape(10, 10)
    assert out["windows"] == 10 and out["tokens"] == 100 and out["seqlen"] == 10
    np.testing.assert_allclose(out["nll"], _reference_nll(table, w), rtol=1e-5)
    np.testing.assert_allclose(out["perplexity"], math.exp(out["nll"]), rtol=1e-9)


def test_perplexity_max_windows_keeps_the_first_ones():
    table = _table()
    ids = np.random.default_rng(1).integers(0, V, 100)
    out = perplexity(bigram_logits, table, ids, seqlen=10, max_windows=3)
    assert out["windows"] == 3 and out["tokens"] == 30
    np.testing.assert_allclose(out["nll"], _reference_nll(table, ids[:30].reshape(3, 10)), rtol=1e-5)


def test_perplexity_bad_inputs():
    with pytest.raises(ValueError, match="fewer than one window"):
        windows(np.arange(5), 8)
    with pytest.raises(ValueError, match="seqlen must be"):
        windows(np.arange(50), 1)


def test_multiple_choice_scores_continuations(tmp_path):
    table = np.full((V, V), -5.0, np.float32)
    encode = lambda text: [ord(c) % V for c in text]
    for a, b in zip("the cat", "he cat.", strict=True):  # a model that has learnt "the cat."
        table[ord(a) % V, ord(b) % V] = 5.0
    path = tmp_path / "mc.jsonl"
    rows = [{"context": "the", "choices": [" dog.", " cat."], "label": 1},
            {"context": "the c", "choices": ["at.", "ow.", "ab."], "label": 0}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = evaluate_multiple_choice(bigram_logits, table, encode, read_jsonl(path))
    assert out == {"acc": 1.0, "acc_norm": 1.0, "examples": 2}
    rows[0]["label"] = 0  # now the model is wrong on one
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert evaluate_multiple_choice(bigram_logits, table, encode, read_jsonl(path))["acc"] == 0.5


def test_multiple_choice_file_errors(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"context": "a", "choices": ["b", "c"], "label": 2}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: label must index"):
        read_jsonl(path)
    path.write_text('{"context": "a"}\n')
    with pytest.raises(ValueError, match="need keys"):
        read_jsonl(path)


def test_next_token_logprobs_equal_log_softmax():
    """The per-row logsumexp (XLA:CPU path) equals jax.nn.logsumexp, and the next-token log-probabilities equal
    log_softmax's at the following ids, including rows with one dominant logit and large offsets."""
    import jax

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 5, 301)).astype(np.float32) * 4
    logits[0, 1] += 80.0
    logits[1, 2, 17] = 60.0
    ids = rng.integers(0, 301, (2, 5))
    np.testing.assert_allclose(np.asarray(jax.jit(logsumexp_last)(logits)),
                               np.asarray(jax.nn.logsumexp(logits, axis=-1)), rtol=1e-6, atol=1e-5)
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    expected = np.take_along_axis(logp[:, :-1], ids[:, 1:, None], -1)[..., 0]
    got = np.asarray(jax.jit(next_token_logprobs)(logits, ids))
    assert got.shape == (2, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)
