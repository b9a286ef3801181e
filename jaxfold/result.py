"""The one result of every compression — folding, IFM, magnitude pruning, Wanda-sp, within-group folding, a zoo
model's fold/correct, a traced (linen or NNX) fold, a merge of two models — so that sweeps, corrections and reports
treat them alike.

The report stays a plain ``dict`` at runtime (written as JSON, updated, copied); :class:`CompressionReport`
documents the keys producers write, and a key written by a producer but missing there is a bug (tests check it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from jaxfold.errors import UserError

if TYPE_CHECKING:
    from jaxfold.models.base import ModelConfig
    from jaxfold.spec import FoldSpec


class GroupReport(TypedDict, total=False):
    """One group's entry in ``report['groups']`` (in the spec's group order)."""

    group: str  # the group's name
    n: int  # width before
    k: int  # width after
    channel_ratio: float  # 1 - k / n
    inertia: float  # k-means objective of the partition on the group's features (folding and IFM, not pruning)
    seconds: float  # this group's share of the selection phase
    mixed_clusters: int  # a merge (jaxfold.merging; n: the stacked width 2k): clusters with channels of both models


class CompressionReport(TypedDict, total=False):
    """What a compression reports; every producer writes a subset of these keys."""

    method: str  # the baseline that produced it ('ifm', 'sp_l1', 'sp_l2', 'wanda_sp'); absent for folding; a
    # merge's method ('folding', 'weight_matching', 'zipit')
    groups: list[GroupReport]
    seconds: float  # wall time of the core fold / prune
    # sizes: parameters of ``params`` (no running statistics), FLOPs of one example's forward pass
    params_before: int
    params_after: int
    params_analytic: int | None  # the rebuilt config's analytic count (None where the architecture has none)
    param_sparsity: float  # 1 - params_after / params_before
    flops_before: int
    flops_after: int
    flops_counted: str  # 'analytic' or 'measured' (jaxfold.measure.config_counts)
    flops_reduction: float  # 1 - flops_after / flops_before
    fold_seconds: float  # preparation + fold (or baseline) of a zoo model, before the correction
    # the variance correction (jaxfold.corrections) and what it noted
    correction: str  # its name; a chain of corrections joins the names with '+'
    correction_seconds: float  # a chain's total
    correction_steps: dict[str, float]  # a chain: seconds per correction
    correction_options: dict[str, dict[str, Any]]  # a chain: the options each correction ran with
    calibration_rows: int  # activation-aware corrections: rows of calibration activations
    calibration_tokens: int  # refit: calibration tokens
    calibration_windows: int  # refit: calibration windows
    norm_restore_factor: dict[str, float]  # norm_restore: median and max of the merged rows' rescaling factors
    refit: dict[str, Any]  # refit's own report (tokens, windows, per-consumer fit before/after, …)
    # traced models (jaxfold.trace)
    derive_seconds: float  # deriving the spec from the traced program
    groups_derived: int
    axes_unfoldable: int
    uncorrected_groups: list[str]  # folded groups without a BatchNorm, merged uncorrected by a correction
    # model merging (jaxfold.merging): weight matching's coordinate-descent sweeps; REPAIR of the merged model
    sweeps: int
    repair: bool  # True when merge_models re-estimated the statistics (absent without REPAIR)
    repair_seconds: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class Compressed:
    """A compressed model. ``channel_map[g][i]`` is the new channel of original channel i of group g (-1: removed
    by pruning; folding's cluster labels, also readable as ``labels``). ``config`` is the rebuilt config of a zoo
    model; ``apply_fn(variables, *args)`` and ``spec`` run and describe a traced one; ``module`` is the folded
    ``nnx.Module`` of :func:`jaxfold.fold_nnx`, or None with ``module_note`` saying why. Keyword-only: the former
    result types each had their own field order."""

    variables: dict[str, Any]
    widths: dict[str, int]  # new width per group
    channel_map: dict[str, np.ndarray]
    report: CompressionReport
    config: ModelConfig | None = None
    apply_fn: Callable[..., Any] | None = None
    spec: FoldSpec | None = None
    module: Any = None
    module_note: str | None = None

    @property
    def labels(self) -> dict[str, np.ndarray]:
        """Folding's name for :attr:`channel_map`."""
        return self.channel_map

    def replace(self, **changes: Any) -> Compressed:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def with_report(self, **changes: Any) -> Compressed:
        """A copy whose report has ``changes`` added (a new dict; this result's report is untouched)."""
        return dataclasses.replace(self, report={**self.report, **changes})

    def config_widths(self) -> dict[str, int]:
        """The width of every group of the rebuilt config (zoo models only)."""
        if self.config is None:
            raise UserError("config_widths needs a zoo model's result (from fold_model or a baseline's *_model, "
                            "which have a config); use .widths")
        return self.config.fold_spec().widths(self.variables)
