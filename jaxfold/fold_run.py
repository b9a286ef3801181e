"""``jaxfold fold``: fold the model a config names into a workdir — :func:`jaxfold.compress.fold_model` as a run.

The config's ``fold`` section says what to do; everything it names is checked before a model is loaded.

* Image models: ``fold.checkpoint`` (a jaxfold checkpoint) folded at channel ratio ``fold.ratio`` with a
  clusterer and a variance correction from the registry. A correction that needs data gets the ``data``
  section's training images exactly as a sweep point does (:func:`correction_inputs`).
* Language models (a config with an ``lm`` section): ``lm.source`` (anything ``jaxfold ppl --model`` takes:
  smollm2, a .gguf file, an HF directory, a jaxfold checkpoint) folded with the per-block ``fold.schedule``
  calibrated to remove ``fold.target`` of the parameters, the way the LLM sweeps fold. ``fold.correction`` is one
  transformer correction or a chain joined by '+' (``act_cluster+refit``; options per name in
  ``fold.correction_options``); one that reads data takes ``lm.calibration_windows`` windows of
  ``lm.calibration_seqlen`` tokens from ``lm.calibration``: ``self`` (sampled from the dense model, options in
  ``lm.self_calibration``; cached) or a text source. The report names the calibration and its tokens.

Writes ``W/checkpoint`` (a jaxfold checkpoint: ``jaxfold eval --checkpoint`` or ``jaxfold ppl --model`` read it),
then, for a LLaMA model whose folded widths are the same in every block, ``W/hf`` (config.json,
model.safetensors, tokenizer.json: transformers' ``LlamaForCausalLM.from_pretrained`` and ``jaxfold ppl`` load
it; HF's config holds one width per model, so a per-block schedule such as the paper's recipe gets no ``W/hf``),
and last ``W/report.json``. Every write is atomic.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import ml_collections

from jaxfold.clustering import CLUSTERERS
from jaxfold.compress import fold_and_correct, fold_model
from jaxfold.corrections import CORRECTIONS, Batches, Correction, correction_chain, get_correction
from jaxfold.data.pipeline import subset_batches
from jaxfold.data.self_text import calibration_windows, window_batches
from jaxfold.errors import UserError
from jaxfold.files import atomic_dir, write_json_atomic, write_text_atomic
from jaxfold.io import checkpoint
from jaxfold.result import Compressed

CHECKPOINT, HF_DIR, REPORT = "checkpoint", "hf", "report.json"
# what data-driven corrections get, in `fold` and `sweep` sections alike: REPAIR's training images, DeepInversion's
# budget (fold_dir); every other di_* field of DeepInversionOptions may be added to a section as well
CORRECTION_DATA = dict(repair_examples=10_000, di_steps=2000, di_batch_size=256)


def cv_fold_section(checkpoint_path: str, **changes: Any) -> dict[str, Any]:
    """The ``fold`` section of the image-classification configs: the checkpoint, the channel ratio, the
    correction (``--config.fold.correction=fold_ar``), the clusterer and k-means' restarts, the seed, whether to
    evaluate the folded model on the ``data`` section's test set, modules to import first (ones that register a
    correction), and what data-driven corrections get."""
    section = dict(checkpoint=checkpoint_path, ratio=0.25, correction="none", clusterer="kmeans", n_init=10,
                   max_iter=300, seed=0, evaluate=True, imports=(), **CORRECTION_DATA)
    section.update(changes)
    return section


def correction_inputs(section: ml_collections.ConfigDict, data: Any) -> tuple[Batches, dict[str, Any]]:
    """What a correction gets in a sweep point or a ``jaxfold fold``: a fixed random subset of
    ``section.repair_examples`` training images of ``data`` as batches (the same on every call: REPAIR's data)
    and the section's ``di_*`` fields (DeepInversion's options, for fold_dir)."""
    batches = subset_batches(data, section.get("repair_examples", CORRECTION_DATA["repair_examples"]), seed=0)
    return batches, {k: v for k, v in section.items() if k.startswith("di_")}


def lm_corrections(fc: ml_collections.ConfigDict) -> tuple[str, ...]:
    """A language model's ``fold.correction``: one name or a chain joined by '+' (act_cluster+refit), checked."""
    correction = str(fc.get("correction", "none"))
    return correction_chain(correction, f"--config.fold.correction={correction!r}", inputs="tokens")


