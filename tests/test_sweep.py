"""Sweeps: every point lands once in results.jsonl with its fields, reruns resume, shards split the grid, a torn
line from a kill is redone, a workdir refuses a different config, and the figures script reads the results."""

import json

import jax
import ml_collections
import pytest

from jaxfold import cli, models
from jaxfold.config import apply_overrides
from jaxfold.io import checkpoint
from jaxfold.sweep import cv_sweep_section, grid, read_results, run_sweep

FIELDS = {"model", "dataset", "method", "correction", "ratio", "param_sparsity", "params", "flops", "metric", "value",
          "fold_seconds", "eval_seconds", "seed"}


@pytest.fixture
def sweep_config(tmp_path, monkeypatch, cifar_dir):
    monkeypatch.setenv("JAXFOLD_DATA", str(tmp_path / "cache"))  # DeepInversion cache goes here
    data = cifar_dir
    model = models.mlp(in_channels=3, image_size=32, width=0.0625)
    checkpoint.save(tmp_path / "model", model.init(jax.random.key(0)), model)
    c = ml_collections.ConfigDict()
    c.model = dict(name="mlp", in_channels=3, num_classes=10, width=0.0625, image_size=32)
    c.data = dict(name="cifar10", path=str(data), crop_padding=4, hflip=True)
    c.sweep = cv_sweep_section(str(tmp_path / "model"), train_if_missing=False,
                               variants=("fold:none", "fold:fold_ar", "fold:fold_dir", "fold:repair", "sp_l2:repair",
                                         "ifm:none"),
                               ratios=(0.25, 0.5), n_init=2, repair_examples=48, variance_batch=16, di_steps=3,
                               di_batch_size=8)
    return c


def test_sweep_writes_every_point_once_and_resumes(sweep_config, tmp_path):
    wd = tmp_path / "wd"
    records = run_sweep(sweep_config, wd, progress=False)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == 12 + 1  # 6 variants × 2 ratios + dense
    for r in records:
        assert set(r) >= FIELDS, FIELDS - set(r)
    half = [r for r in records if r["ratio"] == 0.5 and r["method"] != "dense"]
    assert all(len(r["variance_ratio"]) == 3 for r in half)  # the MLP's three BN layers
    fold = {r["correction"]: r for r in records if r["method"] == "fold" and r["ratio"] == 0.5}
    assert len({r["param_sparsity"] for r in fold.values()}) == 1  # corrections never change the size
    manifest = json.loads((wd / "manifest.json").read_text())
    assert {"config", "jax", "device", "git", "jaxfold"} <= set(manifest)
    assert "| fold:repair |" in (wd / "summary.md").read_text()

    # a kill mid-append leaves a torn line: it is ignored and its point is redone; finished points are not
    lines = (wd / "results.jsonl").read_text().splitlines()
    (wd / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:25])
    again = run_sweep(sweep_config, wd, progress=False)
    assert sorted(r["id"] for r in again) == sorted(ids)


def test_shards_split_the_grid_and_a_different_config_is_refused(sweep_config, tmp_path):
    sweep_config.sweep.variants = ("fold:none", "sp_l1:none", "ifm:none")
    wd = tmp_path / "wd"
    first = run_sweep(sweep_config, wd, shard=(0, 2), progress=False)
    assert 1 < len(first) < 7
    both = run_sweep(sweep_config, wd, shard=(1, 2), progress=False)
    assert len({r["id"] for r in both}) == len(both) == 7
    sweep_config.sweep.ratios = (0.25, 0.5, 0.75)  # extending the grid is allowed
    assert len(run_sweep(sweep_config, wd, progress=False)) == 10
    other = apply_overrides(sweep_config, ["model.width=0.125"])
    with pytest.raises(ValueError, match="holds a sweep of a different config"):
        run_sweep(other, wd, progress=False)


