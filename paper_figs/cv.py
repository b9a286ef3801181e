"""The paper's CV figures from a sweep's results.jsonl: accuracy vs parameter sparsity per method (Fig. 5/6, and
per clusterer for the clustering ablation, Fig. 3), the per-layer variance ratio at one channel ratio (Fig. 4), and
the markdown table. Points run at several seeds show their mean with ± one standard deviation over the seeds as
error bars (jaxfold.seed_stats, shared with the tables), and each curve's legend entry its number of seeds.

    python paper_figs/cv.py workdirs/sweep_resnet18_fmnist --out docs/figures/resnet18_fmnist
writes <out>_accuracy.png, <out>_variance_ratio.png, <out>_table.md and <out>_timings.md, and, where points carry
variance ratios, the paper's Fig. 1: <out>_accuracy_vs_variance.png and <out>_accuracy_vs_variance.md (accuracy against
the last layer's variance ratio, one point per method at the same channel ratio, hence the same sparsity).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from jaxfold.files import write_bytes_atomic, write_text_atomic
from jaxfold.seed_stats import SeedStats, aggregate_seeds, seed_stats
from jaxfold.sweep import read_results, summary_table

LABELS = {"fold:none": "Fold-Naive", "fold:fold_ar": "Fold-AR", "fold:fold_dir": "Fold-DIR", "fold:repair": "Fold-R",
          "sp_l1:none": "SP-L1", "sp_l2:none": "SP-L2", "sp_l2:repair": "SP-L2 + REPAIR", "sp_l1:repair":
          "SP-L1 + REPAIR", "ifm:none": "IFM", "ifm:repair": "IFM + REPAIR"}
STYLE = {"fold": "-o", "sp_l1": "--s", "sp_l2": "--^", "ifm": ":d"}


def _label(variant: str, ablation: bool = False) -> str:
    """The paper's name; a fold with a named clusterer (the clustering ablation, Fig. 3) adds it: "Fold-R, ward",
    and in an ablation plain folds say they are k-means."""
    method, _, correction = variant.partition(":")
    base, _, clusterer = method.partition("/")
    clusterer = clusterer or ("kmeans" if ablation and base == "fold" else "")
    name = LABELS.get(f"{base}:{correction}", f"{base}:{correction}")
    return f"{name}, {clusterer}" if clusterer else name


def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _seeds_label(label: str, stats: list[SeedStats], seeded: bool) -> str:
    """The legend entry; in a figure with any point over several seeds, each entry says its n (``n=1–3`` when a
    curve's points differ)."""
    if not seeded:
        return label
    low, high = min(s.n for s in stats), max(s.n for s in stats)
    return f"{label} (n={low})" if low == high else f"{label} (n={low}–{high})"


def _plot(ax: plt.Axes, xs: list, stats: list[SeedStats], fmt: str, label: str, seeded: bool, scale: float = 1.0,
          markersize: float = 4) -> None:
    """One curve of means; with error bars of ± one std over seeds where any figure point had several seeds."""
    ys = [scale * s.mean for s in stats]
    if seeded:
        ax.errorbar(xs, ys, yerr=[scale * s.std for s in stats], fmt=fmt, label=label, markersize=markersize,
                    capsize=2, elinewidth=0.8)
    else:
        ax.plot(xs, ys, fmt, label=label, markersize=markersize)


def accuracy_vs_sparsity(records: list[dict], title: str) -> bytes:
    """Test accuracy against parameter sparsity, one curve per method:correction: mean ± std over seeds."""
    points = [r for r in records if r["method"] != "dense"]
    dense = next((r for r in records if r["method"] == "dense"), None)
    key = lambda r: (f"{r['method']}:{r['correction']}", r["ratio"])
    accuracy, sparsity = aggregate_seeds(points, key), aggregate_seeds(points, key, "param_sparsity")
    curves: dict[str, list[tuple[float, SeedStats]]] = defaultdict(list)
    for (variant, ratio), stats in accuracy.items():
        curves[variant].append((sparsity[(variant, ratio)].mean, stats))
    seeded = any(s.n > 1 for s in accuracy.values())
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ablation = any("/" in variant.split(":")[0] for variant in curves)
    for variant, pts in curves.items():
        pts.sort(key=lambda p: p[0])
        stats = [s for _, s in pts]
        _plot(ax, [x for x, _ in pts], stats, STYLE.get(variant.split(":")[0], "-o"),
              _seeds_label(_label(variant, ablation), stats, seeded), seeded, scale=100.0)
    if dense:
        ax.axhline(100 * dense["value"], color="k", lw=0.8, ls="--", label="dense")
    ax.axhline(10, color="gray", lw=0.6, ls=":", label="chance")
    ax.set(xlabel="parameter sparsity", ylabel="test accuracy (%)", title=title, ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2, title="mean ± std over n seeds" if seeded else None, title_fontsize=8)
    return _png(fig)


def variance_ratio_plot(records: list[dict], title: str) -> bytes | None:
    rows = [r for r in records if r.get("variance_ratio")]
    if not rows:
        return None
    ratio = rows[0]["ratio"]
    by_variant: dict[str, list[list[float]]] = defaultdict(list)  # per variant, one list of layer ratios per seed
    for r in rows:
        if r["ratio"] == ratio:
            by_variant[f"{r['method']}:{r['correction']}"].append([layer["ratio"] for layer in r["variance_ratio"]])
    seeded = any(len(runs) > 1 for runs in by_variant.values())
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    for variant, runs in by_variant.items():
        stats = [seed_stats(layer) for layer in zip(*runs, strict=True)]  # per layer, over seeds
        _plot(ax, list(range(1, len(stats) + 1)), stats, STYLE.get(variant.split(":")[0], "-o"),
              _seeds_label(_label(variant), stats, seeded), seeded, markersize=3)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set(xlabel="layer (BatchNorm / BN-free layer output, forward order)", ylabel="mean Var(compressed)/Var(orig)",
           title=f"{title}: per-layer variance ratio, channel ratio {ratio:g}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2, title="mean ± std over n seeds" if seeded else None, title_fontsize=8)
    return _png(fig)


def _last_layer_points(records: list[dict]) -> tuple[float, dict[str, list[dict]]]:
    """The channel ratio of the first point with variance ratios, and that ratio's points grouped by variant."""
    rows = [r for r in records if r.get("variance_ratio")]
    ratio = rows[0]["ratio"] if rows else float("nan")
    by_variant: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["ratio"] == ratio:
            by_variant[f"{r['method']}:{r['correction']}"].append(r)
    return ratio, by_variant


def accuracy_vs_variance_ratio(records: list[dict], title: str) -> bytes | None:
    """The paper's Fig. 1: test accuracy against the last layer's mean variance ratio (Def. 3.1), one point per
    method:correction at one channel ratio (every method then has the same widths, so the same sparsity); several
    seeds show as mean ± std in both directions. None when no point recorded variance ratios."""
    ratio, by_variant = _last_layer_points(records)
    if not by_variant:
        return None
    dense = next((r for r in records if r["method"] == "dense"), None)
    fig, ax = plt.subplots(figsize=(6.0, 4.4))
    for variant, rs in by_variant.items():
        x = seed_stats([r["variance_ratio"][-1]["ratio"] for r in rs])
        y = seed_stats([100 * r["value"] for r in rs])
        ax.errorbar([x.mean], [y.mean], xerr=[x.std] if x.n > 1 else None, yerr=[y.std] if y.n > 1 else None,
                    fmt=STYLE.get(variant.split(":")[0], "-o")[-1], markersize=7, capsize=2,
                    label=f"{_label(variant)}" + (f" (n={x.n})" if x.n > 1 else ""))
    if dense:
        ax.axhline(100 * dense["value"], color="k", lw=0.8, ls="--", label="dense")
    ax.axvline(1.0, color="gray", lw=0.8)
    ax.set_xscale("log")
    layer = next(iter(by_variant.values()))[0]["variance_ratio"][-1]["layer"]
    sparsity = next(iter(by_variant.values()))[0]["param_sparsity"]
    ax.set(xlabel=f"last layer's variance ratio ({layer})", ylabel="test accuracy (%)",
           title=f"{title}: channel ratio {ratio:g} ({100 * sparsity:.1f} % of parameters removed)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _png(fig)


def accuracy_vs_variance_table(records: list[dict]) -> str:
    """Markdown of the Fig. 1 points: variant, seeds, parameter sparsity, last-layer variance ratio, accuracy."""
    ratio, by_variant = _last_layer_points(records)
    lines = [f"Channel ratio {ratio:g}; last layer's mean variance ratio (Var(compressed)/Var(original), 1 = kept).",
             "", "| method:correction | seeds | param sparsity | last-layer variance ratio | accuracy (%) |",
             "|---|---|---|---|---|"]
    for variant, rs in by_variant.items():
        x = seed_stats([r["variance_ratio"][-1]["ratio"] for r in rs])
        y = seed_stats([r["value"] for r in rs])
        lines.append(f"| {variant} | {x.n} | {100 * rs[0]['param_sparsity']:.1f} % | {x.format(1.0, '.3f')} | "
                     f"{y.format(100.0, '.2f')} |")
    return "\n".join(lines) + "\n"


def timing_table(records: list[dict]) -> str:
    """Median seconds per point of each variant: clustering/merging, correction, evaluation (the first fold_dir
    point's correction time includes generating the DeepInversion batch; its maximum is shown separately)."""
    by: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r["method"] != "dense":
            by[f"{r['method']}:{r['correction']}"].append(r)
    lines = ["| variant | points | compress s (median) | correction s (median) | correction s (max) | eval s (median) "
             "|",
             "|---|---|---|---|---|---|"]
    for variant, rs in by.items():
        med = lambda key, rs=rs: float(np.median([r[key] for r in rs]))
        lines.append(f"| {variant} | {len(rs)} | {med('fold_seconds'):.2f} | {med('correction_seconds'):.2f} | "
                     f"{max(r['correction_seconds'] for r in rs):.1f} | {med('eval_seconds'):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", help="a sweep workdir (holds results.jsonl)")
    parser.add_argument("--out", required=True, help="output prefix, e.g. docs/figures/resnet18_fmnist")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    records = read_results(args.workdir)
    if not records:
        print(f"no results in {args.workdir}/results.jsonl: run `jaxfold sweep` first", file=sys.stderr)
        return 2
    title = args.title or f"{records[0]['model']} on {records[0]['dataset']}"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = [out.with_name(out.name + "_accuracy.png"), out.with_name(out.name + "_table.md"),
               out.with_name(out.name + "_timings.md")]
    write_bytes_atomic(written[0], accuracy_vs_sparsity(records, title))
    write_text_atomic(written[1], summary_table(records))
    write_text_atomic(written[2], timing_table(records))
    variance = variance_ratio_plot(records, title)
    if variance:
        written.append(out.with_name(out.name + "_variance_ratio.png"))
        write_bytes_atomic(written[-1], variance)
    fig1 = accuracy_vs_variance_ratio(records, title)
    if fig1:
        written += [out.with_name(out.name + "_accuracy_vs_variance.png"),
                    out.with_name(out.name + "_accuracy_vs_variance.md")]
        write_bytes_atomic(written[-2], fig1)
        write_text_atomic(written[-1], accuracy_vs_variance_table(records))
    print("\n".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
