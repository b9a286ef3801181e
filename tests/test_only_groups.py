"""sweep.only_groups (IFM's protocol, the paper's Fig. 7 left): only the groups the pattern names are compressed, the
others keep their width, in the plan and in a real sweep point; a pattern that names nothing is a clear error."""

import jax
import ml_collections
import pytest

from jaxfold import models
from jaxfold.errors import UserError
from jaxfold.io import checkpoint
from jaxfold.plans import resolve_plan
from jaxfold.sweep import LAST_TWO_STAGES, cv_sweep_section, grid, only_groups_plan, run_sweep


def _resnet():
    return models.build("resnet18", stem="cifar", in_channels=3, num_classes=10, width=0.0625, image_size=32)


def test_last_two_stages_plan_keeps_every_other_width():
    model = _resnet()
    spec = model.fold_spec()
    widths = spec.widths(model.init(jax.random.key(0)))
    names = [g.name for g in spec.groups]
    plan = only_groups_plan(0.5, names, LAST_TWO_STAGES)
    assert set(plan) == {"stream3", "stream4", "layer3_0.inner1", "layer3_1.inner1", "layer4_0.inner1",
                         "layer4_1.inner1"}
    ks = resolve_plan(plan, widths)
    assert all(ks[g] == widths[g] for g in names if g not in plan)
    assert all(ks[g] == widths[g] // 2 for g in plan)
    assert only_groups_plan(0.5, names, "") == 0.5
    with pytest.raises(UserError, match="matches none"):
        only_groups_plan(0.5, names, "layer9_.*")


def test_sweep_point_compresses_only_the_named_groups(tmp_path, cifar_dir):
    model = _resnet()
    variables = model.init(jax.random.key(0))
    checkpoint.save(tmp_path / "model", variables, model)
    c = ml_collections.ConfigDict()
    c.model = dict(name="resnet18", stem="cifar", in_channels=3, num_classes=10, width=0.0625, image_size=32)
    c.data = dict(name="cifar10", path=str(cifar_dir), crop_padding=4, hflip=True)
    c.sweep = cv_sweep_section(str(tmp_path / "model"), train_if_missing=False, variants=("sp_l2:none",),
                               ratios=(0.5,), variance_ratio_at=(), only_groups=LAST_TWO_STAGES)
    records = run_sweep(c, tmp_path / "wd", progress=False)
    point = next(r for r in records if r["method"] == "sp_l2")
    assert point["only_groups"] == LAST_TWO_STAGES
    spec = model.fold_spec()
    names = [g.name for g in spec.groups]
    ks = resolve_plan(only_groups_plan(0.5, names, LAST_TWO_STAGES), spec.widths(variables))
    assert point["params"] == model.with_widths(ks).param_count()  # the first two stages kept every channel
    assert point["params"] > model.with_widths(resolve_plan(0.5, spec.widths(variables))).param_count()
    bad = ml_collections.ConfigDict(c.to_dict())
    bad.sweep.only_groups = "("
    with pytest.raises(UserError, match="regular expression"):
        grid(bad.sweep)
