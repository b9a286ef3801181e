"""``norm_tune``: fine-tune only the RMSNorm scales of a compressed LLaMA on calibration token windows.

The paper's "Model Folding + fine-tune norm" row (Table 3): every weight matrix stays as folding (or pruning) left
it and only the per-channel norm scales (``attn_norm``, ``mlp_norm`` of every block and ``final_norm``; 2·L + 1
vectors of width D, ~0.03 % of SmolLM2's parameters) are trained, so the correction can only re-balance the
residual stream's channels the compression distorted. Two objectives:

* ``loss="lm"``: next-token cross-entropy on the windows — the paper's recipe; it needs real text to mean anything.
* ``loss="distill"``: KL(p_dense ‖ p_compressed) of the next-token distributions at every position of the windows,
  the dense model being the teacher (computed per batch inside the step, never stored for all windows). It needs
  no labels, so self-generated text works, and it pulls the compressed model towards *its* dense model rather than
  towards the calibration text.

Adam on the scales alone (a float32 master copy; the model's dtype in the forward pass), linear warm-up then cosine
decay, one jitted step driven from Python (the frozen weights are an argument without a gradient, so only the
scales' gradients and Adam moments exist). Batches are drawn epoch by epoch in an order shuffled by the key, so
the result is a function of the key: bit-identical for it on one machine type and jax/XLA build, within float
rounding across CPU types (README, "What reproduces exactly").
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfold import tree as tree_lib
from jaxfold.corrections.registry import CorrectionContext, register_correction
from jaxfold.errors import UserError

LOSSES = ("distill", "lm")
NORM_PATH = re.compile(r"^params/(block_\d+/(attn_norm|mlp_norm)|final_norm)/scale$")
# Adam's ε, 100× optax's 1e-8: Adam divides by √v, so gradients at float32 rounding level (~1e-10 when the student
# already equals its teacher) would otherwise move every scale by ~lr per step; real norm-scale gradients are
# orders of magnitude above 1e-6 (0.7–15 on SmolLM2, benchmarks/results/norm_tune_smollm2.json), where the two ε
# give the same steps.
ADAM_EPS = 1e-6
_PROGRESS_EVERY = 5  # steps between progress-bar loss read-outs (each read waits for the device)


@dataclasses.dataclass(frozen=True)
class NormTuneOptions:
    """Norm fine-tuning hyper-parameters; the defaults were measured on SmolLM2 folded by 20 %
    (benchmarks/norm_tune_smollm2.py, results in benchmarks/results/norm_tune_smollm2.json).

    * ``steps``: optimiser steps of ``batch_size`` windows each; windows are revisited epoch by epoch when
      ``steps · batch_size`` exceeds their number.
    * ``lr``: peak Adam learning rate (default betas), reached after ``warmup`` · steps linear warm-up steps,
      then cosine decay to 0.
    * ``batch_size``: windows per step (capped at the number of windows given).
    * ``loss``: ``"distill"`` (KL to the dense teacher) or ``"lm"`` (next-token cross-entropy).

    Measured there (32 windows of 512 tokens, perplexity on 8 test windows of 1,024, uncorrected 585): 32 steps of
    one window at lr 1e-2 reach 120 with ``lm`` and 123 with ``distill`` on Shakespeare, 192 with ``distill`` on
    self-generated windows. ``distill`` is the default because it is as good on real text and also meaningful on
    self-generated text (``lm`` would fit the sampled tokens); it costs a dense forward per step (~18 % more time,
    ~1 GB more memory: peak 3.7 vs 2.7 GB). One window per step keeps memory there; lr 1e-2 moves each scale by
    ≤ 0.15 in 32 steps (SmolLM2's scales are O(1)); other lrs and step counts were not measured.
    """

    steps: int = 32
    lr: float = 1e-2
    batch_size: int = 1
    loss: str = "distill"
    warmup: float = 0.1

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise UserError(f"norm_tune option {name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.lr, int | float | np.number) and np.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"norm_tune option lr must be a finite number > 0, got {self.lr!r}")
        if not (isinstance(self.warmup, int | float | np.number) and 0 <= self.warmup < 1):
            raise UserError(f"norm_tune option warmup (a fraction of the steps) must be in [0, 1), got "
                            f"{self.warmup!r}")
        if self.loss not in LOSSES:
            raise UserError(f"norm_tune option loss must be one of {list(LOSSES)}, got {self.loss!r}")


def learning_rates(options: NormTuneOptions) -> np.ndarray:
    """The (steps,) learning rate of every step: linear warm-up to ``lr``, then cosine decay towards 0."""
    warm = math.ceil(options.warmup * options.steps)
    i = np.arange(options.steps, dtype=np.float64)
    cosine = 0.5 * (1 + np.cos(np.pi * (i - warm) / max(options.steps - warm, 1)))
    return (options.lr * np.where(i < warm, (i + 1) / max(warm, 1), cosine)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- checks

def _check_llama(config: Any, who: str) -> None:
    from jaxfold.models.llama import LlamaConfig

    if not isinstance(config, LlamaConfig):
        raise UserError(f"norm_tune fine-tunes a LLaMA's RMSNorm scales; the {who} is a {type(config).__name__} "
                        f"({getattr(config, 'arch', '?')!r}). Use a BatchNorm correction (repair, fold_ar) for it")


def norm_paths(variables: Mapping[str, Any]) -> list[str]:
    """The RMSNorm scale paths of a LLaMA's variables (``params/block_i/{attn,mlp}_norm/scale``, final_norm)."""
    paths = [p for p in tree_lib.flatten(variables) if NORM_PATH.match(p)]
    if not paths:
        raise UserError("norm_tune found no RMSNorm scales (params/…/attn_norm/scale, …/final_norm/scale) in the "
                        "variables: are they a jaxfold LLaMA's?")
    return paths


def collect_windows(windows: Iterable[Any] | np.ndarray, vocab_size: int) -> np.ndarray:
    """All token windows as one (N, T) int32 array, from a (N, T) array or an iterable of (B, T) batches."""
    if isinstance(windows, np.ndarray | jax.Array):
        batches = [np.asarray(windows)]
    else:
        batches = [np.asarray(b) for b in windows]
    if not batches:
        raise UserError("norm_tune got no calibration windows: the data function yielded nothing")
    for b in batches:
        if b.ndim != 2 or not np.issubdtype(b.dtype, np.integer):
            raise UserError(f"norm_tune needs batches of token ids of shape (batch, seqlen) and an integer dtype, got "
                            f"{b.dtype}{b.shape}")
    lengths = sorted({b.shape[1] for b in batches})
    if len(lengths) > 1 or lengths[0] < 2:
        raise UserError(f"norm_tune needs windows of one length >= 2 tokens, got lengths {lengths}")
    out = np.concatenate(batches).astype(np.int32)
    if out.size == 0:
        raise UserError("norm_tune got no calibration windows (the batches are empty)")
    if out.min() < 0 or out.max() >= vocab_size:
        raise UserError(f"token ids must lie in [0, {vocab_size}) (the model's vocabulary), got "
                        f"[{out.min()}, {out.max()}]: were the windows tokenised for another model?")
    return out


# ---------------------------------------------------------------------------------------------------- the objective

def _next_token_nll(logits: jax.Array, ids: jax.Array) -> jax.Array:
    """Mean next-token NLL, as logsumexp − target logit (no (B, T, V) log-softmax kept). ``jax.nn.logsumexp``
    rather than :func:`jaxfold.eval.token_logprob.logsumexp_last`: under a gradient the latter's row-wise
    ``lax.map`` is 3× slower on XLA:CPU (0.86 s vs 0.29 s for SmolLM2's 1,024 × 49,152 logits)."""
    logits = logits[:, :-1].astype(jnp.float32)
    picked = jnp.take_along_axis(logits, ids[:, 1:, None], axis=-1)[..., 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - picked)


def _kl(teacher: jax.Array, student: jax.Array) -> jax.Array:
    """Mean over positions of KL(softmax(teacher) ‖ softmax(student)) = Σ p_t (t − s) − lse(t) + lse(s): zero,
    with a zero gradient, when the logits are equal."""
    teacher, student = teacher.astype(jnp.float32), student.astype(jnp.float32)
    lse_t = jax.nn.logsumexp(teacher, axis=-1)
    p = jnp.exp(teacher - lse_t[..., None])
    return jnp.mean(jnp.sum(p * (teacher - student), axis=-1) - lse_t + jax.nn.logsumexp(student, axis=-1))


def _objective_fn(config: Any, teacher_config: Any, loss: str):
    module = config.module()
    teacher_module = teacher_config.module() if teacher_config is not None else None

    def objective(scales, frozen, teacher_variables, ids):
        variables = tree_lib.unflatten({**frozen, **{p: s.astype(config.jnp_dtype) for p, s in scales.items()}})
        logits = module.apply(variables, ids)
        if loss == "lm":
            return _next_token_nll(logits, ids)
        return _kl(jax.lax.stop_gradient(teacher_module.apply(teacher_variables, ids)), logits)

    return objective


@functools.lru_cache(maxsize=8)
def _step_fn(config: Any, teacher_config: Any, loss: str):
    """The jitted Adam step on the scales (compiled once per model configs and loss; lr is a value)."""
    grad_fn = jax.value_and_grad(_objective_fn(config, teacher_config, loss))
    adam = optax.scale_by_adam(eps=ADAM_EPS)  # optax.adam = scale_by_adam, then × −lr (below: lr is a value)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(scales, opt_state, frozen, teacher_variables, ids, lr):
        value, grads = grad_fn(scales, frozen, teacher_variables, ids)
        updates, opt_state = adam.update(grads, opt_state, scales)
        new = jax.tree.map(lambda s, u: s - lr * u, scales, updates)
        return new, opt_state, {"loss": value, "grad_norm": optax.tree.norm(grads)}

    return step, adam


def _split(variables: Mapping[str, Any]) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """(float32 copies of the norm scales, the other leaves on the device), both flat by path."""
    flat = tree_lib.flatten(variables)
    paths = set(norm_paths(variables))
    scales = {p: jnp.array(a, jnp.float32) for p, a in flat.items() if p in paths}
    return scales, jax.device_put({p: a for p, a in flat.items() if p not in paths})


def _teacher(loss: str, config: Any, teacher: tuple[Any, Any] | None) -> tuple[Any, Any]:
    if loss != "distill":
        return None, None
    if teacher is None:
        raise UserError("norm_tune loss='distill' needs the dense teacher: pass teacher=(dense_config, "
                        "dense_variables), or use loss='lm' on real text")
    teacher_config, teacher_variables = teacher
    _check_llama(teacher_config, "teacher")
    if teacher_config.vocab_size != config.vocab_size:
        raise UserError(f"the teacher's vocabulary ({teacher_config.vocab_size}) differs from the model's "
                        f"({config.vocab_size}); distillation compares next-token distributions over one vocabulary")
    return teacher_config, jax.device_put(teacher_variables)


def batch_order(n: int, batch_size: int, steps: int, key: jax.Array) -> np.ndarray:
    """(steps, batch_size) window indices: epoch e visits all n windows in the order of permutation(fold_in(key,
    e)), consecutive batches cut from the concatenated epochs."""
    epochs = math.ceil(steps * batch_size / n)
    order = np.concatenate([np.asarray(jax.random.permutation(jax.random.fold_in(key, e), n))
                            for e in range(epochs)])
    return order[: steps * batch_size].reshape(steps, batch_size)


# ---------------------------------------------------------------------------------------------------- public API

def tune_norms_with_history(config: Any, variables: Mapping[str, Any], windows: Iterable[Any] | np.ndarray,
                            key: jax.Array, options: NormTuneOptions = NormTuneOptions(), *,
                            teacher: tuple[Any, Any] | None = None,
                            progress: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """:func:`tune_norms`, plus ``{'loss', 'grad_norm', 'lr'}`` per step (the loss of each step's batch and the
    global norm of its gradient, *before* the step's update)."""
    if not isinstance(options, NormTuneOptions):
        raise TypeError(f"options must be NormTuneOptions, got {type(options).__name__}")
    _check_llama(config, "model")
    ids = collect_windows(windows, config.vocab_size)
    teacher_config, teacher_variables = _teacher(options.loss, config, teacher)
    batch_size = min(options.batch_size, len(ids))
    order = batch_order(len(ids), batch_size, options.steps, key)
    lrs = learning_rates(options)
    scales, frozen = _split(variables)
    step, adam = _step_fn(config, teacher_config, options.loss)
    opt_state = adam.init(scales)
    parts = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=options.steps, unit="step", desc=f"norm_tune ({options.loss})")
    for i in range(options.steps):
        scales, opt_state, out = step(scales, opt_state, frozen, teacher_variables, jnp.asarray(ids[order[i]]),
                                      jnp.float32(lrs[i]))
        parts.append(out)  # device scalars: reading them only at the end keeps dispatch asynchronous
        if bar is not None:
            bar.update(1)
            if (i + 1) % _PROGRESS_EVERY == 0 or i + 1 == options.steps:
                bar.set_postfix(loss=f"{float(out['loss']):.4f}")
    if bar is not None:
        bar.close()
    fetched = jax.device_get(parts)
    history = {k: np.array([p[k] for p in fetched], np.float32) for k in ("loss", "grad_norm")}
    history["lr"] = lrs
    tuned = jax.device_get(scales)
    if not all(np.all(np.isfinite(s)) for s in tuned.values()):
        raise FloatingPointError("norm_tune diverged (non-finite norm scales); lower the lr option")
    flat = tree_lib.flatten(variables)
    for path, value in tuned.items():  # the input's dtype, on the host or the device as the input was
        new = np.asarray(value).astype(flat[path].dtype)
        flat[path] = new if isinstance(flat[path], np.ndarray) else jnp.asarray(new)
    return tree_lib.unflatten(flat), history


def tune_norms(config: Any, variables: Mapping[str, Any], windows: Iterable[Any] | np.ndarray, key: jax.Array, *,
               steps: int = NormTuneOptions.steps, lr: float = NormTuneOptions.lr,
               batch_size: int = NormTuneOptions.batch_size, loss: str = NormTuneOptions.loss,
               warmup: float = NormTuneOptions.warmup, teacher: tuple[Any, Any] | None = None,
               progress: bool = True) -> dict[str, Any]:
    """New ``variables`` of the LLaMA ``config`` whose RMSNorm scales were fine-tuned on ``windows`` (a (N, T)
    int array or an iterable of (B, T) batches of token ids); every other leaf is the input's own object.

    ``loss="distill"`` needs ``teacher=(dense_config, dense_variables)``; ``loss="lm"`` ignores it. Pure, and
    bit-identical for a ``key`` (it only orders the batches) on one machine type and jax/XLA build; a tqdm bar
    unless ``progress=False``."""
    options = NormTuneOptions(steps=steps, lr=lr, batch_size=batch_size, loss=loss, warmup=warmup)
    return tune_norms_with_history(config, variables, windows, key, options, teacher=teacher, progress=progress)[0]


_OPTION_NAMES = (*(f.name for f in dataclasses.fields(NormTuneOptions)), "progress")


@register_correction("norm_tune", inputs="tokens", data_free=False,
                     description="fine-tune only the RMSNorm scales on calibration token windows (the paper's "
                                 "'+ fine-tune norm', Table 3): lm loss, or KL to the dense model (distill)")
def norm_tune(ctx: CorrectionContext) -> dict[str, Any]:
    options = dict(ctx.options)
    unknown = sorted(set(options) - set(_OPTION_NAMES))
    if unknown:
        raise UserError(f"norm_tune options are {list(_OPTION_NAMES)}; got unknown {unknown}")
    _check_llama(ctx.folded_config, "compressed model")
    windows = ctx.require_data("norm_tune")()
    return tune_norms(ctx.folded_config, ctx.folded, windows, ctx.key, teacher=(ctx.config, ctx.variables),
                      **options)


__all__ = ["LOSSES", "NormTuneOptions", "batch_order", "collect_windows", "learning_rates",
           "norm_paths", "tune_norms", "tune_norms_with_history"]
