"""The paper's LLM table (Table 3 form) from a language-model sweep's results.jsonl: perplexity per method and
schedule at each target fraction of parameters removed, and the greedy generations (Table 5 form).

    python paper_figs/llm.py workdirs/sweep_smollm2 --out docs/figures/smollm2_shakespeare
writes <out>_table.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxfold.files import write_text_atomic
from jaxfold.sweep import read_results, summary_table


def generations_table(records: list[dict]) -> str:
    rows = [r for r in records if r.get("generations")]
    if not rows:
        return ""
    lines = ["| model | params removed | prompt | greedy continuation |", "|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["method"] != "dense", r["id"])):
        name = "dense" if r["method"] == "dense" else f"{r['method']}:{r['schedule']}"
        for g in r["generations"]:
            text = g["continuation"].replace("\n", "⏎").replace("|", "\\|")
            lines.append(f"| {name} | {100 * r['param_sparsity']:.1f} % | {g['prompt']} | {text} |")
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
    write_text_atomic(target, summary_table(records) + "\n" + generations_table(records))
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
