"""MLP (3 × [Linear–BN–ReLU] + classifier) on CIFAR-10 at width 1× (`:2` and `:3` for 2×/3×) — Fig. 12.

Data: a path you provide (not fetchable on these machines). On a GPU:

    jaxfold sweep --config configs/mlp_cifar10.py --workdir workdirs/sweep_mlp_cifar10 \
        --config.data.path=/path/to/cifar-10-batches-py/..
"""

import ml_collections

from jaxfold.sweep import cv_sweep_section


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = dict(name="mlp", in_channels=3, num_classes=10, width=1.0, image_size=32)
    c.data = dict(name="cifar10", path="", crop_padding=0, hflip=False)
    c.train = dict(epochs=40, batch_size=128, lr=0.05, momentum=0.9, nesterov=False, weight_decay=5e-4,
                   warmup_epochs=0.0, seed=0, eval_every=1, eval_batch_size=500)
    # repair uses a fixed subset of the training images; the paper used a full epoch (CIFAR) or 256 images (ImageNet)
    c.sweep = cv_sweep_section("workdirs/mlp_cifar10/checkpoint", train_if_missing=True,
                               ratios=(0.05, 0.1, 0.15, 0.25, 0.35, 0.45, 0.5, 0.55, 0.65, 0.75))
    if arg in ("2", "3"):  # the 2× / 3× wide MLPs
        c.model.width = float(arg)
        c.sweep.checkpoint = f"workdirs/mlp{arg}x_cifar10/checkpoint"
    return c