def test_bad_variants_are_clear_errors():
    base = ml_collections.ConfigDict(dict(variants=("fold:none",), ratios=(0.5,), seeds=(0,)))
    for variant, message in [("fold", "method:correction"), ("prune:none", "unknown method 'prune'"),
                             ("fold:fold_xx", "unknown correction"), ("sp_l2:fold_ar", "only applies to fold"),
                             ("fold/dbscan:none", "only fold takes a clusterer.*'spectral'"),
                             ("sp_l2/ward:none", "only fold takes a clusterer"),
                             ("fold/kmeans:repair", "plain fold clusters with k-means; write fold:repair"),
                             ("fold:refit", "corrects language models .*, not image classifiers")]:
        with pytest.raises(ValueError, match=message):
            grid(apply_overrides(base, [f"variants={variant}"]))
    points = grid(apply_overrides(base, ["variants=fold/spectral:repair,fold:repair"]))
    assert [p.id for p in points] == ["fold/spectral:repair:0.5:0", "fold:repair:0.5:0"]


def test_cli_sweep_and_figures(sweep_config, tmp_path, capsys):
    from paper_figs import cv

    config_file = tmp_path / "sweep_config.py"
    config_file.write_text(f"import ml_collections\ndef get_config():\n"
                           f"    return ml_collections.ConfigDict({sweep_config.to_dict()!r})\n")
    pytest.importorskip("sklearn")  # the ward clusterer
    code = cli.main(["sweep", "--config", str(config_file), "--workdir", str(tmp_path / "wd"),
                     "--config.sweep.variants=fold:none,fold:fold_ar,fold/ward:none", "--config.sweep.ratios=0.5"])
    assert code == 0 and '"points": 4' in capsys.readouterr().out
    records = {r["id"]: r for r in read_results(tmp_path / "wd")}
    assert len(records) == 4 and records["fold/ward:none:0.5:0"]["method"] == "fold/ward"
    ward, kmeans = records["fold/ward:none:0.5:0"], records["fold:none:0.5:0"]
    assert ward["param_sparsity"] == kmeans["param_sparsity"] and ward["loss"] != kmeans["loss"]  # other clusters
    assert cv._label("fold/ward:repair") == "Fold-R, ward" and cv._label("fold:repair") == "Fold-R"
    assert cv._label("fold:repair", ablation=True) == "Fold-R, kmeans"
    assert cv.main([str(tmp_path / "wd"), "--out", str(tmp_path / "figs" / "mlp")]) == 0
    assert {p.name for p in (tmp_path / "figs").iterdir()} == {"mlp_accuracy.png", "mlp_table.md",
                                                               "mlp_variance_ratio.png", "mlp_timings.md",
                                                               "mlp_accuracy_vs_variance.png",
                                                               "mlp_accuracy_vs_variance.md"}  # the paper's Fig. 1
    code = cli.main(["sweep", "--config", str(config_file), "--workdir", str(tmp_path / "wd2"), "--shard", "2/2"])
    assert code == 2 and "--shard" in capsys.readouterr().err


def test_a_user_correction_module_is_imported_and_swept(sweep_config, tmp_path, monkeypatch):
    (tmp_path / "my_corrections.py").write_text(
        "from jaxfold.corrections import register_correction\n"
        "@register_correction('identity_for_test')\n"
        "def identity_for_test(ctx):\n    return ctx.folded\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sweep_config.sweep.imports = ("my_corrections",)
    sweep_config.sweep.variants = ("fold:none", "fold:identity_for_test")
    sweep_config.sweep.ratios = (0.5,)
    try:
        records = {r["id"]: r for r in run_sweep(sweep_config, tmp_path / "wd", progress=False)}
    finally:
        from jaxfold.corrections import CORRECTIONS

        CORRECTIONS.pop("identity_for_test", None)
    assert records["fold:identity_for_test:0.5:0"]["value"] == records["fold:none:0.5:0"]["value"]
