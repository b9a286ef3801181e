"""`jaxfold fold` end to end on tiny models: a CNN folded with a data-driven correction and evaluated by `jaxfold
eval`; a LLaMA folded with a schedule to a sparsity target, read back by `jaxfold ppl` from the jaxfold checkpoint
and from the HF directory, which transformers loads with the folded model's logits; and every check of the fold
section before anything is loaded."""

import json

import jax
import numpy as np
import pytest

from jaxfold import cli, config, models
from jaxfold.compress import fold_model
from jaxfold.errors import UserError
from jaxfold.fold_run import check_fold_config, correction_inputs, run_fold
from jaxfold.io import checkpoint
from jaxfold.train import load_data
from jaxfold.tree import flatten as tree_flat

CV = "configs/resnet18_fmnist.py"
LM = "configs/smollm2_shakespeare.py"


@pytest.fixture
def tiny_cnn(tmp_path, cifar_dir):
    data = cifar_dir
    cfg = models.resnet18(in_channels=3, width=0.0625, image_size=32)
    checkpoint.save(tmp_path / "cnn", cfg.init(jax.random.key(0)), cfg, metadata={"test_accuracy": 0.1})
    return tmp_path, ["--config.data.name=cifar10", f"--config.data.path={data}",
                      f"--config.fold.checkpoint={tmp_path / 'cnn'}", "--config.fold.n_init=2"]


