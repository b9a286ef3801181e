"""Seeds: tables and figures aggregate a point's seeds to mean ± sample std with their number (one seed renders as
its value, n = 1 stated), and the grid runs the variants ``sweep.deterministic`` names at the first seed only."""

import json

import ml_collections
import numpy as np
import pytest

from jaxfold.config import load
from jaxfold.errors import UserError
from jaxfold.seed_stats import SeedStats, aggregate_seeds, seed_stats
from jaxfold.sweep import _comparable, cv_sweep_section, grid, summary_table, variant_seeds, write_manifest

ACC = {0: [0.90, 0.70, 0.12], 1: [0.92, 0.66, 0.10], 2: [0.91, 0.69, 0.14]}  # fold:none by seed, r = .1/.25/.45
RATIOS = (0.1, 0.25, 0.45)


def _record(method, correction, ratio, seed, value, **extra):
    return {"id": f"{method}:{correction}:{ratio:g}:{seed}", "model": "resnet18", "dataset": "fashion_mnist",
            "method": method, "correction": correction, "ratio": ratio, "seed": seed, "param_sparsity": 2 * ratio / 3,
            "params": 100, "params_before": 150, "flops": 1, "flops_before": 2, "metric": "accuracy", "value": value,
            "loss": 1.0, "fold_seconds": 0.1, "correction_seconds": 0.0, "eval_seconds": 1.0, **extra}


def _records(seeds=(0, 1, 2)):
    dense = {**_record("dense", "none", 0.0, 0, 0.9256), "id": "dense", "param_sparsity": 0.0}
    folds = [_record("fold", "none", r, s, ACC[s][i],
                     **({"variance_ratio": [{"layer": "bn1", "ratio": 0.5 + 0.1 * s}, {"layer": "bn2", "ratio": 0.2}]}
                        if r == 0.45 else {}))
             for s in seeds for i, r in enumerate(RATIOS)]
    pruned = [_record("sp_l2", "none", r, 0, 0.5) for r in RATIOS]
    return [dense, *folds, *pruned]


def test_seed_stats_is_mean_and_sample_std():
    values = [0.8277, 0.8372, 0.7743]  # docs/results.md: 81.31 ± 3.39
    s = seed_stats(values)
    assert s.n == 3 and s.mean == pytest.approx(np.mean(values)) and s.std == pytest.approx(np.std(values, ddof=1))
    assert s.format(100.0) == "81.31 ± 3.39" and s.format(100.0, show_n=True) == "81.31 ± 3.39 (n=3)"
    one = seed_stats([0.5])
    assert one == SeedStats(0.5, 0.0, 1) and one.format(100.0) == "50.00" and one.format(show_n=True) == "0.50 (n=1)"
    with pytest.raises(ValueError):
        seed_stats([])
    groups = aggregate_seeds(_records()[1:], lambda r: (r["method"], r["ratio"]))
    assert list(groups)[:3] == [("fold", 0.1), ("fold", 0.25), ("fold", 0.45)]
    assert groups[("fold", 0.25)].n == 3 and groups[("sp_l2", 0.25)] == SeedStats(0.5, 0.0, 1)


def test_summary_table_shows_mean_std_and_seeds():
    table = summary_table(_records())
    lines = table.splitlines()
    assert lines[0] == "| method:correction | seeds | r=0.1 (6.7 %) | r=0.25 (16.7 %) | r=0.45 (30.0 %) |"
    assert "| fold:none | 3 | 91.00 ± 1.00 | 68.33 ± 2.08 | 12.00 ± 2.00 |" in lines
    assert "| sp_l2:none | 1 | 50.00 | 50.00 | 50.00 |" in lines  # one seed: as before, n = 1 in its column
    assert "Cells: mean ± sample standard deviation (ddof=1) over the row's seeds." in lines
    assert "Dense: 92.56 % (100 params)." in lines
    partial = summary_table([r for r in _records() if not (r["seed"] == 2 and r["ratio"] == 0.45)])
    assert "| fold:none | 3 | 91.00 ± 1.00 | 68.33 ± 2.08 | 11.00 ± 1.41 (n=2) |" in partial.splitlines()
    single = summary_table(_records(seeds=(0,)))
    assert "±" not in single and "| fold:none | 1 | 90.00 | 70.00 | 12.00 |" in single.splitlines()
    assert "Cells:" not in single


def test_cv_figures_draw_error_bars_over_seeds(tmp_path, monkeypatch):
    from paper_figs import cv

    drawn = []
    monkeypatch.setattr(cv, "_png", lambda fig: drawn.append(fig) or b"png")
    assert cv.accuracy_vs_sparsity(_records(), "t") == b"png"
    ax = drawn[-1].axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert "Fold-Naive (n=3)" in labels and "SP-L2 (n=1)" in labels
    assert ax.get_legend().get_title().get_text() == "mean ± std over n seeds"
    (fold,) = [c for c in ax.containers if c.get_label() == "Fold-Naive (n=3)"]  # an ErrorbarContainer
    _, ys = fold.lines[0].get_data()
    assert np.allclose(ys, [91.0, 68.0 + 1 / 3, 12.0])
    cv.accuracy_vs_sparsity(_records(seeds=(0,)), "t")  # one seed: plain curves, labels as before
    ax = drawn[-1].axes[0]
    assert "Fold-Naive" in ax.get_legend_handles_labels()[1] and not ax.containers and ax.get_legend().get_title(
        ).get_text() == ""
    cv.variance_ratio_plot(_records(), "t")
    ax = drawn[-1].axes[0]
    (fold,) = ax.containers
    assert fold.get_label() == "Fold-Naive (n=3)" and np.allclose(fold.lines[0].get_data()[1], [0.6, 0.2])
    workdir = tmp_path / "wd"
    workdir.mkdir()
    (workdir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records()))
    monkeypatch.undo()
    assert cv.main([str(workdir), "--out", str(tmp_path / "fig")]) == 0
    assert "| fold:none | 3 | 91.00 ± 1.00 |" in (tmp_path / "fig_table.md").read_text()


