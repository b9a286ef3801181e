"""Width scaling (the paper's Fig. 12, its CIFAR-10 panel) on CIFAR-10: the paper's MLP (3 × [Linear–BN–ReLU] +
classifier) at w × its 512 hidden units, ``:w`` or ``:mlp:w`` (the figure's 1×, 2×, 3×; its legend's 4× and 8×
too), each folded with Fold-AR, Fold-DIR and Fold-R (and Fold-Naive for reference) at channel ratios 0.1–0.7, three
k-means seeds per point: configs/width_scaling_fmnist.py's sweep at the paper's size.

``:resnet18:w`` is ResNet18 (CIFAR stem) at w × its widths, trained as configs/resnet18_cifar10.py: an extra, not in
Fig. 12, whose other panel is ResNet50 on CIFAR-100 (configs/resnet50_cifar100.py, ``--config.model.width=2.0``).
experiments/width_scaling.py and paper_figs/width.py take ``--model resnet18`` for these widths.

Data: a path you provide (not fetchable on these machines). On a GPU:

    python experiments/width_scaling.py --config configs/width_scaling_cifar10.py \
        --workdir workdirs/width_scaling_cifar10 --widths 1,2,3 --config.data.path=/path/to/cifar-10-batches-py/..
    python paper_figs/width.py workdirs/width_scaling_cifar10 --out docs/figures/width_scaling_cifar10
    jaxfold sweep --config configs/width_scaling_cifar10.py:2 --workdir workdirs/width_scaling_cifar10/mlp2x/sweep \
        --config.data.path=/path/to/cifar-10-batches-py/..
    jaxfold sweep --config configs/width_scaling_cifar10.py:resnet18:2 \
        --workdir workdirs/width_scaling_cifar10/resnet18_2x/sweep --config.data.path=/path/to/cifar-10-batches-py/..

(``--widths 1,2,3,4,8`` for the legend's wider MLPs.) Each width trains its checkpoint first when missing:
workdirs/width_scaling_cifar10/mlp{w}x/checkpoint (the layout experiments/width_scaling.py and paper_figs/width.py
read), workdirs/width_scaling_cifar10/resnet18_{w}x/checkpoint.
"""

from pathlib import Path

import ml_collections

from jaxfold import config as config_lib
from jaxfold.sweep import cv_sweep_section


def _stand_in():
    """configs/width_scaling_fmnist.py (configs are files, not a package): its argument parser and run names."""
    return config_lib.load_module(Path(__file__).with_name("width_scaling_fmnist.py"))


BASE = 512  # the MLP's hidden units at 1× (configs/width_scaling_fmnist.py: 128, its CPU reduction)
# configs/width_scaling_fmnist.py also trains on Fashion-MNIST for 10 epochs, to fit its 4 widths on a 2-core CPU


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    stand_in = _stand_in()
    model, width = stand_in.parse(arg, "configs/width_scaling_cifar10.py")
    c = ml_collections.ConfigDict()
    # as configs/mlp_cifar10.py (its 1×) or configs/resnet18_cifar10.py, w × wider
    trained = config_lib.load_module(Path(__file__).with_name(f"{model}_cifar10.py")).get_config()
    c.model, c.data, c.train = trained.model.to_dict(), trained.data.to_dict(), trained.train.to_dict()
    c.model.width = float(width)
    if model == "mlp":
        c.model.hidden = BASE
    # one checkpoint per model and width, trained by the sweep when missing; the paper's three corrections and
    # Fold-Naive, the ratios and seeds of configs/width_scaling_fmnist.py (so the two figures compare)
    c.sweep = cv_sweep_section(f"workdirs/width_scaling_cifar10/{stand_in.run_name(model, width)}/checkpoint",
                               variants=("fold:none", "fold:fold_ar", "fold:fold_dir", "fold:repair"),
                               ratios=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7), seeds=(0, 1, 2), variance_ratio_at=())
    return c
