"""Model merging: two networks of one architecture (e.g. two seeds, or two halves of a label split) become one
network of the same widths, without training (the paper's §3.3 and Tables 1–2).

Every method here is a fold of the **stacked** network, :func:`stack_models`: the two models side by side, twice
as wide, computing exactly the average of their outputs. The input is shared; every group's channels are
concatenated [a; b] (a kernel between two groups is block-diagonal, so the halves never mix); the leaves that write
a shared tensor (the classifier's kernel: only consumer axes) are halved, and leaves on no group axis (its bias)
averaged (or both weighted per output unit, ``output_weights``: heads joined by task). Each method only chooses
a partition of every group's 2n channels into n clusters; the merge is folding's (producers, vectors and BN
statistics averaged within a cluster, consumers summed):

* :func:`merge_by_folding` — k-means on the two models' own channel features stacked, rows [F_a; F_b] (the
  official code's two-model alignment, whose cluster sizes are free: a cluster may hold channels of one model);
* :func:`merge_by_weight_matching` — Git Re-Basin weight matching (:func:`weight_matching`): clusters are the
  pairs (a_i, b_π(i)), so the fold is the plain average of a and the permuted b (the paper's §3.3: weight
  matching is k-means constrained to one channel of each model per cluster);
* :func:`merge_by_zipit` — ZipIt!-style: the pairs greedily matched on the activations' correlations over data,
  within and across the models.

BatchNorm statistics come out merged as folding merges them; REPAIR (:func:`repair_merged`, data) re-estimates
them, as every merge of the paper's tables did. :func:`merge_models` runs a method on a zoo model, REPAIR included.
Every merge returns a :class:`jaxfold.result.Compressed`, like every compression: ``widths`` the merged (original)
widths, ``channel_map[g][i]`` the merged channel of stacked channel i (i < n: model a's channel i, i ≥ n: model b's
channel i − n), and a report (method, per group its inertia and how many clusters mix the two models, seconds).

Exactness of the stacked network needs the spec's shared (unfoldable, non-window) axes to be the network's inputs
and outputs only, true of every zoo CNN/MLP; a model whose hidden stream is unfoldable (a LLaMA's residual
stream) is still stacked and merged, but its stacked network averages that stream rather than the outputs.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxfold import tree as tree_lib
from jaxfold.clustering import Clusterer, get_clusterer
from jaxfold.errors import UserError
from jaxfold.eval.classification import inference_fn
from jaxfold.folding import fold_with_partition
from jaxfold.kmeans import host_rng
from jaxfold.merge import group_features, permute_group
from jaxfold.reports import group_inertia
from jaxfold.result import Compressed
from jaxfold.spec import FoldSpec, Group, Member

if TYPE_CHECKING:
    from jaxfold.corrections import Batches
    from jaxfold.models.base import ModelConfig

METHODS = ("folding", "weight_matching", "zipit")


# --- the stacked network ------------------------------------------------------------------------------------------
def _host_flat(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {p: np.asarray(a) for p, a in tree_lib.flatten(variables).items()}


def _members_by_path(spec: FoldSpec) -> dict[str, list[tuple[Member, str]]]:
    out: dict[str, list[tuple[Member, str]]] = {}
    for g in spec.groups:
        for m in g.members:
            out.setdefault(m.path, []).append((m, g.name))
    return out


def _check_pair(variables_a: Mapping[str, Any], variables_b: Mapping[str, Any], spec: FoldSpec) -> dict[str, int]:
    """The spec checked against model a, model b of exactly a's shapes; the group widths."""
    problems = tree_lib.compare(variables_a, variables_b)
    if problems:
        raise UserError("the two models to merge differ in structure (same architecture and widths needed): "
                        + "; ".join(problems[:5]))
    try:
        spec.check(variables_a)
    except ValueError as e:
        raise UserError(f"the fold spec does not describe the models to merge: {e}") from None
    return spec.widths(variables_a)


def _place(x: np.ndarray, member: Member, n: int, first: bool) -> np.ndarray:
    """``x`` with ``member``'s axis doubled to 2n: its channels in the first (model a) or second (model b) half,
    zeros in the other."""
    rows = member.channel_first(x, n)
    zeros = np.zeros_like(rows)
    both = np.concatenate([rows, zeros] if first else [zeros, rows], axis=0)
    return member.from_channel_first(both, x.shape, 2 * n)


OutputWeights = tuple[Any, Any]  # (w_a, w_b): per-output weights (C,) of the two models, or two scalars