def test_llm_tables_aggregate_seeds():
    from paper_figs import llm

    def lm(method, seed, value, generations=None):
        r = {**_record(method, "refit", 0.2, seed, value), "schedule": "recipe", "calibration": "self",
             "calibration_tokens": 64, "metric": "perplexity", "correction_steps": {"refit": 3.0}}
        return {**r, "generations": generations} if generations else r

    gen = [{"prompt": "The", "continuation": "end"}]
    records = [lm("fold", s, v, gen) for s, v in [(0, 100.0), (1, 110.0), (2, 120.0)]] + [lm("magnitude", 0, 50.0)]
    table = llm.data_table(records).splitlines()
    assert len(table) == 4 and table[0].endswith("| seeds |")
    assert table[2].startswith("| magnitude:recipe:refit:self | 0.2 |")
    assert table[2].endswith("| 50.00 | 0 | refit 3 | 1 |")
    assert "| self-generated, 64 tokens | 110.00 ± 10.00 | 0 | refit 3 | 3 |" in table[3]
    generations = llm.generations_table(records)
    assert "| fold:recipe:refit:self (seed 1) | 13.3 % | The | end |" in generations
    assert "seed" not in llm.generations_table(records[:1])


def test_deterministic_variants_run_at_the_first_seed_only():
    sweep = ml_collections.ConfigDict(cv_sweep_section("ckpt", variants=("fold:none", "sp_l2:none", "sp_l2:repair",
                                                                         "fold/ward:repair", "ifm:none"),
                                                       ratios=(0.25,), seeds=(3, 1, 2)))
    seeds = {}
    for p in grid(sweep):
        seeds.setdefault(f"{p.method}:{p.correction}", []).append(p.seed)
    assert seeds == {"fold:none": [3, 1, 2], "sp_l2:none": [3], "sp_l2:repair": [3], "fold/ward:repair": [3],
                     "ifm:none": [3]}
    sweep.deterministic = ("sp_l2:repair",)  # a whole variant: only that one
    assert variant_seeds(sweep, "sp_l2:repair") == (3,) and variant_seeds(sweep, "sp_l2:none") == (3, 1, 2)
    for name, message in [("fold", "draws from the seed's key"), ("fold/spectral", "draws from the seed's key"),
                          ("fold:repair", "draws from the seed's key"), ("prune", "expected a method"),
                          ("sp_l2/ward", "expected a method"), ("fold/dbscan", "expected a method")]:
        sweep.deterministic = (name,)
        with pytest.raises(UserError, match=message):
            grid(sweep)
    lm = ml_collections.ConfigDict(dict(variants=("fold:recipe", "magnitude:recipe", "wanda_sp:uniform"),
                                        ratios=(0.2,), seeds=(0, 1), deterministic=("magnitude", "wanda_sp:uniform")))
    assert [p.id for p in grid(lm, language_model=True)] == [
        "fold:recipe:0.2:0", "fold:recipe:0.2:1", "magnitude:recipe:0.2:0", "wanda_sp:uniform:0.2:0"]
    lm.deterministic = ("fold/ward",)
    with pytest.raises(UserError, match="expected a method"):
        grid(lm, language_model=True)


def test_demo_configs_fold_at_three_seeds_and_baselines_once(tmp_path):
    cv = load("configs/resnet18_fmnist.py:demo")
    points = grid(cv.sweep)
    assert len(points) == 3 * 3 * 3 + 2 * 3 and {p.seed for p in points if p.method == "sp_l2"} == {0}
    lm = load("configs/smollm2_shakespeare.py:demo")
    assert [p.id for p in grid(lm.sweep, language_model=True)] == [
        "fold:recipe:0.1:0", "fold:recipe:0.1:1", "fold:recipe:0.1:2", "fold:recipe:0.2:0", "fold:recipe:0.2:1",
        "fold:recipe:0.2:2", "magnitude:recipe:0.1:0", "magnitude:recipe:0.2:0"]
    # a workdir swept before `deterministic` existed (or with other seeds) accepts the demo's config
    old = ml_collections.ConfigDict(cv.to_dict())
    with old.sweep.unlocked():
        del old.sweep["deterministic"]
        old.sweep.seeds = (0,)
    write_manifest(tmp_path, old)
    write_manifest(tmp_path, cv)
    assert _comparable(json.loads(old.to_json_best_effort())) == _comparable(json.loads(cv.to_json_best_effort()))
