"""Width scaling (the paper's Fig. 12) on Fashion-MNIST: the paper's MLP (3 × [Linear–BN–ReLU] + classifier) at
1×, 2×, 3×, 4× a base width of 128 hidden units (``:1`` … ``:4``), each folded with Fold-AR, Fold-DIR and Fold-R
(and Fold-Naive for reference) at channel ratios 0.1–0.7, three k-means seeds per point. The base width is the
CPU stand-in for the paper's 512 (CIFAR-10): the 4× model is 512 wide and trains in minutes on a 2-core CPU.

    jaxfold data fetch fashion_mnist
    python experiments/width_scaling.py --workdir workdirs/width_scaling_fmnist     # every width: train, sweep
    jaxfold sweep --config configs/width_scaling_fmnist.py:2 --workdir workdirs/width_scaling_fmnist/mlp2x/sweep
    python paper_figs/width.py workdirs/width_scaling_fmnist --out docs/figures/width_scaling_fmnist
"""

import ml_collections

from jaxfold.sweep import cv_sweep_section

WIDTHS = (1, 2, 3, 4)
BASE = 128  # hidden units at 1×


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    width = int(arg or 1)
    if width < 1:
        raise ValueError(f"width_scaling_fmnist takes a positive integer width multiplier (:1, :2, …), got {arg!r}")
    c = ml_collections.ConfigDict()
    c.model = dict(name="mlp", in_channels=1, num_classes=10, width=float(width), image_size=28, hidden=BASE)
    c.data = dict(name="fashion_mnist", path="", crop_padding=0, hflip=True)
    c.train = dict(epochs=10, batch_size=128, lr=0.05, momentum=0.9, nesterov=False, weight_decay=5e-4,
                   warmup_epochs=0.0, seed=0, eval_every=1, eval_batch_size=500)
    # one checkpoint per width, trained by the sweep when missing; the paper's three corrections and Fold-Naive
    c.sweep = cv_sweep_section(f"workdirs/width_scaling_fmnist/mlp{width}x/checkpoint",
                               variants=("fold:none", "fold:fold_ar", "fold:fold_dir", "fold:repair"),
                               ratios=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7), seeds=(0, 1, 2), variance_ratio_at=())
    return c
