"""configs/smollm2_datafree.py: every variant of every grid is a valid language-model sweep variant, and every row
that reads data names where its data comes from (so "no external text" is one filter on the results)."""

import pytest

from jaxfold import config as config_lib
from jaxfold.sweep import grid

CONFIG = "configs/smollm2_datafree.py"


@pytest.mark.parametrize("arg", [None, "quick", "core", "extend", "full"])
def test_every_grid_is_valid_and_names_its_calibration(arg):
    c = config_lib.load(f"{CONFIG}:{arg}" if arg else CONFIG)
    points = grid(c.sweep, language_model=True)
    assert len(points) == len(c.sweep.variants) * len(c.sweep.ratios) * len(c.sweep.seeds)
    for p in points:
        reads_data = p.method == "wanda_sp" or bool(p.corrections)
        assert (p.calibration in ("self", "real")) if reads_data else p.calibration == "none", p
    variants = set(c.sweep.variants)
    if arg in ("extend", "full"):  # the rows that decide the comparison, the best data-free fold among them
        assert {"fold:recipe_mlp", "wanda_sp:recipe_mlp:none:real", "wanda_sp:recipe_mlp:refit:self",
                "fold:recipe_mlp:act_cluster_select+refit:self"} <= variants
    if arg == "full":
        assert c.lm.max_windows is None and tuple(c.sweep.ratios) == (0.2,)
