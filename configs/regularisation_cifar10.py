"""The paper's Fig. 11 on CIFAR-10: full-width ResNet18 (CIFAR stem) trained with an L1 or an L2 penalty on the
kernels (``:l1``, ``:l2``), then a sweep of structured magnitude pruning (± REPAIR) against folding (Fold-AR,
Fold-DIR, Fold-R) at the paper's channel ratios.

Trains as configs/resnet18_cifar10.py (60 epochs) but with no weight decay: the penalty is the only regulariser
(``train.l1`` / ``train.l2``, jaxfold/train.py). The coefficients and variants are configs/regularisation_fmnist.py's
(not tuned: l2 = 2.5e-4 is the default weight decay 5e-4 restricted to kernels; l1 = 1e-4).

Data: a path you provide (not fetchable on these machines). On a GPU:

    jaxfold sweep --config configs/regularisation_cifar10.py:l1 --workdir workdirs/regularisation_cifar10/sweep_l1 \
        --config.data.path=/path/to/cifar-10-batches-py/..
    jaxfold sweep --config configs/regularisation_cifar10.py:l2 --workdir workdirs/regularisation_cifar10/sweep_l2 \
        --config.data.path=/path/to/cifar-10-batches-py/..
    python paper_figs/cv.py workdirs/regularisation_cifar10/sweep_l1 \
        --out docs/figures/regularisation_l1_resnet18_cifar10

Each trains its checkpoint first when missing (workdirs/regularisation_cifar10/<arg>/checkpoint).
"""

from pathlib import Path

import ml_collections

from jaxfold import config as config_lib
from jaxfold.errors import UserError
from jaxfold.fold_run import cv_fold_section
from jaxfold.sweep import PAPER_CV_RATIOS, cv_sweep_section


def _stand_in():
    """configs/regularisation_fmnist.py (configs are files, not a package): its penalties and variants are these."""
    return config_lib.load_module(Path(__file__).with_name("regularisation_fmnist.py"))


# What the CPU stand-in reduces beyond what its docstring says: three channel ratios (0.25 / 0.5 / 0.75) instead
# of the paper's grid, so that each sweep fits on a 2-core CPU.
def get_config(arg: str = "l2") -> ml_collections.ConfigDict:
    stand_in = _stand_in()
    if arg not in stand_in.PENALTIES:
        raise UserError(f"configs/regularisation_cifar10.py takes :l1 or :l2, got {arg!r}")
    c = stand_in.get_config(arg)
    c.model = dict(name="resnet18", stem="cifar", in_channels=3, num_classes=10, width=1.0, image_size=32)
    c.data = dict(name="cifar10", path="", crop_padding=4, hflip=True)
    c.train.epochs = 60
    c.train.eval_every = 1
    ckpt = f"workdirs/regularisation_cifar10/{arg}/checkpoint"
    c.fold = cv_fold_section(ckpt)
    c.sweep = cv_sweep_section(ckpt, variants=stand_in.VARIANTS, ratios=PAPER_CV_RATIOS, variance_ratio_at=())
    return c
