"""Sweeps: the grid (method × correction × ratio × seed) of a config's ``sweep`` section, one point at a time.

Every finished point is appended as one JSON line to ``W/results.jsonl`` (a single ``write`` on an ``O_APPEND``
descriptor, so concurrent shards never interleave and a kill loses at most the point in flight); a rerun skips
the points already there. ``W/manifest.json`` records the config, versions, device and git revision, and a
workdir refuses a sweep of a different model. Folding work is shared where it can be: one Fold-Naive fold per
(ratio, seed) serves every correction that does not change what is clustered, and evaluation compiles once per
set of widths.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from jaxfold import __version__, measure
from jaxfold.baselines import BASELINES
from jaxfold.clustering import CLUSTERERS
from jaxfold.compress import correct, correct_chain, fold_and_correct, fold_model
from jaxfold.corrections import correction_chain, get_correction
from jaxfold.data.pipeline import normalize
from jaxfold.diagnostics import variance_ratios
from jaxfold.errors import MissingFile, UserError
from jaxfold.eval.classification import check_model_fits_data, evaluate_model
from jaxfold.files import write_json_atomic, write_text_atomic
from jaxfold.fold_run import CORRECTION_DATA, correction_inputs
from jaxfold.io import checkpoint
from jaxfold.plans import Plan
from jaxfold.result import Compressed
from jaxfold.seed_stats import DDOF, SeedStats, aggregate_seeds

METHODS = ("fold", *BASELINES)
RESULTS, MANIFEST, SUMMARY = "results.jsonl", "manifest.json", "summary.md"
_GRID_FIELDS = ("variants", "ratios", "seeds", "imports", "deterministic")  # may change between runs of a workdir


@dataclasses.dataclass(frozen=True)
class Point:
    method: str
    correction: str
    ratio: float
    seed: int

    @property
    def id(self) -> str:
        return f"{self.method}:{self.correction}:{self.ratio:g}:{self.seed}"


LM_METHODS = ("fold", "magnitude", "wanda_sp")


def grid(sweep: ml_collections.ConfigDict, language_model: bool = False) -> list[Point]:
    """The sweep's points, validated: ``variants`` are "method:correction" pairs (image models) or
    "method:schedule" pairs (language models; ``ratios`` are then target fractions of parameters removed).
    An image model's fold may name its clusterer, "fold/<clusterer>:correction" (plain "fold" is k-means), for
    the clustering ablation (the paper's Fig. 3). Every variant runs at each of ``seeds``, except those that
    ``deterministic`` names (:func:`variant_seeds`)."""
    _check_deterministic(sweep, language_model)
    if language_model:
        return _lm_grid(sweep)
    _only_groups_pattern(sweep)
    if bad := [r for r in sweep.ratios if not 0.0 <= float(r) < 1.0]:
        raise UserError(f"sweep ratios are channel ratios in [0, 1); got {bad} (--config.sweep.ratios)")
    points = []
    for variant in sweep.variants:
        method, sep, corr = str(variant).partition(":")
        if not sep:
            raise UserError(f"sweep variant {variant!r} must look like method:correction, e.g. fold:fold_ar")
        base, slash, clusterer = method.partition("/")
        if base not in METHODS:
            raise UserError(f"sweep variant {variant!r}: unknown method {base!r}; valid: {list(METHODS)}")
        if slash and (base != "fold" or clusterer not in CLUSTERERS):
            raise UserError(f"sweep variant {variant!r}: only fold takes a clusterer (fold/<clusterer>, e.g. "
                            f"fold/spectral:repair), one of {sorted(CLUSTERERS)}")
        if clusterer == "kmeans":  # one name per fold, so one point id per result
            raise UserError(f"sweep variant {variant!r}: plain fold clusters with k-means; write fold:{corr}")
        fix = get_correction(corr)
        fix.check_inputs("images", f"sweep variant {variant!r}")
        if base != "fold" and fix.prepare is not None:
            raise UserError(f"sweep variant {variant!r}: {corr} changes what is clustered, so it only applies to "
                            "fold (use none or repair with baselines)")
        for ratio in sweep.ratios:
            for seed in variant_seeds(sweep, str(variant)):
                points.append(Point(method, corr, float(ratio), int(seed)))
    return points


def _only_groups_pattern(sweep: ml_collections.ConfigDict) -> re.Pattern | None:
    """``sweep.only_groups`` compiled (None when empty: every group is compressed)."""
    pattern = sweep.get("only_groups", "")
    if not pattern:
        return None
    try:
        return re.compile(str(pattern))
    except re.error as e:
        raise UserError(f"sweep.only_groups {pattern!r} is not a regular expression ({e}); e.g. "
                        "'(layer3|layer4)_.*|stream[34]' for ResNet18's last two stages") from None


def only_groups_plan(ratio: float, groups: Iterable[str], pattern: str | re.Pattern | None) -> Plan:
    """The plan of a sweep point: channel ratio ``ratio`` for every group whose name fully matches ``pattern``,
    the others keep their width (IFM's protocol, the paper's Fig. 7 left: only ResNet18's last two stages are
    compressed). No pattern: the uniform ratio, as before. A pattern that matches no group is a mistake."""
    if pattern is None or pattern == "":
        return float(ratio)
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    groups = list(groups)
    chosen = [g for g in groups if regex.fullmatch(g)]
    if not chosen:
        raise UserError(f"sweep.only_groups {regex.pattern!r} matches none of the model's groups {groups}")
    return {g: float(ratio) for g in chosen}


def variant_seeds(sweep: ml_collections.ConfigDict, variant: str) -> tuple[int, ...]:
    """The seeds ``variant`` runs at: all of ``sweep.seeds``, or only the first where ``sweep.deterministic``
    names the variant (e.g. ``sp_l2:repair``) or its method (``sp_l2``: all of its variants). List there what
    takes no PRNG key — magnitude / SP-L1 / SP-L2 pruning, IFM, the linkage clusterers (``fold/ward``), with a
    correction that reads no key (``none``, ``repair``, ``fold_ar``, ``refit``): given the weights, every seed would
    repeat the same number, so one seed is all the tables need (they show n = 1 for it)."""
    method = variant.partition(":")[0]
    names = set(sweep.get("deterministic", ()))
    return tuple(sweep.seeds)[:1] if variant in names or method in names else tuple(sweep.seeds)


_SEEDED_CLUSTERERS = ("", "kmeans", "spectral")  # fold's clusterers that draw from the key ("": k-means)


def _check_deterministic(sweep: ml_collections.ConfigDict, language_model: bool) -> None:
    known = LM_METHODS if language_model else METHODS
    for name in sweep.get("deterministic", ()):
        method = str(name).partition(":")[0]
        base, _, clusterer = method.partition("/")
        if not (method in known or (not language_model and base == "fold" and clusterer in CLUSTERERS)):
            raise UserError(f"sweep.deterministic names {name!r}: expected a method ({list(known)}) or a variant "
                            "(method:…) whose result does not depend on the seed, e.g. sp_l2 or magnitude:recipe")
        if base == "fold" and clusterer in _SEEDED_CLUSTERERS:
            raise UserError(f"sweep.deterministic names {name!r}, but its clustering draws from the seed's key "
                            "(k-means' initialisations, spectral's): its points need every seed. Drop it; a "
                            "linkage clusterer such as fold/ward may be listed")


@dataclasses.dataclass(frozen=True)
class LMPoint:
    """A language-model point: compress with ``method`` at the widths ``schedule`` gives for ``ratio`` (the target
    fraction of parameters removed), then apply ``corrections`` in order; ``calibration`` names the data that any
    step reads: ``real`` (the ``lm.calibration`` text), ``self`` (windows sampled from the dense model), ``none``,
    or ``""`` for whatever ``lm.calibration`` is (records then name the kind used)."""

    method: str
    schedule: str
    ratio: float
    seed: int
    corrections: tuple[str, ...] = ()
    calibration: str = ""

    @property
    def correction(self) -> str:
        return "+".join(self.corrections) or "none"

    @property
    def variant(self) -> str:
        """The row name: ``method:schedule`` as before corrections existed, then the correction and the data."""
        parts = [self.method, self.schedule]
        if self.corrections or self.calibration not in ("", "none"):
            parts.append(self.correction)
        if self.calibration not in ("", "none"):
            parts.append(self.calibration)
        return ":".join(parts)

    @property
    def id(self) -> str:
        return f"{self.variant}:{self.ratio:g}:{self.seed}"


LM_CALIBRATIONS = ("real", "self")


def _lm_variant(variant: str) -> tuple[str, str, tuple[str, ...], str]:
    """``method:schedule[:correction[+correction…][:calibration]]`` → its parts, validated; the calibration is
    ``none`` where no step reads data, and ``""`` (the ``lm.calibration`` source) where one does and none is named."""
    from jaxfold.schedules import SCHEDULES

    parts = str(variant).split(":")
    usage = (f"language-model sweep variant {variant!r} must be method:schedule[:correction[:calibration]] with "
             f"method in {list(LM_METHODS)}, schedule in {sorted(SCHEDULES)}, corrections joined by '+' (e.g. "
             f"refit+norm_tune) and calibration in {list(LM_CALIBRATIONS)}, e.g. fold:recipe_mlp:refit:self")
    if not 2 <= len(parts) <= 4 or parts[0] not in LM_METHODS or parts[1] not in SCHEDULES:
        raise UserError(usage)
    method, schedule = parts[:2]
    corrections = correction_chain(parts[2] if len(parts) > 2 else "none", f"sweep variant {variant!r}",
                                   inputs="tokens")
    if method != "fold" and corrections and get_correction(corrections[0]).prepare is not None:
        raise UserError(f"sweep variant {variant!r}: {corrections[0]} changes what is clustered, so it applies to "
                        "fold only (e.g. fold:recipe_mlp:act_cluster+refit:self)")
    needs_data = method == "wanda_sp" or any(not get_correction(c).data_free for c in corrections)
    calibration = parts[3] if len(parts) > 3 else ("" if needs_data else "none")
    if calibration not in (("", *LM_CALIBRATIONS) if needs_data else ("none",)):
        raise UserError(usage if needs_data else f"sweep variant {variant!r}: nothing in it reads calibration data, "
                        f"so it takes no calibration (drop ':{calibration}')")
    return method, schedule, corrections, calibration


def _lm_grid(sweep: ml_collections.ConfigDict) -> list[LMPoint]:
    points = []
    for variant in sweep.variants:
        method, schedule, corrections, calibration = _lm_variant(variant)
        points += [LMPoint(method, schedule, float(r), int(s), corrections, calibration)
                   for r in sweep.ratios for s in variant_seeds(sweep, str(variant))]
    return points


def read_results(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete record of ``W/results.jsonl`` (a torn last line from a kill is skipped)."""
    path = Path(workdir) / RESULTS
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _terminate_torn_line(workdir: Path) -> None:
    """A kill mid-append can leave a last line without its newline: end it, so the next record starts clean."""
    path = workdir / RESULTS
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        if torn:
            _append_bytes(path, b"\n")


def _append_bytes(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.write(fd, data) != len(data):
            raise OSError(f"short write to {path}")
    finally:
        os.close(fd)


def append_result(workdir: str | os.PathLike, record: dict[str, Any]) -> None:
    _append_bytes(Path(workdir) / RESULTS, (json.dumps(record, sort_keys=True) + "\n").encode())


def _git_revision() -> str | None:
    """HEAD of the checkout jaxfold runs from, with ``+dirty`` when tracked files have uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).parent).stdout.strip()
    try:
        head = git("rev-parse", "HEAD")
        return (head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def _comparable(config: dict) -> dict:
    # an empty only_groups is what a manifest from before the field existed meant
    sweep = {k: v for k, v in config.get("sweep", {}).items()
             if k not in _GRID_FIELDS and not (k == "only_groups" and not v)}
    # a language-model sweep never reads the `fold` section (`jaxfold fold`'s), so editing it keeps the workdir
    return {**{k: v for k, v in config.items() if not ("lm" in config and k == "fold")}, "sweep": sweep}


def write_manifest(workdir: Path, config: ml_collections.ConfigDict) -> None:
    """Record what produced the results; refuse a workdir that holds a sweep of a different config."""
    path = workdir / MANIFEST
    current = json.loads(config.to_json_best_effort())
    if path.exists():
        old = json.loads(path.read_text())["config"]
        if _comparable(old) != _comparable(current):
            a, b = _comparable(old), _comparable(current)
            changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise UserError(f"{workdir} holds a sweep of a different config (sections differing: {changed}); "
                            "use a new --workdir, or change only sweep.variants/ratios/seeds/imports to extend it")
    device = jax.devices()[0]
    write_json_atomic(path, {"config": current, "jaxfold": __version__, "jax": jax.__version__,
                             "device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
                             "devices": jax.device_count(), "git": _git_revision(),
                             "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")})


class _Runner:
    """Holds what points share: the original model, data, repair batches, and the last Fold-Naive folds."""

    def __init__(self, config: ml_collections.ConfigDict) -> None:
        from jaxfold.train import load_data

        sc = config.sweep
        self.config, self.sweep = config, sc
        self.variables, self.model, _ = checkpoint.restore(sc.checkpoint)
        self.data = load_data(config)
        check_model_fits_data(self.model, self.data)
        self.batches, self.options = correction_inputs(sc, self.data)
        n = min(sc.variance_batch, len(self.data.test_images))
        self.probe = normalize(self.data.test_images[:n], self.data.mean, self.data.std)
        self._naive: dict[tuple[float, int, str], Compressed] = {}
        self.only_groups = _only_groups_pattern(sc)
        self._groups = [g.name for g in self.model.fold_spec().groups]

    def plan(self, ratio: float) -> Plan:
        return only_groups_plan(ratio, self._groups, self.only_groups)

    def compress(self, p: Point) -> Compressed:
        key = jax.random.key(p.seed)
        fix = get_correction(p.correction)
        method, _, clusterer = p.method.partition("/")
        options = dict(n_init=self.sweep.n_init, clusterer=clusterer or "kmeans")
        if method == "fold" and fix.prepare is not None:
            return fold_model(self.model, self.variables, self.plan(p.ratio), key, correction=fix, data=self.batches,
                              correction_options=self.options, **options)
        if method == "fold":
            shared = (p.ratio, p.seed, options["clusterer"])
            if shared not in self._naive:
                self._naive = {shared: fold_model(self.model, self.variables, self.plan(p.ratio), key, **options)}
            base = self._naive[shared]
        else:
            t0 = time.perf_counter()
            base = BASELINES[p.method](self.model, self.variables, self.plan(p.ratio))
            base = dataclasses.replace(base, report={**base.report, "fold_seconds": time.perf_counter() - t0})
        return correct(self.model, self.variables, base, fix, key=key, data=self.batches, options=self.options)

    def run(self, p: Point) -> dict[str, Any]:
        out = self.compress(p)
        t0 = time.perf_counter()
        metrics = evaluate_model(out.config, out.variables, self.data)
        r = out.report
        record = {"id": p.id, "model": self.config.model.name, "dataset": self.data.name, "method": p.method,
                  "correction": p.correction, "ratio": p.ratio, "seed": p.seed,
                  "param_sparsity": r["param_sparsity"], "params": r["params_after"], "params_before":
                  r["params_before"], "flops": r["flops_after"], "flops_before": r["flops_before"],
                  "metric": "accuracy", "value": metrics["accuracy"], "loss": metrics["loss"],
                  "fold_seconds": round(float(r.get("fold_seconds", 0.0)), 4),
                  "correction_seconds": round(float(r.get("correction_seconds", 0.0)), 4),
                  "eval_seconds": round(time.perf_counter() - t0, 4)}
        if self.only_groups is not None:
            record["only_groups"] = self.only_groups.pattern
        if any(abs(p.ratio - float(a)) < 1e-9 for a in self.sweep.variance_ratio_at):
            record["variance_ratio"] = variance_ratios(self.model, self.variables, out.config, out.variables,
                                                       out.channel_map, self.probe)
        return record

    def dense(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        metrics = evaluate_model(self.model, self.variables, self.data)
        counts = measure.config_counts(self.model)  # analytic, or measured for a model without analytic counts
        params, flops = counts["params"], counts["flops"]
        return {"id": "dense", "model": self.config.model.name, "dataset": self.data.name, "method": "dense",
                "correction": "none", "ratio": 0.0, "seed": 0, "param_sparsity": 0.0, "params": params,
                "params_before": params, "flops": flops, "flops_before": flops, "metric": "accuracy",
                "value": metrics["accuracy"], "loss": metrics["loss"], "fold_seconds": 0.0,
                "correction_seconds": 0.0, "eval_seconds": round(time.perf_counter() - t0, 4)}


class _LMRunner:
    """Language-model points: the model, the evaluation tokens and the calibration windows are loaded once; one
    plan per (schedule, target) is calibrated and shared by folding, magnitude pruning and Wanda-sp, so all three
    have exactly the same widths and parameter count."""

    def __init__(self, config: ml_collections.ConfigDict) -> None:
        from jaxfold.data.self_text import calibration_windows
        from jaxfold.data.text import read_text_source
        from jaxfold.llm import load_language_model, logits_fn

        self.config, self.sweep, self.lm = config, config.sweep, config.lm
        self.model = load_language_model(self.lm.source, self.lm.get("dtype", "float32"))
        self.tokens = self.model.encode(read_text_source(self.lm.text))
        # lm.calibration: a text source or "self" (windows sampled from the dense model, options in
        # lm.self_calibration); (windows, kind) per source, each loaded or sampled once per sweep
        self._calibration = {self.lm.calibration: calibration_windows(
            self.model, self.lm.calibration, self.lm.calibration_seqlen, self.lm.calibration_windows,
            **dict(self.lm.get("self_calibration", {})))}
        self.calibration, self.calibration_kind = self._calibration[self.lm.calibration]
        self.logits = logits_fn
        self._plans: dict[tuple[str, float], Any] = {}

    def _plan(self, p: LMPoint) -> Any:
        from jaxfold.schedules import calibrate

        if (p.schedule, p.ratio) not in self._plans:
            self._plans[(p.schedule, p.ratio)] = calibrate(self.model.config, p.schedule, p.ratio,
                                                           self.lm.get("sparsity_tolerance", 0.01))[0]
        return self._plans[(p.schedule, p.ratio)]

    def _evaluate(self, config: Any, variables: Any) -> dict[str, Any]:
        from jaxfold.eval.perplexity import perplexity

        return perplexity(self.logits(config), variables, self.tokens, self.lm.seqlen, 1, self.lm.max_windows)

    def _windows(self, p: LMPoint) -> tuple[str, np.ndarray | None]:
        """The calibration kind and windows point ``p`` reads (``none``, None when nothing reads data); each source
        is loaded or sampled once per sweep and shared by every point that names it."""
        if p.calibration == "none":
            return "none", None
        source = self.lm.calibration
        if p.calibration == "self":
            source = "self"
        elif p.calibration == "real" and source == "self":
            raise UserError(f"variant {p.variant!r} asks for real calibration text but lm.calibration is 'self': set "
                            "--config.lm.calibration to a text source (e.g. shakespeare:train)")
        if source not in self._calibration:
            from jaxfold.data.self_text import calibration_windows

            self._calibration[source] = calibration_windows(
                self.model, source, self.lm.calibration_seqlen, self.lm.calibration_windows,
                **dict(self.lm.get("self_calibration", {})))
        windows, kind = self._calibration[source]
        return kind, windows

    def _record(self, p: LMPoint, config: Any, params_before: int, metrics: dict, fold_seconds: float) -> dict:
        return {"id": p.id, "model": self.lm.source, "dataset": self.lm.text, "method": p.method,
                "correction": p.correction, "calibration": "none", "calibration_tokens": 0, "schedule": p.schedule,
                "target": p.ratio, "ratio": p.ratio, "seed": p.seed,
                "param_sparsity": 1.0 - config.param_count() / params_before, "params": config.param_count(),
                "params_before": params_before, "flops": config.flops(), "flops_before": self.model.config.flops(),
                "metric": "perplexity", "value": metrics["perplexity"], "loss": metrics["nll"],
                "tokens": metrics["tokens"], "fold_seconds": round(fold_seconds, 4), "correction_seconds": 0.0,
                "eval_seconds": metrics["seconds"]}

    def run(self, p: LMPoint) -> dict[str, Any]:
        from jaxfold.baselines import prune_model, wanda_sp_model
        from jaxfold.data.self_text import window_batches

        base, plan = self.model, self._plan(p)
        kind, windows = self._windows(p)
        data = None if windows is None else window_batches(windows, self.lm.get("calibration_batch", 8))
        options = self.sweep.get("correction_options", {})
        t0 = time.perf_counter()
        if p.method == "fold":  # the chain's corrections run inside, each timed on its own
            out = fold_and_correct(base.config, base.variables, plan, jax.random.key(p.seed), p.corrections,
                                   data=data, options=options, n_init=self.sweep.n_init,
                                   max_iter=self.sweep.get("max_iter", 300),
                                   clusterer=self.sweep.get("clusterer", "kmeans"))
            seconds = out.report["fold_seconds"]
        else:
            if p.method == "magnitude":
                out = prune_model(base.config, base.variables, plan)
            else:
                out = wanda_sp_model(base.config, base.variables, plan, [w[None] for w in windows],
                                     self.logits(base.config))
            seconds = time.perf_counter() - t0
            out = correct_chain(base.config, base.variables, out, p.corrections, key=jax.random.key(p.seed),
                                data=data, options=options)
        record = self._record(p, out.config, base.config.param_count(), self._evaluate(out.config, out.variables),
                              seconds)
        if windows is not None:
            record.update(calibration=kind, calibration_tokens=int(windows.size))
        if p.corrections:  # with the options each step ran with (a default that changes later stays readable here)
            record.update({k: out.report[k] for k in ("correction_seconds", "correction_steps", "correction_options")})
        prompts = self.sweep.get("generate_prompts", ())
        if prompts and any(abs(p.ratio - float(a)) < 1e-9 for a in self.sweep.get("generate_at", ())):
            record["generations"] = self.generations(out.config, out.variables, prompts)
        return record

    def generations(self, config: Any, variables: Any, prompts: Any) -> list[dict[str, str]]:
        from jaxfold.models.llama import generate

        out = []
        for prompt in prompts:
            ids = self.model.encode(prompt)
            new = generate(config, variables, ids, self.sweep.max_new_tokens)[len(ids):]
            out.append({"prompt": prompt, "continuation": self.model.decode(new)})
        return out

    def dense(self) -> dict[str, Any]:
        cfg = self.model.config
        record = self._record(LMPoint("dense", "none", 0.0, 0), cfg, cfg.param_count(),
                              self._evaluate(cfg, self.model.variables), 0.0)
        record.update(id="dense", schedule="none")
        if self.sweep.get("generate_prompts", ()):
            record["generations"] = self.generations(cfg, self.model.variables, self.sweep.generate_prompts)
        return record


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise UserError(f"--shard must look like i/n with 0 ≤ i < n, e.g. 0/2; got {text!r}") from None
    if not 0 <= i < n:
        raise UserError(f"--shard {text}: need 0 ≤ i < n")
    return i, n


def _ensure_checkpoint(config: ml_collections.ConfigDict) -> None:
    sc = config.sweep
    if checkpoint.exists(sc.checkpoint):
        return
    if not sc.get("train_if_missing", False):
        raise MissingFile(f"no checkpoint at {sc.checkpoint}: train one (jaxfold train --config … "
                          f"--workdir {Path(sc.checkpoint).parent}) or set --config.sweep.checkpoint")
    from jaxfold.train import train

    print(f"no checkpoint at {sc.checkpoint}: training it first ({config.train.epochs} epochs)")
    train(config, Path(sc.checkpoint).parent)


def run_sweep(config: ml_collections.ConfigDict, workdir: str | os.PathLike, shard: tuple[int, int] = (0, 1),
              progress: bool = True) -> list[dict[str, Any]]:
    """Run this shard's unfinished points; returns every record in the workdir afterwards."""
    if "sweep" not in config:
        raise UserError("the config has no `sweep` section (checkpoint, variants, ratios, seeds, …)")
    for module in config.sweep.get("imports", ()):  # user modules that register corrections or baselines
        importlib.import_module(module)
    language_model = "lm" in config
    points = grid(config.sweep, language_model)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_manifest(workdir, config)
    from jaxfold.user_fold import UserSweepRunner, is_user_model

    user_model = is_user_model(config)  # a model named by import path ("pkg.module:build")
    if not language_model and not user_model:
        _ensure_checkpoint(config)
    _terminate_torn_line(workdir)
    done = {r["id"] for r in read_results(workdir)}
    index, count = shard
    todo = [p for i, p in enumerate(points) if i % count == index and p.id not in done]
    if user_model:
        runner = UserSweepRunner(config)
    else:
        runner = _LMRunner(config) if language_model else _Runner(config)
    if index == 0 and "dense" not in done:
        append_result(workdir, runner.dense())
    for p in tqdm(todo, desc=f"sweep {workdir.name}", disable=not progress, unit="point"):
        append_result(workdir, runner.run(p))
    records = read_results(workdir)
    write_text_atomic(workdir / SUMMARY, summary_table(records))
    return records


def summary_table(records: Iterable[dict[str, Any]]) -> str:
    """Markdown: one row per method + correction (or schedule) with its number of seeds, one column per ratio (or
    target sparsity); cells are the metric (accuracy in %, perplexity as is) as mean ± sample std over the seeds
    (:mod:`jaxfold.seed_stats`; one seed: the value alone; a cell with fewer seeds than its row says its n); the
    header gives each column's parameter sparsity as achieved by the fold."""
    records = list(records)
    dense = [r for r in records if r["method"] == "dense"]
    percent = bool(records) and records[0]["metric"] == "accuracy"
    points = [r for r in records if r["method"] != "dense"]
    rows: dict[str, dict[float, SeedStats]] = {}
    for (row, ratio), stats in aggregate_seeds(points, lambda r: (row_name(r), r["ratio"])).items():
        rows.setdefault(row, {})[ratio] = stats
    sparsity = {r["ratio"]: r["param_sparsity"] for r in points if r["method"] == "fold"}
    ratios = sorted({ratio for cells in rows.values() for ratio in cells})
    known = {v: i for i, v in enumerate(PAPER_CV_VARIANTS)}
    rows = dict(sorted(rows.items(), key=lambda item: (known.get(item[0], len(known)), item[0])))
    name = "r" if percent else "target"
    head = ["method:" + ("correction" if percent else "schedule"), "seeds"] + [
        f"{name}={x:g} ({100 * sparsity[x]:.1f} %)" if x in sparsity else f"{name}={x:g}" for x in ratios]
    scale = 100.0 if percent else 1.0
    digits = ".4f" if records and records[0]["metric"] == "output_error" else ".2f"
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, cells in rows.items():
        n = max(s.n for s in cells.values())
        vals = [cells[x].format(scale, digits, show_n=cells[x].n != n) if x in cells else "" for x in ratios]
        lines.append("| " + " | ".join([row, str(n), *vals]) + " |")
    if any(s.n > 1 for cells in rows.values() for s in cells.values()):
        lines.append(f"\nCells: mean ± sample standard deviation (ddof={DDOF}) over the row's seeds.")
    if dense:
        value = (f"{100 * dense[0]['value']:.2f} %" if percent else f"{dense[0]['metric']} {dense[0]['value']:.2f}")
        return "\n".join(lines) + f"\n\nDense: {value} ({dense[0]['params']:,} params).\n"
    return "\n".join(lines) + "\n"


def row_name(record: dict[str, Any]) -> str:
    """``method:correction`` (image models); ``method:schedule`` and, where a language-model point was corrected or
    read calibration data, ``:correction:calibration`` (the kind of data it read)."""
    if "schedule" not in record:
        return f"{record['method']}:{record['correction']}"
    name = f"{record['method']}:{record['schedule']}"
    if record.get("correction", "none") != "none" or record.get("calibration", "none") != "none":
        name += f":{record.get('correction', 'none')}:{record.get('calibration', 'none')}"
    return name


PAPER_CV_VARIANTS = ("fold:none", "fold:fold_ar", "fold:fold_ar_fused", "fold:fold_dir", "fold:repair", "sp_l1:none",
                     "sp_l2:none", "sp_l2:repair", "ifm:none")
# The paper's Fig. 3: k-means against the other clusterers, and iterative greedy merging (IFM), all with REPAIR
CLUSTERING_VARIANTS = ("fold:repair", "fold/spectral:repair", "fold/ward:repair", "fold/single:repair",
                       "fold/complete:repair", "fold/average:repair", "ifm:repair")
# IFM's own protocol (the paper's Fig. 7 left): only ResNet18's last two stages, their inner widths and the two
# streams they write (stream3 is also layer4_0's input), for sweep.only_groups
LAST_TWO_STAGES = r"(layer3|layer4)_\d+\.inner\d+|stream[34]"
PAPER_CV_RATIOS = (0.05, 0.1, 0.15, 0.25, 0.35, 0.45, 0.5, 0.55, 0.65, 0.75)
# Take no PRNG key: pruning by norms, IFM's greedy merging, the linkage clusterers (fold_dir is seeded by di_seed)
CV_DETERMINISTIC = ("sp_l1", "sp_l2", "ifm", "fold/ward", "fold/single", "fold/complete", "fold/average")


def cv_sweep_section(checkpoint: str, **changes: Any) -> dict[str, Any]:
    """The ``sweep`` section of the image-classification configs: the paper's CV methods (Fig. 6) over its
    channel ratios, per-layer variance ratios recorded at r = 0.5 (Fig. 4). ``only_groups`` (a regex, "" for all)
    restricts every point's ratio to the groups whose names it fully matches (:func:`only_groups_plan`). With
    several ``seeds``, the methods that take no key (``deterministic``, see :func:`variant_seeds`) run at the
    first only."""
    section = dict(checkpoint=checkpoint, train_if_missing=True, imports=(), variants=PAPER_CV_VARIANTS,
                   ratios=PAPER_CV_RATIOS, seeds=(0,), deterministic=CV_DETERMINISTIC, n_init=10, only_groups="",
                   variance_ratio_at=(0.5,), variance_batch=500, **CORRECTION_DATA)
    section.update(changes)
    return section