def _weighted(xa: np.ndarray, xb: np.ndarray, path: str, weights: OutputWeights) -> np.ndarray:
    """w_a·x_a + w_b·x_b along the leaf's last axis (the output units of a Dense/Conv head)."""
    wa, wb = (np.asarray(w, xa.dtype) for w in weights)
    for w in (wa, wb):
        if w.ndim > 1 or (w.ndim == 1 and (xa.ndim == 0 or w.shape[0] != xa.shape[-1])):
            raise UserError(f"output weights of shape {w.shape} do not fit {path} of shape {xa.shape}: give one "
                            "weight per output unit (its last axis) or a scalar")
    return xa * wa + xb * wb


def stack_models(variables_a: Mapping[str, Any], variables_b: Mapping[str, Any], spec: FoldSpec, *,
                 output_weights: OutputWeights | None = None) -> dict[str, Any]:
    """The two models as one network twice as wide whose output is the average of theirs (for a zoo model, the
    config ``cfg.with_widths({g: 2n})`` runs it): every group's channels [a; b], a leaf on several group axes
    block-diagonal, leaves whose group axes are all consumers (writing a shared output) halved, leaves on no
    group axis averaged. Stacking ``a`` with itself and folding the copies back together returns ``a``.

    ``output_weights`` = (w_a, w_b) replaces the halves: the output is w_a·f_a + w_b·f_b, per output unit along
    the last axis of those leaves (e.g. 1 and 0 on the classes model a was trained on: heads joined by task)."""
    widths = _check_pair(variables_a, variables_b, spec)
    weights = output_weights if output_weights is not None else (0.5, 0.5)
    on_leaf = _members_by_path(spec)
    flat_a, flat_b = _host_flat(variables_a), _host_flat(variables_b)
    out = {}
    for path, xa in flat_a.items():
        xb = flat_b[path]
        members = on_leaf.get(path, [])
        if not members:  # a shared leaf (the output bias): averaged
            out[path] = _weighted(xa, xb, path, weights).astype(xa.dtype)
            continue
        for m, g in members:
            xa, xb = _place(xa, m, widths[g], True), _place(xb, m, widths[g], False)
        if all(m.role == "consumer" for m, _ in members):  # writes a shared tensor: each model's share of it
            out[path] = _weighted(xa, xb, path, weights).astype(xa.dtype)
        else:
            out[path] = xa + xb  # exact: every entry is one model's value plus zero
    return tree_lib.unflatten(out)


def stacked_widths(spec: FoldSpec, variables: Mapping[str, Any]) -> dict[str, int]:
    """Every group's width in the stacked network of two models like ``variables``: twice theirs."""
    return {g: 2 * n for g, n in spec.widths(variables).items()}


def _fold_stacked(variables_a: Mapping[str, Any], variables_b: Mapping[str, Any], spec: FoldSpec,
                  partition: Callable[[Group, int], Any], method: str,
                  features: Callable[[Group, int], np.ndarray] | None = None,
                  output_weights: OutputWeights | None = None, **notes: Any) -> Compressed:
    """Fold the stacked network from 2n to n channels per group with ``partition(group, n) -> labels (2n,)``;
    the report's inertia is taken on ``features(group, n)`` (default: the two models' own features, stacked)."""
    t0 = time.perf_counter()
    widths = _check_pair(variables_a, variables_b, spec)
    flat_a, flat_b = _host_flat(variables_a), _host_flat(variables_b)
    own = features or (lambda g, n: np.concatenate([np.asarray(group_features(flat_a, g, n), np.float32),
                                                    np.asarray(group_features(flat_b, g, n), np.float32)]))
    stacked = stack_models(variables_a, variables_b, spec, output_weights=output_weights)
    folded = fold_with_partition(stacked, spec, lambda g, n2: n2 // 2,
                                 lambda x, group, flat, k, index: partition(group, widths[group.name]),
                                 check=False)
    groups = []
    for g in spec.groups:
        n, lab = widths[g.name], np.asarray(folded.labels[g.name])
        from_a = np.bincount(lab[:n], minlength=n) > 0
        from_b = np.bincount(lab[n:], minlength=n) > 0
        groups.append({"group": g.name, "n": 2 * n, "k": n, "inertia": group_inertia(own(g, n), lab, n),
                       "mixed_clusters": int(np.sum(from_a & from_b))})
    report = {"method": method, "groups": groups, **notes, "seconds": round(time.perf_counter() - t0, 4)}
    return Compressed(variables=folded.variables, widths=dict(widths),
                      channel_map={g: np.asarray(v) for g, v in folded.channel_map.items()}, report=report)


