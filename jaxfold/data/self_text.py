"""Calibration text sampled from the dense language model itself: the LLM analogue of Fold-DIR's DeepInversion batch.

Wanda-sp and post-compression corrections read calibration windows. Where no text is at hand (or to keep the
compressed model free of any external data, as Fold-DIR is), the dense model writes them: each window starts at a
document boundary and is sampled token by token (:func:`jaxfold.models.llama.sample`, KV-cache decoding) until it
is ``seqlen`` tokens long. The windows are what the model believes text looks like, so its activations on them
follow its own input distribution — the role DeepInversion's synthetic images play for BatchNorm CNNs.

A batch is stored on disk (default ``<cache root>/self_text``, beside the DeepInversion batches), keyed by a hash of
the model config and weights, every option and the seed (:func:`jaxfold.corrections.deep_inversion.cache_key`), so
it is generated once per model and reused across sparsities, methods and sweeps.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxfold.errors import UserError
from jaxfold.files import write_bytes_atomic

_CACHE_FORMAT = 1  # bump when sampling changes, so stale windows are not reused
SELF = "self"
SELF_OPTIONS = ("temperature", "top_p", "start", "batch_size", "cache_dir", "progress")
DOCUMENT_SEPARATOR = "<|endoftext|>"


@dataclasses.dataclass(frozen=True)
class _CacheEntry:
    """What determines the windows besides the model and the key (hashed by ``deep_inversion.cache_key``)."""

    format: int
    num_windows: int
    seqlen: int
    temperature: float
    top_p: float
    start_id: int
    batch_size: int  # rows' keys do not depend on it, but float rounding of the batched forward can


def _tokenizer_bos(model: Any) -> int | None:
    """The BOS id the model's tokenizer files declare (GGUF metadata, or an HF directory's config.json)."""
    source = Path(model.tokenizer_source)
    if source.suffix == ".gguf":
        from jaxfold.io.gguf_import import read_gguf_metadata

        value = read_gguf_metadata(source)[0].get("bos_token_id")
        return None if value is None else int(value)
    config = source.parent / "config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("bos_token_id")
        if isinstance(value, int):
            return value
    return None


def start_token(model: Any, start: str | int = "document") -> int:
    """The token id every self-generated window begins with.

    * ``"document"`` (default): the token between documents of the model's pretraining text — ``<|endoftext|>``
      where the vocabulary has it (GPT-2-style tokenizers: SmolLM2, whose *base* model's BOS it is), else the BOS
      the tokenizer files declare (LLaMA's ``<s>``), else the single token of ``"\\n"`` (a neutral paragraph break).
      SmolLM2-Instruct's GGUF declares ``<|im_start|>`` as BOS, a chat-template token: after it the model writes
      chat turns or drifts (docs/self_calibration.md shows both), after ``<|endoftext|>`` a new document.
    * ``"bos"``: the declared BOS, as it is.
    * a token string (e.g. ``"<s>"``) or an int id.
    """
    vocab = model.config.vocab_size if hasattr(model, "config") else model[0].vocab_size
    if isinstance(start, int | np.integer) and not isinstance(start, bool):
        if not 0 <= start < vocab:
            raise UserError(f"start token id {start} is outside the vocabulary [0, {vocab})")
        return int(start)
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise UserError(f"start={start!r} needs the model's tokenizer; with (config, variables) give start=<token id>")
    if start in ("document", "bos"):
        if start == "document" and tokenizer.token_to_id(DOCUMENT_SEPARATOR) is not None:
            return int(tokenizer.token_to_id(DOCUMENT_SEPARATOR))
        bos = _tokenizer_bos(model)
        if bos is not None:
            return start_token(model, bos)
        if start == "bos":
            raise UserError(f"the tokenizer {model.tokenizer_source} declares no BOS token: use start='document' or "
                            "start=<token id>")
        newline = tokenizer.encode("\n", add_special_tokens=False).ids
        if len(newline) != 1:
            raise UserError(f"the tokenizer {model.tokenizer_source} has neither {DOCUMENT_SEPARATOR}, a BOS nor a "
                            "single-token newline to start windows with: give start=<token id>")
        return start_token(model, newline[0])
    if isinstance(start, str) and tokenizer.token_to_id(start) is not None:
        return int(tokenizer.token_to_id(start))
    raise UserError(f"start must be 'document', 'bos', a token of the vocabulary or a token id, got {start!r}")


def _config_and_variables(model: Any) -> tuple[Any, Any]:
    if hasattr(model, "config") and hasattr(model, "variables"):
        return model.config, model.variables
    if isinstance(model, tuple | list) and len(model) == 2:
        return model[0], model[1]
    raise TypeError(f"model must be a jaxfold.llm.LanguageModel or a (config, variables) pair, got {type(model)}")


def _check_sizes(num_windows: Any, seqlen: Any) -> None:
    for name, value, low in (("num_windows", num_windows, 1), ("seqlen", seqlen, 2)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
            raise UserError(f"calibration {name} must be an integer ≥ {low}, got {value!r}")


def _key(seed: int | jax.Array) -> jax.Array:
    if isinstance(seed, int | np.integer) and not isinstance(seed, bool):
        return jax.random.key(int(seed))
    if isinstance(seed, jax.Array) and jnp.issubdtype(seed.dtype, jax.dtypes.prng_key) and seed.shape == ():
        return seed
    raise UserError(f"seed must be an int or one PRNG key (jax.random.key), got {seed!r}")


def generate_windows(config: Any, variables: Any, key: jax.Array, num_windows: int, seqlen: int, start_id: int,
                     temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 16,
                     progress: bool = False, first: int = 0) -> np.ndarray:
    """``(num_windows, seqlen)`` int32: ``start_id`` followed by ``seqlen − 1`` sampled tokens per window, window j
    drawn with ``fold_in(key, first + j)`` (so it does not depend on which batch it is in, and windows ``first`` on
    of a larger sample can be drawn alone). Uncached; see :func:`self_generated_windows`.

    End-of-sequence is not special: a window that samples EOS goes on sampling after it, as the model continues
    past a document boundary in its packed pretraining sequences. Every window is then full-length with one
    fixed-shape decode per batch (no restarts to track), and a boundary inside a window is what real calibration
    windows cut from concatenated documents contain too.
    """
    from jaxfold.models.llama import sample

    _check_sizes(num_windows, seqlen)
    if not isinstance(batch_size, int | np.integer) or isinstance(batch_size, bool) or batch_size < 1:
        raise UserError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
    batch = min(int(batch_size), num_windows)
    variables = jax.device_put(variables)  # once, not with every batch
    if not isinstance(first, int | np.integer) or isinstance(first, bool) or first < 0:
        raise UserError(f"first must be an integer ≥ 0, got {first!r}")
    rows = jnp.arange(-(-num_windows // batch) * batch) + int(first)
    row_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, rows)
    prompt = np.full((batch, 1), start_id, np.int32)
    starts = range(0, num_windows, batch)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="self-generated calibration", unit="batch")
    out = []
    for i in starts:  # the last batch is padded to full size with further keys (one compiled shape), then cut
        out.append(sample(config, variables, prompt, seqlen - 1, row_keys[i:i + batch], temperature=temperature,
                          top_p=top_p))
    return np.concatenate(out)[:num_windows].astype(np.int32)


def _load(path: Path, shape: tuple[int, int], vocab: int) -> np.ndarray | None:
    """The cached windows, or None (with a warning) when the file is unreadable or holds something else."""
    try:
        windows = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        problem = f"unreadable ({type(e).__name__}: {e})"
    else:
        if windows.shape != shape or windows.dtype != np.int32:
            problem = f"holds {windows.dtype}{windows.shape}, expected int32{shape}"
        elif windows.size and not (windows.min() >= 0 and windows.max() < vocab):
            problem = f"holds token ids outside [0, {vocab})"
        else:
            return windows
    warnings.warn(f"self-generated calibration file {path} {problem}; regenerating it", RuntimeWarning, stacklevel=3)
    return None


def cache_path(model: Any, *, seed: int | jax.Array = 0, num_windows: int, seqlen: int, temperature: float = 1.0,
               top_p: float = 1.0, start: str | int = "document", batch_size: int = 16,
               cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`self_generated_windows` stores (or finds) the windows for these arguments."""
    from jaxfold.corrections.deep_inversion import cache_key
    from jaxfold.paths import cache_root

    config, variables = _config_and_variables(model)
    entry = _CacheEntry(_CACHE_FORMAT, int(num_windows), int(seqlen), float(temperature), float(top_p),
                        start_token(model, start), int(batch_size))
    digest = cache_key(config, variables, _key(seed), entry)
    return Path(cache_dir if cache_dir is not None else cache_root() / "self_text") / f"self-{digest[:16]}.npy"


def self_generated_windows(model: Any, *, seed: int | jax.Array = 0, num_windows: int, seqlen: int,
                           temperature: float = 1.0, top_p: float = 1.0, start: str | int = "document",
                           batch_size: int = 16, cache_dir: str | os.PathLike | None = None,
                           progress: bool = False) -> np.ndarray:
    """``(num_windows, seqlen)`` int32 windows sampled from ``model`` (a ``LanguageModel`` or ``(config,
    variables)``), each beginning with the :func:`start_token`, the rest drawn at ``temperature`` within the
    ``top_p`` nucleus (:func:`generate_windows`). ``seed`` is an int or a PRNG key.

    Stored as ``<cache_dir>/self-<hash>.npy`` (default ``<cache root>/self_text``; see :func:`cache_path`) and read
    back on the next call with the same model, options and seed; a damaged file is regenerated with a warning.
    Fewer windows than a cached sample of the same model, seed and options are its first windows (no sampling);
    more windows than one extend the largest such sample (only the windows beyond it are sampled).
    """
    config, variables = _config_and_variables(model)
    _check_sizes(num_windows, seqlen)
    start_id = start_token(model, start)
    options = dict(seed=seed, seqlen=seqlen, temperature=temperature, top_p=top_p, start=start_id,
                   batch_size=batch_size, cache_dir=cache_dir)
    path = cache_path(model, num_windows=num_windows, **options)
    family = cache_path(model, num_windows=0, **options).with_suffix(".json")
    if path.exists() and (windows := _load(path, (num_windows, seqlen), config.vocab_size)) is not None:
        _remember(family, num_windows, path)
        return windows
    if (windows := _prefix_of_larger(family, num_windows, seqlen, config.vocab_size)) is not None:
        return windows
    cached = _largest_smaller(family, num_windows, seqlen, config.vocab_size)
    fresh = generate_windows(config, variables, _key(seed), num_windows - len(cached), seqlen, start_id, temperature,
                             top_p, batch_size, progress, first=len(cached))
    windows = np.concatenate([cached, fresh])
    buffer = io.BytesIO()
    np.save(buffer, windows, allow_pickle=False)
    write_bytes_atomic(path, buffer.getvalue())
    _remember(family, num_windows, path)
    return windows


# A sample's "family" file (same model, seed and options, any number of windows) lists the cached sizes: window j
# is drawn with fold_in(key, j) in batches of one compiled shape, so the first N windows of a cached larger sample
# are exactly the N-window sample, and a calibration-budget study reads one sample instead of drawing several.
def _family(path: Path) -> dict[str, str]:
    try:
        entries = json.loads(path.read_text())
        return {str(k): str(v) for k, v in entries.items()} if isinstance(entries, dict) else {}
    except (OSError, ValueError):
        return {}


def _remember(family: Path, num_windows: int, path: Path) -> None:
    entries = _family(family)
    if entries.get(str(num_windows)) != path.name:
        entries[str(num_windows)] = path.name
        write_bytes_atomic(family, json.dumps(entries, sort_keys=True).encode())


def _cached_sizes(family: Path) -> list[tuple[int, Path]]:
    return sorted((int(n), family.parent / name) for n, name in _family(family).items() if n.isdigit())


def _prefix_of_larger(family: Path, num_windows: int, seqlen: int, vocab: int) -> np.ndarray | None:
    for n, larger in _cached_sizes(family):
        if n > num_windows and larger.exists():
            windows = _load(larger, (n, seqlen), vocab)
            if windows is not None:
                return windows[:num_windows]
    return None


def _largest_smaller(family: Path, num_windows: int, seqlen: int, vocab: int) -> np.ndarray:
    """The largest readable cached sample of fewer windows (its windows are the first ones of this one), or none."""
    for n, smaller in reversed(_cached_sizes(family)):
        if n < num_windows and smaller.exists() and (windows := _load(smaller, (n, seqlen), vocab)) is not None:
            return windows
    return np.zeros((0, seqlen), np.int32)


def calibration_windows(model: Any, source: str, seqlen: int, num_windows: int, *, seed: int | jax.Array = 0,
                        **self_options: Any) -> tuple[np.ndarray, str]:
    """``(windows (num_windows, seqlen) int32, kind)`` for a calibration ``source``: ``"self"`` — sampled from
    ``model`` by :func:`self_generated_windows` with ``seed`` and ``self_options`` (kind ``"self"``) — or any text
    :func:`jaxfold.data.text.read_text_source` reads, tokenised and cut into its first ``num_windows``
    non-overlapping windows (kind ``"real"``; ``seed`` and ``self_options`` are then not used, so one config can
    hold both and switch by ``source``)."""
    if unknown := sorted(set(self_options) - set(SELF_OPTIONS)):
        raise UserError(f"unknown self-calibration options {unknown}; valid: seed, {', '.join(SELF_OPTIONS)}")
    _check_sizes(num_windows, seqlen)
    if not isinstance(source, str) or not source:
        raise UserError(f"calibration source must be 'self' or a text source (shakespeare:train, wikitext:PATH, a "
                        f"file), got {source!r}")
    if source == SELF:
        return self_generated_windows(model, seed=seed, num_windows=num_windows, seqlen=seqlen, **self_options), SELF
    from jaxfold.data.text import read_text_source
    from jaxfold.eval.perplexity import windows

    if not hasattr(model, "encode"):
        raise UserError(f"calibration text {source!r} needs the model's tokenizer: pass a LanguageModel")
    cut = windows(model.encode(read_text_source(source)), seqlen)
    if len(cut) < num_windows:
        raise UserError(f"calibration text {source!r} holds {len(cut)} windows of {seqlen} tokens, fewer than the "
                        f"{num_windows} asked for: lower the window count or seqlen, or use a longer text")
    return np.ascontiguousarray(cut[:num_windows]), "real"


def window_batches(windows: np.ndarray, batch_size: int) -> Callable[[], Iterator[np.ndarray]]:
    """A correction's ``data``: a function returning the (N, T) windows again as (batch_size, T) batches, in order
    (corrections may read the calibration set several times)."""
    if int(batch_size) < 1:
        raise UserError(f"calibration batch size must be ≥ 1, got {batch_size}")
    batch_size = int(batch_size)
    return lambda: (windows[i:i + batch_size] for i in range(0, len(windows), batch_size))
