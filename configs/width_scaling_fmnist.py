"""Width scaling (the paper's Fig. 12) on Fashion-MNIST: the paper's MLP (3 × [Linear–BN–ReLU] + classifier) at
1×, 2×, 3×, 4× a base width of 128 hidden units (``:w`` or ``:mlp:w``), each folded with Fold-AR, Fold-DIR and
Fold-R (and Fold-Naive for reference) at channel ratios 0.1–0.7, three k-means seeds per point. The base width is
the CPU stand-in for the paper's 512 (CIFAR-10): the 4× model is 512 wide and trains in minutes on a 2-core CPU.

``:resnet18:w`` is ResNet18 (CIFAR stem) at w × 1/16 of its widths (1×: stream widths 4/8/16/32; 2×: the 8/16/32/64
of configs/resnet18_fmnist.py), trained 8 epochs as that config's demo: the same sweep on the paper's CNN.

    jaxfold data fetch fashion_mnist
    python experiments/width_scaling.py --workdir workdirs/width_scaling_fmnist     # every width: train, sweep
    jaxfold sweep --config configs/width_scaling_fmnist.py:2 --workdir workdirs/width_scaling_fmnist/mlp2x/sweep
    python paper_figs/width.py workdirs/width_scaling_fmnist --out docs/figures/width_scaling_fmnist
    python experiments/width_scaling.py --model resnet18 --widths 1,2 --workdir workdirs/width_scaling_fmnist_resnet18
    python paper_figs/width.py workdirs/width_scaling_fmnist_resnet18 --model resnet18 \
        --out docs/figures/width_scaling_fmnist_resnet18 --title "ResNet18 on Fashion-MNIST"
"""

from pathlib import Path

import ml_collections

from jaxfold import config as config_lib
from jaxfold.errors import UserError
from jaxfold.sweep import cv_sweep_section

MODELS = ("mlp", "resnet18")
WIDTHS = (1, 2, 3, 4)
BASE = 128  # the MLP's hidden units at 1×
RESNET18_BASE = 0.0625  # ResNet18's width at 1× (stream widths 4/8/16/32)


def parse(arg: str | None, config: str = "configs/width_scaling_fmnist.py") -> tuple[str, int]:
    """``None``, ``w``, ``mlp:w``, ``resnet18:w`` → (model, width multiplier w ≥ 1)."""
    usage = (f"{config} takes :w, :mlp:w or :resnet18:w with a positive integer width multiplier w (e.g. :2, "
             f":resnet18:2), got {arg!r}")
    parts = str(arg or "1").split(":")
    model = parts.pop(0) if parts[0] in MODELS else "mlp"
    if len(parts) > 1 or not (parts[0] if parts else "1").isdigit():
        raise UserError(usage)
    width = int(parts[0] if parts else 1)
    if width < 1:
        raise UserError(usage)
    return model, width


def run_name(model: str, width: int) -> str:
    """A width's folder under the experiment's workdir: ``mlp{w}x`` or ``resnet18_{w}x``."""
    return f"mlp{width}x" if model == "mlp" else f"{model}_{width}x"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    model, width = parse(arg)
    c = ml_collections.ConfigDict()
    if model == "mlp":
        c.model = dict(name="mlp", in_channels=1, num_classes=10, width=float(width), image_size=28, hidden=BASE)
        c.data = dict(name="fashion_mnist", path="", crop_padding=0, hflip=True)
        c.train = dict(epochs=10, batch_size=128, lr=0.05, momentum=0.9, nesterov=False, weight_decay=5e-4,
                       warmup_epochs=0.0, seed=0, eval_every=1, eval_batch_size=500)
    else:  # configs/resnet18_fmnist.py:demo's model, data and training, at w × 1/16 width
        demo = config_lib.load_module(Path(__file__).with_name("resnet18_fmnist.py")).get_config("demo")
        c.model, c.data, c.train = demo.model.to_dict(), demo.data.to_dict(), demo.train.to_dict()
        c.model.width = RESNET18_BASE * width
    # one checkpoint per width, trained by the sweep when missing; the paper's three corrections and Fold-Naive
    c.sweep = cv_sweep_section(f"workdirs/width_scaling_fmnist/{run_name(model, width)}/checkpoint",
                               variants=("fold:none", "fold:fold_ar", "fold:fold_dir", "fold:repair"),
                               ratios=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7), seeds=(0, 1, 2), variance_ratio_at=())
    return c
