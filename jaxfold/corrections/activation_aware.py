"""Activation-aware folding: clusters and merges that use calibration statistics, not the weights alone.

Weight-only folding treats two neurons as interchangeable when their weights are close, although what the next
layer sees is the neuron's *contribution*: its weights times the activations that actually flow through them. On
a language model the input features of a layer differ in scale by orders of magnitude (the RMSNorm'd residual has
outlier features, a SwiGLU neuron may be almost never active), which weights alone cannot see. Wanda (Sun et al.,
ICLR 2024, §3, Eq. 1) scores a weight by |W_ij|·‖x_j‖ for that reason; here the same scaling serves k-means and the
merge. Three corrections, all data-driven (``ctx.data()``: batches the model is applied to, token windows (B, T)
for an LLM) and fold-only — they need a fold's clusters, so they refuse a pruned model:

* ``act_cluster``: k-means runs on a *scaled copy* of the weights; the merge still uses the original ones. Every
  Dense kernel of the fold spec (producer or consumer) has its input row j multiplied by the RMS of input feature j
  over the calibration rows, ‖x_j‖/√T: a LLaMA MLP neuron's gate/up columns are weighted by the RMSNorm'd
  residual's per-feature RMS, its down row i by the RMS of its own activation h_i = silu(gate_i)·up_i. That is
  Wanda's ‖x_j‖ up to the common factor 1/√T, which k-means does not see (its tolerance is relative to the data's
  variance) and which keeps biases (their input, the constant 1, has RMS 1) and other per-channel vectors on the
  same scale as the weights; they are not scaled.
* ``act_merge``: the merge recomputes every cluster's averaged members (producers, per-channel vectors, running
  statistics) as means weighted by each neuron's activation energy ‖h_i‖² = Σ_t h_ti² (summed over the group's
  consumers' input rows of that channel: a head's head_dim rows of o), instead of the plain mean; consumers
  stay summed. The weighted mean is the point minimising Σ_i ‖h_i‖²·‖w_i − w‖² over the cluster, so the members
  that carry the signal move least; a cluster without any energy gets the plain mean.
* ``act_aware``: both.
* ``act_select``: the limit of ``act_merge``'s weighting — every cluster's producers are those of its member with
  the most activation energy (a real neuron, not an average of dissimilar ones), consumers still summed. With a
  SwiGLU MLP an average of gate rows and an average of up rows make a neuron silu(ḡ)·ū that none of the members
  computes; a selected member keeps silu(g_i)·u_i exactly. ``act_cluster_select``: with ``act_cluster``'s clusters.

Statistics are those of the original (unfolded) model, read in one pass over the data per step
(:func:`jaxfold.input_norms.dense_input_stats`, the inputs of every producer and consumer); ``act_aware`` reads the
data twice (before clustering and after merging), with one compilation.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxfold import tree as tree_lib
from jaxfold.corrections.registry import CorrectionContext, register_correction
from jaxfold.errors import UserError
from jaxfold.input_norms import ApplyFn, InputStats, dense_input_stats
from jaxfold.merge import merge_group
from jaxfold.placement import on_host, placed_like
from jaxfold.spec import FoldSpec, Member

KERNEL_ROLES = ("producer", "consumer")


def _module(member: Member) -> str:
    return member.path.removeprefix("params/").removesuffix("/kernel")


def _check_dense_members(spec: FoldSpec, who: str) -> None:
    """Producers and consumers must be Dense kernels (in, out) whose input axis is read from the data."""
    for group in spec.groups:
        for m in group.members:
            if m.role in KERNEL_ROLES and not (m.path.startswith("params/") and m.path.endswith("/kernel")):
                raise UserError(f"{who}: group {group.name!r} has {m.role} {m.path}, not a Dense kernel "
                                "(params/…/kernel); activation-aware folding needs Dense producers and consumers")


@functools.cache
def apply_fn(config: Any) -> ApplyFn:
    """A stable ``(variables, batch) -> outputs`` per config, so the statistics pass compiles once per model."""
    module = config.module()
    return lambda variables, x: module.apply(variables, x)


def _batches(ctx: CorrectionContext, who: str) -> list[Any]:
    batches = list(ctx.require_data(who)())
    if not batches:
        raise UserError(f"{who} got no calibration batches: the data function returned nothing (give token windows, "
                        "e.g. jaxfold.eval.perplexity.windows(model.encode(text), 512)[:32] in batches of 8)")
    from jaxfold.models.llama import LlamaConfig

    if isinstance(ctx.config, LlamaConfig):
        for b in batches:
            b = np.asarray(b)
            if b.ndim != 2 or b.dtype.kind not in "iu" or b.size == 0:
                raise UserError(f"{who} needs int token windows of shape (B, T) for a language model; got a "
                                f"{b.dtype} batch of shape {b.shape}")
            if b.min() < 0 or b.max() >= ctx.config.vocab_size:
                raise UserError(f"{who}: token ids must be in [0, {ctx.config.vocab_size}), got "
                                f"[{b.min()}, {b.max()}]")
    return batches


def _stats(ctx: CorrectionContext, who: str) -> InputStats:
    """The inputs of every producer and consumer (act_merge needs only the consumers', but one set of layers
    means one compilation for both steps; the extra sums of squares cost nothing next to the forward pass)."""
    if ctx.options:
        raise UserError(f"{who} takes no options; got {sorted(ctx.options)}")
    if ctx.config is None:
        raise UserError(f"{who} needs a model config (use jaxfold.compress.fold_model)")
    _check_dense_members(ctx.spec, who)
    modules = {_module(m) for g in ctx.spec.groups for m in g.members if m.role in KERNEL_ROLES}
    return dense_input_stats(apply_fn(ctx.config), ctx.variables, modules, _batches(ctx, who), who=who)


def scale_by_input_rms(variables: Mapping[str, Any], spec: FoldSpec, rms: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """A copy of ``variables`` whose Dense kernels in the spec (producers and consumers) have input row j multiplied
    by ``rms[module][j]`` (float32): what ``act_cluster`` clusters on."""
    flat = tree_lib.flatten(variables)
    out = dict(flat)
    for path in sorted({m.path for g in spec.groups for m in g.members if m.role in KERNEL_ROLES}):
        kernel = np.asarray(on_host(flat[path]), np.float32)
        scale = np.asarray(rms[path.removeprefix("params/").removesuffix("/kernel")], np.float32)
        if kernel.ndim != 2 or kernel.shape[0] != len(scale):
            raise UserError(f"{path}: a Dense kernel (in, out) with {len(scale)} inputs expected, got shape "
                            f"{kernel.shape}")
        out[path] = kernel * scale[:, None]
    return tree_lib.unflatten(out)


def channel_energy(spec: FoldSpec, widths: Mapping[str, int], energy: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Per group, ‖h_i‖² of every channel: its consumers' input energies Σ_t x_tj² summed over the channel's rows."""
    out = {}
    for group in spec.groups:
        n = widths[group.name]
        total = np.zeros(n)
        for m in group.members:
            if m.role == "consumer":
                total += np.asarray(m.channel_first(np.asarray(energy[_module(m)], np.float64), n)).sum(1)
        out[group.name] = total
    return out


