"""The paper's Fig. 1 from sweep records: one point per method at the variance-ratio channel ratio, its x the last
layer's variance ratio; written by paper_figs/cv.py only when points carry variance ratios."""

from paper_figs import cv


def _record(method, correction, seed, value, last):
    layers = [{"layer": "bn1", "ratio": 1.0}, {"layer": "layer4_1/bn2", "ratio": last}]
    return {"method": method, "correction": correction, "ratio": 0.5, "seed": seed, "value": value,
            "param_sparsity": 0.4, "variance_ratio": layers}


def test_accuracy_vs_variance_ratio_points_and_table(tmp_path):
    records = [{"method": "dense", "correction": "none", "ratio": 0.0, "seed": 0, "value": 0.92,
                "param_sparsity": 0.0},
               _record("fold", "none", 0, 0.3, 0.2), _record("fold", "none", 1, 0.4, 0.3),
               _record("fold", "repair", 0, 0.9, 1.0), _record("ifm", "none", 0, 0.5, 8.0),
               {**_record("fold", "none", 0, 0.1, 0.1), "ratio": 0.75, "variance_ratio": None}]
    png = cv.accuracy_vs_variance_ratio(records, "t")
    assert png[:4] == b"\x89PNG"
    table = cv.accuracy_vs_variance_table(records)
    assert "| fold:none | 2 | 40.0 % | 0.250 ± 0.071 | 35.00 ± 7.07 |" in table
    assert "| ifm:none | 1 | 40.0 % | 8.000 | 50.00 |" in table
    assert cv.accuracy_vs_variance_ratio(records[:1], "t") is None
