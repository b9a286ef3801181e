"""The paper's width-scaling figure (Fig. 12) and matched channel correlations (Figs. 2/8) from
experiments/width_scaling.py's workdir (``W/mlp{w}x/sweep/results.jsonl``, ``W/mlp{w}x/metrics.jsonl``,
``W/correlations.json``). Points run at several seeds show mean ± one std over seeds (jaxfold.seed_stats).

    python paper_figs/width.py workdirs/width_scaling_fmnist --out docs/figures/width_scaling_fmnist
writes <out>_accuracy.png (accuracy vs parameter sparsity, one panel per width), <out>_by_correction.png (one panel
per correction, one curve per width), <out>_correlations.png (per layer, the matched-pair correlations of every
width) and <out>_table.md (models, accuracies, correlations).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from jaxfold.files import write_bytes_atomic, write_text_atomic
from jaxfold.seed_stats import DDOF, SeedStats, aggregate_seeds
from jaxfold.sweep import read_results

try:
    from paper_figs.cv import STYLE, _label, _plot, _png, _seeds_label
except ModuleNotFoundError:  # run as a script (python paper_figs/width.py): its own folder is on sys.path
    from cv import STYLE, _label, _plot, _png, _seeds_label

CORRECTIONS = ("fold:none", "fold:fold_ar", "fold:fold_dir", "fold:repair")  # the row order of figures and tables
EQUAL_SPARSITY = (0.5, 0.6, 0.7, 0.75)  # parameter sparsities at which the widths are compared in the table
MAX_HISTOGRAM_LAYERS = 6  # more layers than this: only the per-layer means (one histogram panel per layer is too wide)
PLACES = {"bn": "BatchNorm output", "relu": "after ReLU", "init_bn": "BN output, untrained"}


RUN_NAMES = {"mlp": r"mlp(\d+)x", "resnet18": r"resnet18_(\d+)x"}  # a width's folder (experiments/width_scaling.py)


def load_widths(workdir: Path, model: str = "mlp") -> dict[int, dict]:
    """Per width multiplier (from ``mlp{w}x`` or ``resnet18_{w}x``), its sweep records and training log, widths in
    increasing order."""
    out = {}
    for d in workdir.glob("*x"):
        match = re.fullmatch(RUN_NAMES[model], d.name)
        records = read_results(d / "sweep")
        if match and records:
            log = d / "metrics.jsonl"
            epochs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
            out[int(match.group(1))] = {"records": records, "epochs": epochs}
    return dict(sorted(out.items()))


def _curves(records: list[dict]) -> dict[str, list[tuple[float, float, SeedStats]]]:
    """Per variant, (mean parameter sparsity, channel ratio, accuracy stats) by increasing sparsity."""
    points = [r for r in records if r["method"] != "dense"]
    key = lambda r: (f"{r['method']}:{r['correction']}", r["ratio"])
    accuracy, sparsity = aggregate_seeds(points, key), aggregate_seeds(points, key, "param_sparsity")
    curves: dict[str, list] = defaultdict(list)
    for (variant, ratio), stats in accuracy.items():
        curves[variant].append((sparsity[(variant, ratio)].mean, ratio, stats))
    order = {v: i for i, v in enumerate(CORRECTIONS)}
    return {v: sorted(curves[v]) for v in sorted(curves, key=lambda v: (order.get(v, len(order)), v))}


def at_sparsity(points: list[tuple[float, float, SeedStats]], sparsity: float) -> float | None:
    """A curve's mean accuracy at ``sparsity``, linear between its measured points; None outside them."""
    xs = [x for x, *_ in points]
    if not xs or not xs[0] <= sparsity <= xs[-1]:
        return None
    return float(np.interp(sparsity, xs, [s.mean for *_, s in points]))


def _dense(records: list[dict]) -> dict | None:
    return next((r for r in records if r["method"] == "dense"), None)


def _finish(ax: plt.Axes, title: str) -> None:
    ax.axhline(10, color="gray", lw=0.6, ls=":")
    ax.set(xlabel="parameter sparsity", title=title, ylim=(0, 100))
    ax.grid(alpha=0.3)


