"""Model merging across widths: at which width do two independently trained networks merge into one?

    python experiments/merge_width.py [--config configs/merge_fmnist.py] [--workdir workdirs/merge_width_fmnist] \
        [--widths 0.0625,0.125,0.25,0.5,1,2] [--pairs 3] [--config.x=v …]
    python paper_figs/merge.py workdirs/merge_width_fmnist --out docs/figures/merge_width_fmnist

For each width w and endpoint pair p, ``jaxfold merge --config CONFIG --config.model.width=w`` into ``W/w{w}/p{p}/``
with the training seeds (2p, 2p + 1) and k-means seed p (its endpoints trained there first when missing; both
resume): every setting of the config's ``merge`` section, every method, with and without REPAIR. Pair 0 is the
config's own seeds. ``W/w{w}/p{p}/results.json`` is the merge's own results file; paper_figs/merge.py reads them
all and reports mean ± std over the pairs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from jaxfold import compile_cache
from jaxfold import config as config_lib
from jaxfold.errors import UserError
from jaxfold.merge_run import check_merge_config, run_merge, summary


def run_dir(workdir: Path, width: float, pair: int) -> Path:
    """``W/w{width}/p{pair}``, the width written as the shortest float that reads back equal (``w0.125``, ``w1.0``)."""
    return workdir / f"w{float(width)!r}" / f"p{int(pair)}"


def pair_overrides(pair: int) -> list[str]:
    """Pair 0: the config's own seeds; pair p > 0: training seeds (2p, 2p + 1), k-means seed p."""
    if pair == 0:
        return []
    return [f"--config.merge.seeds=({2 * pair}, {2 * pair + 1})", f"--config.merge.seed={pair}"]


def parse_widths(text: str) -> list[float]:
    try:
        widths = [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise UserError(f"--widths takes comma-separated positive numbers (e.g. 0.25,0.5,1), got {text!r}") from None
    if not widths or any(not w > 0 for w in widths):
        raise UserError(f"--widths takes comma-separated positive numbers (e.g. 0.25,0.5,1), got {text!r}")
    return sorted(set(widths))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/merge_fmnist.py")
    parser.add_argument("--workdir", default="workdirs/merge_width_fmnist")
    parser.add_argument("--widths", default="0.0625,0.125,0.25,0.5,1,2", help="comma-separated width multipliers")
    parser.add_argument("--pairs", type=int, default=3, help="endpoint pairs per width (seeds, see above)")
    args, extra = parser.parse_known_args(argv)
    if bad := [a for a in extra if not a.startswith("--config.")]:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (config overrides look like --config.train.epochs=3)")
    if any(a.startswith("--config.model.width") for a in extra):
        parser.error("the width is set by --widths, not --config.model.width")
    if args.pairs < 1:
        parser.error(f"--pairs must be at least 1, got {args.pairs}")
    try:
        widths = parse_widths(args.widths)
        base = config_lib.load_with_overrides(args.config, extra)
        configs = {(w, p): config_lib.apply_overrides(base, [f"--config.model.width={w}", *pair_overrides(p)])
                   for p in range(args.pairs) for w in widths}
        for c in configs.values():
            check_merge_config(c)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    compile_cache.enable()
    for (w, p), c in configs.items():  # every width's first pair before any second: a stopped run spans the widths
        t0 = time.time()
        results = run_merge(c, run_dir(Path(args.workdir), w, p))
        print(f"width {w}, pair {p}: {time.time() - t0:.0f} s\n{summary(results)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
