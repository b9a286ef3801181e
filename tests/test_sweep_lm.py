"""Language-model sweeps end to end on a tiny LLaMA: folding, magnitude pruning and Wanda-sp share one calibrated
plan (so equal parameter counts), perplexity and generations are recorded, and `jaxfold ppl` reads the same
checkpoint."""

import json

import ml_collections
import pytest

from jaxfold import cli
from jaxfold.models.llama import llama
from jaxfold.sweep import read_results, run_sweep


def test_lm_sweep_equal_params_across_methods_and_ppl_cli(tiny_lm_dir, capsys):
    c = ml_collections.ConfigDict()
    c.lm = dict(source=str(tiny_lm_dir / "lm"), dtype="float32", text=str(tiny_lm_dir / "text.txt"), seqlen=32,
                max_windows=4, calibration=str(tiny_lm_dir / "text.txt"), calibration_seqlen=16, calibration_windows=2,
                sparsity_tolerance=0.02)
    c.sweep = dict(variants=("fold:uniform", "magnitude:uniform", "wanda_sp:uniform", "fold:recipe"), ratios=(0.2,),
                   seeds=(0,), imports=(), clusterer="kmeans", n_init=1, max_iter=20,
                   generate_prompts=("to be",), generate_at=(0.2,), max_new_tokens=4)
    records = {r["id"]: r for r in run_sweep(c, tiny_lm_dir / "wd", progress=False)}
    assert set(records) == {"dense", "fold:uniform:0.2:0", "magnitude:uniform:0.2:0", "wanda_sp:uniform:0.2:0",
                            "fold:recipe:0.2:0"}
    uniform = [r for r in records.values() if r["schedule"] == "uniform"]
    assert len({r["params"] for r in uniform}) == 1  # one plan, three methods
    assert all(abs(r["param_sparsity"] - 0.2) < 0.02 and r["metric"] == "perplexity" for r in records.values()
               if r["method"] != "dense")
    assert records["dense"]["generations"][0]["prompt"] == "to be"
    assert len(records["fold:uniform:0.2:0"]["generations"]) == 1
    assert "| fold:uniform |" in (tiny_lm_dir / "wd" / "summary.md").read_text()
    assert len(read_results(tiny_lm_dir / "wd")) == 5

    assert cli.main(["ppl", "--model", str(tiny_lm_dir / "lm"), "--text", str(tiny_lm_dir / "text.txt"),
                     "--seqlen", "32", "--max-windows", "4"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["windows"] == 4 and line["seqlen"] == 32
    assert abs(line["perplexity"] - records["dense"]["value"]) < 1e-3 * line["perplexity"]


def test_lm_sweep_bad_variant():
    from jaxfold.sweep import grid

    sweep = ml_collections.ConfigDict(dict(variants=("fold:everything",), ratios=(0.1,), seeds=(0,)))
    with pytest.raises(ValueError, match="method:schedule"):
        grid(sweep, language_model=True)


def test_paper_recipe_removes_19_4_percent_of_llama_7b_and_scales_with_depth():
    from jaxfold import schedules

    big = llama(vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32, intermediate_size=11008,
                head_dim=128)
    ratios = schedules.paper_recipe(32)
    assert ratios[10] == (0.0, 0.0) and ratios[11] == (0.1, 0.4) and ratios[21] == (0.1, 0.4)
    assert ratios[22] == (0.2, 0.5) and ratios[29] == (0.2, 0.5) and ratios[30] == (0.0, 0.0)
    plan = schedules.block_plan(ratios)
    assert plan("block22.attn", 32) == 26 and plan("block11.mlp", 11008) == 6605  # round(); the paper's §4 recipe
    assert abs(schedules.sparsity(big, plan) - 0.1938) < 5e-4  # 1,306,079,232 of 6,738,415,616
    assert [i for i, r in enumerate(schedules.paper_recipe(30)) if r != (0.0, 0.0)] == list(range(10, 28))


def test_recipe_mlp_keeps_every_head_and_calibrates():
    from jaxfold import schedules

    cfg = llama(vocab_size=64, hidden_size=32, num_layers=8, num_heads=4, num_kv_heads=2, intermediate_size=48,
                head_dim=8)
    mlp_only = schedules.paper_recipe_mlp(8)
    assert [a for a, _ in mlp_only] == [0.0] * 8
    assert [m for _, m in mlp_only] == [m for _, m in schedules.paper_recipe(8)]
    plan, _, achieved = schedules.calibrate(cfg, "recipe_mlp", 0.1, tolerance=0.02)
    assert abs(achieved - 0.1) <= 0.02
    widths = schedules.group_widths(cfg)
    assert all(plan(g, n) == n for g, n in widths.items() if g.endswith(".attn"))
    assert any(plan(g, n) < n for g, n in widths.items() if g.endswith(".mlp"))


def _datafree_config(tiny_lm_dir, variants):
    c = ml_collections.ConfigDict()
    c.lm = dict(source=str(tiny_lm_dir / "lm"), dtype="float32", text=str(tiny_lm_dir / "text.txt"), seqlen=32,
                max_windows=2, calibration=str(tiny_lm_dir / "text.txt"), calibration_seqlen=16, calibration_windows=4,
                calibration_batch=2, self_calibration=dict(seed=0), sparsity_tolerance=0.02)
    c.sweep = dict(variants=variants, ratios=(0.2,), seeds=(0,), imports=(), clusterer="kmeans", n_init=1,
                   max_iter=20, correction_options=dict(norm_tune=dict(steps=2)), generate_prompts=(),
                   generate_at=(), max_new_tokens=4)
    return c


def test_lm_sweep_rows_name_their_correction_and_calibration(tiny_lm_dir, monkeypatch):
    """Corrections chain after the compression (a clustering one first, for fold), each row says which data it
    read (``self`` = sampled from the dense model, ``real`` = lm.calibration, ``none``) and how many tokens, and a
    data-free row is one filter away; every method keeps the plan's widths."""
    monkeypatch.setenv("JAXFOLD_DATA", str(tiny_lm_dir / "cache"))  # the self-generated windows
    variants = ("fold:uniform", "fold:uniform:refit:self", "fold:uniform:act_cluster+refit:real",
                "magnitude:uniform:refit+norm_tune:self", "wanda_sp:uniform:none:self", "wanda_sp:uniform")
    records = {r["id"]: r for r in run_sweep(_datafree_config(tiny_lm_dir, variants), tiny_lm_dir / "wd",
                                             progress=False)}
    rows = {r["id"].rsplit(":", 2)[0]: r for r in records.values() if r["method"] != "dense"}
    assert set(rows) == set(variants)
    assert {v: (r["correction"], r["calibration"]) for v, r in rows.items()} == {
        "fold:uniform": ("none", "none"), "fold:uniform:refit:self": ("refit", "self"),
        "fold:uniform:act_cluster+refit:real": ("act_cluster+refit", "real"),
        "magnitude:uniform:refit+norm_tune:self": ("refit+norm_tune", "self"),
        "wanda_sp:uniform:none:self": ("none", "self"), "wanda_sp:uniform": ("none", "real")}
    assert all(r["calibration_tokens"] == (0 if r["calibration"] == "none" else 4 * 16) for r in rows.values())
    assert set(rows["magnitude:uniform:refit+norm_tune:self"]["correction_steps"]) == {"refit", "norm_tune"}
    assert len({r["params"] for r in rows.values()}) == 1
    refit = rows["fold:uniform:refit:self"]
    assert refit["value"] != rows["fold:uniform"]["value"] and refit["correction_seconds"] > 0
    data_free = [v for v, r in rows.items() if r["calibration"] in ("self", "none")]
    assert len(data_free) == 4
    summary = (tiny_lm_dir / "wd" / "summary.md").read_text()
    assert "| fold:uniform:refit:self |" in summary and "| wanda_sp:uniform:none:real |" in summary
    from paper_figs import llm

    assert llm.main([str(tiny_lm_dir / "wd"), "--out", str(tiny_lm_dir / "fig")]) == 0
    table = (tiny_lm_dir / "fig_table.md").read_text()  # one line per row: the data it read and what it cost
    assert "| fold:uniform:refit:self | 0.2 |" in table and "| no | self-generated, 64 tokens |" in table
    assert "| wanda_sp:uniform:none:real | 0.2 |" in table and "| yes | real text, 64 tokens |" in table


@pytest.mark.parametrize("variant, message", [
    ("fold:uniform:refit:elsewhere", "calibration in"), ("magnitude:uniform:act_cluster:real", "fold only"),
    ("fold:uniform:refit+act_cluster:real", "comes first"), ("fold:uniform:none:self", "takes no calibration"),
    ("fold:uniform:no_such_fix", "unknown correction"),
    ("fold:uniform:repair:real", "corrects image classifiers .*, not language models")])
def test_lm_sweep_bad_correction_variants(tmp_path, variant, message):
    from jaxfold.errors import UserError

    with pytest.raises(UserError, match=message):  # before anything is loaded (no model at tmp_path)
        run_sweep(_datafree_config(tmp_path, (variant,)), tmp_path / "wd", progress=False)
    assert not (tmp_path / "wd" / "results.jsonl").exists()


def test_an_lm_workdir_ignores_the_fold_section_but_not_the_lm_one(tmp_path):
    """`jaxfold fold`'s section is not what an LM sweep reads: editing it keeps the workdir; the lm section counts."""
    import ml_collections

    from jaxfold.errors import UserError
    from jaxfold.sweep import write_manifest

    def config(**changes):
        c = ml_collections.ConfigDict(dict(lm=dict(source="smollm2", seqlen=64), fold=dict(correction="none"),
                                           sweep=dict(variants=("fold:uniform",), ratios=(0.2,), seeds=(0,))))
        c.update_from_flattened_dict(changes)
        return c

    write_manifest(tmp_path, config())
    write_manifest(tmp_path, config(**{"fold.correction": "refit"}))
    with pytest.raises(UserError, match=r"sections differing: \['lm'\]"):
        write_manifest(tmp_path, config(**{"lm.seqlen": 128}))
