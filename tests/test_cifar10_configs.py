"""The CIFAR-10 GPU configs of the paper's merging (Tables 1–2), width-scaling (Fig. 12) and regularisation
(Fig. 11) experiments: every config and argument loads, passes the checks its runner makes first, builds the paper's
model at its size for CIFAR-10 (3 × 32 × 32 images, 10 classes), points at CIFAR-10 data given by the user, keeps its
checkpoints under workdirs/<experiment>_cifar10/; the runners accept the data (a tiny fake CIFAR-10 on disk); the
merge config runs end to end shrunk.

Nothing here trains: a real shrunk merge run (two ResNet18 endpoints trained for one epoch) takes 30–50 s on the
2-core CPU, so the end-to-end test saves random endpoints instead, as tests/test_merging.py does."""

import json
import re
from pathlib import Path

import pytest

from jaxfold import config as config_lib
from jaxfold import merge_run, merging
from jaxfold.errors import UserError
from jaxfold.eval.classification import check_model_fits_data
from jaxfold.fold_run import check_fold_config
from jaxfold.io import checkpoint
from jaxfold.sweep import PAPER_CV_RATIOS, grid
from jaxfold.train import load_data, model_config

ROOT = Path(__file__).parent.parent
MERGE, WIDTH, REG = "configs/merge_cifar10.py", "configs/width_scaling_cifar10.py", "configs/regularisation_cifar10.py"
SPECS = [MERGE, f"{MERGE}:resnet18", f"{MERGE}:vgg11",
         WIDTH, f"{WIDTH}:1", f"{WIDTH}:2", f"{WIDTH}:3", f"{WIDTH}:mlp:2", f"{WIDTH}:8", f"{WIDTH}:resnet18:1",
         f"{WIDTH}:resnet18:2",
         REG, f"{REG}:l1", f"{REG}:l2"]
EXPERIMENT = {MERGE: "merge", WIDTH: "width_scaling", REG: "regularisation"}
RESNET18_PARAMS = 11_173_962  # ResNet18 with the CIFAR stem at 10 classes (the paper's code base's model)
VGG11_BN_PARAMS = 132_868_840 - (4096 * 1000 + 1000) + (4096 * 10 + 10)  # torchvision's vgg11_bn, 10-way head


def _load(spec, *overrides):
    return config_lib.load_with_overrides(spec, list(overrides))


@pytest.mark.parametrize("spec", SPECS)
def test_config_loads_passes_its_checks_and_is_cifar10(spec):
    config = _load(spec)
    path = spec.split(":")[0]
    doc = (ROOT / path).read_text().split('"""')[1]
    assert f"--config {path}" in doc and "--config.data.path=/path/to/cifar-10-batches-py/.." in doc
    cfg = model_config(config)
    assert cfg.input_shape == (32, 32, 3) and cfg.num_classes == 10
    assert config.data.name == "cifar10" and config.data.path == ""  # the user gives the path
    assert config.train.epochs >= 40  # GPU-size training, not a CPU stand-in's few epochs
    if "merge" in config:
        merge_run.check_merge_config(config)
    if "fold" in config:
        check_fold_config(config)
    if "sweep" in config:
        assert grid(config.sweep)
        for section in ("sweep", "fold"):
            if section in config:
                assert config[section].checkpoint.startswith(f"workdirs/{EXPERIMENT[path]}_cifar10/")


def test_merge_config_has_the_papers_models_and_settings():
    resnet, vgg = _load(MERGE), _load(f"{MERGE}:vgg11")
    assert _load(f"{MERGE}:resnet18").to_dict() == resnet.to_dict()
    assert model_config(resnet).param_count() == RESNET18_PARAMS  # full width
    assert model_config(vgg).param_count() == VGG11_BN_PARAMS
    for config, single in [(resnet, "configs/resnet18_cifar10.py"), (vgg, "configs/vgg11_cifar10.py")]:
        reference = _load(single)  # each endpoint is trained as the project's CIFAR-10 model of that architecture
        assert config.model.to_dict() == reference.model.to_dict()
        assert config.train.to_dict() == reference.train.to_dict()
        assert {k: v for k, v in config.data.items() if k != "classes"} == reference.data.to_dict()
        assert config.data.classes == ()
    fmnist = _load("configs/merge_fmnist.py").merge.to_dict()
    for config in (resnet, vgg):  # merge_fmnist's settings, split and methods; REPAIR on a full CIFAR-10 epoch
        assert {**config.merge.to_dict(), "repair_examples": fmnist["repair_examples"]} == fmnist
        assert config.merge.repair_examples == 50_000 and set(config.merge.methods) == set(merging.METHODS)
        assert tuple(map(tuple, config.merge.split)) == ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))