def _prepare_scaled(ctx: CorrectionContext, who: str) -> tuple[Any, ...]:
    rms = _stats(ctx, who).rms()
    return ctx.variables, ctx.spec, (scale_by_input_rms(ctx.variables, ctx.spec, rms), ctx.spec)


def select_strongest(labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(n,) weights 1 for the member of each cluster with the largest weight (the first one on ties), 0 otherwise:
    the weighted merge then takes that member's producers."""
    labels, weights = np.asarray(labels), np.asarray(weights, np.float64)
    order = np.lexsort((-weights, labels))  # by cluster, the strongest first
    first = np.ones(len(order), bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    out = np.zeros(len(labels))
    out[order[first]] = 1.0
    return out


def _weighted_merge(ctx: CorrectionContext, who: str, select: bool = False) -> dict[str, Any]:
    labels = ctx.require_fold(who)
    prepared = ctx.prepared if ctx.prepared is not None else ctx.variables
    widths = ctx.spec.widths(prepared)
    todo = [g for g in ctx.spec.groups if int(np.max(labels[g.name])) + 1 < widths[g.name]]
    if not todo:
        return ctx.folded  # type: ignore[return-value]
    stats = _stats(ctx, who)
    weights = channel_energy(ctx.spec, widths, stats.energy)
    flat = {path: on_host(a) for path, a in tree_lib.flatten(prepared).items()}
    new_flat = dict(flat)
    for group in todo:
        lab = np.asarray(labels[group.name])
        w = select_strongest(lab, weights[group.name]) if select else weights[group.name]
        new_flat = merge_group(new_flat, group, lab, widths[group.name], int(lab.max()) + 1, weights=w)
    ctx.notes["calibration_rows"] = max(stats.rows.values())
    return placed_like(prepared, new_flat, flat)


def _prepare_cluster(ctx: CorrectionContext) -> tuple[Any, ...]:
    return _prepare_scaled(ctx, "act_cluster")


def _prepare_aware(ctx: CorrectionContext) -> tuple[Any, ...]:
    return _prepare_scaled(ctx, "act_aware")


def _prepare_cluster_select(ctx: CorrectionContext) -> tuple[Any, ...]:
    return _prepare_scaled(ctx, "act_cluster_select")


@register_correction("act_cluster", inputs="tokens", prepare=_prepare_cluster, data_free=False,
                     description="k-means on weights scaled by the calibration RMS of each Dense input feature "
                                 "(Wanda's ‖x‖); plain merge")
def act_cluster(ctx: CorrectionContext) -> dict[str, Any]:
    ctx.require_fold("act_cluster")
    return ctx.folded  # type: ignore[return-value]


@register_correction("act_merge", inputs="tokens", data_free=False,
                     description="weight-only clusters; producers merged as means weighted by activation energy ‖h‖²")
def act_merge(ctx: CorrectionContext) -> dict[str, Any]:
    return _weighted_merge(ctx, "act_merge")


@register_correction("act_aware", inputs="tokens", prepare=_prepare_aware, data_free=False,
                     description="act_cluster's activation-scaled clusters and act_merge's energy-weighted merge")
def act_aware(ctx: CorrectionContext) -> dict[str, Any]:
    return _weighted_merge(ctx, "act_aware")


@register_correction("act_select", inputs="tokens", data_free=False,
                     description="weight-only clusters; each cluster's producers are its highest-energy member's")
def act_select(ctx: CorrectionContext) -> dict[str, Any]:
    return _weighted_merge(ctx, "act_select", select=True)


@register_correction("act_cluster_select", inputs="tokens", prepare=_prepare_cluster_select, data_free=False,
                     description="act_cluster's activation-scaled clusters, each cluster's producers its "
                                 "highest-energy member's")
def act_cluster_select(ctx: CorrectionContext) -> dict[str, Any]:
    return _weighted_merge(ctx, "act_cluster_select", select=True)
