"""DeepInversion (Yin et al., CVPR 2020): synthesise a batch of inputs from a trained BatchNorm network alone.

Fold-DIR generates one such batch from the *uncompressed* model and then runs REPAIR with it. The inputs are
optimised with Adam so that every BatchNorm layer sees batch statistics equal to its running statistics, while a
cross-entropy term pulls them towards random target classes and total-variation / L2 priors keep them smooth:

    R(x) = ce_weight·CE(f(x̃), t) + bn_weight·Σ_l m_l (‖μ_l(x̃) − μ_l‖₂ + ‖σ²_l(x̃) − σ²_l‖₂)
           + tv_weight·TV(x̃) + l2_weight·‖x̃‖₂,        x̃ = jitter/flip(x),  m_0 = first_bn_multiplier, m_l = 1

Conventions follow the CIFAR-10 script of NVlabs' DeepInversion code (``cifar10/deepinversion_cifar10.py``),
which the Fold-DIR README points to for its DI images: the network runs in eval mode (BN normalises with its
running statistics — "important, otherwise generated images will be non natural"), the statistics are of each
BN's *input*, the norms are plain (not squared) L2 norms, TV is the sum of the L2 norms of the four neighbour
differences over the whole batch, and the loss is on the jittered batch. Images live in the model's normalised
input space (what it consumes), so they can be fed straight to REPAIR.

Each step is one jitted call (compiled once per model config and structural options; reused across keys,
variables, step counts and weights) and the result is bit-identical for a key on one machine type and jax/XLA
build (across CPU types the float rounding may differ: README, "What reproduces exactly").
:func:`cached_synthesize` stores the batch on disk, so a sweep generates it once per model and reuses it across
sparsities.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfold import tree as tree_lib
from jaxfold.batch_stats import forward_with_bn_statistics, running_statistics
from jaxfold.errors import UserError
from jaxfold.files import write_bytes_atomic

_CACHE_FORMAT = 1  # bump when the synthesis changes, so stale cache files are not reused
_PROGRESS_EVERY = 50  # steps between progress-bar loss read-outs (each read waits for the device)


@dataclasses.dataclass(frozen=True)
class DeepInversionOptions:
    """DeepInversion hyper-parameters. Defaults are NVlabs' CIFAR-10 command-line defaults unless noted.

    * ``batch_size=256``, ``steps=2000``, ``lr=0.1`` (Adam, default betas, constant rate) — NVlabs CIFAR
      (``--bs``, ``--iters_mi``, ``--di_lr``). The paper does not give its DI settings.
    * ``bn_weight=100`` on Σ_l (‖Δmean‖₂ + ‖Δvar‖₂), norms not squared — NVlabs CIFAR ``--r_feature_weight``.
    * ``first_bn_multiplier=1``: NVlabs' ImageNet script weights the first BN 10× to fight the stem's
      aliasing; the CIFAR script does not. Raise it for ImageNet-style stems.
    * ``ce_weight=1``: cross-entropy (batch mean) to the targets, unweighted as in NVlabs.
    * ``tv_weight=2.5e-5`` on the sum of the L2 norms of the 4 neighbour differences (horizontal, vertical,
      both diagonals) over the whole batch — NVlabs CIFAR ``--di_var_scale``.
    * ``l2_weight=0`` on ‖x̃‖₂ of the whole batch — NVlabs CIFAR ``--di_l2_scale`` (the authors' MLP script: 0.2).
    * ``jitter=2``: the whole batch is rolled by (dy, dx) ∈ [−2, 2]² each step — NVlabs (``lim_0 = lim_1 = 2``).
    * ``flip=False``: random horizontal flip of the whole batch each step is NVlabs' ImageNet setting, not its
      CIFAR one, and it is wrong for data that is not mirror-symmetric (digits, text).
    * ``targets="random"``: classes drawn uniformly from the key (as the authors' MLP script); ``"balanced"``
      cycles 0, 1, …, C−1 like NVlabs CIFAR (``[0..9]*25 + [0..5]``).
    * ``bn_mode="eval"``: forward pass with running statistics (NVlabs). ``"train"`` normalises every BN with
      its batch statistics instead (the pass :func:`jaxfold.batch_stats.batch_statistics` reads).

    NVlabs returns the inputs after the last step (its ``best_inputs = inputs.data`` shares storage with the tensor
    Adam updates in place); so do we.
    """

    batch_size: int = 256
    steps: int = 2000
    lr: float = 0.1
    bn_weight: float = 100.0
    first_bn_multiplier: float = 1.0
    ce_weight: float = 1.0
    tv_weight: float = 2.5e-5
    l2_weight: float = 0.0
    jitter: int = 2
    flip: bool = False
    targets: str = "random"
    bn_mode: str = "eval"

    def __post_init__(self) -> None:
        for name in ("batch_size", "steps"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise UserError(f"DeepInversionOptions.{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.jitter, int | np.integer) or isinstance(self.jitter, bool) or self.jitter < 0:
            raise UserError(f"DeepInversionOptions.jitter must be an integer >= 0 (pixels), got {self.jitter!r}")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"DeepInversionOptions.lr must be a finite number > 0, got {self.lr!r}")
        for name in ("bn_weight", "first_bn_multiplier", "ce_weight", "tv_weight", "l2_weight"):
            value = getattr(self, name)
            if not (isinstance(value, int | float | np.number) and np.isfinite(value) and value >= 0):
                raise UserError(f"DeepInversionOptions.{name} must be a finite number >= 0, got {value!r}")
        if self.targets not in ("random", "balanced"):
            raise UserError(f"DeepInversionOptions.targets must be 'random' or 'balanced', got {self.targets!r}")
        if self.bn_mode not in ("eval", "train"):
            raise UserError(f"DeepInversionOptions.bn_mode must be 'eval' or 'train', got {self.bn_mode!r}")


# ---------------------------------------------------------------------------------------------------- forward pass

def _check_model(model_config: Any, variables: dict[str, Any], train: bool) -> int:
    """Fail clearly unless every BN the forward pass meets has running statistics; return the number of classes."""
    module = model_config.module()
    x = jax.ShapeDtypeStruct((1, *model_config.input_shape), jnp.float32)
    logits, stats = jax.eval_shape(lambda v, x: forward_with_bn_statistics(module, v, x, train), variables, x)
    running = running_statistics(variables)
    if not stats or not running:
        raise UserError(f"DeepInversion needs BatchNorm running statistics to match, but the model "
                        f"{type(model_config).__name__} has no BatchNorm layer (or its variables no 'batch_stats'); "
                        "use a data-free correction that does not need them (fold_ar, none) or real data (repair)")
    missing = sorted(set(stats) - set(running))
    if missing:
        raise UserError(f"BatchNorm layers {missing} have no running statistics in variables['batch_stats'] "
                        f"(present: {sorted(running)})")
    return int(logits.shape[-1])


def _norm(v: jax.Array) -> jax.Array:
    """‖v‖₂ with a zero (not NaN) gradient at v = 0."""
    sq = jnp.sum(jnp.square(v))
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def _bn_loss(stats: dict, running: dict, first_bn_multiplier: float) -> jax.Array:
    total = jnp.zeros((), jnp.float32)
    for i, (path, (mean, var)) in enumerate(stats.items()):
        run_mean, run_var = running[path]
        term = _norm(mean - run_mean) + _norm(var - run_var)
        total = total + (first_bn_multiplier if i == 0 else 1.0) * term
    return total


def _tv(x: jax.Array) -> jax.Array:
    """NVlabs' L2 total variation of NHWC images: the L2 norms of the 4 neighbour differences, summed."""
    return (_norm(x[:, :, :-1] - x[:, :, 1:]) + _norm(x[:, :-1, :] - x[:, 1:, :])
            + _norm(x[:, 1:, :-1] - x[:, :-1, 1:]) + _norm(x[:, :-1, :-1] - x[:, 1:, 1:]))


def bn_loss(model_config: Any, variables: dict[str, Any], images: np.ndarray | jax.Array,
            bn_mode: str = "eval", first_bn_multiplier: float = 1.0) -> float:
    """Unweighted BN-statistics loss Σ_l m_l (‖Δmean‖₂ + ‖Δvar‖₂) of a batch (no jitter): how well it matches
    the model's running statistics — 0 for a batch whose every BN sees exactly the running statistics."""
    _check_model(model_config, variables, bn_mode == "train")
    x = jnp.asarray(images, jnp.float32)
    _, stats = forward_with_bn_statistics(model_config.module(), variables, x, bn_mode == "train")
    return float(_bn_loss(stats, running_statistics(variables), first_bn_multiplier))


# ---------------------------------------------------------------------------------------------------- optimisation

def _hyper(o: DeepInversionOptions) -> dict[str, jax.Array]:
    """The numeric options, passed to the compiled step as values: changing them does not recompile."""
    names = ("lr", "bn_weight", "first_bn_multiplier", "ce_weight", "tv_weight", "l2_weight")
    return {n: jnp.float32(getattr(o, n)) for n in names}


# (variables, x) -> (logits, {bn: (mean, biased var) of its input})
Forward = Callable[[Any, jax.Array], tuple[jax.Array, dict[str, tuple[jax.Array, jax.Array]]]]


@functools.lru_cache(maxsize=8)
def zoo_forward(model_config: Any, train: bool) -> Forward:
    """A zoo model's ``(variables, x) -> (logits, {bn: input statistics})``, one stable object per config."""
    return functools.partial(forward_with_bn_statistics, model_config.module(), train=train)


@functools.lru_cache(maxsize=8)
def _step_fn(forward: Forward, jitter: int, flip: bool):
    """The jitted optimisation step for a forward function and the structural options (cached, so it compiles
    once per model whatever the key, variables, step count or weights).

    One jitted step driven from Python, not a ``lax.scan``/``fori_loop`` over steps: XLA:CPU runs convolutions
    inside a loop body several times slower (jax-ml/jax#12868; measured 0.29 s vs 0.07 s per step here), and the
    per-step dispatch is negligible next to a forward-backward pass on any device.
    """
    def objective(x, variables, running, targets, key, hp):
        kshift, kflip = jax.random.split(key)
        if jitter:
            shift = jax.random.randint(kshift, (2,), -jitter, jitter + 1)
            x = jnp.roll(x, (shift[0], shift[1]), axis=(1, 2))
        if flip:
            x = jnp.where(jax.random.bernoulli(kflip), x[:, :, ::-1], x)
        logits, stats = forward(variables, x)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets).mean()
        bn = _bn_loss(stats, running, hp["first_bn_multiplier"])
        tv = _tv(x)
        l2 = _norm(x)
        total = hp["ce_weight"] * ce + hp["bn_weight"] * bn + hp["tv_weight"] * tv + hp["l2_weight"] * l2
        return total, {"loss": total, "bn": bn, "ce": ce, "tv": tv, "l2": l2}

    grad_fn = jax.value_and_grad(objective, has_aux=True)
    adam = optax.scale_by_adam()  # optax.adam = scale_by_adam, then × −lr (done below, so lr is a value)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(x, opt_state, i, variables, running, targets, aug_key, hp):
        (_, parts), g = grad_fn(x, variables, running, targets, jax.random.fold_in(aug_key, i), hp)
        updates, opt_state = adam.update(g, opt_state, x)
        return x - hp["lr"] * updates, opt_state, parts

    return step, adam


def synthesize_with_history(model_config: Any, variables: dict[str, Any], key: jax.Array,
                            options: DeepInversionOptions = DeepInversionOptions(),
                            progress: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """:func:`synthesize`, plus the per-step losses ``{'loss', 'bn', 'ce', 'tv', 'l2'}`` (unweighted parts;
    each is the value on the jittered batch *before* that step's update)."""
    if not isinstance(options, DeepInversionOptions):
        raise TypeError(f"options must be DeepInversionOptions, got {type(options).__name__}")
    train = options.bn_mode == "train"
    num_classes = _check_model(model_config, variables, train)
    return synthesize_for(zoo_forward(model_config, train), variables, running_statistics(variables),
                          tuple(model_config.input_shape), num_classes, key, options, progress)


def synthesize_for(forward: Forward, variables: Any, running: dict[str, tuple[Any, Any]],
                   input_shape: tuple[int, ...], num_classes: int, key: jax.Array, options: DeepInversionOptions,
                   progress: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """DeepInversion for any model given as ``forward(variables, x) -> (logits, {bn: (mean, var) of its input})``
    (a stable object: the step compiles once per forward) and the running statistics it should match, keyed
    alike. What :func:`synthesize_with_history` runs for a zoo config and the traced-model Fold-DIR for any
    other model."""
    variables = jax.tree.map(jnp.asarray, variables)  # a new tree of device arrays; the caller's is untouched
    k_init, k_targets, k_aug = jax.random.split(key, 3)
    shape = (options.batch_size, *input_shape)
    x = jax.random.normal(k_init, shape, jnp.float32)
    if options.targets == "random":
        targets = jax.random.randint(k_targets, (options.batch_size,), 0, num_classes)
    else:
        targets = jnp.arange(options.batch_size) % num_classes

    step, adam = _step_fn(forward, options.jitter, options.flip)
    hp = _hyper(options)
    opt_state = adam.init(x)
    history: list[dict[str, jax.Array]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=options.steps, unit="step", desc="DeepInversion")
    for i in range(options.steps):
        x, opt_state, parts = step(x, opt_state, jnp.int32(i), variables, running, targets, k_aug, hp)
        history.append(parts)  # device scalars: reading them only at the end keeps dispatch asynchronous
        if bar is not None:
            bar.update(1)
            if (i + 1) % _PROGRESS_EVERY == 0 or i + 1 == options.steps:
                bar.set_postfix(loss=f"{float(parts['loss']):.3f}", bn=f"{float(parts['bn']):.3f}")
    if bar is not None:
        bar.close()
    images = np.asarray(jax.device_get(x), np.float32)
    if not np.all(np.isfinite(images)):
        raise FloatingPointError("DeepInversion diverged (non-finite inputs); lower DeepInversionOptions.lr")
    fetched = jax.device_get(history)
    hist = {k: np.array([h[k] for h in fetched], np.float32) for k in fetched[0]}
    return images, hist


def synthesize(model_config: Any, variables: dict[str, Any], key: jax.Array,
               options: DeepInversionOptions = DeepInversionOptions(),
               progress: bool = False) -> np.ndarray:
    """One DeepInversion batch ``(batch_size, *input_shape)`` float32 in the model's normalised input space.

    Pure, and bit-identical for a ``key`` (init, targets, jitter and flips all come from it) on one machine type
    and jax/XLA build; silent unless ``progress`` (a tqdm bar).
    """
    return synthesize_with_history(model_config, variables, key, options, progress)[0]


# ---------------------------------------------------------------------------------------------------- disk cache

def _key_bytes(key: jax.Array) -> tuple[str, bytes]:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return str(jax.random.key_impl(key)), np.asarray(jax.random.key_data(key)).tobytes()
    return "raw-uint32", np.asarray(key, np.uint32).tobytes()


def cache_key(model: Any, variables: dict[str, Any], key: jax.Array, options: DeepInversionOptions) -> str:
    """sha256 over the model (a config, or a string that identifies its program), the variables' bytes, the
    options and the key: what determines the batch."""
    h = hashlib.sha256()
    h.update(f"jaxfold-deepinversion-v{_CACHE_FORMAT}\0".encode())
    h.update((model if isinstance(model, str) else model.to_json()).encode() + b"\0")
    h.update(json.dumps(dataclasses.asdict(options), sort_keys=True).encode() + b"\0")
    impl, data = _key_bytes(key)
    h.update(impl.encode() + b"\0" + data + b"\0")
    for path, leaf in sorted(tree_lib.flatten(variables).items()):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{path}:{a.dtype.str}:{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_bytes_atomic(path, buffer.getvalue())


def cached_synthesize(model_config: Any, variables: dict[str, Any], key: jax.Array, options: DeepInversionOptions,
                      cache_dir: str | os.PathLike, progress: bool = False) -> np.ndarray:
    """:func:`synthesize`, stored as ``<cache_dir>/di-<hash[:16]>.npy`` and reused when present and valid.

    A file that cannot be read, or holds the wrong shape/dtype or non-finite values, is regenerated with a
    warning rather than used.
    """
    return cached(model_config, tuple(model_config.input_shape), variables, key, options, cache_dir,
                  lambda: synthesize(model_config, variables, key, options, progress))


def cached(model: Any, input_shape: tuple[int, ...], variables: dict[str, Any], key: jax.Array,
           options: DeepInversionOptions, cache_dir: str | os.PathLike, make: Callable[[], np.ndarray]) -> np.ndarray:
    """The batch ``make()`` returns, stored under :func:`cache_key` of ``model`` (a config or an identifying
    string) and reused when present and valid."""
    shape = (options.batch_size, *input_shape)
    path = Path(cache_dir) / f"di-{cache_key(model, variables, key, options)[:16]}.npy"
    if path.exists():
        problem = None
        try:
            images = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            problem = f"unreadable ({type(e).__name__}: {e})"
        else:
            if images.shape != shape or images.dtype != np.float32:
                problem = f"holds {images.dtype}{images.shape}, expected float32{shape}"
            elif not np.all(np.isfinite(images)):
                problem = "holds non-finite values"
        if problem is None:
            return images
        warnings.warn(f"DeepInversion cache file {path} {problem}; regenerating it", RuntimeWarning, stacklevel=2)
    images = make()
    _save_npy_atomic(path, images)
    return images


__all__ = ["DeepInversionOptions", "bn_loss", "cache_key", "cached", "cached_synthesize", "synthesize",
           "synthesize_for", "synthesize_with_history", "zoo_forward"]