# --- folding -----------------------------------------------------------------------------------------------------
def merge_by_folding(variables_a: Mapping[str, Any], variables_b: Mapping[str, Any], spec: FoldSpec,
                     key: jax.Array, *, clusterer: str | Clusterer = "kmeans", n_init: int = 10,
                     max_iter: int = 300, output_weights: OutputWeights | None = None) -> Compressed:
    """Merge two models by folding their stacked network from 2n back to n channels per group.

    Each group is clustered (k = n, group i with ``fold_in(key, i)``) on the rows [F_a; F_b]: every channel's
    features as folding computes them (producer rows, per-channel vectors, consumer columns) in its own model.
    A channel's features are read in its own model's frame, so a row of a is comparable to a row of b where the
    neighbouring groups are shared (the input, the classes) and is otherwise compared without alignment, as in
    the official code; identical models give identical rows, clustered in pairs, and the merge is exact.
    ``output_weights``: how the two outputs combine (:func:`stack_models`; default their average)."""
    cluster = get_clusterer(clusterer, n_init=n_init, max_iter=max_iter)
    index = {g.name: i for i, g in enumerate(spec.groups)}
    flat_a, flat_b = _host_flat(variables_a), _host_flat(variables_b)

    @functools.cache
    def features(group: Group, n: int) -> np.ndarray:
        return np.concatenate([np.asarray(group_features(flat_a, group, n), np.float32),
                               np.asarray(group_features(flat_b, group, n), np.float32)])

    def partition(group: Group, n: int) -> Any:
        return cluster(features(group, n), n, jax.random.fold_in(key, index[group.name]))

    return _fold_stacked(variables_a, variables_b, spec, partition, "folding", features, output_weights)


# --- weight matching (Git Re-Basin) ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Matching:
    """Model b permuted to align with model a (``variables``), the permutation of every group (new channel i of
    b = old channel ``perms[g][i]``) and the coordinate-descent sweeps it took."""

    variables: dict[str, Any]
    perms: dict[str, np.ndarray]
    sweeps: int


def _gather(x: np.ndarray, member: Member, n: int, perm: np.ndarray) -> np.ndarray:
    return member.from_channel_first(member.channel_first(x, n)[perm], x.shape, n)


def weight_matching(variables_a: Mapping[str, Any], variables_b: Mapping[str, Any], spec: FoldSpec,
                    key: jax.Array | None = None, *, max_sweeps: int = 100) -> Matching:
    """Git Re-Basin's weight matching: permutations of b's channels, one per group, maximising Σ ⟨W_a, P(W_b)⟩.

    Coordinate descent: for each group in a random order (from ``key``), the linear assignment
    (scipy's ``linear_sum_assignment``) of the cost C[i, j] = Σ over the group's feature members (producers,
    vectors, consumers; not running statistics) of ⟨a's slice i, b's slice j with every *other* group axis of the
    same leaf permuted by its current permutation⟩; sweeps repeat until none improves the objective. A permuted
    copy of a comes back as a exactly."""
    import scipy.optimize  # here, not at the top: `import jaxfold` stays free of scipy.optimize

    widths = _check_pair(variables_a, variables_b, spec)
    if max_sweeps < 1:
        raise UserError(f"max_sweeps must be ≥ 1, got {max_sweeps}")
    flat_a = {p: np.asarray(x, np.float64) for p, x in _host_flat(variables_a).items()}
    flat_b = {p: np.asarray(x, np.float64) for p, x in _host_flat(variables_b).items()}
    on_leaf = _members_by_path(spec)
    perms = {g: np.arange(n) for g, n in widths.items()}
    rng = host_rng(key if key is not None else jax.random.key(0))

    def cost(group: Group) -> np.ndarray:
        n = widths[group.name]
        total = np.zeros((n, n))
        for m in group.members:
            if not m.in_features:
                continue
            b = flat_b[m.path]
            for other, g in on_leaf[m.path]:
                if other is not m:
                    b = _gather(b, other, widths[g], perms[g])
            total += m.channel_first(flat_a[m.path], n) @ m.channel_first(b, n).T
        return total

    sweeps, improved = 0, True
    while improved and sweeps < max_sweeps:
        sweeps, improved = sweeps + 1, False
        for i in rng.permutation(len(spec.groups)):
            group = spec.groups[i]
            c = cost(group)
            _, col = scipy.optimize.linear_sum_assignment(c, maximize=True)
            rows = np.arange(len(col))
            old, new = c[rows, perms[group.name]].sum(), c[rows, col].sum()
            if new > old + 1e-9 * max(1.0, abs(old)):
                perms[group.name], improved = col, True
    aligned: Mapping[str, Any] = variables_b
    for group in spec.groups:
        aligned = permute_group(aligned, group, perms[group.name])
    return Matching(tree_lib.unflatten(_host_flat(aligned)), perms, sweeps)


