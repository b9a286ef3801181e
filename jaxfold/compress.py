"""Folding a *model* (config + variables) rather than a bare pytree: the glue between the pure core
(:mod:`jaxfold.fold`) and the model zoo — fold with the architecture's spec, rebuild the config at the new widths,
check the analytic size against the real arrays, and report FLOPs before and after.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jaxfold import tree as tree_lib
from jaxfold.fold import Clusterer, Plan, fold
from jaxfold.models.base import ModelConfig


@dataclasses.dataclass(frozen=True)
class FoldedModel:
    config: ModelConfig
    variables: dict[str, Any]
    report: dict[str, Any]
    labels: dict[str, Any]


def fold_model(model_config: ModelConfig, variables: dict[str, Any], plan: Plan, key: jax.Array, *,
               clusterer: str | Clusterer = "kmeans", n_init: int = 10, max_iter: int = 300) -> FoldedModel:
    """Fold ``variables`` of ``model_config`` with its fold spec; returns the rebuilt smaller model."""
    result = fold(variables, model_config.fold_spec(), plan, key, clusterer=clusterer, n_init=n_init,
                  max_iter=max_iter)
    folded_config = model_config.with_widths(result.widths)
    problems = tree_lib.compare(folded_config.abstract_variables(), result.variables)
    if problems:  # a spec whose config_fields disagree with the module: a bug in the architecture's spec
        raise AssertionError(f"{model_config.arch}: folded arrays do not match the rebuilt config: {problems[:5]}")
    report = dict(result.report)
    report.update(flops_before=model_config.flops(), flops_after=folded_config.flops(),
                  params_analytic=folded_config.param_count())
    report["flops_reduction"] = 1.0 - report["flops_after"] / report["flops_before"]
    return FoldedModel(folded_config, result.variables, report, result.labels)
