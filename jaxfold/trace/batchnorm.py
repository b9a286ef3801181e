"""BatchNorm statistics of a traced model in training mode, from its inference program: REPAIR without a config.

REPAIR (Fold-R) resets every BatchNorm's running statistics and re-estimates them as the average of the batch
statistics of a training-mode pass over data. A traced model only has its inference program, where a BatchNorm
is ``(x − mean) · rsqrt(var + ε) · scale + bias`` with ``mean``/``var`` read from the variables. Training mode is
the same program with ``mean``/``var`` replaced by the batch statistics of its own input ``x`` — and ``x`` never
depends on them, so the program can be evaluated in an order where each BatchNorm's input comes first, its batch
statistics are computed and injected in place of the running ones, and the rest follows. One pass per batch,
every BatchNorm at once, at the folded widths (the :class:`~jaxfold.trace.rebuild.Evaluator`'s shapes).
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core

from jaxfold.corrections.repair import averaged_statistics
from jaxfold.errors import UserError
from jaxfold.trace.derive import Traced
from jaxfold.trace.rebuild import Evaluator, FoldedApply


@dataclasses.dataclass(frozen=True)
class _Norm:
    module: str  # 'batch_stats/<module>' prefix without the leaf
    x: Any  # the activation the running mean is subtracted from
    axis: int  # its channel axis
    mean: Any  # the invars of the running statistics
    var: Any


def _norms(traced: Traced) -> list[_Norm]:
    analysis = traced.analysis
    atoms = analysis.atoms
    top = {id(e) for e in traced.closed.jaxpr.eqns}
    found: dict[str, _Norm] = {}
    for eqn, index, stat_path in analysis.normalised:
        prefix = stat_path.rsplit("/", 1)[0]
        if prefix in found:
            continue
        if id(eqn) not in top:
            raise UserError(f"the BatchNorm {prefix} runs inside a nested program (jit/scan/…); training-mode "
                            "statistics are computed for top-level BatchNorms only")
        mean, var = f"{prefix}/mean", f"{prefix}/var"
        if mean not in analysis.params or var not in analysis.params:
            continue
        x = eqn.invars[index]
        channel = atoms.leaves(analysis.values[analysis.params[mean][0]].dims[0])
        axes = [a for a, atom in enumerate(analysis.values[x].dims) if atoms.leaves(atom) == channel]
        if len(axes) != 1:
            continue
        found[prefix] = _Norm(prefix, x, axes[0], analysis.params[mean][0], analysis.params[var][0])
    return list(found.values())


class TrainModeEvaluator(Evaluator):
    """Evaluates the top-level program with every BatchNorm's running statistics replaced by its batch ones
    (``train=True``), or as it is while recording each BatchNorm input's statistics (``train=False``: what
    DeepInversion matches to the running statistics)."""

    def __init__(self, traced: Traced, sizes: Mapping[int, int]) -> None:
        super().__init__(traced.analysis, sizes)
        self.traced = traced
        self.norms = _norms(traced)

    def statistics(self, args: Sequence[Any]) -> dict[str, tuple[jax.Array, jax.Array]]:
        """``{'batch_stats/<module>': (mean, biased var)}`` of every BatchNorm's input in training mode."""
        return self.run(args, train=True)[1]

    def run(self, args: Sequence[Any], train: bool) -> tuple[list[Any], dict[str, tuple[jax.Array, jax.Array]]]:
        """The program's outputs and every BatchNorm input's (mean, biased var), in training or inference mode."""
        closed = self.traced.closed
        jaxpr = closed.jaxpr
        injected = {n.mean: n for n in self.norms} | {n.var: n for n in self.norms}
        by_x: dict[Any, list[_Norm]] = {}
        for n in self.norms:
            by_x.setdefault(n.x, []).append(n)
        defining = {v: i for i, e in enumerate(jaxpr.eqns) for v in e.outvars}
        deps: list[set[int]] = []
        for eqn in jaxpr.eqns:
            d = set()
            for v in eqn.invars:
                if isinstance(v, core.Literal):
                    continue
                if v in defining:
                    d.add(defining[v])
                if v in injected and injected[v].x in defining:
                    d.add(defining[injected[v].x])
            deps.append(d)
        users: dict[int, list[int]] = {}
        for i, d in enumerate(deps):
            for j in d:
                users.setdefault(j, []).append(i)
        waiting = [len(d) for d in deps]
        ready = [i for i, w in enumerate(waiting) if w == 0]
        heapq.heapify(ready)

        env: dict[Any, Any] = dict(zip(jaxpr.constvars, closed.consts, strict=True))
        stats: dict[str, tuple[jax.Array, jax.Array]] = {}

        def inject(var: Any) -> None:
            for n in by_x.get(var, ()):
                x = env[var].astype(jnp.float32)
                axes = tuple(a for a in range(x.ndim) if a != n.axis)
                mean = jnp.mean(x, axis=axes)
                var_ = jnp.mean(jnp.square(x - jnp.expand_dims(mean, axes)), axis=axes)
                stats[n.module] = (mean, var_)
                if train:
                    env[n.mean], env[n.var] = mean.astype(n.mean.aval.dtype), var_.astype(n.var.aval.dtype)

        for var, value in zip(jaxpr.invars, args, strict=True):
            if train and var in injected:
                continue
            env[var] = value
            inject(var)
        while ready:
            i = heapq.heappop(ready)
            eqn = jaxpr.eqns[i]
            ins = [v.val if isinstance(v, core.Literal) else env[v] for v in eqn.invars]
            for var, value in zip(eqn.outvars, self.equation(eqn, ins), strict=True):
                env[var] = value
                inject(var)
            for j in users.get(i, ()):
                waiting[j] -= 1
                if waiting[j] == 0:
                    heapq.heappush(ready, j)
        return [v.val if isinstance(v, core.Literal) else env[v] for v in jaxpr.outvars], stats


