"""Perplexity of a causal language model over one long text, by Wanda's protocol (the paper's Table 3).

The text is tokenised once without special tokens, cut into floor(N / seqlen) non-overlapping windows (the tail
is dropped), and perplexity = exp(mean NLL over the seqlen − 1 predicted tokens of every window). Windows are
evaluated in fixed-size batches (the last one padded and masked) so the NLL reduction compiles once per
(model, batch shape).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxfold.errors import UserError
from jaxfold.eval.token_logprob import next_token_logprobs

LogitsFn = Callable[[Any, jax.Array], jax.Array]  # (variables, ids (B, T)) -> logits (B, T, V)


@functools.partial(jax.jit, static_argnums=0)
def _nll_sum(logits_fn: LogitsFn, variables: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
    # NLL = logsumexp − the target's logit: never materialises the (B, T, V) log-probabilities
    return -jnp.sum(next_token_logprobs(logits_fn(variables, ids), ids) * mask[:, None])


def windows(token_ids: np.ndarray, seqlen: int) -> np.ndarray:
    """(floor(N / seqlen), seqlen) non-overlapping windows; a text shorter than one window is an error."""
    token_ids = np.asarray(token_ids, np.int32).reshape(-1)
    if seqlen < 2:
        raise UserError(f"seqlen must be ≥ 2 (one predicted token per window at least), got {seqlen}")
    count = len(token_ids) // seqlen
    if count == 0:
        raise UserError(f"the text has {len(token_ids)} tokens, fewer than one window of seqlen={seqlen}: "
                        "use a longer text or a smaller --seqlen")
    return token_ids[: count * seqlen].reshape(count, seqlen)


def perplexity(logits_fn: LogitsFn, variables: Any, token_ids: np.ndarray, seqlen: int,
               batch_size: int = 1, max_windows: int | None = None) -> dict[str, Any]:
    """``{'perplexity', 'nll', 'tokens', 'windows', 'seqlen', 'seconds', 'tokens_per_second'}``.

    ``max_windows`` keeps only the first windows (a quick, still deterministic estimate on a CPU; the protocol is
    all of them). ``logits_fn`` should be a stable object so the jit cache hits across calls."""
    w = windows(token_ids, seqlen)
    if max_windows is not None:
        if max_windows < 1:
            raise UserError(f"max_windows must be ≥ 1, got {max_windows}")
        w = w[:max_windows]
    variables = jax.device_put(variables)  # once, not with every window (numpy leaves would be copied each call)
    t0 = time.perf_counter()
    total = jnp.zeros(())
    for start in range(0, len(w), batch_size):
        chunk = w[start:start + batch_size]
        mask = np.zeros(batch_size, np.float32)
        mask[: len(chunk)] = 1.0
        if len(chunk) < batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - len(chunk), seqlen), np.int32)])
        total = total + _nll_sum(logits_fn, variables, jnp.asarray(chunk), jnp.asarray(mask))
    nll = float(total) / (len(w) * (seqlen - 1))
    seconds = time.perf_counter() - t0
    return {"perplexity": math.exp(nll), "nll": nll, "tokens": int(w.size), "windows": len(w), "seqlen": seqlen,
            "seconds": round(seconds, 3), "tokens_per_second": round(w.size / seconds, 1)}
