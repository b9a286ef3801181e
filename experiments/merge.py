"""Thin launcher: ``python experiments/merge.py --config configs/merge_fmnist.py --workdir W [--config.x=v]``.

Identical to ``jaxfold merge …`` (jaxfold/merge_run.py): trains and caches the two endpoints of every setting,
merges them by weight matching, ZipIt! and folding (+REPAIR), writes ``W/results.json``.
"""

import sys

from jaxfold.cli import main

if __name__ == "__main__":
    sys.exit(main(["merge", *sys.argv[1:]]))
