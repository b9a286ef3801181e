"""Width scaling (the paper's Fig. 12) and channel correlations (Figs. 2/8), one width after another:

    python experiments/width_scaling.py [--config configs/width_scaling_fmnist.py] \
        [--workdir workdirs/width_scaling_fmnist] [--widths 1,2,3,4] [--examples 2000] [--config.x=v …]

For each width w, ``jaxfold sweep --config CONFIG:w`` into ``W/mlp{w}x/sweep``, its checkpoint ``W/mlp{w}x/checkpoint``
trained first when missing (``sweep.train_if_missing``); both resume. Then the matched channel correlations of
every width's checkpoint (jaxfold.correlations) on ``--examples`` training images — at each BatchNorm output and
after its ReLU, and at the BN outputs of the untrained network — go to ``W/correlations.json``. Figures and tables:
``python paper_figs/width.py W --out …``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxfold import compile_cache
from jaxfold import config as config_lib
from jaxfold.correlations import matched_correlations
from jaxfold.data.pipeline import subset_batches
from jaxfold.files import write_json_atomic
from jaxfold.io import checkpoint
from jaxfold.sweep import run_sweep
from jaxfold.train import load_data

CORRELATIONS = "correlations.json"
NONLINEARITIES = {"bn": None, "relu": jax.nn.relu}  # where the channels are read: BN output, or after its ReLU


def width_config(config: str, width: int, workdir: Path, overrides: list[str]) -> ml_collections.ConfigDict:
    """The config at ``width``, its checkpoint under ``workdir``."""
    c = config_lib.load_with_overrides(f"{config}:{width}", overrides)
    c.sweep.checkpoint = str(workdir / f"mlp{width}x" / "checkpoint")
    return c


def _json_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in r.items() if k != "pairs"} for r in rows]


def correlations(config: ml_collections.ConfigDict, examples: int) -> dict[str, Any]:
    """Per place (``bn``, ``relu``), each layer's matched-pair correlations (best first) and summary, JSON-ready;
    ``init_bn``: the same at the BN outputs of the untrained network (its initialisation, BN statistics 0/1), the
    reference for how high greedy matching alone lifts the best pairs as a layer gets more channels to choose from."""
    variables, model, _ = checkpoint.restore(config.sweep.checkpoint)
    batches = subset_batches(load_data(config), examples, seed=0)
    out: dict[str, Any] = {"hidden_widths": list(model.hidden_widths), "examples": examples}
    for place, fn in NONLINEARITIES.items():
        out[place] = _json_rows(matched_correlations(model, variables, batches(), nonlinearity=fn))
    untrained = model.init(jax.random.key(config.train.seed))
    out["init_bn"] = _json_rows(matched_correlations(model, untrained, batches()))
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/width_scaling_fmnist.py")
    parser.add_argument("--workdir", default="workdirs/width_scaling_fmnist")
    parser.add_argument("--widths", default="1,2,3,4", help="comma-separated width multipliers")
    parser.add_argument("--examples", type=int, default=2000, help="training images for the correlations")
    args, extra = parser.parse_known_args(argv)
    if bad := [a for a in extra if not a.startswith("--config.")]:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (config overrides look like --config.train.epochs=3)")
    compile_cache.enable()
    workdir = Path(args.workdir)
    widths = [int(w) for w in args.widths.split(",")]
    configs = {w: width_config(args.config, w, workdir, extra) for w in widths}
    for w, c in configs.items():
        t0 = time.time()
        records = run_sweep(c, workdir / f"mlp{w}x" / "sweep")
        print(f"width {w}x: {len(records)} records, {time.time() - t0:.0f} s", flush=True)
    write_json_atomic(workdir / CORRELATIONS, {str(w): correlations(c, args.examples) for w, c in configs.items()})
    print(workdir / CORRELATIONS)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
