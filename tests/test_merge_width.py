"""experiments/merge_width.py (one merge per width and endpoint pair, each pair with its own seeds) and
paper_figs/merge.py (mean ± std over the pairs, per width and setting)."""

import json
from pathlib import Path

import pytest

from experiments import merge_width
from paper_figs import merge as merge_figs


def test_one_merge_per_width_and_pair_with_the_pairs_seeds(tmp_path, monkeypatch):
    ran = []

    def fake_run_merge(config, workdir):
        ran.append((config.model.width, tuple(config.merge.seeds), config.merge.seed, config.train.epochs,
                    Path(workdir).relative_to(tmp_path).as_posix()))
        return {"merge": {"methods": ["folding"]}, "settings": {}}

    monkeypatch.setattr(merge_width, "run_merge", fake_run_merge)
    assert merge_width.main(["--workdir", str(tmp_path), "--widths", "0.5,0.125", "--pairs", "2",
                             "--config.train.epochs=1"]) == 0
    # every width's first pair before any second pair; pair 0 keeps the config's seeds
    assert ran == [(0.125, (0, 1), 0, 1, "w0.125/p0"), (0.5, (0, 1), 0, 1, "w0.5/p0"),
                   (0.125, (2, 3), 1, 1, "w0.125/p1"), (0.5, (2, 3), 1, 1, "w0.5/p1")]


@pytest.mark.parametrize("args, message", [(["--widths", "0,1"], "positive numbers"),
                                           (["--widths", "wide"], "positive numbers"),
                                           (["--config.merge.methods=average"], "unknown merge methods")])
def test_bad_arguments_are_clear_errors_before_anything_runs(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.setattr(merge_width, "run_merge", lambda *a: pytest.fail("nothing may run after a bad argument"))
    assert merge_width.main(["--workdir", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err
    for args in (["--pairs", "0"], ["--config.model.width=2"]):
        with pytest.raises(SystemExit):
            merge_width.main(["--workdir", str(tmp_path), *args])


def _results(a, b, folding, folding_plain, zipit):
    row = lambda acc, plain: {"accuracy": acc, "accuracy_no_repair": plain}
    results = {"model_a": {"accuracy": a}, "model_b": {"accuracy": b}, "ensemble": {"accuracy": (a + b) / 2 + 0.01},
               "folding": row(folding, folding_plain), "zipit": row(zipit, zipit - 0.1)}
    return {"model": {"name": "mlp"}, "merge": {"methods": ["folding", "zipit"]},
            "settings": {"same": {"results": results}}}


def test_table_and_figure_average_over_pairs(tmp_path):
    for width, pair, res in ((0.5, 0, _results(0.80, 0.82, 0.70, 0.60, 0.75)),
                             (0.5, 1, _results(0.82, 0.84, 0.74, 0.62, 0.77)),
                             (1.0, 0, _results(0.90, 0.90, 0.88, 0.80, 0.89))):
        d = merge_width.run_dir(tmp_path, width, pair)
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(res))
    (tmp_path / "w2.0" / "p0").mkdir(parents=True)  # a width still running: no results yet, left out
    out = tmp_path / "figs" / "merge"
    assert merge_figs.main([str(tmp_path), "--out", str(out)]) == 0
    assert (tmp_path / "figs" / "merge.png").read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "figs" / "merge_table.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| 0.5 ") or line.startswith("| 1 ")]
    # width 0.5: endpoints 0.81 and 0.83 → 0.820 ± 0.014; folding 0.72 ± 0.028, plain 0.61 ± 0.014, Δ −0.10
    assert lines[0] == ("| 0.5 | 2 | 0.820 ± 0.014 | 0.830 ± 0.014 | 0.720 ± 0.028 (0.610 ± 0.014; Δ -0.100) | "
                        "0.760 ± 0.014 (0.660 ± 0.014; Δ -0.060) |")
    assert lines[1] == "| 1 | 1 | 0.900 | 0.910 | 0.880 (0.800; Δ -0.020) | 0.890 (0.790; Δ -0.010) |"


def test_an_empty_workdir_says_what_to_run(tmp_path):
    with pytest.raises(SystemExit, match="merge_width.py"):
        merge_figs.main([str(tmp_path), "--out", str(tmp_path / "f")])


def test_one_merge_workdir_gives_its_table(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(_results(0.9, 0.8, 0.7, 0.6, 0.75)))
    assert merge_figs.main([str(tmp_path), "--out", str(tmp_path / "t")]) == 0
    lines = (tmp_path / "t_table.md").read_text().splitlines()
    assert lines[0] == "| setting | model_a | model_b | ensemble | folding | zipit |"
    assert lines[2] == "| same | 0.9000 | 0.8000 | 0.8600 | 0.7000 (0.6000) | 0.7500 (0.6500) |"