def _correction(fc: ml_collections.ConfigDict) -> Correction:
    name = fc.get("correction", "none")
    if name not in CORRECTIONS:
        raise UserError(f"unknown correction {name!r}: set --config.fold.correction to one of {sorted(CORRECTIONS)} "
                        "(a correction registered by your own module: list it in --config.fold.imports)")
    fix = get_correction(name)
    fix.check_inputs("images", "--config.fold.correction")
    return fix


def check_fold_config(config: ml_collections.ConfigDict) -> Correction:
    """Every name and value of the ``fold`` section, checked before anything is loaded; returns the correction."""
    if "fold" not in config:
        raise UserError("the config has no `fold` section (image models: checkpoint, ratio, correction, clusterer; "
                        "language models: schedule, target; see configs/resnet18_fmnist.py, "
                        "configs/smollm2_shakespeare.py)")
    fc = config.fold
    for module in fc.get("imports", ()):  # user modules that register corrections
        importlib.import_module(module)
    language_model = "lm" in config
    required = ("schedule", "target") if language_model else ("checkpoint", "ratio")
    missing = [k for k in required if k not in fc]
    if missing:
        raise UserError(f"the config's fold section lacks {missing} (it has {sorted(fc)})")
    if fc.get("clusterer", "kmeans") not in CLUSTERERS:  # a clusterer function can only come from Python
        raise UserError(f"unknown clusterer {fc.clusterer!r}: set --config.fold.clusterer to one of "
                        f"{sorted(CLUSTERERS)}")
    fix = get_correction("none") if language_model else _correction(fc)  # a language model's: lm_corrections
    if language_model:
        from jaxfold.schedules import SCHEDULES

        if fc.schedule not in SCHEDULES:
            raise UserError(f"unknown schedule {fc.schedule!r}: set --config.fold.schedule to one of "
                            f"{sorted(SCHEDULES)}")
        if not 0.0 < fc.target < 1.0:
            raise UserError(f"--config.fold.target is the fraction of parameters to remove, in (0, 1); got "
                            f"{fc.target}")
        if any(not get_correction(c).data_free for c in lm_corrections(fc)) and not config.lm.get("calibration"):
            raise UserError(f"correction {fc.correction!r} reads calibration text: set --config.lm.calibration to "
                            "'self' (windows sampled from the dense model: no external text) or a text source "
                            "(e.g. shakespeare:train)")
    else:
        if not 0.0 <= fc.ratio < 1.0:
            raise UserError(f"channel ratio must be in [0, 1), got {fc.ratio} (--config.fold.ratio)")
        if not fix.data_free and "data" not in config:
            raise UserError(f"correction {fix.name!r} needs training data: the config needs a `data` section")
    return fix


def _fold_image_model(config: ml_collections.ConfigDict, fix: Correction) -> tuple[Compressed, dict[str, Any]]:
    from jaxfold.eval.classification import check_model_fits_data, evaluate_model
    from jaxfold.train import load_data

    fc = config.fold
    variables, model_cfg, meta = checkpoint.restore(fc.checkpoint)
    data = batches = None
    options: dict[str, Any] = {}
    if fc.get("evaluate", True) or not fix.data_free:
        data = load_data(config)
        check_model_fits_data(model_cfg, data)
        batches, options = correction_inputs(fc, data)
    folded = fold_model(model_cfg, variables, fc.ratio, jax.random.key(fc.get("seed", 0)), correction=fix,
                        data=batches, correction_options=options, clusterer=fc.get("clusterer", "kmeans"),
                        n_init=fc.get("n_init", 10), max_iter=fc.get("max_iter", 300))
    report = {"source": str(fc.checkpoint), "ratio": fc.ratio, "clusterer": fc.get("clusterer", "kmeans"),
              "seed": fc.get("seed", 0), "n_init": fc.get("n_init", 10), **folded.report}
    if data is not None and fc.get("evaluate", True):
        report["accuracy_before"] = meta.get("test_accuracy")
        report["accuracy_after"] = evaluate_model(folded.config, folded.variables, data)["accuracy"]
    return folded, report


