"""Folding whole models: rebuilt config, analytic params/FLOPs in the report, and the `jaxfold fold` command."""

import dataclasses
import json

import jax
import numpy as np

from jaxfold import cli, models, tree
from jaxfold.compress import fold_model
from jaxfold.io import checkpoint


def test_fold_model_rebuilds_smaller_model():
    cfg = models.resnet18(in_channels=1, width=0.125, image_size=16)
    variables = cfg.init(jax.random.key(0))
    folded = fold_model(cfg, variables, 0.25, jax.random.key(1), n_init=2)
    r = folded.report
    assert folded.config.stream_widths == (6, 12, 24, 48)  # floor(n·0.75)
    assert r["params_after"] == r["params_analytic"] == tree.count(folded.variables["params"])
    assert r["flops_after"] == folded.config.flops() < r["flops_before"] == cfg.flops()
    assert 0.3 < r["param_sparsity"] < 0.5  # ≈ 1 − 0.75²
    assert {g["group"]: round(g["channel_ratio"], 4) for g in r["groups"]}["stream4"] == 0.25  # 64 → 48
    logits = folded.config.module().apply(folded.variables, np.ones((2, 16, 16, 1), np.float32), train=False)
    assert logits.shape == (2, 10)


def test_cli_fold_writes_restorable_checkpoint_and_report(tmp_path):
    cfg = models.resnet18(stem="cifar", in_channels=1, num_classes=10, width=0.125, image_size=28)
    checkpoint.save(tmp_path / "trained", cfg.init(jax.random.key(0)), cfg, metadata={"test_accuracy": 0.5})
    code = cli.main(["fold", "--config", "configs/resnet18_fmnist.py", "--workdir", str(tmp_path / "w"),
                     f"--config.fold.checkpoint={tmp_path / 'trained'}", "--config.fold.ratio=0.5",
                     "--config.fold.n_init=2", "--config.fold.evaluate=False"])
    assert code == 0
    variables, folded_cfg, meta = checkpoint.restore(tmp_path / "w" / "checkpoint")
    report = json.loads((tmp_path / "w" / "report.json").read_text())
    assert folded_cfg.stream_widths == (4, 8, 16, 32) and meta["ratio"] == 0.5
    assert report["params_after"] == folded_cfg.param_count() == tree.count(variables["params"])
    assert len(report["groups"]) == 12


def test_cli_fold_bad_ratio_is_a_clear_error(tmp_path, capsys):
    cfg = models.lenet5()
    checkpoint.save(tmp_path / "trained", cfg.init(jax.random.key(0)), cfg)
    code = cli.main(["fold", "--config", "configs/resnet18_fmnist.py", "--workdir", str(tmp_path / "w"),
                     f"--config.fold.checkpoint={tmp_path / 'trained'}", "--config.fold.ratio=1.0"])
    assert code == 2 and "channel ratio must be in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_cli_fold_unknown_clusterer_names_the_valid_ones(tmp_path, capsys):
    code = cli.main(["fold", "--config", "configs/resnet18_fmnist.py", "--workdir", str(tmp_path / "w"),
                     f"--config.fold.checkpoint={tmp_path / 'missing'}", "--config.fold.clusterer=dbscan"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown clusterer 'dbscan': set --config.fold.clusterer to one of ['average'" in err
    assert "function" not in err  # only the Python API takes one
    assert not (tmp_path / "w").exists()


@dataclasses.dataclass(frozen=True)
class UncountedMLP(models.MLPConfig):
    """The zoo MLP as a user's architecture without analytic counters."""

    arch = "mlp_uncounted"

    def param_count(self) -> int:
        raise NotImplementedError

    def flops(self) -> int:
        raise NotImplementedError


models.base.register(UncountedMLP)


def test_model_without_analytic_counts_reports_measured_ones():
    cfg = UncountedMLP(in_channels=1, image_size=8, hidden_widths=(16, 12, 16))
    twin = models.MLPConfig(in_channels=1, image_size=8, hidden_widths=(16, 12, 16))  # the same, with counters
    folded = fold_model(cfg, cfg.init(jax.random.key(0)), 0.5, jax.random.key(1), n_init=2)
    r, folded_twin = folded.report, twin.replace(hidden_widths=folded.config.hidden_widths)
    assert isinstance(folded.config, UncountedMLP) and folded.config.hidden_widths == (8, 6, 8)
    assert r["params_before"] == twin.param_count() and r["params_after"] == folded_twin.param_count()
    assert r["params_analytic"] is None and r["flops_counted"] == "traced"
    assert (r["flops_before"], r["flops_after"]) == (twin.flops(), folded_twin.flops())
    assert fold_model(twin, twin.init(jax.random.key(0)), 0.5, jax.random.key(1), n_init=2).report["flops_counted"] \
        == "analytic"
