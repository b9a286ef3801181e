"""paper_figs/width.py: the width-scaling figures and tables from experiments/width_scaling.py's workdir layout."""

import json

import pytest

from paper_figs import width


def _record(method, correction, ratio, seed, value, params=1000):
    return {"id": f"{method}:{correction}:{ratio:g}:{seed}", "model": "mlp", "dataset": "fashion_mnist",
            "method": method, "correction": correction, "ratio": ratio, "seed": seed, "param_sparsity": 0.9 * ratio,
            "params": params, "params_before": params, "flops": 1, "flops_before": 1, "metric": "accuracy",
            "value": value, "loss": 1.0, "fold_seconds": 0.1, "correction_seconds": 0.0, "eval_seconds": 1.0}


def _layer(name, mean):
    return {"layer": name, "group": "g", "channels": 4, "constant": 0, "correlations": [mean + 0.1, mean - 0.1],
            "mean": mean, "median": mean}


def test_width_figures_and_table(tmp_path):
    for w, base in ((1, 0.6), (2, 0.7)):
        sweep = tmp_path / f"mlp{w}x" / "sweep"
        sweep.mkdir(parents=True)
        records = [{**_record("dense", "none", 0.0, 0, 0.89, 1000 * w), "id": "dense"}]
        records += [_record("fold", c, r, s, base - r / 2 + 0.01 * s) for c in ("repair", "fold_ar")
                    for r in (0.2, 0.5) for s in (0, 1, 2)]
        (sweep / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (tmp_path / f"mlp{w}x" / "metrics.jsonl").write_text(
            "".join(json.dumps({"epoch": e, "epoch_seconds": 2.0 * w}) + "\n" for e in (1, 2)))
    (tmp_path / "mlp3x").mkdir()  # no sweep yet: left out
    corr = {str(w): {"examples": 8, "bn": [_layer("bn0", m), _layer("bn1", m)], "relu": [_layer("bn0", m),
                                                                                         _layer("bn1", m)]}
            for w, m in ((1, 0.5), (2, 0.6))}
    (tmp_path / "correlations.json").write_text(json.dumps(corr))
    out = tmp_path / "figs" / "w"
    assert width.main([str(tmp_path), "--out", str(out)]) == 0
    for suffix in ("_accuracy.png", "_by_correction.png", "_correlations.png", "_correlations_by_layer.png"):
        assert (tmp_path / "figs" / f"w{suffix}").read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "figs" / "w_table.md").read_text()
    assert "| 1× | 1,000 | 89.00 | 2 | 4 |" in table and "| 2× | 2,000 | 89.00 | 2 | 8 |" in table
    assert "| 1× | fold:fold_ar | 3 | 51.00 ± 1.00 | 36.00 ± 1.00 |" in table  # rows in CORRECTIONS order
    assert table.index("1× | fold:fold_ar") < table.index("1× | fold:repair") and "3×" not in table
    assert "| 1× | *parameter sparsity* | | 18.0 % | 45.0 % |" in table
    assert "| bn1 | after ReLU | 0.500 (0.500) | 0.600 (0.600) |" in table
    assert "| fold:fold_ar | 50 % |  |  |" in table  # beyond the measured sparsities (18 %, 45 %): no value
    assert width.main([str(tmp_path / "empty"), "--out", str(out)]) == 2


def test_resnet18_widths_are_read_from_their_own_folders_and_many_layers_get_the_per_layer_plot(tmp_path):
    for name, w in (("resnet18_1x", 1), ("resnet18_2x", 2), ("mlp4x", 4)):  # an MLP folder beside them: not read
        sweep = tmp_path / name / "sweep"
        sweep.mkdir(parents=True)
        records = [{**_record("dense", "none", 0.0, 0, 0.9, 500 * w), "id": "dense"},
                   *(_record("fold", "repair", 0.3, s, 0.5 + 0.1 * w) for s in (0, 1))]
        (sweep / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    corr = {str(w): {"examples": 8, **{place: [_layer(f"bn{i}", 0.1 * w) for i in range(20)]
                                       for place in ("bn", "relu")}} for w in (1, 2)}
    (tmp_path / "correlations.json").write_text(json.dumps(corr))
    out = tmp_path / "figs" / "r"
    assert width.main([str(tmp_path), "--model", "resnet18", "--out", str(out)]) == 0
    assert (tmp_path / "figs" / "r_correlations_by_layer.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "figs" / "r_correlations.png").exists()  # 20 histogram panels a row: left out
    table = (tmp_path / "figs" / "r_table.md").read_text()
    assert "| 1× | 500 |" in table and "| 2× | 1,000 |" in table and "4×" not in table
    assert "| 2× | fold:repair | 2 | 70.00 ± 0.00 |" in table and "| 1× | fold:repair | 2 | 60.00 ± 0.00 |" in table
    assert "| bn19 | after ReLU | 0.100 (0.100) | 0.200 (0.200) |" in table
    assert width.main([str(tmp_path / "mlp4x"), "--model", "resnet18", "--out", str(out)]) == 2


def test_accuracy_at_equal_sparsity_interpolates_between_measured_points():
    from jaxfold.seed_stats import SeedStats

    points = [(0.2, 0.1, SeedStats(0.9, 0.0, 1)), (0.6, 0.3, SeedStats(0.5, 0.1, 3))]
    assert width.at_sparsity(points, 0.5) == pytest.approx(0.6) and width.at_sparsity(points, 0.2) == 0.9
    assert width.at_sparsity(points, 0.7) is None and width.at_sparsity([], 0.5) is None