def accuracy_by_width(widths: dict[int, dict], title: str) -> bytes:
    """The paper's Fig. 12 layout: one panel per width, accuracy vs parameter sparsity per correction."""
    fig, axes = plt.subplots(1, len(widths), figsize=(3.6 * len(widths), 3.8), sharex=True, sharey=True,
                             squeeze=False, layout="constrained")
    for ax, (w, run) in zip(axes[0], widths.items(), strict=True):
        curves = _curves(run["records"])
        seeded = any(s.n > 1 for pts in curves.values() for *_, s in pts)
        for variant, pts in curves.items():
            stats = [s for *_, s in pts]
            _plot(ax, [x for x, *_ in pts], stats, STYLE.get(variant.split(":")[0], "-o"),
                  _seeds_label(_label(variant), stats, seeded), seeded, scale=100.0, markersize=3)
        dense = _dense(run["records"])
        if dense:
            ax.axhline(100 * dense["value"], color="k", lw=0.8, ls="--", label="dense")
        _finish(ax, f"{w}× ({dense['params']:,} params)" if dense else f"{w}×")
        ax.legend(fontsize=7, title="mean ± std over n seeds" if seeded else None, title_fontsize=7)
    axes[0][0].set_ylabel("test accuracy (%)")
    fig.suptitle(title)
    return _png(fig)


def accuracy_by_correction(widths: dict[int, dict], title: str) -> bytes:
    """The same points regrouped: one panel per correction, one curve per width (does a wider net fold better?)."""
    curves = {w: _curves(run["records"]) for w, run in widths.items()}
    variants = list(dict.fromkeys(v for c in curves.values() for v in c))
    fig, axes = plt.subplots(1, len(variants), figsize=(3.6 * len(variants), 3.8), sharey=True, squeeze=False,
                             layout="constrained")
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(widths)))
    for ax, variant in zip(axes[0], variants, strict=True):
        for color, (w, by_variant) in zip(colors, curves.items(), strict=True):
            pts = by_variant.get(variant, [])
            if not pts:
                continue
            stats = [s for *_, s in pts]
            seeded = any(s.n > 1 for s in stats)
            ys = [100 * s.mean for s in stats]
            ax.errorbar([x for x, *_ in pts], ys, yerr=[100 * s.std for s in stats] if seeded else None, fmt="-o",
                        color=color, markersize=3, capsize=2, elinewidth=0.8,
                        label=_seeds_label(f"{w}×", stats, seeded))
        _finish(ax, _label(variant))
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("test accuracy (%)")
    fig.suptitle(title)
    return _png(fig)


def correlation_plot(correlations: dict[str, dict], title: str) -> bytes:
    """Per layer (columns) and place (rows: BN output, after ReLU, BN output of the untrained net), the
    distribution of matched-pair correlations of every width (step histograms, density), each legend entry with its
    mean."""
    widths = sorted(correlations, key=int)
    places = [p for p in PLACES if p in correlations[widths[0]]]
    n_layers = len(correlations[widths[0]][places[0]])
    fig, axes = plt.subplots(len(places), n_layers, figsize=(3.6 * n_layers, 3.0 * len(places)), squeeze=False,
                             layout="constrained")
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(widths)))
    bins = np.linspace(-0.2, 1.0, 25)
    for row, place in enumerate(places):
        for col in range(n_layers):
            ax = axes[row][col]
            for color, w in zip(colors, widths, strict=True):
                layer = correlations[w][place][col]
                values = np.clip(layer["correlations"], bins[0], bins[-1])
                ax.hist(values, bins=bins, density=True, histtype="step", color=color, lw=1.2,
                        label=f"{w}× (n={layer['channels']}): mean {layer['mean']:.2f}")
            ax.set(title=f"{layer['layer']}, {PLACES[place]}", xlabel="correlation of matched pair")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left")
        axes[row][0].set_ylabel("density")
    fig.suptitle(f"{title}: greedily matched channel pairs")
    return _png(fig)


def correlation_by_layer(correlations: dict[str, dict], title: str) -> bytes:
    """Per place (panels), each layer's mean matched-pair correlation against its depth, one curve per width: the
    compact view for a network with many layers (ResNet18's 20 BatchNorms)."""
    widths = sorted(correlations, key=int)
    places = [p for p in PLACES if p in correlations[widths[0]]]
    fig, axes = plt.subplots(1, len(places), figsize=(5.0 * len(places), 3.6), sharey=True, squeeze=False,
                             layout="constrained")
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(widths)))
    for ax, place in zip(axes[0], places, strict=True):
        for color, w in zip(colors, widths, strict=True):
            layers = correlations[w][place]
            ax.plot(range(len(layers)), [layer["mean"] for layer in layers], "-o", color=color, markersize=3,
                    label=f"{w}×")
        names = [layer["layer"] for layer in correlations[widths[0]][place]]
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        ax.set(title=PLACES[place], ylabel="mean correlation of matched pairs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: greedily matched channel pairs, per layer")
    return _png(fig)


def _training_row(w: int, run: dict) -> str:
    dense, epochs = _dense(run["records"]), run["epochs"]
    train_s = sum(e["epoch_seconds"] for e in epochs)
    acc = f"{100 * dense['value']:.2f}" if dense else ""
    params = f"{dense['params']:,}" if dense else ""
    return f"| {w}× | {params} | {acc} | {len(epochs)} | {train_s:.0f} |"