def _pairs(perm: np.ndarray) -> np.ndarray:
    """Stacked-network labels of the pairs (a_i, b_perm[i]): cluster i holds channel i and channel n + perm[i]."""
    n = len(perm)
    labels = np.empty(2 * n, np.int64)
    labels[:n] = np.arange(n)
    labels[n + perm] = np.arange(n)
    return labels


def merge_by_weight_matching(variables_a: Mapping[str, Any], variables_b: Mapping[str, Any], spec: FoldSpec,
                             key: jax.Array | None = None, *, max_sweeps: int = 100,
                             output_weights: OutputWeights | None = None) -> Compressed:
    """Weight matching (:func:`weight_matching`), then the average of a and the permuted b — computed as the fold
    of the stacked network whose clusters are the matched pairs, which is that average exactly (the output
    layer's as ``output_weights`` say, :func:`stack_models`)."""
    t0 = time.perf_counter()
    matching = weight_matching(variables_a, variables_b, spec, key, max_sweeps=max_sweeps)
    flat_a, flat_b = _host_flat(variables_a), _host_flat(matching.variables)

    def features(group: Group, n: int) -> np.ndarray:  # b's channels in its own order, read in a's frame
        inverse = np.argsort(matching.perms[group.name])
        return np.concatenate([np.asarray(group_features(flat_a, group, n), np.float32),
                               np.asarray(group_features(flat_b, group, n), np.float32)[inverse]])

    result = _fold_stacked(variables_a, variables_b, spec, lambda g, n: _pairs(matching.perms[g.name]),
                           "weight_matching", features, output_weights, sweeps=matching.sweeps)
    return result.with_report(seconds=round(time.perf_counter() - t0, 4))


# --- ZipIt! -------------------------------------------------------------------------------------------------------
def greedy_pairs(corr: np.ndarray) -> np.ndarray:
    """Labels (2n,) pairing the 2n features: repeatedly the most correlated pair of two unpaired features (any
    two, within or across the models), ZipIt!'s greedy matching. Pair c gets label c, in the order found."""
    m = corr.shape[0]
    if corr.shape != (m, m) or m % 2:
        raise ValueError(f"need a square correlation matrix of an even size, got {corr.shape}")
    rows, cols = np.triu_indices(m, 1)
    order = np.argsort(-corr[rows, cols], kind="stable")
    labels = np.full(m, -1, np.int64)
    found = 0
    for t in order:
        i, j = rows[t], cols[t]
        if labels[i] < 0 and labels[j] < 0:
            labels[i] = labels[j] = found
            found += 1
            if found == m // 2:
                break
    return labels


def _consumers(spec: FoldSpec, flat: Mapping[str, Any]) -> dict[str, list[tuple[str, Member]]]:
    """Per group, the modules reading its channels as (module path, member); each must be a Dense/Conv-like layer
    whose kernel's input axis is its second to last and reads the activation's last axis."""
    out: dict[str, list[tuple[str, Member]]] = {}
    for g in spec.groups:
        for m in g.members:
            if m.role != "consumer":
                continue
            ndim = np.ndim(flat[m.path])
            if not (m.path.startswith("params/") and m.path.endswith("/kernel")) or m.axis % ndim != ndim - 2:
                raise UserError(f"zipit reads each group's activations at the input of its consumers, Dense/Conv "
                                f"kernels on their input axis; {m.path} axis {m.axis} is not one (use folding or "
                                "weight matching for this model)")
            out.setdefault(g.name, []).append((m.path.removeprefix("params/").removesuffix("/kernel"), m))
        if g.name not in out:
            raise UserError(f"zipit: group {g.name!r} has no consumer whose input could be correlated")
    return out


