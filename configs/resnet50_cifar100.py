"""ResNet50 (CIFAR stem) on CIFAR-100 — the paper's width-scaling experiment (Fig. 12; `--config.model.width=2.0`
/ 3.0).

Data: a path you provide (not fetchable on these machines). On a GPU:

    jaxfold sweep --config configs/resnet50_cifar100.py --workdir workdirs/sweep_resnet50_cifar100 \
        --config.data.path=/path/to/cifar-10-batches-py/..
"""

import ml_collections

from jaxfold.sweep import cv_sweep_section


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = dict(name="resnet50", stem="cifar", in_channels=3, num_classes=100, width=1.0, image_size=32)
    c.data = dict(name="cifar100", path="", crop_padding=4, hflip=True)
    c.train = dict(epochs=60, batch_size=128, lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
                   warmup_epochs=0.0, seed=0, eval_every=1, eval_batch_size=500)
    # repair uses a fixed subset of the training images; the paper used a full epoch (CIFAR) or 256 images (ImageNet)
    c.sweep = cv_sweep_section("workdirs/resnet50_cifar100/checkpoint", train_if_missing=True,
                               ratios=(0.05, 0.1, 0.15, 0.25, 0.35, 0.45, 0.5, 0.55, 0.65, 0.75))
    return c
