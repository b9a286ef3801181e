"""Width scaling (the paper's Fig. 12) and channel correlations (Figs. 2/8), one width after another:

    python experiments/width_scaling.py [--config configs/width_scaling_fmnist.py] [--model mlp|resnet18] \
        [--workdir workdirs/width_scaling_fmnist] [--widths 1,2,3,4] [--examples 2000] [--config.x=v …]

For each width w, ``jaxfold sweep --config CONFIG:MODEL:w`` into ``W/R/sweep``, its checkpoint ``W/R/checkpoint``
trained first when missing (``sweep.train_if_missing``); both resume. R is the folder the config gives its
checkpoint: ``mlp{w}x`` or ``resnet18_{w}x``. Then the matched channel correlations of
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


def width_config(config: str, model: str, width: int, workdir: Path, overrides: list[str]
                 ) -> tuple[str, ml_collections.ConfigDict]:
    """The run's folder name (the one the config gives its checkpoint, e.g. ``mlp2x``) and the config of ``model``
    at ``width``, its checkpoint moved under ``workdir``."""
    c = config_lib.load_with_overrides(f"{config}:{model}:{width}", overrides)
    name = Path(c.sweep.checkpoint).parent.name
    c.sweep.checkpoint = str(workdir / name / "checkpoint")
    return name, c


def _json_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in r.items() if k != "pairs"} for r in rows]


def correlations(config: ml_collections.ConfigDict, examples: int) -> dict[str, Any]:
    """Per place (``bn``, ``relu``), each layer's matched-pair correlations (best first) and summary, JSON-ready;
    ``init_bn``: the same at the BN outputs of the untrained network (its initialisation, BN statistics 0/1), the
    reference for how high greedy matching alone lifts the best pairs as a layer gets more channels to choose from."""
    variables, model, _ = checkpoint.restore(config.sweep.checkpoint)
    batches = subset_batches(load_data(config), examples, seed=0)
    out: dict[str, Any] = {"examples": examples}
    for widths in ("hidden_widths", "stream_widths"):  # the MLP's, ResNet18's
        if hasattr(model, widths):
            out[widths] = list(getattr(model, widths))
    for place, fn in NONLINEARITIES.items():
        out[place] = _json_rows(matched_correlations(model, variables, batches(), nonlinearity=fn))
    untrained = model.init(jax.random.key(config.train.seed))
    out["init_bn"] = _json_rows(matched_correlations(model, untrained, batches()))
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/width_scaling_fmnist.py")
    parser.add_argument("--workdir", default="workdirs/width_scaling_fmnist")
    parser.add_argument("--model", default="mlp", choices=("mlp", "resnet18"))
    parser.add_argument("--widths", default="1,2,3,4", help="comma-separated width multipliers")
    parser.add_argument("--examples", type=int, default=2000, help="training images for the correlations")
    args, extra = parser.parse_known_args(argv)
    if bad := [a for a in extra if not a.startswith("--config.")]:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (config overrides look like --config.train.epochs=3)")
    compile_cache.enable()
    workdir = Path(args.workdir)
    widths = [int(w) for w in args.widths.split(",")]
    configs = {w: width_config(args.config, args.model, w, workdir, extra) for w in widths}
    for w, (name, c) in configs.items():
        t0 = time.time()
        records = run_sweep(c, workdir / name / "sweep")
        print(f"width {w}x: {len(records)} records, {time.time() - t0:.0f} s", flush=True)
    write_json_atomic(workdir / CORRELATIONS, {str(w): correlations(c, args.examples) for w, (_, c) in configs.items()})
    print(workdir / CORRELATIONS)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