@functools.cache
def _moments_fn(apply_fn: Callable[[Any, jax.Array], Any], layout: tuple[tuple[str, Member, int], ...]
                ) -> Callable[[Any, Any, jax.Array], dict[str, tuple[Any, Any, Any]]]:
    """A jitted (variables_a, variables_b, x) -> {module: (Σ f, Σ f fᵀ, count)} of the stacked features
    f = [a's input channels; b's] of every consumer module (block/repeat entries are extra samples); ``layout``
    = (module, consumer member, width) triples. Cached: merging the same model again compiles nothing."""
    modules = {module: (m, n) for module, m, n in layout}

    def inputs(variables: Any, x: jax.Array) -> dict[str, jax.Array]:
        got: dict[str, jax.Array] = {}

        def record(next_fun, args, kwargs, context):
            name = "/".join(context.module.path)
            if context.method_name == "__call__" and name in modules:
                got[name] = args[0]
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            apply_fn(variables, x)
        missing = sorted(set(modules) - set(got))
        if missing:
            raise UserError(f"zipit: the forward pass never called the consumer modules {missing}")
        return got

    def samples(h: jax.Array, member: Member, n: int) -> jax.Array:
        h = h.reshape(-1, h.shape[-1]).astype(jnp.float32)
        view = dataclasses.replace(member, axis=-1)  # the activation's channel axis
        return view.channel_first(h, n).T  # (samples, n)

    @jax.jit
    def moments(variables_a: Any, variables_b: Any, x: jax.Array) -> dict[str, tuple[Any, Any, Any]]:
        ha, hb = inputs(variables_a, x), inputs(variables_b, x)
        out = {}
        for module, (m, n) in modules.items():
            f = jnp.concatenate([samples(ha[module], m, n), samples(hb[module], m, n)], axis=1)
            out[module] = (jnp.sum(f, 0), f.T @ f, jnp.asarray(f.shape[0], jnp.float32))
        return out

    return moments


def feature_correlations(variables_a: Mapping[str, Any], variables_b: Mapping[str, Any], spec: FoldSpec,
                         apply_fn: Callable[[Any, jax.Array], Any], batches: Batches) -> dict[str, np.ndarray]:
    """Per group, the (2n, 2n) Pearson correlations of the stacked activations [a; b] over ``batches()``, read at
    the input of every module consuming the group (the post-activation features) and averaged over those modules
    (a residual stream is read by several). A constant feature correlates 0 with every varying one, and 1 with
    a constant one of the same value (so dead units pair up)."""
    widths = _check_pair(variables_a, variables_b, spec)
    consumers = _consumers(spec, _host_flat(variables_a))
    moments = _moments_fn(apply_fn, tuple((module, m, widths[g]) for g, items in consumers.items()
                                          for module, m in items))
    sums: dict[str, list[Any]] = {}
    for x in batches():
        for module, parts in moments(variables_a, variables_b, jnp.asarray(x)).items():
            acc = sums.setdefault(module, [0.0, 0.0, 0.0])
            for i, part in enumerate(parts):
                acc[i] = acc[i] + np.asarray(part, np.float64)
    if not sums:
        raise UserError("zipit got no data: the batches function yielded nothing")
    out = {}
    for g, items in consumers.items():
        corrs = []
        for module, _ in items:
            s1, s2, count = sums[module]
            mean = s1 / count
            cov = s2 / count - np.outer(mean, mean)
            std = np.sqrt(np.maximum(np.diag(cov), 0.0))
            ok = std > 1e-6 * max(1.0, float(std.max(initial=0.0)))
            denom = np.where(np.outer(ok, ok), np.outer(std, std), 1.0)
            corr = np.where(np.outer(ok, ok), cov / denom, 0.0)
            # constant features (dead units; a bias alone on a 1×1 map): alike when their values agree
            same = np.isclose(mean[:, None], mean[None, :], rtol=1e-5, atol=1e-6 * max(1.0, np.abs(mean).max()))
            corrs.append(np.where(np.outer(~ok, ~ok), same.astype(np.float64), corr))
        out[g] = np.mean(corrs, axis=0)
    return out


