"""Thin launcher: ``python experiments/train.py --config configs/resnet18_fmnist.py --workdir W [--config.x=v]``.

Identical to ``jaxfold train …``; kept so experiment scripts can be launched without the console script.
"""

import sys

from jaxfold.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
