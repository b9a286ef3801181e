"""Zero-shot multiple choice by log-likelihood, the lm-eval-harness way (BoolQ, ARC, WinoGrande, … as jsonl).

Each line of the file is ``{"context": str, "choices": [str, …], "label": int}``. A choice's score is the summed
log-probability of its tokens after the context (tokenised as context + choice, the choice tokens being those
past the context's); ``acc`` picks the highest score, ``acc_norm`` the highest score divided by the choice's
length in bytes (lm-eval's ``acc_norm``). One forward pass per (context, choice), padded to a bucketed length so
few shapes compile.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxfold.eval.token_logprob import next_token_logprobs

Encode = Callable[[str], Sequence[int]]


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The examples of a multiple-choice jsonl file, validated (line numbers in the errors)."""
    examples = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            ex = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
        if not isinstance(ex, dict) or not {"context", "choices", "label"} <= set(ex):
            raise ValueError(f"{path}:{number}: need keys context, choices, label")
        if not isinstance(ex["choices"], list) or len(ex["choices"]) < 2:
            raise ValueError(f"{path}:{number}: choices must be a list of at least 2 strings")
        if not isinstance(ex["label"], int) or not 0 <= ex["label"] < len(ex["choices"]):
            raise ValueError(f"{path}:{number}: label must index into choices (0..{len(ex['choices']) - 1})")
        examples.append(ex)
    if not examples:
        raise ValueError(f"{path} holds no examples")
    return examples


@functools.partial(jax.jit, static_argnums=0)
def _continuation_logprob(logits_fn: Any, variables: Any, ids: jax.Array, start: jax.Array,
                          stop: jax.Array) -> jax.Array:
    token = next_token_logprobs(logits_fn(variables, ids[None])[0], ids)  # log p(ids[t+1] | ids[:t+1])
    position = jnp.arange(ids.shape[0] - 1) + 1
    return jnp.sum(jnp.where((position >= start) & (position < stop), token, 0.0))


def _bucket(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


def evaluate_multiple_choice(logits_fn: Any, variables: Any, encode: Encode,
                             examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{'acc', 'acc_norm', 'examples'}`` over ``examples`` (see the module docstring)."""
    variables = jax.device_put(variables)  # once, not with every choice (numpy leaves would be copied each call)
    correct = correct_norm = 0
    for ex in examples:
        context = list(encode(ex["context"]))
        scores, normed = [], []
        for choice in ex["choices"]:
            full = list(encode(ex["context"] + choice))
            start = len(context) if full[: len(context)] == context else len(list(encode(ex["context"].rstrip())))
            if start >= len(full):
                raise ValueError(f"choice {choice!r} adds no tokens after the context {ex['context'][-40:]!r}")
            ids = np.zeros(_bucket(len(full)), np.int32)
            ids[: len(full)] = full
            score = float(_continuation_logprob(logits_fn, variables, jnp.asarray(ids), start, len(full)))
            scores.append(score)
            normed.append(score / max(1, len(choice.encode())))
        correct += int(np.argmax(scores) == ex["label"])
        correct_norm += int(np.argmax(normed) == ex["label"])
    n = len(examples)
    return {"acc": correct / n, "acc_norm": correct_norm / n, "examples": n}
