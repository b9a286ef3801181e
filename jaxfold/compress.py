"""Compressing a *model* (config + variables) rather than a bare pytree: the glue between the pure core
(:mod:`jaxfold.folding`), the variance corrections (:mod:`jaxfold.corrections`) and the model zoo — fold with the
architecture's spec, correct, rebuild the config at the new widths, check the analytic size against the real
arrays, and report FLOPs before and after. Baselines (:mod:`jaxfold.baselines`) return the same
:class:`~jaxfold.result.Compressed` (with its ``config``) through :func:`rebuild`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxfold import measure
from jaxfold import tree as tree_lib
from jaxfold.clustering import Clusterer
from jaxfold.corrections import Batches, Correction, CorrectionContext, correction_chain, get_correction
from jaxfold.errors import UserError
from jaxfold.folding import fold
from jaxfold.models.base import ModelConfig
from jaxfold.plans import Plan
from jaxfold.result import Compressed, CompressionReport

CompressedModel = FoldedModel = Compressed  # the former names of a compressed zoo model, kept importable


def rebuild(model_config: ModelConfig, variables: dict[str, Any], widths: dict[str, int],
            channel_map: dict[str, np.ndarray], report: CompressionReport) -> Compressed:
    """Rebuild the config at ``widths``, check the arrays match it exactly, and add size/FLOPs to the report: the
    config's analytic counts, or for an architecture without them the measured ones (:func:`measure.config_counts`;
    ``flops_counted`` says which)."""
    new_config = model_config.with_widths(widths)
    problems = tree_lib.compare(new_config.abstract_variables(), variables)
    if problems:  # a spec whose config_fields disagree with the module: a bug in the architecture's spec
        raise AssertionError(f"{model_config.arch}: compressed arrays do not match the rebuilt config: {problems[:5]}")
    report = dict(report)  # a new plain dict: the caller's report is untouched
    # analytic counts where the architecture has them, else measured from its (abstract) forward pass
    before, rebuilt = measure.config_counts(model_config), measure.config_counts(new_config)
    after = measure.param_count(variables)
    report.update(params_before=before["params"], params_after=after,
                  params_analytic=rebuilt["params"] if rebuilt["params_counted"] == "analytic" else None,
                  param_sparsity=1.0 - after / before["params"],
                  flops_before=before["flops"], flops_after=rebuilt["flops"], flops_counted=rebuilt["flops_counted"])
    report["flops_reduction"] = 1.0 - report["flops_after"] / report["flops_before"]
    return Compressed(variables=variables, widths=dict(widths), channel_map=channel_map, report=report,
                      config=new_config)


def fold_model(model_config: ModelConfig, variables: dict[str, Any], plan: Plan, key: jax.Array, *,
               correction: str | Correction = "none", data: Batches | None = None,
               correction_options: dict[str, Any] | None = None, clusterer: str | Clusterer = "kmeans",
               n_init: int = 10, max_iter: int = 300) -> Compressed:
    """Fold ``variables`` of ``model_config`` with its fold spec and a variance correction (by name: 'none',
    'repair', 'fold_ar', 'fold_dir', or a registered one); returns the rebuilt smaller model.

    ``data`` is a function returning batches of normalised training inputs, needed by data-driven corrections
    ('repair'); the data-free ones ignore it.
    """
    fix = get_correction(correction)
    key_fold, key_fix = jax.random.split(key)
    ctx = CorrectionContext(model_config, variables, model_config.fold_spec(), key_fix, data=data,
                            options=dict(correction_options or {}))
    if not fix.data_free:
        ctx.require_data(fix.name)
    t0 = time.perf_counter()
    prepared, spec, *cluster_on = fix.prepare(ctx) if fix.prepare else (variables, ctx.spec)
    result = fold(prepared, spec, plan, key_fold, clusterer=clusterer, n_init=n_init, max_iter=max_iter,
                  cluster_on=cluster_on[0] if cluster_on else None)
    report = dict(result.report, fold_seconds=round(time.perf_counter() - t0, 4))
    folded = rebuild(model_config, result.variables, result.widths, result.channel_map, report)
    return correct(model_config, variables, folded, fix, key=key_fix, data=data, options=correction_options,
                   prepared=prepared, spec=spec)


def correct(model_config: ModelConfig, variables: dict[str, Any], compressed: Compressed,
            correction: str | Correction, *, key: jax.Array | None = None, data: Batches | None = None,
            options: dict[str, Any] | None = None, prepared: dict[str, Any] | None = None,
            spec: Any = None) -> Compressed:
    """Apply a correction to an already compressed model (a Fold-Naive fold, or a pruned model): fold once, try
    several corrections. A correction that changes what is clustered (``prepare``, e.g. fold_ar) must go through
    :func:`fold_model` instead."""
    fix = get_correction(correction)
    if compressed.config is None:
        raise UserError("correct needs a compressed zoo model (from fold_model, rebuild or a baseline's *_model); "
                        "a traced model is corrected by fold_traced(..., correction=...)")
    if fix.prepare is not None and prepared is None:
        raise ValueError(f"correction {fix.name!r} changes what is clustered; use fold_model(..., "
                         f"correction={fix.name!r}) rather than correcting a finished fold")
    ctx = CorrectionContext(model_config, variables, spec or model_config.fold_spec(),
                            key if key is not None else jax.random.key(0), prepared=prepared or variables,
                            folded_config=compressed.config, folded=compressed.variables,
                            labels=compressed.channel_map, data=data, options=dict(options or {}))
    if not fix.data_free:
        ctx.require_data(fix.name)
    t0 = time.perf_counter()
    corrected = fix.apply(ctx)
    report = dict(compressed.report, **ctx.notes, correction=fix.name,
                  correction_seconds=round(time.perf_counter() - t0, 4))
    return rebuild(model_config, corrected, compressed.config_widths(), compressed.channel_map, report)


def correct_chain(model_config: ModelConfig, variables: dict[str, Any], compressed: Compressed,
                  corrections: Sequence[str], *, key: jax.Array | None = None, data: Batches | None = None,
                  options: Mapping[str, Mapping[str, Any]] | None = None,
                  steps: Mapping[str, float] | None = None) -> Compressed:
    """Apply ``corrections`` in order to a finished compression (e.g. ``("refit", "norm_tune")`` after pruning):
    each sees the dense model and the previous step's result, with its own ``options[name]``. The report names the
    chain (``correction`` = names joined by '+'), its total ``correction_seconds``, ``correction_steps`` (seconds
    per step, after ``steps`` already taken) and the ``correction_options`` each step ran with."""
    options = dict(options or {})
    done = dict(steps or {})
    for name in corrections:
        compressed = correct(model_config, variables, compressed, name, key=key, data=data,
                             options=dict(options.get(name, {})))
        done[name] = compressed.report["correction_seconds"]
    if not done:
        return compressed
    report = dict(compressed.report, correction="+".join(done), correction_seconds=round(sum(done.values()), 4),
                  correction_steps=done, correction_options={n: dict(options.get(n, {})) for n in done})
    return rebuild(model_config, compressed.variables, compressed.config_widths(), compressed.channel_map, report)


def fold_and_correct(model_config: ModelConfig, variables: dict[str, Any], plan: Plan, key: jax.Array,
                     corrections: Sequence[str], *, data: Batches | None = None,
                     options: Mapping[str, Mapping[str, Any]] | None = None, **fold_options: Any) -> Compressed:
    """:func:`fold_model` followed by a chain of corrections (:func:`correct_chain`). A correction that changes
    what is clustered (``prepare``: act_cluster, fold_ar) can only be the fold's own, so only the first."""
    corrections = correction_chain(corrections, "fold_and_correct")
    options = dict(options or {})
    first = corrections[0] if corrections and get_correction(corrections[0]).prepare else "none"
    out = fold_model(model_config, variables, plan, key, correction=first, data=data,
                     correction_options=dict(options.get(first, {})), **fold_options)
    rest = corrections[1:] if first != "none" else corrections
    steps = {first: out.report["correction_seconds"]} if first != "none" else {}
    return correct_chain(model_config, variables, out, rest, key=key, data=data, options=options, steps=steps)