def test_width_scaling_config_has_the_papers_mlp_and_resnet18_widths():
    for w in (1, 2, 3, 8):
        for spec in (f"{WIDTH}:{w}", f"{WIDTH}:mlp:{w}"):
            config = _load(spec)
            assert model_config(config).hidden_widths == (512 * w,) * 3, spec
            assert config.sweep.checkpoint == f"workdirs/width_scaling_cifar10/mlp{w}x/checkpoint"
    one, reference = _load(WIDTH), _load("configs/mlp_cifar10.py")  # 1×: the project's CIFAR-10 MLP exactly
    assert model_config(one) == model_config(reference)
    assert one.train.to_dict() == reference.train.to_dict() and one.data.to_dict() == reference.data.to_dict()
    fmnist = _load("configs/width_scaling_fmnist.py").sweep
    for key in ("variants", "ratios", "seeds", "variance_ratio_at"):
        assert one.sweep[key] == fmnist[key], key
    resnet = {w: model_config(_load(f"{WIDTH}:resnet18:{w}")) for w in (1, 2)}
    assert resnet[1].param_count() == RESNET18_PARAMS
    assert resnet[1].stream_widths == (64, 128, 256, 512) and resnet[2].stream_widths == (128, 256, 512, 1024)
    assert _load(f"{WIDTH}:resnet18:2").sweep.checkpoint == "workdirs/width_scaling_cifar10/resnet18_2x/checkpoint"
    checkpoints = [_load(f"{WIDTH}:{arg}").sweep.checkpoint for arg in ("1", "2", "3", "8", "resnet18:1", "resnet18:2")]
    assert len(set(checkpoints)) == len(checkpoints)  # no two widths share a checkpoint


def test_width_scaling_config_fits_the_launcher_and_figure_layout(tmp_path):
    from experiments.width_scaling import width_config

    name, c = width_config(WIDTH, "mlp", 3, tmp_path, ["--config.data.path=/data/cifar"])
    assert model_config(c).hidden_widths == (1536,) * 3 and c.data.path == "/data/cifar"
    assert name == "mlp3x" and c.sweep.checkpoint == str(tmp_path / "mlp3x" / "checkpoint")
    name, c = width_config(WIDTH, "resnet18", 2, tmp_path, [])  # paper_figs/width.py --model resnet18 reads these
    assert name == "resnet18_2x" and model_config(c).stream_widths == (128, 256, 512, 1024)
    assert re.fullmatch(r"mlp(\d+)x", Path(_load(f"{WIDTH}:3").sweep.checkpoint).parent.name).group(1) == "3"


def test_fmnist_width_scaling_resnet18_doubles_from_a_sixteenth_and_2x_is_the_demo_model():
    fmnist = "configs/width_scaling_fmnist.py"
    demo = _load("configs/resnet18_fmnist.py:demo")
    two = _load(f"{fmnist}:resnet18:2")
    assert model_config(two) == model_config(demo) and two.train.to_dict() == demo.train.to_dict()
    assert two.data.to_dict() == demo.data.to_dict()
    assert model_config(_load(f"{fmnist}:resnet18:1")).stream_widths == (4, 8, 16, 32)
    one = _load(f"{fmnist}:resnet18:1").sweep.to_dict()  # the MLP's sweep, its own checkpoint
    assert one == {**_load(fmnist).sweep.to_dict(),
                   "checkpoint": "workdirs/width_scaling_fmnist/resnet18_1x/checkpoint"}
    with pytest.raises(UserError, match="width_scaling_fmnist.py takes"):
        config_lib.load(f"{fmnist}:resnet18:0")


