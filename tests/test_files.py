"""Atomic writes: a directory is swapped in whole, and a failure while filling it leaves the old one untouched."""

import pytest

from jaxfold.files import atomic_dir, write_json_atomic


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "hf"
    with atomic_dir(target) as tmp:
        write_json_atomic(tmp / "config.json", {"v": 1})
        (tmp / "weights").write_text("one")
        assert not target.exists()  # nothing visible until the block ends
    assert (target / "weights").read_text() == "one" and oct(target.stat().st_mode & 0o777) == "0o755"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["weights"] and (target / "weights").read_text() == "two"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("killed while writing")
    assert (target / "weights").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temporary or old directory left behind
