"""Model merging (the paper's Tables 1–2) on Fashion-MNIST: two MLPs merged into one by weight matching, ZipIt! and
folding, each followed by REPAIR, against the two endpoints and their ensemble (averaged logits).

Settings: ``same`` — two seeds trained on all 10 classes; ``split`` — one model on classes 0–4, the other on 5–9,
each with the full 10-way head (its other classes never targets), the merged head joined by averaging the logits as
in the same-task case (jaxfold/merge_run.py says why). ``:resnet18`` merges two narrow ResNet18s instead (the
paper's model, at width 0.0625; slower on a CPU), ``:vgg11`` two VGG11-BNs as configs/vgg11_fmnist.py (width 0.25,
the paper's other merged model), trained 5 epochs.

    jaxfold data fetch fashion_mnist
    jaxfold merge --config configs/merge_fmnist.py --workdir workdirs/merge_fmnist
    jaxfold merge --config configs/merge_fmnist.py:vgg11 --workdir workdirs/merge_fmnist_vgg11
"""

from pathlib import Path

import ml_collections

from jaxfold import config as config_lib
from jaxfold.errors import UserError
from jaxfold.merge_run import merge_section


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "mlp", "resnet18", "vgg11"):
        raise UserError(f"configs/merge_fmnist.py takes no argument (the MLP), :resnet18 or :vgg11, got {arg!r}")
    c = ml_collections.ConfigDict()
    # the paper's MLP (3 × [Linear–BN–ReLU] + classifier, 512 wide) on 28 × 28 grey images
    c.model = dict(name="mlp", in_channels=1, num_classes=10, width=1.0, image_size=28)
    # classes: the endpoints' label subsets are set per setting by the merge runner (empty: every class)
    c.data = dict(name="fashion_mnist", path="", crop_padding=0, hflip=True, classes=())
    c.train = dict(epochs=5, batch_size=128, lr=0.05, momentum=0.9, nesterov=False, weight_decay=5e-4,
                   warmup_epochs=0.0, seed=0, eval_every=1, eval_batch_size=500)
    c.merge = merge_section()
    if arg == "resnet18":  # the paper's architecture, narrow (stream widths 4/8/16/32)
        c.model = dict(name="resnet18", stem="cifar", in_channels=1, num_classes=10, width=0.0625, image_size=28)
        c.data.crop_padding = 2
        c.train.lr = 0.1
        c.train.epochs = 8
    if arg == "vgg11":  # configs/vgg11_fmnist.py's model (CIFAR head: 1×1 pool, two hidden Linears) and crops, 5 epochs
        vgg = config_lib.load_module(Path(__file__).with_name("vgg11_fmnist.py")).get_config()
        c.model = vgg.model.to_dict()
        c.data.crop_padding = vgg.data.crop_padding
    return c