def test_regularisation_config_is_fmnists_at_full_width_on_the_papers_ratios():
    reference = _load("configs/resnet18_cifar10.py")
    for arg in ("l1", "l2"):
        config, fmnist = _load(f"{REG}:{arg}"), _load(f"configs/regularisation_fmnist.py:{arg}")
        assert config.model.to_dict() == reference.model.to_dict()
        assert model_config(config).param_count() == RESNET18_PARAMS
        assert config.train.weight_decay == 0.0  # the penalty is the only regulariser
        assert (config.train.l1, config.train.l2) == (fmnist.train.l1, fmnist.train.l2)
        assert (config.train.l1 > 0) == (arg == "l1") and (config.train.l2 > 0) == (arg == "l2")
        assert config.sweep.variants == fmnist.sweep.variants and config.sweep.ratios == PAPER_CV_RATIOS
        assert config.sweep.checkpoint == config.fold.checkpoint == f"workdirs/regularisation_cifar10/{arg}/checkpoint"
    assert _load(REG).to_dict() == _load(f"{REG}:l2").to_dict()


@pytest.mark.parametrize("spec", [f"{WIDTH}:0", f"{WIDTH}:resnet50:2", f"{WIDTH}:mlp:two", f"{WIDTH}:mlp:2:3",
                                  f"{WIDTH}:-1", f"{MERGE}:resnet50", f"{REG}:l3"])
def test_bad_config_arguments_are_user_errors(spec):
    with pytest.raises(UserError, match="takes"):
        config_lib.load(spec)


@pytest.mark.parametrize("spec", [MERGE, f"{MERGE}:vgg11", f"{WIDTH}:2", f"{WIDTH}:resnet18:2", f"{REG}:l1"])
def test_the_runners_accept_cifar10_from_the_data_path(spec, cifar_dir):
    config = _load(spec, f"--config.data.path={cifar_dir}")
    data = load_data(config)
    assert data.name == "cifar10" and data.image_shape == (32, 32, 3)
    check_model_fits_data(model_config(config), data)
    if "merge" in config:  # each split endpoint's training data: its own classes only
        for which, classes in enumerate(config.merge.split):
            cfg = merge_run.endpoint_config(config, config.merge.seeds[which], classes)
            assert set(load_data(cfg).train_labels.tolist()) <= set(classes)
    with pytest.raises(UserError, match="--config.data.path"):  # the placeholder path is empty: give the path
        load_data(_load(spec))


def test_merge_config_runs_end_to_end_shrunk(cifar_dir, tmp_path, monkeypatch, capsys, random_variables):
    from jaxfold.cli import main

    trained = []

    def save_endpoint(config, workdir):  # training's contract: the endpoint's model fits its data, a checkpoint
        cfg, data = model_config(config), load_data(config)
        check_model_fits_data(cfg, data)
        trained.append((config.train.epochs, tuple(config.data.classes)))
        checkpoint.save(workdir / "checkpoint", random_variables(cfg, len(trained)), cfg)

    monkeypatch.setattr("jaxfold.train.train", save_endpoint)
    args = ["merge", "--config", MERGE, "--workdir", str(tmp_path / "w"), f"--config.data.path={cifar_dir}",
            "--config.model.width=0.03125", "--config.train.epochs=1", "--config.merge.settings=split",
            "--config.merge.methods=weight_matching", "--config.merge.repair_examples=32"]
    assert main(args) == 0
    results = json.loads((tmp_path / "w" / "results.json").read_text())
    assert results["dataset"] == "cifar10" and results["model"]["name"] == "resnet18"
    assert trained == [(1, (0, 1, 2, 3, 4)), (1, (5, 6, 7, 8, 9))]
    rows = results["settings"]["split"]["results"]
    assert set(rows) == {"model_a", "model_b", "ensemble", "weight_matching"}
    assert all(0.0 <= rows["weight_matching"][k] <= 1.0 for k in ("accuracy", "accuracy_no_repair",
                                                                   "accuracy_task_a", "accuracy_task_b"))
    assert "| split |" in capsys.readouterr().out
