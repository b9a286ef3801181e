"""Training: the jitted step learns, a run writes metrics + a restorable checkpoint, and reruns resume."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxfold import cli, models
from jaxfold.io import checkpoint
from jaxfold.train import make_optimizer, make_train_step, train


def test_train_step_reduces_loss_on_a_fixed_batch():
    cfg = models.mlp(in_channels=1, image_size=8, width=0.125)
    v = cfg.init(jax.random.key(0))
    tx = make_optimizer(ml_collections.ConfigDict(dict(epochs=1, lr=0.05, momentum=0.9, weight_decay=5e-4)), 30)
    state = {"params": v["params"], "batch_stats": v["batch_stats"], "opt_state": tx.init(v["params"]),
             "step": jnp.zeros((), jnp.int32)}
    step = make_train_step(cfg.module(), tx)
    x = jax.random.normal(jax.random.key(1), (32, 8, 8, 1))
    y = jnp.arange(32) % 10
    losses = []
    for _ in range(30):
        state, m = step(state, x, y, jax.random.key(2))
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.5 * losses[0]
    assert int(state["step"]) == 30


def _tiny_config(data_path, epochs):
    """A 32-unit MLP (with BatchNorm) on the fake CIFAR directory: the training loop's contract, compiled in seconds
    (the zoo's forward passes are tested in test_models)."""
    c = ml_collections.ConfigDict()
    c.model = dict(name="mlp", in_channels=3, num_classes=10, width=0.0625, image_size=32)
    c.data = dict(name="cifar10", path=str(data_path), crop_padding=4, hflip=True)
    c.train = dict(epochs=epochs, batch_size=40, lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
                   warmup_epochs=0.0, seed=0, eval_every=1, eval_batch_size=50)
    return c


@pytest.mark.slow
def test_train_writes_checkpoint_and_resumes(tmp_path, capsys, cifar_dir):
    data = cifar_dir
    wd = tmp_path / "wd"
    first = train(_tiny_config(data, 1), wd)
    assert 0.0 <= first["accuracy"] <= 1.0 and first["examples"] == 24
    variables, cfg, meta = checkpoint.restore(wd / "checkpoint")
    assert cfg == models.mlp(width=0.0625) and meta["epochs"] == 1
    with open(wd / "metrics.jsonl", "a") as f:  # an epoch-2 line from a run killed before its state was saved
        f.write(json.dumps({"epoch": 2, "step": 999}) + "\n")
    train(_tiny_config(data, 2), wd)  # resumes at epoch 1 instead of starting over
    assert "resuming from" in capsys.readouterr().out
    records = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[1]["step"] == 2 * 3  # the stale line is gone
    restored, _, meta = checkpoint.restore(wd / "checkpoint")
    assert meta["epochs"] == 2
    assert not np.array_equal(restored["params"]["classifier"]["kernel"], variables["params"]["classifier"]["kernel"])
    assert not np.array_equal(restored["batch_stats"]["bn0"]["mean"], variables["batch_stats"]["bn0"]["mean"])


def test_train_rejects_mismatched_model_and_data(tmp_path, cifar_dir):
    c = _tiny_config(cifar_dir, 1)
    c.model.in_channels = 1
    with pytest.raises(ValueError, match="model expects"):
        train(c, tmp_path / "wd")


def test_cli_reports_bad_override(capsys, tmp_path):
    code = cli.main(["train", "--config", "configs/resnet18_fmnist.py", "--workdir", str(tmp_path),
                     "--config.train.epoch=1"])
    assert code == 2
    assert "valid keys" in capsys.readouterr().err


def test_cli_data_fetch_unknown(capsys):
    assert cli.main(["data", "fetch", "imagenet"]) == 2
    assert "fetchable" in capsys.readouterr().err


def test_cli_eval_refuses_model_that_does_not_fit_the_data(tmp_path, capsys, cifar_dir):
    cfg = models.mlp(in_channels=3, width=0.0625, image_size=32, num_classes=100)
    checkpoint.save(tmp_path / "ck", cfg.init(jax.random.key(0)), cfg)
    data = cifar_dir
    code = cli.main(["eval", "--checkpoint", str(tmp_path / "ck"), "--data", "cifar10", "--data-path", str(data)])
    assert code == 2 and "set --config.model.num_classes=10" in capsys.readouterr().err


def test_train_rejects_batch_larger_than_dataset(tmp_path, cifar_dir):
    c = _tiny_config(cifar_dir, 1)
    c.train.batch_size = 1000
    with pytest.raises(ValueError, match="lower --config.train.batch_size"):
        train(c, tmp_path / "wd")
