"""Parity of imported PyTorch weights: the reference torch modules below reproduce torchvision's / kuangliu's exact
parameter names and structure (torchvision has no CPU wheel here), get random weights and random BN running
stats, and must give the same eval-mode logits as the Flax model built from the imported variables."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from jaxfold import models  # noqa: E402
from jaxfold import tree as tree_lib  # noqa: E402
from jaxfold.io.torch_import import import_state_dict, load_torch_file  # noqa: E402

torch.set_num_threads(1)
TOL = 1e-4


# --- reference torch models ------------------------------------------------------------------------------------
class TVBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class TVBottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(y)))))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class TVResNet(nn.Module):
    """torchvision ResNet structure; ``stem='cifar'`` swaps in the paper's 3×3 s1 stem without max-pool."""

    def __init__(self, block, layers, planes, stem_width: int, num_classes: int, stem: str):
        super().__init__()
        k, s, p = (7, 2, 3) if stem == "imagenet" else (3, 1, 1)
        self.conv1 = nn.Conv2d(3, stem_width, k, s, p, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem == "imagenet" else nn.Identity()
        cin = stem_width
        for i, (n, w) in enumerate(zip(layers, planes, strict=True)):
            blocks = []
            for b in range(n):
                stride = 2 if i > 0 and b == 0 else 1
                ds = None
                if stride != 1 or cin != w * block.expansion:
                    ds = nn.Sequential(nn.Conv2d(cin, w * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(w * block.expansion))
                blocks.append(block(cin, w, stride, ds))
                cin = w * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class KLBasicBlock(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class KLResNet18(nn.Module):
    """kuangliu/pytorch-cifar ResNet18 (the paper's CIFAR code)."""

    def __init__(self, planes, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, planes[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        cin = planes[0]
        for i, w in enumerate(planes):
            blocks = []
            for stride in (1 if i == 0 else 2, 1):
                blocks.append(KLBasicBlock(cin, w, stride))
                cin = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


class TVVGG11BN(nn.Module):
    def __init__(self, convs, pools_after, hidden, num_classes: int, pool: int):
        super().__init__()
        layers, cin = [], 3
        for i, w in enumerate(convs):
            layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i in pools_after:
                layers.append(nn.MaxPool2d(2, 2))
            cin = w
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(pool)
        self.classifier = nn.Sequential(nn.Linear(cin * pool * pool, hidden[0]), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(hidden[0], hidden[1]), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(hidden[1], num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# --- helpers -----------------------------------------------------------------------------------------------------
def _stage_planes(cfg) -> list[int]:
    firsts = np.cumsum((0, *cfg.layers[:-1]))
    return [cfg.inner_widths[i][0] for i in firsts]


def _randomise(model: nn.Module, image_size: int) -> nn.Module:
    """Random BN affine params and running stats, so a mis-mapped BN tensor cannot go unnoticed; He-normal weights
    and non-zero biases so every layer matters. The last Linear is then rescaled to give logits of order one: an
    fp32 forward pass is exact to ~1e-7 relative, so the absolute tolerance is only meaningful at that scale."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
        model.eval()
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        scale = 4.0 / model(torch.randn(4, 3, image_size, image_size)).abs().max()
        head.weight.mul_(scale)
        head.bias.mul_(scale)
    return model


def _tv_resnet(cfg) -> nn.Module:
    block = TVBasicBlock if cfg.block == "basic" else TVBottleneck
    return _randomise(TVResNet(block, cfg.layers, _stage_planes(cfg), cfg.stem_width, cfg.num_classes, cfg.stem),
                     cfg.image_size)


def _assert_parity(model: nn.Module, cfg, variables: dict, batch: int = 2) -> float:
    assert sum(p.numel() for p in model.parameters()) == cfg.param_count() == tree_lib.count(variables["params"])
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        ref = model(x).numpy()
    out = np.asarray(cfg.module().apply(variables, x.numpy().transpose(0, 2, 3, 1), train=False))
    assert ref.shape == out.shape == (batch, cfg.num_classes)
    assert np.abs(ref).max() > 1.0  # logits are not trivially tiny
    diff = float(np.abs(ref - out).max())
    print(f"max |torch - flax| = {diff:.2e} (max |logit| {np.abs(ref).max():.2f})")
    assert diff <= TOL
    return diff


# --- parity ------------------------------------------------------------------------------------------------------
def test_torchvision_resnet18_imagenet_stem():
    torch.manual_seed(0)
    cfg = models.build("resnet18", stem="imagenet", num_classes=1000, width=0.25, image_size=64)
    model = _tv_resnet(cfg)
    _assert_parity(model, cfg, import_state_dict(model.state_dict(), cfg))


def test_torchvision_resnet18_cifar_stem_numpy_input():
    torch.manual_seed(1)
    cfg = models.build("resnet18", stem="cifar", num_classes=10, width=0.25)
    model = _tv_resnet(cfg)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}  # numpy values are accepted too
    variables = import_state_dict(sd, cfg, naming="torchvision")
    assert all(v.dtype == np.float32 for _, v in tree_lib.leaves(variables))
    _assert_parity(model, cfg, variables)


def test_torchvision_resnet50_bottleneck():
    torch.manual_seed(2)
    cfg = models.build("resnet50", stem="imagenet", num_classes=100, width=0.125, image_size=64)
    model = _tv_resnet(cfg)
    _assert_parity(model, cfg, import_state_dict(model.state_dict(), cfg))


def test_kuangliu_resnet18_cifar():
    torch.manual_seed(3)
    cfg = models.build("resnet18", stem="cifar", num_classes=10, width=0.25)
    model = _randomise(KLResNet18(_stage_planes(cfg), cfg.num_classes), cfg.image_size)
    sd = model.state_dict()
    assert "linear.weight" in sd and "layer2.0.shortcut.0.weight" in sd
    _assert_parity(model, cfg, import_state_dict(sd, cfg))


def test_torchvision_vgg11_bn_imagenet_head():
    torch.manual_seed(4)
    cfg = models.build("vgg11_bn", head="imagenet", num_classes=10, width=0.125, image_size=64)
    assert cfg.pool_size == 7
    model = _randomise(TVVGG11BN(cfg.conv_widths, cfg.pools_after, cfg.classifier_widths, cfg.num_classes,
                                 cfg.pool_size), cfg.image_size)
    keys = model.state_dict().keys()
    assert {f"features.{i}.weight" for i in (0, 4, 8, 11, 15, 18, 22, 25)} <= keys
    assert {f"features.{i}.running_var" for i in (1, 5, 9, 12, 16, 19, 23, 26)} <= keys
    assert {f"classifier.{i}.weight" for i in (0, 3, 6)} <= keys
    _assert_parity(model, cfg, import_state_dict(model.state_dict(), cfg))


def test_load_torch_file_wrapped(tmp_path):
    torch.manual_seed(5)
    cfg = models.build("resnet18", stem="cifar", num_classes=10, width=0.125)
    model = _tv_resnet(cfg)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, path)
    _assert_parity(model, cfg, load_torch_file(path, cfg))


# --- strictness --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    torch.manual_seed(6)
    cfg = models.build("resnet18", stem="cifar", num_classes=10, width=0.125)
    return cfg, dict(_tv_resnet(cfg).state_dict())


def test_missing_key(small):
    cfg, sd = small
    sd = dict(sd)
    del sd["layer1.0.bn1.running_var"]
    with pytest.raises(ValueError, match=r"missing layer1\.0\.bn1\.running_var"):
        import_state_dict(sd, cfg)


def test_extra_key(small):
    cfg, sd = small
    with pytest.raises(ValueError, match=r"unexpected layer5\.0\.conv1\.weight"):
        import_state_dict({**sd, "layer5.0.conv1.weight": torch.zeros(3, 3)}, cfg)


def test_wrong_shape(small):
    cfg, sd = small
    with pytest.raises(ValueError, match=r"fc\.weight: expected shape \(10, 64\).*got \(11, 64\)"):
        import_state_dict({**sd, "fc.weight": torch.zeros(11, 64)}, cfg)


def test_wrong_width_model(small):
    _, sd = small
    wider = models.build("resnet18", stem="cifar", num_classes=10, width=0.25)
    with pytest.raises(ValueError, match=r"conv1\.weight: expected shape \(16, 3, 3, 3\).*got \(8, 3, 3, 3\)"):
        import_state_dict(sd, wider)


def test_naming_ambiguous_or_wrong(small):
    cfg, sd = small
    with pytest.raises(ValueError, match="cannot tell the ResNet naming"):
        import_state_dict({**sd, "linear.weight": sd["fc.weight"]}, cfg)
    with pytest.raises(ValueError, match=r"missing linear\.weight"):
        import_state_dict(sd, cfg, naming="kuangliu")
    with pytest.raises(ValueError, match="unknown ResNet naming"):
        import_state_dict(sd, cfg, naming="timm")


def test_unsupported_model_and_bad_file(tmp_path):
    with pytest.raises(ValueError, match="no PyTorch importer"):
        import_state_dict({}, models.build("mlp"))
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), path)
    with pytest.raises(ValueError, match="not a state dict"):
        load_torch_file(path, models.build("resnet18"))


def test_cli_import_torch_writes_restorable_checkpoint(tmp_path):
    """`jaxfold import torch` turns a kuangliu state dict into a checkpoint whose logits match torch."""
    from jaxfold import cli
    from jaxfold.io import checkpoint

    torch.manual_seed(5)
    cfg = models.build("resnet18", stem="cifar", in_channels=3, num_classes=10, width=0.125, image_size=32)
    model = _randomise(KLResNet18(_stage_planes(cfg), cfg.num_classes), cfg.image_size)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    code = cli.main(["import", "torch", "--config", "configs/resnet18_fmnist.py", "--state-dict",
                     str(tmp_path / "model.pt"), "--out", str(tmp_path / "ck"),
                     "--config.model.in_channels=3", "--config.model.image_size=32"])
    assert code == 0
    variables, restored_cfg, meta = checkpoint.restore(tmp_path / "ck")
    assert restored_cfg == cfg and meta["imported_from"].endswith("model.pt")
    _assert_parity(model, cfg, variables)