def recompute_statistics(folded: FoldedApply, variables: Mapping[str, Any],
                         batches: Callable[[], Iterable[Any]]) -> dict[str, Any]:
    """``variables`` of the folded model with every BatchNorm's running mean/var replaced by the example-weighted
    average of its training-mode batch statistics over ``batches()`` (each batch: the model's one input)."""
    leaves = jax.tree_util.tree_leaves(variables)
    compiled: dict[Any, Callable[..., Any]] = {}

    def batch_stats(x: Any) -> dict[str, tuple[jax.Array, jax.Array]]:
        traced = folded.traced_for((x,))
        if len(traced.closed.jaxpr.invars) != len(leaves) + 1:
            raise UserError("repair on a traced model needs a model with one input, given as the batches")
        key = (np.shape(x), str(x.dtype))
        if key not in compiled:
            evaluator = TrainModeEvaluator(traced, folded.sizes_for(traced))
            compiled[key] = jax.jit(lambda lv, xb, ev=evaluator: ev.statistics([*lv, xb]))
        return compiled[key](leaves, x)

    return averaged_statistics(variables, batches, batch_stats)


def deep_inversion_batch(apply_fn: Callable[..., Any], variables: Mapping[str, Any], example_x: Any,
                         key: jax.Array, options: Any, cache_dir: Any, rules: Any = None) -> np.ndarray:
    """Fold-DIR's synthetic batch for a traced model: DeepInversion (:mod:`jaxfold.corrections.deep_inversion`)
    through the inference program, each BatchNorm's input statistics matched to its running ones (read off the
    program like REPAIR's), the first output taken as the logits. Cached on disk like the zoo's batch, keyed by the
    program, the variables, the options and the key."""
    import hashlib

    from jaxfold import tree as tree_lib
    from jaxfold.corrections.deep_inversion import cached, synthesize_for
    from jaxfold.trace.derive import trace

    input_shape = tuple(np.shape(example_x)[1:])
    x = jax.ShapeDtypeStruct((options.batch_size, *input_shape), jnp.float32)
    traced = trace(apply_fn, variables, (x,), rules)
    leaves = jax.tree_util.tree_leaves(variables)
    if len(traced.closed.jaxpr.invars) != len(leaves) + 1:
        raise UserError("fold_dir on a traced model needs a model with one input (the image batch)")
    evaluator = TrainModeEvaluator(traced, {})
    if not evaluator.norms:
        raise UserError("fold_dir synthesises inputs that match BatchNorm running statistics; this model has no "
                        "BatchNorm the tracer recognises (use fold_ar, none, or repair with data)")
    logits = traced.closed.jaxpr.outvars[0].aval
    if len(logits.shape) != 2:
        raise UserError(f"fold_dir pulls synthetic inputs towards random classes: the model's first output must be "
                        f"logits (batch, classes); got shape {logits.shape}")
    train = options.bn_mode == "train"

    def forward(v: Any, xb: jax.Array) -> tuple[jax.Array, dict[str, tuple[jax.Array, jax.Array]]]:
        outs, stats = evaluator.run([*jax.tree_util.tree_leaves(v), xb], train=train)
        return outs[0].astype(jnp.float32), stats

    flat = tree_lib.flatten(variables)
    running = {n.module: (flat[f"{n.module}/mean"], flat[f"{n.module}/var"]) for n in evaluator.norms}
    identity = "traced:" + hashlib.sha256(f"{input_shape}\0{traced.closed.jaxpr}".encode()).hexdigest()
    return cached(identity, input_shape, dict(variables), key, options, cache_dir,
                  lambda: synthesize_for(forward, variables, running, input_shape, int(logits.shape[-1]), key,
                                         options)[0])