@pytest.fixture
def tiny_lm(tiny_lm_dir):
    tmp_path = tiny_lm_dir
    return tmp_path, [f"--config.lm.source={tmp_path / 'lm'}", f"--config.lm.text={tmp_path / 'text.txt'}",
                      "--config.lm.seqlen=32", "--config.lm.max_windows=4", "--config.fold.max_iter=20"]


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cnn_fold_with_repair_then_eval(tiny_cnn, capsys):
    tmp, overrides = tiny_cnn
    wd = tmp / "w"
    assert cli.main(["fold", "--config", CV, "--workdir", str(wd), *overrides, "--config.fold.ratio=0.5",
                     "--config.fold.correction=repair", "--config.fold.repair_examples=48"]) == 0
    line = _last_json(capsys)
    report = json.loads((wd / "report.json").read_text())
    assert line["correction"] == report["correction"] == "repair" and line["checkpoint"] == str(wd / "checkpoint")
    assert report["accuracy_before"] == 0.1 and 0.0 <= report["accuracy_after"] <= 1.0
    variables, folded_cfg, meta = checkpoint.restore(wd / "checkpoint")
    assert folded_cfg.stream_widths == (2, 4, 8, 16) and meta["correction"] == "repair"

    # the same fold from Python, with the data a sweep point gets: identical arrays
    cfg = config.load_with_overrides(CV, [*overrides, "--config.fold.repair_examples=48"])
    original, model_cfg, _ = checkpoint.restore(tmp / "cnn")
    batches, options = correction_inputs(cfg.fold, load_data(cfg))
    expected = fold_model(model_cfg, original, 0.5, jax.random.key(0), correction="repair", data=batches,
                          correction_options=options, n_init=2)
    for a, b in zip(jax.tree.leaves(expected.variables), jax.tree.leaves(variables), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    assert cli.main(["eval", "--checkpoint", str(wd / "checkpoint"), "--data", "cifar10", "--data-path",
                     cfg.data.path]) == 0
    assert _last_json(capsys)["accuracy"] == pytest.approx(report["accuracy_after"])


def test_data_free_fold_reads_no_data(tiny_cnn, capsys):
    tmp, overrides = tiny_cnn
    code = cli.main(["fold", "--config", CV, "--workdir", str(tmp / "w"), *overrides, "--config.fold.ratio=0.25",
                     "--config.fold.correction=fold_ar", "--config.fold.evaluate=False",
                     f"--config.data.path={tmp / 'nowhere'}"])
    assert code == 0 and _last_json(capsys)["correction"] == "fold_ar"
    assert "accuracy_after" not in json.loads((tmp / "w" / "report.json").read_text())


def test_lm_fold_then_ppl_from_checkpoint_and_hf_dir_and_transformers(tiny_lm, capsys):
    tmp, overrides = tiny_lm
    wd = tmp / "w"
    assert cli.main(["fold", "--config", LM, "--workdir", str(wd), *overrides, "--config.fold.schedule=uniform",
                     "--config.fold.target=0.3", "--config.fold.evaluate=True"]) == 0
    line = _last_json(capsys)
    report = json.loads((wd / "report.json").read_text())
    assert abs(report["param_sparsity"] - 0.3) <= 0.01 and line["schedule"] == "uniform"
    assert report["hf_dir"] == line["hf_dir"] == str(wd / "hf") and report["tokenizer"] == str(tmp / "tokenizer.json")
    assert all(f.stat().st_mode & 0o777 == 0o644 for f in (wd / "hf").iterdir())  # readable by whoever loads it
    variables, folded_cfg, meta = checkpoint.restore(wd / "checkpoint")
    assert folded_cfg.is_uniform() and folded_cfg.num_kv_heads == (1, 1) and meta["tokenizer"] == report["tokenizer"]

    ppl = []
    for model in (wd / "checkpoint", wd / "hf"):
        assert cli.main(["ppl", "--model", str(model), "--text", str(tmp / "text.txt"), "--seqlen", "32",
                         "--max-windows", "4"]) == 0
        ppl.append(_last_json(capsys)["perplexity"])
    assert ppl[0] == pytest.approx(report["perplexity_after"], rel=1e-5)
    assert ppl[1] == pytest.approx(ppl[0], rel=1e-5)

    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    hf = transformers.LlamaForCausalLM.from_pretrained(wd / "hf").eval()
    ids = np.random.default_rng(0).integers(0, folded_cfg.vocab_size, (2, 24)).astype(np.int32)
    with torch.no_grad():
        theirs = hf(torch.as_tensor(ids, dtype=torch.long)).logits.numpy()
    ours = np.asarray(folded_cfg.module().apply(variables, ids))
    assert np.abs(ours - theirs).max() <= 1e-4


def test_lm_fold_per_block_schedule_writes_no_hf_dir(tiny_lm):
    tmp, overrides = tiny_lm
    cfg = config.load_with_overrides(LM, [*overrides, "--config.fold.target=0.1"])  # the recipe: block 1 only
    (tmp / "w" / "hf").mkdir(parents=True)  # an earlier uniform fold's, which this run's outputs must not sit beside
    report = run_fold(cfg, tmp / "w")
    assert report["hf_dir"] is None and "differ between blocks" in report["hf_dir_skipped"]
    assert not (tmp / "w" / "hf").exists() and checkpoint.exists(tmp / "w" / "checkpoint")


def test_lm_fold_with_a_correction_chain_on_calibration_text(tiny_lm):
    """act_cluster+refit reads the calibration windows the config names; the report says which and how many, and
    each step's seconds and options; the refit changes the fold (the same fold without it differs)."""
    tmp, overrides = tiny_lm
    common = [*overrides, "--config.fold.schedule=uniform", "--config.fold.target=0.3",
              f"--config.lm.calibration={tmp / 'text.txt'}", "--config.lm.calibration_windows=4",
              "--config.lm.calibration_seqlen=16", "--config.lm.calibration_batch=2"]
    reports = {}
    for chain in ("act_cluster", "act_cluster+refit"):
        cfg = config.load_with_overrides(LM, [*common, f"--config.fold.correction={chain}"])
        reports[chain] = run_fold(cfg, tmp / chain)
    report = reports["act_cluster+refit"]
    assert report["calibration"] == "real" and report["calibration_tokens"] == 4 * 16
    assert report["correction"] == "act_cluster+refit" and set(report["correction_steps"]) == {"act_cluster", "refit"}
    assert report["correction_options"]["refit"] == {"target": "residual", "which": "compressed", "ridge": 1e-3}
    assert reports["act_cluster"]["correction"] == "act_cluster"
    a, _, _ = checkpoint.restore(tmp / "act_cluster" / "checkpoint")
    b, _, _ = checkpoint.restore(tmp / "act_cluster+refit" / "checkpoint")
    same = {p: np.array_equal(x, b_) for (p, x), b_ in zip(tree_flat(a).items(), tree_flat(b).values(), strict=True)}
    refitted = {p for p, v in same.items() if not v}  # uniform folds heads too: their o is refitted with down
    assert refitted == {f"params/block_{i}/{m}/kernel" for i in range(2) for m in ("mlp/down", "attn/o")}


@pytest.mark.parametrize(("path", "change", "message"), [
    (CV, "fold.correction=fold_xx", r"unknown correction 'fold_xx': set --config.fold.correction to one of "
                                    r"\[.*'fold_ar', .*'fold_dir', .*'none', .*'repair'.*\]"),
    (CV, "fold.clusterer=dbscan", r"unknown clusterer 'dbscan': set --config.fold.clusterer"),
    (CV, "fold.ratio=1.0", r"channel ratio must be in \[0, 1\)"),
    (LM, "fold.schedule=cubic", r"unknown schedule 'cubic': set --config.fold.schedule to one of \['recipe'"),
    (LM, "fold.target=1.5", r"fraction of parameters to remove, in \(0, 1\)"),
    (LM, "fold.correction=repair", r"correction 'repair' corrects image classifiers \(CNN/MLP\), not language models"),
    (LM, "fold.correction=refit+act_cluster", r"'act_cluster' changes what is clustered, so it comes first"),
    (LM, "fold.correction=act_cluster+refot", r"unknown correction 'refot' in --config.fold.correction"),
    (CV, "fold.correction=refit", r"correction 'refit' corrects language models .*, not image classifiers"),
])
def test_fold_section_is_checked_before_anything_loads(tmp_path, path, change, message):
    cfg = config.load_with_overrides(path, [f"{change}", f"lm.source={tmp_path / 'missing'}" if path == LM
                                            else f"fold.checkpoint={tmp_path / 'missing'}"])
    with pytest.raises(UserError, match=message):
        check_fold_config(cfg)
    with pytest.raises(UserError, match=message):
        run_fold(cfg, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_lm_correction_that_reads_data_needs_a_calibration_source(tmp_path):
    cfg = config.load_with_overrides(LM, ["fold.correction=act_cluster+refit", "lm.calibration=",
                                          f"lm.source={tmp_path / 'missing'}"])
    with pytest.raises(UserError, match=r"reads calibration text: set --config.lm.calibration to 'self'"):
        check_fold_config(cfg)
