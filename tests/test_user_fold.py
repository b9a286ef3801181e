"""`jaxfold fold` on a model of your own named by import path: the spec derived by tracing, the folded variables,
spec and report written, clear errors for a bad reference."""

import json

import pytest

from jaxfold import cli
from jaxfold import config as config_lib
from jaxfold.fold_run import run_fold
from jaxfold.user_fold import load_variables


def _config(*overrides):
    return config_lib.load_with_overrides("configs/own_model.py", ["--config.fold.clusterer=ward", *overrides])


def test_an_nnx_model_by_import_path_folds_and_writes_its_outputs(tmp_path):
    report = run_fold(_config("--config.fold.ratio=0.5"), tmp_path)
    assert report["module_rebuilt"] is True and report["variables"] == "module"
    assert [g["k"] for g in report["groups"]] == [g["n"] // 2 for g in report["groups"]]
    spec = json.loads((tmp_path / "spec.json").read_text())
    assert [g["width_after"] for g in spec["groups"]] == [g["k"] for g in report["groups"]]
    reasons = {(u["path"], u["axis"]): u["reason"] for u in spec["unfoldable"]}
    assert "window" in reasons[("params/conv1/kernel", 0)] and "output" in reasons[("params/fc2/kernel", 1)]
    variables = load_variables(tmp_path / "variables.npz")
    assert variables["params"]["conv1"]["kernel"].shape[-1] == spec["groups"][0]["width_after"]
    assert json.loads((tmp_path / "report.json").read_text())["param_sparsity"] == report["param_sparsity"]


def test_a_linen_model_without_variables_is_folded_from_a_random_init_and_says_so(tmp_path):
    report = run_fold(_config("--config.model=experiments.own_models:build_mobilenet", "--config.model_args.width=1",
                              "--config.fold.correction=fold_ar", "--config.fold.verify=False"), tmp_path)
    assert report["variables"] == "random init" and report["correction"] == "fold_ar"
    assert report["param_sparsity"] > 0.3 and report["uncorrected_groups"] == []
    saved = load_variables(tmp_path / "variables.npz")
    assert saved["params"]["stem"]["kernel"].ndim == 4  # the folded variables, by path


@pytest.mark.parametrize("ref, message", [("no_colon", "package.module:function"),
                                          ("not_a_module_xyz:build", "cannot import"),
                                          ("experiments.own_models:nope", "no function")])
def test_a_bad_model_reference_is_a_one_line_user_error(tmp_path, capsys, ref, message):
    code = cli.main(["fold", "--config", "configs/own_model.py", "--workdir", str(tmp_path),
                     f"--config.model={ref}"])
    assert code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_jaxfold_sweep_over_a_model_named_by_import_path(tmp_path):
    """One derived spec serves every point; without data the metric is the outputs' error against the dense
    model's (0 for the dense point, growing with the ratio), and k = n folds to the same function."""
    from jaxfold.sweep import run_sweep

    config = _config("--config.sweep.ratios=0.0,0.5", "--config.sweep.n_init=1")
    records = {r["id"]: r for r in run_sweep(config, tmp_path, progress=False)}
    assert set(records) == {"dense", "fold:none:0:0", "fold:none:0.5:0", "fold:fold_ar:0:0", "fold:fold_ar:0.5:0"}
    assert all(r["metric"] == "output_error" for r in records.values())
    assert records["dense"]["value"] == 0.0 and records["fold:none:0:0"]["value"] < 1e-5
    half = records["fold:none:0.5:0"]
    assert half["value"] > 1e-3 and 0.3 < half["param_sparsity"] < 0.9 and half["params"] < half["params_before"]
    assert "| fold:fold_ar |" in (tmp_path / "summary.md").read_text()
    again = run_sweep(config, tmp_path, progress=False)  # resumable: nothing recomputed
    assert len(again) == len(records)


def test_a_user_model_sweep_refuses_baselines(tmp_path):
    from jaxfold.errors import UserError
    from jaxfold.sweep import run_sweep

    with pytest.raises(UserError, match="folded only"):
        run_sweep(_config("--config.sweep.variants=sp_l1:none", "--config.sweep.ratios=0.5"), tmp_path,
                  progress=False)