def tables(widths: dict[int, dict], correlations: dict[str, dict] | None) -> str:
    """Markdown: the models (dense accuracy, training time), accuracy per width × correction × channel ratio (mean ±
    std over seeds, with each column's parameter sparsity), and per layer the mean matched-pair correlation."""
    out = ["| width | params | dense accuracy (%) | epochs | training s (sum of epochs) |", "|---|---|---|---|---|"]
    out += [_training_row(w, run) for w, run in widths.items()]
    curves = {w: _curves(run["records"]) for w, run in widths.items()}
    ratios = sorted({ratio for c in curves.values() for pts in c.values() for _, ratio, _ in pts})
    out += ["", "| width | method:correction | seeds | " + " | ".join(f"r={r:g}" for r in ratios) + " |",
            "|" + "---|" * (3 + len(ratios))]
    for w, by_variant in curves.items():
        sparsity = {ratio: x for pts in by_variant.values() for x, ratio, _ in pts}
        out.append(f"| {w}× | *parameter sparsity* | | "
                   + " | ".join(f"{100 * sparsity[r]:.1f} %" if r in sparsity else "" for r in ratios) + " |")
        for variant, pts in by_variant.items():
            cells = {ratio: s for _, ratio, s in pts}
            n = max(s.n for s in cells.values())
            out.append(f"| {w}× | {variant} | {n} | " + " | ".join(
                cells[r].format(100.0, show_n=cells[r].n != n) if r in cells else "" for r in ratios) + " |")
    out.append(f"\nCells: test accuracy (%), mean ± sample standard deviation (ddof={DDOF}) over the k-means seeds "
               "(one trained model per width).")
    out += ["", "| method:correction | parameter sparsity | " + " | ".join(f"{w}×" for w in widths) + " |",
            "|" + "---|" * (2 + len(widths))]
    for variant in dict.fromkeys(v for c in curves.values() for v in c):
        for x in EQUAL_SPARSITY:
            cells = [at_sparsity(curves[w].get(variant, []), x) for w in widths]
            out.append(f"| {variant} | {100 * x:.0f} % | "
                       + " | ".join("" if c is None else f"{100 * c:.2f}" for c in cells) + " |")
    out.append("\nAt equal parameter sparsity: the seeds' mean accuracy (%) interpolated linearly between the two "
               "measured channel ratios around it (empty: outside the measured range).")
    if correlations:
        ws = sorted(correlations, key=int)
        first = correlations[ws[0]]
        places = [p for p in PLACES if p in first]
        out += ["", "| layer | place | " + " | ".join(f"{w}× mean (median)" for w in ws) + " |",
                "|" + "---|" * (2 + len(ws))]
        for place in places:
            for i, layer in enumerate(first[place]):
                cells = [correlations[w][place][i] for w in ws]
                out.append(f"| {layer['layer']} | {PLACES[place]} | " + " | ".join(
                    f"{c['mean']:.3f} ({c['median']:.3f})" + (f", {c['constant']} const." if c["constant"] else "")
                    for c in cells) + " |")
        out.append(f"\nCorrelations: Pearson, of greedily matched channel pairs (jaxfold.correlations) over "
                   f"{first['examples']} training images.")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", help="experiments/width_scaling.py's workdir")
    parser.add_argument("--out", required=True, help="output prefix, e.g. docs/figures/width_scaling_fmnist")
    parser.add_argument("--model", default="mlp", choices=tuple(RUN_NAMES), help="which widths' folders to read")
    parser.add_argument("--title", default="MLP on Fashion-MNIST")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    widths = load_widths(workdir, args.model)
    if not widths:
        folders = "mlp*x" if args.model == "mlp" else f"{args.model}_*x"
        print(f"no sweep results under {workdir}/{folders}/sweep: run experiments/width_scaling.py --model "
              f"{args.model} first", file=sys.stderr)
        return 2
    corr_path = workdir / "correlations.json"
    correlations = json.loads(corr_path.read_text()) if corr_path.exists() else None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    name = lambda suffix: out.with_name(out.name + suffix)
    written = {name("_accuracy.png"): accuracy_by_width(widths, args.title),
               name("_by_correction.png"): accuracy_by_correction(widths, args.title)}
    if correlations:
        written[name("_correlations_by_layer.png")] = correlation_by_layer(correlations, args.title)
        if len(next(iter(correlations.values()))["bn"]) <= MAX_HISTOGRAM_LAYERS:
            written[name("_correlations.png")] = correlation_plot(correlations, args.title)
    for path, data in written.items():
        write_bytes_atomic(path, data)
    write_text_atomic(name("_table.md"), tables(widths, correlations))
    print("\n".join(str(p) for p in [*written, name("_table.md")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
