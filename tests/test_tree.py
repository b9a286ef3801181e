import numpy as np
import pytest

from jaxfold import tree


def _t():
    return {"params": {"a": {"kernel": np.ones((2, 3)), "bias": np.zeros(3)}, "b": np.arange(4.0)}}


def test_flatten_unflatten_round_trip():
    t = _t()
    flat = tree.flatten(t)
    assert list(flat) == ["params/a/kernel", "params/a/bias", "params/b"]
    back = tree.unflatten(flat)
    assert tree.compare(t, back) == []


def test_set_is_pure():
    t = _t()
    new = tree.set_(t, "params/a/bias", np.ones(3))
    assert np.all(t["params"]["a"]["bias"] == 0)
    assert np.all(new["params"]["a"]["bias"] == 1)
    assert new["params"]["b"] is t["params"]["b"]


def test_get_names_missing_key():
    with pytest.raises(KeyError, match="no 'c' under params"):
        tree.get(_t(), "params/c/kernel")


def test_compare_reports_shape_and_missing():
    a, b = _t(), tree.set_(_t(), "params/a/kernel", np.ones((2, 4)))
    problems = tree.compare(a, b)
    assert problems == ["params/a/kernel: expected shape (2, 3) float64, got (2, 4) float64"]
    assert any("missing params/b" in p for p in tree.compare(a, {"params": {"a": a["params"]["a"]}}))


def test_count():
    assert tree.count(_t()) == 6 + 3 + 4
