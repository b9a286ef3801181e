"""Checkpoints: exact round trip, loud mismatches, and atomicity against a save killed midway."""

import json
import os

import jax
import numpy as np
import optax
import pytest

from jaxfold import models, tree
from jaxfold.io import checkpoint


@pytest.fixture(scope="module")
def model():
    cfg = models.resnet18(in_channels=1, width=0.0625, image_size=16)
    variables = cfg.init(jax.random.key(0))
    # non-trivial BN statistics so the round trip is not comparing initial ones/zeros
    variables["batch_stats"] = jax.tree.map(lambda a: a + np.linspace(0.1, 1.0, a.size).reshape(a.shape),
                                            variables["batch_stats"])
    return cfg, variables


def _equal(a, b):
    fa, fb = tree.flatten(a), tree.flatten(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert np.asarray(fa[k]).dtype == np.asarray(fb[k]).dtype
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def test_round_trip_exact(tmp_path, model):
    cfg, variables = model
    checkpoint.save(tmp_path / "ck", variables, cfg, metadata={"test_accuracy": 0.5})
    restored, cfg2, meta = checkpoint.restore(tmp_path / "ck")
    assert cfg2 == cfg and meta == {"test_accuracy": 0.5}
    _equal(variables, restored)
    sidecar = json.loads((tmp_path / "ck" / checkpoint.SIDECAR).read_text())
    assert sidecar["model"]["stream_widths"] == list(cfg.stream_widths)
    assert sidecar["jaxfold_version"]


def test_save_refuses_variables_of_another_model(tmp_path, model):
    cfg, variables = model
    with pytest.raises(checkpoint.CheckpointMismatch, match="conv1/kernel: expected shape"):
        checkpoint.save(tmp_path / "ck", variables, cfg.replace(stem_width=5, stream_widths=(5, 8, 16, 32),
                                                                inner_widths=((5,),) * 2 + cfg.inner_widths[2:]))


def test_restore_into_other_widths_fails_loudly(tmp_path, model):
    cfg, variables = model
    checkpoint.save(tmp_path / "ck", variables, cfg)
    other = cfg.replace(inner_widths=((3,), *cfg.inner_widths[1:]))
    with pytest.raises(checkpoint.CheckpointMismatch, match=r"inner_widths: expected \(\(3,\)"):
        checkpoint.restore(tmp_path / "ck", expected_config=other)
    # A sidecar edited to claim other widths: the stored arrays no longer match the model it describes.
    path = tmp_path / "ck" / checkpoint.SIDECAR
    sidecar = json.loads(path.read_text())
    sidecar["model"]["inner_widths"][0] = [3]
    path.write_text(json.dumps(sidecar))
    with pytest.raises(checkpoint.CheckpointMismatch,
                       match=r"params/layer1_0/bn1/bias: expected shape \(3,\) float32, got \(4,\) float32"):
        checkpoint.restore(tmp_path / "ck")


def test_missing_checkpoint_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="jaxfold train"):
        checkpoint.restore(tmp_path / "nothing")


def test_save_killed_midway_keeps_previous(tmp_path, model, monkeypatch):
    cfg, variables = model
    checkpoint.save(tmp_path / "ck", variables, cfg, metadata={"v": 1})

    def killed(directory, tree_):
        (directory / "arrays").mkdir()
        (directory / "arrays" / "partial").write_bytes(b"\0" * 10)
        raise KeyboardInterrupt  # the process is interrupted while writing

    monkeypatch.setattr(checkpoint, "_write_arrays", killed)
    changed = jax.tree.map(lambda a: a + 1, variables)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path / "ck", changed, cfg, metadata={"v": 2})
    restored, _, meta = checkpoint.restore(tmp_path / "ck")
    assert meta == {"v": 1}
    _equal(variables, restored)
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # no temporary left behind


def test_kill_between_renames_is_recovered(tmp_path, model):
    cfg, variables = model
    checkpoint.save(tmp_path / "ck", variables, cfg)
    os.replace(tmp_path / "ck", tmp_path / ".ck.old")  # state right after the first of the two renames
    assert checkpoint.exists(tmp_path / "ck")
    restored, _, _ = checkpoint.restore(tmp_path / "ck")
    _equal(variables, restored)
    checkpoint.save(tmp_path / "ck", variables, cfg)  # the next save completes the swap
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_train_state_tree_round_trip(tmp_path, model):
    _, variables = model
    tx = optax.sgd(0.1, momentum=0.9)
    state = {"params": variables["params"], "opt_state": tx.init(variables["params"]), "step": np.int32(7)}
    state["opt_state"] = jax.tree.map(lambda a: a + 0.5, state["opt_state"])
    checkpoint.save_tree(tmp_path / "st", state)
    restored, _ = checkpoint.restore_tree(tmp_path / "st", state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    with pytest.raises(checkpoint.CheckpointMismatch, match="tree structure"):
        checkpoint.restore_tree(tmp_path / "st", {"params": variables["params"]})
