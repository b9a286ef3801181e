"""The paper's LLM table (Table 3 form) from a language-model sweep's results.jsonl: perplexity per method and
schedule at each target fraction of parameters removed, the greedy generations (Table 5 form), and — where rows
were corrected or calibrated — one line per row with the data it read (none / self-generated / real text), the
calibration tokens and the seconds each step cost. Rows run at several seeds show mean ± std over the seeds and
their number (jaxfold.seed_stats, shared with paper_figs/cv.py and the sweep's summary table).

    python paper_figs/llm.py workdirs/sweep_smollm2 --out docs/figures/smollm2_shakespeare
writes <out>_table.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxfold.files import write_text_atomic
from jaxfold.seed_stats import aggregate_seeds
from jaxfold.sweep import read_results, row_name, summary_table


def generations_table(records: list[dict]) -> str:
    rows = [r for r in records if r.get("generations")]
    if not rows:
        return ""
    seeds: dict[tuple[str, float], set[int]] = {}
    for r in rows:
        seeds.setdefault((row_name(r), r["ratio"]), set()).add(r["seed"])
    lines = ["| model | params removed | prompt | greedy continuation |", "|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["method"] != "dense", r["id"])):
        name = "dense" if r["method"] == "dense" else row_name(r)
        if len(seeds[(row_name(r), r["ratio"])]) > 1:  # a generation is one seed's, not a mean
            name += f" (seed {r['seed']})"
        for g in r["generations"]:
            text = g["continuation"].replace("\n", "⏎").replace("|", "\\|")
            lines.append(f"| {name} | {100 * r['param_sparsity']:.1f} % | {g['prompt']} | {text} |")
    return "\n".join(lines) + "\n"


DATA = {"none": "none", "self": "self-generated", "real": "real text"}


def data_table(records: list[dict]) -> str:
    """One line per corrected or calibrated row and target: what it read, how much, its perplexity as mean ± std
    over its seeds (their number in the last column), and what each step cost (the first seed's run)."""
    rows = [r for r in records if r["method"] != "dense" and "calibration" in r]
    if not any(r["calibration"] != "none" for r in rows):
        return ""
    key = lambda r: (row_name(r), r["ratio"])
    perplexity = aggregate_seeds(rows, key)
    first: dict[tuple[str, float], dict] = {}
    for r in sorted(rows, key=lambda r: r["seed"]):
        first.setdefault(key(r), r)
    lines = ["| row | target | params removed | external text | calibration | perplexity | compress s | "
             "correction s (per step) | seeds |", "|---|---|---|---|---|---|---|---|---|"]
    for row, r in sorted(first.items(), key=lambda item: (item[0][1], perplexity[item[0]].mean)):
        steps = ", ".join(f"{name} {v:.0f}" for name, v in r.get("correction_steps", {}).items()) or "–"
        tokens = f"{DATA[r['calibration']]}, {r['calibration_tokens']:,} tokens" if r["calibration_tokens"] else "–"
        lines.append(f"| {row_name(r)} | {r['ratio']:g} | {100 * r['param_sparsity']:.2f} % | "
                     f"{'yes' if r['calibration'] == 'real' else 'no'} | {tokens} | {perplexity[row].format()} | "
                     f"{r['fold_seconds']:.0f} | {steps} | {perplexity[row].n} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--out", required=True, help="output prefix")
    args = parser.parse_args(argv)
    records = read_results(args.workdir)
    if not records:
        print(f"no results in {args.workdir}/results.jsonl: run `jaxfold sweep` first", file=sys.stderr)
        return 2
    out = Path(args.out)
    target = out.with_name(out.name + "_table.md")
    parts = [summary_table(records), data_table(records), generations_table(records)]
    write_text_atomic(target, "\n".join(p for p in parts if p))
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