def _fold_language_model(config: ml_collections.ConfigDict, fix: Correction
                         ) -> tuple[Compressed, dict[str, Any], Any]:
    from jaxfold.llm import load_language_model
    from jaxfold.schedules import calibrate

    fc, lm = config.fold, config.lm
    model = load_language_model(lm.source, lm.get("dtype", "float32"))
    plan, scale, _ = calibrate(model.config, fc.schedule, fc.target, lm.get("sparsity_tolerance", 0.01))
    chain = lm_corrections(fc)
    data, calibration = None, {"calibration": "none", "calibration_tokens": 0}
    if any(not get_correction(c).data_free for c in chain):
        windows, kind = calibration_windows(model, lm.calibration, lm.get("calibration_seqlen", 512),
                                            lm.get("calibration_windows", 64),
                                            **dict(lm.get("self_calibration", {})))
        data = window_batches(windows, lm.get("calibration_batch", 8))
        calibration = {"calibration": kind, "calibration_source": lm.calibration,
                       "calibration_tokens": int(windows.size)}
    folded = fold_and_correct(model.config, model.variables, plan, jax.random.key(fc.get("seed", 0)), chain,
                              data=data, options=dict(fc.get("correction_options", {})),
                              clusterer=fc.get("clusterer", "kmeans"), n_init=fc.get("n_init", 1),
                              max_iter=fc.get("max_iter", 300))
    tokenizer = model.tokenizer_source
    if not Path(tokenizer).is_absolute():  # the checkpoint's metadata must name it from anywhere
        tokenizer = str(Path(tokenizer).absolute())
    report = {"source": str(lm.source), "schedule": fc.schedule, "target": fc.target, "schedule_scale": scale,
              "clusterer": fc.get("clusterer", "kmeans"), "seed": fc.get("seed", 0), "n_init": fc.get("n_init", 1),
              "tokenizer": tokenizer, **calibration, **folded.report}
    if fc.get("evaluate", False):
        from jaxfold.data.text import read_text_source
        from jaxfold.eval.perplexity import perplexity
        from jaxfold.llm import logits_fn

        out = perplexity(logits_fn(folded.config), folded.variables, model.encode(read_text_source(lm.text)),
                         lm.seqlen, 1, lm.get("max_windows"))
        report.update(perplexity_after=out["perplexity"], perplexity_text=lm.text, perplexity_seqlen=lm.seqlen,
                      perplexity_windows=out["windows"])
    return folded, report, model


def write_hf_dir(path: str | os.PathLike, folded: Compressed, tokenizer: Any) -> Path:
    """``path`` as an HF LLaMA directory (config.json, model.safetensors, tokenizer.json), swapped in whole."""
    from jaxfold.io.hf_import import save_hf_dir

    with atomic_dir(path) as tmp:
        save_hf_dir(folded.config, folded.variables, tmp)
        write_text_atomic(tmp / "tokenizer.json", tokenizer.to_str())
    return Path(path)


def run_fold(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Fold what ``config`` names into ``workdir`` (see the module docstring); returns the report."""
    from jaxfold.user_fold import is_user_model, run_user_fold

    if is_user_model(config):  # a model of your own by import path: its spec derived by tracing
        return run_user_fold(config, workdir)
    fix = check_fold_config(config)
    workdir = Path(workdir)
    if "lm" in config:
        folded, report, model = _fold_language_model(config, fix)
    else:
        (folded, report), model = _fold_image_model(config, fix), None
    checkpoint.save(workdir / CHECKPOINT, folded.variables, folded.config, metadata=report)
    report["checkpoint"] = str(workdir / CHECKPOINT)
    if model is not None and config.fold.get("hf_dir", True):
        if folded.config.is_uniform():
            report["hf_dir"] = str(write_hf_dir(workdir / HF_DIR, folded, model.tokenizer))
        else:
            report["hf_dir"] = None
            report["hf_dir_skipped"] = ("the folded widths differ between blocks (schedule "
                                        f"{config.fold.schedule!r}) and an HF LlamaConfig holds one per model")
    if not report.get("hf_dir") and (workdir / HF_DIR).exists():  # an earlier run's: W holds one run's outputs
        shutil.rmtree(workdir / HF_DIR)
    write_json_atomic(workdir / REPORT, report)
    return report
