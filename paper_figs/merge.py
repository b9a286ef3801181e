"""Model merging across widths, from experiments/merge_width.py's workdir (``W/w{width}/p{pair}/results.json``,
each a ``jaxfold merge`` results file); every number is mean ± std over the endpoint pairs (jaxfold.seed_stats).

    python paper_figs/merge.py workdirs/merge_width_fmnist --out docs/figures/merge_width_fmnist
writes <out>.png (test accuracy against width, one panel per setting: every merge with REPAIR (solid) and without
(dotted), the endpoints' mean and the ensemble for reference) and <out>_table.md (the same numbers, and each
merge's gap to its own pair's endpoints).

    python paper_figs/merge.py workdirs/merge_fmnist_vgg11 --out docs/figures/merge_fmnist_vgg11
on one ``jaxfold merge`` workdir (its ``results.json``) writes <out>_table.md: the paper's Tables 1–2 layout, one row
per setting (:func:`jaxfold.merge_run.summary`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from jaxfold.files import write_bytes_atomic, write_text_atomic
from jaxfold.merge_run import RESULTS, summary
from jaxfold.seed_stats import SeedStats, seed_stats

try:
    from paper_figs.cv import _png
except ModuleNotFoundError:  # run as a script (python paper_figs/merge.py): its own folder is on sys.path
    from cv import _png

TITLES = {"same": "same task", "split": "separate tasks, logits averaged",
          "split_by_task": "separate tasks, heads by task"}
LABELS = {"folding": "folding", "weight_matching": "weight matching", "zipit": "ZipIt!"}
PLURALS = {"mlp": "MLPs", "resnet18": "ResNet18s", "vgg11_bn": "VGG11-BNs"}
COLOURS = {"folding": "C0", "weight_matching": "C1", "zipit": "C2"}


def load_widths(workdir: Path) -> dict[float, list[dict]]:
    """Per width (from ``w{width}``), the results of its endpoint pairs (``p{pair}``), widths in increasing order."""
    out: dict[float, list[dict]] = {}
    for d in workdir.glob("w*/p*/results.json"):
        width, pair = d.parent.parent.name, d.parent.name
        match = re.fullmatch(r"w(\d+(?:\.\d*)?(?:e-?\d+)?)", width)
        if match and re.fullmatch(r"p\d+", pair):
            out.setdefault(float(match.group(1)), []).append(json.loads(d.read_text()))
    if not out:
        raise SystemExit(f"error: no W/w<width>/p<pair>/results.json under {workdir}; run experiments/merge_width.py "
                         f"first")
    return dict(sorted(out.items()))


def _points(results: dict, setting: str) -> dict[str, float]:
    """One pair's accuracies in one setting: ``endpoints`` (mean of a and b), ``ensemble``, and each method with
    REPAIR (its name), without (``<name> (no REPAIR)``) and its gap to the endpoints (``<name> Δ``)."""
    rows = results["settings"][setting]["results"]
    base = (rows["model_a"]["accuracy"] + rows["model_b"]["accuracy"]) / 2
    points = {"endpoints": base, "ensemble": rows["ensemble"]["accuracy"]}
    for method in results["merge"]["methods"]:
        if "accuracy" in rows[method]:
            points[method] = rows[method]["accuracy"]
            points[f"{method} Δ"] = rows[method]["accuracy"] - base
        points[f"{method} (no REPAIR)"] = rows[method]["accuracy_no_repair"]
    return points


def _series(widths: dict[float, list[dict]], setting: str) -> dict[str, dict[float, SeedStats]]:
    """Per series, per width, the stats over that width's pairs (widths where the setting did not run are left
    out)."""
    values: dict[str, dict[float, list[float]]] = {}
    for w, pairs in widths.items():
        for results in pairs:
            if setting in results["settings"]:
                for name, value in _points(results, setting).items():
                    values.setdefault(name, {}).setdefault(w, []).append(value)
    return {name: {w: seed_stats(v) for w, v in by_width.items()} for name, by_width in values.items()}


def _settings(widths: dict[float, list[dict]]) -> list[str]:
    return [s for s in TITLES if any(s in r["settings"] for pairs in widths.values() for r in pairs)]


def figure(widths: dict[float, list[dict]], what: str) -> bytes:
    settings = _settings(widths)
    fig, axes = plt.subplots(1, len(settings), figsize=(4.6 * len(settings), 3.8), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, setting in zip(axes[0], settings, strict=True):
        for name, by_width in _series(widths, setting).items():
            if name.endswith(" Δ"):
                continue
            xs = sorted(by_width)
            ys, err = [by_width[x].mean for x in xs], [by_width[x].std for x in xs]
            method = name.removesuffix(" (no REPAIR)")
            if name in ("endpoints", "ensemble"):
                ax.errorbar(xs, ys, err, fmt="k-" if name == "endpoints" else "k--", lw=1, capsize=2, label=name)
            else:
                ax.errorbar(xs, ys, err, fmt="o-" if method == name else "o:", color=COLOURS.get(method),
                            alpha=1.0 if method == name else 0.5, ms=4, capsize=2,
                            label=LABELS.get(method, method) + ("" if method == name else " (no REPAIR)"))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("width multiplier")
        ax.set_title(TITLES[setting])
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (mean ± std over endpoint pairs)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Merging two {what} across widths")
    return _png(fig)


def table(widths: dict[float, list[dict]]) -> str:
    lines = []
    for setting in _settings(widths):
        series = _series(widths, setting)
        methods = [m for m in LABELS if f"{m} (no REPAIR)" in series]
        lines += [f"**{TITLES[setting]}**: with REPAIR, without in parentheses, Δ = with REPAIR minus the pair's "
                  "endpoints' mean; mean ± std over n endpoint pairs", "",
                  "| width | n | endpoints (mean) | ensemble | " + " | ".join(LABELS[m] for m in methods) + " |",
                  "|---" * (4 + len(methods)) + "|"]
        for w in sorted(series["endpoints"]):
            cells = []
            for m in methods:
                plain = series[f"{m} (no REPAIR)"][w].format(digits=".3f")
                cells.append(f"{series[m][w].format(digits='.3f')} ({plain}; Δ {series[m + ' Δ'][w].mean:+.3f})"
                             if w in series.get(m, {}) else f"– ({plain})")
            lines.append(f"| {w:g} | {series['endpoints'][w].n} | {series['endpoints'][w].format(digits='.3f')} | "
                         f"{series['ensemble'][w].format(digits='.3f')} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def describe(widths: dict[float, list[dict]]) -> str:
    """The models, e.g. ``MLPs`` or ``ResNet18s``, from the results' model section."""
    names = {r["model"]["name"] for pairs in widths.values() for r in pairs}
    return " / ".join(PLURALS.get(n, f"{n}s") for n in sorted(names))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="experiments/merge_width.py's workdir, or one jaxfold merge workdir")
    parser.add_argument("--out", type=Path, required=True, help="output prefix (<out>.png, <out>_table.md)")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if (args.workdir / RESULTS).exists():  # one merge run: its table
        text = summary(json.loads((args.workdir / RESULTS).read_text())) + "\n"
        write_text_atomic(args.out.with_name(args.out.name + "_table.md"), text)
        print(text, end="")
        return 0
    widths = load_widths(args.workdir)
    write_bytes_atomic(args.out.with_name(args.out.name + ".png"), figure(widths, describe(widths)))
    text = table(widths)
    write_text_atomic(args.out.with_name(args.out.name + "_table.md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
