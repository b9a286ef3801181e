"""Every config loads and builds its model; overrides are checked against existing fields and types."""

from pathlib import Path

import pytest

from jaxfold import config as config_lib
from jaxfold.errors import UserError
from jaxfold.fold_run import check_fold_config
from jaxfold.train import model_config
from jaxfold.user_fold import is_user_model, load_builder

CONFIGS = sorted(str(p) for p in (Path(__file__).parent.parent / "configs").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: Path(p).stem)
def test_every_config_loads_and_builds(path):
    config = config_lib.load(path)
    doc = Path(path).read_text().split('"""')[1]
    assert f"--config {Path(path).relative_to(Path(path).parent.parent)}" in doc  # docstring holds the launch command
    if is_user_model(config):  # a model of your own, named by import path: the builder resolves
        assert callable(load_builder(config.model))
        return
    if "fold" in config:  # what `jaxfold fold` checks before it loads a model
        check_fold_config(config)
    if "lm" in config:  # language-model experiments name a model source instead of building one
        from jaxfold.sweep import grid

        assert config.lm.source and grid(config.sweep, language_model=True)
        return
    cfg = model_config(config)
    assert cfg.param_count() > 0
    if "sweep" in config:
        from jaxfold.sweep import grid

        assert grid(config.sweep)


def test_config_arg_and_overrides():
    path = "configs/resnet18_fmnist.py"
    full = config_lib.load(f"{path}:full")
    assert full.model.width == 1.0
    c = config_lib.load_with_overrides(path, ["--config.train.epochs=3", "--config.model.width=0.5",
                                              "--config.data.name=mnist", "--config.train.lr=1"])
    assert c.train.epochs == 3 and c.model.width == 0.5 and c.data.name == "mnist"
    assert isinstance(c.train.lr, float)
    assert config_lib.load(path).train.epochs != 3  # the file is untouched


def test_bad_overrides_fail_with_valid_keys():
    path = "configs/resnet18_fmnist.py"
    with pytest.raises(UserError, match=r"unknown config key 'train.epoch'; valid keys: .*train\.epochs"):
        config_lib.load_with_overrides(path, ["--config.train.epoch=3"])
    with pytest.raises(ValueError, match="expects a int"):
        config_lib.load_with_overrides(path, ["--config.train.epochs=three"])
    with pytest.raises(UserError, match="is a section"):
        config_lib.load_with_overrides(path, ["--config.train=3"])
    with pytest.raises(ValueError, match="must look like"):
        config_lib.load_with_overrides(path, ["--config.train.epochs"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        config_lib.load("configs/nope.py")


def test_load_module_gives_a_config_file_as_a_module_for_its_siblings(tmp_path):
    from jaxfold.errors import MissingFile

    base = tmp_path / "base.py"
    base.write_text("import ml_collections\nWIDTH = 3\n"
                    "def get_config(arg=None):\n    return ml_collections.ConfigDict({'w': WIDTH, 'arg': arg})\n")
    (tmp_path / "child.py").write_text(
        "from pathlib import Path\nfrom jaxfold import config as config_lib\n"
        "def get_config(arg=None):\n"
        "    c = config_lib.load_module(Path(__file__).with_name('base.py')).get_config('from-child')\n"
        "    c.w *= 2\n    return c\n")
    assert config_lib.load_module(base).WIDTH == 3
    assert config_lib.load(str(tmp_path / "child.py")).to_dict() == {"w": 6, "arg": "from-child"}
    with pytest.raises(MissingFile, match="does not exist"):
        config_lib.load_module(tmp_path / "missing.py")