def merge_by_zipit(variables_a: Mapping[str, Any], variables_b: Mapping[str, Any], spec: FoldSpec,
                   apply_fn: Callable[[Any, jax.Array], Any], batches: Batches, *,
                   output_weights: OutputWeights | None = None) -> Compressed:
    """ZipIt!-style merging: per group, the 2n stacked features paired greedily by their activation correlations
    over data (:func:`feature_correlations`, :func:`greedy_pairs`), each pair merged by averaging (ZipIt!'s merge
    matrix; its unmerge is the consumers' sum). ``apply_fn(variables, x)`` runs one model (a Flax linen apply:
    its consumer modules' inputs are intercepted). ``output_weights``: as in :func:`stack_models`.

    Simplified against ZipIt! (Stoica et al. 2024): one pairing per group, a residual stream's correlations
    averaged over the points it is read at (ZipIt! propagates merges through its graph node by node); pairs
    only (no α/β weighting of within-model matches, no partial zipping: every layer is merged); the average is
    unweighted; correlations of the endpoints' eval-mode activations, computed once before any merge."""
    t0 = time.perf_counter()
    corr = feature_correlations(variables_a, variables_b, spec, apply_fn, batches)
    labels = {g: greedy_pairs(c) for g, c in corr.items()}
    result = _fold_stacked(variables_a, variables_b, spec, lambda g, n: labels[g.name], "zipit",
                           output_weights=output_weights)
    return result.with_report(seconds=round(time.perf_counter() - t0, 4))


# --- zoo models: the ensemble, a method by name, REPAIR ----------------------------------------------------------
def ensemble(model_config: ModelConfig, variables_a: Mapping[str, Any], variables_b: Mapping[str, Any], *,
             output_weights: OutputWeights | None = None) -> tuple[ModelConfig, dict[str, Any]]:
    """The stacked network as a zoo model (config, variables): the ensemble averaging the two models' logits (or
    weighting them by ``output_weights``, :func:`stack_models`)."""
    spec = model_config.fold_spec()
    stacked = stack_models(variables_a, variables_b, spec, output_weights=output_weights)
    return model_config.with_widths(stacked_widths(spec, variables_a)), stacked


def repair_merged(model_config: ModelConfig, variables_a: Mapping[str, Any], variables_b: Mapping[str, Any],
                  merged: Compressed, batches: Batches, *,
                  output_weights: OutputWeights | None = None) -> dict[str, Any]:
    """REPAIR of a merged zoo model on ``batches()``: every BatchNorm's statistics recomputed, and each BN-free
    merged unit's mean/std set to the average of the endpoint units it merged (REPAIR's target), measured in the
    stacked network (:func:`jaxfold.corrections.repair.repair_variables`)."""
    from jaxfold.corrections.repair import repair_variables

    stacked_config, stacked = ensemble(model_config, variables_a, variables_b, output_weights=output_weights)
    return repair_variables(stacked_config, stacked, model_config, merged.variables, merged.channel_map, batches)


def merge_models(model_config: ModelConfig, variables_a: Mapping[str, Any], variables_b: Mapping[str, Any],
                 method: str, key: jax.Array, *, data: Batches | None = None, repair: bool = True,
                 n_init: int = 10, max_iter: int = 300, max_sweeps: int = 100,
                 output_weights: OutputWeights | None = None) -> Compressed:
    """Merge two zoo models of ``model_config`` by ``method`` ('folding', 'weight_matching', 'zipit'), then REPAIR
    on ``data`` (normalised training batches; zipit reads them too) unless ``repair=False``. ``output_weights``
    (w_a, w_b) join the two outputs (default: their average; :func:`stack_models`). The result's ``config`` is
    ``model_config``: the merged model has the two models' architecture and widths."""
    if method not in METHODS:
        raise UserError(f"unknown merge method {method!r}; known: {list(METHODS)}")
    if (repair or method == "zipit") and data is None:
        raise UserError(f"merging with {method!r}{' and REPAIR' if repair else ''} needs data: pass data= (a "
                        "function returning batches of normalised training inputs) or repair=False")
    spec = model_config.fold_spec()
    if method == "folding":
        merged = merge_by_folding(variables_a, variables_b, spec, key, n_init=n_init, max_iter=max_iter,
                                  output_weights=output_weights)
    elif method == "weight_matching":
        merged = merge_by_weight_matching(variables_a, variables_b, spec, key, max_sweeps=max_sweeps,
                                          output_weights=output_weights)
    else:
        merged = merge_by_zipit(variables_a, variables_b, spec, inference_fn(model_config.module()), data,
                                output_weights=output_weights)
    merged = merged.replace(config=model_config)  # same architecture and widths as the two models
    if not repair:
        return merged
    t0 = time.perf_counter()
    repaired = repair_merged(model_config, variables_a, variables_b, merged, data, output_weights=output_weights)
    return merged.replace(variables=repaired, report={
        **merged.report, "repair": True, "repair_seconds": round(time.perf_counter() - t0, 4)})
