"""``fold_traced``: fold any model given its apply function, variables and an example input — the spec derived
from the traced program, the folded forward function rebuilt from it. The result is a
:class:`~jaxfold.result.Compressed` without a config: its ``apply_fn(variables, *args)`` runs the model at the
new widths, and ``spec`` is the derived spec."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np

from jaxfold.corrections import CORRECTIONS, Correction, CorrectionContext, get_correction
from jaxfold.errors import UserError
from jaxfold.folding import fold
from jaxfold.plans import Plan
from jaxfold.result import Compressed, CompressionReport
from jaxfold.spec import FoldSpec, Group
from jaxfold.trace.analysis import Rule
from jaxfold.trace.batchnorm import recompute_statistics
from jaxfold.trace.derive import derive, trace
from jaxfold.trace.rebuild import FoldedApply

TracedFold = Compressed  # the former name of a traced fold's result, kept importable


def fold_traced(apply_fn: Callable[..., Any], variables: Mapping[str, Any], plan: Plan, key: jax.Array,
                *example_args: Any, rules: Mapping[str, Rule] | None = None,
                unfoldable: Iterable[tuple[str, int]] = (), overrides: Mapping[str, Group | None] | None = None,
                verify: bool | None = None, correction: str = "none",
                correction_options: Mapping[str, Any] | None = None,
                data: Callable[[], Iterable[Any]] | None = None, spec: FoldSpec | None = None,
                **fold_options: Any) -> Compressed:
    """Fold ``variables`` of the model ``apply_fn(variables, *example_args)`` to the widths ``plan`` asks for (a
    ratio, a {group: ratio} dict over the derived group names, or f(group, n) -> k).

    The spec is :func:`~jaxfold.trace.derive.derive_spec`'s (``rules``, ``unfoldable``, ``overrides`` and
    ``verify`` go to it); ``fold_options`` go to :func:`jaxfold.fold` (clusterer, n_init, max_iter). The result's
    ``apply_fn`` is the folded forward, called like ``apply_fn`` with the result's ``variables``. Pass ``spec``
    (a previous result's, or :func:`derive_spec`'s) to fold the same model again without deriving it again.

    ``correction``: 'none' (Fold-Naive); 'fold_ar' / 'fold_ar_fused' (data-free, BatchNorm ε read off the
    program); 'repair' (every BatchNorm's statistics re-estimated in training mode from ``data``, a function
    returning batches of the model's input — :mod:`jaxfold.trace.batchnorm`). Groups without a BatchNorm are
    merged uncorrected and listed in ``report['uncorrected_groups']``. 'fold_dir': REPAIR on a DeepInversion batch
    synthesised through the original program (options ``di_*``, ``di_seed``, ``cache_dir`` as for the zoo).
    """
    t0 = time.perf_counter()
    key_verify, key_fold = jax.random.split(key)
    if spec is None:
        spec, traced = derive(apply_fn, variables, example_args, rules=rules, unfoldable=unfoldable,
                              overrides=overrides, verify=verify, key=key_verify)
    else:  # derived once, reused across ratios: nothing is traced until the folded forward's first call
        traced = None
    derive_seconds = time.perf_counter() - t0
    fix = _traced_correction(correction)
    if fix.name == "repair" and data is None:  # before any work
        raise UserError("correction 'repair' needs data: pass data=… (a function returning batches of the "
                        "model's input) or choose a data-free correction (none, fold_ar)")
    key_fold, key_fix = jax.random.split(key_fold)
    epsilons = {}
    if fix.prepare is not None:  # Fold-AR fuses each BatchNorm with the ε its program adds
        epsilons = (traced or trace(apply_fn, variables, example_args, rules)).analysis.epsilons
    ctx = CorrectionContext(None, dict(variables), spec, key_fix,  # type: ignore[arg-type]  # no config here
                            options={**(correction_options or {}), "epsilons": dict(epsilons)})
    prepared, fold_spec, *cluster_on = fix.prepare(ctx) if fix.prepare else (variables, spec)
    result = fold(prepared, fold_spec, plan, key_fold, cluster_on=cluster_on[0] if cluster_on else None,
                  **fold_options)
    t1 = time.perf_counter()
    folded = FoldedApply(apply_fn, variables, spec, result.widths, rules,
                         first=(example_args, traced) if traced is not None else None)
    if fix.name == "repair":  # the BatchNorms' statistics in training mode, from the folded program itself
        corrected = recompute_statistics(folded, result.variables, data)
    elif fix.name == "fold_dir":  # the same, on a DeepInversion batch of the original model instead of data
        images = _deep_inversion_images(apply_fn, variables, example_args, rules, correction_options or {})
        corrected = recompute_statistics(folded, result.variables, lambda: [images])
    else:
        corrected = fix.apply(dataclasses.replace(ctx, spec=fold_spec, prepared=prepared, folded=result.variables,
                                                  labels=result.channel_map))
    normed = {g.name for g in spec.groups for m in g.members
              if m.role == "producer" and any(m.path == f"params/{k}/kernel" for k, _ in spec.norms)}
    report: CompressionReport = {**result.report, "derive_seconds": round(derive_seconds, 4),
                                 "groups_derived": len(spec.groups), "axes_unfoldable": len(spec.unfoldable),
                                 "correction": fix.name, "correction_seconds": round(time.perf_counter() - t1, 4)}
    if fix.name != "none":
        before = spec.widths(variables)
        report["uncorrected_groups"] = [g.name for g in spec.groups
                                        if g.name not in normed and result.widths[g.name] < before[g.name]]
    return Compressed(variables=corrected, widths=result.widths, channel_map=result.channel_map, report=report,
                      apply_fn=folded, spec=spec)


TRACED_CORRECTIONS = ("none", "fold_ar", "fold_ar_fused", "repair", "fold_dir")


def _deep_inversion_images(apply_fn: Callable[..., Any], variables: Mapping[str, Any], example_args: tuple,
                           rules: Any, options: Mapping[str, Any]) -> np.ndarray:
    """Fold-DIR's cached batch for a traced model, with the zoo's options (``di_*``, ``di_seed``, ``cache_dir``)."""
    from pathlib import Path

    from jaxfold.corrections.fold_dir import deep_inversion_options
    from jaxfold.paths import cache_root
    from jaxfold.trace.batchnorm import deep_inversion_batch

    if len(example_args) != 1:
        raise UserError("fold_dir on a traced model needs a model with one input (the image batch)")
    cache_dir = Path(options.get("cache_dir") or cache_root() / "deep_inversion")
    return deep_inversion_batch(apply_fn, variables, example_args[0], jax.random.key(int(options.get("di_seed", 0))),
                                deep_inversion_options(dict(options)), cache_dir, rules)


def _traced_correction(name: str) -> Correction:
    if name not in CORRECTIONS:
        raise UserError(f"unknown correction {name!r}; on a traced model use one of {list(TRACED_CORRECTIONS)}")
    if name not in TRACED_CORRECTIONS:
        raise UserError(f"correction {name!r} is not available on a traced model; use one of "
                        f"{list(TRACED_CORRECTIONS)}, or a zoo model with jaxfold.fold_model")
    return get_correction(name)
