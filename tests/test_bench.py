"""`jaxfold bench fold` runs end to end (tiny model, warm rows only) and writes its JSON; timings are not asserted."""

import json

from jaxfold.bench import fold as bench_fold


def test_bench_fold_warm_only(tmp_path, capsys):
    out = tmp_path / "fold.json"
    assert bench_fold.main(["--width", "0.0625", "--no-cold", "--repeats", "1", "--n-init", "10",
                            "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n_init"] == 10 and result["reference_n_init"] == 10 and result["groups"] == 12
    assert set(result["median"]) == {"warm"} and result["speedup_warm"] > 0
    # both sides fold the same groups; k-means with Hartigan refinement is not worse than sklearn's Lloyd here
    assert 0 < result["max_group_inertia_ratio_warm"] <= 1.01
    assert "warm (second ratio, same process)" in capsys.readouterr().out
